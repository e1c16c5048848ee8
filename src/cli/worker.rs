//! `itsur worker`: Config → Ctx → `jobs::runner::run` + the ops port (`http::ops`).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;

use super::boot;
use crate::config::{CommonArgs, Config, DEFAULT_WORKER_METRICS_BIND};
use crate::shutdown::Shutdown;

/// Settings of `itsur worker`.
#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    jobs: crate::config::JobArgs,
    /// Ops listener for /metrics and /health*.
    #[arg(long, env = "METRICS_BIND", default_value = DEFAULT_WORKER_METRICS_BIND)]
    metrics_bind: SocketAddr,
}

pub fn main(args: WorkerArgs) -> ExitCode {
    let config = match Config::from_args(&args.common, None) {
        Ok(c) => c,
        Err(e) => return super::config_exit(&e),
    };
    boot::init_logging(&args.common);
    boot::block_on("worker", async move {
        let shutdown = Shutdown::new();
        shutdown.install_signal_handlers()?;
        let listener = boot::bind(args.metrics_bind, "METRICS_BIND")?;
        let Some(ctx) = boot::context(config, &shutdown).await? else {
            return Ok(());
        };
        shutdown.notify_ready();
        let ops = shutdown.spawn(crate::http::ops::run(
            listener,
            ctx.clone(),
            shutdown.clone(),
        ));
        // The worker writes outbox events (job progress and ends): it wakes the relays.
        boot::start_relay_waker(&ctx, &shutdown);
        let options =
            crate::jobs::runner::WorkerOptions::from_args(&args.jobs, ctx.config.shutdown_timeout);
        if !args.jobs.no_cron {
            shutdown.spawn(crate::jobs::flow_cron::run(ctx.clone(), shutdown.clone()));
        }
        crate::jobs::runner::run(
            ctx.clone(),
            shutdown.clone(),
            options,
            crate::jobs::registry::Registry::standard(),
        )
        .await;
        ctx.readiness.set_draining();
        shutdown.trigger();
        ops.await??;
        shutdown.wait_tasks(ctx.config.shutdown_timeout).await;
        Ok(())
    })
}
