//! The per-process context every role receives: pools, optional Redis, config, metrics
//! handle, readiness state, the realtime event hub and the relay wake-up. Built once by
//! `cli/` (or a test) and cloned cheaply.
//!
//! The process-wide state every role starts the same way lives here too, not in `service`:
//! readiness ([`readiness`]), the relay wake-up ([`relay_waker`]) and the bounded password
//! hasher ([`hasher`]).
//!
//! L2: depends on `store`, `kv`, `resilience`, `clients`, `config`, `telemetry`; never on
//! `service` (which depends on `app`; `make check-layers` forbids the circle).

pub mod flow_definitions;
pub mod hasher;
pub mod readiness;
pub mod relay_waker;

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

use crate::clients::Clients;
use crate::config::Config;
use crate::kv::Kv;
use crate::realtime::hub::{Hub, HubLimits};
use crate::resilience::{Breakers, RateLimiter};
use crate::store::Db;
use flow_definitions::DefinitionCache;
use hasher::{HasherSettings, PasswordHasher};
use readiness::Readiness;
use relay_waker::RelayWaker;

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
    /// This process's realtime subscribers (WebSocket connections) and their fan-out; fed
    /// by the gateway's Redis subscriber, or by the relay directly when there is no Redis.
    pub hub: Hub,
    /// Wakes the relays after a transaction that wrote outbox events has committed.
    pub relay_waker: RelayWaker,
    /// Bounded argon2: logins, registrations and imports queue for one of a few hashers.
    pub hasher: PasswordHasher,
    /// What the job engine calls in the transaction of flow-step jobs' terminal transitions
    /// (the flow engine; `service::job_hooks`).
    pub job_hooks: JobHooks,
    /// Parsed flow definitions by (flow, version), bounded; shared with the flow hook.
    pub flow_definitions: DefinitionCache,
}

impl Ctx {
    /// Builds the context: pools connect lazily, so this never blocks on the network.
    pub fn new(config: Config) -> Result<Self, redis::RedisError> {
        let db = Db::new(&config);
        let kv = Kv::from_config(&config)?;
        let breakers = Breakers::new(kv.clone(), config.breaker);
        let hub = Hub::new(HubLimits {
            per_ip: config.ws.max_per_ip,
            per_user: config.ws.max_per_user,
            queue: config.ws.send_queue,
        });
        let relay_waker = RelayWaker::default();
        // Flows advance in the transaction that ends their steps' jobs (issue 13).
        let flow_definitions = DefinitionCache::default();
        let job_hooks = JobHooks {
            relay_waker: relay_waker.clone(),
            flow_definitions: flow_definitions.clone(),
        };
        let hasher = PasswordHasher::new(HasherSettings {
            concurrency: config.password_hash.concurrency,
            queue_timeout: config.password_hash.queue_timeout,
        });
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
            hub,
            relay_waker,
            hasher,
            job_hooks,
            flow_definitions,
        })
    }
}

/// The job engine's hook into the transaction of flow-step jobs' terminal transitions. Its
/// `call` is implemented in `service::job_hooks` (it hands the jobs to the flow engine):
/// `service` may depend on `app`, `app` never on `service`, so the handle is declared here
/// and carried by [`Ctx`], and the behaviour lives with the use cases.
#[derive(Clone)]
pub struct JobHooks {
    /// Woken when the flow engine wrote events.
    pub(crate) relay_waker: RelayWaker,
    /// The flow definitions the engine reads (the same cache as `Ctx::flow_definitions`).
    pub(crate) flow_definitions: DefinitionCache,
}
