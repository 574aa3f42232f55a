//! The read-only view of a request that access policies decide on, and small readers of
//! its parts (cookies, query parameters, bearer tokens).

use std::borrow::Cow;
use std::net::IpAddr;

use http::{header, HeaderMap, Method};

/// What the access phase sees of a request.
pub struct RequestInfo<'a> {
    pub method: &'a Method,
    /// The normalized path the route matched.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The route's path captures.
    pub captures: &'a [(String, String)],
    /// The client's address (behind trusted proxies, from `X-Forwarded-For`).
    pub client_ip: IpAddr,
    /// The verified client certificate on a mutual-TLS listener.
    pub client_certificate: Option<&'a ClientCertificate>,
    /// `https` or `http`, as the client connected.
    pub scheme: &'a str,
    /// The authority the client addressed (for absolute URLs such as OIDC redirect URIs).
    pub authority: &'a str,
}

/// The identities a verified client certificate carries.
#[derive(Debug, Clone, Default)]
pub struct ClientCertificate {
    pub subject_cn: Option<String>,
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
    pub emails: Vec<String>,
}

impl ClientCertificate {
    /// The peer's SPIFFE ID: the first `spiffe://` URI SAN (an X.509 SVID carries exactly
    /// one).
    pub fn spiffe_id(&self) -> Option<&str> {
        self.uris
            .iter()
            .map(String::as_str)
            .find(|uri| uri.starts_with("spiffe://"))
    }
}

/// The media type of the body (`Content-Type` without parameters, lowercase; empty if none).
pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Whether `media_type` is accepted by `rule`: exact, `type/*` or `*/*`.
pub fn media_matches(rule: &str, media_type: &str) -> bool {
    rule == "*/*"
        || rule == media_type
        || rule
            .strip_suffix("/*")
            .is_some_and(|kind| media_type.split('/').next() == Some(kind))
}

/// The value of cookie `name`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// The percent-decoded value of query parameter `name`.
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<Cow<'a, str>> {
    form_urlencoded::parse(query?.as_bytes()).find_map(|(k, v)| (k == name).then_some(v))
}

/// The query without parameter `name` (`None` when nothing is left).
pub fn remove_query_param(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            percent_encoding::percent_decode_str(key).decode_utf8_lossy() != name
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// The credentials of an `Authorization: <scheme> <credentials>` header.
pub fn authorization<'a>(headers: &'a HeaderMap, scheme: &str) -> Option<&'a str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (given, credentials) = value.split_once(' ')?;
    given
        .eq_ignore_ascii_case(scheme)
        .then(|| credentials.trim())
        .filter(|c| !c.is_empty())
}

/// The `Cookie` headers without cookie `name`.
pub fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name && !pair.is_empty())
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(value) = http::HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded_and_removed() {
        assert_eq!(
            query_param(Some("a=1&api_key=x%2By&b=2"), "api_key").as_deref(),
            Some("x+y")
        );
        assert_eq!(
            remove_query_param("a=1&api_key=x&b=2", "api_key").as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(remove_query_param("api_key=x", "api_key"), None);
    }

    #[test]
    fn cookies_are_read_and_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "a=1; session=s3cret; b=2".parse().unwrap());
        assert_eq!(cookie(&headers, "session"), Some("s3cret"));
        remove_cookie(&mut headers, "session");
        assert_eq!(headers.get(header::COOKIE).unwrap(), "a=1; b=2");
    }

    #[test]
    fn authorization_scheme_is_case_insensitive() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(authorization(&headers, "Bearer"), Some("abc"));
        assert_eq!(authorization(&headers, "Basic"), None);
    }
}
