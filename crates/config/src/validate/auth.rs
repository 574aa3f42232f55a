//! Checks of consumers, authentication methods, route access rules and IP filters.

use std::collections::{HashMap, HashSet};

use serde_saphyr::Location;

use super::did_you_mean;
use crate::auth::*;
use crate::model::{Config, RouteConfig};
use crate::problem::Problem;

/// Algorithms a JWT method may list; `none` is deliberately absent.
pub const JWT_ALGORITHMS: [&str; 12] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
    "HS384", "HS512",
];

/// What route checks need to know about the security section.
pub(crate) struct AuthNames<'a> {
    methods: HashMap<&'a str, &'a AuthMethodConfig>,
    consumers: HashSet<&'a str>,
}

pub(crate) fn validate_security<'a>(
    config: &'a Config,
    problems: &mut Vec<Problem>,
) -> AuthNames<'a> {
    let mut consumers: HashMap<&str, &Location> = HashMap::new();
    let mut key_ids: HashMap<&str, &Location> = HashMap::new();
    let mut usernames = HashSet::new();
    let mut first_key: Option<&Location> = None;
    for consumer in &config.consumers {
        let id = &consumer.id;
        if id.value.is_empty() {
            problems.push(Problem::at(&id.referenced, "consumer id cannot be empty"));
        }
        if let Some(first) = consumers.insert(&id.value, &id.referenced) {
            problems.push(Problem::at(
                &id.referenced,
                format!(
                    "consumer `{}` is already defined at line {}",
                    id.value,
                    first.line()
                ),
            ));
        }
        for key in &consumer.api_keys {
            let key_id = &key.id;
            first_key.get_or_insert(&key_id.referenced);
            if key_id.value.is_empty() || !key_id.value.bytes().all(|b| b.is_ascii_alphanumeric()) {
                problems.push(Problem::at(
                    &key_id.referenced,
                    format!("API key id `{}` must be letters and digits", key_id.value),
                ));
            }
            if let Some(first) = key_ids.insert(&key_id.value, &key_id.referenced) {
                problems.push(Problem::at(
                    &key_id.referenced,
                    format!(
                        "API key id `{}` is already used at line {}",
                        key_id.value,
                        first.line()
                    ),
                ));
            }
            if !is_key_hash(&key.hash.value) {
                problems.push(Problem::at(
                    &key.hash.referenced,
                    "API key hash must look like `hmac-sha256:<base64>`, as printed by `gatehouse keys generate`",
                ));
            }
            if let Some(expires) = &key.expires {
                if parse_rfc3339(&expires.value).is_none() {
                    problems.push(Problem::at(
                        &expires.referenced,
                        format!(
                            "`{}` is not an RFC 3339 time like 2027-01-01T00:00:00Z",
                            expires.value
                        ),
                    ));
                }
            }
        }
        if let Some(basic) = &consumer.basic_auth {
            if !basic.password_hash.value.starts_with("$argon2") {
                problems.push(Problem::at(
                    &basic.password_hash.referenced,
                    "password_hash must be an argon2 hash (`gatehouse keys hash-password`), never a plain password",
                ));
            }
            if !usernames.insert(basic.username.as_str()) {
                problems.push(Problem::at(
                    &basic.password_hash.referenced,
                    format!("username `{}` is used by two consumers", basic.username),
                ));
            }
        }
    }

    let auth = &config.authentication;
    match (&auth.api_key_secret, first_key) {
        (Some(secret), _) if secret.value.0.len() < 32 => problems.push(Problem::at(
            &secret.referenced,
            "`authentication.api_key_secret` must be at least 32 characters",
        )),
        (None, Some(at)) => problems.push(Problem::at(
            at,
            "consumers have API keys but `authentication.api_key_secret` is not set",
        )),
        _ => {}
    }
    let headers = &auth.identity_headers;
    for name in [
        &headers.consumer_id,
        &headers.consumer_name,
        &headers.groups,
        &headers.scopes,
        &headers.credential,
    ] {
        check_header_name(name, &Location::UNKNOWN, problems);
    }
    let mut methods = HashMap::new();
    for (name, method) in &auth.methods {
        methods.insert(name.as_str(), &method.value);
        validate_method(name, &method.value, &method.referenced, problems);
    }
    AuthNames {
        methods,
        consumers: consumers.keys().copied().collect(),
    }
}

