//! Service-to-service authorization of a route: which peers, by the SPIFFE ID in their
//! verified client certificate, may call it with which methods on which paths. Shared by
//! the edge gateway and the mesh sidecar. Documented in `docs/authentication.md`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

/// A route's authorization policy. A request is allowed when any rule allows it; otherwise
/// `default` decides.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteAuthorization {
    /// What happens to a request no rule allows: `allow`, `authenticated` (allowed when
    /// the peer presented a verified certificate with a SPIFFE ID) or `deny`.
    #[serde(default)]
    pub default: AuthorizationDefault,
    /// Dry run: a request that would be refused is logged (warn) and counted as
    /// `audit_deny`, then let through.
    #[serde(default)]
    pub audit: bool,
    /// Each rule allows the requests for which all of its conditions hold.
    #[serde(default)]
    #[schemars(with = "Vec<AuthorizationRule>")]
    pub rules: Vec<Spanned<AuthorizationRule>>,
}

/// The decision for a request no rule allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthorizationDefault {
    /// Allowed.
    #[default]
    Allow,
    /// Allowed when the peer presented a verified client certificate with a SPIFFE ID.
    Authenticated,
    /// Refused with 403 `peer_not_authorized`.
    Deny,
}

/// One allow rule: every condition it lists must hold; an absent (empty) condition holds
/// for every request. A rule needs at least one condition.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRule {
    /// Peer SPIFFE IDs: exact (`spiffe://mesh.local/ns/shop/sa/orders`), every ID under
    /// a path (`spiffe://mesh.local/ns/shop/*`), or `*` for any authenticated peer.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub sources: Vec<Spanned<String>>,
    /// HTTP methods, upper case (`GET`, `POST`).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub methods: Vec<Spanned<String>>,
    /// Request paths (normalized, before rewrites): a path ending in `/` is a prefix
    /// (`/orders/` covers `/orders/` and `/orders/42`, not `/orders`); any other path must
    /// match exactly.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub paths: Vec<Spanned<String>>,
}

/// Why a SPIFFE ID, or a pattern of them, is malformed (`None`: it is fine). Patterns may
/// be `*` or end in `/*`; `pattern: false` checks a plain ID.
pub fn spiffe_problem(value: &str, pattern: bool) -> Option<String> {
    if pattern && value == "*" {
        return None;
    }
    let Some(rest) = value.strip_prefix("spiffe://") else {
        return Some(format!(
            "`{value}` is not a SPIFFE ID like spiffe://mesh.local/ns/shop/sa/orders{}",
            if pattern {
                ", a pattern ending in `/*`, or `*`"
            } else {
                ""
            }
        ));
    };
    let (rest, wildcard) = match rest.strip_suffix("/*") {
        Some(prefix) if pattern => (prefix, true),
        _ => (rest, false),
    };
    if rest.contains('*') {
        return Some(format!(
            "`{value}`: a wildcard may only be a whole last segment (`spiffe://TRUST-DOMAIN/PATH/*`)"
        ));
    }
    let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    if trust_domain.is_empty()
        || !trust_domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return Some(format!(
            "`{value}`: the trust domain must be lower-case letters, digits, `-`, `.` or `_`"
        ));
    }
    // The trust domain alone is an ID only as a pattern's base (`spiffe://mesh.local/*`).
    if path.is_empty() && !rest.contains('/') {
        return (!wildcard).then(|| {
            format!("`{value}`: a workload's SPIFFE ID has a path after the trust domain")
        });
    }
    let segments_ok = path.split('/').all(|segment| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    });
    if !segments_ok {
        return Some(format!(
            "`{value}`: path segments must be non-empty, not `.` or `..`, and made of letters, digits, `-`, `.` or `_`"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::spiffe_problem;

    #[test]
    fn spiffe_ids_and_patterns() {
        for ok in [
            "*",
            "spiffe://mesh.local/ns/shop/sa/orders",
            "spiffe://mesh.local/ns/shop/*",
            "spiffe://mesh.local/*",
        ] {
            assert_eq!(spiffe_problem(ok, true), None, "{ok}");
        }
        for bad in [
            "orders",
            "https://mesh.local/ns/shop",
            "spiffe://mesh.local",
            "spiffe://mesh.local/",
            "spiffe://Mesh.Local/ns",
            "spiffe:///ns/shop",
            "spiffe://mesh.local/ns/*/sa/orders",
            "spiffe://mesh.local/ns/shop*",
            "spiffe://mesh.local/ns//shop",
            "spiffe://mesh.local/ns/../shop",
            "spiffe://mesh.local/ns/shop/",
        ] {
            assert!(spiffe_problem(bad, true).is_some(), "{bad}");
        }
        assert!(spiffe_problem("*", false).is_some());
        assert!(spiffe_problem("spiffe://mesh.local/ns/*", false).is_some());
    }
}
