//! Runs the API on a bound listener until shutdown, then drains: readiness turns false at
//! once (so nginx and probes stop sending), WebSockets are closed with 1012 (reconnect and
//! resume elsewhere), in-flight requests finish within the drain budget, and only then does
//! the server stop. Also starts the instance's Redis events subscription and relay waker.

use std::net::TcpListener;

use crate::app::Ctx;
use crate::service::events::RelayWaker;
use crate::shutdown::Shutdown;

/// Serves [`super::app`] on `listener`; returns after a graceful stop.
pub async fn run(
    listener: TcpListener,
    ctx: Ctx,
    workers: usize,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let drain = ctx.config.shutdown_timeout;
    let server = build(listener, ctx.clone(), workers)?;
    let handle = server.handle();
    // The realtime side of this instance: its one Redis events subscription, and the task
    // that wakes the relays after orders commit.
    shutdown.spawn(super::ws::gateway::run_subscriber(
        ctx.clone(),
        shutdown.clone(),
    ));
    shutdown.spawn(RelayWaker::run(ctx.clone(), shutdown.clone()));
    tokio::spawn(async move {
        shutdown.cancelled().await;
        ctx.readiness.set_draining();
        // WebSockets never finish on their own: tell them to reconnect elsewhere (1012) so
        // the drain below is not spent waiting for them.
        ctx.hub.close();
        tracing::info!(drain_secs = drain.as_secs(), "draining in-flight requests");
        // Graceful: stop accepting, let in-flight requests finish up to the drain budget.
        handle.stop(true).await;
    });
    server.await?;
    tracing::info!("http server stopped");
    Ok(())
}

/// Builds the server synchronously: actix's builder is not `Send`, so it must not live in
/// the async body (the returned `Server` is).
fn build(
    listener: TcpListener,
    ctx: Ctx,
    workers: usize,
) -> std::io::Result<actix_web::dev::Server> {
    let drain = ctx.config.shutdown_timeout;
    let mut server = actix_web::HttpServer::new(move || super::app(ctx.clone()))
        .disable_signals()
        .shutdown_timeout(drain.as_secs())
        .listen(listener)?;
    if workers > 0 {
        server = server.workers(workers);
    }
    Ok(server.run())
}
