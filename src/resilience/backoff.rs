//! Retry schedule shared by jobs, the outbox relay and outbound clients: 5 s · 5ⁿ (5 s, 25 s,
//! 125 s, 625 s, …) capped at [`CAP`], with ±[`JITTER`] so retries of many jobs that failed
//! together (a provider outage) do not come back in one wave.
//!
//! L1: pure computation (plus `rand`); no configuration.

use std::time::Duration;

use rand::Rng;

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

#[cfg(test)]
mod tests {
    use super::*;

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
