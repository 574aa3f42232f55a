//! Rate limits: named policies of one or more limits (GCRA or sliding window), counted per
//! key (consumer, credential, client IP, route, header, claim), kept in this process
//! (`local`) or shared by a fleet through one Redis round trip per decision (`cluster`).
//! Responses carry the IETF `RateLimit-Policy` and `RateLimit` fields
//! (draft-ietf-httpapi-ratelimit-headers-10), optionally the legacy `X-RateLimit-*`.

mod cluster;
pub mod local;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_config::{
    Config, FailureMode, LimitAlgorithm, LimitConfig, LimitMode, Problem, RateLimitPolicy,
};
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, StatusCode};

use crate::identity::Identity;
use crate::limit_key::{self, escape_part, key_value, KeyPart, KeyValue};
use crate::redis::RedisLink;
use crate::rejection::Rejection;
use local::LocalStore;

pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// How a limit spends its allowance, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitShape {
    /// One request per `interval`; up to `tolerance / interval` at once.
    Gcra { interval: u64, tolerance: u64 },
    /// At most `limit` in any `window` (weighted between the current and previous window).
    Window { window: u64, limit: u64 },
}

impl LimitShape {
    pub fn gcra(requests: u64, per: Duration, burst: u64) -> Self {
        let interval = (per.as_nanos() as u64 / requests.max(1)).max(1);
        Self::Gcra {
            interval,
            tolerance: interval.saturating_mul(burst.max(1)),
        }
    }

    pub fn window(requests: u64, per: Duration) -> Self {
        Self::Window {
            window: (per.as_nanos() as u64).max(1),
            limit: requests.max(1),
        }
    }
}

/// One limit's state for one key, as `explain` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LimitState {
    pub name: String,
    pub requests: u64,
    pub per_seconds: u64,
    /// The next request would pass.
    pub allowed: bool,
    /// Requests left after that one.
    pub remaining: u64,
    pub reset_seconds: u64,
    /// Until a refused request could pass (0 when allowed).
    pub retry_after_seconds: u64,
}

/// One limit's verdict on one request.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    pub allowed: bool,
    /// Requests left now.
    pub remaining: u64,
    /// Until the allowance is whole again (or the window ends).
    pub reset_ns: u64,
    /// Until a refused request could pass.
    pub retry_after_ns: u64,
}

impl Decision {
    fn allowed(remaining: u64, reset_ns: u64) -> Self {
        Self {
            allowed: true,
            remaining,
            reset_ns,
            retry_after_ns: 0,
        }
    }

    fn denied(reset_ns: u64, retry_after_ns: u64) -> Self {
        Self {
            allowed: false,
            remaining: 0,
            reset_ns,
            retry_after_ns,
        }
    }
}

struct Limit {
    name: String,
    requests: u64,
    window_secs: u64,
    shape: LimitShape,
    key: Vec<KeyPart>,
    /// Local counters (the limit itself in local mode, the fallback in cluster mode).
    store: Arc<LocalStore>,
    fingerprint: String,
}

/// What a limit may read from the request.
pub struct LimitRequest<'a> {
    pub identity: Option<&'a Identity>,
    pub client_ip: IpAddr,
    pub route: &'a str,
    pub headers: &'a HeaderMap,
}

/// A compiled rate-limit policy.
pub struct RateLimiter {
    name: String,
    limits: Vec<Limit>,
    mode: LimitMode,
    on_failure: FailureMode,
    headers: bool,
    legacy_headers: bool,
    redis: Option<Arc<RedisLink>>,
    policy_header: Option<HeaderValue>,
}

/// Every rate-limit policy of a snapshot, and the shared Redis connection.
#[derive(Default)]
pub struct RateLimits {
    pub redis: Option<Arc<RedisLink>>,
    policies: HashMap<String, Arc<RateLimiter>>,
}

