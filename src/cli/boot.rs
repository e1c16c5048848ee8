//! Start-up shared by the long-running roles: logging, runtime, waiting for Postgres with
//! backoff, the context, the metrics upkeep task, the first readiness check and the relay
//! waker.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use crate::app::Ctx;
use crate::app::relay_waker::RelayWaker;
use crate::config::{CommonArgs, Config};
use crate::shutdown::Shutdown;
use crate::store::pool::wait_for_postgres;

/// Builds the multi-threaded runtime every long-running role uses.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("itsur")
        .build()
}

/// Installs logging for a role from its common arguments.
pub fn init_logging(common: &CommonArgs) {
    crate::telemetry::init_tracing(common.effective_log_format(), &common.telemetry.log_filter);
}

/// Runs a role's async body on a fresh runtime; errors are logged once and exit 1.
pub fn block_on<F>(role: &'static str, body: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("itsur: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = rt.block_on(body);
    // Blocking tasks (a migration thread, a report) get a bounded grace, not forever.
    rt.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(()) => {
            tracing::info!(role, "stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(role, error = format!("{e:#}"), "fatal");
            eprintln!("itsur {role}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Waits for Postgres and builds the context; `Ok(None)` when shutdown came first.
pub async fn context(config: Config, shutdown: &Shutdown) -> anyhow::Result<Option<Ctx>> {
    if config.redis.url.is_none() {
        tracing::info!("REDIS_URL unset: using in-process fallbacks (single-instance only)");
    }
    if !wait_for_postgres(
        &config.database.url,
        config.database.connect_timeout,
        shutdown.cancelled(),
    )
    .await
    {
        return Ok(None);
    }
    let ctx = Ctx::new(config).context("REDIS_URL")?;
    let upkeep = ctx.metrics.clone();
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        // The exporter accumulates histogram samples until upkeep drains them.
        while stop.sleep(Duration::from_secs(5)).await {
            upkeep.run_upkeep();
        }
    });
    ctx.readiness.refresh_now(&ctx).await;
    let report = ctx.readiness.report(&ctx).await;
    if let Some(m) = report
        .components
        .iter()
        .find(|c| c.name == "migrations" && c.detail.is_some())
    {
        tracing::warn!(
            detail = m.detail.as_deref().unwrap_or(""),
            "schema not current: not ready until `itsur migrate` runs"
        );
    }
    Ok(Some(ctx))
}

/// Starts the task that wakes the outbox relays after commits (`app::relay_waker`): every
/// role that writes events (`serve`, `worker`, `all`) runs exactly one.
pub fn start_relay_waker(ctx: &Ctx, shutdown: &Shutdown) {
    shutdown.spawn(RelayWaker::run(ctx.clone(), shutdown.clone()));
}

/// Binds a TCP listener, naming the setting on failure.
pub fn bind(addr: std::net::SocketAddr, var: &str) -> anyhow::Result<std::net::TcpListener> {
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("{var}: cannot bind {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}
