//! The async-jobs API: submit (202 payload), get, list, cancel, result, retry, workers.
//! Owners see their jobs, campus admins their campus's, platform admins all.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use serde::Serialize;
use uuid::Uuid;

use super::{Page, PageRequest, Result};
use crate::app::Ctx;
use crate::domain::job::{JobState, Priority, kind, public_state, states_for_public};
use crate::domain::{Actor, DomainError, Role, access};
use crate::service::imports::{self, ImportSpec, MAX_CSV_BYTES, MAX_ROWS};
use crate::service::reports::SalesReportSpec;
use crate::store::jobs::{self as store, CancelOutcome, JobRow, NewJob};
use crate::store::{audit, campuses, import_uploads, vendors};

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    /// Job id.
    pub job_id: Uuid,
    /// Kind (`sales_report`, `bulk_import_users`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// queued, started, progress, completed, failed or cancelled.
    pub status: &'static str,
    /// 0..=100.
    pub progress: i16,
    /// Human-readable progress.
    pub progress_message: Option<String>,
    /// Attempts started.
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Last failure (also while a retry waits).
    pub last_error: Option<String>,
    /// `high`, `normal` or `low`.
    pub priority: &'static str,
    /// Result summary, once completed.
    pub result: Option<serde_json::Value>,
    /// True when `GET /jobs/{id}/result` has a file.
    pub has_result_file: bool,
    /// Enqueued.
    pub created_at: DateTime<Utc>,
    /// Not before.
    pub run_at: DateTime<Utc>,
    /// Last attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Rough expected duration in seconds.
    pub estimated_duration: u64,
}

fn estimated_secs(kind: &str) -> u64 {
    match kind {
        kind::SALES_REPORT => 10,
        kind::BULK_IMPORT_USERS => 60,
        _ => 1,
    }
}

/// Converts a row.
pub fn view(row: &JobRow) -> JobView {
    let state: JobState = row.state.parse().unwrap_or(JobState::Queued);
    JobView {
        job_id: row.id,
        kind: row.kind.clone(),
        status: public_state(state, row.progress),
        progress: row.progress,
        progress_message: row.progress_message.clone(),
        attempt: row.attempt,
        max_attempts: row.max_attempts,
        last_error: row.last_error.clone(),
        priority: Priority::from_i16(row.priority).as_str(),
        result: row.result.clone(),
        has_result_file: row.result_content_type.is_some(),
        created_at: row.created_at,
        run_at: row.run_at,
        started_at: row.started_at,
        finished_at: row.finished_at,
        estimated_duration: estimated_secs(&row.kind),
    }
}

fn new_job(kind: &str, payload: serde_json::Value, actor: &Actor, campus: Uuid) -> NewJob {
    NewJob {
        id: Uuid::now_v7(),
        kind: kind.to_owned(),
        queue: "default".to_owned(),
        priority: Priority::Normal.as_i16(),
        payload,
        unique_key: None,
        run_at: Utc::now(),
        max_attempts: 3,
        timeout_secs: 900,
        owner_id: Some(actor.user_id.into_inner()),
        campus_id: Some(campus),
    }
}

/// Enqueues the job and its audit row in one transaction.
async fn submit(
    ctx: &Ctx,
    actor: &Actor,
    job: NewJob,
    action: &str,
    upload: Option<&str>,
) -> Result<JobView> {
    let mut conn = ctx.db.conn().await?;
    let row = conn
        .transaction(async |conn| -> Result<JobRow> {
            let (row, _) = store::enqueue(conn, &job).await?;
            if let Some(csv) = upload {
                import_uploads::insert(conn, row.id, csv).await?;
            }
            audit::insert(
                conn,
                &audit::NewAuditRow {
                    campus_id: job.campus_id,
                    actor_id: Some(actor.user_id.into_inner()),
                    action: action.to_owned(),
                    target_type: "job".to_owned(),
                    target_id: row.id.to_string(),
                    detail: serde_json::json!({ "kind": row.kind }),
                    request_id: None,
                },
            )
            .await?;
            Ok(row)
        })
        .await?;
    Ok(view(&row))
}

