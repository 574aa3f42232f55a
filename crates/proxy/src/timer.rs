//! Upstream request timeouts on Tokio timers reused per thread.
//!
//! `tokio::time::timeout` gives every request a new timer: registered in the runtime's
//! timer wheel under its lock at the first poll, and taken out under the lock again when
//! the response comes first, as it nearly always does (about 700 instructions a request,
//! 2.5 % of a proxied GET; docs/benchmarks.md). Here a thread keeps the timers of finished
//! requests. A kept timer stays in the wheel with its old deadline, and moving it to a
//! later one is a compare-and-swap on the entry (`Sleep::reset`); the wheel re-files it
//! when the old deadline comes round. A kept timer that fires meanwhile wakes the task that
//! last waited on it once, for nothing; resetting it registers it again. A kept timer also
//! holds that task's waker, so a connection task that has ended keeps its (small) task
//! allocation until its timer is reused: at most `SPARE_TIMERS` of them per thread.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::runtime::{Handle, Id};
use tokio::time::{Instant, Sleep};

/// Timers kept per thread: about the requests one thread has in flight at once.
const SPARE_TIMERS: usize = 128;

thread_local! {
    static SPARE: RefCell<Vec<ReusedTimer>> = const { RefCell::new(Vec::new()) };
}

/// The deadline passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

pin_project_lite::pin_project! {
    /// `future`, or [`Elapsed`] at the deadline. The timer is taken only if the first poll
    /// leaves the future pending, and kept for the thread's next request when this is
    /// dropped.
    pub struct Timeout<F> {
        #[pin]
        future: F,
        deadline: Instant,
        timer: Option<ReusedTimer>,
    }

    impl<F> PinnedDrop for Timeout<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(timer) = this.project().timer.take() {
                timer.keep();
            }
        }
    }
}

/// Run `future` until `deadline`.
pub fn timeout_at<F: Future>(deadline: Instant, future: F) -> Timeout<F> {
    Timeout {
        future,
        deadline,
        timer: None,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        let deadline = *this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| ReusedTimer::take(deadline));
        timer.sleep.as_mut().poll(cx).map(|()| Err(Elapsed))
    }
}

/// A timer, and the runtime whose wheel it is in: a thread may run one runtime after
/// another (tests do), and a timer of a runtime that has shut down must not be polled.
struct ReusedTimer {
    /// `None` outside a runtime (then the timer panics when polled, as Tokio's own does).
    runtime: Option<Id>,
    sleep: Pin<Box<Sleep>>,
}

impl ReusedTimer {
    /// A kept timer of the current runtime set to `deadline`, or a new one.
    fn take(deadline: Instant) -> ReusedTimer {
        let runtime = Handle::try_current().ok().map(|handle| handle.id());
        let kept = runtime.and_then(|runtime| {
            SPARE
                .try_with(|spare| {
                    let mut spare = spare.try_borrow_mut().ok()?;
                    let timer = spare.pop()?;
                    if timer.runtime == Some(runtime) {
                        Some(timer)
                    } else {
                        // Another runtime's timers: this thread has moved on from it.
                        spare.clear();
                        None
                    }
                })
                .ok()
                .flatten()
        });
        match kept {
            Some(mut timer) => {
                timer.sleep.as_mut().reset(deadline);
                timer
            }
            None => ReusedTimer {
                runtime,
                sleep: Box::pin(tokio::time::sleep_until(deadline)),
            },
        }
    }

    /// Keep this timer for the thread's next request.
    fn keep(self) {
        if self.runtime.is_none() {
            return;
        }
        // A thread being torn down keeps nothing: the timer is simply dropped.
        let _ = SPARE.try_with(|spare| {
            if let Ok(mut spare) = spare.try_borrow_mut() {
                if spare.len() < SPARE_TIMERS {
                    spare.push(self);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn spare_count() -> usize {
        SPARE.with(|spare| spare.borrow().len())
    }

    /// Waits on a future that never finishes until `ms` from now, and checks that the
    /// timeout ended it then, not earlier (and not much later).
    async fn times_out_after(ms: u64) {
        let started = Instant::now();
        let limit = Duration::from_millis(ms);
        let answer = timeout_at(started + limit, std::future::pending::<()>()).await;
        assert_eq!(answer, Err(Elapsed));
        let waited = started.elapsed();
        assert!(
            waited >= limit && waited < Duration::from_secs(30),
            "{waited:?}"
        );
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_ready_future_takes_no_timer_and_a_pending_one_keeps_its_timer() {
        runtime().block_on(async {
            let start = spare_count();
            let deadline = Instant::now() + Duration::from_secs(5);
            assert_eq!(timeout_at(deadline, async { 7 }).await, Ok(7));
            assert_eq!(spare_count(), start, "a ready future needs no timer");
            let answer = timeout_at(deadline, async {
                tokio::task::yield_now().await;
                8
            })
            .await;
            assert_eq!(answer, Ok(8));
            assert_eq!(spare_count(), start + 1, "the timer is kept");
            // The next request takes the kept timer.
            let answer = timeout_at(deadline + Duration::from_secs(1), async {
                tokio::task::yield_now().await;
                9
            })
            .await;
            assert_eq!(answer, Ok(9));
            assert_eq!(spare_count(), start + 1);
        });
    }

    #[test]
    fn kept_timers_fire_at_their_new_deadline_earlier_or_later() {
        runtime().block_on(async {
            // Kept with a far deadline, reused with a near one: it fires at the near one.
            let far = Instant::now() + Duration::from_secs(60);
            let done = timeout_at(far, tokio::task::yield_now()).await;
            assert_eq!(done, Ok(()));
            times_out_after(50).await;
            // That timer fired; reused with a later deadline it waits for that deadline.
            times_out_after(80).await;
        });
    }

    #[test]
    fn a_kept_timer_that_fired_while_kept_does_not_end_the_next_request_early() {
        runtime().block_on(async {
            let soon = Instant::now() + Duration::from_millis(20);
            assert_eq!(timeout_at(soon, tokio::task::yield_now()).await, Ok(()));
            // The kept timer's old deadline passes while nobody waits on it.
            tokio::time::sleep(Duration::from_millis(60)).await;
            let started = Instant::now();
            let answer = timeout_at(started + Duration::from_millis(100), async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                "answered"
            })
            .await;
            assert_eq!(answer, Ok("answered"));
        });
    }

    #[test]
    fn timers_of_a_runtime_that_ended_are_not_reused() {
        runtime().block_on(async {
            let deadline = Instant::now() + Duration::from_secs(5);
            assert_eq!(timeout_at(deadline, tokio::task::yield_now()).await, Ok(()));
        });
        assert!(spare_count() >= 1);
        // A new runtime on the same thread: polling the old runtime's timer would panic.
        runtime().block_on(times_out_after(30));
        assert_eq!(spare_count(), 1, "the old runtime's timers were dropped");
    }
}