fn validate_method(
    name: &str,
    method: &AuthMethodConfig,
    at: &Location,
    problems: &mut Vec<Problem>,
) {
    let mut problem =
        |message: String| problems.push(Problem::at(at, format!("method `{name}`: {message}")));
    match method {
        AuthMethodConfig::ApiKey(key) => {
            if key.header.is_none() && key.query.is_none() {
                problem("set `header` or `query`".to_owned());
            }
        }
        AuthMethodConfig::Jwt(jwt) => {
            if jwt.discovery {
                if let Err(message) = check_url(&jwt.issuer.value) {
                    problem(format!("issuer {message}"));
                }
            }
            if let Some(uri) = &jwt.jwks_uri {
                if let Err(message) = check_url(&uri.value) {
                    problem(format!("jwks_uri {message}"));
                }
            }
            let mut listed_hmac = false;
            for alg in &jwt.algorithms {
                if alg.value.eq_ignore_ascii_case("none") {
                    problems.push(Problem::at(
                        &alg.referenced,
                        "`none` is never accepted: unsigned tokens prove nothing",
                    ));
                } else if !JWT_ALGORITHMS.contains(&alg.value.as_str()) {
                    let mut message = format!("unknown JWT algorithm `{}`", alg.value);
                    if let Some(best) = did_you_mean(&alg.value, JWT_ALGORITHMS) {
                        message.push_str(&format!(", did you mean `{best}`?"));
                    }
                    problems.push(Problem::at(&alg.referenced, message));
                } else if alg.value.starts_with("HS") {
                    listed_hmac = true;
                    if jwt.hmac_secret.is_none() {
                        problems.push(Problem::at(
                            &alg.referenced,
                            format!("`{}` needs `hmac_secret`", alg.value),
                        ));
                    }
                }
            }
            let asymmetric_keys = jwt.discovery || jwt.jwks_uri.is_some();
            if !asymmetric_keys && jwt.hmac_secret.is_none() {
                problems.push(Problem::at(
                    at,
                    format!("method `{name}`: set `jwks_uri`, `discovery: true` or `hmac_secret`"),
                ));
            }
            if jwt.hmac_secret.is_some() && !listed_hmac {
                problems.push(Problem::at(
                    at,
                    format!("method `{name}`: `hmac_secret` is set but no HS algorithm is listed in `algorithms`"),
                ));
            }
            if let Some(secret) = &jwt.hmac_secret {
                if secret.0.len() < 32 {
                    problems.push(Problem::at(
                        at,
                        format!("method `{name}`: `hmac_secret` must be at least 32 characters"),
                    ));
                }
            }
            for header in jwt.claims_to_headers.keys() {
                check_header_name(header, at, problems);
            }
            for (field, duration) in [
                ("refresh_interval", jwt.refresh_interval),
                ("fetch_timeout", jwt.fetch_timeout),
            ] {
                if duration.0.is_zero() {
                    problems.push(Problem::at(
                        at,
                        format!("method `{name}`: `{field}` must be greater than 0"),
                    ));
                }
            }
        }
        AuthMethodConfig::Introspection(introspection) => {
            if let Err(message) = check_url(&introspection.endpoint.value) {
                problems.push(Problem::at(
                    &introspection.endpoint.referenced,
                    format!("endpoint {message}"),
                ));
            }
        }
        AuthMethodConfig::Oidc(oidc) => {
            if let Err(message) = check_url(&oidc.issuer.value) {
                problems.push(Problem::at(
                    &oidc.issuer.referenced,
                    format!("issuer {message}"),
                ));
            }
            if oidc.session_secret.0.len() < 32 {
                problems.push(Problem::at(
                    at,
                    format!("method `{name}`: `session_secret` must be at least 32 characters"),
                ));
            }
            for path in [&oidc.callback_path, &oidc.logout_path] {
                if !path.starts_with('/') {
                    problems.push(Problem::at(
                        at,
                        format!("method `{name}`: path `{path}` must start with `/`"),
                    ));
                }
            }
        }
        AuthMethodConfig::Basic(_) | AuthMethodConfig::ClientCertificate(_) => {}
    }
}

