//! The HTTP API listener and its signing key (`serve`, `all`); edge protection is in
//! [`super::edge`].
//!
//! Env vars: `BIND_ADDR`, `HTTP_WORKERS`, `JWT_SECRET`.

use std::net::SocketAddr;

use clap::Args;

use super::edge::EdgeArgs;
use super::{ConfigError, Environment, MIN_SECRET_BYTES, Secret};

/// Default listen address of `serve` (and of `all`).
pub const DEFAULT_BIND: &str = "0.0.0.0:8080";
/// Minimum length of `JWT_SECRET` outside development: HS256 wants at least 256 bits of key.
pub const MIN_JWT_SECRET_BYTES: usize = MIN_SECRET_BYTES;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::edge::edge;

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
}
