//! The observability part of the model: metrics, the access log and distributed tracing.
//! Documented in `docs/observability.md`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::{Location, Spanned};

use crate::units::HumanDuration;

/// The fields of an access-log record: the JSON keys, and the `{field}` placeholders a
/// template may use.
pub const ACCESS_LOG_FIELDS: [&str; 20] = [
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
    "grpc_status",
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
    /// Routes whose requests are also counted per consumer
    /// (`gatehouse_consumer_requests_total`); `"*"` for every route. Each consumer adds
    /// series per route and status class, so list the routes you watch by consumer.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub per_consumer: Vec<Spanned<String>>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            per_consumer: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// Distributed tracing: W3C trace context propagation, a span per request and per upstream
/// attempt, exported with OTLP.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The `service.name` resource attribute of the gateway's spans.
    #[serde(default = "gatehouse")]
    pub service_name: String,
    /// More resource attributes, e.g. `deployment.environment: production`.
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    /// Share of new traces recorded, 0 to 1. The choice is made from the trace id, so every
    /// gateway of a fleet decides the same way for one trace.
    #[serde(default = "one")]
    pub sample: f64,
    /// A request whose `traceparent` carries the caller's decision follows it (sampled or
    /// not) instead of `sample`.
    #[serde(default = "yes")]
    pub parent_based: bool,
    /// Trace-context header formats read from clients and written upstream. W3C
    /// `traceparent`/`tracestate` is always on; `b3` adds Zipkin's B3 (single `b3` header and
    /// the `X-B3-*` headers are read, the single header is written).
    #[serde(default)]
    pub propagation: Vec<Propagation>,
    /// Where spans are sent.
    pub otlp: OtlpConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    W3c,
    B3,
}

/// The OTLP collector spans are exported to.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// `grpc` (the collector's TraceService, usually port 4317) or `http` (protobuf POSTed
    /// to the endpoint, usually `http://HOST:4318/v1/traces`).
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// `http://` or `https://` URL of the collector. For `http` it is the full URL spans are
    /// POSTed to.
    #[schemars(with = "String")]
    pub endpoint: Spanned<String>,
    /// Headers sent with every export (gRPC metadata), e.g. an authorization token through
    /// `${ENV_VAR}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Limit on one export call.
    #[serde(default = "export_timeout")]
    pub timeout: HumanDuration,
    /// Finished spans waiting for export; beyond it spans are dropped and counted
    /// (`gatehouse_trace_spans_dropped_total`), so a slow collector never stalls traffic.
    #[serde(default = "default_queue")]
    pub max_queue: usize,
    /// Most spans in one export call.
    #[serde(default = "default_batch")]
    pub max_batch: usize,
    /// Longest a finished span waits for its batch to fill before it is sent.
    #[serde(default = "batch_delay")]
    pub batch_delay: HumanDuration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    #[default]
    Grpc,
    Http,
}

fn gatehouse() -> String {
    "gatehouse".to_owned()
}
fn export_timeout() -> HumanDuration {
    HumanDuration::secs(10)
}
fn default_queue() -> usize {
    4096
}
fn default_batch() -> usize {
    512
}
fn batch_delay() -> HumanDuration {
    HumanDuration::secs(2)
}
