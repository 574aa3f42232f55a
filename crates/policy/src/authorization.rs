//! Service-to-service authorization: which peers, by the SPIFFE ID of their verified client
//! certificate, may call a route with which methods on which paths.
//!
//! Compiled once per snapshot from a route's `authorization`; deciding a request scans the
//! rules without allocating. A refusal is 403 `peer_not_authorized`, whose detail names the
//! peer's own identity only, never the rules.

use gatehouse_config::{AuthorizationDefault, RouteAuthorization};
use http::Method;

use crate::rejection::Rejection;
use crate::request::ClientCertificate;

/// The stable code of a refusal.
pub const PEER_NOT_AUTHORIZED: &str = "peer_not_authorized";

/// A route's compiled authorization policy.
#[derive(Debug)]
pub struct Authorization {
    /// The route's name, for the audit log.
    route: String,
    default: AuthorizationDefault,
    audit: bool,
    rules: Box<[Rule]>,
}

/// Every non-empty list must contain the request's value.
#[derive(Debug)]
struct Rule {
    sources: Box<[Source]>,
    methods: Box<[Method]>,
    paths: Box<[PathRule]>,
}

#[derive(Debug)]
enum Source {
    /// `*`: any peer with a SPIFFE ID.
    Authenticated,
    Exact(Box<str>),
    /// `spiffe://td/ns/shop/*`, kept as `spiffe://td/ns/shop/`: IDs below it.
    Under(Box<str>),
}

#[derive(Debug)]
enum PathRule {
    Exact(Box<str>),
    /// A path ending in `/`: itself and everything below it.
    Prefix(Box<str>),
}

/// What the policy decided about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A rule or the default allowed it.
    Allow,
    /// Refused.
    Deny(Denial),
    /// Would have been refused; the policy is in audit mode, so it passes.
    AuditDeny(Denial),
}

impl Decision {
    /// The `decision` label of `gatehouse_authorization_decisions_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny(_) => "deny",
            Self::AuditDeny(_) => "audit_deny",
        }
    }
}

/// Why a request is (or in audit mode would be) refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// No rule allows it and the default is `deny`.
    #[error("no rule allows this request and the route denies the rest")]
    NotAllowed,
    /// No rule allows it, the default is `authenticated`, and the peer has no SPIFFE ID.
    #[error("the peer presented no verified SPIFFE identity, which this route requires")]
    Unauthenticated,
}

