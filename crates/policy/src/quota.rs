//! Quotas: requests per calendar day or month (UTC) per key, the consumer by default, with
//! per-consumer allowances. Cluster quotas count in Redis; local ones count in this process
//! and are saved to a JSON file (atomically, every `flush_interval` and at shutdown) so
//! they survive a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use gatehouse_config::{
    Config, FailureMode, LimitMode, Problem, QuotaConfig, QuotaPeriod, QuotaStoreConfig,
};
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::limit_key::{self, escape_part, key_value, KeyPart};
use crate::rate_limit::{policy_item, status_item, LimitRequest, RATELIMIT, RATELIMIT_POLICY};
use crate::redis::RedisLink;
use crate::rejection::Rejection;

/// The period a moment falls in: its index (days or months since the epoch) and the
/// seconds until the next one starts.
pub fn period_of(period: QuotaPeriod, unix_secs: i64) -> (i64, u64) {
    match period {
        QuotaPeriod::Day => {
            let index = unix_secs.div_euclid(86_400);
            (index, ((index + 1) * 86_400 - unix_secs) as u64)
        }
        QuotaPeriod::Month => {
            let now = time::OffsetDateTime::from_unix_timestamp(unix_secs)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let (year, month) = (now.year(), now.month());
            let index = i64::from(year) * 12 + i64::from(u8::from(month)) - 1;
            let next = if month == time::Month::December {
                time::Date::from_calendar_date(year + 1, time::Month::January, 1)
            } else {
                time::Date::from_calendar_date(year, month.next(), 1)
            };
            let next_start = next
                .map(|d| d.midnight().assume_utc().unix_timestamp())
                .unwrap_or(unix_secs + 86_400);
            (index, (next_start - unix_secs).max(1) as u64)
        }
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A quota's state for one key, as `explain` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct QuotaState {
    pub allowance: u64,
    pub used: u64,
    pub remaining: u64,
    /// Until the next period.
    pub reset_seconds: u64,
}

/// A compiled quota policy.
pub struct Quota {
    name: String,
    requests: u64,
    period: QuotaPeriod,
    key: Vec<KeyPart>,
    mode: LimitMode,
    on_failure: FailureMode,
    headers: bool,
    redis: Option<Arc<RedisLink>>,
    local: Arc<LocalQuotas>,
}

/// Every quota policy of a snapshot and the local counters they share.
#[derive(Default)]
pub struct Quotas {
    policies: HashMap<String, Arc<Quota>>,
    local: Arc<LocalQuotas>,
}

/// Local counters: `(policy, key)` → (period index, count), saved to a file.
#[derive(Default)]
pub struct LocalQuotas {
    counts: Mutex<HashMap<(String, String), (i64, u64)>>,
    dirty: AtomicBool,
    file: Option<PathBuf>,
    flush_interval: Duration,
    started: AtomicBool,
    fingerprint: String,
}

#[derive(Serialize, Deserialize)]
struct SavedCounts {
    version: u32,
    entries: Vec<SavedEntry>,
}

#[derive(Serialize, Deserialize)]
struct SavedEntry {
    policy: String,
    key: String,
    period: i64,
    count: u64,
}

impl LocalQuotas {
    fn open(store: Option<&QuotaStoreConfig>, config: &Config) -> Result<Self, String> {
        let Some(store) = store else {
            return Ok(Self::default());
        };
        let file = config.resolve_path(&store.path.value);
        let mut counts = HashMap::new();
        match std::fs::read(&file) {
            Ok(bytes) => {
                let saved: SavedCounts = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("quota store {}: {e}", file.display()))?;
                for entry in saved.entries {
                    counts.insert((entry.policy, entry.key), (entry.period, entry.count));
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(format!("cannot read quota store {}: {err}", file.display())),
        }
        Ok(Self {
            counts: Mutex::new(counts),
            dirty: AtomicBool::new(false),
            fingerprint: format!("{}|{:?}", file.display(), store.flush_interval.0),
            file: Some(file),
            flush_interval: store.flush_interval.0,
            started: AtomicBool::new(false),
        })
    }

    /// Requests counted for `key` in `period`.
    fn count(&self, policy: &str, key: &str, period: i64) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match counts.get(&(policy.to_owned(), key.to_owned())) {
            Some((stored, count)) if *stored == period => *count,
            _ => 0,
        }
    }

    /// Count one request if `key` is under `allowance` in the current period.
    fn take(&self, policy: &str, key: String, period: i64, allowance: u64) -> (bool, u64) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let entry = counts
            .entry((policy.to_owned(), key))
            .or_insert((period, 0));
        if entry.0 != period {
            *entry = (period, 0);
        }
        if entry.1 >= allowance {
            return (false, 0);
        }
        entry.1 += 1;
        self.dirty.store(true, Ordering::Release);
        (true, allowance - entry.1)
    }

    /// Write the counters of current periods to the file (temporary file, then rename).
    pub fn flush(&self) -> Result<(), String> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let entries = {
            let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            counts
                .iter()
                .map(|((policy, key), (period, count))| SavedEntry {
                    policy: policy.clone(),
                    key: key.clone(),
                    period: *period,
                    count: *count,
                })
                .collect()
        };
        let text = serde_json::to_vec(&SavedCounts {
            version: 1,
            entries,
        })
        .map_err(|e| e.to_string())?;
        let temporary = file.with_extension("tmp");
        let written =
            std::fs::write(&temporary, text).and_then(|()| std::fs::rename(&temporary, file));
        if let Err(err) = written {
            self.dirty.store(true, Ordering::Release);
            return Err(format!(
                "cannot save quota counters to {}: {err}",
                file.display()
            ));
        }
        Ok(())
    }

    fn start(self: &Arc<Self>) {
        if self.file.is_none() || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        let interval = self.flush_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(store) = weak.upgrade() else { return };
                if let Err(message) = store.flush() {
                    tracing::error!(error = %message, "quota counters not saved");
                }
            }
        });
    }
}

