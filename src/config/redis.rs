//! Redis: caches, rate limits, pub/sub fan-out and breaker state; unset = in-process
//! fallbacks (one instance only).
//!
//! Env vars: `REDIS_URL`, `REDIS_CA_FILE`, `REDIS_PREFIX`, `REDIS_POOL_SIZE`.

use std::path::PathBuf;

use clap::Args;

use super::{ConfigError, Secret, read_pem_certs};

/// Redis settings of every long-running role.
#[derive(Args, Clone, Debug)]
pub struct RedisArgs {
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
}

/// The validated Redis settings (see [`RedisArgs`]).
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// Optional Redis URL; None selects the in-process fallbacks.
    pub url: Option<Secret<String>>,
    /// PEM roots for a rediss:// server (None = the system trust store).
    pub ca_file: Option<PathBuf>,
    /// Prefix for every Redis key and channel.
    pub prefix: String,
    /// Redis pool size.
    pub pool_size: u32,
}

impl RedisConfig {
    /// Checks the scheme, that a CA file goes with TLS and is readable, and the prefix.
    pub fn from_args(args: &RedisArgs) -> Result<Self, ConfigError> {
        if let Some(url) = &args.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(ConfigError::new(
                "REDIS_URL",
                "must start with redis:// or rediss:// (TLS)",
            ));
        }
        if let Some(path) = &args.redis_ca_file {
            // Said at start-up rather than as a connection error on the first request.
            if !args
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
        if args.redis_prefix.is_empty() || args.redis_prefix.contains(char::is_whitespace) {
            return Err(ConfigError::new(
                "REDIS_PREFIX",
                "must be non-empty and contain no whitespace",
            ));
        }
        Ok(Self {
            url: args.redis_url.clone().map(Secret::new),
            ca_file: args.redis_ca_file.clone(),
            prefix: args.redis_prefix.clone(),
            pool_size: args.redis_pool_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Redis {
        #[command(flatten)]
        redis: RedisArgs,
    }

    fn common(args: &[&str]) -> Result<RedisConfig, ConfigError> {
        use clap::Parser as _;
        let mut argv = vec!["itsur"];
        argv.extend_from_slice(args);
        RedisConfig::from_args(&Redis::try_parse_from(argv).unwrap().redis)
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
}