impl Authorization {
    /// Compile a validated `authorization` of route `route`.
    pub fn new(config: &RouteAuthorization, route: &str) -> Result<Self, String> {
        let rules = config
            .rules
            .iter()
            .map(|rule| {
                let rule = &rule.value;
                Ok(Rule {
                    sources: rule
                        .sources
                        .iter()
                        .map(|s| Source::parse(&s.value))
                        .collect(),
                    methods: rule
                        .methods
                        .iter()
                        .map(|m| {
                            Method::from_bytes(m.value.as_bytes())
                                .map_err(|_| format!("`{}` is not an HTTP method", m.value))
                        })
                        .collect::<Result<_, String>>()?,
                    paths: rule
                        .paths
                        .iter()
                        .map(|p| PathRule::parse(&p.value))
                        .collect(),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            route: route.to_owned(),
            default: config.default,
            audit: config.audit,
            rules,
        })
    }

    /// Decide a request from `peer` (its SPIFFE ID, if it has one) for `method` on the
    /// normalized `path`.
    pub fn decide(&self, peer: Option<&str>, method: &Method, path: &str) -> Decision {
        let allowed = self
            .rules
            .iter()
            .any(|rule| rule.allows(peer, method, path));
        self.decide_rest(allowed, peer)
    }

    /// Decide an opaque connection (TCP through the mesh) from `peer`: only rules without
    /// `methods` and `paths` can allow it, since there is no request to match them on.
    pub fn decide_connection(&self, peer: Option<&str>) -> Decision {
        let allowed = self.rules.iter().any(|rule| {
            rule.methods.is_empty()
                && rule.paths.is_empty()
                && (rule.sources.is_empty()
                    || peer.is_some_and(|peer| rule.sources.iter().any(|s| s.matches(peer))))
        });
        self.decide_rest(allowed, peer)
    }

    fn decide_rest(&self, allowed_by_a_rule: bool, peer: Option<&str>) -> Decision {
        if allowed_by_a_rule {
            return Decision::Allow;
        }
        let denial = match (self.default, peer) {
            (AuthorizationDefault::Allow, _) | (AuthorizationDefault::Authenticated, Some(_)) => {
                return Decision::Allow
            }
            (AuthorizationDefault::Authenticated, None) => Denial::Unauthenticated,
            (AuthorizationDefault::Deny, _) => Denial::NotAllowed,
        };
        if self.audit {
            Decision::AuditDeny(denial)
        } else {
            Decision::Deny(denial)
        }
    }

    /// Decide, log an audit-mode refusal, and turn a refusal into the answer: the decision
    /// for the metrics, or the rejection.
    pub fn check(
        &self,
        certificate: Option<&ClientCertificate>,
        method: &Method,
        path: &str,
    ) -> Result<Decision, Rejection> {
        let peer = certificate.and_then(ClientCertificate::spiffe_id);
        let decision = self.decide(peer, method, path);
        match decision {
            Decision::Allow => Ok(decision),
            Decision::AuditDeny(denial) => {
                tracing::warn!(
                    route = %self.route,
                    peer = peer.unwrap_or("-"),
                    %method,
                    path,
                    reason = %denial,
                    "authorization would deny this request; audit mode lets it through"
                );
                Ok(decision)
            }
            Decision::Deny(denial) => Err(rejection(peer, method, denial)),
        }
    }
}

/// 403 `peer_not_authorized`: names the peer's own identity, never the rules.
fn rejection(peer: Option<&str>, method: &Method, denial: Denial) -> Rejection {
    let detail = match (denial, peer) {
        (Denial::Unauthenticated, _) | (_, None) => denial.to_string(),
        (Denial::NotAllowed, Some(peer)) => {
            format!("peer `{peer}` is not authorized to {method} this path on this route")
        }
    };
    Rejection::forbidden(PEER_NOT_AUTHORIZED, detail)
}

impl Rule {
    fn allows(&self, peer: Option<&str>, method: &Method, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path)))
            && (self.sources.is_empty()
                || peer.is_some_and(|peer| self.sources.iter().any(|s| s.matches(peer))))
    }
}

impl Source {
    fn parse(value: &str) -> Self {
        if value == "*" {
            Self::Authenticated
        } else if let Some(base) = value.strip_suffix('*') {
            Self::Under(base.into())
        } else {
            Self::Exact(value.into())
        }
    }

    fn matches(&self, peer: &str) -> bool {
        match self {
            Self::Authenticated => true,
            Self::Exact(id) => **id == *peer,
            Self::Under(base) => peer.len() > base.len() && peer.starts_with(&**base),
        }
    }
}

