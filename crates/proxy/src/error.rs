//! The one place where failures become responses: `application/problem+json` (RFC 9457)
//! with a stable machine-readable `code`.

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{full, ProxyBody};

/// Everything the gateway itself answers with an error status.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no route matches {method} {host}{path}")]
    NoRoute {
        method: String,
        host: String,
        path: String,
    },
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("no healthy endpoint in service `{service}`")]
    NoHealthyEndpoint { service: String },
    #[error("upstream did not answer within {timeout_ms} ms")]
    UpstreamTimeout { timeout_ms: u128 },
    /// The gRPC call's own deadline (`grpc-timeout`) passed before the upstream answered.
    #[error("the call's deadline passed before the upstream answered")]
    DeadlineExceeded,
    #[error("cannot connect to upstream: {0}")]
    UpstreamConnect(String),
    #[error("upstream failed: {0}")]
    BadGateway(String),
    /// A route's transformation failed: 400 for the request's, 502 for the response's.
    #[error("{detail}")]
    Transform {
        status: StatusCode,
        detail: String,
        /// Which step failed, for transformations in steps (API versions).
        step: Option<String>,
    },
    /// An HTTP/JSON request that does not map onto the route's gRPC method (400), or an
    /// answer that cannot be written back as JSON.
    #[error("{detail}")]
    Transcode { status: StatusCode, detail: String },
    /// A policy refused the request (authentication, authorization, IP filter).
    #[error("{0}")]
    Rejected(gatehouse_policy::Rejection),
}

impl GatewayError {
    /// The upstream could not give an answer (no endpoint, connection, timeout, broken
    /// exchange): what `stale-if-error` covers.
    pub fn is_upstream_failure(&self) -> bool {
        matches!(
            self,
            Self::NoHealthyEndpoint { .. }
                | Self::UpstreamTimeout { .. }
                | Self::UpstreamConnect(_)
                | Self::BadGateway(_)
        )
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NoHealthyEndpoint { .. } | Self::UpstreamConnect(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::UpstreamTimeout { .. } | Self::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::Transform { status, .. } | Self::Transcode { status, .. } => *status,
            Self::Rejected(rejection) => rejection.status,
        }
    }

    /// Stable identifier clients and dashboards can rely on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoRoute { .. } => "route_not_found",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::BadRequest(_) => "bad_request",
            Self::NoHealthyEndpoint { .. } => "no_healthy_upstream",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::UpstreamConnect(_) => "upstream_unavailable",
            Self::BadGateway(_) => "bad_gateway",
            Self::Transform { .. } => "transform_failed",
            Self::Transcode { .. } => "transcode_failed",
            Self::Rejected(rejection) => rejection.code,
        }
    }

    /// Whether the client connection must be closed after this answer (framing is in doubt).
    pub fn closes_connection(&self) -> bool {
        matches!(self, Self::BadRequest(_) | Self::PayloadTooLarge { .. })
    }

    pub fn into_response(self, request_id: Option<&HeaderValue>) -> Response<ProxyBody> {
        let status = self.status();
        let detail = match &self {
            Self::Rejected(rejection) => rejection.detail.to_string(),
            other => other.to_string(),
        };
        let mut problem = serde_json::json!({
            "type": format!("https://gatehouse.dev/problems/{}", self.code()),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "code": self.code(),
            "detail": detail,
        });
        if let Some(id) = request_id.and_then(|v| v.to_str().ok()) {
            problem["request_id"] = serde_json::Value::from(id);
        }
        if let Self::Transform {
            step: Some(step), ..
        } = &self
        {
            problem["step"] = serde_json::Value::from(step.as_str());
        }
        if let Self::Rejected(gatehouse_policy::Rejection {
            extensions: Some(serde_json::Value::Object(members)),
            ..
        }) = &self
        {
            for (name, value) in members {
                problem[name.as_str()] = value.clone();
            }
        }
        let mut response = Response::new(full(problem.to_string()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(id) = request_id {
            headers.insert(crate::forward::X_REQUEST_ID, id.clone());
        }
        if self.closes_connection() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Self::Rejected(rejection) = self {
            for (name, value) in rejection.headers {
                headers.append(name, value);
            }
        }
        response
    }
}