pub(crate) fn validate_route_access(
    route: &RouteConfig,
    label: &str,
    captures: &[String],
    names: &AuthNames<'_>,
    problems: &mut Vec<Problem>,
) {
    let at = &route.matches.referenced;
    if let Some(auth) = &route.auth {
        if auth.methods.is_empty() && auth.anonymous.is_none() {
            problems.push(Problem::at(
                at,
                format!("route `{label}`: `auth` needs `methods` (or only `anonymous`)"),
            ));
        }
        for method in &auth.methods {
            if !names.methods.contains_key(method.value.as_str()) {
                let mut message = format!(
                    "route `{label}` uses undefined authentication method `{}`",
                    method.value
                );
                if let Some(best) = did_you_mean(&method.value, names.methods.keys().copied()) {
                    message.push_str(&format!(", did you mean `{best}`?"));
                }
                problems.push(Problem::at(&method.referenced, message));
            }
        }
        if let Some(anonymous) = &auth.anonymous {
            if !names.consumers.contains(anonymous.value.as_str()) {
                let mut message = format!(
                    "route `{label}`: anonymous consumer `{}` is not defined",
                    anonymous.value
                );
                if let Some(best) = did_you_mean(&anonymous.value, names.consumers.iter().copied())
                {
                    message.push_str(&format!(", did you mean `{best}`?"));
                }
                problems.push(Problem::at(&anonymous.referenced, message));
            }
        }
        for rule in &auth.claims {
            let sources = [
                !rule.equals.is_empty(),
                rule.equals_header.is_some(),
                rule.equals_path_param.is_some(),
                rule.equals_query.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() != 1 {
                problems.push(Problem::at(
                    &rule.claim.referenced,
                    "a claim rule takes exactly one of `equals`, `equals_header`, `equals_path_param`, `equals_query`",
                ));
            }
            if let Some(param) = &rule.equals_path_param {
                if !captures.contains(param) {
                    problems.push(Problem::at(
                        &rule.claim.referenced,
                        format!("`{param}` is not captured by this route's path match"),
                    ));
                }
            }
        }
    }
    if let Some(filter) = &route.ip_filter {
        for entry in filter.allow.iter().chain(&filter.deny) {
            if parse_cidr(&entry.value).is_none() {
                problems.push(Problem::at(
                    &entry.referenced,
                    format!(
                        "`{}` is not an IP address or CIDR like 10.0.0.0/8",
                        entry.value
                    ),
                ));
            }
        }
    }
}

/// An address or network; a bare address is a /32 or /128.
pub fn parse_cidr(value: &str) -> Option<ipnet::IpNet> {
    value.parse::<ipnet::IpNet>().ok().or_else(|| {
        value
            .parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

/// Seconds since the Unix epoch of an RFC 3339 time.
pub fn parse_rfc3339(value: &str) -> Option<i64> {
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

fn is_key_hash(value: &str) -> bool {
    value.strip_prefix("hmac-sha256:").is_some_and(|b64| {
        b64.len() >= 43
            && b64
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_'))
    })
}

pub(super) fn check_url(value: &str) -> Result<(), String> {
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .ok_or_else(|| format!("`{value}` must be an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("`{value}` has no host"));
    }
    Ok(())
}

/// An RFC 9110 token: what a header name may be.
pub(super) fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(super) fn check_header_name(name: &str, at: &Location, problems: &mut Vec<Problem>) {
    if !is_header_name(name) {
        problems.push(Problem::at(
            at,
            format!("`{name}` is not a valid header name"),
        ));
    }
}
