//! Configuration, one file per concern. Every setting is a clap option that also reads an
//! environment variable, so `itsur <role> --help` documents all of them and the README's
//! settings table is generated from the same definitions (`itsur settings`, checked by
//! `make lint`). Validation that clap cannot express (URL schemes, secret strength) lives
//! next to each concern's arguments and returns a [`ConfigError`] naming the variable.
//!
//! | concern | file | arguments → validated settings |
//! |---|---|---|
//! | Postgres | `database.rs` | [`DatabaseArgs`] → [`DatabaseConfig`] (`Config::database`) |
//! | Redis | `redis.rs` | [`RedisArgs`] → [`RedisConfig`] (`Config::redis`) |
//! | logging | `telemetry.rs` | [`TelemetryArgs`] (used before a `Config` exists) |
//! | retention | `retention.rs` | [`RetentionArgs`] → `Config::{job,outbox}_retention` |
//! | HTTP listener, JWT | `http.rs` | [`HttpArgs`] → `Config::jwt_secret` |
//! | edge protection | `edge.rs` | [`EdgeArgs`] → [`EdgeConfig`] (`Config::edge`) |
//! | WebSocket gateway | `ws.rs` | [`WsArgs`] → [`WsSettings`] (`Config::ws`) |
//! | outbox relay, sinks | `outbox.rs` | [`OutboxArgs`] → [`OutboxSettings`] (`Config::outbox`) |
//! | broker sinks | `brokers.rs` | [`BrokerArgs`] (in [`OutboxArgs`]) → [`AmqpSettings`], [`NatsSettings`] |
//! | job worker | `jobs.rs` | [`JobArgs`] → `jobs::runner::WorkerOptions` |
//! | push providers | `push.rs` | [`PushArgs`] → [`PushConfig`] (`Config::push`) |
//! | SMTP (e-mail node) | `smtp.rs` | [`SmtpArgs`] → [`SmtpConfig`] (`Config::smtp`) |
//! | password hashing | `passwords.rs` | [`PasswordHashArgs`] → [`PasswordHashConfig`] (`Config::password_hash`) |
//! | circuit breakers | `breaker.rs` | [`BreakerArgs`] → [`BreakerConfig`] (`Config::breaker`) |
//!
//! Adding a setting: add the `#[arg(long, env = "…")]` field (with a `///` help line — it
//! becomes the README row) to the concern's `Args` struct, its validated form to the
//! concern's settings struct, then run `make settings-table` to regenerate the README table.
//! A new concern is a new file here, flattened into [`CommonArgs`] (every role) or a role's
//! arguments in `cli/`. Tests build a [`Config`] with `tests/it/support::config_for`.
//!
//! Depends only on `store::pg_url` (pure parsing of libpq-style URL parameters).

mod breaker;
mod brokers;
mod database;
mod edge;
mod http;
mod jobs;
mod outbox;
mod passwords;
mod push;
mod redis;
mod retention;
mod smtp;
mod telemetry;
mod ws;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use clap::{Args, ValueEnum};

pub use self::breaker::{BreakerArgs, BreakerConfig};
pub use self::brokers::{AmqpSettings, BrokerArgs, NatsSettings};
pub use self::database::{DatabaseArgs, DatabaseConfig};
pub use self::edge::{Cidr, CorsConfig, EdgeArgs, EdgeConfig, Quota, QuotaSetting, RateLimits};
pub use self::http::{DEFAULT_BIND, HttpArgs, MIN_JWT_SECRET_BYTES};
pub use self::jobs::JobArgs;
pub use self::outbox::{OutboxArgs, OutboxSettings, WebhookSettings};
pub use self::passwords::{PasswordHashArgs, PasswordHashConfig};
pub use self::push::{DEFAULT_FCM_BASE_URL, DEFAULT_ONESIGNAL_BASE_URL, PushArgs, PushConfig};
pub use self::redis::{RedisArgs, RedisConfig};
pub use self::retention::RetentionArgs;
pub use self::smtp::{DEFAULT_SMTP_FROM, SmtpArgs, SmtpConfig};
pub use self::telemetry::{LogFormat, TelemetryArgs, effective_log_format};
pub use self::ws::{WsArgs, WsSettings};

/// Minimum length of a signing secret (`JWT_SECRET`, `WEBHOOK_SECRET`) outside development:
/// HMAC-SHA256 wants at least 256 bits of key.
pub const MIN_SECRET_BYTES: usize = 32;

/// Default ops (metrics + health) listener of `worker`.
pub const DEFAULT_WORKER_METRICS_BIND: &str = "0.0.0.0:9464";
/// Default ops (metrics + health) listener of `outbox-relay`.
pub const DEFAULT_RELAY_METRICS_BIND: &str = "0.0.0.0:9465";

/// A value that must never be printed: `Debug` and `Display` show a placeholder.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a sensitive value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// Reads the wrapped value; the caller is responsible for not logging it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A setting that is present but unusable; `var` is the environment variable to fix.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    /// The environment variable (and, lowercased with dashes, the flag) at fault.
    pub var: &'static str,
    /// What is wrong with it, in one line.
    pub message: String,
}

