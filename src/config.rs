//! Configuration: every setting is a clap option that also reads an environment variable, so
//! `itsur <role> --help` documents all of them. Validation that clap cannot express (URL
//! schemes, secret strength) lives in [`ConfigError`]-returning `validate` functions whose
//! message always names the variable.
//!
//! Leaf utility: depends on nothing in the crate.
//!
//! Env vars: `DATABASE_URL`, `DATABASE_READ_URL`, `DB_POOL_SIZE`, `DB_READ_POOL_SIZE`,
//! `DB_CONNECT_TIMEOUT_MS`, `DB_STATEMENT_TIMEOUT_MS`, `REDIS_URL`, `REDIS_CA_FILE`,
//! `REDIS_PREFIX`, `REDIS_POOL_SIZE`, `ITSUR_ENV`, `LOG_FORMAT`, `RUST_LOG`, `SHUTDOWN_TIMEOUT_SECS`,
//! `BIND_ADDR`, `HTTP_WORKERS`, `JWT_SECRET`, `METRICS_BIND`, `HEALTHCHECK_URL`.
//!
//! Edge protection ([`EdgeArgs`], serve and all): `RATE_LIMIT_IP`, `RATE_LIMIT_USER`,
//! `RATE_LIMIT_AUTH`, `RATE_LIMIT_LOGIN`, `RATE_LIMIT_ORDERS`, `TRUSTED_PROXIES`,
//! `REQUEST_TIMEOUT_MS`, `MAX_IN_FLIGHT`, `JSON_BODY_LIMIT_BYTES`, `AUTH_BODY_LIMIT_BYTES`,
//! `HSTS_MAX_AGE_SECS`, `CORS_ORIGINS`, `CORS_ALLOW_CREDENTIALS`, `CORS_MAX_AGE_SECS`.
//! Outbound calls ([`PushArgs`], [`BreakerArgs`], every role): `FCM_BASE_URL`,
//! `FCM_PROJECT_ID`, `FCM_ACCESS_TOKEN`, `ONESIGNAL_BASE_URL`, `ONESIGNAL_APP_ID`,
//! `ONESIGNAL_API_KEY`, `PUSH_TIMEOUT_MS`, `BREAKER_FAILURE_RATIO`, `BREAKER_MIN_CALLS`,
//! `BREAKER_WINDOW_SECS`, `BREAKER_CONSECUTIVE_FAILURES`, `BREAKER_COOLDOWN_SECS`.
//!
//! Jobs and the outbox: `JOB_*`, `OUTBOX_RETENTION_HOURS` (also the WebSocket resume window); WebSocket gateway
//! ([`WsArgs`]): `WS_MAX_CONNECTIONS_PER_IP`, `WS_MAX_CONNECTIONS_PER_USER`, `WS_SEND_QUEUE`,
//! `WS_PING_SECS`, `WS_IDLE_TIMEOUT_SECS`, `WS_SESSION_RECHECK_SECS`; outbox relay
//! ([`OutboxArgs`]): `OUTBOX_BATCH_SIZE`, `OUTBOX_POLL_INTERVAL_MS`, `OUTBOX_POLL_ONLY`,
//! `OUTBOX_MAX_ATTEMPTS`, `WEBHOOK_URL`, `WEBHOOK_SECRET`, `WEBHOOK_TIMEOUT_MS`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
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
    /// Postgres primary, e.g. postgres://user:pass@host:5432/itsur?sslmode=verify-full;
    /// `sslmode` (disable|allow|prefer|require|verify-ca|verify-full, default prefer) and
    /// `sslrootcert` (PEM file, or `system`) work as in libpq.
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
    /// redis:// (plain) or rediss:// (TLS, certificate and host name verified).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// PEM file of the CA(s) that sign the Redis server certificate (rediss:// only); unset =
    /// the system trust store.
    #[arg(long, env = "REDIS_CA_FILE", value_name = "PATH")]
    pub redis_ca_file: Option<PathBuf>,

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

    /// Push providers (used by the worker's `send_push` jobs).
    #[command(flatten)]
    pub push: PushArgs,

    /// SMTP server of the `send_email` flow node.
    #[command(flatten)]
    pub smtp: SmtpArgs,

    /// Circuit breakers around every outbound call.
    #[command(flatten)]
    pub breaker: BreakerArgs,
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
                "must start with redis:// or rediss:// (TLS)",
            ));
        }
        if let Some(path) = &self.redis_ca_file {
            // Said at start-up rather than as a connection error on the first request.
            if !self
                .redis_url
                .as_ref()
                .is_some_and(|u| u.starts_with("rediss://"))
            {
                return Err(ConfigError::new(
                    "REDIS_CA_FILE",
                    "is set but REDIS_URL is not a rediss:// (TLS) URL",
                ));
            }
            read_pem_certs(path).map_err(|e| ConfigError::new("REDIS_CA_FILE", e))?;
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

/// Checks a Postgres URL at start-up: the scheme, libpq's `sslmode`/`sslrootcert` (the root
/// file must hold a PEM certificate) and every option tokio-postgres would reject. The
/// message names `var` and the option, never the URL.
pub fn check_pg_url(var: &'static str, url: &str) -> Result<(), ConfigError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError::new(
            var,
            "must be a postgres:// or postgresql:// URL",
        ));
    }
    let parsed = PgTlsUrl::parse(url).map_err(|e| ConfigError::new(var, e))?;
    if let Some(PgRootCert::File(path)) = &parsed.root_cert {
        read_pem_certs(path).map_err(|e| ConfigError::new(var, format!("sslrootcert: {e}")))?;
    }
    // Everything else in the URL is tokio-postgres's to parse: an unknown option or a bad
    // port is reported now. Its messages name the option, never the value.
    tokio_postgres::Config::from_str(&parsed.rest).map_err(|e| {
        // tokio-postgres's Display is only the kind ("invalid connection string"); the
        // cause says which option.
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        ConfigError::new(var, format!("{e}: {}", cause.unwrap_or_default()))
    })?;
    Ok(())
}

