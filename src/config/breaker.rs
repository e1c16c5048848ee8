//! Circuit-breaker policy around every outbound call (push providers, webhooks).
//!
//! Env vars: `BREAKER_FAILURE_RATIO`, `BREAKER_MIN_CALLS`, `BREAKER_WINDOW_SECS`,
//! `BREAKER_CONSECUTIVE_FAILURES`, `BREAKER_COOLDOWN_SECS`.

use std::time::Duration;

use clap::Args;

use super::ConfigError;

/// When a circuit breaker opens and how long it stays open.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Open when failures / calls in the window reach this ratio...
    pub failure_ratio: f64,
    /// ...and the window has seen at least this many calls.
    pub min_calls: u32,
    /// Length of the counting window (counts restart after it).
    pub window: Duration,
    /// Also open after this many failures in a row (None = ratio only).
    pub consecutive_failures: Option<u32>,
    /// How long an open breaker refuses calls before one half-open trial.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_ratio: 0.5,
            min_calls: 10,
            window: Duration::from_secs(60),
            consecutive_failures: None,
            cooldown: Duration::from_secs(30),
        }
    }
}

/// Circuit-breaker policy for outbound calls (push providers, webhooks).
#[derive(Args, Clone, Debug)]
pub struct BreakerArgs {
    /// Failure ratio (0 < r ≤ 1) in a window that opens a breaker.
    #[arg(long, env = "BREAKER_FAILURE_RATIO", default_value_t = 0.5)]
    pub breaker_failure_ratio: f64,

    /// Calls a window must have seen before the ratio can open the breaker.
    #[arg(long, env = "BREAKER_MIN_CALLS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub breaker_min_calls: u32,

    /// Length of the counting window in seconds.
    #[arg(long, env = "BREAKER_WINDOW_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub breaker_window_secs: u64,

    /// Also open after this many consecutive failures (0 = off).
    #[arg(long, env = "BREAKER_CONSECUTIVE_FAILURES", default_value_t = 0)]
    pub breaker_consecutive_failures: u32,

    /// Seconds an open breaker waits before letting one trial call through.
    #[arg(long, env = "BREAKER_COOLDOWN_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub breaker_cooldown_secs: u64,
}

impl BreakerArgs {
    /// Validates into a [`BreakerConfig`].
    pub fn to_config(&self) -> Result<BreakerConfig, ConfigError> {
        let r = self.breaker_failure_ratio;
        if !(r > 0.0 && r <= 1.0) {
            return Err(ConfigError::new(
                "BREAKER_FAILURE_RATIO",
                "must be greater than 0 and at most 1",
            ));
        }
        Ok(BreakerConfig {
            failure_ratio: r,
            min_calls: self.breaker_min_calls,
            window: Duration::from_secs(self.breaker_window_secs),
            consecutive_failures: (self.breaker_consecutive_failures > 0)
                .then_some(self.breaker_consecutive_failures),
            cooldown: Duration::from_secs(self.breaker_cooldown_secs),
        })
    }
}
