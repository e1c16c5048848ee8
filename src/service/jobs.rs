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
    JobView {
        job_id: row.id,
        kind: row.kind.clone(),
        status: public_state(row.state, row.progress),
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
    wake_workers(&mut conn, &row.queue).await;
    Ok(view(&row))
}

/// Wakes the workers after a commit that made jobs due (`NOTIFY itsur_jobs` on its own, so
/// the notify lock is never taken inside a business transaction). Best effort: workers poll.
pub async fn wake_workers(conn: &mut diesel_async::AsyncPgConnection, queue: &str) {
    if let Err(e) = store::notify_workers(conn, queue).await {
        tracing::debug!(error = %e, "job wake-up not sent; workers poll");
    }
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
        vendors::find(&mut conn, spec.vendor_id.into())
            .await?
            .filter(|v| access::can_read_campus(actor, v.campus_id))
            .ok_or(DomainError::NotFound { what: "vendor" })?
    };
    access::can_manage_menu(actor, vendor.id, vendor.campus_id).map_err(|_| {
        DomainError::forbidden("only the vendor's staff or the campus admin run its reports")
    })?;
    let payload = serde_json::to_value(&spec).map_err(anyhow::Error::from)?;
    submit(
        ctx,
        actor,
        new_job(
            kind::SALES_REPORT,
            payload,
            actor,
            vendor.campus_id.into_inner(),
        ),
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
    if let Err(why) = imports::check_header(&csv) {
        return Err(DomainError::Invalid {
            field_errors: vec![("body".to_owned(), why)],
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
    let outcome = cancel_in_tx(ctx, &mut conn, id).await?;
    match outcome {
        CancelOutcome::Cancelled(_) | CancelOutcome::Requested => Ok(()),
        CancelOutcome::AlreadyFinished => {
            Err(DomainError::conflict("the job has already finished").into())
        }
        CancelOutcome::NotFound => Err(DomainError::NotFound { what: "job" }.into()),
    }
}

/// Cancels one job in its own transaction, calling the flow hook when a queued flow-step
/// job is cancelled at once.
async fn cancel_in_tx(
    ctx: &Ctx,
    conn: &mut diesel_async::AsyncPgConnection,
    id: Uuid,
) -> Result<CancelOutcome> {
    let hooks = ctx.job_hooks.clone();
    conn.transaction(async |conn| -> Result<CancelOutcome> {
        let outcome = store::cancel(conn, id).await?;
        if let CancelOutcome::Cancelled(t) = &outcome {
            hooks.call(conn, std::slice::from_ref(t)).await?;
        }
        Ok(outcome)
    })
    .await
}

/// A finished job's file: (media type, body).
pub async fn job_result(ctx: &Ctx, actor: &Actor, id: Uuid) -> Result<(String, Vec<u8>)> {
    let row = visible(ctx, actor, id).await?;
    if row.state != JobState::Completed {
        return Err(DomainError::conflict(format!(
            "the job is {}, its result is not ready",
            public_state(row.state, row.progress)
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
    wake_workers(&mut conn, &row.queue).await;
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

/// A queue as operators see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueView {
    /// Queue name.
    pub queue: String,
    /// Claims skip it while paused.
    pub paused: bool,
    /// Queued jobs (due or delayed).
    pub queued: i64,
    /// Jobs claimed or running.
    pub running: i64,
    /// Seconds the oldest due job has waited (0 when none).
    pub oldest_queued_secs: f64,
}

/// Every queue with jobs or a pause flag (reads the hot table only).
pub async fn list_queues(ctx: &Ctx) -> Result<Vec<QueueView>> {
    let mut conn = ctx.db.conn().await?;
    let now = Utc::now();
    Ok(store::list_queues(&mut conn)
        .await?
        .into_iter()
        .map(|q| QueueView {
            oldest_queued_secs: q.oldest_due_at.map_or(0.0, |t| {
                let ms = (now - t).num_milliseconds().max(0);
                #[expect(clippy::as_conversions, clippy::cast_precision_loss, reason = "an age")]
                let secs = ms as f64 / 1000.0;
                secs
            }),
            queue: q.queue,
            paused: q.paused,
            queued: q.queued,
            running: q.running,
        })
        .collect())
}

/// Pauses a queue: claims skip it from the next claim on (running jobs go on). True when
/// it was running.
pub async fn pause_queue(ctx: &Ctx, queue: &str) -> Result<bool> {
    validate_queue(queue)?;
    let mut conn = ctx.db.conn().await?;
    Ok(store::set_queue_paused(&mut conn, queue, true).await?)
}

/// Resumes a paused queue and wakes the workers. True when it was paused.
pub async fn resume_queue(ctx: &Ctx, queue: &str) -> Result<bool> {
    validate_queue(queue)?;
    let mut conn = ctx.db.conn().await?;
    let changed = store::set_queue_paused(&mut conn, queue, false).await?;
    if changed {
        wake_workers(&mut conn, queue).await;
    }
    Ok(changed)
}

fn validate_queue(queue: &str) -> Result<()> {
    if queue.is_empty() || queue.len() > 100 {
        return Err(DomainError::Invalid {
            field_errors: vec![("queue".to_owned(), "1 to 100 characters".to_owned())],
        }
        .into());
    }
    Ok(())
}

/// Jobs ended in one minute, kind and queue.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MinuteCountView {
    /// Start of the minute.
    pub minute: DateTime<Utc>,
    /// Job kind.
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// Completed.
    pub completed: i64,
    /// Attempts that failed and will be retried.
    pub failed: i64,
    /// Jobs that died.
    pub dead: i64,
}

/// Per-minute counters of the last hour, oldest first (maintained by the workers as they
/// record outcomes; no scan of the job tables).
pub async fn job_counts_last_hour(ctx: &Ctx) -> Result<Vec<MinuteCountView>> {
    let mut conn = ctx.db.read_conn().await?;
    let since = Utc::now() - chrono::Duration::hours(1);
    Ok(store::list_minute_counts(&mut conn, since)
        .await?
        .into_iter()
        .map(|c| MinuteCountView {
            minute: c.minute,
            kind: c.kind,
            queue: c.queue,
            completed: c.completed,
            failed: c.failed,
            dead: c.dead,
        })
        .collect())
}

/// Enqueues `count` jobs of one kind in one statement (`itsur jobs enqueue`), then wakes
/// the workers; returns how many were inserted.
pub async fn enqueue_bulk(
    ctx: &Ctx,
    kind: &str,
    payload: serde_json::Value,
    queue: &str,
    priority: Priority,
    count: usize,
) -> Result<usize> {
    validate_queue(queue)?;
    let now = Utc::now();
    let batch: Vec<NewJob> = (0..count)
        .map(|_| NewJob {
            id: Uuid::now_v7(),
            kind: kind.to_owned(),
            queue: queue.to_owned(),
            priority: priority.as_i16(),
            payload: payload.clone(),
            unique_key: None,
            run_at: now,
            max_attempts: 5,
            timeout_secs: 300,
            owner_id: None,
            campus_id: None,
        })
        .collect();
    let mut conn = ctx.db.conn().await?;
    let n = conn
        .transaction(async |conn| -> Result<usize> { Ok(store::enqueue_many(conn, &batch).await?) })
        .await?;
    wake_workers(&mut conn, queue).await;
    Ok(n)
}

/// Jobs per state, and the queues (`itsur jobs stats`).
#[derive(Debug, Clone, Serialize)]
pub struct JobStats {
    /// Waiting to run.
    pub queued: i64,
    /// Claimed or running.
    pub running: i64,
    /// Completed (kept until pruned).
    pub completed: i64,
    /// Dead.
    pub dead: i64,
    /// Cancelled.
    pub cancelled: i64,
    /// Per queue.
    pub queues: Vec<QueueView>,
}

/// Exact counts by state across the hot table and the history, and the queues.
pub async fn job_stats(ctx: &Ctx) -> Result<JobStats> {
    let mut stats = JobStats {
        queued: 0,
        running: 0,
        completed: 0,
        dead: 0,
        cancelled: 0,
        queues: list_queues(ctx).await?,
    };
    let mut conn = ctx.db.conn().await?;
    for (state, n) in store::count_by_state(&mut conn).await? {
        match state {
            JobState::Queued => stats.queued += n,
            JobState::Running => stats.running += n,
            JobState::Completed => stats.completed += n,
            JobState::Dead => stats.dead += n,
            JobState::Cancelled => stats.cancelled += n,
        }
    }
    Ok(stats)
}

/// Puts every dead job (of `kind`) back in the queue (`itsur jobs retry --dead`), then wakes
/// the workers; returns how many.
pub async fn retry_dead_jobs(ctx: &Ctx, kind: Option<&str>) -> Result<usize> {
    let mut conn = ctx.db.conn().await?;
    let n = store::retry_dead_all(&mut conn, kind).await?;
    if n > 0 {
        wake_workers(&mut conn, "*").await;
    }
    Ok(n)
}

/// What an operator's cancel did to one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelResult {
    /// It was queued and is now cancelled.
    Cancelled,
    /// It is running; its worker was told to stop.
    Requested,
    /// It had already finished.
    AlreadyFinished,
    /// No such job.
    NotFound,
}

/// Cancels jobs by id for an operator (`itsur jobs cancel`), each in its own transaction
/// (with the flow hook for flow-step jobs).
pub async fn cancel_jobs(ctx: &Ctx, ids: &[Uuid]) -> Result<Vec<(Uuid, CancelResult)>> {
    let mut conn = ctx.db.conn().await?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let r = match cancel_in_tx(ctx, &mut conn, *id).await? {
            CancelOutcome::Cancelled(_) => CancelResult::Cancelled,
            CancelOutcome::Requested => CancelResult::Requested,
            CancelOutcome::AlreadyFinished => CancelResult::AlreadyFinished,
            CancelOutcome::NotFound => CancelResult::NotFound,
        };
        out.push((*id, r));
    }
    Ok(out)
}