/// libpq's `sslmode` values, with libpq's meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgSslMode {
    /// Plain TCP only.
    Disable,
    /// libpq tries plain first, then TLS; here the same as [`PgSslMode::Prefer`] (TLS when the
    /// server offers it), which connects wherever `allow` would.
    Allow,
    /// TLS when the server offers it, else plain (default); the certificate is not checked
    /// unless an `sslrootcert` file is given (then its chain is, as in libpq).
    Prefer,
    /// TLS or no connection; the certificate is not checked (an `sslrootcert` file makes it
    /// `verify-ca`, as in libpq).
    Require,
    /// TLS with the certificate chain verified against the roots; the host name is not.
    VerifyCa,
    /// TLS with the chain and the host name verified.
    VerifyFull,
}

/// Where the trusted roots of `verify-ca`/`verify-full` come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgRootCert {
    /// `sslrootcert=<path>`: a PEM file of CA certificates.
    File(PathBuf),
    /// `sslrootcert=system` (as in libpq 16), or no `sslrootcert`: the operating system's
    /// trust store (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured).
    System,
}

/// A Postgres URL split into the TLS settings itsur applies itself and the rest, which
/// tokio-postgres parses (it knows only `sslmode=disable|prefer|require` and rejects
/// `sslrootcert`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTlsUrl {
    /// The effective mode: `require` with an `sslrootcert` file is `verify-ca`, as in libpq.
    pub mode: PgSslMode,
    /// Roots to verify the chain against: the given `sslrootcert` (any mode but `disable`),
    /// else the system store for `verify-ca`/`verify-full`; None = the chain is not checked.
    pub root_cert: Option<PgRootCert>,
    /// The URL without `sslmode` and `sslrootcert` (may hold a password: never log it).
    pub rest: String,
}

