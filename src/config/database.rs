//! Postgres: the primary, the optional read replica and their pools. The libpq-style TLS
//! parameters of the URLs (`sslmode`, `sslrootcert`) are parsed next to the code that
//! applies them, in `store::pg_url`.
//!
//! Env vars: `DATABASE_URL`, `DATABASE_READ_URL`, `DB_POOL_SIZE`, `DB_READ_POOL_SIZE`,
//! `DB_CONNECT_TIMEOUT_MS`, `DB_STATEMENT_TIMEOUT_MS`.

use std::time::Duration;

use clap::Args;

use super::{ConfigError, Secret};
use crate::store::pg_url::check_pg_url;

/// Postgres settings of every long-running role.
#[derive(Args, Clone, Debug)]
pub struct DatabaseArgs {
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
}

/// The validated Postgres settings (see [`DatabaseArgs`]).
#[derive(Clone, Debug)]
pub struct DatabaseConfig {
    /// Postgres primary URL (may carry a password).
    pub url: Secret<String>,
    /// Optional read replica URL.
    pub read_url: Option<Secret<String>>,
    /// Primary pool size.
    pub pool_size: u32,
    /// Replica pool size.
    pub read_pool_size: u32,
    /// Pool checkout and connect deadline: a request needing Postgres fails fast with 503.
    pub connect_timeout: Duration,
    /// statement_timeout set on every pooled connection (None = server default).
    pub statement_timeout: Option<Duration>,
}

impl DatabaseConfig {
    /// Validates the URLs (scheme, libpq TLS parameters, every option tokio-postgres knows).
    pub fn from_args(args: &DatabaseArgs) -> Result<Self, ConfigError> {
        check_pg_url("DATABASE_URL", &args.database_url)?;
        if let Some(url) = &args.database_read_url {
            check_pg_url("DATABASE_READ_URL", url)?;
        }
        Ok(Self {
            url: Secret::new(args.database_url.clone()),
            read_url: args.database_read_url.clone().map(Secret::new),
            pool_size: args.db_pool_size,
            read_pool_size: args.db_read_pool_size,
            connect_timeout: Duration::from_millis(args.db_connect_timeout_ms),
            statement_timeout: (args.db_statement_timeout_ms > 0)
                .then(|| Duration::from_millis(args.db_statement_timeout_ms)),
        })
    }
}
