//! Redis (bb8 with bb8-redis's manager): caches, rate-limit counters, pub/sub and breaker state — all of it
//! rebuildable from Postgres or harmless to lose. Every use has a fallback or reports
//! unavailability; nothing here is the source of truth.
//!
//! L1 adapter: depends on `config` (and `domain` for event types). Keys are spelled only in
//! [`keys`]; every key and channel carries the deployment prefix (`REDIS_PREFIX`), which is
//! also how tests isolate themselves on a shared Redis.
//!
//! TLS: a `rediss://` URL connects with rustls (ring), verifying the certificate and host
//! name against `REDIS_CA_FILE` (PEM) or, when unset, the system trust store. Pool and
//! SUBSCRIBE connections share the connection settings of one [`redis::Client`] built by
//! [`open_client`]: the pool's `bb8_redis::RedisConnectionManager` is made from that
//! client's `ConnectionInfo`, which carries the TLS roots, so `rediss://` with a private CA
//! works for pooled connections too.
//!
//! Fail fast: when Redis stops answering, [`Kv::conn`] refuses at once for [`DOWN_SKIP`]
//! instead of letting every request wait out the pool's connection timeout (500 ms); then
//! the next caller tries again, so recovery needs no restart. [`Kv::ping`] (health checks)
//! always tries for real.

pub mod keys;
pub mod pubsub;
pub mod sockets;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::Config;

/// A Redis connection pool (bb8-redis: multiplexed connections, checked with PING).
pub type RedisPool = bb8::Pool<bb8_redis::RedisConnectionManager>;
/// A connection checked out of a [`RedisPool`] (derefs to a multiplexed connection).
pub type RedisConn<'a> = bb8::PooledConnection<'a, bb8_redis::RedisConnectionManager>;

/// Redis is not answering (down, unreachable or too slow).
#[derive(Debug, thiserror::Error)]
#[error("redis unavailable: {0}")]
pub struct KvUnavailable(pub String);

/// Logs Redis connection failures (bb8 reports only "timed out" to callers).
#[derive(Clone, Copy, Debug)]
struct LogSink;

impl bb8::ErrorSink<redis::RedisError> for LogSink {
    fn sink(&self, err: redis::RedisError) {
        tracing::warn!(error = %err, "redis connection failed");
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<redis::RedisError>> {
        Box::new(*self)
    }
}

/// How long [`Kv::conn`] refuses without trying after Redis failed to hand out a connection.
pub const DOWN_SKIP: Duration = Duration::from_secs(1);

/// The one constructor of Redis clients: `redis://` is plain TCP; `rediss://` is TLS with the
/// certificate checked against `ca_file` (PEM roots) or, without it, the system trust store.
pub fn open_client(url: &str, ca_file: Option<&Path>) -> Result<redis::Client, redis::RedisError> {
    let Some(path) = ca_file else {
        return redis::Client::open(url);
    };
    let pem = std::fs::read(path).map_err(|e| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "cannot read REDIS_CA_FILE",
            format!("{}: {e}", path.display()),
        ))
    })?;
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        },
    )
}

/// Redis pool plus the key prefix of this deployment.
#[derive(Clone)]
pub struct Kv {
    pool: RedisPool,
    /// The client the pool connects with, also used for dedicated (SUBSCRIBE) connections.
    client: redis::Client,
    /// Key builder carrying the deployment prefix.
    pub keys: keys::Keys,
    /// "Redis down, skip until": milliseconds since `epoch`, 0 = up. Shared by clones.
    down_until_ms: Arc<AtomicU64>,
    epoch: Instant,
    /// Whether this process's events subscription (the gateway's) is live; shared by clones.
    events_feed_up: Arc<AtomicBool>,
    /// This process's id in shared per-instance records ([`sockets`]); shared by clones.
    instance: Arc<str>,
}