impl PgTlsUrl {
    /// Splits `url`; the error is one line naming the bad parameter, never the URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut mode = None;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match percent_decode(key)?.as_str() {
                "sslmode" => {
                    mode = Some(match percent_decode(value)?.as_str() {
                        "disable" => PgSslMode::Disable,
                        "allow" => PgSslMode::Allow,
                        "prefer" => PgSslMode::Prefer,
                        "require" => PgSslMode::Require,
                        "verify-ca" => PgSslMode::VerifyCa,
                        "verify-full" => PgSslMode::VerifyFull,
                        _ => {
                            return Err("sslmode must be one of disable, allow, prefer, require, \
                                        verify-ca, verify-full"
                                .to_owned());
                        }
                    });
                }
                "sslrootcert" => {
                    let value = percent_decode(value)?;
                    root_cert = Some(match value.as_str() {
                        "" => return Err("sslrootcert is empty".to_owned()),
                        "system" => PgRootCert::System,
                        _ => PgRootCert::File(PathBuf::from(value)),
                    });
                }
                _ => kept.push(pair),
            }
        }
        // libpq: a root file upgrades `require` to `verify-ca`; `sslrootcert=system` defaults
        // to, and only allows, `verify-full` (anything weaker would trust any public CA's
        // certificate for any name).
        let mode = match (mode, &root_cert) {
            (Some(PgSslMode::Require), Some(PgRootCert::File(_))) => PgSslMode::VerifyCa,
            (None, Some(PgRootCert::System)) => PgSslMode::VerifyFull,
            (Some(m), Some(PgRootCert::System)) if m != PgSslMode::VerifyFull => {
                return Err("sslrootcert=system requires sslmode=verify-full".to_owned());
            }
            (m, _) => m.unwrap_or(PgSslMode::Prefer),
        };
        let root_cert = match mode {
            PgSslMode::Disable => None,
            PgSslMode::VerifyCa | PgSslMode::VerifyFull => {
                Some(root_cert.unwrap_or(PgRootCert::System))
            }
            // libpq loads a given root file in every TLS mode and then verifies the chain.
            PgSslMode::Allow | PgSslMode::Prefer | PgSslMode::Require => root_cert,
        };
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok(Self {
            mode,
            root_cert,
            rest,
        })
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| "a URL query parameter is not valid UTF-8".to_owned())
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

    /// Rate limits, proxies, deadlines, body limits, CORS and security headers.
    #[command(flatten)]
    pub edge: EdgeArgs,
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

    /// Jobs claimed ahead of free slots into the worker's local buffer (leased like running
    /// jobs; handed back at once on shutdown). 0 = four times the concurrency, at most 1,000.
    #[arg(long, env = "JOB_PREFETCH", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub prefetch: u32,

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
    /// PEM roots for a rediss:// server (None = the system trust store).
    pub redis_ca_file: Option<PathBuf>,
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
    /// Rate limits, proxies, deadlines, body limits, CORS and security headers of the API.
    pub edge: EdgeConfig,
    /// Push-provider endpoints and credentials.
    pub push: PushConfig,
    /// SMTP server of the `send_email` node.
    pub smtp: SmtpConfig,
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
            redis_ca_file: common.redis_ca_file.clone(),
            redis_prefix: common.redis_prefix.clone(),
            redis_pool_size: common.redis_pool_size,
            shutdown_timeout: common.shutdown_timeout(),
            max_sessions_per_user: common.max_sessions_per_user,
            job_retention: chrono::Duration::hours(i64::from(common.job_retention_hours)),
            outbox_retention: chrono::Duration::hours(i64::from(common.outbox_retention_hours)),
            jwt_secret,
            edge: EdgeConfig::default(),
            push: common.push.to_config()?,
            smtp: common.smtp.to_config()?,
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
            redis_ca_file: None,
            redis_prefix: redis_prefix.to_owned(),
            redis_pool_size: 4,
            shutdown_timeout: Duration::from_secs(10),
            max_sessions_per_user: 10,
            job_retention: chrono::Duration::hours(168),
            outbox_retention: chrono::Duration::hours(24),
            jwt_secret: Some(Secret::new(
                "test-secret-that-is-long-enough-0123456789".to_owned(),
            )),
            // Tests that exercise the limiter set the buckets they need; the others would
            // trip the production defaults (they send hundreds of requests from one peer).
            edge: EdgeConfig {
                rate_limits: RateLimits::off(),
                ..EdgeConfig::default()
            },
            push: PushConfig::default(),
            smtp: SmtpConfig::default(),
            breaker: BreakerConfig::default(),
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

/// An IP network such as `10.0.0.0/8` or `2001:db8::/32`; a bare address is a /32 (/128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// True when `ip` is inside this network (IPv4 and IPv6 never match each other).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(*ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(*ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || format!("`{s}` is not an address or CIDR such as 10.0.0.0/8");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

/// A rate-limit quota: at most `limit` requests in any window of `period` (sliding window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Requests allowed per window.
    pub limit: u32,
    /// Length of the sliding window.
    pub period: Duration,
}

impl Quota {
    /// `limit` requests per `period`.
    pub const fn new(limit: u32, period: Duration) -> Self {
        Self { limit, period }
    }

    /// `limit` requests per minute.
    pub const fn per_minute(limit: u32) -> Self {
        Self::new(limit, Duration::from_secs(60))
    }
}

