//! The bodies the admin API reads and writes. Handlers serialize these types and the OpenAPI
//! document (`openapi.rs`) is generated from the same types, so the two cannot drift.

use std::collections::BTreeMap;

use gatehouse_config::{Config, LoadBalancing, RedirectAction, RouteMatch};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The active configuration, defaults filled in and the admin token redacted.
#[derive(Serialize, JsonSchema)]
pub struct ConfigDocument<'a> {
    pub version: u64,
    pub config: &'a Config,
}

/// A configuration version now in service.
#[derive(Serialize, JsonSchema)]
pub struct Applied {
    pub version: u64,
}

/// The result of a rollback: the earlier version applied again as a new version.
#[derive(Serialize, JsonSchema)]
pub struct RolledBack {
    /// The new version number.
    pub version: u64,
    /// The version whose configuration it carries.
    pub rolled_back_to: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct Versions {
    pub active: u64,
    /// Oldest first; the history keeps the last ten.
    pub versions: Vec<VersionView>,
}

#[derive(Serialize, JsonSchema)]
pub struct VersionView {
    pub version: u64,
    /// Unix time in seconds.
    pub applied_at: u64,
    /// What applied it: `initial`, `file`, `signal`, `admin api`, `rollback to N`, ...
    pub reason: String,
    pub active: bool,
}

#[derive(Serialize, JsonSchema)]
pub struct Routes {
    pub version: u64,
    /// In file order.
    pub routes: Vec<RouteView>,
}

#[derive(Serialize, JsonSchema)]
pub struct RouteView {
    pub name: String,
    pub priority: i32,
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    pub action: ActionView,
    /// Absent when the route takes anonymous traffic.
    pub auth: Option<AuthView>,
}

/// What a route does with a request.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionView {
    /// Forward to the named service.
    Service(String),
    /// Forward to one of these services, drawn per request by weight (a traffic split).
    Backends(Vec<BackendView>),
    Redirect(RedirectAction),
    /// Answer with this status.
    Respond(u16),
}

/// One service of a route's traffic split.
#[derive(Serialize, JsonSchema)]
pub struct BackendView {
    pub service: String,
    /// Relative share of the route's requests.
    pub weight: u32,
}

#[derive(Serialize, JsonSchema)]
pub struct AuthView {
    /// Authentication methods, any of which grants access.
    pub methods: Vec<String>,
    /// The consumer requests without credentials run as, if allowed.
    pub anonymous: Option<String>,
}

#[derive(Serialize, JsonSchema)]
pub struct Services {
    pub version: u64,
    /// By name.
    pub services: Vec<ServiceView>,
}

#[derive(Serialize, JsonSchema)]
pub struct ServiceView {
    pub name: String,
    pub load_balancing: LoadBalancing,
    pub endpoints: Vec<EndpointView>,
}

/// The live state of one endpoint.
#[derive(Serialize, JsonSchema)]
pub struct EndpointView {
    /// `IP:PORT`, resolved.
    pub address: String,
    pub weight: u32,
    /// Passes active health checks (always true without them).
    pub healthy: bool,
    /// Taken out of rotation by outlier detection.
    pub ejected: bool,
    /// Times outlier detection ejected it.
    pub ejections: u32,
    /// Requests in flight to it now.
    pub in_flight: u32,
}

/// A request to explain: what `gatehouse explain` takes on the command line.
#[derive(Deserialize, JsonSchema)]
pub struct ExplainBody {
    #[serde(default = "get_method")]
    pub method: String,
    /// Absolute URL: `https://api.example.com/orders/42?page=2`.
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The client address IP filters see; default 127.0.0.1.
    #[serde(default)]
    pub client_ip: Option<std::net::IpAddr>,
    /// The listener (by name) the request arrives on, for routes bound to listeners;
    /// default: the only listener, or the one whose configured port is the URL's.
    #[serde(default)]
    pub listener: Option<String>,
}

fn get_method() -> String {
    "GET".to_owned()
}

/// What to purge from the response cache: exactly one of `all`, `url`, `route`, `prefix`
/// (with `host` optionally) or `tag`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeBody {
    /// Everything stored.
    #[serde(default)]
    pub all: bool,
    /// One absolute URL, `https://api.example.com/products/1?page=2`: its entries on every
    /// caching route that could have stored it, for every consumer and `Vary` variant.
    pub url: Option<String>,
    /// Everything one route stored (its `name`).
    pub route: Option<String>,
    /// Every entry whose path starts with this prefix.
    pub prefix: Option<String>,
    /// With `prefix`: only entries of this host.
    pub host: Option<String>,
    /// Every response the upstream tagged with this surrogate key (`cache.tag_header`).
    pub tag: Option<String>,
}

/// The result of a purge.
#[derive(Serialize, JsonSchema)]
pub struct Purged {
    /// Keys removed from this gateway's memory (a URL with `Vary` counts its marker and
    /// each variant).
    pub purged: usize,
    /// With `cache.redis`: keys removed from Redis; every gateway of the fleet also drops
    /// them from its memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<usize>,
}

/// An error answer (RFC 9457 problem details).
#[derive(Serialize, JsonSchema)]
pub struct Problem {
    /// `https://gatehouse.dev/problems/{code}`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// Stable machine-readable code, e.g. `unauthorized`, `invalid_configuration`.
    pub code: String,
    pub detail: String,
    /// For `invalid_configuration`: one `FILE:LINE:COLUMN: message` per problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
}
