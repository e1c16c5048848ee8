//! Runs the API on a bound listener until shutdown, then drains: readiness turns false at
//! once (so nginx and probes stop sending), in-flight requests finish within the drain
//! budget, and only then does the server stop.

use std::net::TcpListener;

use crate::app::Ctx;
use crate::shutdown::Shutdown;

/// Serves [`super::app`] on `listener`; returns after a graceful stop.
pub async fn run(
    listener: TcpListener,
    ctx: Ctx,
    workers: usize,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let drain = ctx.config.shutdown_timeout;
    let factory_ctx = ctx.clone();
    let mut server = actix_web::HttpServer::new(move || super::app(factory_ctx.clone()))
        .disable_signals()
        .shutdown_timeout(drain.as_secs())
        .listen(listener)?;
    if workers > 0 {
        server = server.workers(workers);
    }
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        ctx.readiness.set_draining();
        tracing::info!(drain_secs = drain.as_secs(), "draining in-flight requests");
        // Graceful: stop accepting, let in-flight requests finish up to the drain budget.
        handle.stop(true).await;
    });
    server.await?;
    tracing::info!("http server stopped");
    Ok(())
}
