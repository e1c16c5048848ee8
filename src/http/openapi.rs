//! `/openapi.json`: the OpenAPI 3.1 document generated from the handlers' `#[utoipa::path]`
//! annotations and the DTOs' `ToSchema` derives, so it cannot drift from the code.

use actix_web::{HttpResponse, web};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::routes::{admin, auth, catalog, console, flows, jobs, orders, web_auth};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        // The browser apps' session (`/auth/web/login`): HttpOnly, so only the browser
        // sends it; writes with it also need `X-CSRF-Token` and a same-origin `Origin`.
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "itsur_access",
                "Browser session cookie; writes also need X-CSRF-Token (from /auth/web/session) and a same-origin Origin",
            ))),
        );
    }
}

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "itsur", description = "ITSUR Eats campus food-ordering API"),
    paths(
        auth::register, auth::login, auth::refresh, auth::logout, auth::me,
        auth::list_sessions, auth::revoke_session, auth::register_device, auth::delete_device,
        catalog::list_campuses, catalog::list_vendors, catalog::get_menu,
        catalog::create_menu_item, catalog::update_menu_item, catalog::set_vendor_open,
        web_auth::login, web_auth::refresh, web_auth::session, web_auth::logout,
        orders::place_order, orders::list_orders, orders::get_order, orders::transition_order,
        admin::list_audit, admin::list_outbox, admin::retry_dead_event,
        jobs::request_sales_report, jobs::import_users, jobs::list_jobs, jobs::get_job,
        jobs::cancel_job, jobs::job_result, jobs::list_workers, jobs::retry_job,
        flows::create_flow, flows::list_flows, flows::get_flow, flows::update_flow,
        flows::delete_flow, flows::list_versions, flows::list_nodes, flows::start_run,
        flows::list_runs, flows::get_run, flows::cancel_run, flows::retry_run,
        console::overview, console::list_jobs, console::count_jobs, console::get_job,
        console::bulk_jobs, console::list_queues, console::pause_queue, console::resume_queue, console::list_cron, console::list_audit,
        console::list_outbox,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Accounts, sessions and devices"),
        (name = "catalog", description = "Campuses, vendors and menus"),
        (name = "orders", description = "Placing and following orders"),
        (name = "admin", description = "Campus administration: audit trail, outbox dead letters"),
        (name = "console", description = "The operator console's API: overview, job explorer and bulk actions, queues, cron, audit, outbox (keyset pages)"),
        (name = "jobs", description = "Long-running work: reports, imports, their progress and results"),
        (name = "flows", description = "Durable multi-step workflows on the job queue: definitions, node catalog, runs"),
    )
)]
pub struct ApiDoc;

/// Serves the document.
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

/// Registers `/openapi.json`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(openapi_json));
}
