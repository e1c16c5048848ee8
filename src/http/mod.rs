//! Role `serve`: the HTTP API. The only module that imports actix-web.
//!
//! [`app`] is THE application factory: production (`server::run`) and the in-process tests
//! (`actix_web::test::init_service(http::app(ctx))`) build the same thing.
//!
//! L3: depends on `service`, `app`, `domain`, `kv`, `resilience` (the limiter's decisions,
//! through `Ctx`) and the leaf utilities; never on `jobs`, `outbox` or diesel. Edge
//! protection (limits, shedding, deadline, CORS, security headers) lives in [`edge`]; `ws` is
//! the realtime gateway (`GET /ws`).

pub mod assets;
pub mod cookie;
pub mod dto;
pub mod edge;
pub mod error;
pub mod extract;
pub mod health;
pub mod middleware;
pub mod openapi;
pub mod ops;
pub mod routes;
pub mod server;
pub mod ws;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, web};

use crate::app::Ctx;

/// Builds the API application on a context.
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
    let json_limit = ctx.config.edge.json_body_limit;
    App::new()
        .app_data(web::Data::new(ctx))
        .app_data(web::Data::new(openapi::known_routes()))
        .configure(error::extractor_config(json_limit))
        .configure(health::routes)
        .configure(openapi::routes)
        .configure(routes::auth::routes)
        .configure(routes::web_auth::routes)
        .configure(routes::catalog::routes)
        .configure(routes::orders::routes)
        .configure(routes::admin::routes)
        .configure(routes::console::routes)
        .configure(routes::jobs::routes)
        .configure(routes::flows::routes)
        .configure(ws::routes)
        .configure(assets::routes)
        .default_service(web::to(error::not_found))
        // Innermost first: NUL characters in the URI, limits, then admission (shedding, body size, deadline), CORS,
        // security headers; the request context (id, span, metrics) stays outermost.
        .wrap(actix_web::middleware::from_fn(middleware::reject_nul))
        .wrap(actix_web::middleware::from_fn(edge::rate_limit))
        .wrap(actix_web::middleware::from_fn(edge::admission))
        .wrap(actix_web::middleware::from_fn(edge::cors))
        .wrap(actix_web::middleware::from_fn(edge::security_headers))
        .wrap(actix_web::middleware::from_fn(middleware::request_context))
}
