//! Usage metering: requests admitted under an API product's subscription, counted in the
//! log phase per application, product, plan, route and UTC day. The request path adds to
//! an in-memory aggregate under a short lock; a background task takes the aggregate and
//! writes it to the store (and gives it back when the store fails, so nothing is lost).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Upper bounds of the latency buckets, in milliseconds; the last bucket is everything
/// slower.
pub const LATENCY_BUCKETS_MS: [u64; 5] = [10, 50, 100, 250, 1000];

/// What one aggregate counts separately.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UsageKey {
    /// Days since 1970-01-01, UTC.
    pub day: i64,
    pub consumer: Arc<str>,
    pub product: Arc<str>,
    pub plan: Arc<str>,
    pub route: Arc<str>,
    /// Sandbox traffic: metered, never billed.
    pub sandbox: bool,
}

/// The counts of one aggregate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageCounts {
    pub requests: u64,
    /// Answers 400–499.
    pub client_errors: u64,
    /// Answers 500–599.
    pub server_errors: u64,
    pub latency_ms_sum: u64,
    /// Requests per latency bucket ([`LATENCY_BUCKETS_MS`], then slower).
    pub latency_buckets: [u64; 6],
}

impl UsageCounts {
    fn add(&mut self, other: &UsageCounts) {
        self.requests += other.requests;
        self.client_errors += other.client_errors;
        self.server_errors += other.server_errors;
        self.latency_ms_sum += other.latency_ms_sum;
        for (mine, theirs) in self.latency_buckets.iter_mut().zip(other.latency_buckets) {
            *mine += theirs;
        }
    }
}

/// One metered request.
pub struct Metered<'a> {
    pub consumer: &'a Arc<str>,
    pub product: &'a Arc<str>,
    pub plan: &'a Arc<str>,
    pub route: &'a str,
    pub sandbox: bool,
    pub status: u16,
    pub latency: Duration,
}

/// The aggregate not yet written to the store.
#[derive(Default)]
pub struct UsageMeter {
    pending: Mutex<HashMap<UsageKey, UsageCounts>>,
}

impl UsageMeter {
    pub fn record(&self, request: Metered<'_>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let millis = request.latency.as_millis().min(u128::from(u64::MAX)) as u64;
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|bound| millis <= *bound)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        let mut counts = UsageCounts {
            requests: 1,
            latency_ms_sum: millis,
            ..UsageCounts::default()
        };
        counts.latency_buckets[bucket] = 1;
        match request.status {
            400..=499 => counts.client_errors = 1,
            500..=599 => counts.server_errors = 1,
            _ => {}
        }
        let key = UsageKey {
            day: now.div_euclid(86_400),
            consumer: request.consumer.clone(),
            product: request.product.clone(),
            plan: request.plan.clone(),
            route: Arc::from(request.route),
            sandbox: request.sandbox,
        };
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.entry(key).or_default().add(&counts);
    }

    /// Everything counted since the last take.
    pub fn take(&self) -> Vec<(UsageKey, UsageCounts)> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *pending).into_iter().collect()
    }

    /// Gives back what could not be written, to be written with the next batch.
    pub fn restore(&self, batch: Vec<(UsageKey, UsageCounts)>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (key, counts) in batch {
            pending.entry(key).or_default().add(&counts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_aggregate_by_key_and_failed_writes_come_back() {
        let meter = UsageMeter::default();
        let (alice, books, gold) = (Arc::from("alice"), Arc::from("books"), Arc::from("gold"));
        for (status, millis) in [(200, 3), (404, 60), (503, 2000)] {
            meter.record(Metered {
                consumer: &alice,
                product: &books,
                plan: &gold,
                route: "books",
                sandbox: false,
                status,
                latency: Duration::from_millis(millis),
            });
        }
        let batch = meter.take();
        assert_eq!(batch.len(), 1);
        let counts = batch[0].1;
        assert_eq!(
            (counts.requests, counts.client_errors, counts.server_errors),
            (3, 1, 1)
        );
        assert_eq!(counts.latency_ms_sum, 2063);
        assert_eq!(counts.latency_buckets, [1, 0, 1, 0, 0, 1]);
        assert!(meter.take().is_empty());
        meter.restore(batch.clone());
        meter.restore(batch);
        assert_eq!(meter.take()[0].1.requests, 6);
    }
}
