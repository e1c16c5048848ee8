//! `/health/live`, `/health/ready`, `/health` and `/metrics`: mounted on the API of `serve`
//! and on the ops listener of `worker` and `outbox-relay`.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::app::Ctx;

/// Liveness: the process answers; no dependency is checked.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Readiness: 200 when Postgres answers and the schema is current, else 503 (cached ~1 s,
/// answers in well under 100 ms even when a dependency hangs).
pub async fn ready(ctx: web::Data<Ctx>) -> HttpResponse {
    let report = ctx.readiness.report(&ctx).await;
    let mut res = if report.ready {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    res.insert_header(("Cache-Control", "no-store"));
    if !report.ready {
        res.insert_header(("Retry-After", "1"));
    }
    let status = if report.ready { "ready" } else { "unready" };
    res.json(json!({ "status": status, "draining": report.draining }))
}

/// Detail: every component with status, latency and reason; status code as for readiness.
pub async fn detail(ctx: web::Data<Ctx>) -> HttpResponse {
    let report = ctx.readiness.report(&ctx).await;
    let mut res = if report.ready {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    res.insert_header(("Cache-Control", "no-store"));
    res.json(json!({
        "status": if report.ready { "ready" } else { "unready" },
        "version": env!("CARGO_PKG_VERSION"),
        "report": report,
    }))
}

/// Prometheus text exposition of every metric of this process.
pub async fn metrics(ctx: web::Data<Ctx>) -> HttpResponse {
    record_pool_gauges(&ctx);
    HttpResponse::Ok()
        .insert_header(("Content-Type", "text/plain; version=0.0.4; charset=utf-8"))
        .body(ctx.metrics.render())
}

fn record_pool_gauges(ctx: &Ctx) {
    use crate::telemetry::POOL_CONNECTIONS;
    let mut states: Vec<(&'static str, bb8::State)> = ctx.db.pool_states();
    if let Some(kv) = &ctx.kv {
        states.push(("redis", kv.pool_state()));
    }
    for (pool, state) in states {
        let idle = f64::from(state.idle_connections);
        let total = f64::from(state.connections);
        metrics::gauge!(POOL_CONNECTIONS, "pool" => pool, "state" => "idle").set(idle);
        metrics::gauge!(POOL_CONNECTIONS, "pool" => pool, "state" => "in_use").set(total - idle);
    }
}

/// Registers the health and metrics routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health/live", web::get().to(live))
        .route("/health/ready", web::get().to(ready))
        .route("/health", web::get().to(detail))
        .route("/metrics", web::get().to(metrics));
}
