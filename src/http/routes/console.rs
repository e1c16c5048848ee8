//! `/admin/console/*`: the API behind the operator console (platform admins: everything;
//! campus admins: their campus). Lists here are keyset pages (`?before=<cursor>&limit=`,
//! answered with `page.next`), never offset pages with a total: they must stay fast on a
//! table of millions of jobs. The console also uses `/admin/workers`,
//! `/admin/outbox/{id}/retry` and `/jobs/{id}/result`.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::Ctx;
use crate::http::dto::data;
use crate::http::error::{ApiError, FieldError, ProblemBody};
use crate::http::extract::{Authed, JsonBody, ReqId};
use crate::http::routes::admin::{AuditEntry, OutboxEvent};
use crate::service::console::{
    self, BoundedCount, BulkAction, BulkOutcome, BulkTarget, CronView, JobDetail, JobQuery,
    JobSummary, Keyset, Overview, QueueView,
};

/// Where a keyset page sits.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeysetInfo {
    /// Page size asked for.
    pub limit: i64,
    /// Pass as `before` to get the next page; null at the end.
    pub next: Option<String>,
    /// True when the page has fewer rows than `limit` because the scan window of an
    /// unindexed filter (kind, queue, text) ended: `next` continues further back.
    pub window_exhausted: bool,
}

/// A keyset page of rows.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeysetList<T> {
    /// Rows, newest first.
    pub data: Vec<T>,
    /// The next page.
    pub page: KeysetInfo,
}

fn keyset<T, U, C: ToString>(
    page: Keyset<T, C>,
    limit: Option<i64>,
    f: impl FnMut(T) -> U,
) -> KeysetList<U> {
    KeysetList {
        page: KeysetInfo {
            limit: limit.unwrap_or(50),
            next: page.next.map(|c| c.to_string()),
            window_exhausted: page.window_exhausted,
        },
        data: page.data.into_iter().map(f).collect(),
    }
}

/// Filters of the job explorer.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobFilterParams {
    /// queued, running, completed, cancelled or dead (empty: any).
    #[schema(schema_with = crate::http::dto::job_state_filter_schema)]
    #[param(schema_with = crate::http::dto::job_state_filter_schema)]
    pub state: Option<String>,
    /// Job kind, e.g. `sales_report` (at most 200 characters).
    #[schema(max_length = 200)]
    #[param(max_length = 200)]
    pub kind: Option<String>,
    /// Queue (at most 200 characters).
    #[schema(max_length = 200)]
    #[param(max_length = 200)]
    pub queue: Option<String>,
    /// Text the payload's JSON must contain (case-insensitive; at most 200 characters).
    #[schema(max_length = 200)]
    #[param(max_length = 200)]
    pub q: Option<String>,
}

impl From<JobFilterParams> for JobQuery {
    fn from(p: JobFilterParams) -> Self {
        Self {
            state: p.state,
            kind: p.kind,
            queue: p.queue,
            search: p.q,
        }
    }
}

/// Keyset page parameters with a UUID cursor.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobPageParams {
    /// The previous page's `page.next`.
    pub before: Option<Uuid>,
    /// 1..=200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// Keyset page parameters with a numeric cursor.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IdPageParams {
    /// The previous page's `page.next`.
    pub before: Option<i64>,
    /// 1..=200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// Throughput of the last hour per minute, queue depth and age, outbox, workers, breakers,
/// sockets.
#[utoipa::path(get, path = "/admin/console/overview", tag = "console", security(("bearer" = [])),
    responses((status = 200, body = inline(crate::http::dto::Data<Overview>)), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn overview(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(data(console::overview(&ctx, &actor).await?)))
}

/// Jobs, newest first, filtered; keyset pages.
#[utoipa::path(get, path = "/admin/console/jobs", operation_id = "console_list_jobs", tag = "console", security(("bearer" = [])),
    params(JobFilterParams, JobPageParams),
    responses((status = 200, body = inline(KeysetList<JobSummary>)), (status = 400, body = ProblemBody), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn list_jobs(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    filter: web::Query<FilterAndPage>,
) -> Result<HttpResponse, ApiError> {
    let FilterAndPage {
        state,
        kind,
        queue,
        q,
        before,
        limit,
    } = filter.into_inner();
    let query = JobQuery {
        state,
        kind,
        queue,
        search: q,
    };
    let page = console::list_jobs(&ctx, &actor, &query, before, limit).await?;
    Ok(HttpResponse::Ok().json(keyset(page, limit, |j| j)))
}

/// The job filter and the page in one query string (actix reads one `Query` per type).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterAndPage {
    state: Option<String>,
    kind: Option<String>,
    queue: Option<String>,
    q: Option<String>,
    before: Option<Uuid>,
    limit: Option<i64>,
}

