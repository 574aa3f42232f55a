//! Per-route request shaping: size limits, allowed methods and content types, CORS at the
//! edge, and traffic mirroring. Documented in `docs/traffic-control.md`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::units::{ByteSize, HumanDuration};

/// What a route accepts before anything reaches the upstream.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestShaping {
    /// Largest request body for this route (413); tighter than the listener's limit.
    #[serde(default)]
    pub max_body: Option<ByteSize>,
    /// Largest request head (request line and headers) for this route (431).
    #[serde(default)]
    pub max_header_bytes: Option<ByteSize>,
    /// Methods accepted (uppercase); others get 405 with `Allow`. Empty: any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Media types accepted for requests with a body (`application/json`, `text/*`);
    /// others get 415. Empty: any.
    #[serde(default)]
    pub content_types: Vec<String>,
}

/// Cross-origin resource sharing answered at the edge.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed (`https://app.example.com`), `*` for any, or a pattern with one
    /// leading wildcard label (`https://*.example.com`).
    #[schemars(with = "Vec<String>")]
    pub allow_origins: Vec<Spanned<String>>,
    /// Methods allowed in preflights.
    #[serde(default = "default_cors_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers allowed in preflights (case-insensitive); `*` for any.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Allow cookies and `Authorization` (then `*` is answered with the request's origin).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer.
    #[serde(default = "d10m")]
    pub max_age: HumanDuration,
}

fn default_cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}
fn d10m() -> HumanDuration {
    HumanDuration::secs(600)
}

/// A copy of a share of the route's requests sent to another service; its answer is
/// discarded and never delays or changes the client's response.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// The service that receives the copies.
    #[schemars(with = "String")]
    pub service: Spanned<String>,
    /// Share of requests copied, 0 to 100.
    #[serde(default = "hundred")]
    pub percent: f64,
    /// Requests with larger bodies (or streamed bodies of unknown length) are not copied.
    #[serde(default = "d64k")]
    pub max_body: ByteSize,
    /// Copies in flight at once; beyond it copies are dropped, so a slow mirror never piles
    /// up work.
    #[serde(default = "d64")]
    pub max_in_flight: u32,
    /// A copy is abandoned after this long.
    #[serde(default = "d5s")]
    pub timeout: HumanDuration,
}

fn hundred() -> f64 {
    100.0
}
fn d64k() -> ByteSize {
    ByteSize(64 << 10)
}
fn d64() -> u32 {
    64
}
fn d5s() -> HumanDuration {
    HumanDuration::secs(5)
}

/// An OpenAPI 3.0 or 3.1 document (YAML or JSON) that routes validate against.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenApiSpec {
    /// The document; relative paths are taken from the configuration's directory.
    #[schemars(with = "String")]
    pub path: Spanned<String>,
}

/// Validation of a route's traffic against the operations of an OpenAPI document.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteOpenApi {
    /// Name of a document under the top-level `openapi`.
    #[schemars(with = "String")]
    pub spec: Spanned<String>,
    /// Removed from the request path before it is looked up in the document's `paths`.
    #[serde(default)]
    pub strip_prefix: Option<String>,
    /// Check path, query and header parameters and the JSON body; 400 lists each violation.
    #[serde(default = "yes")]
    pub validate_requests: bool,
    /// Check JSON responses against the operation's `responses`.
    #[serde(default)]
    pub validate_responses: ResponseValidation,
    /// Bodies are read whole to be validated; larger ones are refused (413).
    #[serde(default = "d1m")]
    pub max_body: ByteSize,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResponseValidation {
    /// Responses are not checked.
    #[default]
    Off,
    /// Violations are logged; the response goes to the client unchanged.
    Log,
    /// An invalid response is replaced by 502 `response_invalid`.
    Enforce,
}

fn yes() -> bool {
    true
}
fn d1m() -> ByteSize {
    ByteSize(1 << 20)
}
