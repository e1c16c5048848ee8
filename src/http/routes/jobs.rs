//! `/jobs*`, report and import submission (202 + job), `/admin/workers`, `/admin/jobs/{id}/retry`.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::Ctx;
use crate::http::dto::{Data, List, data};
use crate::http::error::{ApiError, Code, ProblemBody};
use crate::http::extract::{Authed, JsonBody, PageParams};
use crate::service::imports::{self, MAX_CSV_BYTES, MAX_ROWS};
use crate::service::jobs::{self, JobView, WorkerView};
use crate::service::reports::{Format, SalesReportSpec};

/// The 202 answer to long work (DESIGN.md "HTTP conventions").
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobAccepted {
    /// Job id: follow it at `GET /jobs/{jobId}`.
    pub job_id: Uuid,
    /// Always `queued`.
    pub status: &'static str,
    /// Job kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// Enqueued at.
    pub created_at: DateTime<Utc>,
    /// Rough expected duration in seconds.
    pub estimated_duration: u64,
    /// Always 0.
    pub progress: i16,
}

/// Envelope of a 202.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// The job.
    pub data: JobAccepted,
    /// What happens next.
    pub message: String,
}

fn accepted(job: JobView) -> HttpResponse {
    let location = format!("/jobs/{}", job.job_id);
    HttpResponse::Accepted()
        .insert_header(("Location", location))
        .json(Accepted {
            message: format!("{} queued: follow it at /jobs/{}", job.kind, job.job_id),
            data: JobAccepted {
                job_id: job.job_id,
                status: "queued",
                kind: job.kind,
                created_at: job.created_at,
                estimated_duration: job.estimated_duration,
                progress: 0,
            },
        })
}

/// A sales report request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SalesReportRequest {
    /// Start (inclusive, RFC 3339).
    pub from: DateTime<Utc>,
    /// End (exclusive, RFC 3339).
    pub to: DateTime<Utc>,
    /// `csv` (default) or `json`.
    #[schema(schema_with = crate::http::dto::report_format_schema)]
    pub format: Option<Format>,
}

/// Start a sales report of a vendor (its staff or campus admin); 202 with the job.
#[utoipa::path(post, path = "/vendors/{id}/reports/sales", tag = "jobs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Vendor id")), request_body = SalesReportRequest,
    responses((status = 202, body = Accepted), (status = 400, body = ProblemBody), (status = 403, body = ProblemBody), (status = 404, body = ProblemBody)))]
pub async fn request_sales_report(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
    body: JsonBody<SalesReportRequest>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let spec = SalesReportSpec {
        vendor_id: id.into_inner(),
        from: b.from,
        to: b.to,
        format: b.format.unwrap_or(Format::Csv),
    };
    Ok(accepted(
        jobs::submit_sales_report(&ctx, &actor, spec).await?,
    ))
}

/// Reads a body of at most `limit` bytes, answering 413 as a problem beyond it.
async fn read_limited(mut payload: web::Payload, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::new(Code::BadRequest, format!("body could not be read: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::new(
                Code::PayloadTooLarge,
                format!("body exceeds the limit of {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Import users into the caller's campus from CSV (`Content-Type: text/csv`; columns
/// `email,display_name,role,password[,vendor_id]`; at most 5 MiB and 20,000 rows, else
/// 413); 202 with the job.
#[utoipa::path(post, path = "/admin/users/import", tag = "jobs", security(("bearer" = [])),
    request_body(content = String, content_type = "text/csv"),
    responses((status = 202, body = Accepted), (status = 400, body = ProblemBody), (status = 403, body = ProblemBody),
        (status = 413, body = ProblemBody), (status = 415, body = ProblemBody)))]
pub async fn import_users(
    ctx: web::Data<Ctx>,
    req: HttpRequest,
    Authed(actor): Authed,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let csv_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/csv"))
        });
    if !csv_type {
        return Err(ApiError::new(
            Code::UnsupportedMediaType,
            "expected Content-Type: text/csv",
        ));
    }
    let body = read_limited(payload, MAX_CSV_BYTES).await?;
    let csv = String::from_utf8(body).map_err(|_| {
        ApiError::validation(vec![crate::http::error::FieldError {
            field: "body".to_owned(),
            message: "the CSV must be UTF-8".to_owned(),
        }])
    })?;
    if let Some(at) = csv.find('\0') {
        let line = csv[..at].matches('\n').count() + 1;
        return Err(crate::http::extract::nul_error(format!(
            "body (line {line})"
        )));
    }
    // Like the byte limit, the row limit is a size limit: 413 before anything is stored.
    if imports::count_rows(&csv) > MAX_ROWS {
        return Err(ApiError::new(
            Code::PayloadTooLarge,
            format!("the CSV has more than {MAX_ROWS} rows; split it into several imports"),
        ));
    }
    Ok(accepted(jobs::submit_user_import(&ctx, &actor, csv).await?))
}