/// How many jobs match a filter, counted up to a cap (for the bulk confirmation).
#[utoipa::path(get, path = "/admin/console/jobs/count", tag = "console", security(("bearer" = [])),
    params(JobFilterParams),
    responses((status = 200, body = inline(crate::http::dto::Data<BoundedCount>)), (status = 400, body = ProblemBody), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn count_jobs(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    filter: web::Query<JobFilterParams>,
) -> Result<HttpResponse, ApiError> {
    let query = JobQuery::from(filter.into_inner());
    Ok(HttpResponse::Ok().json(data(console::count_jobs(&ctx, &actor, &query).await?)))
}

/// One job: payload, attempts, error, progress, result (download at `/jobs/{id}/result`).
#[utoipa::path(get, path = "/admin/console/jobs/{id}", operation_id = "console_get_job", tag = "console", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Job id")),
    responses((status = 200, body = inline(crate::http::dto::Data<JobDetail>)), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody), (status = 404, body = ProblemBody)))]
pub async fn get_job(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(data(console::get_job(&ctx, &actor, id.into_inner()).await?)))
}

/// A bulk request: either `ids` (the selected jobs) or `filter` (every matching job, one
/// batch of 1000 per request: repeat with `before` = the answer's `next` until `done`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BulkRequest {
    /// retry (dead jobs), cancel (queued or running) or delete (finished jobs).
    pub action: BulkAction,
    /// The selected jobs (at most 1000).
    pub ids: Option<Vec<Uuid>>,
    /// Every job matching this filter.
    pub filter: Option<JobFilterParams>,
    /// With `filter`: the previous answer's `next`.
    pub before: Option<Uuid>,
}

/// Retry, cancel or delete selected jobs, or the jobs matching a filter (batch by batch).
#[utoipa::path(post, path = "/admin/console/jobs/bulk", tag = "console", security(("bearer" = [])),
    request_body = BulkRequest,
    responses((status = 200, body = inline(crate::http::dto::Data<BulkOutcome>)), (status = 400, body = ProblemBody), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn bulk_jobs(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    ReqId(request_id): ReqId,
    body: JsonBody<BulkRequest>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let target = match (b.ids, b.filter) {
        (Some(ids), None) if b.before.is_none() => BulkTarget::Selected(ids),
        (None, Some(filter)) => BulkTarget::Matching {
            query: filter.into(),
            before: b.before,
        },
        _ => {
            return Err(ApiError::validation(vec![FieldError {
                field: "body".to_owned(),
                message: "give either `ids` or `filter` (with an optional `before`)".to_owned(),
            }]));
        }
    };
    let out = console::bulk_jobs(&ctx, &actor, b.action, target, request_id).await?;
    Ok(HttpResponse::Ok().json(data(out)))
}

/// Queues: depth, scheduled, running (concurrency in use), oldest wait, worker slots.
#[utoipa::path(get, path = "/admin/console/queues", tag = "console", security(("bearer" = [])),
    responses((status = 200, body = inline(crate::http::dto::Data<Vec<QueueView>>)), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn list_queues(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(data(console::list_queues(&ctx, &actor).await?)))
}

/// A queue's pause flag after a pause or resume.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueState {
    /// Queue.
    pub queue: String,
    /// Claims skip it.
    pub paused: bool,
    /// False when it already was in that state.
    pub changed: bool,
}

async fn set_paused(
    ctx: web::Data<Ctx>,
    actor: crate::domain::Actor,
    request_id: Option<String>,
    queue: String,
    paused: bool,
) -> Result<HttpResponse, ApiError> {
    let changed = console::set_queue_paused(&ctx, &actor, &queue, paused, request_id).await?;
    Ok(HttpResponse::Ok().json(data(QueueState {
        queue,
        paused,
        changed,
    })))
}

