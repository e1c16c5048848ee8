//! Configuration: every setting is a clap option that also reads an environment variable, so
//! `itsur <role> --help` documents all of them. Validation that clap cannot express (URL
//! schemes, secret strength) lives in [`ConfigError`]-returning `validate` functions whose
//! message always names the variable.
//!
//! Leaf utility: depends on nothing in the crate.
//!
//! Env vars: `DATABASE_URL`, `DATABASE_READ_URL`, `DB_POOL_SIZE`, `DB_READ_POOL_SIZE`,
//! `DB_CONNECT_TIMEOUT_MS`, `DB_STATEMENT_TIMEOUT_MS`, `REDIS_URL`, `REDIS_PREFIX`,
//! `REDIS_POOL_SIZE`, `ITSUR_ENV`, `LOG_FORMAT`, `RUST_LOG`, `SHUTDOWN_TIMEOUT_SECS`,
//! `BIND_ADDR`, `HTTP_WORKERS`, `JWT_SECRET`, `METRICS_BIND`, `HEALTHCHECK_URL`, `JOB_*`,
//! `OUTBOX_RETENTION_HOURS` (also the WebSocket resume window); WebSocket gateway
//! ([`WsArgs`]): `WS_MAX_CONNECTIONS_PER_IP`, `WS_MAX_CONNECTIONS_PER_USER`, `WS_SEND_QUEUE`,
//! `WS_PING_SECS`, `WS_IDLE_TIMEOUT_SECS`, `WS_SESSION_RECHECK_SECS`; outbox relay
//! ([`OutboxArgs`]): `OUTBOX_BATCH_SIZE`, `OUTBOX_POLL_INTERVAL_MS`, `OUTBOX_POLL_ONLY`,
//! `OUTBOX_MAX_ATTEMPTS`, `WEBHOOK_URL`, `WEBHOOK_SECRET`, `WEBHOOK_TIMEOUT_MS`.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Minimum length of `JWT_SECRET` outside development: HS256 wants at least 256 bits of key.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// Default listen address of `serve` (and of `all`).
pub const DEFAULT_BIND: &str = "0.0.0.0:8080";
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
    fn new(var: &'static str, message: impl Into<String>) -> Self {
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

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log shippers).
    Json,
    /// Human-readable, coloured when stderr is a terminal.
    Pretty,
}

/// Settings every long-running role shares: Postgres, Redis, logging, shutdown.
#[derive(Args, Clone, Debug)]
pub struct CommonArgs {
    /// Postgres primary, e.g. postgres://user:pass@host:5432/itsur (sslmode=require honoured).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Optional read replica for heavy reads (reports, lists); the primary serves them when unset.
    #[arg(long, env = "DATABASE_READ_URL", hide_env_values = true)]
    pub database_read_url: Option<String>,

    /// Connections in the primary pool.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_pool_size: u32,

    /// Connections in the read-replica pool.
    #[arg(long, env = "DB_READ_POOL_SIZE", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_read_pool_size: u32,

    /// How long a request waits for a pooled connection (and a new connection to open), in ms.
    #[arg(long, env = "DB_CONNECT_TIMEOUT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub db_connect_timeout_ms: u64,

    /// Server-side statement_timeout for pooled connections, in ms (0 = none).
    #[arg(long, env = "DB_STATEMENT_TIMEOUT_MS", default_value_t = 15_000)]
    pub db_statement_timeout_ms: u64,

    /// Redis for caches, rate limits, pub/sub and breaker state; unset = in-process fallbacks.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel (one per deployment sharing a Redis).
    #[arg(long, env = "REDIS_PREFIX", default_value = "itsur")]
    pub redis_prefix: String,

    /// Connections in the Redis pool.
    #[arg(long, env = "REDIS_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub redis_pool_size: u32,

    /// Deployment environment; `dev` allows a weak JWT_SECRET.
    #[arg(long = "env", env = "ITSUR_ENV", value_name = "ITSUR_ENV", value_enum, default_value_t = Environment::Prod)]
    pub environment: Environment,

    /// Log format: json (default in prod) or pretty (default in dev).
    #[arg(long, env = "LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info,itsur=debug`.
    #[arg(
        long,
        env = "RUST_LOG",
        value_name = "RUST_LOG",
        default_value = "info"
    )]
    pub log_filter: String,

    /// Live sessions a user may hold; logging in beyond it revokes the oldest.
    #[arg(long, env = "MAX_SESSIONS_PER_USER", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_sessions_per_user: u32,

    /// Hours finished (completed or cancelled) jobs are kept before maintenance prunes them.
    #[arg(long, env = "JOB_RETENTION_HOURS", default_value_t = 168)]
    pub job_retention_hours: u32,

    /// Hours published outbox events are kept (the WebSocket resume window).
    #[arg(long, env = "OUTBOX_RETENTION_HOURS", default_value_t = 24)]
    pub outbox_retention_hours: u32,

    /// Seconds a stopping role waits for in-flight requests and jobs before it gives up.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub shutdown_timeout_secs: u64,
}

