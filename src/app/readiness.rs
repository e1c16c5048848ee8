//! Readiness: Postgres (and the replica), pending migrations and Redis, checked in parallel
//! with a timeout each, cached for about a second, and answered in well under 100 ms even when
//! a dependency hangs: a caller waits at most [`ANSWER_BUDGET`] for a fresh result and
//! otherwise gets the last one (or "not ready" when that is too old).
//!
//! The read replica is reported (degraded when it fails) but does not make the process
//! unready either: reads fall back to the primary (`store::Db::read_conn`).
//!
//! Redis is reported but does not make the process unready: every Redis use has a fallback
//! (DESIGN.md: losing Redis loses no data), and failing readiness on a shared Redis would pull
//! every instance out of the load balancer at once.
//!
//! Circuit breakers are listed too (`breakers`: name and state) but never change readiness:
//! an open breaker is the process protecting itself from a failing provider, and pulling
//! instances out of the load balancer would not bring the provider back.
//!
//! It lives in `app`, not `service`: every role carries it in `Ctx`, `cli::boot` warms it and
//! each role marks it draining on shutdown.
//!
//! L2: depends on `store`, `resilience` and `app::Ctx`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use super::Ctx;
use crate::resilience::breaker::BreakerStatus;
use crate::store::migrations;

/// How long one dependency check may take before it counts as down.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a report stays fresh.
pub const CACHE_TTL: Duration = Duration::from_secs(1);
/// How long a caller waits for a refresh before answering from the cache.
pub const ANSWER_BUDGET: Duration = Duration::from_millis(60);
/// A cached report older than this is not trusted: the checks are hanging.
pub const STALE_AFTER: Duration = Duration::from_secs(4);

/// State of one dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Answering.
    Up,
    /// Not answering, or answering wrong (e.g. migrations pending).
    Down,
    /// Not answering, but the process works without it (fallbacks).
    Degraded,
    /// Not configured.
    Disabled,
}

/// One dependency's check result.
#[derive(Clone, Debug, Serialize)]
pub struct Component {
    /// `postgres`, `postgres_replica`, `migrations`, `redis`.
    pub name: &'static str,
    /// Outcome.
    pub status: Status,
    /// Time the check took, in milliseconds.
    pub latency_ms: u64,
    /// Why it is not up (never contains a secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A whole readiness report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// True when the process should receive traffic.
    pub ready: bool,
    /// True once shutdown has started.
    pub draining: bool,
    /// Age of the underlying checks, in milliseconds.
    pub age_ms: u64,
    /// Per-dependency detail.
    pub components: Vec<Component>,
    /// Circuit breakers of outbound calls (informational: never affects `ready`).
    pub breakers: Vec<BreakerStatus>,
}

#[derive(Clone)]
struct Snapshot {
    at: Instant,
    components: Arc<Vec<Component>>,
    breakers: Arc<Vec<BreakerStatus>>,
}

/// Cached readiness of one process; cheap to clone (shared state).
#[derive(Clone)]
pub struct Readiness {
    tx: Arc<watch::Sender<Option<Snapshot>>>,
    refreshing: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            tx: Arc::new(watch::channel(None).0),
            refreshing: Arc::new(AtomicBool::new(false)),
            draining: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Readiness {
    /// Marks the process as stopping: readiness answers false from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        metrics::gauge!(crate::telemetry::READY).set(0.0);
    }

    /// True once [`set_draining`](Self::set_draining) was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The current report: cached when fresh, otherwise refreshed in the background while the
    /// caller waits at most [`ANSWER_BUDGET`].
    pub async fn report(&self, ctx: &Ctx) -> Report {
        let mut rx = self.tx.subscribe();
        let fresh = rx
            .borrow_and_update()
            .as_ref()
            .is_some_and(|s| s.at.elapsed() < CACHE_TTL);
        if !fresh {
            self.start_refresh(ctx);
            // Either the refresh lands within the budget or we answer from what we have.
            let _ = tokio::time::timeout(ANSWER_BUDGET, rx.changed()).await;
        }
        let snapshot = rx.borrow().clone();
        self.build_report(snapshot)
    }

    /// Runs the checks now and caches the result (role start-up, so the first probe is warm).
    pub async fn refresh_now(&self, ctx: &Ctx) {
        let breakers = async {
            tokio::time::timeout(CHECK_TIMEOUT, ctx.breakers.statuses())
                .await
                .unwrap_or_default()
        };
        let (components, breakers) = tokio::join!(run_checks(ctx), breakers);
        self.tx.send_replace(Some(Snapshot {
            at: Instant::now(),
            components: Arc::new(components),
            breakers: Arc::new(breakers),
        }));
    }