impl RateLimits {
    /// Compile the policies, keeping the counters of unchanged limits and the Redis
    /// connection from `previous` (a reload does not hand out fresh allowances).
    pub fn compile(config: &Config, previous: Option<&RateLimits>) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let redis = match &config.redis {
            Some(redis_config) => {
                let fresh = RedisLink::new(redis_config);
                match (fresh, previous.and_then(|p| p.redis.clone())) {
                    (Ok(fresh), Some(old)) if old.fingerprint == fresh.fingerprint => Some(old),
                    (Ok(fresh), _) => Some(fresh),
                    (Err(message), _) => {
                        problems.push(Problem::at(&redis_config.url.referenced, message));
                        None
                    }
                }
            }
            None => None,
        };
        let mut policies = HashMap::new();
        for (name, policy) in &config.rate_limits {
            let old = previous.and_then(|p| p.policies.get(name));
            match RateLimiter::new(name, &policy.value, redis.clone(), old.map(|o| &**o)) {
                Ok(limiter) => {
                    policies.insert(name.clone(), Arc::new(limiter));
                }
                Err(message) => problems.push(Problem::at(
                    &policy.referenced,
                    format!("rate-limit policy `{name}`: {message}"),
                )),
            }
        }
        if problems.is_empty() {
            Ok(Self { redis, policies })
        } else {
            Err(problems)
        }
    }

    /// Connect to Redis ahead of the first cluster decision (rate limits and quotas).
    pub fn start_background_tasks(&self) {
        if let Some(redis) = &self.redis {
            redis.start();
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<RateLimiter>> {
        self.policies.get(name).cloned()
    }
}

impl RateLimiter {
    /// Compiles a policy, keeping the counters of limits unchanged since `previous`.
    pub(crate) fn new(
        name: &str,
        config: &RateLimitPolicy,
        redis: Option<Arc<RedisLink>>,
        previous: Option<&RateLimiter>,
    ) -> Result<Self, String> {
        let limits = config
            .limits
            .iter()
            .enumerate()
            .map(|(index, limit)| {
                let fingerprint = limit_fingerprint(limit);
                let store = previous
                    .and_then(|p| p.limits.get(index))
                    .filter(|old| old.fingerprint == fingerprint)
                    .map(|old| old.store.clone())
                    .unwrap_or_default();
                Ok(Limit {
                    name: limit
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("{name}-{index}")),
                    requests: limit.requests,
                    window_secs: limit.per.0.as_secs_f64().ceil().max(1.0) as u64,
                    shape: match limit.algorithm {
                        LimitAlgorithm::Gcra => LimitShape::gcra(
                            limit.requests,
                            limit.per.0,
                            limit.burst.unwrap_or(limit.requests),
                        ),
                        LimitAlgorithm::SlidingWindow => {
                            LimitShape::window(limit.requests, limit.per.0)
                        }
                    },
                    key: limit_key::parse(&limit.key)?,
                    store,
                    fingerprint,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        if config.mode == LimitMode::Cluster && redis.is_none() {
            return Err("cluster mode needs `redis`".to_owned());
        }
        let policy_header = limits
            .iter()
            .map(|l| policy_item(&l.name, l.requests, l.window_secs))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Self {
            name: name.to_owned(),
            limits,
            mode: config.mode,
            on_failure: config.on_redis_failure,
            headers: config.headers,
            legacy_headers: config.legacy_headers,
            redis,
            policy_header: HeaderValue::from_str(&policy_header).ok(),
        })
    }

    /// Decide on one request: `Ok` with the headers for the response, or a 429 (or a 503
    /// in cluster mode with `on_redis_failure: closed` while Redis is down).
    pub async fn check(
        &self,
        request: &LimitRequest<'_>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Rejection> {
        let decisions = match (self.mode, &self.redis) {
            (LimitMode::Cluster, Some(redis)) => {
                match cluster::decide(redis, &self.name, &self.limits, request, true).await {
                    Ok(decisions) => decisions,
                    Err(_) if self.on_failure == FailureMode::Open => self.decide_locally(request),
                    Err(_) => {
                        return Err(Rejection::unavailable(
                            "rate_limit_unavailable",
                            "the shared rate-limit store is unavailable",
                        )
                        .with_header(RETRY_AFTER, HeaderValue::from_static("1")))
                    }
                }
            }
            _ => self.decide_locally(request),
        };
        let headers = self.response_headers(&decisions);
        match decisions.iter().find(|d| !d.allowed) {
            None => Ok(headers),
            Some(_) => {
                let retry_ns = decisions
                    .iter()
                    .filter(|d| !d.allowed)
                    .map(|d| d.retry_after_ns)
                    .max()
                    .unwrap_or(0);
                let retry_secs = retry_ns.div_ceil(1_000_000_000).max(1);
                let mut rejection = Rejection::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "rate limit `{}` exceeded; retry in {retry_secs} s",
                        self.name
                    ),
                )
                .with_header(RETRY_AFTER, HeaderValue::from(retry_secs));
                rejection.headers.extend(headers);
                Err(rejection)
            }
        }
    }

    /// What each limit would decide on `request` now, taking nothing: for `explain`
    /// against the running gateway. In cluster mode the same script as `check` runs in
    /// Redis without writing.
    pub async fn peek(&self, request: &LimitRequest<'_>) -> Result<Vec<LimitState>, String> {
        let decisions: Vec<Decision> = match (self.mode, &self.redis) {
            (LimitMode::Cluster, Some(redis)) => {
                cluster::decide(redis, &self.name, &self.limits, request, false)
                    .await
                    .map_err(|e| e.to_string())?
            }
            (LimitMode::Cluster, None) => return Err("no Redis is configured".into()),
            _ => self
                .limits
                .iter()
                .map(|limit| limit.store.peek(&limit.shape, local_key(limit, request)))
                .collect(),
        };
        Ok(self
            .limits
            .iter()
            .zip(decisions)
            .map(|(limit, decision)| LimitState {
                name: limit.name.clone(),
                requests: limit.requests,
                per_seconds: limit.window_secs,
                allowed: decision.allowed,
                remaining: decision.remaining,
                reset_seconds: decision.reset_ns.div_ceil(1_000_000_000),
                retry_after_seconds: decision.retry_after_ns.div_ceil(1_000_000_000),
            })
            .collect())
    }

    fn decide_locally(&self, request: &LimitRequest<'_>) -> Vec<Decision> {
        let mut decisions = Vec::with_capacity(self.limits.len());
        for (index, limit) in self.limits.iter().enumerate() {
            let key = local_key(limit, request);
            let decision = limit.store.acquire(&limit.shape, key);
            if !decision.allowed {
                // All or nothing: give back what the earlier limits took.
                for earlier in &self.limits[..index] {
                    earlier
                        .store
                        .refund(&earlier.shape, local_key(earlier, request));
                }
            }
            decisions.push(decision);
            if !decision.allowed {
                break;
            }
        }
        decisions
    }

    fn response_headers(&self, decisions: &[Decision]) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = Vec::new();
        if !self.headers && !self.legacy_headers {
            return headers;
        }
        // The limit closest to refusing speaks for the policy.
        let Some((limit, decision)) = self
            .limits
            .iter()
            .zip(decisions)
            .min_by_key(|(_, d)| (d.allowed, d.remaining))
        else {
            return headers;
        };
        let reset = decision.reset_ns.div_ceil(1_000_000_000);
        if self.headers {
            if let Some(policy) = &self.policy_header {
                headers.push((RATELIMIT_POLICY, policy.clone()));
            }
            if let Ok(value) =
                HeaderValue::from_str(&status_item(&limit.name, decision.remaining, reset))
            {
                headers.push((RATELIMIT, value));
            }
        }
        if self.legacy_headers {
            headers.push((X_LIMIT, HeaderValue::from(limit.requests)));
            headers.push((X_REMAINING, HeaderValue::from(decision.remaining)));
            headers.push((X_RESET, HeaderValue::from(reset)));
        }
        headers
    }
}