impl CommonArgs {
    /// Checks what clap cannot: URL schemes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_pg_url("DATABASE_URL", &self.database_url)?;
        if let Some(url) = &self.database_read_url {
            check_pg_url("DATABASE_READ_URL", url)?;
        }
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(ConfigError::new(
                "REDIS_URL",
                "must start with redis:// or rediss://",
            ));
        }
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(char::is_whitespace) {
            return Err(ConfigError::new(
                "REDIS_PREFIX",
                "must be non-empty and contain no whitespace",
            ));
        }
        Ok(())
    }

    /// The effective log format: explicit, else pretty in dev and json in prod.
    pub fn effective_log_format(&self) -> LogFormat {
        self.log_format.unwrap_or(match self.environment {
            Environment::Dev => LogFormat::Pretty,
            Environment::Prod => LogFormat::Json,
        })
    }

    /// The drain budget on shutdown.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
}

fn check_pg_url(var: &'static str, url: &str) -> Result<(), ConfigError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError::new(
            var,
            "must be a postgres:// or postgresql:// URL",
        ));
    }
    Ok(())
}

/// Settings of the HTTP API (`serve` and `all`).
#[derive(Args, Clone, Debug)]
pub struct HttpArgs {
    /// Address the API listens on.
    #[arg(long = "bind", env = "BIND_ADDR", value_name = "BIND_ADDR", default_value = DEFAULT_BIND)]
    pub bind: SocketAddr,

    /// Actix worker threads (0 = one per CPU).
    #[arg(long, env = "HTTP_WORKERS", default_value_t = 0)]
    pub http_workers: usize,

    /// HS256 key for access tokens: at least 32 bytes unless ITSUR_ENV=dev.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

impl HttpArgs {
    /// Checks the JWT secret: present always, strong outside development.
    pub fn validate(&self, environment: Environment) -> Result<Secret<String>, ConfigError> {
        let Some(secret) = &self.jwt_secret else {
            return Err(ConfigError::new("JWT_SECRET", "is required"));
        };
        if secret.is_empty() {
            return Err(ConfigError::new("JWT_SECRET", "must not be empty"));
        }
        if secret.len() < MIN_JWT_SECRET_BYTES && environment != Environment::Dev {
            return Err(ConfigError::new(
                "JWT_SECRET",
                format!(
                    "must be at least {MIN_JWT_SECRET_BYTES} bytes (it has {}); only ITSUR_ENV=dev allows a shorter one",
                    secret.len()
                ),
            ));
        }
        Ok(Secret::new(secret.clone()))
    }
}

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
                if secret.len() < MIN_JWT_SECRET_BYTES && environment != Environment::Dev {
                    return Err(ConfigError::new(
                        "WEBHOOK_SECRET",
                        format!(
                            "must be at least {MIN_JWT_SECRET_BYTES} bytes unless ITSUR_ENV=dev"
                        ),
                    ));
                }
                Some(WebhookSettings {
                    url: Secret::new(url.clone()),
                    secret: Secret::new(secret.clone()),
                    timeout: Duration::from_millis(self.webhook_timeout_ms),
                })
            }
        };
        Ok(OutboxSettings {
            batch_size: i64::from(self.outbox_batch_size),
            poll_interval: Duration::from_millis(self.outbox_poll_interval_ms),
            poll_only: self.outbox_poll_only,
            max_attempts: i32::try_from(self.outbox_max_attempts).unwrap_or(i32::MAX),
            webhook,
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
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            batch_size: 200,
            poll_interval: Duration::from_secs(1),
            poll_only: false,
            max_attempts: 6,
            webhook: None,
        }
    }
}

/// Settings of the job worker (`worker` and `all`).
#[derive(Args, Clone, Debug)]
pub struct JobArgs {
    /// Queues to claim jobs from, comma-separated.
    #[arg(
        long,
        env = "JOB_QUEUES",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub queues: Vec<String>,

    /// Jobs run at once by this worker.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,

    /// Seconds a claimed job stays leased without a heartbeat; a dead worker's jobs return
    /// to the queue within it.
    #[arg(long, env = "JOB_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub lease_secs: u64,

