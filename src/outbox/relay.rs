//! The relay loop. Claiming and publishing arrive with the outbox issue (#5); until then the
//! relay keeps its readiness fresh, exposes its ops port and stops cleanly on shutdown.

use std::time::Duration;

use crate::app::Ctx;
use crate::shutdown::Shutdown;

/// Runs the relay until shutdown.
pub async fn run(ctx: Ctx, shutdown: Shutdown) {
    tracing::info!("outbox relay started");
    while shutdown.sleep(Duration::from_secs(5)).await {
        let report = ctx.readiness.report(&ctx).await;
        if !report.ready {
            tracing::warn!("outbox relay dependencies not ready");
        }
    }
    tracing::info!("outbox relay stopped");
}
