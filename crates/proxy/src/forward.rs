//! Proxy header semantics (RFC 9110 section 7.6): hop-by-hop removal, `X-Forwarded-*`,
//! `Via`, request ids, and the client address behind trusted proxies.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;
use ipnet::IpNet;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The SPIFFE ID of the peer's verified client certificate, asserted by the gateway to the
/// upstream; a client-sent copy is always removed.
pub const X_PEER_IDENTITY: HeaderName = HeaderName::from_static("x-gatehouse-peer-identity");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

const HOP_BY_HOP_COUNT: usize = 7;
/// Headers that describe one connection, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];
const CONNECTION_INDEX: usize = 0;
const TE_INDEX: usize = 5;

/// Whether the request asks for a protocol upgrade (WebSocket) on HTTP/1.1.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(tokens)
        .any(|t| t.eq_ignore_ascii_case(token))
}

/// Remove hop-by-hop headers and those named by `Connection`. With `upgrade`, the
/// `Upgrade` header and `Connection: upgrade` survive so the upstream can switch protocols.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names finds what is there: comparing names costs no hashing, and
    // most messages carry one hop-by-hop header (`Connection`) or none, where a `remove`
    // per listed name would hash each of them on every request and response.
    let mut present = [false; HOP_BY_HOP_COUNT];
    let mut upgrade_header = false;
    // `Connection` naming headers beyond its usual tokens (`keep-alive`, `close`,
    // `upgrade`: they name no header or one dealt with below); and `TE: trailers`.
    let mut names_others = false;
    let mut keeps_trailers = false;
    for (name, value) in headers.iter() {
        if let Some(index) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[index] = true;
            if index == CONNECTION_INDEX {
                names_others |= tokens(value).any(|token| !is_usual_connection_token(token));
            } else if index == TE_INDEX {
                keeps_trailers |= tokens(value).any(|token| token.eq_ignore_ascii_case("trailers"));
            }
        } else if name == header::UPGRADE {
            upgrade_header = true;
        }
    }
    if !upgrade && !upgrade_header && !present.contains(&true) {
        return;
    }
    let named: Vec<HeaderName> = if names_others {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(tokens)
            .filter(|token| !is_usual_connection_token(token))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect()
    } else {
        Vec::new()
    };
    for name in named {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, there)| *there) {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if upgrade_header {
        headers.remove(header::UPGRADE);
    }
    if keeps_trailers {
        // `TE: trailers` is how gRPC clients say they accept trailers; it must reach the upstream.
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The comma-separated tokens of a list-valued field (empty for a value that is not text).
pub(crate) fn tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value.to_str().unwrap_or_default().split(',').map(str::trim)
}

fn is_usual_connection_token(token: &str) -> bool {
    ["close", "keep-alive", "upgrade"]
        .iter()
        .any(|usual| token.eq_ignore_ascii_case(usual))
}

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// The client's address: the peer, or, behind trusted proxies, the nearest untrusted
/// address of `X-Forwarded-For` (read right to left).
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer_ip = peer.ip();
    if !is_trusted(peer_ip, trusted) {
        return peer_ip;
    }
    let chain: Vec<IpAddr> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    chain
        .iter()
        .rev()
        .find(|ip| !is_trusted(**ip, trusted))
        .or(chain.first())
        .copied()
        .unwrap_or(peer_ip)
}

/// Append `Via: <version> gatehouse`.
pub fn add_via(headers: &mut HeaderMap, version: Version) {
    // Checked once at compile time, not byte by byte on every request and response.
    let entry = match version {
        Version::HTTP_10 => const { HeaderValue::from_static("1.0 gatehouse") },
        Version::HTTP_2 => const { HeaderValue::from_static("2 gatehouse") },
        Version::HTTP_3 => const { HeaderValue::from_static("3 gatehouse") },
        _ => const { HeaderValue::from_static("1.1 gatehouse") },
    };
    let value = match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(existing) => {
            let mut joined = Vec::with_capacity(existing.len() + 2 + entry.len());
            joined.extend_from_slice(existing.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(entry.as_bytes());
            HeaderValue::from_maybe_shared(joined).ok()
        }
        None => Some(entry),
    };
    if let Some(value) = value {
        headers.insert(header::VIA, value);
    }
}