/// A bucket's setting as written in the environment: `N/PERIOD` (`100/1m`, `5/30s`,
/// `1000/1h`, `10/15m`) or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaSetting(pub Option<Quota>);

impl FromStr for QuotaSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") {
            return Ok(Self(None));
        }
        let bad = || format!("`{s}` is not N/PERIOD (e.g. 100/1m, 5/30s, 1000/1h) or off");
        let (n, period) = s.split_once('/').ok_or_else(bad)?;
        let limit: u32 = n.trim().parse().map_err(|_| bad())?;
        let period = period.trim();
        let split = period
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(period.len());
        let (count, unit) = period.split_at(split);
        let count: u64 = if count.is_empty() {
            1
        } else {
            count.parse().map_err(|_| bad())?
        };
        let unit_secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return Err(bad()),
        };
        let secs = count.checked_mul(unit_secs).ok_or_else(bad)?;
        if limit == 0 || secs == 0 || secs > 24 * 3600 {
            return Err(format!(
                "`{s}`: the limit must be at least 1 and the period between 1s and 24h"
            ));
        }
        Ok(Self(Some(Quota::new(limit, Duration::from_secs(secs)))))
    }
}

/// The quotas of the API's rate-limit buckets; `None` switches a bucket off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Every request, per client IP (IPv6: per /64).
    pub ip: Option<Quota>,
    /// Every request carrying a valid access token, per user.
    pub user: Option<Quota>,
    /// `POST /auth/login` and `POST /auth/register`, per client IP.
    pub auth: Option<Quota>,
    /// `POST /auth/login`, per client IP and e-mail (password guessing on one account).
    pub login: Option<Quota>,
    /// `POST /orders`, per user (per IP when anonymous).
    pub orders: Option<Quota>,
}

impl RateLimits {
    /// Every bucket off.
    pub const fn off() -> Self {
        Self {
            ip: None,
            user: None,
            auth: None,
            login: None,
            orders: None,
        }
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            ip: Some(Quota::per_minute(100)),
            user: Some(Quota::per_minute(120)),
            auth: Some(Quota::per_minute(20)),
            login: Some(Quota::new(10, Duration::from_secs(15 * 60))),
            orders: Some(Quota::per_minute(10)),
        }
    }
}

/// Allowed cross-origin callers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CorsConfig {
    /// Exact origins (`https://app.itsur.edu`), or `*` (only without credentials). Empty =
    /// no CORS headers at all (same-origin only).
    pub origins: Vec<String>,
    /// Sends `Access-Control-Allow-Credentials: true` (never together with `*`).
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer.
    pub max_age: Duration,
}

/// Edge protection of the HTTP API.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// Per-bucket quotas.
    pub rate_limits: RateLimits,
    /// Peers whose `X-Forwarded-For` is believed (nginx).
    pub trusted_proxies: Vec<Cidr>,
    /// A request that has not produced its response by then answers 503.
    pub request_timeout: Duration,
    /// Requests handled at once by this process; beyond it, 503 + Retry-After.
    pub max_in_flight: usize,
    /// Largest JSON body accepted (413 beyond).
    pub json_body_limit: usize,
    /// Largest body accepted on `POST /auth/{login,register,refresh}` (413 beyond).
    pub auth_body_limit: usize,
    /// `Strict-Transport-Security: max-age=…` (None = header not sent).
    pub hsts_max_age: Option<Duration>,
    /// Cross-origin policy.
    pub cors: CorsConfig,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            rate_limits: RateLimits::default(),
            trusted_proxies: Vec::new(),
            request_timeout: Duration::from_secs(10),
            max_in_flight: 1024,
            json_body_limit: 64 * 1024,
            auth_body_limit: 32 * 1024,
            hsts_max_age: Some(Duration::from_secs(365 * 24 * 3600)),
            cors: CorsConfig {
                origins: Vec::new(),
                allow_credentials: false,
                max_age: Duration::from_secs(600),
            },
        }
    }
}

/// Edge-protection settings of the HTTP API (`serve`, `all`).
#[derive(Args, Clone, Debug)]
pub struct EdgeArgs {
    /// Requests per client IP (IPv6: per /64): N/PERIOD such as 100/1m, or off.
    #[arg(long, env = "RATE_LIMIT_IP", default_value = "100/1m")]
    pub rate_limit_ip: QuotaSetting,