/// Filters of the job list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobFilter {
    /// queued, started, progress, completed, failed or cancelled.
    #[param(schema_with = crate::http::dto::public_job_status_schema)]
    pub status: Option<String>,
    /// Job kind, e.g. `sales_report`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
}

/// Jobs the caller may see, newest first.
#[utoipa::path(get, path = "/jobs", tag = "jobs", security(("bearer" = [])), params(JobFilter, PageParams),
    responses((status = 200, body = inline(List<JobView>)), (status = 400, body = ProblemBody), (status = 401, body = ProblemBody)))]
pub async fn list_jobs(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    filter: web::Query<JobFilter>,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, ApiError> {
    let page = page.into_inner().validate()?;
    let out = jobs::list_jobs(
        &ctx,
        &actor,
        filter.status.as_deref(),
        filter.kind.as_deref(),
        page,
    )
    .await?;
    Ok(HttpResponse::Ok().json(List::from_page(out, |j| j)))
}

/// One job: status, progress, attempts, result summary.
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Job id")),
    responses((status = 200, body = inline(Data<JobView>)), (status = 401, body = ProblemBody), (status = 404, body = ProblemBody)))]
pub async fn get_job(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(data(jobs::get_job(&ctx, &actor, id.into_inner()).await?)))
}

/// Cancel a job: queued ones at once, running ones stop shortly; 409 when already finished.
#[utoipa::path(delete, path = "/jobs/{id}", tag = "jobs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Job id")),
    responses((status = 204), (status = 401, body = ProblemBody), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody)))]
pub async fn cancel_job(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    jobs::cancel_job(&ctx, &actor, id.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Download a completed job's result (CSV or JSON, per the job).
#[utoipa::path(get, path = "/jobs/{id}/result", tag = "jobs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Job id")),
    responses((status = 200, description = "The result file"), (status = 401, body = ProblemBody),
        (status = 404, body = ProblemBody), (status = 409, body = ProblemBody)))]
pub async fn job_result(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let (content_type, body) = jobs::job_result(&ctx, &actor, id).await?;
    let ext = if content_type.starts_with("text/csv") {
        "csv"
    } else {
        "json"
    };
    Ok(HttpResponse::Ok()
        .insert_header(("Content-Type", content_type))
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"job-{id}.{ext}\""),
        ))
        .body(body))
}

/// Live workers and their load (admins).
#[utoipa::path(get, path = "/admin/workers", tag = "jobs", security(("bearer" = [])),
    responses((status = 200, body = inline(Data<Vec<WorkerView>>)), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn list_workers(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(data(jobs::list_workers(&ctx, &actor).await?)))
}

/// Retry a dead (failed) job with a fresh set of attempts (admins).
#[utoipa::path(post, path = "/admin/jobs/{id}/retry", tag = "jobs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Job id")),
    responses((status = 200, body = inline(Data<JobView>)), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody),
        (status = 404, body = ProblemBody), (status = 409, body = ProblemBody)))]
pub async fn retry_job(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(data(jobs::retry_job(&ctx, &actor, id.into_inner()).await?)))
}

/// Registers the routes of this module.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/vendors/{id}/reports/sales",
        web::post().to(request_sales_report),
    )
    .route("/admin/users/import", web::post().to(import_users))
    .route("/jobs", web::get().to(list_jobs))
    .route("/jobs/{id}", web::get().to(get_job))
    .route("/jobs/{id}", web::delete().to(cancel_job))
    .route("/jobs/{id}/result", web::get().to(job_result))
    .route("/admin/workers", web::get().to(list_workers))
    .route("/admin/jobs/{id}/retry", web::post().to(retry_job));
}