/// Set `X-Forwarded-For/-Proto/-Host`: extended when the peer is a trusted proxy, replaced
/// otherwise (so clients cannot spoof their address).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer_ip: &HeaderValue,
    peer_trusted: bool,
    scheme: &'static str,
    host: Option<&HeaderValue>,
) {
    let existing_for: Vec<&str> = if peer_trusted {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    } else {
        Vec::new()
    };
    let forwarded_for = if existing_for.is_empty() {
        Some(peer_ip.clone())
    } else {
        let peer = peer_ip.to_str().unwrap_or_default();
        HeaderValue::from_str(&format!("{}, {peer}", existing_for.join(", "))).ok()
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, value);
    }
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    }
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// Keep a client-supplied request id when it is sane, or make a new one (128 random bits,
/// hex).
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(existing) = headers.get(&X_REQUEST_ID) {
        let bytes = existing.as_bytes();
        if !bytes.is_empty()
            && bytes.len() <= 128
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return existing.clone();
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let random = fastrand::u128(..);
    let mut id = [0u8; 32];
    for (i, digit) in id.iter_mut().enumerate() {
        *digit = HEX[((random >> (4 * i)) & 0xf) as usize];
    }
    // Owned by its own allocation with a count, so the copies that go upstream, into the
    // response and into the log take no allocation each (a `Bytes` made from a copied
    // slice allocates again on its first clone).
    HeaderValue::from_maybe_shared(Bytes::from_owner(id))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Value of one cookie from the `Cookie` header(s).
pub use gatehouse_policy::request::cookie;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_are_removed_but_upgrade_survives_for_websocket() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, X-Secret"),
        );
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        strip_hop_by_hop(&mut headers, true);
        assert!(!headers.contains_key("x-secret"));
        assert!(!headers.contains_key(KEEP_ALIVE));
        assert_eq!(headers[header::UPGRADE], "websocket");
        assert_eq!(headers[header::CONNECTION], "upgrade");
    }

    #[test]
    fn every_hop_by_hop_header_goes_and_trailers_survive_in_te() {
        assert_eq!(HOP_BY_HOP[CONNECTION_INDEX], header::CONNECTION);
        assert_eq!(HOP_BY_HOP[TE_INDEX], header::TE);
        let mut headers = HeaderMap::new();
        for name in &HOP_BY_HOP {
            headers.insert(name, HeaderValue::from_static("x"));
        }
        headers.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers.len(), 2, "{headers:?}");
        assert_eq!(headers["x-kept"], "1");
        assert_eq!(headers[header::TE], "trailers");

        // Nothing to strip: the message is left as it was.
        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, HeaderValue::from_static("example.com"));
        plain.insert("x-kept", HeaderValue::from_static("1"));
        let before = plain.clone();
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain, before);
        // `Upgrade` alone (no `Connection`) goes unless the upgrade is being made.
        plain.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain, before);
    }

    #[test]
    fn client_ip_skips_trusted_hops() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("1.2.3.4, 203.0.113.9, 10.1.1.1"),
        );
        let peer: SocketAddr = "10.0.0.2:5555".parse().unwrap();
        assert_eq!(
            client_ip(peer, &headers, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let untrusted_peer: SocketAddr = "198.51.100.1:5555".parse().unwrap();
        assert_eq!(
            client_ip(untrusted_peer, &headers, &trusted),
            untrusted_peer.ip()
        );
    }

    #[test]
    fn via_names_this_hop_after_the_earlier_ones() {
        let mut headers = HeaderMap::new();
        add_via(&mut headers, Version::HTTP_11);
        assert_eq!(headers[header::VIA], "1.1 gatehouse");
        add_via(&mut headers, Version::HTTP_2);
        assert_eq!(headers[header::VIA], "1.1 gatehouse, 2 gatehouse");
        headers.insert(
            header::VIA,
            HeaderValue::from_bytes(b"1.1 caf\xe9").unwrap(),
        );
        add_via(&mut headers, Version::HTTP_10);
        assert_eq!(headers[header::VIA], "1.0 gatehouse");
    }

    #[test]
    fn list_tokens_are_trimmed_and_a_value_that_is_not_text_has_none() {
        let listed = |value: &[u8]| {
            let value = HeaderValue::from_bytes(value).unwrap();
            tokens(&value).map(str::to_owned).collect::<Vec<_>>()
        };
        assert_eq!(listed(b"close"), ["close"]);
        assert_eq!(
            listed(b" keep-alive ,\tUpgrade,,x "),
            ["keep-alive", "Upgrade", "", "x"]
        );
        assert_eq!(listed(b"gzip, chunked\xff"), [""]);
    }
}
