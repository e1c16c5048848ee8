//! The worker loop. The job queue itself (claiming, heartbeats, rescue, retries) arrives
//! with the jobs issue (#4); until then the worker keeps its readiness fresh, exposes its
//! ops port and stops cleanly on shutdown, so deployments can already run the role.

use std::time::Duration;

use crate::app::Ctx;
use crate::shutdown::Shutdown;

/// Runs the worker until shutdown.
pub async fn run(ctx: Ctx, shutdown: Shutdown) {
    tracing::info!("worker started");
    while shutdown.sleep(Duration::from_secs(5)).await {
        // Keeps `itsur_ready` and the cached report current for the ops port and logs.
        let report = ctx.readiness.report(&ctx).await;
        if !report.ready {
            tracing::warn!("worker dependencies not ready");
        }
    }
    tracing::info!("worker stopped");
}
