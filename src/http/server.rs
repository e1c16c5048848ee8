//! Runs the API on a bound listener until shutdown, then drains: readiness turns false at
//! once (so nginx and probes stop sending), WebSockets are closed with 1012 (reconnect and
//! resume elsewhere), in-flight requests finish within the drain budget, and only then does
//! the server stop. Also starts the instance's Redis events subscription and its socket-count
//! report (the relay waker is started by the role, `cli::boot::start_relay_waker`).

use std::any::Any;
use std::net::TcpListener;

use actix_web::dev::Extensions;

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
    let server = build(listener, ctx.clone(), workers)?;
    let handle = server.handle();
    // The realtime side of this instance: its one Redis events subscription.
    shutdown.spawn(super::ws::gateway::run_subscriber(
        ctx.clone(),
        shutdown.clone(),
    ));
    // Its socket count, summed with the other instances' by the console overview.
    shutdown.spawn(crate::service::console::report_sockets(
        ctx.clone(),
        shutdown.clone(),
    ));
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
        .on_connect(bound_unsent_bytes)
        .disable_signals()
        .shutdown_timeout(drain.as_secs())
        .listen(listener)?;
    if workers > 0 {
        server = server.workers(workers);
    }
    Ok(server.run())
}

/// Bytes the kernel may hold unsent for one connection (`TCP_NOTSENT_LOWAT`), whatever its
/// send buffer grew to.
///
/// Linux autotunes a socket's send buffer up to `net.ipv4.tcp_wmem` (4 MiB by default). For
/// a WebSocket whose client reads slowly, megabytes of events would sit in the kernel: the
/// application's own per-connection queue (`WS_SEND_QUEUE`), which decides when a client is
/// too slow (close 4008), would only fill after them, and the close frame would queue
/// behind them too and not reach the client before the close deadline. With this option a
/// write waits once this much is unsent: what is ahead of a close frame is this, the
/// actix-ws channel (32 frames) and what the client's own receive window holds. Unlike a
/// fixed `SO_SNDBUF` it leaves the in-flight window autotuned, so large HTTP responses
/// keep their throughput.
pub const UNSENT_BYTES_LIMIT: u32 = 16 * 1024;

/// `on_connect` hook: sets [`UNSENT_BYTES_LIMIT`] on every accepted TCP connection.
fn bound_unsent_bytes(conn: &dyn Any, _: &mut Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>()
        && let Err(e) = socket2::SockRef::from(tcp).set_tcp_notsent_lowat(UNSENT_BYTES_LIMIT)
    {
        tracing::debug!(error = %e, "cannot bound the connection's unsent bytes");
    }
}
