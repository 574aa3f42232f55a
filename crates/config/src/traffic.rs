//! The traffic-control part of the model: rate-limit policies, the Redis connection that
//! cluster mode shares, and concurrency limits. Documented in `docs/traffic-control.md`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::units::HumanDuration;

/// The Redis server shared by a fleet of gateways (cluster rate limits).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`. Use `${ENV_VAR}` for a password.
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    /// Longest wait for one Redis decision; past it the policy's failure mode applies.
    #[serde(default = "d50ms")]
    pub timeout: HumanDuration,
    /// After a failed call, Redis is not asked again for this long (requests use the
    /// failure mode without waiting for another timeout).
    #[serde(default = "d1s")]
    pub retry_after_failure: HumanDuration,
}

fn d50ms() -> HumanDuration {
    HumanDuration(std::time::Duration::from_millis(50))
}
fn d1s() -> HumanDuration {
    HumanDuration::secs(1)
}

/// A named set of limits that routes apply with `rate_limits: [NAME]`. Routes naming the
/// same policy share its counters (add `route` to a limit's `key` to separate them).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicy {
    /// Every limit must admit the request (for example 10/s and 5000/h).
    pub limits: Vec<LimitConfig>,
    /// `local`: counters in this process; `cluster`: shared through `redis`.
    #[serde(default)]
    pub mode: LimitMode,
    /// Cluster mode when Redis fails: `open` falls back to a local limit, `closed` answers
    /// 503 `rate_limit_unavailable`.
    #[serde(default)]
    pub on_redis_failure: FailureMode,
    /// Send `RateLimit-Policy` and `RateLimit` on responses.
    #[serde(default = "yes")]
    pub headers: bool,
    /// Also send `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    #[serde(default)]
    pub legacy_headers: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitMode {
    #[default]
    Local,
    Cluster,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    #[default]
    Open,
    Closed,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum LimitAlgorithm {
    /// Generic cell rate algorithm: a steady rate with a burst allowance.
    #[default]
    Gcra,
    /// At most `requests` in any window of `per` (weighted sliding window).
    SlidingWindow,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Name in the `RateLimit-Policy` header (default `<policy>-<index>`).
    #[serde(default)]
    pub name: Option<String>,
    /// Requests admitted per `per`.
    pub requests: u64,
    /// The window: `1s`, `1m`, `1h`, `1d`.
    pub per: HumanDuration,
    /// GCRA only: requests that may arrive at once (default `requests`).
    #[serde(default)]
    pub burst: Option<u64>,
    #[serde(default)]
    pub algorithm: LimitAlgorithm,
    /// What is counted separately: `consumer` (the authenticated consumer, else the client
    /// IP), `credential`, `client_ip`, `route`, `header:NAME`, `claim:NAME`; several parts
    /// combine. Default `[consumer]`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub key: Vec<Spanned<String>>,
}

/// A request quota per calendar period (UTC), counted per key (default: the consumer).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Requests per period; a consumer's `quotas` entry for this policy overrides it.
    pub requests: u64,
    /// `day` (from 00:00 UTC) or `month` (from the 1st, 00:00 UTC).
    pub period: QuotaPeriod,
    /// What is counted separately; as for rate limits. Default `[consumer]`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub key: Vec<Spanned<String>>,
    /// `local`: counted here and saved to `quota_store`; `cluster`: counted in `redis`.
    #[serde(default)]
    pub mode: LimitMode,
    /// Cluster mode when Redis fails: `open` admits (counting locally), `closed` answers 503.
    #[serde(default)]
    pub on_redis_failure: FailureMode,
    /// Send `RateLimit-Policy` and `RateLimit` for the quota.
    #[serde(default = "yes")]
    pub headers: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QuotaPeriod {
    Day,
    Month,
}

/// Where local-mode quota counters are saved so they survive a restart.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaStoreConfig {
    /// A JSON file, written atomically (relative paths: from the configuration's directory).
    #[schemars(with = "String")]
    pub path: Spanned<String>,
    /// Counters are saved this often when they changed, and at shutdown.
    #[serde(default = "d1s")]
    pub flush_interval: HumanDuration,
}
