//! bb8 pool construction for diesel-async: short checkout deadline, bounded lifetimes, a
//! `statement_timeout` on every connection, and an error sink that logs why connecting failed
//! (bb8 itself only reports "timed out").

use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, PoolError};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::PgPool;
use super::connect::{self, Connector};
use crate::config::{Config, Secret};
use crate::resilience::backoff::Reconnect;

/// Logs connection errors once each, with their cause chain; never the URL (it may hold a
/// password).
#[derive(Clone, Copy, Debug)]
struct LogSink {
    pool: &'static str,
}

impl bb8::ErrorSink<PoolError> for LogSink {
    fn sink(&self, err: PoolError) {
        tracing::warn!(pool = self.pool, error = %err, "postgres connection failed");
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<PoolError>> {
        Box::new(*self)
    }
}

/// Builds a lazily-connecting pool; connections use TLS as the URL's `sslmode` says (see
/// [`connect`]).
pub fn build(name: &'static str, url: &str, size: u32, config: &Config) -> PgPool {
    let statement_timeout = config.database.statement_timeout;
    // Parsed (and the roots read) once per pool. A bad URL was refused by config validation
    // at start-up; should one get here anyway, every connection attempt reports why.
    let connector = Connector::new(url).map_err(|e| e.to_string());
    let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
    manager_config.custom_setup =
        Box::new(move |_url: &str| establish(connector.clone(), statement_timeout).boxed());
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, manager_config);
    bb8::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        .connection_timeout(config.database.connect_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .max_lifetime(Some(Duration::from_secs(1800)))
        .error_sink(Box::new(LogSink { pool: name }))
        .build_unchecked(manager)
}

fn establish(
    connector: Result<Connector, String>,
    statement_timeout: Option<Duration>,
) -> BoxFuture<'static, diesel::ConnectionResult<AsyncPgConnection>> {
    async move {
        let mut conn = connector
            .map_err(ConnectionError::BadConnection)?
            .connect()
            .await?;
        if let Some(t) = statement_timeout {
            conn.batch_execute(&format!("SET statement_timeout = {}", t.as_millis()))
                .await
                .map_err(ConnectionError::CouldntSetupConfiguration)?;
        }
        Ok(conn)
    }
    .boxed()
}

/// Waits until Postgres accepts a connection and answers `SELECT 1`, logging one line per
/// failed attempt with the shared reconnect backoff (`resilience::backoff::Reconnect`: 250 ms
/// doubling to 5 s). Returns false when
/// `give_up` resolves first (shutdown during start-up).
pub async fn wait_for_postgres(
    url: &Secret<String>,
    attempt_timeout: Duration,
    give_up: impl Future<Output = ()>,
) -> bool {
    let wait = async {
        let mut backoff = Reconnect::default();
        let mut attempt: u32 = 1;
        loop {
            let outcome = tokio::time::timeout(attempt_timeout, async {
                let mut conn = connect::establish(url.expose())
                    .await
                    .map_err(|e| e.to_string())?;
                diesel::sql_query("SELECT 1")
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
            let error = match outcome {
                Ok(Ok(_)) => {
                    if attempt > 1 {
                        tracing::info!(attempt, "postgres is reachable");
                    }
                    return;
                }
                Ok(Err(e)) => e,
                Err(_) => format!("no answer within {attempt_timeout:?}"),
            };
            let delay = backoff.fail();
            tracing::warn!(attempt, retry_in_ms = delay.as_millis(), error = %error, "waiting for postgres");
            tokio::time::sleep(delay).await;
            attempt = attempt.saturating_add(1);
        }
    };
    tokio::select! {
        () = wait => true,
        () = give_up => false,
    }
}
