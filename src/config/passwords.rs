//! Password hashing limits: `PASSWORD_HASH_CONCURRENCY`, `PASSWORD_HASH_TIMEOUT_MS`
//! (issue 17 item 1). Every login, register and imported row runs argon2id with 19 MiB of
//! memory; `app::hasher` runs at most `concurrency` of them at once and refuses a request
//! that waited `queue_timeout` for a slot (503 + `Retry-After`).

use std::time::Duration;

use clap::Args;

/// Validated hashing limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasswordHashConfig {
    /// Hashes computed at once (each holds argon2's 19 MiB while it runs).
    pub concurrency: usize,
    /// How long a request may wait for a free hasher before it is refused with 503.
    pub queue_timeout: Duration,
}

impl Default for PasswordHashConfig {
    fn default() -> Self {
        Self {
            concurrency: default_concurrency(),
            queue_timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
        }
    }
}

/// One hash per core: argon2 is CPU-bound, more at once only adds memory.
fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

const DEFAULT_TIMEOUT_MS: u64 = 5_000;

/// Password hashing arguments (every role: logins, registrations and imports hash).
#[derive(Args, Clone, Debug)]
pub struct PasswordHashArgs {
    /// Password hashes computed at once (argon2id, 19 MiB each); default: one per core.
    #[arg(long, env = "PASSWORD_HASH_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub password_hash_concurrency: Option<u16>,

    /// How long a login or registration waits for a free hasher before it is refused with
    /// 503 and Retry-After, in ms.
    #[arg(long, env = "PASSWORD_HASH_TIMEOUT_MS", default_value_t = DEFAULT_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(10..=120_000))]
    pub password_hash_timeout_ms: u64,
}

impl PasswordHashArgs {
    /// The validated limits (clap has checked the ranges).
    pub fn to_config(&self) -> PasswordHashConfig {
        PasswordHashConfig {
            concurrency: self
                .password_hash_concurrency
                .map_or_else(default_concurrency, usize::from),
            queue_timeout: Duration::from_millis(self.password_hash_timeout_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: PasswordHashArgs,
    }

    #[test]
    fn the_settings_reach_the_config_within_their_ranges() {
        let cli = Cli::try_parse_from([
            "itsur",
            "--password-hash-concurrency",
            "3",
            "--password-hash-timeout-ms",
            "250",
        ])
        .unwrap();
        assert_eq!(
            cli.args.to_config(),
            PasswordHashConfig {
                concurrency: 3,
                queue_timeout: Duration::from_millis(250),
            }
        );
        let defaults = Cli::try_parse_from(["itsur"]).unwrap().args.to_config();
        assert_eq!(defaults, PasswordHashConfig::default());
        assert!(Cli::try_parse_from(["itsur", "--password-hash-concurrency", "0"]).is_err());
        assert!(Cli::try_parse_from(["itsur", "--password-hash-timeout-ms", "5"]).is_err());
    }
}