fn local_key(limit: &Limit, request: &LimitRequest<'_>) -> u64 {
    use std::hash::Hash;
    limit.store.key_with(|hasher| {
        for part in &limit.key {
            match key_value(part, request) {
                KeyValue::Str(s) => s.hash(hasher),
                KeyValue::Ip(ip) => ip.hash(hasher),
                KeyValue::Owned(s) => s.hash(hasher),
            }
        }
    })
}

/// The key as text, for the shared store (the same on every gateway). Parts are escaped
/// (`%` and `:`), so client-chosen values cannot make two keys collide.
fn shared_key(policy: &str, index: usize, limit: &Limit, request: &LimitRequest<'_>) -> String {
    let mut key = format!("gatehouse:rl:{}:{index}", escape_part(policy));
    let mut value = String::new();
    for part in &limit.key {
        value.clear();
        key_value(part, request).write(&mut value);
        key.push(':');
        key.push_str(&escape_part(&value));
    }
    key
}

fn limit_fingerprint(limit: &LimitConfig) -> String {
    let key: Vec<&str> = limit.key.iter().map(|k| k.value.as_str()).collect();
    format!(
        "{}|{:?}|{:?}|{:?}|{:?}",
        limit.requests, limit.per.0, limit.burst, limit.algorithm, key
    )
}

/// One quota policy of `RateLimit-Policy`: `"name";q=QUOTA;w=WINDOW_SECONDS`.
pub(crate) fn policy_item(name: &str, quota: u64, window_secs: u64) -> String {
    format!("\"{}\";q={quota};w={window_secs}", sf_string(name))
}

/// One item of `RateLimit`: `"name";r=REMAINING;t=RESET_SECONDS`.
pub(crate) fn status_item(name: &str, remaining: u64, reset_secs: u64) -> String {
    format!("\"{}\";r={remaining};t={reset_secs}", sf_string(name))
}

/// A structured-field string body: `"` and `\` escaped, other characters kept printable.
fn sf_string(value: &str) -> String {
    value
        .chars()
        .filter(|c| (' '..='~').contains(c))
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_key_parts_cannot_collide() {
        assert_eq!(escape_part("plain"), "plain");
        assert_eq!(escape_part("a:b"), "a%3Ab");
        assert_eq!(escape_part("a%3Ab"), "a%253Ab");
        assert_ne!(
            format!("{}:{}", escape_part("a:b"), escape_part("c")),
            format!("{}:{}", escape_part("a"), escape_part("b:c"))
        );
    }
}
