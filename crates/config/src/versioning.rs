//! API versions: how a request's version is chosen, what each version changed from the one
//! before it (jq programs that upgrade requests and downgrade responses), which backend
//! speaks it, and its deprecation and sunset dates. Documented in `docs/versioning.md`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::units::ByteSize;

/// One API with dated (or numbered) versions, oldest first.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// The versions, oldest first; the last is the newest.
    pub versions: Vec<ApiVersion>,
    /// Where a request names its version; the first that names one wins, in the order
    /// path, header, query, media-type parameter.
    #[serde(default)]
    pub select: VersionSelect,
    /// The version of requests that name none and whose consumer has no default
    /// (`consumers[].api_versions`). Absent: the newest.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub default: Option<Spanned<String>>,
    /// Largest body read whole to run a version's programs: a larger request is refused
    /// (413), a larger response becomes a 502.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
}

fn default_max_body() -> ByteSize {
    ByteSize(1 << 20)
}

/// Where a request may name its version.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionSelect {
    /// The first path segment names the version (`/2024-06-01/users/7`); it is removed
    /// before the request is forwarded.
    #[serde(default)]
    pub path: bool,
    /// Request header naming the version; the answer carries the version served under
    /// the same name. Empty: none.
    #[serde(default = "default_version_header")]
    pub header: String,
    /// Query parameter naming the version (removed before forwarding).
    #[serde(default)]
    pub query: Option<String>,
    /// Parameter of the `Accept` media type naming the version
    /// (`Accept: application/json; version=2024-06-01`).
    #[serde(default)]
    pub media_type_parameter: Option<String>,
}

impl Default for VersionSelect {
    fn default() -> Self {
        Self {
            path: false,
            header: default_version_header(),
            query: None,
            media_type_parameter: None,
        }
    }
}

fn default_version_header() -> String {
    "api-version".into()
}

/// One version of an API.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiVersion {
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// What changed from the previous version. Not allowed on the first version.
    #[serde(default)]
    pub changes: Option<VersionChanges>,
    /// A service that speaks this version itself. Requests for this version (and older
    /// ones, upgraded to it) go there instead of the route's service.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub service: Option<Spanned<String>>,
    /// When this version was deprecated (RFC 3339): answers carry `Deprecation`.
    #[serde(default)]
    pub deprecated: Option<String>,
    /// When this version stops being served (RFC 3339): answers carry `Sunset`, and after
    /// it requests for this version get 410.
    #[serde(default)]
    pub sunset: Option<String>,
    /// Where the changes are described (a changelog), sent as a `Link` with
    /// `rel="deprecation"` (and `rel="sunset"`) on deprecated versions.
    #[serde(default)]
    pub link: Option<String>,
}

/// The difference between a version and the one before it, as two jq programs.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionChanges {
    /// A line for people (shown in `docs` and the admin API).
    #[serde(default)]
    pub description: Option<String>,
    /// Turns a JSON request body of the previous version into this version's.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub request: Option<Spanned<String>>,
    /// Turns a JSON response body of this version into the previous version's.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub response: Option<Spanned<String>>,
}
