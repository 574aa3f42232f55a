//! Usage metering: requests admitted under an API product's subscription, counted in the
//! log phase per application, product, plan, route and UTC day. The request path adds to
//! an in-memory aggregate under a short lock; a background task takes the aggregate and
//! writes it to the store (and gives it back when the store fails, so nothing is lost).
//! The last minute is also kept per second for the dashboard's live view.

use std::collections::{HashMap, VecDeque};
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

/// The aggregate not yet written to the store, and the last minute per second.
#[derive(Default)]
pub struct UsageMeter {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<UsageKey, UsageCounts>,
    /// (unix second, its counts), oldest first, at most [`LIVE_SECS`].
    live: VecDeque<(i64, SecondCounts)>,
}

/// One second of the live view: (route, consumer) → counts.
type SecondCounts = HashMap<(Arc<str>, Arc<str>), UsageCounts>;

/// How far back the live view reaches.
pub const LIVE_SECS: i64 = 60;

/// Metered traffic of the last seconds on this gateway (the dashboard's live view).
#[derive(Debug, Default)]
pub struct LiveTraffic {
    /// Every second of the window, oldest first (zeros included).
    pub per_second: Vec<(i64, UsageCounts)>,
    /// By (route, consumer), over the window.
    pub by_route_and_consumer: Vec<(Arc<str>, Arc<str>, UsageCounts)>,
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
        let route: Arc<str> = Arc::from(request.route);
        let key = UsageKey {
            day: now.div_euclid(86_400),
            consumer: request.consumer.clone(),
            product: request.product.clone(),
            plan: request.plan.clone(),
            route: route.clone(),
            sandbox: request.sandbox,
        };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.pending.entry(key).or_default().add(&counts);
        if inner.live.back().is_none_or(|(second, _)| *second != now) {
            while inner
                .live
                .front()
                .is_some_and(|(second, _)| *second <= now - LIVE_SECS)
            {
                inner.live.pop_front();
            }
            inner.live.push_back((now, HashMap::new()));
        }
        if let Some((_, seconds)) = inner.live.back_mut() {
            seconds
                .entry((route, request.consumer.clone()))
                .or_default()
                .add(&counts);
        }
    }

    /// The last `window` seconds (at most [`LIVE_SECS`]) up to `now`.
    pub fn live(&self, now: i64, window: i64) -> LiveTraffic {
        let window = window.clamp(1, LIVE_SECS);
        let first = now - window + 1;
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut per_second: Vec<(i64, UsageCounts)> =
            (first..=now).map(|s| (s, UsageCounts::default())).collect();
        let mut by_key: HashMap<(Arc<str>, Arc<str>), UsageCounts> = HashMap::new();
        for (second, counts) in inner.live.iter().filter(|(s, _)| (first..=now).contains(s)) {
            let slot = &mut per_second[(second - first) as usize].1;
            for (key, value) in counts {
                slot.add(value);
                by_key.entry(key.clone()).or_default().add(value);
            }
        }
        let mut by_route_and_consumer: Vec<(Arc<str>, Arc<str>, UsageCounts)> = by_key
            .into_iter()
            .map(|((route, consumer), counts)| (route, consumer, counts))
            .collect();
        by_route_and_consumer.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        LiveTraffic {
            per_second,
            by_route_and_consumer,
        }
    }

    /// Everything counted since the last take.
    pub fn take(&self) -> Vec<(UsageKey, UsageCounts)> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut inner.pending).into_iter().collect()
    }

    /// Gives back what could not be written, to be written with the next batch.
    pub fn restore(&self, batch: Vec<(UsageKey, UsageCounts)>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (key, counts) in batch {
            inner.pending.entry(key).or_default().add(&counts);
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
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let live = meter.live(now + 1, 10);
        assert_eq!(live.per_second.len(), 10);
        let seen: u64 = live.per_second.iter().map(|(_, c)| c.requests).sum();
        assert_eq!(seen, 3, "the live view keeps what was taken for the store");
        assert_eq!(live.by_route_and_consumer.len(), 1);
        assert_eq!(&*live.by_route_and_consumer[0].0, "books");
        assert_eq!(
            meter
                .live(now + LIVE_SECS + 2, 60)
                .per_second
                .iter()
                .map(|(_, c)| c.requests)
                .sum::<u64>(),
            0
        );
        meter.restore(batch.clone());
        meter.restore(batch);
        assert_eq!(meter.take()[0].1.requests, 6);
    }
}