    /// Requests per authenticated user: N/PERIOD or off.
    #[arg(long, env = "RATE_LIMIT_USER", default_value = "120/1m")]
    pub rate_limit_user: QuotaSetting,

    /// POST /auth/login and /auth/register per client IP: N/PERIOD or off.
    #[arg(long, env = "RATE_LIMIT_AUTH", default_value = "20/1m")]
    pub rate_limit_auth: QuotaSetting,

    /// POST /auth/login per client IP and e-mail (password guessing): N/PERIOD or off.
    #[arg(long, env = "RATE_LIMIT_LOGIN", default_value = "10/15m")]
    pub rate_limit_login: QuotaSetting,

    /// POST /orders per user: N/PERIOD or off.
    #[arg(long, env = "RATE_LIMIT_ORDERS", default_value = "10/1m")]
    pub rate_limit_orders: QuotaSetting,

    /// Comma-separated CIDRs of reverse proxies whose X-Forwarded-For is believed.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<Cidr>,

    /// Deadline of one request in ms: past it the request answers 503 (never hangs).
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub request_timeout_ms: u64,

    /// Requests handled at once by this process; beyond it 503 + Retry-After (load shedding).
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_in_flight: u32,

    /// Largest JSON request body in bytes (413 beyond).
    #[arg(long, env = "JSON_BODY_LIMIT_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1024..=104_857_600))]
    pub json_body_limit_bytes: u32,

    /// Largest request body of POST /auth/login, /auth/register and /auth/refresh in bytes.
    #[arg(long, env = "AUTH_BODY_LIMIT_BYTES", default_value_t = 32_768, value_parser = clap::value_parser!(u32).range(256..=1_048_576))]
    pub auth_body_limit_bytes: u32,

    /// Strict-Transport-Security max-age in seconds (0 = header not sent).
    #[arg(long, env = "HSTS_MAX_AGE_SECS", default_value_t = 31_536_000)]
    pub hsts_max_age_secs: u64,

    /// Comma-separated origins allowed to call the API from a browser (`*` = any, only
    /// without credentials); unset = same-origin only.
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Let browsers send cookies/credentials cross-origin (refused together with `*`).
    #[arg(long, env = "CORS_ALLOW_CREDENTIALS", default_value_t = false, action = clap::ArgAction::Set)]
    pub cors_allow_credentials: bool,

    /// Seconds browsers may cache a CORS preflight answer.
    #[arg(long, env = "CORS_MAX_AGE_SECS", default_value_t = 600)]
    pub cors_max_age_secs: u64,
}

impl EdgeArgs {
    /// Validates into an [`EdgeConfig`].
    pub fn to_config(&self) -> Result<EdgeConfig, ConfigError> {
        let origins: Vec<String> = self
            .cors_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        for o in &origins {
            if o == "*" {
                if self.cors_allow_credentials {
                    return Err(ConfigError::new(
                        "CORS_ORIGINS",
                        "`*` cannot be combined with CORS_ALLOW_CREDENTIALS=true; list the origins",
                    ));
                }
                continue;
            }
            let rest = o
                .strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains('/')) {
                return Err(ConfigError::new(
                    "CORS_ORIGINS",
                    format!("`{o}` is not an origin such as https://app.example.edu"),
                ));
            }
        }
        Ok(EdgeConfig {
            rate_limits: RateLimits {
                ip: self.rate_limit_ip.0,
                user: self.rate_limit_user.0,
                auth: self.rate_limit_auth.0,
                login: self.rate_limit_login.0,
                orders: self.rate_limit_orders.0,
            },
            trusted_proxies: self.trusted_proxies.clone(),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_in_flight: usize::try_from(self.max_in_flight).unwrap_or(usize::MAX),
            json_body_limit: usize::try_from(self.json_body_limit_bytes).unwrap_or(usize::MAX),
            auth_body_limit: usize::try_from(self.auth_body_limit_bytes).unwrap_or(usize::MAX),
            hsts_max_age: (self.hsts_max_age_secs > 0)
                .then(|| Duration::from_secs(self.hsts_max_age_secs)),
            cors: CorsConfig {
                origins,
                allow_credentials: self.cors_allow_credentials,
                max_age: Duration::from_secs(self.cors_max_age_secs),
            },
        })
    }
}

