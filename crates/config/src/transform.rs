//! Per-route transformations of what passes through: request and response headers, the
//! query string, status mapping, and JSON bodies rewritten by jq programs (run by jaq).
//! Documented in `docs/transformations.md`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::units::ByteSize;

/// What a route changes on the way to the upstream and on the way back.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    #[serde(default)]
    pub request: RequestTransform,
    #[serde(default)]
    pub response: ResponseTransform,
    /// Largest body read whole for a `body` program: a larger request is refused (413),
    /// a larger response becomes a 502.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
}

fn default_max_body() -> ByteSize {
    ByteSize(1 << 20)
}

/// Changes to the request before it is forwarded.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestTransform {
    #[serde(default)]
    pub headers: Edits,
    /// Query parameters, edited like headers (names are case-sensitive).
    #[serde(default)]
    pub query: Edits,
    /// A jq program turning the JSON request body into the one forwarded.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub body: Option<Spanned<String>>,
}

/// Changes to the upstream's response before the client gets it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponseTransform {
    /// Upstream status to the status the client sees, for example `{404: 204}`.
    #[serde(default)]
    pub status: BTreeMap<u16, u16>,
    #[serde(default)]
    pub headers: Edits,
    /// A jq program turning the JSON response body into the one the client gets.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub body: Option<Spanned<String>>,
}

/// Edits to a list of named values (headers or query parameters), applied in this order:
/// `remove`, `rename`, `set`, `add`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Edits {
    /// Names to drop.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Old name to new name; the values move, replacing any under the new name.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Name to value, replacing every value under the name.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Name to value, added beside any values already there.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
}

impl Edits {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }
}
