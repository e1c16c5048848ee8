//! Logging: environment-dependent format and the tracing filter.
//!
//! Env vars: `LOG_FORMAT`, `RUST_LOG` (and `ITSUR_ENV`, which picks the default format).

use clap::{Args, ValueEnum};

use super::Environment;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log shippers).
    Json,
    /// Human-readable, coloured when stderr is a terminal.
    Pretty,
}

/// Logging settings of every long-running role.
#[derive(Args, Clone, Debug)]
pub struct TelemetryArgs {
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
}

impl TelemetryArgs {
    /// The effective log format: explicit, else pretty in dev and json in prod.
    pub fn effective_log_format(&self, environment: Environment) -> LogFormat {
        effective_log_format(self.log_format, environment)
    }
}

/// An explicit format, else pretty in dev and json in prod.
pub fn effective_log_format(explicit: Option<LogFormat>, environment: Environment) -> LogFormat {
    explicit.unwrap_or(match environment {
        Environment::Dev => LogFormat::Pretty,
        Environment::Prod => LogFormat::Json,
    })
}