    /// Polling interval in ms (the fallback when no NOTIFY arrives).
    #[arg(long, env = "JOB_POLL_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub poll_interval_ms: u64,

    /// Never LISTEN, only poll (for connection poolers in transaction mode).
    #[arg(long, env = "JOB_POLL_ONLY", default_value_t = false)]
    pub poll_only: bool,

    /// Do not run the cron schedules in this worker.
    #[arg(long, env = "JOB_NO_CRON", default_value_t = false)]
    pub no_cron: bool,
}

/// The validated, immutable settings a process runs with; shared through `app::Ctx`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Deployment environment.
    pub environment: Environment,
    /// Postgres primary URL (may carry a password).
    pub database_url: Secret<String>,
    /// Optional read replica URL.
    pub database_read_url: Option<Secret<String>>,
    /// Primary pool size.
    pub db_pool_size: u32,
    /// Replica pool size.
    pub db_read_pool_size: u32,
    /// Pool checkout and connect deadline: a request needing Postgres fails fast with 503.
    pub db_connect_timeout: Duration,
    /// statement_timeout set on every pooled connection (None = server default).
    pub db_statement_timeout: Option<Duration>,
    /// Optional Redis URL; None selects the in-process fallbacks.
    pub redis_url: Option<Secret<String>>,
    /// Prefix for every Redis key and channel.
    pub redis_prefix: String,
    /// Redis pool size.
    pub redis_pool_size: u32,
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
        common.validate()?;
        Ok(Self {
            environment: common.environment,
            database_url: Secret::new(common.database_url.clone()),
            database_read_url: common.database_read_url.clone().map(Secret::new),
            db_pool_size: common.db_pool_size,
            db_read_pool_size: common.db_read_pool_size,
            db_connect_timeout: Duration::from_millis(common.db_connect_timeout_ms),
            db_statement_timeout: (common.db_statement_timeout_ms > 0)
                .then(|| Duration::from_millis(common.db_statement_timeout_ms)),
            redis_url: common.redis_url.clone().map(Secret::new),
            redis_prefix: common.redis_prefix.clone(),
            redis_pool_size: common.redis_pool_size,
            shutdown_timeout: common.shutdown_timeout(),
            max_sessions_per_user: common.max_sessions_per_user,
            job_retention: chrono::Duration::hours(i64::from(common.job_retention_hours)),
            outbox_retention: chrono::Duration::hours(i64::from(common.outbox_retention_hours)),
            jwt_secret,
            ws: WsSettings::default(),
            outbox: OutboxSettings::default(),
        })
    }

    /// A config for tests and tools: the given URLs, small pools, dev environment.
    pub fn for_urls(database_url: &str, redis_url: Option<&str>, redis_prefix: &str) -> Self {
        Self {
            environment: Environment::Dev,
            database_url: Secret::new(database_url.to_owned()),
            database_read_url: None,
            db_pool_size: 8,
            db_read_pool_size: 4,
            db_connect_timeout: Duration::from_secs(2),
            db_statement_timeout: Some(Duration::from_secs(15)),
            redis_url: redis_url.map(|u| Secret::new(u.to_owned())),
            redis_prefix: redis_prefix.to_owned(),
            redis_pool_size: 4,
            shutdown_timeout: Duration::from_secs(10),
            max_sessions_per_user: 10,
            job_retention: chrono::Duration::hours(168),
            outbox_retention: chrono::Duration::hours(24),
            jwt_secret: Some(Secret::new(
                "test-secret-that-is-long-enough-0123456789".to_owned(),
            )),
            ws: WsSettings::default(),
            // Tests drive the relay explicitly or wake it; a short poll keeps e2e-style tests
            // that rely on the fallback quick.
            outbox: OutboxSettings {
                poll_interval: Duration::from_millis(100),
                ..OutboxSettings::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(secret: Option<&str>) -> HttpArgs {
        HttpArgs {
            bind: DEFAULT_BIND.parse().unwrap(),
            http_workers: 0,
            jwt_secret: secret.map(str::to_owned),
        }
    }

    #[test]
    fn weak_jwt_secret_is_refused_outside_dev() {
        let err = http(Some("short")).validate(Environment::Prod).unwrap_err();
        assert_eq!(err.var, "JWT_SECRET");
        assert!(http(Some("short")).validate(Environment::Dev).is_ok());
        assert!(
            http(Some(&"x".repeat(32)))
                .validate(Environment::Prod)
                .is_ok()
        );
        assert_eq!(
            http(None).validate(Environment::Dev).unwrap_err().var,
            "JWT_SECRET"
        );
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2".to_owned());
        assert!(!format!("{s:?} {s}").contains("hunter2"));
    }
}
