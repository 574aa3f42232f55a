//! Client IP allow and deny lists.

use std::net::IpAddr;

use gatehouse_config::{parse_cidr, IpFilterConfig};
use ipnet::IpNet;

use crate::rejection::Rejection;

pub struct IpFilter {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpFilter {
    pub fn new(config: &IpFilterConfig) -> Self {
        let parse = |list: &[gatehouse_config::Spanned<String>]| {
            list.iter().filter_map(|e| parse_cidr(&e.value)).collect()
        };
        Self {
            allow: parse(&config.allow),
            deny: parse(&config.deny),
        }
    }

    /// Deny wins; with an allow list, only listed clients pass.
    pub fn check(&self, ip: IpAddr) -> Result<(), Rejection> {
        // IPv4 clients on a dual-stack socket arrive as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let denied = self.deny.iter().any(|net| net.contains(&ip))
            || (!self.allow.is_empty() && !self.allow.iter().any(|net| net.contains(&ip)));
        if denied {
            Err(Rejection::forbidden(
                "ip_denied",
                format!("client address {ip} is not allowed on this route"),
            ))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_config::{Location, Spanned};

    fn filter(allow: &[&str], deny: &[&str]) -> IpFilter {
        let list = |items: &[&str]| {
            items
                .iter()
                .map(|s| Spanned::new(s.to_string(), Location::UNKNOWN, Location::UNKNOWN))
                .collect()
        };
        IpFilter::new(&IpFilterConfig {
            allow: list(allow),
            deny: list(deny),
        })
    }

    #[test]
    fn deny_wins_and_allow_lists_exclude_the_rest() {
        let f = filter(&["10.0.0.0/8"], &["10.0.0.7"]);
        assert!(f.check("10.1.2.3".parse().unwrap()).is_ok());
        assert!(f.check("10.0.0.7".parse().unwrap()).is_err());
        assert!(f.check("192.168.1.1".parse().unwrap()).is_err());
        assert!(f.check("::ffff:10.1.2.3".parse().unwrap()).is_ok());
        let deny_only = filter(&[], &["2001:db8::/32"]);
        assert!(deny_only.check("2001:db8::1".parse().unwrap()).is_err());
        assert!(deny_only.check("127.0.0.1".parse().unwrap()).is_ok());
    }
}