/// Starts a sales report of a vendor (its staff or its campus admin).
pub async fn submit_sales_report(
    ctx: &Ctx,
    actor: &Actor,
    spec: SalesReportSpec,
) -> Result<JobView> {
    spec.validate()?;
    let vendor = {
        let mut conn = ctx.db.read_conn().await?;
        vendors::find(&mut conn, spec.vendor_id)
            .await?
            .filter(|v| access::can_read_campus(actor, v.campus_id.into()))
            .ok_or(DomainError::NotFound { what: "vendor" })?
    };
    access::can_manage_menu(actor, vendor.id.into(), vendor.campus_id.into()).map_err(|_| {
        DomainError::forbidden("only the vendor's staff or the campus admin run its reports")
    })?;
    let payload = serde_json::to_value(&spec).map_err(anyhow::Error::from)?;
    submit(
        ctx,
        actor,
        new_job(kind::SALES_REPORT, payload, actor, vendor.campus_id),
        "report.requested",
        None,
    )
    .await
}

/// Starts a bulk import of users into the caller's campus (campus admins).
pub async fn submit_user_import(ctx: &Ctx, actor: &Actor, csv: String) -> Result<JobView> {
    let campus_id = match actor.role {
        Role::CampusAdmin => actor
            .campus_id
            .ok_or_else(|| anyhow::anyhow!("campus admin without campus"))?
            .into_inner(),
        _ => return Err(DomainError::forbidden("only campus admins import users").into()),
    };
    if csv.len() > MAX_CSV_BYTES {
        return Err(DomainError::Invalid {
            field_errors: vec![("body".to_owned(), format!("at most {MAX_CSV_BYTES} bytes"))],
        }
        .into());
    }
    if csv.trim().is_empty() {
        return Err(DomainError::Invalid {
            field_errors: vec![("body".to_owned(), "the CSV is empty".to_owned())],
        }
        .into());
    }
    let rows = imports::count_rows(&csv);
    if rows > MAX_ROWS {
        return Err(DomainError::Invalid {
            field_errors: vec![(
                "body".to_owned(),
                format!("at most {MAX_ROWS} rows per import; split the file"),
            )],
        }
        .into());
    }
    {
        let mut conn = ctx.db.read_conn().await?;
        campuses::find(&mut conn, campus_id)
            .await?
            .ok_or(DomainError::NotFound { what: "campus" })?;
    }
    let spec = ImportSpec {
        campus_id,
        rows: u64::try_from(rows).unwrap_or(u64::MAX),
    };
    let payload = serde_json::to_value(spec).map_err(anyhow::Error::from)?;
    submit(
        ctx,
        actor,
        new_job(kind::BULK_IMPORT_USERS, payload, actor, campus_id),
        "users.import_requested",
        Some(&csv),
    )
    .await
}

/// True when the actor may see the job.
fn can_see(actor: &Actor, row: &JobRow) -> bool {
    match actor.role {
        Role::PlatformAdmin => true,
        Role::CampusAdmin => {
            row.campus_id.is_some() && row.campus_id == actor.campus_id.map(|c| c.into_inner())
        }
        Role::Student | Role::VendorStaff => row.owner_id == Some(actor.user_id.into_inner()),
    }
}

async fn visible(ctx: &Ctx, actor: &Actor, id: Uuid) -> Result<JobRow> {
    let mut conn = ctx.db.conn().await?;
    Ok(store::find(&mut conn, id)
        .await?
        .filter(|r| can_see(actor, r))
        .ok_or(DomainError::NotFound { what: "job" })?)
}

/// One job.
pub async fn get_job(ctx: &Ctx, actor: &Actor, id: Uuid) -> Result<JobView> {
    Ok(view(&visible(ctx, actor, id).await?))
}

/// Jobs the actor may see, newest first, filtered by public status and kind.
pub async fn list_jobs(
    ctx: &Ctx,
    actor: &Actor,
    status: Option<&str>,
    kind: Option<&str>,
    page: PageRequest,
) -> Result<Page<JobView>> {
    let states: Option<Vec<String>> = match status {
        None => None,
        Some(s) => Some(
            states_for_public(s)
                .ok_or_else(|| DomainError::Invalid {
                    field_errors: vec![(
                        "status".to_owned(),
                        "must be queued, started, progress, completed, failed or cancelled"
                            .to_owned(),
                    )],
                })?
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
        ),
    };
    let scope = match actor.role {
        Role::PlatformAdmin => store::Scope::All,
        Role::CampusAdmin => store::Scope::Campus(
            actor
                .campus_id
                .ok_or_else(|| anyhow::anyhow!("campus admin without campus"))?
                .into_inner(),
        ),
        Role::Student | Role::VendorStaff => store::Scope::Owner(actor.user_id.into_inner()),
    };
    let mut conn = ctx.db.read_conn().await?;
    let (rows, total) = store::list(
        &mut conn,
        scope,
        states.as_deref(),
        kind,
        page.limit,
        page.offset,
    )
    .await?;
    Ok(Page::new(rows.iter().map(view).collect(), total, page))
}

