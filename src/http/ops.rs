//! The small ops listener of `worker` and `outbox-relay` (`--metrics-bind`): the same
//! `/health*` and `/metrics` routes as the API, nothing else.

use std::net::TcpListener;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, web};

use crate::app::Ctx;
use crate::shutdown::Shutdown;

/// The ops application (health + metrics).
pub fn app(
    ctx: Ctx,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::new(ctx))
        .configure(super::health::routes)
        .default_service(web::to(super::error::not_found))
        .wrap(actix_web::middleware::from_fn(
            super::middleware::request_context,
        ))
}

/// Serves the ops app on `listener` until shutdown (one worker thread is plenty).
pub async fn run(listener: TcpListener, ctx: Ctx, shutdown: Shutdown) -> std::io::Result<()> {
    let server = actix_web::HttpServer::new(move || app(ctx.clone()))
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        handle.stop(true).await;
    });
    server.await
}
