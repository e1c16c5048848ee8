//! `itsur all`: migrate, then serve + worker + outbox-relay on ONE context and ONE shutdown
//! (one-machine installs and development).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use super::boot;
use crate::config::{CommonArgs, Config, HttpArgs, OutboxArgs, WsArgs};
use crate::shutdown::Shutdown;

/// Settings of `itsur all`.
#[derive(Args, Debug)]
pub struct AllArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    ws: WsArgs,
    #[command(flatten)]
    outbox: OutboxArgs,
    #[command(flatten)]
    jobs: crate::config::JobArgs,
}

pub fn main(args: AllArgs) -> ExitCode {
    let config = match args
        .http
        .validate(args.common.environment)
        .and_then(|jwt| Config::from_args(&args.common, Some(jwt)))
        .and_then(|c| c.with_edge(&args.http.edge))
        .and_then(|mut c| {
            c.ws = args.ws.settings()?;
            c.outbox = args.outbox.settings(args.common.environment)?;
            Ok(c)
        }) {
        Ok(c) => c,
        Err(e) => return super::config_exit(&e),
    };
    boot::init_logging(&args.common);
    boot::block_on("all", async move {
        let shutdown = Shutdown::new();
        shutdown.install_signal_handlers()?;
        let listener = boot::bind(args.http.bind, "BIND_ADDR")?;
        let url = config.database.url.clone();
        if !crate::store::pool::wait_for_postgres(
            &url,
            config.database.connect_timeout,
            shutdown.cancelled(),
        )
        .await
        {
            return Ok(());
        }
        let applied = crate::store::migrations::run(url.expose().clone())
            .await
            .context("migrating")?;
        tracing::info!(count = applied.len(), "migrations applied");
        let Some(ctx) = boot::context(config, &shutdown).await? else {
            return Ok(());
        };
        tracing::info!(addr = %args.http.bind, "all: serving, working and relaying");
        boot::start_relay_waker(&ctx, &shutdown);
        let options =
            crate::jobs::runner::WorkerOptions::from_args(&args.jobs, ctx.config.shutdown_timeout);
        let worker = shutdown.spawn(crate::jobs::runner::run(
            ctx.clone(),
            shutdown.clone(),
            options,
            crate::jobs::registry::Registry::standard(),
        ));
        if !args.jobs.no_cron {
            shutdown.spawn(crate::jobs::flow_cron::run(ctx.clone(), shutdown.clone()));
        }
        let relay = shutdown.spawn(crate::outbox::relay::run(ctx.clone(), shutdown.clone()));
        shutdown.notify_ready();
        let served = crate::http::server::run(
            listener,
            ctx.clone(),
            args.http.http_workers,
            shutdown.clone(),
        )
        .await;
        shutdown.trigger();
        worker.await?;
        relay.await?;
        shutdown.wait_tasks(ctx.config.shutdown_timeout).await;
        served?;
        Ok(())
    })
}
