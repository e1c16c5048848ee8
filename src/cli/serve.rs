//! `itsur serve`: Config → Ctx → bind → `http::server::run`.

use std::process::ExitCode;

use clap::Args;

use super::boot;
use crate::config::{CommonArgs, Config, HttpArgs, WsArgs};
use crate::shutdown::Shutdown;

/// Settings of `itsur serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    ws: WsArgs,
}

pub fn main(args: ServeArgs) -> ExitCode {
    let config = match args
        .http
        .validate(args.common.environment)
        .and_then(|jwt| Config::from_args(&args.common, Some(jwt)))
        .and_then(|c| c.with_edge(&args.http.edge))
        .and_then(|mut c| {
            c.ws = args.ws.settings()?;
            Ok(c)
        }) {
        Ok(c) => c,
        Err(e) => return super::config_exit(&e),
    };
    boot::init_logging(&args.common);
    boot::block_on("serve", async move {
        let shutdown = Shutdown::new();
        shutdown.install_signal_handlers()?;
        let listener = boot::bind(args.http.bind, "BIND_ADDR")?;
        tracing::info!(addr = %args.http.bind, "serve listening");
        let Some(ctx) = boot::context(config, &shutdown).await? else {
            return Ok(());
        };
        boot::start_relay_waker(&ctx, &shutdown);
        shutdown.notify_ready();
        crate::http::server::run(listener, ctx, args.http.http_workers, shutdown.clone()).await?;
        shutdown.trigger();
        shutdown.wait_tasks(std::time::Duration::from_secs(5)).await;
        Ok(())
    })
}
