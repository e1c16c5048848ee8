//! The flow scheduler loop of a worker: about once a second, fire the flow schedules that are
//! due (`service::flow_schedules::fire_due`; several workers firing at once start one run
//! per tick), and refresh the `flow_steps` gauge.

use std::time::Duration;

use crate::app::Ctx;
use crate::shutdown::Shutdown;

/// Runs until `stop`.
pub async fn run(ctx: Ctx, stop: Shutdown) {
    let mut gauges_at = std::time::Instant::now();
    loop {
        if let Err(e) = crate::service::flow_schedules::fire_due(&ctx, chrono::Utc::now()).await {
            tracing::warn!(error = %e, "flow schedules not fired; retrying");
        }
        if gauges_at.elapsed() >= Duration::from_secs(10) {
            gauges_at = std::time::Instant::now();
            crate::service::flows::refresh_gauges(&ctx).await;
        }
        if !stop.sleep(Duration::from_secs(1)).await {
            return;
        }
    }
}
