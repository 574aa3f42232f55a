//! Retry budget: retries may add at most a ratio of live traffic plus a small floor, so that
//! retries cannot multiply load on a service that is already failing.

use std::sync::atomic::{AtomicU64, Ordering};

use super::endpoint::now_ms;

const WINDOW_MS: u64 = 10_000;

pub struct RetryBudget {
    ratio: f64,
    floor_per_window: u64,
    window_start_ms: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        Self {
            ratio,
            floor_per_window: u64::from(min_per_second) * WINDOW_MS / 1000,
            window_start_ms: AtomicU64::new(now_ms()),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    fn roll(&self) {
        let now = now_ms();
        let start = self.window_start_ms.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= WINDOW_MS
            && self
                .window_start_ms
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    /// Count one original request.
    pub fn deposit(&self) {
        self.roll();
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Take permission for one retry; false when the budget is spent.
    pub fn try_withdraw(&self) -> bool {
        self.roll();
        let allowed = self.floor_per_window
            + (self.requests.load(Ordering::Relaxed) as f64 * self.ratio) as u64;
        let used = self.retries.fetch_add(1, Ordering::Relaxed);
        if used < allowed {
            true
        } else {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_floor_plus_ratio() {
        let budget = RetryBudget::new(0.2, 1); // floor 10 per window
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..100).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 30);
    }
}
