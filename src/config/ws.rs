//! The WebSocket gateway (`serve`, `all`).
//!
//! Env vars: `WS_MAX_CONNECTIONS_PER_IP`, `WS_MAX_CONNECTIONS_PER_USER`, `WS_SEND_QUEUE`,
//! `WS_PING_SECS`, `WS_IDLE_TIMEOUT_SECS`, `WS_SESSION_RECHECK_SECS`.

use std::time::Duration;

use clap::Args;

use super::ConfigError;

/// Settings of the WebSocket gateway (`serve` and `all`).
#[derive(Args, Clone, Debug)]
pub struct WsArgs {
    /// Open WebSocket connections per client address (beyond it the upgrade answers 429).
    #[arg(long, env = "WS_MAX_CONNECTIONS_PER_IP", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub ws_max_connections_per_ip: u32,

    /// Open WebSocket connections per user (beyond it the upgrade answers 429).
    #[arg(long, env = "WS_MAX_CONNECTIONS_PER_USER", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub ws_max_connections_per_user: u32,

    /// Events queued per connection; a client that falls this far behind is closed (4008).
    #[arg(long, env = "WS_SEND_QUEUE", default_value_t = 256, value_parser = clap::value_parser!(u32).range(8..=65_536))]
    pub ws_send_queue: u32,

    /// Seconds between server pings.
    #[arg(long, env = "WS_PING_SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ws_ping_secs: u64,

    /// Seconds without any frame from the client (pongs count) before it is closed.
    #[arg(long, env = "WS_IDLE_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(2..=86_400))]
    pub ws_idle_timeout_secs: u64,

    /// Seconds between checks that a socket's session is still live (closed with 4001 once
    /// it is revoked or expired).
    #[arg(long, env = "WS_SESSION_RECHECK_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ws_session_recheck_secs: u64,
}

impl WsArgs {
    /// The gateway settings.
    pub fn settings(&self) -> Result<WsSettings, ConfigError> {
        if self.ws_idle_timeout_secs <= self.ws_ping_secs {
            return Err(ConfigError::new(
                "WS_IDLE_TIMEOUT_SECS",
                "must be longer than WS_PING_SECS (an idle timeout shorter than the ping period closes healthy clients)",
            ));
        }
        Ok(WsSettings {
            max_per_ip: usize_from(self.ws_max_connections_per_ip),
            max_per_user: usize_from(self.ws_max_connections_per_user),
            send_queue: usize_from(self.ws_send_queue),
            ping_interval: Duration::from_secs(self.ws_ping_secs),
            idle_timeout: Duration::from_secs(self.ws_idle_timeout_secs),
            session_recheck: Duration::from_secs(self.ws_session_recheck_secs),
        })
    }
}

fn usize_from(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The WebSocket gateway's settings (see [`WsArgs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WsSettings {
    /// Connections per client address.
    pub max_per_ip: usize,
    /// Connections per user.
    pub max_per_user: usize,
    /// Events queued per connection before it is closed as too slow.
    pub send_queue: usize,
    /// Period of server pings.
    pub ping_interval: Duration,
    /// Silence after which a client is closed.
    pub idle_timeout: Duration,
    /// Period of the session-liveness check of each socket.
    pub session_recheck: Duration,
}

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            max_per_ip: 1000,
            max_per_user: 8,
            send_queue: 256,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            session_recheck: Duration::from_secs(60),
        }
    }
}
