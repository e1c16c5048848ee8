//! Edge protection of the HTTP API (`serve`, `all`): rate limits, trusted proxies, request
//! deadline, load shedding, body limits, HSTS and CORS.
//!
//! Env vars: `RATE_LIMIT_IP`, `RATE_LIMIT_USER`, `RATE_LIMIT_AUTH`, `RATE_LIMIT_LOGIN`,
//! `RATE_LIMIT_ORDERS`, `TRUSTED_PROXIES`, `REQUEST_TIMEOUT_MS`, `MAX_IN_FLIGHT`,
//! `JSON_BODY_LIMIT_BYTES`, `AUTH_BODY_LIMIT_BYTES`, `HSTS_MAX_AGE_SECS`, `CORS_ORIGINS`,
//! `CORS_ALLOW_CREDENTIALS`, `CORS_MAX_AGE_SECS`.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

use super::ConfigError;

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

/// Production-like edge arguments for tests of this and other concerns.
#[cfg(test)]
pub(super) fn edge() -> EdgeArgs {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
