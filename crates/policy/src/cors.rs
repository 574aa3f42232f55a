//! CORS at the edge: preflights are answered by the gateway (they carry no credentials and
//! never reach the upstream); actual requests from allowed origins get the CORS response
//! headers.

use bytes::Bytes;
use gatehouse_config::CorsConfig;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::rejection::Rejection;

enum OriginRule {
    Exact(String),
    /// `https://*.example.com`: scheme and a suffix starting with a dot.
    Wildcard {
        scheme: String,
        suffix: String,
    },
}

pub struct Cors {
    any_origin: bool,
    origins: Vec<OriginRule>,
    methods: Vec<Method>,
    methods_value: HeaderValue,
    any_header: bool,
    headers: Vec<String>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

/// An `OPTIONS` request with `Origin` and `Access-Control-Request-Method`.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The method a preflight asks about.
pub fn requested_method(headers: &HeaderMap) -> Option<Method> {
    headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
}

impl Cors {
    pub fn new(config: &CorsConfig) -> Result<Self, String> {
        let mut any_origin = false;
        let mut origins = Vec::new();
        for origin in &config.allow_origins {
            let value = origin.value.trim_end_matches('/').to_ascii_lowercase();
            if value == "*" {
                any_origin = true;
            } else if let Some((scheme, rest)) = value.split_once("://*.") {
                origins.push(OriginRule::Wildcard {
                    scheme: format!("{scheme}://"),
                    suffix: format!(".{rest}"),
                });
            } else if value.contains("://") && !value.contains('*') {
                origins.push(OriginRule::Exact(value));
            } else {
                return Err(format!(
                    "origin `{}` must be `*`, `scheme://host[:port]` or `scheme://*.domain`",
                    origin.value
                ));
            }
        }
        let methods = config
            .allow_methods
            .iter()
            .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| format!("invalid method `{m}`")))
            .collect::<Result<Vec<_>, _>>()?;
        let methods_value = HeaderValue::from_str(&config.allow_methods.join(", "))
            .map_err(|_| "invalid methods".to_owned())?;
        let expose = (!config.expose_headers.is_empty())
            .then(|| HeaderValue::from_str(&config.expose_headers.join(", ")))
            .transpose()
            .map_err(|_| "invalid expose_headers".to_owned())?;
        Ok(Self {
            any_origin,
            origins,
            methods,
            methods_value,
            any_header: config.allow_headers.iter().any(|h| h == "*"),
            headers: config
                .allow_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            expose,
            credentials: config.allow_credentials,
            max_age: HeaderValue::from(config.max_age.0.as_secs()),
        })
    }

    fn allows_origin(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        self.any_origin
            || self.origins.iter().any(|rule| match rule {
                OriginRule::Exact(exact) => *exact == origin,
                OriginRule::Wildcard { scheme, suffix } => {
                    origin.strip_prefix(scheme.as_str()).is_some_and(|host| {
                        let host = host.split(':').next().unwrap_or(host);
                        host.len() > suffix.len() && host.ends_with(suffix.as_str())
                    })
                }
            })
    }

    /// `Access-Control-Allow-Origin`: `*` only without credentials; otherwise the origin.
    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// Answer a preflight: 204 with the CORS headers, or 403 `cors_denied`.
    pub fn preflight(&self, headers: &HeaderMap) -> Result<Response<Bytes>, Rejection> {
        let denied = |detail: &'static str| Rejection::forbidden("cors_denied", detail);
        let origin = headers
            .get(header::ORIGIN)
            .ok_or_else(|| denied("preflight without Origin"))?;
        if !origin.to_str().is_ok_and(|o| self.allows_origin(o)) {
            return Err(denied("origin not allowed"));
        }
        let method = requested_method(headers).ok_or_else(|| denied("invalid requested method"))?;
        if !self.methods.contains(&method) {
            return Err(denied("method not allowed for cross-origin requests"));
        }
        let requested_headers = headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let all_allowed = self.any_header
            || requested_headers
                .split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .all(|h| self.headers.contains(&h));
        if !all_allowed {
            return Err(denied("a requested header is not allowed"));
        }
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin_value(origin),
        );
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.methods_value.clone(),
        );
        if !requested_headers.is_empty() {
            if let Ok(value) = HeaderValue::from_str(requested_headers) {
                out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, value);
            }
        }
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        out.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        out.insert(
            header::VARY,
            HeaderValue::from_static(
                "origin, access-control-request-method, access-control-request-headers",
            ),
        );
        Ok(response)
    }

    /// Headers for the response to an actual cross-origin request (none for other origins).
    pub fn response_headers(&self, request: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = Vec::new();
        let Some(origin) = request.get(header::ORIGIN) else {
            return headers;
        };
        if !origin.to_str().is_ok_and(|o| self.allows_origin(o)) {
            return headers;
        }
        headers.push((
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin_value(origin),
        ));
        headers.push((header::VARY, HeaderValue::from_static("origin")));
        if self.credentials {
            headers.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        if let Some(expose) = &self.expose {
            headers.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone()));
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_config::{Location, Spanned};

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        Cors::new(&CorsConfig {
            allow_origins: origins
                .iter()
                .map(|o| Spanned::new(o.to_string(), Location::UNKNOWN, Location::UNKNOWN))
                .collect(),
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["Content-Type".into(), "Authorization".into()],
            expose_headers: vec![],
            allow_credentials: credentials,
            max_age: gatehouse_config::HumanDuration::secs(60),
        })
        .unwrap()
    }

    #[test]
    fn origins_match_exactly_or_by_wildcard_label() {
        let c = cors(&["https://app.example.com", "https://*.example.org"], false);
        assert!(c.allows_origin("https://app.example.com"));
        assert!(c.allows_origin("HTTPS://APP.EXAMPLE.COM"));
        assert!(!c.allows_origin("http://app.example.com"));
        assert!(!c.allows_origin("https://app.example.com.evil.test"));
        assert!(c.allows_origin("https://a.example.org"));
        assert!(c.allows_origin("https://a.b.example.org:8443"));
        assert!(!c.allows_origin("https://example.org"));
        assert!(!c.allows_origin("https://evilexample.org"));
    }

    #[test]
    fn credentials_never_answer_with_a_wildcard_origin() {
        let origin = HeaderValue::from_static("https://x.test");
        assert_eq!(cors(&["*"], false).allow_origin_value(&origin), "*");
        assert_eq!(
            cors(&["*"], true).allow_origin_value(&origin),
            "https://x.test"
        );
    }
}
