//! Concurrency limits (load shedding): at most `max` requests of a route or a service in
//! flight; beyond it the gateway answers 503 with `Retry-After` at once instead of queueing
//! work the upstream cannot take.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use http::header::{HeaderValue, RETRY_AFTER};

use crate::rejection::Rejection;

pub struct InFlightLimit {
    max: u32,
    current: Arc<AtomicU32>,
    /// `route \`NAME\`` or `service \`NAME\``, for the refusal's detail.
    scope: String,
}

/// Holds one slot until dropped (when the response body has been sent).
pub struct InFlightGuard(Arc<AtomicU32>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InFlightLimit {
    pub fn new(max: u32, scope: String) -> Self {
        Self {
            max,
            current: Arc::new(AtomicU32::new(0)),
            scope,
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.current.load(Ordering::Acquire)
    }

    pub fn try_acquire(&self) -> Result<InFlightGuard, Rejection> {
        let before = self.current.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.current.fetch_sub(1, Ordering::AcqRel);
            return Err(Rejection::unavailable(
                "overloaded",
                format!(
                    "{} has {} requests in flight, its limit",
                    self.scope, self.max
                ),
            )
            .with_header(RETRY_AFTER, HeaderValue::from_static("1")));
        }
        Ok(InFlightGuard(self.current.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_released_when_guards_drop() {
        let limit = InFlightLimit::new(2, "route `r`".to_owned());
        let first = limit.try_acquire().unwrap();
        let _second = limit.try_acquire().unwrap();
        let refused = limit.try_acquire().err().unwrap();
        assert_eq!(refused.status, http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.code, "overloaded");
        drop(first);
        assert!(limit.try_acquire().is_ok());
        assert_eq!(limit.in_flight(), 1);
    }
}