/// Pause a queue: claims skip it from the next claim on; running jobs go on (platform admins).
#[utoipa::path(post, path = "/admin/console/queues/{name}/pause", tag = "console", security(("bearer" = [])),
    params(("name" = String, Path, description = "Queue")),
    responses((status = 200, body = inline(crate::http::dto::Data<QueueState>)), (status = 400, body = ProblemBody), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn pause_queue(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    ReqId(request_id): ReqId,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_paused(ctx, actor, request_id, name.into_inner(), true).await
}

/// Resume a paused queue and wake the workers (platform admins).
#[utoipa::path(post, path = "/admin/console/queues/{name}/resume", tag = "console", security(("bearer" = [])),
    params(("name" = String, Path, description = "Queue")),
    responses((status = 200, body = inline(crate::http::dto::Data<QueueState>)), (status = 400, body = ProblemBody), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn resume_queue(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    ReqId(request_id): ReqId,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_paused(ctx, actor, request_id, name.into_inner(), false).await
}

/// Cron schedules with their next run and last tick (platform admins).
#[utoipa::path(get, path = "/admin/console/cron", tag = "console", security(("bearer" = [])),
    responses((status = 200, body = inline(crate::http::dto::Data<Vec<CronView>>)), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn list_cron(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(data(console::list_cron(&ctx, &actor).await?)))
}

/// Filters of the audit page.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditPageParams {
    /// Only entries by this user.
    pub actor_id: Option<Uuid>,
    /// Only this action, e.g. `jobs.bulk_retry`.
    pub action: Option<String>,
    /// The previous page's `page.next`.
    pub before: Option<i64>,
    /// 1..=200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// The audit trail, newest first; keyset pages.
#[utoipa::path(get, path = "/admin/console/audit", operation_id = "console_list_audit", tag = "console", security(("bearer" = [])),
    params(AuditPageParams),
    responses((status = 200, body = inline(KeysetList<AuditEntry>)), (status = 400, body = ProblemBody), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn list_audit(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    params: web::Query<AuditPageParams>,
) -> Result<HttpResponse, ApiError> {
    let p = params.into_inner();
    let action = p.action.as_deref().filter(|a| !a.is_empty());
    let page = console::list_audit(&ctx, &actor, p.actor_id, action, p.before, p.limit).await?;
    Ok(HttpResponse::Ok().json(keyset(page, p.limit, AuditEntry::from)))
}

/// Filters of the outbox page.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OutboxPageParams {
    /// `dead` (default) or `pending`.
    #[param(schema_with = crate::http::dto::outbox_state_schema)]
    pub state: Option<String>,
    /// The previous page's `page.next`.
    pub before: Option<i64>,
    /// 1..=200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// Dead (or pending) outbox events, newest first; keyset pages. Retry one with
/// `POST /admin/outbox/{id}/retry`.
#[utoipa::path(get, path = "/admin/console/outbox", operation_id = "console_list_outbox", tag = "console", security(("bearer" = [])),
    params(OutboxPageParams),
    responses((status = 200, body = inline(KeysetList<OutboxEvent>)), (status = 400, body = ProblemBody), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn list_outbox(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    params: web::Query<OutboxPageParams>,
) -> Result<HttpResponse, ApiError> {
    let p = params.into_inner();
    let dead = match p.state.as_deref() {
        None | Some("dead") => true,
        Some("pending") => false,
        Some(_) => {
            return Err(ApiError::validation(vec![FieldError {
                field: "state".to_owned(),
                message: "must be dead or pending".to_owned(),
            }]));
        }
    };
    let page = console::list_outbox(&ctx, &actor, dead, p.before, p.limit).await?;
    Ok(HttpResponse::Ok().json(keyset(page, p.limit, OutboxEvent::from)))
}

/// Registers the routes of this module.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/console/overview", web::get().to(overview))
        .route("/admin/console/jobs", web::get().to(list_jobs))
        .route("/admin/console/jobs/count", web::get().to(count_jobs))
        .route("/admin/console/jobs/bulk", web::post().to(bulk_jobs))
        .route("/admin/console/jobs/{id}", web::get().to(get_job))
        .route("/admin/console/queues", web::get().to(list_queues))
        .route(
            "/admin/console/queues/{name}/pause",
            web::post().to(pause_queue),
        )
        .route(
            "/admin/console/queues/{name}/resume",
            web::post().to(resume_queue),
        )
        .route("/admin/console/cron", web::get().to(list_cron))
        .route("/admin/console/audit", web::get().to(list_audit))
        .route("/admin/console/outbox", web::get().to(list_outbox));
}
