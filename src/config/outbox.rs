//! The outbox relay and its sinks (`outbox-relay`, `all`); the retention of published
//! events is in [`super::retention`].
//!
//! Env vars: `OUTBOX_BATCH_SIZE`, `OUTBOX_POLL_INTERVAL_MS`, `OUTBOX_POLL_ONLY`,
//! `OUTBOX_MAX_ATTEMPTS`, `WEBHOOK_URL`, `WEBHOOK_SECRET`, `WEBHOOK_TIMEOUT_MS`; the broker
//! sinks' `AMQP_*` and `NATS_*` are in [`super::brokers`] (flattened here).
//! A new sink adds its `Args` fields here (flattened into [`OutboxArgs`] or its own struct)
//! and its validated settings to [`OutboxSettings`].

use std::time::Duration;

use clap::Args;

use super::{ConfigError, Environment, MIN_SECRET_BYTES, Secret};

/// Settings of the outbox relay (`outbox-relay` and `all`).
#[derive(Args, Clone, Debug)]
pub struct OutboxArgs {
    /// Events claimed (and published) per relay transaction.
    #[arg(long, env = "OUTBOX_BATCH_SIZE", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub outbox_batch_size: u32,

    /// Polling period in ms: the fallback when a NOTIFY is lost, or the only wake-up with
    /// OUTBOX_POLL_ONLY.
    #[arg(long, env = "OUTBOX_POLL_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub outbox_poll_interval_ms: u64,

    /// Never LISTEN, only poll (for a DATABASE_URL behind a transaction pooler).
    #[arg(long, env = "OUTBOX_POLL_ONLY", default_value_t = false, action = clap::ArgAction::Set, value_name = "OUTBOX_POLL_ONLY")]
    pub outbox_poll_only: bool,

    /// Failed deliveries (backing off 5 s, 25 s, 125 s, …) before an event is marked dead.
    #[arg(long, env = "OUTBOX_MAX_ATTEMPTS", default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub outbox_max_attempts: u32,

    /// Optional webhook receiving every event as a signed JSON POST.
    #[arg(long, env = "WEBHOOK_URL", hide_env_values = true)]
    pub webhook_url: Option<String>,

    /// HMAC-SHA256 key for the `X-Itsur-Signature` header of webhook calls (required with
    /// WEBHOOK_URL; at least 32 bytes unless ITSUR_ENV=dev).
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Deadline of one webhook call, in ms.
    #[arg(long, env = "WEBHOOK_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub webhook_timeout_ms: u64,

    /// RabbitMQ and NATS JetStream sinks.
    #[command(flatten)]
    pub brokers: super::BrokerArgs,
}

impl OutboxArgs {
    /// The relay settings, with the webhook checked.
    pub fn settings(&self, environment: Environment) -> Result<OutboxSettings, ConfigError> {
        let webhook = match (&self.webhook_url, &self.webhook_secret) {
            (None, _) => None,
            (Some(url), secret) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(ConfigError::new(
                        "WEBHOOK_URL",
                        "must be an http:// or https:// URL",
                    ));
                }
                let Some(secret) = secret.as_ref().filter(|s| !s.is_empty()) else {
                    return Err(ConfigError::new(
                        "WEBHOOK_SECRET",
                        "is required when WEBHOOK_URL is set",
                    ));
                };
                if secret.len() < MIN_SECRET_BYTES && environment != Environment::Dev {
                    return Err(ConfigError::new(
                        "WEBHOOK_SECRET",
                        format!("must be at least {MIN_SECRET_BYTES} bytes unless ITSUR_ENV=dev"),
                    ));
                }
                Some(WebhookSettings {
                    url: Secret::new(url.clone()),
                    secret: Secret::new(secret.clone()),
                    timeout: Duration::from_millis(self.webhook_timeout_ms),
                })
            }
        };
        let (amqp, nats) = self.brokers.settings()?;
        Ok(OutboxSettings {
            batch_size: i64::from(self.outbox_batch_size),
            poll_interval: Duration::from_millis(self.outbox_poll_interval_ms),
            poll_only: self.outbox_poll_only,
            max_attempts: i32::try_from(self.outbox_max_attempts).unwrap_or(i32::MAX),
            webhook,
            amqp,
            nats,
        })
    }
}

/// Where and how the optional webhook sink posts events.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// Target URL (may carry credentials: never logged).
    pub url: Secret<String>,
    /// HMAC-SHA256 signing key.
    pub secret: Secret<String>,
    /// Deadline of one call.
    pub timeout: Duration,
}

/// The outbox relay's settings (see [`OutboxArgs`]).
#[derive(Clone, Debug)]
pub struct OutboxSettings {
    /// Events per claim transaction.
    pub batch_size: i64,
    /// Poll period (fallback wake-up).
    pub poll_interval: Duration,
    /// Poll only, never LISTEN.
    pub poll_only: bool,
    /// Failed deliveries before an event is dead.
    pub max_attempts: i32,
    /// The optional signed webhook sink.
    pub webhook: Option<WebhookSettings>,
    /// The optional RabbitMQ sink.
    pub amqp: Option<super::AmqpSettings>,
    /// The optional NATS JetStream sink.
    pub nats: Option<super::NatsSettings>,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            batch_size: 200,
            poll_interval: Duration::from_secs(1),
            poll_only: false,
            max_attempts: 6,
            webhook: None,
            amqp: None,
            nats: None,
        }
    }
}
