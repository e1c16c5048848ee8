//! `/flows*` (definitions, node catalog, runs of a flow) and `/flow-runs*` (runs).

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::Ctx;
use crate::http::dto::{Data, List, data};
use crate::http::error::{ApiError, ProblemBody};
use crate::http::extract::{Authed, JsonBody, OptionalJsonBody, PageParams};
use crate::service::flows::{self, FlowInput, FlowView, RunFilter, RunView, VersionView};
use crate::service::nodes::{self, NodeSpec};

/// A flow to create, or a new version of one (`PUT`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlowRequest {
    /// Campus (platform admins; campus admins default to theirs).
    pub campus_id: Option<Uuid>,
    /// Name, unique per campus (1 to 100 of `[a-z0-9._-]`).
    #[schema(pattern = r"^[a-z0-9._-]{1,100}$")]
    pub name: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// `{ "steps": [...], "schedules": [...] }`: see the README.
    #[schema(value_type = Object)]
    pub definition: serde_json::Value,
}

impl From<FlowRequest> for FlowInput {
    fn from(r: FlowRequest) -> Self {
        Self {
            campus_id: r.campus_id,
            name: r.name,
            description: r.description,
            definition: r.definition,
        }
    }
}

/// Input of a run.
#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartRunRequest {
    /// The run's input (an object; null or absent: `{}`), `input.*` in references.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub input: Option<serde_json::Value>,
}

/// The 202 answer of a started run.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunAccepted {
    /// The run: follow it at `GET /flow-runs/{id}` or over `/ws`.
    pub data: RunView,
    /// What happens next.
    pub message: String,
}

/// Filters of `GET /flow-runs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct RunParams {
    /// Only runs of this flow.
    pub flow: Option<Uuid>,
    /// running, succeeded, failed or cancelled.
    #[param(schema_with = crate::http::dto::run_status_schema)]
    pub status: Option<String>,
}

/// Create a flow definition (version 1); 400 with JSON paths when it is invalid.
#[utoipa::path(post, path = "/flows", tag = "flows", security(("bearer" = [])), request_body = FlowRequest,
    responses((status = 201, body = inline(Data<FlowView>)), (status = 400, body = ProblemBody), (status = 403, body = ProblemBody),
        (status = 404, body = ProblemBody), (status = 409, body = ProblemBody)))]
pub async fn create_flow(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    body: JsonBody<FlowRequest>,
) -> Result<HttpResponse, ApiError> {
    let flow = flows::create_flow(&ctx, &actor, body.into_inner().into()).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/flows/{}", flow.id)))
        .json(data(flow)))
}

/// Flows of the caller's campus (platform admins: all).
#[utoipa::path(get, path = "/flows", tag = "flows", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = inline(List<FlowView>)), (status = 403, body = ProblemBody)))]
pub async fn list_flows(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, ApiError> {
    let page = page.into_inner().validate()?;
    let out = flows::list_flows(&ctx, &actor, page).await?;
    Ok(HttpResponse::Ok().json(List::from_page(out, |f| f)))
}

/// A flow and its current definition.
#[utoipa::path(get, path = "/flows/{id}", tag = "flows", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Flow id")),
    responses((status = 200, body = inline(Data<FlowView>)), (status = 403, body = ProblemBody), (status = 404, body = ProblemBody)))]
pub async fn get_flow(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(data(flows::get_flow(&ctx, &actor, id.into_inner()).await?)))
}

/// Save a new version (runs in progress keep the version they started with).
#[utoipa::path(put, path = "/flows/{id}", tag = "flows", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Flow id")), request_body = FlowRequest,
    responses((status = 200, body = inline(Data<FlowView>)), (status = 400, body = ProblemBody), (status = 403, body = ProblemBody),
        (status = 404, body = ProblemBody)))]
pub async fn update_flow(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
    body: JsonBody<FlowRequest>,
) -> Result<HttpResponse, ApiError> {
    let flow = flows::update_flow(&ctx, &actor, id.into_inner(), body.into_inner().into()).await?;
    Ok(HttpResponse::Ok().json(data(flow)))
}

/// Delete a flow (no new runs; runs in progress finish).
#[utoipa::path(delete, path = "/flows/{id}", tag = "flows", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Flow id")),
    responses((status = 204), (status = 403, body = ProblemBody), (status = 404, body = ProblemBody)))]
pub async fn delete_flow(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    flows::delete_flow(&ctx, &actor, id.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Every version of a flow, newest first.
#[utoipa::path(get, path = "/flows/{id}/versions", tag = "flows", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Flow id")),
    responses((status = 200, body = inline(Data<Vec<VersionView>>)), (status = 403, body = ProblemBody), (status = 404, body = ProblemBody)))]
