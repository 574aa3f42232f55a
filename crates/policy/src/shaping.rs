//! Per-route request shaping: allowed methods (405), head size (431), media types of
//! request bodies (415) and declared body size (413; the pipeline also enforces the limit
//! while the body streams).

use gatehouse_config::RequestShaping;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use crate::rejection::Rejection;
use crate::request;

pub struct Shaping {
    pub max_body: Option<u64>,
    max_header_bytes: Option<u64>,
    methods: Vec<Method>,
    allow: Option<HeaderValue>,
    /// `type/subtype`, `type/*` or `*/*`, lowercase.
    content_types: Vec<String>,
}

impl Shaping {
    pub fn new(config: &RequestShaping) -> Result<Self, String> {
        let methods = config
            .methods
            .iter()
            .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| format!("invalid method `{m}`")))
            .collect::<Result<Vec<_>, _>>()?;
        let allow = (!methods.is_empty())
            .then(|| HeaderValue::from_str(&config.methods.join(", ")))
            .transpose()
            .map_err(|_| "invalid methods".to_owned())?;
        Ok(Self {
            max_body: config.max_body.map(|b| b.0),
            max_header_bytes: config.max_header_bytes.map(|b| b.0),
            methods,
            allow,
            content_types: config
                .content_types
                .iter()
                .map(|t| t.trim().to_ascii_lowercase())
                .collect(),
        })
    }

    pub fn check(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Result<(), Rejection> {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            let mut rejection = Rejection::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on this route"),
            );
            if let Some(allow) = &self.allow {
                rejection = rejection.with_header(header::ALLOW, allow.clone());
            }
            return Err(rejection);
        }
        if let Some(max) = self.max_header_bytes {
            // Request line plus `name: value\r\n` per field, as the client sent them.
            let size = method.as_str().len() as u64
                + path_and_query.len() as u64
                + 12
                + headers
                    .iter()
                    .map(|(n, v)| (n.as_str().len() + v.len() + 4) as u64)
                    .sum::<u64>();
            if size > max {
                return Err(Rejection::new(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "headers_too_large",
                    format!("request head exceeds {max} bytes on this route"),
                ));
            }
        }
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let (Some(max), Some(length)) = (self.max_body, declared) {
            if length > max {
                return Err(Rejection::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("request body exceeds the limit of {max} bytes"),
                ));
            }
        }
        let has_body =
            declared.is_some_and(|l| l > 0) || headers.contains_key(header::TRANSFER_ENCODING);
        if has_body && !self.content_types.is_empty() {
            let media_type = request::media_type(headers);
            let accepted = self
                .content_types
                .iter()
                .any(|rule| request::media_matches(rule, &media_type));
            if !accepted {
                let shown = if media_type.is_empty() {
                    "none".to_owned()
                } else {
                    media_type
                };
                return Err(Rejection::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!("content type {shown} is not accepted on this route"),
                ));
            }
        }
        Ok(())
    }
}