impl Quotas {
    pub fn compile(
        config: &Config,
        redis: Option<Arc<RedisLink>>,
        previous: Option<&Quotas>,
    ) -> Result<Self, Vec<Problem>> {
        let fresh_local = || LocalQuotas::open(config.quota_store.as_ref(), config);
        let local = match previous {
            // Same file: keep the live counters (re-reading would lose what is not saved yet).
            Some(previous)
                if config.quota_store.as_ref().map(|s| {
                    format!(
                        "{}|{:?}",
                        config.resolve_path(&s.path.value).display(),
                        s.flush_interval.0
                    )
                }) == Some(previous.local.fingerprint.clone()) =>
            {
                previous.local.clone()
            }
            _ => match fresh_local() {
                Ok(local) => Arc::new(local),
                Err(message) => {
                    let at = config
                        .quota_store
                        .as_ref()
                        .map(|s| s.path.referenced)
                        .unwrap_or(gatehouse_config::Location::UNKNOWN);
                    return Err(vec![Problem::at(&at, message)]);
                }
            },
        };
        let mut problems = Vec::new();
        let mut policies = HashMap::new();
        for (name, quota) in &config.quotas {
            match Quota::new(name, &quota.value, redis.clone(), local.clone()) {
                Ok(compiled) => {
                    policies.insert(name.clone(), Arc::new(compiled));
                }
                Err(message) => problems.push(Problem::at(
                    &quota.referenced,
                    format!("quota `{name}`: {message}"),
                )),
            }
        }
        if problems.is_empty() {
            Ok(Self { policies, local })
        } else {
            Err(problems)
        }
    }

    pub fn start_background_tasks(&self) {
        if self.policies.values().any(|q| q.mode == LimitMode::Local) {
            self.local.start();
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Quota>> {
        self.policies.get(name).cloned()
    }

    /// Save local counters now (at shutdown).
    pub fn flush(&self) -> Result<(), String> {
        self.local.flush()
    }

    /// A quota that is not in the configuration (an API plan's), counting in the same
    /// local counters (saved to `quota_store`) or in Redis.
    pub(crate) fn extra(
        &self,
        name: &str,
        config: &QuotaConfig,
        redis: Option<Arc<RedisLink>>,
    ) -> Result<Quota, String> {
        if config.mode == LimitMode::Local {
            self.local.start();
        }
        Quota::new(name, config, redis, self.local.clone())
    }
}

/// KEYS[1]: the counter. ARGV: allowance, expiry (unix seconds). Returns admitted (0/1) and
/// the count after the request.
const QUOTA_SCRIPT: &str = r#"
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count >= tonumber(ARGV[1]) then return {0, count} end
count = redis.call('INCR', KEYS[1])
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return {1, count}
"#;

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(QUOTA_SCRIPT));

impl Quota {
    fn new(
        name: &str,
        config: &QuotaConfig,
        redis: Option<Arc<RedisLink>>,
        local: Arc<LocalQuotas>,
    ) -> Result<Self, String> {
        if config.mode == LimitMode::Cluster && redis.is_none() {
            return Err("cluster mode needs `redis`".to_owned());
        }
        Ok(Self {
            name: name.to_owned(),
            requests: config.requests,
            period: config.period,
            key: limit_key::parse(&config.key)?,
            mode: config.mode,
            on_failure: config.on_redis_failure,
            headers: config.headers,
            redis,
            local,
        })
    }

