//! The per-process context every role receives: pools, optional Redis, config, metrics
//! handle and readiness state. Built once by `cli/` (or a test) and cloned cheaply.
//!
//! L2: depends on `store`, `kv`, `resilience`, `clients`, `config`, `telemetry` and
//! `service::health` state.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

use crate::clients::Clients;
use crate::config::Config;
use crate::kv::Kv;
use crate::resilience::{Breakers, RateLimiter};
use crate::service::health::Readiness;
use crate::store::Db;

/// Shared handles of one process. Cloning is cheap (pools and Arcs).
#[derive(Clone)]
pub struct Ctx {
    /// Postgres pools (primary + optional replica).
    pub db: Db,
    /// Redis, when configured; None selects in-process fallbacks.
    pub kv: Option<Kv>,
    /// Validated settings.
    pub config: Arc<Config>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Cached dependency checks and the draining flag behind `/health/ready`.
    pub readiness: Readiness,
    /// Sliding-window rate limits (shared through Redis, local fallback).
    pub limiter: RateLimiter,
    /// Named circuit breakers of outbound calls (shared through Redis, local fallback).
    pub breakers: Breakers,
    /// Outbound HTTP clients (push providers), each behind its breaker.
    pub clients: Clients,
    /// Permits for requests in flight in this process (`MAX_IN_FLIGHT`): load shedding.
    pub in_flight: Arc<Semaphore>,
}

impl Ctx {
    /// Builds the context: pools connect lazily, so this never blocks on the network.
    pub fn new(config: Config) -> Result<Self, redis::RedisError> {
        let db = Db::new(&config);
        let kv = Kv::from_config(&config)?;
        let breakers = Breakers::new(kv.clone(), config.breaker);
        Ok(Self {
            db,
            limiter: RateLimiter::new(kv.clone()),
            clients: Clients::new(&config, &breakers),
            breakers,
            in_flight: Arc::new(Semaphore::new(config.edge.max_in_flight)),
            kv,
            config: Arc::new(config),
            metrics: crate::telemetry::install_metrics(),
            readiness: Readiness::default(),
        })
    }
}
