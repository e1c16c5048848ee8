//! Outbound HTTP (reqwest with rustls): push providers now, webhooks later. Every call runs
//! behind a named circuit breaker from [`crate::resilience::Breakers`] and a timeout, and
//! reports a classified outcome instead of an error type, so the job calling it can decide
//! between retry, drop and permanent failure.
//!
//! L1: depends on `resilience`, `config` and `telemetry`; never on roles.

pub mod push;

use crate::config::Config;
use crate::resilience::Breakers;

/// The outbound clients of one process; cheap to clone.
#[derive(Clone)]
pub struct Clients {
    /// FCM and OneSignal.
    pub push: push::PushClient,
}

impl Clients {
    /// Builds every client from the config, registering their breakers in `breakers`.
    pub fn new(config: &Config, breakers: &Breakers) -> Self {
        Self {
            push: push::PushClient::new(&config.push, breakers),
        }
    }
}
