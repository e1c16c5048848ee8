//! The two waiting schedules of the process, in one place:
//!
//! - **Retries of work** shared by jobs, the outbox relay and outbound clients: 5 s · 5ⁿ (5 s,
//!   25 s, 125 s, 625 s, …) capped at [`CAP`], with ±[`JITTER`] so retries of many jobs that
//!   failed together (a provider outage) do not come back in one wave ([`delay`]).
//! - **Reconnects** of every long-lived connection loop — waiting for Postgres at start-up,
//!   the LISTEN connections of the relay and the worker (`store::listen`), the gateway's Redis
//!   subscription, the worker's claim connection, the relay's batch loop: [`Reconnect`],
//!   250 ms doubling to 5 s by default, back to the start after a success.
//!
//! L1: pure computation (plus `rand`, and `shutdown` for [`Reconnect::wait`]); no
//! configuration. `store` uses it too: it is the one module of `resilience` with no I/O.

use std::time::Duration;

use rand::Rng;

use crate::shutdown::Shutdown;

/// First retry delay.
pub const BASE: Duration = Duration::from_secs(5);
/// Growth factor per attempt.
pub const FACTOR: u32 = 5;
/// Longest delay, jitter included.
pub const CAP: Duration = Duration::from_secs(3600);
/// Relative jitter: the delay is drawn uniformly from ±20 % of the schedule.
pub const JITTER: f64 = 0.2;

/// The un-jittered delay after `attempt` failed attempts: 1 → 5 s, 2 → 25 s, 3 → 125 s, …,
/// capped at [`CAP`]. `attempt` 0 is treated as 1.
pub fn schedule(attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1);
    FACTOR
        .checked_pow(exp)
        .and_then(|f| BASE.checked_mul(f))
        .map_or(CAP, |d| d.min(CAP))
}

/// The delay before retrying after `attempt` failed attempts (1 after the first failure):
/// [`schedule`] with ±20 % jitter, never above [`CAP`].
pub fn delay(attempt: u32) -> Duration {
    let factor = rand::rng().random_range((1.0 - JITTER)..=(1.0 + JITTER));
    schedule(attempt).mul_f64(factor).min(CAP)
}

/// Exponential backoff of a reconnect loop: the first wait is `first`, each failure doubles
/// it up to `cap`, and [`reset`](Self::reset) (after the connection worked) starts over.
#[derive(Debug, Clone)]
pub struct Reconnect {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self::new(Self::FIRST, Self::CAP)
    }
}

impl Reconnect {
    /// The default first wait.
    pub const FIRST: Duration = Duration::from_millis(250);
    /// The default longest wait.
    pub const CAP: Duration = Duration::from_secs(5);

    /// A schedule from `first` doubling to `cap`.
    pub const fn new(first: Duration, cap: Duration) -> Self {
        Self {
            first,
            cap,
            next: first,
        }
    }

    /// The wait the next failure gets (for log lines: `retry_in_ms`).
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// The connection worked: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// A failure: returns how long to wait now and doubles the next wait (up to `cap`).
    pub fn fail(&mut self) -> Duration {
        let now = self.next;
        self.next = self.next.saturating_mul(2).min(self.cap);
        now
    }

    /// A failure: waits its delay; false when shutdown came first (stop the loop).
    pub async fn wait(&mut self, shutdown: &Shutdown) -> bool {
        shutdown.sleep(self.fail()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_double_to_the_cap_and_start_over_after_a_success() {
        let mut r = Reconnect::default();
        let waits: Vec<u128> = (0..7).map(|_| r.fail().as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        r.reset();
        assert_eq!(r.peek(), Reconnect::FIRST);
        let mut fast = Reconnect::new(Duration::from_millis(250), Duration::from_secs(1));
        let waits: Vec<u128> = (0..4).map(|_| fast.fail().as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 1000]);
    }

    #[test]
    fn schedule_is_five_times_five_to_the_n_capped() {
        let secs: Vec<u64> = (0..=7).map(|a| schedule(a).as_secs()).collect();
        assert_eq!(secs, [5, 5, 25, 125, 625, 3125, 3600, 3600]);
        assert_eq!(schedule(u32::MAX), CAP);
    }

    #[test]
    fn delay_stays_within_the_jitter_band() {
        for attempt in 1..=10 {
            let base = schedule(attempt).as_secs_f64();
            for _ in 0..50 {
                let d = delay(attempt).as_secs_f64();
                assert!(d >= base * 0.8 - 1e-9 && d <= (base * 1.2).min(3600.0) + 1e-9);
            }
        }
    }
}
