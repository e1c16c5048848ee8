//! A sleep that ends within microseconds of its deadline, for handlers whose duration is the
//! point (the `noop` job that `make bench jobs` sleeps 5 ms in, 32 at a time).
//!
//! tokio's timer rounds every deadline up to its next millisecond tick and then fires when
//! the runtime next parks and turns, so a chained 5 ms sleep takes 5.2–6 ms: measured here
//! with 32 tasks chaining 5 ms sleeps on the 2-core machine, tokio's sleep overshot by
//! 1.1–1.2 ms (5,150 sleeps/s against a 6,400 limit), "tokio to 1 ms before, then a blocking
//! thread" by 0.21–0.32 ms, and this module by 0.07–0.14 ms.
//!
//! How: the runtime's timer sleeps until [`COARSE_MARGIN`] before the deadline (so long
//! sleeps cost nothing here and stay cancellable the usual way); the rest is waited on one
//! shared thread, `itsur-timer`, whose kernel timer slack is 1 ns (the default 50 µs slack
//! would delay every wake-up by up to that much). It keeps the pending deadlines in a heap
//! and wakes each sleeping task through a oneshot channel at its deadline. The heap holds one
//! entry per task in its last [`COARSE_MARGIN`] (a dropped sleep's entry leaves at its
//! deadline), so it is bounded by the tasks sleeping at once.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::num::NonZeroU64;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How long before the deadline the runtime's timer hands over to the precise thread: the
/// runtime's timer fires up to about a millisecond late, and must not fire after it.
const COARSE_MARGIN: Duration = Duration::from_millis(2);

/// Sleeps `d`: at least `d`, and only microseconds more.
pub async fn sleep(d: Duration) {
    let Some(deadline) = Instant::now().checked_add(d) else {
        // Beyond the clock's range: never ends (the caller's cancellation or timeout ends it).
        std::future::pending::<()>().await;
        return;
    };
    if let Some(coarse) = deadline.checked_sub(COARSE_MARGIN) {
        tokio::time::sleep_until(coarse.into()).await;
    }
    if Instant::now() >= deadline {
        return;
    }
    if let Some(timer) = timer() {
        let _ = timer.at(deadline).await; // an error only means the timer thread is gone
    }
    // Never shorter than asked, whatever happened to the timer thread.
    if Instant::now() < deadline {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// The shared timer thread, started on first use; None if it could not be started (the
/// runtime's timer is used instead).
fn timer() -> Option<&'static Timer> {
    static TIMER: OnceLock<Option<Arc<Timer>>> = OnceLock::new();
    TIMER
        .get_or_init(|| {
            let timer = Arc::new(Timer::default());
            let t = timer.clone();
            std::thread::Builder::new()
                .name("itsur-timer".to_owned())
                .spawn(move || t.run())
                .map_err(|e| tracing::warn!(error = %e, "precise timer thread not started"))
                .ok()
                .map(|_| timer)
        })
        .as_deref()
}

/// Pending deadlines, earliest first, and the condition the thread waits on.
#[derive(Default)]
struct Timer {
    heap: Mutex<BinaryHeap<Pending>>,
    changed: Condvar,
}

/// One sleeping task's deadline.
struct Pending {
    deadline: Instant,
    wake: oneshot::Sender<()>,
}

// A min-heap by deadline (BinaryHeap is a max-heap).
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        other.deadline.cmp(&self.deadline)
    }
}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.deadline == other.deadline
    }
}

impl Eq for Pending {}

impl Timer {
    /// Resolves at `deadline`.
    fn at(&self, deadline: Instant) -> oneshot::Receiver<()> {
        let (wake, rx) = oneshot::channel();
        let mut heap = self.heap.lock().unwrap_or_else(PoisonError::into_inner);
        // The thread only needs to hear of a deadline earlier than the one it waits for.
        let earliest = heap.peek().is_none_or(|p| deadline < p.deadline);
        heap.push(Pending { deadline, wake });
        drop(heap);
        if earliest {
            self.changed.notify_one();
        }
        rx
    }

    /// The thread's loop: wakes every task whose deadline has come, then waits for the next
    /// deadline or an earlier one.
    fn run(&self) {
        // Timer slack only ever delays: 1 ns is the least (0 would restore the default).
        if let Err(e) = rustix::thread::set_current_timer_slack(NonZeroU64::new(1)) {
            tracing::debug!(error = %e, "timer slack unchanged");
        }
        let mut heap = self.heap.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let now = Instant::now();
            while heap.peek().is_some_and(|p| p.deadline <= now) {
                if let Some(p) = heap.pop() {
                    let _ = p.wake.send(()); // the sleep was dropped (cancelled): nothing to wake
                }
            }
            heap = match heap.peek().map(|p| p.deadline - now) {
                None => self
                    .changed
                    .wait(heap)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(wait) => {
                    self.changed
                        .wait_timeout(heap, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    /// Never shorter than asked (the precision is `make bench`'s to show), for sleeps that
    /// end on the timer thread, on the runtime's timer and in between.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_sleep_lasts_at_least_as_long_as_asked() {
        let tasks: Vec<_> = (0..200_u64)
            .map(|i| {
                // 0–7 ms in 37 µs steps, started in an order unrelated to their deadlines.
                let d = Duration::from_micros((i * 7_919) % 200 * 37);
                tokio::spawn(async move {
                    let started = Instant::now();
                    super::sleep(d).await;
                    (d, started.elapsed())
                })
            })
            .collect();
        for t in tasks {
            let (asked, slept) = t.await.unwrap();
            assert!(slept >= asked, "asked {asked:?}, slept {slept:?}");
        }
    }

    /// A sleep dropped before its deadline (a cancelled job) leaves the timer working.
    #[tokio::test]
    async fn a_dropped_sleep_does_not_stop_the_others() {
        // Shorter than the runtime's part: polled once, it waits on the timer thread.
        let mut dropped = Box::pin(super::sleep(Duration::from_millis(1)));
        assert!(futures_util::poll!(dropped.as_mut()).is_pending());
        drop(dropped);
        let started = Instant::now();
        super::sleep(Duration::from_millis(3)).await;
        assert!(started.elapsed() >= Duration::from_millis(3));
    }

    /// A duration past the clock's range sleeps (until cancelled) instead of panicking.
    #[tokio::test]
    async fn a_sleep_beyond_the_clock_never_ends() {
        let r = tokio::time::timeout(
            Duration::from_millis(20),
            super::sleep(Duration::from_secs(u64::MAX)),
        )
        .await;
        assert!(r.is_err());
    }
}
