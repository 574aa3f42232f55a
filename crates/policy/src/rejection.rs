//! A policy's refusal. The proxy's error site renders it as problem+json; a policy only
//! says what status, which stable code, a detail safe to show, and extra headers
//! (`WWW-Authenticate`, `Retry-After`).

use std::borrow::Cow;

use http::{HeaderName, HeaderValue, StatusCode};

#[derive(Debug, Clone)]
pub struct Rejection {
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `invalid_credentials`.
    pub code: &'static str,
    /// Human-readable reason. Never contains a credential.
    pub detail: Cow<'static, str>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Members added to the problem document (RFC 9457 extensions), e.g. `violations`.
    pub extensions: Option<serde_json::Value>,
}

impl Rejection {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            headers: Vec::new(),
            extensions: None,
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// 403 for a known caller without permission.
    pub fn forbidden(code: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, detail)
    }

    /// 503 for an authentication dependency that cannot answer: never a 401 or 403, which
    /// would blame the client for the gateway's fault.
    pub fn unavailable(code: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.detail, self.code)
    }
}
