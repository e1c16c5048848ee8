//! Jobs as the business sees them: kinds, priorities, internal and public states, and the
//! retry schedule.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Kinds of jobs a worker knows how to run.
pub mod kind {
    /// Does nothing (optionally sleeps and records an audit row); for diagnostics and benchmarks.
    pub const NOOP: &str = "noop";
    /// Aggregates a vendor's orders over a period into CSV or JSON.
    pub const SALES_REPORT: &str = "sales_report";
    /// Imports users of a campus from CSV.
    pub const BULK_IMPORT_USERS: &str = "bulk_import_users";
    /// Sends a push notification to a user's devices.
    pub const SEND_PUSH: &str = "send_push";
    /// Prunes finished jobs, published outbox events, expired sessions and idempotency keys.
    pub const MAINTENANCE: &str = "maintenance";
    /// Sends an e-mail over SMTP (flow node).
    pub const SEND_EMAIL: &str = "send_email";
    /// Closes a campus's open vendors (flow `campus.end_of_day`).
    pub const CLOSE_VENDORS: &str = "close_vendors";
    /// Sums per-vendor reports into a campus summary (flow `campus.end_of_day`).
    pub const DAILY_SUMMARY: &str = "daily_summary";
    /// Cancels orders left `placed` too long (flow `order.unaccepted`).
    pub const CANCEL_UNACCEPTED_ORDERS: &str = "cancel_unaccepted_orders";
}

/// Claim order: high before normal before low.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Ahead of everything.
    High,
    /// The default.
    #[default]
    Normal,
    /// After everything else.
    Low,
}

impl Priority {
    /// The stored value (0, 1, 2).
    pub fn as_i16(self) -> i16 {
        match self {
            Self::High => 0,
            Self::Normal => 1,
            Self::Low => 2,
        }
    }

    /// From the stored value.
    pub fn from_i16(v: i16) -> Self {
        match v {
            0 => Self::High,
            2 => Self::Low,
            _ => Self::Normal,
        }
    }

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }
}

/// Stored job state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to run (new, delayed, or a retry waiting for its backoff).
    Queued,
    /// Claimed by a worker holding a lease.
    Running,
    /// Finished successfully.
    Completed,
    /// Stopped on request.
    Cancelled,
    /// Out of attempts (or failed permanently); kept for inspection and manual retry.
    Dead,
}

impl JobState {
    /// Every state.
    pub const ALL: [Self; 5] = [
        Self::Queued,
        Self::Running,
        Self::Completed,
        Self::Cancelled,
        Self::Dead,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Dead => "dead",
        }
    }

    /// True once the job will not run again by itself.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled | Self::Dead)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown state name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job state")]
pub struct UnknownJobState;

impl FromStr for JobState {
    type Err = UnknownJobState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or(UnknownJobState)
    }
}

/// The state shown by the API (DESIGN.md "HTTP conventions"): `queued`, `started`,
/// `progress`, `completed`, `failed`, `cancelled`. A retry waiting to run shows `queued`.
pub fn public_state(state: JobState, progress: i16) -> &'static str {
    match state {
        JobState::Queued => "queued",
        JobState::Running if progress > 0 => "progress",
        JobState::Running => "started",
        JobState::Completed => "completed",
        JobState::Cancelled => "cancelled",
        JobState::Dead => "failed",
    }
}

/// The stored states a public filter means.
pub fn states_for_public(public: &str) -> Option<&'static [JobState]> {
    Some(match public {
        "queued" => &[JobState::Queued],
        "started" | "progress" | "running" => &[JobState::Running],
        "completed" => &[JobState::Completed],
        "failed" | "dead" => &[JobState::Dead],
        "cancelled" => &[JobState::Cancelled],
        _ => return None,
    })
}

/// Delay before retry number `attempt` (1-based): 5 s, 25 s, 125 s, … capped at 6 h, before
/// jitter. `jitter` in [0, 1) spreads retries of jobs that failed together by up to +20 %.
pub fn retry_delay(attempt: i32, jitter: f64) -> Duration {
    let exp = u32::try_from(attempt.clamp(1, 12) - 1).unwrap_or(0);
    let base = 5_u64
        .saturating_mul(5_u64.saturating_pow(exp))
        .min(6 * 3600);
    let spread = Duration::from_secs(base).mul_f64(0.2 * jitter.clamp(0.0, 1.0));
    Duration::from_secs(base) + spread
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_by_powers_of_five() {
        let secs: Vec<u64> = (1..=5).map(|a| retry_delay(a, 0.0).as_secs()).collect();
        assert_eq!(secs, [5, 25, 125, 625, 3125]);
        assert_eq!(retry_delay(20, 0.0).as_secs(), 6 * 3600);
        let jittered = retry_delay(1, 0.99);
        assert!(jittered > Duration::from_secs(5) && jittered < Duration::from_secs(6));
    }

    #[test]
    fn public_states() {
        assert_eq!(public_state(JobState::Running, 0), "started");
        assert_eq!(public_state(JobState::Running, 40), "progress");
        assert_eq!(public_state(JobState::Dead, 0), "failed");
        assert_eq!(states_for_public("failed"), Some(&[JobState::Dead][..]));
        assert!(states_for_public("bogus").is_none());
        assert_eq!(Priority::from_i16(Priority::Low.as_i16()), Priority::Low);
        assert!(Priority::High < Priority::Normal);
    }
}
