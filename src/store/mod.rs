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
pub mod jobs;
pub mod listen;
pub mod menu_items;
pub mod migrations;
pub mod orders;
pub mod outbox;
pub mod pool;
pub mod schema;
pub mod sessions;
pub mod users;
pub mod vendors;

use std::time::Duration;

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::bb8::{Pool, PooledConnection};

use crate::config::Config;

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
#[derive(Clone)]
pub struct Db {
    primary: PgPool,
    read: Option<PgPool>,
    checkout_timeout: Duration,
}

impl Db {
    /// Builds the pools without connecting (connections open lazily), so a role starts even
    /// when Postgres goes away after [`pool::wait_for_postgres`] saw it.
    pub fn new(config: &Config) -> Self {
        let primary = pool::build(
            "primary",
            config.database_url.expose(),
            config.db_pool_size,
            config,
        );
        let read = config
            .database_read_url
            .as_ref()
            .map(|url| pool::build("read", url.expose(), config.db_read_pool_size, config));
        Self {
            primary,
            read,
            checkout_timeout: config.db_connect_timeout,
        }
    }

    /// A primary connection, or [`StoreError::Unavailable`] after the pool deadline.
    pub async fn conn(&self) -> Result<PgConn<'_>, StoreError> {
        self.primary
            .get()
            .await
            .map_err(|_| StoreError::Unavailable(self.checkout_timeout))
    }

    /// A connection for reads that tolerate replica lag; the primary when no replica is set.
    pub async fn read_conn(&self) -> Result<PgConn<'_>, StoreError> {
        self.read
            .as_ref()
            .unwrap_or(&self.primary)
            .get()
            .await
            .map_err(|_| StoreError::Unavailable(self.checkout_timeout))
    }

    /// True when a read replica pool is configured.
    pub fn has_replica(&self) -> bool {
        self.read.is_some()
    }

    /// A replica connection, if a replica is configured (health checks).
    pub async fn replica_conn(&self) -> Option<Result<PgConn<'_>, StoreError>> {
        let read = self.read.as_ref()?;
        Some(
            read.get()
                .await
                .map_err(|_| StoreError::Unavailable(self.checkout_timeout)),
        )
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
