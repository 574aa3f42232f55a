//! One upstream address and the live state the balancer, health checks and outlier
//! detection keep about it. All state is atomics: the request path takes no lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use gatehouse_config::OutlierDetection;

/// Milliseconds of a monotonic clock, plus one (so 0 can mean "never"): a cheap clock for
/// atomics, read several times a request (pool, balancer, outlier detection, idle
/// accounting). On Linux it is `CLOCK_MONOTONIC_COARSE`, read from the vDSO without
/// reading the TSC, at the kernel tick's resolution (1 to 4 ms: as fine as the timeouts
/// and ejection times it measures).
#[cfg(target_os = "linux")]
pub fn now_ms() -> u64 {
    use rustix::time::{clock_gettime, ClockId};
    let now = clock_gettime(ClockId::MonotonicCoarse);
    now.tv_sec.unsigned_abs() * 1000 + now.tv_nsec.unsigned_abs() / 1_000_000 + 1
}

/// Milliseconds since the clock was first read, plus one (so 0 can mean "never").
#[cfg(not(target_os = "linux"))]
pub fn now_ms() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Peak-EWMA decay: how quickly a latency spike is forgotten.
const EWMA_DECAY_MS: f64 = 10_000.0;

pub struct Endpoint {
    pub addr: SocketAddr,
    /// Connections to this endpoint.
    pub pool: super::Pool,
    pub authority: http::uri::Authority,
    pub weight: u32,
    healthy: AtomicBool,
    check_streak: AtomicU32,
    consecutive_failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
    in_flight: AtomicU32,
    /// f64 bits of the peak-EWMA latency in microseconds.
    ewma_us: AtomicU64,
    ewma_stamp_ms: AtomicU64,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, weight: u32) -> Self {
        let authority = addr
            .to_string()
            .parse()
            .unwrap_or_else(|_| http::uri::Authority::from_static("invalid"));
        Self {
            addr,
            pool: super::Pool::default(),
            authority,
            weight,
            healthy: AtomicBool::new(true),
            check_streak: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            ewma_us: AtomicU64::new(0f64.to_bits()),
            ewma_stamp_ms: AtomicU64::new(now_ms()),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now
    }

    /// Usable for new requests: passing health checks and not ejected.
    pub fn is_available(&self, now: u64) -> bool {
        self.is_healthy() && !self.is_ejected(now)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Load estimate for least-request balancing: latency weighted by outstanding requests.
    pub fn cost(&self) -> f64 {
        let ewma = f64::from_bits(self.ewma_us.load(Ordering::Relaxed));
        let pending = f64::from(self.in_flight() + 1);
        // An endpoint without samples yet looks cheap, so new endpoints get tried.
        (ewma.max(1.0)) * pending / f64::from(self.weight.max(1))
    }

    pub fn start_request(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    pub fn observe_latency(&self, latency: Duration) {
        let sample = latency.as_micros() as f64;
        let now = now_ms();
        let last = self.ewma_stamp_ms.swap(now, Ordering::Relaxed);
        let current = f64::from_bits(self.ewma_us.load(Ordering::Relaxed));
        let next = if sample > current {
            sample // peak: react to a slowdown at once
        } else {
            let weight = (-((now.saturating_sub(last)) as f64) / EWMA_DECAY_MS).exp();
            current * weight + sample * (1.0 - weight)
        };
        self.ewma_us.store(next.to_bits(), Ordering::Relaxed);
    }

    /// Record the outcome of a request for passive outlier detection. Returns true when this
    /// failure ejected the endpoint. `may_eject` says whether the ejection cap allows it.
    pub fn record_outcome(
        &self,
        success: bool,
        policy: &OutlierDetection,
        may_eject: bool,
    ) -> bool {
        if success {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            return false;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < policy.consecutive_failures || !may_eject {
            return false;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let count = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let base = policy.base_ejection_time.0.as_millis() as u64;
        let max = policy.max_ejection_time.0.as_millis() as u64;
        let duration = base.saturating_mul(1u64 << (count - 1).min(20)).min(max);
        self.ejected_until_ms
            .store(now_ms() + duration, Ordering::Relaxed);
        true
    }

    pub fn ejection_count(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Feed one active health-check result; flips health after enough agreeing results.
    pub fn record_check(&self, passed: bool, healthy_threshold: u32, unhealthy_threshold: u32) {
        let healthy = self.is_healthy();
        if passed == healthy {
            self.check_streak.store(0, Ordering::Relaxed);
            return;
        }
        let streak = self.check_streak.fetch_add(1, Ordering::Relaxed) + 1;
        let threshold = if healthy {
            unhealthy_threshold
        } else {
            healthy_threshold
        };
        if streak >= threshold {
            self.healthy.store(passed, Ordering::Relaxed);
            self.check_streak.store(0, Ordering::Relaxed);
            tracing::info!(endpoint = %self.addr, healthy = passed, "health check changed endpoint state");
        }
    }
}

/// Counts a request as outstanding until dropped (also when the client goes away).
pub struct InFlight<'a>(&'a Endpoint);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_config::HumanDuration;

    fn policy() -> OutlierDetection {
        OutlierDetection {
            consecutive_failures: 2,
            base_ejection_time: HumanDuration::millis(100),
            max_ejection_time: HumanDuration::millis(250),
            max_ejection_percent: 100,
        }
    }

    #[test]
    fn ejection_time_grows_and_is_capped() {
        let endpoint = Endpoint::new("127.0.0.1:1".parse().unwrap(), 1);
        let policy = policy();
        let mut durations = Vec::new();
        for _ in 0..3 {
            assert!(!endpoint.record_outcome(false, &policy, true));
            let before = now_ms();
            assert!(endpoint.record_outcome(false, &policy, true));
            durations.push(endpoint.ejected_until_ms.load(Ordering::Relaxed) - before);
        }
        assert!((95..=110).contains(&durations[0]), "{durations:?}");
        assert!((195..=210).contains(&durations[1]), "{durations:?}");
        assert!((245..=260).contains(&durations[2]), "{durations:?}");
    }

    #[test]
    fn success_resets_the_failure_streak() {
        let endpoint = Endpoint::new("127.0.0.1:1".parse().unwrap(), 1);
        let policy = policy();
        endpoint.record_outcome(false, &policy, true);
        endpoint.record_outcome(true, &policy, true);
        assert!(!endpoint.record_outcome(false, &policy, true));
        assert!(endpoint.is_available(now_ms()));
    }
}
