//! Protection against overload and failing dependencies, shared by every role:
//! [`rate_limit`] (sliding-window limits shared through Redis, local fallback), [`breaker`]
//! (circuit breakers with state shared through Redis) and [`backoff`] (the 5 s · 5ⁿ retry
//! schedule and the 250 ms → 5 s reconnect schedule of every connection loop).
//!
//! L1: depends on `kv` (optional backend), `config` and `telemetry`; never on roles.
//! Env vars: none directly (the policies arrive through `config`).

pub mod backoff;
pub mod breaker;
pub mod rate_limit;

pub use self::breaker::{Breakers, CircuitBreaker};
pub use self::rate_limit::RateLimiter;
