//! `/openapi.json`: the OpenAPI 3.1 document generated from the handlers' `#[utoipa::path]`
//! annotations and the DTOs' `ToSchema` derives, so it cannot drift from the code.
//!
//! [`Problems`] then edits every operation the same way: error responses are
//! `application/problem+json`, the problems any request can meet (400, 429, 500, 503, and
//! 413/415 where there is a body) are listed, and `ProblemCode` lists the error-code table
//! of `http::error` (generated from [`Code::ALL`], never copied by hand).

use actix_web::{HttpResponse, web};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Ref, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Header, RefOr, Response};
use utoipa::{Modify, OpenApi};

use super::error::{Code, KnownRoutes, PROBLEM_JSON};

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

/// Error responses as problems, the shared problem responses and the `ProblemCode` table.
struct Problems;

/// Problems every operation can answer: bad input (a NUL in a query string, a malformed
/// parameter), the rate limits, a bug, and shedding or a dependency down.
const SHARED: [Code; 4] = [
    Code::Validation,
    Code::RateLimited,
    Code::Internal,
    Code::Unavailable,
];

/// Problems of operations that read a body: too large, or the wrong content type.
const WITH_BODY: [Code; 2] = [Code::PayloadTooLarge, Code::UnsupportedMediaType];

/// Problems of operations that need a login: no valid token, or not allowed (role, tenant,
/// CSRF for the browser cookie).
const SECURED: [Code; 2] = [Code::Unauthenticated, Code::Forbidden];

/// Problems of operations with path parameters: nothing there (or in another tenant), or a
/// more specific path asked with a method it does not have.
const WITH_PATH_PARAMS: [Code; 2] = [Code::NotFound, Code::MethodNotAllowed];

impl Modify for Problems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .schemas
            .insert("ProblemCode".to_owned(), RefOr::T(problem_code_schema()));
        for item in openapi.paths.paths.values_mut() {
            for op in operations(item) {
                document_problems(op);
            }
        }
    }
}

/// The error-code table as a string enum, with a markdown table in its description.
fn problem_code_schema() -> utoipa::openapi::Schema {
    let mut table = String::from(
        "Every problem type (the suffix of a problem's `type`, `https://itsur.dev/problems/<code>`).\n\n\
         | code | status | title | when |\n|---|---|---|---|\n",
    );
    for code in Code::ALL {
        table.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            code.as_str(),
            code.status().as_u16(),
            code.title(),
            code.description().replace('\n', " ")
        ));
    }
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(Code::ALL.iter().map(|c| c.as_str())))
        .description(Some(table))
        .build()
        .into()
}

/// Every operation of a path.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// Error responses of `op` become problem+json, and the shared problems are added.
fn document_problems(op: &mut Operation) {
    for (status, response) in &mut op.responses.responses {
        let is_error = status.starts_with('4') || status.starts_with('5') || status == "default";
        if let (true, RefOr::T(response)) = (is_error, response)
            && let Some(content) = response.content.shift_remove("application/json")
        {
            response.content.insert(PROBLEM_JSON.to_owned(), content);
        }
    }
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let path_params = op.parameters.as_ref().is_some_and(|ps| {
        ps.iter()
            .any(|p| matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Path))
    });
    let extra = [
        (op.request_body.is_some(), &WITH_BODY[..]),
        (secured, &SECURED[..]),
        (path_params, &WITH_PATH_PARAMS[..]),
    ];
    let extra = extra
        .into_iter()
        .filter_map(|(applies, codes)| applies.then_some(codes))
        .flatten();
    for code in SHARED.iter().chain(extra) {
        let status = code.status().as_u16().to_string();
        op.responses
            .responses
            .entry(status)
            .or_insert_with(|| RefOr::T(problem_response(*code)));
    }
}

/// A problem response of `code`'s status.
fn problem_response(code: Code) -> Response {
    let mut response = ResponseBuilder::new().description(code.title()).content(
        PROBLEM_JSON,
        Content::new(Some(Ref::from_schema_name("ProblemBody"))),
    );
    if matches!(code, Code::RateLimited | Code::Unavailable) {
        let mut retry_after = Header::new(ObjectBuilder::new().schema_type(Type::Integer).build());
        retry_after.description = Some("Seconds to wait before retrying".to_owned());
        response = response.header("Retry-After", retry_after);
    }
    response.build()
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
    modifiers(&BearerAuth, &Problems),
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

/// The documented paths with their methods, for the 405 answer of `error::not_found`.
pub fn known_routes() -> KnownRoutes {
    let doc = ApiDoc::openapi();
    let routes: Vec<(String, Vec<&'static str>)> = doc
        .paths
        .paths
        .iter()
        .map(|(path, item)| {
            let methods = [
                ("GET", item.get.is_some()),
                ("PUT", item.put.is_some()),
                ("POST", item.post.is_some()),
                ("DELETE", item.delete.is_some()),
                ("OPTIONS", item.options.is_some()),
                ("HEAD", item.head.is_some()),
                ("PATCH", item.patch.is_some()),
                ("TRACE", item.trace.is_some()),
            ];
            let methods = methods
                .into_iter()
                .filter_map(|(m, present)| present.then_some(m))
                .collect();
            (path.clone(), methods)
        })
        .collect();
    KnownRoutes::new(routes.iter().map(|(p, m)| (p.as_str(), m.clone())))
}

/// Serves the document.
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

/// Registers `/openapi.json`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(openapi_json));
}
