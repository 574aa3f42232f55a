//! The observability part of the model: metrics and the access log. Documented in
//! `docs/observability.md`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::{Location, Spanned};

/// The fields of an access-log record: the JSON keys, and the `{field}` placeholders a
/// template may use.
pub const ACCESS_LOG_FIELDS: [&str; 19] = [
    "time",
    "request_id",
    "trace_id",
    "client_ip",
    "consumer",
    "route",
    "service",
    "endpoint",
    "method",
    "path",
    "protocol",
    "status",
    "total_ms",
    "upstream_ms",
    "gateway_ms",
    "bytes_in",
    "bytes_out",
    "user_agent",
    "reason",
];

/// Where and how each finished request is logged.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// `stdout`, or a file path (appended to; reopened on SIGUSR1 for log rotation).
    #[serde(default = "stdout")]
    pub path: String,
    /// `json` (one object per line) or a template with `{field}` placeholders, e.g.
    /// `"{client_ip} {method} {path} {status} {total_ms}"`.
    #[serde(default = "json")]
    #[schemars(with = "String")]
    pub format: Spanned<String>,
    /// Share of requests logged, 0 to 1 (errors, status >= 500, are always logged).
    #[serde(default = "one")]
    pub sample: f64,
    /// Lines waiting for the writer; beyond it lines are dropped and counted, so a slow
    /// disk never stalls traffic.
    #[serde(default = "default_buffer")]
    pub buffer_lines: usize,
    /// Query parameters whose values are replaced by `REDACTED` (added to the defaults:
    /// api_key, access_token, token, key, password, secret, and every API-key method's
    /// `query`).
    #[serde(default)]
    pub redact_query: Vec<String>,
}

fn stdout() -> String {
    "stdout".to_owned()
}
fn json() -> Spanned<String> {
    Spanned::new("json".to_owned(), Location::UNKNOWN, Location::UNKNOWN)
}
fn one() -> f64 {
    1.0
}
fn default_buffer() -> usize {
    8192
}

/// Prometheus metrics on the admin listener (`/metrics`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics`.
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

fn yes() -> bool {
    true
}