impl PathRule {
    fn parse(value: &str) -> Self {
        if value.ends_with('/') {
            Self::Prefix(value.into())
        } else {
            Self::Exact(value.into())
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(exact) => **exact == *path,
            Self::Prefix(prefix) => path.starts_with(&**prefix),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_config::{AuthorizationRule, Location, Spanned};

    fn spanned<T>(value: T) -> Spanned<T> {
        Spanned::new(value, Location::UNKNOWN, Location::UNKNOWN)
    }

    fn list(items: &[&str]) -> Vec<Spanned<String>> {
        items.iter().map(|s| spanned(s.to_string())).collect()
    }

    fn policy(
        default: AuthorizationDefault,
        audit: bool,
        rules: &[(&[&str], &[&str], &[&str])],
    ) -> Authorization {
        let config = RouteAuthorization {
            default,
            audit,
            rules: rules
                .iter()
                .map(|(sources, methods, paths)| {
                    spanned(AuthorizationRule {
                        sources: list(sources),
                        methods: list(methods),
                        paths: list(paths),
                    })
                })
                .collect(),
        };
        Authorization::new(&config, "orders").unwrap()
    }

    const ORDERS: &str = "spiffe://mesh.local/ns/shop/sa/orders";
    const BILLING: &str = "spiffe://mesh.local/ns/shop/sa/billing";
    const OUTSIDER: &str = "spiffe://mesh.local/ns/web/sa/frontend";

    #[test]
    fn rules_allow_by_source_method_and_path() {
        let p = policy(
            AuthorizationDefault::Deny,
            false,
            &[
                (&[ORDERS], &[], &[]),
                (&["spiffe://mesh.local/ns/shop/*"], &["GET"], &["/orders/"]),
                (&[], &["GET"], &["/health"]),
            ],
        );
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(p.decide(Some(ORDERS), &post, "/anything"), Decision::Allow);
        assert_eq!(p.decide(Some(BILLING), &get, "/orders/7"), Decision::Allow);
        assert_eq!(p.decide(Some(BILLING), &get, "/orders/"), Decision::Allow);
        // The prefix `/orders/` does not cover `/orders`; the method must match too.
        assert!(matches!(
            p.decide(Some(BILLING), &get, "/orders"),
            Decision::Deny(Denial::NotAllowed)
        ));
        assert!(matches!(
            p.decide(Some(BILLING), &post, "/orders/7"),
            Decision::Deny(_)
        ));
        assert!(matches!(
            p.decide(Some(OUTSIDER), &get, "/orders/7"),
            Decision::Deny(_)
        ));
        // Conditions without sources hold for peers without an identity, too.
        assert_eq!(p.decide(None, &get, "/health"), Decision::Allow);
        assert!(matches!(
            p.decide(None, &get, "/orders/7"),
            Decision::Deny(_)
        ));
        // `ns/shop/*` covers IDs below it, not the base itself.
        assert!(matches!(
            p.decide(Some("spiffe://mesh.local/ns/shop"), &get, "/orders/1"),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn defaults_and_audit() {
        let allow = policy(AuthorizationDefault::Allow, false, &[]);
        assert_eq!(allow.decide(None, &Method::GET, "/"), Decision::Allow);
        let authenticated = policy(AuthorizationDefault::Authenticated, false, &[]);
        assert_eq!(
            authenticated.decide(Some(OUTSIDER), &Method::GET, "/"),
            Decision::Allow
        );
        assert_eq!(
            authenticated.decide(None, &Method::GET, "/"),
            Decision::Deny(Denial::Unauthenticated)
        );
        let any_peer = policy(AuthorizationDefault::Deny, false, &[(&["*"], &[], &[])]);
        assert_eq!(
            any_peer.decide(Some(OUTSIDER), &Method::GET, "/"),
            Decision::Allow
        );
        let audit = policy(AuthorizationDefault::Deny, true, &[]);
        let decision = audit.decide(Some(ORDERS), &Method::GET, "/");
        assert_eq!(decision, Decision::AuditDeny(Denial::NotAllowed));
        assert_eq!(decision.label(), "audit_deny");
        let certificate = ClientCertificate {
            uris: vec!["https://not-spiffe".into(), ORDERS.into()],
            ..Default::default()
        };
        assert!(audit.check(Some(&certificate), &Method::GET, "/").is_ok());
    }

    #[test]
    fn refusals_name_only_the_peer() {
        let p = policy(
            AuthorizationDefault::Deny,
            false,
            &[(&[ORDERS], &[], &["/secret/"])],
        );
        let certificate = ClientCertificate {
            uris: vec![BILLING.into()],
            ..Default::default()
        };
        let rejection = p
            .check(Some(&certificate), &Method::GET, "/secret/x")
            .unwrap_err();
        assert_eq!(rejection.status, http::StatusCode::FORBIDDEN);
        assert_eq!(rejection.code, PEER_NOT_AUTHORIZED);
        assert!(rejection.detail.contains(BILLING), "{}", rejection.detail);
        assert!(!rejection.detail.contains(ORDERS), "{}", rejection.detail);
        assert!(
            !rejection.detail.contains("/secret/"),
            "{}",
            rejection.detail
        );
    }
}
