//! Redis (bb8-redis): caches, rate-limit counters, pub/sub and breaker state — all of it
//! rebuildable from Postgres or harmless to lose. Every use has a fallback or reports
//! unavailability; nothing here is the source of truth.
//!
//! L1 adapter: depends on `config` (and `domain` for event types). Keys are spelled only in
//! [`keys`]; every key and channel carries the deployment prefix (`REDIS_PREFIX`), which is
//! also how tests isolate themselves on a shared Redis.

pub mod hub;
pub mod keys;
pub mod pubsub;

use std::time::Duration;

use bb8_redis::RedisConnectionManager;

use crate::config::Config;

/// A Redis connection pool.
pub type RedisPool = bb8::Pool<RedisConnectionManager>;

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

/// Redis pool plus the key prefix of this deployment.
#[derive(Clone)]
pub struct Kv {
    pool: RedisPool,
    url: String,
    /// Key builder carrying the deployment prefix.
    pub keys: keys::Keys,
}

impl Kv {
    /// Builds a lazily-connecting pool; fails only on an unparseable URL.
    pub fn new(url: &str, prefix: &str, pool_size: u32) -> Result<Self, redis::RedisError> {
        let manager = RedisConnectionManager::new(url)?;
        let pool = bb8::Pool::builder()
            .max_size(pool_size)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_millis(500))
            .error_sink(Box::new(LogSink))
            .build_unchecked(manager);
        Ok(Self {
            pool,
            url: url.to_owned(),
            keys: keys::Keys::new(prefix),
        })
    }

    /// Builds the pool from the process config; None when `REDIS_URL` is unset.
    pub fn from_config(config: &Config) -> Result<Option<Self>, redis::RedisError> {
        config
            .redis_url
            .as_ref()
            .map(|url| Self::new(url.expose(), &config.redis_prefix, config.redis_pool_size))
            .transpose()
    }

    /// A pooled connection.
    pub async fn conn(
        &self,
    ) -> Result<bb8::PooledConnection<'_, RedisConnectionManager>, KvUnavailable> {
        self.pool
            .get()
            .await
            .map_err(|e| KvUnavailable(e.to_string()))
    }

    /// Round-trips a PING.
    pub async fn ping(&self) -> Result<(), KvUnavailable> {
        let mut conn = self.conn().await?;
        let _: String = redis::cmd("PING")
            .query_async(&mut *conn)
            .await
            .map_err(|e| KvUnavailable(e.to_string()))?;
        Ok(())
    }

    /// A plain client on the same URL, for connections that must not be pooled (SUBSCRIBE).
    pub fn client(&self) -> Result<redis::Client, redis::RedisError> {
        redis::Client::open(self.url.as_str())
    }

    /// Pool statistics, for the `pool_connections` gauge.
    pub fn pool_state(&self) -> bb8::State {
        self.pool.state()
    }
}