impl Kv {
    /// Builds a lazily-connecting pool; fails only on an unparseable URL or an unreadable
    /// `ca_file` (see [`open_client`]).
    pub fn new(
        url: &str,
        ca_file: Option<&Path>,
        prefix: &str,
        pool_size: u32,
    ) -> Result<Self, redis::RedisError> {
        let client = open_client(url, ca_file)?;
        // The manager opens its own client from this ConnectionInfo: the same address,
        // credentials and TLS parameters (REDIS_CA_FILE's roots included) as `client`.
        let manager = bb8_redis::RedisConnectionManager::new(client.get_connection_info().clone())?;
        let pool = bb8::Pool::builder()
            .max_size(pool_size)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_millis(500))
            .error_sink(Box::new(LogSink))
            .build_unchecked(manager);
        Ok(Self {
            pool,
            client,
            keys: keys::Keys::new(prefix),
            down_until_ms: Arc::new(AtomicU64::new(0)),
            events_feed_up: Arc::new(AtomicBool::new(false)),
            epoch: Instant::now(),
            instance: Arc::from(uuid::Uuid::now_v7().to_string()),
        })
    }

    /// This process's id in shared per-instance records (a UUIDv7 made at start-up).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// True while a recent failure tells callers to skip Redis.
    pub fn is_marked_down(&self) -> bool {
        self.now_ms() < self.down_until_ms.load(Ordering::Relaxed)
    }

    /// Records that Redis failed (no connection, or a command died on the wire): callers skip
    /// it for [`DOWN_SKIP`]. Command-level errors (wrong type, script error) are not outages
    /// and should not be reported here.
    pub fn mark_down(&self) {
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(DOWN_SKIP.as_millis()).unwrap_or(u64::MAX));
        self.down_until_ms.store(until, Ordering::Relaxed);
    }

    fn mark_up(&self) {
        self.down_until_ms.store(0, Ordering::Relaxed);
    }

    /// Builds the pool from the process config; None when `REDIS_URL` is unset.
    pub fn from_config(config: &Config) -> Result<Option<Self>, redis::RedisError> {
        config
            .redis
            .url
            .as_ref()
            .map(|url| {
                Self::new(
                    url.expose(),
                    config.redis.ca_file.as_deref(),
                    &config.redis.prefix,
                    config.redis.pool_size,
                )
            })
            .transpose()
    }

    /// A pooled connection; refuses at once while Redis is marked down (see [`DOWN_SKIP`]).
    pub async fn conn(&self) -> Result<RedisConn<'_>, KvUnavailable> {
        if self.is_marked_down() {
            return Err(KvUnavailable("recently unreachable; skipping".to_owned()));
        }
        self.pool.get().await.map_err(|e| {
            self.mark_down();
            KvUnavailable(e.to_string())
        })
    }

    /// Round-trips a PING, ignoring the down mark (health checks want the truth); success
    /// clears the mark, so callers use Redis again as soon as it is back.
    pub async fn ping(&self) -> Result<(), KvUnavailable> {
        let mut conn = self.pool.get().await.map_err(|e| {
            self.mark_down();
            KvUnavailable(e.to_string())
        })?;
        let _: String = redis::cmd("PING")
            .query_async(&mut *conn)
            .await
            .map_err(|e| {
                self.mark_down();
                KvUnavailable(e.to_string())
            })?;
        self.mark_up();
        Ok(())
    }

    /// True while the gateway's events subscription is live: subscribed, and its last PING
    /// answered within the deadline (`http::ws::gateway`).
    pub fn events_feed_up(&self) -> bool {
        self.events_feed_up.load(Ordering::SeqCst)
    }

    /// Records the state of the events subscription (the gateway's, and the `ws_feed_up`
    /// gauge's).
    pub fn set_events_feed_up(&self, up: bool) {
        self.events_feed_up.store(up, Ordering::SeqCst);
    }

    /// The pool's client (same URL and TLS settings), for connections that must not be
    /// pooled (SUBSCRIBE).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Pool statistics, for the `pool_connections` gauge.
    pub fn pool_state(&self) -> bb8::State {
        self.pool.state()
    }
}
