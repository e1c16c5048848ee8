//! Settings of the broker sinks of the outbox relay: RabbitMQ (`AMQP_URL`, `AMQP_EXCHANGE`,
//! `AMQP_TIMEOUT_MS`) and NATS JetStream (`NATS_URL`, `NATS_SUBJECT_PREFIX`, `NATS_STREAM`,
//! `NATS_TIMEOUT_MS`). A sink runs only when its URL is set.

use std::time::Duration;

use clap::Args;

use super::{ConfigError, Secret};

/// Broker sinks (`outbox-relay` and `all`).
#[derive(Args, Clone, Debug)]
pub struct BrokerArgs {
    /// RabbitMQ receiving every event on a durable topic exchange (routing key = event type),
    /// e.g. amqp://user:pass@rabbit:5672/%2f; amqps:// for TLS (system roots, or
    /// SSL_CERT_FILE). Unset = no RabbitMQ sink.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,

    /// Name of the durable topic exchange events are published to; dead letters of
    /// consumers' queues go to `<name>.dlx`.
    #[arg(long, env = "AMQP_EXCHANGE", default_value = "itsur.events")]
    pub amqp_exchange: String,

    /// Deadline in ms for connecting to RabbitMQ and for the publisher confirms of one batch.
    #[arg(long, env = "AMQP_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub amqp_timeout_ms: u64,

    /// NATS server receiving every event on JetStream, e.g. nats://user:pass@nats:4222
    /// (tls:// for TLS). Unset = no NATS sink.
    #[arg(long, env = "NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,

    /// Events are published to `<prefix>.<event type>`, e.g. itsur.order.created.
    #[arg(long, env = "NATS_SUBJECT_PREFIX", default_value = "itsur")]
    pub nats_subject_prefix: String,

    /// JetStream stream holding `<prefix>.>`; created (file storage) when missing.
    #[arg(long, env = "NATS_STREAM", default_value = "ITSUR_EVENTS")]
    pub nats_stream: String,

    /// Deadline in ms for connecting to NATS and for the JetStream acks of one batch.
    #[arg(long, env = "NATS_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub nats_timeout_ms: u64,
}

/// Where and how the RabbitMQ sink publishes.
#[derive(Clone, Debug)]
pub struct AmqpSettings {
    /// amqp:// or amqps:// URL (carries credentials: never logged).
    pub url: Secret<String>,
    /// The topic exchange.
    pub exchange: String,
    /// Connect and confirm deadline.
    pub timeout: Duration,
}

/// Where and how the NATS JetStream sink publishes.
#[derive(Clone, Debug)]
pub struct NatsSettings {
    /// nats:// or tls:// URL (may carry credentials: never logged).
    pub url: Secret<String>,
    /// Subject prefix: `<prefix>.<event type>`.
    pub subject_prefix: String,
    /// The JetStream stream over `<prefix>.>`.
    pub stream: String,
    /// Connect and ack deadline.
    pub timeout: Duration,
}

impl BrokerArgs {
    /// The RabbitMQ and NATS sink settings, each None when its URL is unset.
    pub fn settings(&self) -> Result<(Option<AmqpSettings>, Option<NatsSettings>), ConfigError> {
        let amqp = match &self.amqp_url {
            None => None,
            Some(url) => {
                if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                    return Err(ConfigError::new(
                        "AMQP_URL",
                        "must be an amqp:// or amqps:// (TLS) URL",
                    ));
                }
                if self.amqp_exchange.is_empty()
                    || self.amqp_exchange.len() > 127
                    || self.amqp_exchange.starts_with("amq.")
                {
                    return Err(ConfigError::new(
                        "AMQP_EXCHANGE",
                        "must be 1 to 127 characters and not start with `amq.` (reserved)",
                    ));
                }
                Some(AmqpSettings {
                    url: Secret::new(url.clone()),
                    exchange: self.amqp_exchange.clone(),
                    timeout: Duration::from_millis(self.amqp_timeout_ms),
                })
            }
        };
        let nats = match &self.nats_url {
            None => None,
            Some(url) => {
                if !["nats://", "tls://"].iter().any(|s| url.starts_with(s)) {
                    return Err(ConfigError::new(
                        "NATS_URL",
                        "must be a nats:// or tls:// URL",
                    ));
                }
                let token_ok = |s: &str| {
                    !s.is_empty()
                        && s.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                };
                if !self.nats_subject_prefix.split('.').all(token_ok) {
                    return Err(ConfigError::new(
                        "NATS_SUBJECT_PREFIX",
                        "must be dot-separated tokens of letters, digits, `_` and `-`",
                    ));
                }
                if !token_ok(&self.nats_stream) {
                    return Err(ConfigError::new(
                        "NATS_STREAM",
                        "must be letters, digits, `_` and `-` only",
                    ));
                }
                Some(NatsSettings {
                    url: Secret::new(url.clone()),
                    subject_prefix: self.nats_subject_prefix.clone(),
                    stream: self.nats_stream.clone(),
                    timeout: Duration::from_millis(self.nats_timeout_ms),
                })
            }
        };
        Ok((amqp, nats))
    }
}