pub async fn list_versions(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(data(
        flows::list_versions(&ctx, &actor, id.into_inner()).await?,
    )))
}

/// The node catalog: every job kind a worker runs, with the JSON Schema of its input and
/// output (generated from the handlers' types).
#[utoipa::path(get, path = "/flows/nodes", tag = "flows", security(("bearer" = [])),
    responses((status = 200, body = inline(Data<Vec<NodeSpec>>)), (status = 401, body = ProblemBody)))]
pub async fn list_nodes(Authed(_actor): Authed) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(data(nodes::catalog())))
}

/// Start a run of the flow's current version; 202 with the run.
#[utoipa::path(post, path = "/flows/{id}/runs", tag = "flows", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Flow id")), request_body = Option<StartRunRequest>,
    responses((status = 202, body = RunAccepted), (status = 400, body = ProblemBody), (status = 403, body = ProblemBody),
        (status = 404, body = ProblemBody)))]
pub async fn start_run(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
    OptionalJsonBody(body): OptionalJsonBody<StartRunRequest>,
) -> Result<HttpResponse, ApiError> {
    let input = body
        .and_then(|b| b.input)
        .unwrap_or_else(|| serde_json::json!({}));
    let run = flows::start_run(&ctx, &actor, id.into_inner(), input).await?;
    Ok(HttpResponse::Accepted()
        .insert_header(("Location", format!("/flow-runs/{}", run.id)))
        .json(RunAccepted {
            message: format!(
                "run started: follow it at /flow-runs/{} or subscribe to flow-run:{} on /ws",
                run.id, run.id
            ),
            data: run,
        }))
}

/// Runs the caller may see, newest first.
#[utoipa::path(get, path = "/flow-runs", tag = "flows", security(("bearer" = [])), params(RunParams, PageParams),
    responses((status = 200, body = inline(List<RunView>)), (status = 400, body = ProblemBody)))]
pub async fn list_runs(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    params: web::Query<RunParams>,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, ApiError> {
    let page = page.into_inner().validate()?;
    let p = params.into_inner();
    let filter = RunFilter {
        flow: p.flow,
        status: p.status,
    };
    let out = flows::list_runs(&ctx, &actor, filter, page).await?;
    Ok(HttpResponse::Ok().json(List::from_page(out, |r| r)))
}

/// A run with every step: state, attempts, input, output or error, timing, fan-out instances.
#[utoipa::path(get, path = "/flow-runs/{id}", tag = "flows", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Run id")),
    responses((status = 200, body = inline(Data<RunView>)), (status = 404, body = ProblemBody)))]
pub async fn get_run(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(data(flows::get_run(&ctx, &actor, id.into_inner()).await?)))
}

/// Cancel a running run: waiting and queued steps are cancelled, running ones asked to stop.
#[utoipa::path(delete, path = "/flow-runs/{id}", tag = "flows", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Run id")),
    responses((status = 200, body = inline(Data<RunView>)), (status = 403, body = ProblemBody), (status = 404, body = ProblemBody),
        (status = 409, body = ProblemBody)))]
pub async fn cancel_run(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(data(
        flows::cancel_run(&ctx, &actor, id.into_inner()).await?,
    )))
}

/// Retry a failed run: failed steps and the unsucceeded steps depending on them run again.
#[utoipa::path(post, path = "/flow-runs/{id}/retry", tag = "flows", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Run id")),
    responses((status = 200, body = inline(Data<RunView>)), (status = 403, body = ProblemBody), (status = 404, body = ProblemBody),
        (status = 409, body = ProblemBody)))]
pub async fn retry_run(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(data(flows::retry_run(&ctx, &actor, id.into_inner()).await?)))
}

/// Registers the routes of this module (`/flows/nodes` before `/flows/{id}`).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/flows/nodes", web::get().to(list_nodes))
        .route("/flows", web::post().to(create_flow))
        .route("/flows", web::get().to(list_flows))
        .route("/flows/{id}", web::get().to(get_flow))
        .route("/flows/{id}", web::put().to(update_flow))
        .route("/flows/{id}", web::delete().to(delete_flow))
        .route("/flows/{id}/versions", web::get().to(list_versions))
        .route("/flows/{id}/runs", web::post().to(start_run))
        .route("/flow-runs", web::get().to(list_runs))
        .route("/flow-runs/{id}", web::get().to(get_run))
        .route("/flow-runs/{id}", web::delete().to(cancel_run))
        .route("/flow-runs/{id}/retry", web::post().to(retry_run));
}
