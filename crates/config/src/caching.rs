//! The response cache part of the model: the cache's memory (top-level `cache`) and each
//! route's caching rules (`routes[].cache`). Documented in `docs/caching.md`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, HumanDuration};

/// The in-memory response cache shared by every caching route.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Memory for stored responses (bodies and headers); least recently and least
    /// frequently used entries are evicted beyond it.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// Largest response stored; larger ones are passed through.
    #[serde(default = "default_max_object_size")]
    pub max_object_size: ByteSize,
    /// Response header listing an entry's tags (surrogate keys), separated by spaces or
    /// commas, for purging by tag. Removed from the responses sent to clients on caching
    /// routes.
    #[serde(default = "default_tag_header")]
    pub tag_header: String,
    /// Share stored responses with the other gateways of a fleet through the top-level
    /// `redis`: a miss in memory is looked up there, what is stored here is written there,
    /// and a purge reaches every gateway.
    #[serde(default)]
    pub redis: bool,
    /// Prefix of the cache's Redis keys and purge channel, to keep environments that share
    /// one Redis apart.
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_size: default_max_size(),
            max_object_size: default_max_object_size(),
            tag_header: default_tag_header(),
            redis: false,
            redis_prefix: default_redis_prefix(),
        }
    }
}

fn default_max_size() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_max_object_size() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_redis_prefix() -> String {
    "gatehouse:cache:".into()
}
fn default_tag_header() -> String {
    "surrogate-key".into()
}

/// How one route's responses are cached (RFC 9111: the upstream's `Cache-Control`,
/// `Expires` and `Vary` decide, the route fills in what the upstream leaves out).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheConfig {
    /// Freshness of responses that carry neither `Cache-Control: max-age`/`s-maxage` nor
    /// `Expires`, for backends that send no caching headers. Absent: such responses are
    /// not stored.
    #[serde(default)]
    pub ttl: Option<HumanDuration>,
    /// Query parameters that are part of the key, in this order. Absent: the whole query
    /// string as sent.
    #[serde(default)]
    pub key_query: Option<Vec<String>>,
    /// Request headers that are part of the key (besides those the upstream names in
    /// `Vary`).
    #[serde(default)]
    pub key_headers: Vec<String>,
    /// On an authenticated route, one entry for all consumers. Off by default: each
    /// consumer has its own entries, so one never sees another's response.
    #[serde(default)]
    pub shared: bool,
    /// How long past its freshness a response may still be served while it is revalidated
    /// in the background, when the upstream's `Cache-Control: stale-while-revalidate`
    /// says nothing (RFC 5861). Absent: only the upstream's directive allows it.
    #[serde(default)]
    pub stale_while_revalidate: Option<HumanDuration>,
    /// How long past its freshness a response may still be served when the upstream
    /// fails (no connection, timeout, or a 500, 502, 503 or 504), when the upstream's
    /// `Cache-Control: stale-if-error` says nothing (RFC 5861).
    #[serde(default)]
    pub stale_if_error: Option<HumanDuration>,
}