/// Push-provider endpoints and credentials.
#[derive(Clone, Debug)]
pub struct PushConfig {
    /// FCM HTTP v1 base URL (tests point it at a local server).
    pub fcm_base_url: String,
    /// Firebase project id; FCM sends are refused (Permanent) while unset.
    pub fcm_project_id: Option<String>,
    /// OAuth 2 access token for FCM (`Authorization: Bearer …`).
    pub fcm_access_token: Option<Secret<String>>,
    /// OneSignal REST base URL.
    pub onesignal_base_url: String,
    /// OneSignal app id; OneSignal sends are refused (Permanent) while unset.
    pub onesignal_app_id: Option<String>,
    /// OneSignal REST API key (`Authorization: Key …`).
    pub onesignal_api_key: Option<Secret<String>>,
    /// Deadline of one provider call.
    pub timeout: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            fcm_base_url: DEFAULT_FCM_BASE_URL.to_owned(),
            fcm_project_id: None,
            fcm_access_token: None,
            onesignal_base_url: DEFAULT_ONESIGNAL_BASE_URL.to_owned(),
            onesignal_app_id: None,
            onesignal_api_key: None,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Default FCM endpoint.
pub const DEFAULT_FCM_BASE_URL: &str = "https://fcm.googleapis.com";
/// Default OneSignal endpoint.
pub const DEFAULT_ONESIGNAL_BASE_URL: &str = "https://api.onesignal.com";

/// Push-provider settings (the worker's `send_push` jobs).
#[derive(Args, Clone, Debug)]
pub struct PushArgs {
    /// FCM HTTP v1 base URL.
    #[arg(long, env = "FCM_BASE_URL", default_value = DEFAULT_FCM_BASE_URL)]
    pub fcm_base_url: String,

    /// Firebase project id for FCM sends.
    #[arg(long, env = "FCM_PROJECT_ID")]
    pub fcm_project_id: Option<String>,

    /// OAuth 2 access token for FCM HTTP v1 (Bearer).
    #[arg(long, env = "FCM_ACCESS_TOKEN", hide_env_values = true)]
    pub fcm_access_token: Option<String>,

    /// OneSignal REST base URL.
    #[arg(long, env = "ONESIGNAL_BASE_URL", default_value = DEFAULT_ONESIGNAL_BASE_URL)]
    pub onesignal_base_url: String,

    /// OneSignal app id.
    #[arg(long, env = "ONESIGNAL_APP_ID")]
    pub onesignal_app_id: Option<String>,

    /// OneSignal REST API key (`Authorization: Key …`).
    #[arg(long, env = "ONESIGNAL_API_KEY", hide_env_values = true)]
    pub onesignal_api_key: Option<String>,

    /// Deadline of one push-provider call, in ms.
    #[arg(long, env = "PUSH_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub push_timeout_ms: u64,
}

impl PushArgs {
    /// Validates into a [`PushConfig`].
    pub fn to_config(&self) -> Result<PushConfig, ConfigError> {
        for (var, url) in [
            ("FCM_BASE_URL", &self.fcm_base_url),
            ("ONESIGNAL_BASE_URL", &self.onesignal_base_url),
        ] {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(ConfigError::new(var, "must be an http:// or https:// URL"));
            }
        }
        let nonempty = |v: &Option<String>| v.as_ref().filter(|s| !s.trim().is_empty()).cloned();
        Ok(PushConfig {
            fcm_base_url: self.fcm_base_url.trim_end_matches('/').to_owned(),
            fcm_project_id: nonempty(&self.fcm_project_id),
            fcm_access_token: nonempty(&self.fcm_access_token).map(Secret::new),
            onesignal_base_url: self.onesignal_base_url.trim_end_matches('/').to_owned(),
            onesignal_app_id: nonempty(&self.onesignal_app_id),
            onesignal_api_key: nonempty(&self.onesignal_api_key).map(Secret::new),
            timeout: Duration::from_millis(self.push_timeout_ms),
        })
    }
}