impl ConfigError {
    /// An error about `var`.
    pub fn new(var: &'static str, message: impl Into<String>) -> Self {
        Self {
            var,
            message: message.into(),
        }
    }
}

/// Deployment environment: `dev` relaxes the checks that protect production.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Environment {
    /// Development: weak secrets allowed, pretty logs by default.
    Dev,
    /// Production (default): every safety check on.
    #[default]
    Prod,
}

/// Settings every long-running role shares: Postgres, Redis, logging, retention, shutdown,
/// push providers and breakers.
#[derive(Args, Clone, Debug)]
pub struct CommonArgs {
    /// Postgres.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Redis.
    #[command(flatten)]
    pub redis: RedisArgs,

    /// Deployment environment; `dev` allows a weak JWT_SECRET.
    #[arg(long = "env", env = "ITSUR_ENV", value_name = "ITSUR_ENV", value_enum, default_value_t = Environment::Prod)]
    pub environment: Environment,

    /// Logging.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// Live sessions a user may hold; logging in beyond it revokes the oldest.
    #[arg(long, env = "MAX_SESSIONS_PER_USER", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_sessions_per_user: u32,

    /// Retention of finished jobs and published events.
    #[command(flatten)]
    pub retention: RetentionArgs,

    /// Seconds a stopping role waits for in-flight requests and jobs before it gives up.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub shutdown_timeout_secs: u64,

    /// Push providers (used by the worker's `send_push` jobs).
    #[command(flatten)]
    pub push: PushArgs,

    /// SMTP server of the `send_email` flow node.
    #[command(flatten)]
    pub smtp: SmtpArgs,

    /// Bounds of password hashing (logins, registrations, imports).
    #[command(flatten)]
    pub password_hash: PasswordHashArgs,

    /// Circuit breakers around every outbound call.
    #[command(flatten)]
    pub breaker: BreakerArgs,
}

impl CommonArgs {
    /// The effective log format: explicit, else pretty in dev and json in prod.
    pub fn effective_log_format(&self) -> LogFormat {
        self.telemetry.effective_log_format(self.environment)
    }

    /// The drain budget on shutdown.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
}

/// The validated, immutable settings a process runs with; shared through `app::Ctx`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Deployment environment.
    pub environment: Environment,
    /// Postgres primary, replica and pools.
    pub database: DatabaseConfig,
    /// Redis (None URL = in-process fallbacks).
    pub redis: RedisConfig,
    /// Drain budget on shutdown.
    pub shutdown_timeout: Duration,
    /// Live sessions per user before the oldest is revoked.
    pub max_sessions_per_user: u32,
    /// How long finished jobs are kept.
    pub job_retention: chrono::Duration,
    /// How long published outbox events are kept.
    pub outbox_retention: chrono::Duration,
    /// JWT signing key; present only for roles that serve HTTP.
    pub jwt_secret: Option<Secret<String>>,
    /// Rate limits, proxies, deadlines, body limits, CORS and security headers of the API.
    pub edge: EdgeConfig,
    /// Push-provider endpoints and credentials.
    pub push: PushConfig,
    /// SMTP server of the `send_email` node.
    pub smtp: SmtpConfig,
    /// Concurrent password hashes and how long a request waits for one.
    pub password_hash: PasswordHashConfig,
    /// Circuit-breaker policy shared by every outbound client.
    pub breaker: BreakerConfig,
    /// WebSocket gateway (defaults unless the role takes [`WsArgs`]).
    pub ws: WsSettings,
    /// Outbox relay (defaults unless the role takes [`OutboxArgs`]).
    pub outbox: OutboxSettings,
}

impl Config {
    /// Builds the runtime config from the shared arguments; `jwt_secret` comes from
    /// [`HttpArgs::validate`] for roles that serve the API.
    pub fn from_args(
        common: &CommonArgs,
        jwt_secret: Option<Secret<String>>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            environment: common.environment,
            database: DatabaseConfig::from_args(&common.database)?,
            redis: RedisConfig::from_args(&common.redis)?,
            shutdown_timeout: common.shutdown_timeout(),
            max_sessions_per_user: common.max_sessions_per_user,
            job_retention: chrono::Duration::hours(i64::from(common.retention.job_retention_hours)),
            outbox_retention: chrono::Duration::hours(i64::from(
                common.retention.outbox_retention_hours,
            )),
            jwt_secret,
            edge: EdgeConfig::default(),
            push: common.push.to_config()?,
            smtp: common.smtp.to_config()?,
            password_hash: common.password_hash.to_config(),
            breaker: common.breaker.to_config()?,
            ws: WsSettings::default(),
            outbox: OutboxSettings::default(),
        })
    }

    /// Adds the HTTP edge settings of `serve`/`all` (rate limits, proxies, CORS, deadlines).
    pub fn with_edge(mut self, edge: &EdgeArgs) -> Result<Self, ConfigError> {
        self.edge = edge.to_config()?;
        Ok(self)
    }
}

/// Reads every certificate of a PEM file (CA bundle); the error is one line naming the file.
pub fn read_pem_certs(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no PEM certificate in {}", path.display()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2".to_owned());
        assert!(!format!("{s:?} {s}").contains("hunter2"));
    }
}
