//! Postgres access (diesel-async over bb8): the [`Db`] pools, transactions, embedded
//! migrations and, per table, query functions on `&mut AsyncPgConnection`.
//!
//! L1 adapter: depends on `domain` and `config` only. Store functions never open a
//! transaction and never touch a pool; `service` does, through [`Db::tx`].

pub mod audit;
pub mod campuses;
pub mod connect;
pub mod console;
pub mod devices;
pub mod flows;
pub mod idempotency;
pub mod import_uploads;
pub mod jobs;
pub mod listen;
pub mod menu_items;
pub mod migrations;
pub mod orders;
pub mod outbox;
pub mod pg_url;
pub mod pool;
pub mod schema;
pub mod sessions;
pub mod sql_types;
pub mod users;
pub mod vendors;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::bb8::{Pool, PooledConnection};

use crate::config::Config;
use crate::telemetry::{DB_READ_FALLBACK_TOTAL, DB_REPLICA_UP};

/// How long a read waits for a replica connection before it takes the primary's instead.
pub const REPLICA_CHECKOUT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long reads skip a replica that failed before one read tries it again.
pub const REPLICA_RETRY_AFTER: Duration = Duration::from_secs(5);

/// A Postgres connection pool.
pub type PgPool = Pool<AsyncPgConnection>;
/// A connection checked out of a [`PgPool`].
pub type PgConn<'a> = PooledConnection<'a, AsyncPgConnection>;

/// Why a connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Postgres did not hand out a connection within the pool deadline (down, overloaded or
    /// unreachable): callers answer 503 with Retry-After.
    #[error("postgres unavailable: no connection within {0:?}")]
    Unavailable(Duration),
    /// A query failed.
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

/// The process's Postgres pools: the primary for writes and, optionally, a replica for reads.
///
/// A replica is an optimisation, never a dependency: when it cannot hand out a connection
/// (down, unreachable, every connection broken) reads go to the primary, the replica is
/// skipped for [`REPLICA_RETRY_AFTER`], then one read (or the readiness check) tries it
/// again. Its state is the `postgres_replica` component of `/health` (degraded, never
/// down: readiness does not depend on it) and the `db_replica_up` gauge.
#[derive(Clone)]
pub struct Db {
    primary: PgPool,
    read: Option<PgPool>,
    read_pool_size: u32,
    replica: Arc<ReplicaHealth>,
    checkout_timeout: Duration,
}

/// What the process knows about its read replica.
#[derive(Debug, Default)]
struct ReplicaHealth {
    /// Since when the replica is down (`None`: up, or not known to be down).
    down_since: Mutex<Option<Instant>>,
    /// A read is trying a down replica again (one at a time; the others use the primary).
    probing: AtomicBool,
}

impl ReplicaHealth {
    fn down_since(&self) -> Option<Instant> {
        *self
            .down_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether this read may try the replica: always while it is up; once per
    /// [`REPLICA_RETRY_AFTER`] (one read at a time) while it is down.
    fn may_try(&self) -> bool {
        match self.down_since() {
            None => true,
            Some(since) => {
                since.elapsed() >= REPLICA_RETRY_AFTER && !self.probing.swap(true, Ordering::SeqCst)
            }
        }
    }

    fn mark_up(&self) {
        self.probing.store(false, Ordering::SeqCst);
        let was_down = self
            .down_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .is_some();
        if was_down {
            tracing::info!("read replica answers again: reads go to it");
        }
        metrics::gauge!(DB_REPLICA_UP).set(1.0);
    }

    fn mark_down(&self, why: &str) {
        self.probing.store(false, Ordering::SeqCst);
        let mut since = self
            .down_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if since.is_none() {
            tracing::warn!(
                reason = why,
                "read replica unavailable: reads go to the primary"
            );
        }
        // Restart the retry window from this failure.
        *since = Some(Instant::now());
        metrics::gauge!(DB_REPLICA_UP).set(0.0);
    }
}

impl Db {
    /// Builds the pools without connecting (connections open lazily), so a role starts even
    /// when Postgres goes away after [`pool::wait_for_postgres`] saw it.
    pub fn new(config: &Config) -> Self {
        let primary = pool::build(
            "primary",
            config.database.url.expose(),
            config.database.pool_size,
            config,
        );
        let read =
            config.database.read_url.as_ref().map(|url| {
                pool::build("read", url.expose(), config.database.read_pool_size, config)
            });
        if read.is_some() {
            // Up until a checkout says otherwise (its first use or the first readiness check).
            metrics::gauge!(DB_REPLICA_UP).set(1.0);
        }
        Self {
            primary,
            read,
            read_pool_size: config.database.read_pool_size,
            replica: Arc::new(ReplicaHealth::default()),
            checkout_timeout: config.database.connect_timeout,
        }
    }

    /// A primary connection, or [`StoreError::Unavailable`] after the pool deadline.
    pub async fn conn(&self) -> Result<PgConn<'_>, StoreError> {
        self.primary
            .get()
            .await
            .map_err(|_| StoreError::Unavailable(self.checkout_timeout))
    }

    /// A connection for reads that tolerate replica lag: the replica's when one is set and
    /// answering, else the primary's (see [`Db`]).
    pub async fn read_conn(&self) -> Result<PgConn<'_>, StoreError> {
        if let Some(read) = &self.read {
            if self.replica.may_try() {
                match tokio::time::timeout(REPLICA_CHECKOUT_TIMEOUT, read.get()).await {
                    Ok(Ok(conn)) => {
                        self.replica.mark_up();
                        return Ok(conn);
                    }
                    // Every connection checked out is load, not an outage: this read takes
                    // the primary, the replica stays in use.
                    Err(_)
                        if self.replica.down_since().is_none()
                            && read.state().connections >= self.read_pool_size
                            && read.state().idle_connections == 0 => {}
                    Ok(Err(e)) => self.replica.mark_down(&e.to_string()),
                    Err(_) => self
                        .replica
                        .mark_down("no connection within the checkout deadline"),
                }
            }
            metrics::counter!(DB_READ_FALLBACK_TOTAL).increment(1);
        }
        self.conn().await
    }

    /// True when a read replica pool is configured.
    pub fn has_replica(&self) -> bool {
        self.read.is_some()
    }

    /// True while reads skip the replica because it failed.
    pub fn replica_is_down(&self) -> bool {
        self.read.is_some() && self.replica.down_since().is_some()
    }

    /// Records a replica failure seen elsewhere (a readiness check that ran out of time).
    pub fn replica_failed(&self, why: &str) {
        if self.read.is_some() {
            self.replica.mark_down(why);
        }
    }

    /// Checks the replica with `SELECT 1` (readiness), records the outcome for
    /// [`read_conn`](Self::read_conn) and returns it; `None` without a replica.
    pub async fn check_replica(&self) -> Option<Result<(), String>> {
        use diesel_async::RunQueryDsl;
        let read = self.read.as_ref()?;
        let outcome = async {
            let mut conn = read.get().await.map_err(|e| e.to_string())?;
            diesel::sql_query("SELECT 1")
                .execute(&mut conn)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
        .await;
        match &outcome {
            Ok(()) => self.replica.mark_up(),
            Err(e) => self.replica.mark_down(e),
        }
        Some(outcome)
    }

    /// Pool statistics, for the `pool_connections` gauge.
    pub fn pool_states(&self) -> Vec<(&'static str, bb8::State)> {
        let mut out = vec![("primary", self.primary.state())];
        if let Some(read) = &self.read {
            out.push(("read", read.state()));
        }
        out
    }
}