/// Cancels a job: a queued one at once; a running one is told to stop (it ends cancelled);
/// a finished one is a conflict.
pub async fn cancel_job(ctx: &Ctx, actor: &Actor, id: Uuid) -> Result<()> {
    visible(ctx, actor, id).await?;
    let mut conn = ctx.db.conn().await?;
    let outcome = conn
        .transaction(async |conn| -> Result<CancelOutcome> { Ok(store::cancel(conn, id).await?) })
        .await?;
    match outcome {
        CancelOutcome::Cancelled | CancelOutcome::Requested => Ok(()),
        CancelOutcome::AlreadyFinished => {
            Err(DomainError::conflict("the job has already finished").into())
        }
        CancelOutcome::NotFound => Err(DomainError::NotFound { what: "job" }.into()),
    }
}

/// A finished job's file: (media type, body).
pub async fn job_result(ctx: &Ctx, actor: &Actor, id: Uuid) -> Result<(String, Vec<u8>)> {
    let row = visible(ctx, actor, id).await?;
    if row.state != JobState::Completed.as_str() {
        return Err(DomainError::conflict(format!(
            "the job is {}, its result is not ready",
            public_state(row.state.parse().unwrap_or(JobState::Queued), row.progress)
        ))
        .into());
    }
    let mut conn = ctx.db.conn().await?;
    match store::find_result_body(&mut conn, id).await? {
        Some((Some(ct), Some(body))) => Ok((ct, body)),
        _ => {
            let summary = row.result.unwrap_or(serde_json::Value::Null);
            Ok((
                "application/json".to_owned(),
                serde_json::to_vec(&summary).map_err(anyhow::Error::from)?,
            ))
        }
    }
}

/// Puts a dead job back in the queue (admins).
pub async fn retry_job(ctx: &Ctx, actor: &Actor, id: Uuid) -> Result<JobView> {
    if !matches!(actor.role, Role::CampusAdmin | Role::PlatformAdmin) {
        return Err(DomainError::forbidden("only administrators retry jobs").into());
    }
    visible(ctx, actor, id).await?;
    let mut conn = ctx.db.conn().await?;
    if !store::retry_dead(&mut conn, id).await? {
        return Err(DomainError::conflict("only dead (failed) jobs can be retried").into());
    }
    let row = store::find(&mut conn, id)
        .await?
        .ok_or(DomainError::NotFound { what: "job" })?;
    Ok(view(&row))
}

/// A live worker.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerView {
    /// Worker id.
    pub id: Uuid,
    /// Host.
    pub host: String,
    /// Process id.
    pub pid: i32,
    /// Queues.
    pub queues: Vec<String>,
    /// Slots.
    pub concurrency: i32,
    /// Jobs running at the last heartbeat.
    pub running: i32,
    /// Started.
    pub started_at: DateTime<Utc>,
    /// Last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
}

/// Live workers and their load (platform and campus admins).
pub async fn list_workers(ctx: &Ctx, actor: &Actor) -> Result<Vec<WorkerView>> {
    if !matches!(actor.role, Role::CampusAdmin | Role::PlatformAdmin) {
        return Err(DomainError::forbidden("only administrators list workers").into());
    }
    let mut conn = ctx.db.conn().await?;
    let rows = store::list_live_workers(&mut conn, Duration::from_secs(60)).await?;
    Ok(rows
        .into_iter()
        .map(|w| WorkerView {
            id: w.id,
            host: w.host,
            pid: w.pid,
            queues: w.queues,
            concurrency: w.concurrency,
            running: w.running,
            started_at: w.started_at,
            heartbeat_at: w.heartbeat_at,
        })
        .collect())
}