    fn start_refresh(&self, ctx: &Ctx) {
        if self.refreshing.swap(true, Ordering::SeqCst) {
            return; // one refresh at a time; others wait on the watch channel
        }
        let this = self.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            this.refresh_now(&ctx).await;
            this.refreshing.store(false, Ordering::SeqCst);
        });
    }

    fn build_report(&self, snapshot: Option<Snapshot>) -> Report {
        let draining = self.is_draining();
        let Some(snapshot) = snapshot else {
            return Report {
                ready: false,
                draining,
                age_ms: 0,
                components: vec![Component {
                    name: "checks",
                    status: Status::Down,
                    latency_ms: 0,
                    detail: Some("first checks still running".to_owned()),
                }],
                breakers: Vec::new(),
            };
        };
        let age = snapshot.at.elapsed();
        let mut components = snapshot.components.as_ref().clone();
        let stale = age > STALE_AFTER;
        if stale {
            components.push(Component {
                name: "checks",
                status: Status::Down,
                latency_ms: millis(age),
                detail: Some("dependency checks are not completing".to_owned()),
            });
        }
        let ready = !draining && !stale && components.iter().all(|c| c.status != Status::Down);
        metrics::gauge!(crate::telemetry::READY).set(if ready { 1.0 } else { 0.0 });
        Report {
            ready,
            draining,
            age_ms: millis(age),
            components,
            breakers: snapshot.breakers.as_ref().clone(),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn timed<F, T>(name: &'static str, down: Status, fut: F) -> (Component, Option<T>)
where
    F: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    let (status, detail, value) = match tokio::time::timeout(CHECK_TIMEOUT, fut).await {
        Ok(Ok(v)) => (Status::Up, None, Some(v)),
        Ok(Err(e)) => (down, Some(e), None),
        Err(_) => (
            down,
            Some(format!("no answer within {CHECK_TIMEOUT:?}")),
            None,
        ),
    };
    let component = Component {
        name,
        status,
        latency_ms: millis(started.elapsed()),
        detail,
    };
    (component, value)
}

fn component(name: &'static str, status: Status, detail: Option<String>) -> Component {
    Component {
        name,
        status,
        latency_ms: 0,
        detail,
    }
}

async fn run_checks(ctx: &Ctx) -> Vec<Component> {
    // The migration count rides on the Postgres check: same connection, one query.
    let postgres = timed("postgres", Status::Down, async {
        let mut conn = ctx.db.conn().await.map_err(|e| e.to_string())?;
        migrations::pending_count(&mut conn)
            .await
            .map_err(|e| format!("query failed: {e}"))
    });
    // The replica is degraded, never down: reads fall back to the primary (store::Db), so a
    // replica outage must not pull every instance out of the load balancer.
    let replica = async {
        if !ctx.db.has_replica() {
            return None;
        }
        let (mut c, _) = timed("postgres_replica", Status::Degraded, async {
            ctx.db.check_replica().await.unwrap_or(Ok(()))
        })
        .await;
        if c.status == Status::Degraded {
            let why = c.detail.take().unwrap_or_default();
            ctx.db.replica_failed(&why); // also when the check ran out of time
            c.detail = Some(format!("{why}; reads go to the primary"));
        }
        Some(c)
    };
    let redis = async {
        match &ctx.kv {
            None => component(
                "redis",
                Status::Disabled,
                Some("REDIS_URL unset: in-process fallbacks".to_owned()),
            ),
            Some(kv) => {
                timed("redis", Status::Degraded, async {
                    kv.ping().await.map_err(|e| e.to_string())
                })
                .await
                .0
            }
        }
    };
    let ((pg, pending), replica, redis) = tokio::join!(postgres, replica, redis);
    let migrations = match pending {
        Some(0) => component("migrations", Status::Up, None),
        Some(n) => component(
            "migrations",
            Status::Down,
            Some(format!("{n} pending: run `itsur migrate`")),
        ),
        None => component(
            "migrations",
            Status::Down,
            Some("unknown: postgres unreachable".to_owned()),
        ),
    };
    let mut out = vec![pg, migrations];
    out.extend(replica);
    out.push(redis);
    out
}
