//! `itsur outbox-relay`: Config → Ctx → `outbox::relay::run` + the ops port (`http::ops`).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;

use super::boot;
use crate::config::{CommonArgs, Config, DEFAULT_RELAY_METRICS_BIND, OutboxArgs};
use crate::shutdown::Shutdown;

/// Settings of `itsur outbox-relay`.
#[derive(Args, Debug)]
pub struct RelayArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    outbox: OutboxArgs,
    /// Ops listener for /metrics and /health*.
    #[arg(long, env = "METRICS_BIND", default_value = DEFAULT_RELAY_METRICS_BIND)]
    metrics_bind: SocketAddr,
}

pub fn main(args: RelayArgs) -> ExitCode {
    let config = match Config::from_args(&args.common, None).and_then(|mut c| {
        c.outbox = args.outbox.settings(args.common.environment)?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => return super::config_exit(&e),
    };
    boot::init_logging(&args.common);
    boot::block_on("outbox-relay", async move {
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
        crate::outbox::relay::run(ctx.clone(), shutdown.clone()).await;
        ctx.readiness.set_draining();
        shutdown.trigger();
        ops.await??;
        shutdown.wait_tasks(ctx.config.shutdown_timeout).await;
        Ok(())
    })
}
