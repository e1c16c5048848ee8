//! Test support: real Postgres and Redis per test (never mocks), the production app factory,
//! real listeners on port 0, and a chaos proxy for outage tests.

pub mod brokers;
pub mod chaos;
pub mod db;
pub mod fake_push;
pub mod fixtures;
pub mod redis;
pub mod smtp;
pub mod tls;
pub mod ws;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use itsur::app::Ctx;
use itsur::config::{
    BreakerConfig, Config, DatabaseConfig, EdgeConfig, Environment, OutboxSettings, PushConfig,
    RateLimits, RedisConfig, Secret, WsSettings,
};
use itsur::shutdown::Shutdown;

pub use self::db::TestDb;
pub use self::redis::TestRedis;

/// A config for tests and tools: the given URLs, small pools, dev environment.
pub fn config_for_urls(database_url: &str, redis_url: Option<&str>, redis_prefix: &str) -> Config {
    Config {
        environment: Environment::Dev,
        database: DatabaseConfig {
            url: Secret::new(database_url.to_owned()),
            read_url: None,
            pool_size: 8,
            read_pool_size: 4,
            connect_timeout: Duration::from_secs(2),
            statement_timeout: Some(Duration::from_secs(15)),
        },
        redis: RedisConfig {
            url: redis_url.map(|u| Secret::new(u.to_owned())),
            ca_file: None,
            prefix: redis_prefix.to_owned(),
            pool_size: 4,
        },
        shutdown_timeout: Duration::from_secs(10),
        max_sessions_per_user: 10,
        job_retention: chrono::Duration::hours(168),
        outbox_retention: chrono::Duration::hours(24),
        jwt_secret: Some(Secret::new(
            "test-secret-that-is-long-enough-0123456789".to_owned(),
        )),
        // Tests that exercise the limiter set the buckets they need; the others would
        // trip the production defaults (they send hundreds of requests from one peer).
        edge: EdgeConfig {
            rate_limits: RateLimits::off(),
            ..EdgeConfig::default()
        },
        push: PushConfig::default(),
        smtp: itsur::config::SmtpConfig::default(),
        password_hash: itsur::config::PasswordHashConfig::default(),
        breaker: BreakerConfig::default(),
        ws: WsSettings::default(),
        // Tests drive the relay explicitly or wake it; a short poll keeps e2e-style tests
        // that rely on the fallback quick.
        outbox: OutboxSettings {
            poll_interval: Duration::from_millis(100),
            ..OutboxSettings::default()
        },
    }
}

/// The config of a test's database and Redis prefix, for tests that change a setting
/// (pool size, session limit) before building the context.
pub fn config_for(db_url: &str, redis: Option<&TestRedis>) -> Config {
    config_for_urls(
        db_url,
        redis.map(|r| r.url.as_str()),
        redis.map_or("itsur_t_none", |r| r.prefix.as_str()),
    )
}

/// A context on this test's database and Redis prefix.
pub fn ctx_for(db_url: &str, redis: Option<&TestRedis>) -> Ctx {
    Ctx::new(config_for(db_url, redis)).unwrap()
}

/// Everything a test needs: its database, its Redis prefix and a context on both.
pub struct TestApp {
    /// The context handed to the app factory and services.
    pub ctx: Ctx,
    /// This test's database, dropped with the app.
    pub _db: TestDb,
    /// This test's Redis prefix, cleaned with the app.
    pub _redis: TestRedis,
}

impl TestApp {
    /// A migrated database, a Redis prefix and a warm readiness cache.
    pub async fn new() -> Self {
        let db = TestDb::new().await;
        let redis = TestRedis::new();
        let ctx = ctx_for(&db.url, Some(&redis));
        ctx.readiness.refresh_now(&ctx).await;
        Self {
            ctx,
            _db: db,
            _redis: redis,
        }
    }
}

/// A real API server on 127.0.0.1:0 running the production `http::server::run`.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Triggers its graceful stop.
    pub shutdown: Shutdown,
    /// Resolves when it has stopped.
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    /// Starts serving `ctx`.
    pub fn start(ctx: Ctx) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        // As `itsur serve` does (`cli::boot::start_relay_waker`).
        shutdown.spawn(itsur::app::relay_waker::RelayWaker::run(
            ctx.clone(),
            shutdown.clone(),
        ));
        let task = tokio::spawn(itsur::http::server::run(listener, ctx, 1, shutdown.clone()));
        Self {
            addr,
            shutdown,
            task,
        }
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Polls `check` until it returns true or `deadline` passes (no fixed sleeps in tests).
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A reqwest client that never waits longer than `timeout`.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .unwrap()
}