/// SMTP settings of the `send_email` node.
#[derive(Clone, Debug)]
pub struct SmtpConfig {
    /// `smtp://host:port` (plain, or `?tls=required` for STARTTLS), `smtps://host:port`
    /// (implicit TLS); user and password may be in the URL. None: e-mails fail permanently.
    pub url: Option<Secret<String>>,
    /// The `From:` address.
    pub from: String,
    /// Deadline of one SMTP conversation.
    pub timeout: Duration,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            url: None,
            from: DEFAULT_SMTP_FROM.to_owned(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Default sender.
pub const DEFAULT_SMTP_FROM: &str = "ITSUR Eats <no-reply@itsur.invalid>";

/// SMTP settings (the worker's `send_email` jobs).
#[derive(Args, Clone, Debug)]
pub struct SmtpArgs {
    /// SMTP server: `smtp://host:587?tls=required` (STARTTLS), `smtps://host:465` (TLS),
    /// `smtp://host:25` (plain, for a local relay); credentials in the URL.
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// The `From:` address of e-mails.
    #[arg(long, env = "SMTP_FROM", default_value = DEFAULT_SMTP_FROM)]
    pub smtp_from: String,

    /// Deadline of one SMTP conversation, in ms.
    #[arg(long, env = "SMTP_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub smtp_timeout_ms: u64,
}

impl SmtpArgs {
    /// Validates into an [`SmtpConfig`] (the URL's scheme and the sender's address).
    pub fn to_config(&self) -> Result<SmtpConfig, ConfigError> {
        let url = self.smtp_url.as_ref().filter(|u| !u.trim().is_empty());
        if let Some(u) = url
            && !(u.starts_with("smtp://") || u.starts_with("smtps://"))
        {
            return Err(ConfigError::new(
                "SMTP_URL",
                "must be an smtp:// or smtps:// URL",
            ));
        }
        if self.smtp_from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(ConfigError::new(
                "SMTP_FROM",
                "must be an address, optionally with a name: Name <user@host>",
            ));
        }
        Ok(SmtpConfig {
            url: url.cloned().map(Secret::new),
            from: self.smtp_from.clone(),
            timeout: Duration::from_millis(self.smtp_timeout_ms),
        })
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_url_tls_params_follow_libpq() {
        let p = PgTlsUrl::parse("postgres://u:pw@h/db").unwrap();
        assert_eq!(
            (p.mode, p.root_cert, p.rest.as_str()),
            (PgSslMode::Prefer, None, "postgres://u:pw@h/db")
        );

        // Stripped for tokio-postgres; the other parameters are kept in order.
        let p = PgTlsUrl::parse(
            "postgres://h/db?application_name=x&sslmode=require&sslrootcert=%2Fetc%2Fca%20dir%2Fca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(p.mode, PgSslMode::VerifyCa, "a root file upgrades require");
        assert_eq!(
            p.root_cert,
            Some(PgRootCert::File("/etc/ca dir/ca.pem".into()))
        );
        assert_eq!(
            p.rest,
            "postgres://h/db?application_name=x&connect_timeout=3"
        );

        let p = PgTlsUrl::parse("postgres://h/db?sslmode=verify-full").unwrap();
        assert_eq!(
            (p.mode, p.root_cert),
            (PgSslMode::VerifyFull, Some(PgRootCert::System))
        );
        assert_eq!(p.rest, "postgres://h/db");
        let p = PgTlsUrl::parse("postgres://h/db?sslrootcert=system").unwrap();
        assert_eq!(
            p.mode,
            PgSslMode::VerifyFull,
            "libpq 16: system implies verify-full"
        );
        let p = PgTlsUrl::parse("postgres://h/db?sslmode=disable&sslrootcert=/x.pem").unwrap();
        assert_eq!((p.mode, p.root_cert), (PgSslMode::Disable, None));

        assert!(PgTlsUrl::parse("postgres://h/db?sslmode=require&sslrootcert=system").is_err());
        assert!(PgTlsUrl::parse("postgres://h/db?sslmode=verify").is_err());
    }

    #[test]
    fn bad_pg_tls_settings_are_one_line_start_up_errors() {
        let err = check_pg_url("DATABASE_URL", "postgres://u:hunter2@h/db?sslmode=bogus")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("DATABASE_URL: sslmode must be one of"),
            "{err}"
        );
        assert!(!err.contains("hunter2") && !err.contains('\n'), "{err}");

        let err = check_pg_url(
            "DATABASE_READ_URL",
            "postgres://u:hunter2@h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("DATABASE_READ_URL: sslrootcert: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
        assert!(!err.contains("hunter2") && !err.contains('\n'), "{err}");

        // Not a certificate: refused too.
        let err = check_pg_url("DATABASE_URL", "postgres://h/db?sslrootcert=/dev/null")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no PEM certificate"), "{err}");

        // Whatever tokio-postgres would reject is reported at start-up as well.
        let err = check_pg_url("DATABASE_URL", "postgres://u:hunter2@h/db?sslmod=require")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslmod") && !err.contains("hunter2"), "{err}");

        check_pg_url("DATABASE_URL", "postgres://u:pw@h:5432/db?sslmode=require").unwrap();
    }

    #[derive(clap::Parser)]
    struct Common {
        #[command(flatten)]
        common: CommonArgs,
    }

    fn common(args: &[&str]) -> Result<(), ConfigError> {
        use clap::Parser as _;
        let mut argv = vec!["itsur", "--database-url", "postgres://h/db"];
        argv.extend_from_slice(args);
        Common::try_parse_from(argv).unwrap().common.validate()
    }

    #[test]
    fn rediss_is_accepted_and_redis_ca_file_checked() {
        common(&["--redis-url", "rediss://h:6380"]).unwrap();
        common(&["--redis-url", "redis://h:6379"]).unwrap();
        let err = common(&["--redis-url", "http://h"]).unwrap_err();
        assert_eq!(err.var, "REDIS_URL");
        let err =
            common(&["--redis-url", "redis://h", "--redis-ca-file", "/dev/null"]).unwrap_err();
        assert_eq!(err.var, "REDIS_CA_FILE");
        assert!(err.message.contains("rediss://"), "{err}");
        let err = common(&[
            "--redis-url",
            "rediss://h",
            "--redis-ca-file",
            "/nonexistent.pem",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("REDIS_CA_FILE: cannot read /nonexistent.pem"),
            "{err}"
        );
    }

    fn edge() -> EdgeArgs {
        EdgeArgs {
            rate_limit_ip: "100/1m".parse().unwrap(),
            rate_limit_user: "off".parse().unwrap(),
            rate_limit_auth: "20/1m".parse().unwrap(),
            rate_limit_login: "10/15m".parse().unwrap(),
            rate_limit_orders: "10/1m".parse().unwrap(),
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            request_timeout_ms: 10_000,
            max_in_flight: 1024,
            json_body_limit_bytes: 65_536,
            auth_body_limit_bytes: 32_768,
            hsts_max_age_secs: 0,
            cors_origins: vec![],
            cors_allow_credentials: false,
            cors_max_age_secs: 600,
        }
    }

    #[test]
    fn quotas_parse_and_refuse_nonsense() {
        let q = |s: &str| s.parse::<QuotaSetting>().map(|q| q.0);
        assert_eq!(q("100/1m"), Ok(Some(Quota::per_minute(100))));
        assert_eq!(q("5/30s"), Ok(Some(Quota::new(5, Duration::from_secs(30)))));
        assert_eq!(q("7/h"), Ok(Some(Quota::new(7, Duration::from_secs(3600)))));
        assert_eq!(q("off"), Ok(None));
        for bad in [
            "", "100", "0/1m", "10/0s", "10/1d", "x/1m", "10/1m/2", "10/48h",
        ] {
            assert!(q(bad).is_err(), "{bad} refused");
        }
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(&"10.200.3.4".parse().unwrap()));
        assert!(!net.contains(&"11.0.0.1".parse().unwrap()));
        assert!(!net.contains(&"::1".parse().unwrap()));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(&"192.0.2.7".parse().unwrap()));
        assert!(!one.contains(&"192.0.2.8".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(&"2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains(&"2001:db9::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(&"8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cors_wildcard_with_credentials_is_refused() {
        let mut e = edge();
        e.cors_origins = vec!["*".to_owned()];
        assert!(e.to_config().is_ok());
        e.cors_allow_credentials = true;
        assert_eq!(e.to_config().unwrap_err().var, "CORS_ORIGINS");
        e.cors_origins = vec!["https://app.a.edu/".to_owned()];
        let cfg = e.to_config().unwrap();
        assert_eq!(cfg.cors.origins, ["https://app.a.edu"]);
        assert_eq!(cfg.hsts_max_age, None);
        assert_eq!(cfg.rate_limits.user, None);
        e.cors_origins = vec!["app.a.edu".to_owned()];
        assert_eq!(e.to_config().unwrap_err().var, "CORS_ORIGINS");
    }

    fn http(secret: Option<&str>) -> HttpArgs {
        HttpArgs {
            bind: DEFAULT_BIND.parse().unwrap(),
            http_workers: 0,
            jwt_secret: secret.map(str::to_owned),
            edge: edge(),
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