    /// `request`'s allowance, the period it falls in, seconds to the next period, and its
    /// counter key.
    fn locate(&self, request: &LimitRequest<'_>) -> (u64, i64, u64, String) {
        let allowance = request
            .identity
            .and_then(|i| i.consumer.quotas.get(&self.name).copied())
            .unwrap_or(self.requests);
        let (period, reset) = period_of(self.period, now_unix());
        let mut key = String::new();
        for (index, part) in self.key.iter().enumerate() {
            if index > 0 {
                key.push(':');
            }
            let mut value = String::new();
            key_value(part, request).write(&mut value);
            key.push_str(&escape_part(&value));
        }
        (allowance, period, reset, key)
    }

    fn redis_key(&self, period: i64, key: &str) -> String {
        format!("gatehouse:quota:{}:{period}:{key}", escape_part(&self.name))
    }

    /// The quota's state for `request` now, counting nothing: for `explain` against the
    /// running gateway. In cluster mode the count is read from Redis.
    pub async fn peek(&self, request: &LimitRequest<'_>) -> Result<QuotaState, String> {
        let (allowance, period, reset, key) = self.locate(request);
        let used = match (self.mode, &self.redis) {
            (LimitMode::Cluster, Some(redis)) => redis
                .get_count(&self.redis_key(period, &key))
                .await
                .map_err(|e| format!("reading the quota from Redis: {e}"))?,
            _ => self.local.count(&self.name, &key, period),
        };
        Ok(QuotaState {
            allowance,
            used,
            remaining: allowance.saturating_sub(used),
            reset_seconds: reset,
        })
    }

    /// Count the request against the quota: `Ok` with headers, or 429 `quota_exceeded`
    /// with `Retry-After` until the next period.
    pub async fn check(
        &self,
        request: &LimitRequest<'_>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Rejection> {
        let (allowance, period, reset, key) = self.locate(request);
        let (admitted, remaining) = match (self.mode, &self.redis) {
            (LimitMode::Cluster, Some(redis)) => {
                let redis_key = self.redis_key(period, &key);
                let expires = now_unix() + reset as i64 + 3600;
                match redis
                    .run_script(&SCRIPT, &[redis_key], &[allowance as i64, expires])
                    .await
                {
                    Ok(values) if values.len() == 2 => {
                        let count = values[1].max(0) as u64;
                        (values[0] == 1, allowance.saturating_sub(count))
                    }
                    _ if self.on_failure == FailureMode::Open => {
                        self.local.take(&self.name, key, period, allowance)
                    }
                    _ => {
                        return Err(Rejection::unavailable(
                            "quota_unavailable",
                            "the shared quota store is unavailable",
                        )
                        .with_header(RETRY_AFTER, HeaderValue::from_static("1")))
                    }
                }
            }
            _ => self.local.take(&self.name, key, period, allowance),
        };
        let mut headers = Vec::new();
        if self.headers {
            let window = match self.period {
                QuotaPeriod::Day => 86_400,
                QuotaPeriod::Month => 2_592_000,
            };
            if let Ok(value) = HeaderValue::from_str(&policy_item(&self.name, allowance, window)) {
                headers.push((RATELIMIT_POLICY, value));
            }
            if let Ok(value) = HeaderValue::from_str(&status_item(&self.name, remaining, reset)) {
                headers.push((RATELIMIT, value));
            }
        }
        if admitted {
            return Ok(headers);
        }
        let mut rejection = Rejection::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            format!(
                "quota `{}` of {allowance} requests per {} is used up",
                self.name,
                match self.period {
                    QuotaPeriod::Day => "day",
                    QuotaPeriod::Month => "month",
                }
            ),
        )
        .with_header(RETRY_AFTER, HeaderValue::from(reset));
        rejection.headers.extend(headers);
        Err(rejection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_calendar_aligned_in_utc() {
        // 2026-11-29T19:00:00Z
        let t = 1_795_978_800;
        let (day, until_midnight) = period_of(QuotaPeriod::Day, t);
        assert_eq!(day, t / 86_400);
        assert_eq!(until_midnight, 5 * 3600);
        let (month, until_december) = period_of(QuotaPeriod::Month, t);
        assert_eq!(month, 2026 * 12 + 10);
        assert_eq!(until_december, 24 * 3600 + 5 * 3600);
        // 2026-12-31T23:00:00Z rolls into January 2027.
        let (_, until_new_year) = period_of(QuotaPeriod::Month, 1_798_758_000);
        assert_eq!(until_new_year, 3600);
    }
}
