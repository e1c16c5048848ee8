//! The operator console's use cases (`/admin/console/*`): the overview, the job explorer
//! (keyset pages, bounded counts, bulk retry/cancel/delete), queues, cron schedules, the
//! audit trail and the outbox, for platform admins (everything) and campus admins (their
//! campus only; what belongs to another campus answers 404).
//!
//! Fast on big tables by construction (see `store::console`): no `COUNT(*)` over the finished
//! jobs, keyset pagination, bounded counts and scan windows.
//!
//! L2: depends on `store::{console, jobs, audit, outbox}`, `service::cron`, `app::Ctx`.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::Result;
use crate::app::Ctx;
use crate::domain::job::JobState;
use crate::domain::{Actor, DomainError, Role};
use crate::store::console::{self as store, JobFilter, JobSummaryRow, KeysetPage};
use crate::store::{audit, jobs};

/// Most rows a console page returns.
pub const MAX_PAGE: i64 = 200;
/// Bounded counts stop here ("more than 10 000").
pub const COUNT_CAP: i64 = 10_000;
/// Most jobs one bulk request changes; the console repeats the request with the returned
/// cursor until `done`.
pub const BULK_BATCH: i64 = 1_000;
/// Most ids a bulk request by selection may name.
pub const MAX_SELECTED: usize = 1_000;
/// Breakers every deployment may have (the others appear once a process used them).
const KNOWN_BREAKERS: [&str; 3] = ["push_fcm", "push_onesignal", "webhook"];
/// A worker that has not heartbeated for this long is not alive.
const WORKER_ALIVE_SECS: i32 = 60;

/// What an admin may see: None = every campus, Some = one campus. Others are refused.
pub fn admin_scope(actor: &Actor) -> Result<Option<Uuid>> {
    match actor.role {
        Role::PlatformAdmin => Ok(None),
        Role::CampusAdmin => Ok(Some(
            actor
                .campus_id
                .ok_or_else(|| anyhow::anyhow!("campus admin without campus"))?
                .into_inner(),
        )),
        Role::Student | Role::VendorStaff => {
            Err(DomainError::forbidden("the console is for administrators").into())
        }
    }
}

fn invalid(field: &str, message: &str) -> super::Error {
    DomainError::Invalid {
        field_errors: vec![(field.to_owned(), message.to_owned())],
    }
    .into()
}

/// A job filter as the API receives it (stored state names).
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    /// queued, running, completed, cancelled or dead.
    pub state: Option<String>,
    /// Kind.
    pub kind: Option<String>,
    /// Queue.
    pub queue: Option<String>,
    /// Text the payload must contain.
    pub search: Option<String>,
}

impl JobQuery {
    fn to_filter(&self, campus: Option<Uuid>) -> Result<JobFilter> {
        let states = match self.state.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => {
                let state: JobState = s.parse().map_err(|_| {
                    invalid(
                        "state",
                        "must be queued, running, completed, cancelled or dead",
                    )
                })?;
                Some(vec![state.as_str().to_owned()])
            }
        };
        let nonempty = |v: &Option<String>, field: &str| -> Result<Option<String>> {
            match v.as_deref().map(str::trim) {
                None | Some("") => Ok(None),
                Some(s) if s.len() > 200 => Err(invalid(field, "at most 200 characters")),
                Some(s) => Ok(Some(s.to_owned())),
            }
        };
        Ok(JobFilter {
            campus_id: campus,
            states,
            kind: nonempty(&self.kind, "kind")?,
            queue: nonempty(&self.queue, "queue")?,
            search: nonempty(&self.search, "q")?,
        })
    }
}

/// A job in a console list.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSummary {
    /// Id.
    pub id: Uuid,
    /// Kind.
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// Stored state: queued, running, completed, cancelled or dead.
    pub state: String,
    /// `high`, `normal` or `low`.
    pub priority: &'static str,
    /// Attempts started.
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// 0..=100.
    pub progress: i16,
    /// Last failure.
    pub last_error: Option<String>,
    /// Campus (null for system jobs).
    pub campus_id: Option<Uuid>,
    /// Enqueued.
    pub created_at: DateTime<Utc>,
    /// Not before.
    pub run_at: DateTime<Utc>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<JobSummaryRow> for JobSummary {
    fn from(r: JobSummaryRow) -> Self {
        Self {
            id: r.id,
            kind: r.kind,
            queue: r.queue,
            state: r.state.as_str().to_owned(),
            priority: crate::domain::job::Priority::from_i16(r.priority).as_str(),
            attempt: r.attempt,
            max_attempts: r.max_attempts,
            progress: r.progress,
            last_error: r.last_error,
            campus_id: r.campus_id,
            created_at: r.created_at,
            run_at: r.run_at,
            finished_at: r.finished_at,
        }
    }
}

/// A keyset page: rows, the cursor of the next page, and whether the page stopped at the
/// scan window (then `next` continues the search further back).
#[derive(Debug, Clone)]
pub struct Keyset<T, C> {
    /// Rows, newest first.
    pub data: Vec<T>,
    /// Cursor of the next page (exclusive), None at the end.
    pub next: Option<C>,
    /// True when fewer rows than asked came back because the scan window ended.
    pub window_exhausted: bool,
}

fn check_limit(limit: Option<i64>) -> Result<i64> {
    match limit {
        None => Ok(50),
        Some(l) if (1..=MAX_PAGE).contains(&l) => Ok(l),
        Some(_) => Err(invalid("limit", "must be between 1 and 200")),
    }
}

/// A page of jobs, newest first, strictly before `before`.
pub async fn list_jobs(
    ctx: &Ctx,
    actor: &Actor,
    query: &JobQuery,
    before: Option<Uuid>,
    limit: Option<i64>,
) -> Result<Keyset<JobSummary, Uuid>> {
    let campus = admin_scope(actor)?;
    let limit = check_limit(limit)?;
    let filter = query.to_filter(campus)?;
    let mut conn = ctx.db.read_conn().await?;
    let KeysetPage {
        rows,
        next,
        window_exhausted,
    } = store::list_jobs(&mut conn, &filter, before, limit).await?;
    Ok(Keyset {
        data: rows.into_iter().map(JobSummary::from).collect(),
        next,
        window_exhausted,
    })
}

/// A bounded count of the jobs matching a filter.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BoundedCount {
    /// Matching jobs, at most `cap`.
    pub count: i64,
    /// False when counting stopped at `cap` (there are more).
    pub exact: bool,
    /// Where counting stops.
    pub cap: i64,
}

/// Counts the jobs matching a filter, up to [`COUNT_CAP`].
pub async fn count_jobs(ctx: &Ctx, actor: &Actor, query: &JobQuery) -> Result<BoundedCount> {
    let filter = query.to_filter(admin_scope(actor)?)?;
    let mut conn = ctx.db.read_conn().await?;
    let (count, exact) = store::count_jobs(&mut conn, &filter, COUNT_CAP).await?;
    Ok(BoundedCount {
        count,
        exact,
        cap: COUNT_CAP,
    })
}

/// Everything about one job (the console's detail page).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobDetail {
    /// The list fields.
    #[serde(flatten)]
    pub summary: JobSummary,
    /// Handler input (jobs that carry a large document show a preview).
    pub payload: serde_json::Value,
    /// True when `payload` is a preview of a larger document.
    pub payload_truncated: bool,
    /// Deduplication key (cron ticks, one push per event).
    pub unique_key: Option<String>,
    /// Per-attempt time limit.
    pub timeout_secs: i32,
    /// Worker holding the lease.
    pub worker_id: Option<Uuid>,
    /// Lease end.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Human-readable progress.
    pub progress_message: Option<String>,
    /// Set when a cancel was asked of a running job.
    pub cancel_requested: bool,
    /// Result summary.
    pub result: Option<serde_json::Value>,
    /// True when `GET /jobs/{id}/result` has a file to download.
    pub has_result_file: bool,
    /// Submitter.
    pub owner_id: Option<Uuid>,
    /// Last attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Payloads above this many bytes of JSON are shown as a preview.
const PAYLOAD_PREVIEW_BYTES: usize = 16 * 1024;

/// One job, with payload, error, progress and result.
pub async fn get_job(ctx: &Ctx, actor: &Actor, id: Uuid) -> Result<JobDetail> {
    let campus = admin_scope(actor)?;
    let mut conn = ctx.db.read_conn().await?;
    let row = jobs::find(&mut conn, id)
        .await?
        .filter(|r| campus.is_none() || r.campus_id == campus)
        .ok_or(DomainError::NotFound { what: "job" })?;
    let text = row.payload.to_string();
    let (payload, payload_truncated) = if text.len() > PAYLOAD_PREVIEW_BYTES {
        let mut cut = PAYLOAD_PREVIEW_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        (serde_json::Value::String(text[..cut].to_owned()), true)
    } else {
        (row.payload.clone(), false)
    };
    Ok(JobDetail {
        summary: JobSummary {
            id: row.id,
            kind: row.kind.clone(),
            queue: row.queue.clone(),
            state: row.state.as_str().to_owned(),
            priority: crate::domain::job::Priority::from_i16(row.priority).as_str(),
            attempt: row.attempt,
            max_attempts: row.max_attempts,
            progress: row.progress,
            last_error: row.last_error.clone(),
            campus_id: row.campus_id,
            created_at: row.created_at,
            run_at: row.run_at,
            finished_at: row.finished_at,
        },
        payload,
        payload_truncated,
        unique_key: row.unique_key,
        timeout_secs: row.timeout_secs,
        worker_id: row.worker_id,
        lease_expires_at: row.lease_expires_at,
        progress_message: row.progress_message,
        cancel_requested: row.cancel_requested,
        result: row.result,
        has_result_file: row.result_content_type.is_some(),
        owner_id: row.owner_id,
        started_at: row.started_at,
        updated_at: row.updated_at,
    })
}

/// What a bulk request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BulkAction {
    /// Dead jobs go back to their queue with fresh attempts.
    Retry,
    /// Queued jobs are cancelled; running ones are told to stop.
    Cancel,
    /// Finished jobs (completed, cancelled, dead) are deleted.
    Delete,
}

impl BulkAction {
    fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Cancel => "cancel",
            Self::Delete => "delete",
        }
    }
}

/// Which jobs a bulk request covers.
#[derive(Debug, Clone)]
pub enum BulkTarget {
    /// These ids (at most [`MAX_SELECTED`]); ids outside the admin's campus are ignored.
    Selected(Vec<Uuid>),
    /// Every job matching the filter, newest first, [`BULK_BATCH`] per request, strictly
    /// before the cursor.
    Matching {
        /// The filter.
        query: JobQuery,
        /// Where the previous request stopped (None: from the newest).
        before: Option<Uuid>,
    },
}

/// What one bulk request did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkOutcome {
    /// The action.
    pub action: BulkAction,
    /// Jobs looked at in this request.
    pub examined: i64,
    /// Jobs the action changed (the others were not in a state it applies to).
    pub affected: i64,
    /// For a filter: send the request again with this cursor to continue; null when done.
    pub next: Option<Uuid>,
    /// True when nothing is left to do.
    pub done: bool,
}

/// Applies a bulk action to selected jobs or to one batch of the jobs matching a filter, and
/// writes one audit row for it. Retries and deletes are one statement each (then the
/// workers are woken); cancels go through the engine one job at a time (a queued flow step
/// tells its flow).
pub async fn bulk_jobs(
    ctx: &Ctx,
    actor: &Actor,
    action: BulkAction,
    target: BulkTarget,
    request_id: Option<String>,
) -> Result<BulkOutcome> {
    let campus = admin_scope(actor)?;
    let mut conn = ctx.db.conn().await?;
    let (ids, next, detail) = match &target {
        BulkTarget::Selected(ids) => {
            if ids.is_empty() || ids.len() > MAX_SELECTED {
                return Err(invalid("ids", "name between 1 and 1000 jobs"));
            }
            let ids = store::ids_in_campus(&mut conn, ids, campus).await?;
            (
                ids,
                None,
                serde_json::json!({ "selected": ids_len(&target) }),
            )
        }
        BulkTarget::Matching { query, before } => {
            let filter = query.to_filter(campus)?;
            let ids = store::batch_ids(&mut conn, &filter, *before, BULK_BATCH).await?;
            let next = if i64::try_from(ids.len()).unwrap_or(0) == BULK_BATCH {
                ids.last().copied()
            } else {
                None
            };
            let detail = serde_json::json!({
                "filter": { "state": query.state, "kind": query.kind, "queue": query.queue, "q": query.search },
            });
            (ids, next, detail)
        }
    };
    let examined = i64::try_from(ids.len()).unwrap_or(i64::MAX);
    let changed = match action {
        // Each cancel is its own transaction in the engine (a queued flow step tells its
        // flow); only jobs still in the hot table can be cancelled, so only they go there.
        BulkAction::Cancel => {
            let hot = store::hot_ids(&mut conn, &ids).await?;
            super::jobs::cancel_jobs(ctx, &hot)
                .await?
                .into_iter()
                .filter(|(_, r)| {
                    matches!(
                        r,
                        super::jobs::CancelResult::Cancelled | super::jobs::CancelResult::Requested
                    )
                })
                .map(|(id, _)| id)
                .collect()
        }
        BulkAction::Retry => jobs::retry_dead_many(&mut conn, &ids).await?,
        BulkAction::Delete => store::delete_finished_many(&mut conn, &ids).await?,
    };
    let affected = i64::try_from(changed.len()).unwrap_or(i64::MAX);
    if action == BulkAction::Retry {
        for queue in store::queues_of(&mut conn, &changed).await? {
            super::jobs::wake_workers(&mut conn, &queue).await;
        }
    }
    if affected > 0 {
        let mut detail = detail;
        detail["affected"] = affected.into();
        audit::insert(
            &mut conn,
            &audit::NewAuditRow {
                campus_id: campus,
                actor_id: Some(actor.user_id.into_inner()),
                action: format!("jobs.bulk_{}", action.as_str()),
                target_type: "job".to_owned(),
                target_id: if changed.len() == 1 {
                    changed[0].to_string()
                } else {
                    format!("{affected} jobs")
                },
                detail,
                request_id,
            },
        )
        .await?;
    }
    Ok(BulkOutcome {
        action,
        examined,
        affected,
        next,
        done: next.is_none(),
    })
}

fn ids_len(t: &BulkTarget) -> usize {
    match t {
        BulkTarget::Selected(ids) => ids.len(),
        BulkTarget::Matching { .. } => 0,
    }
}

/// A queue as the console shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueView {
    /// Name.
    pub name: String,
    /// Claims skip it (platform admins pause and resume queues).
    pub paused: bool,
    /// Queued and due now (the depth).
    pub ready: i64,
    /// Queued for later (delayed, or retries backing off).
    pub scheduled: i64,
    /// Running now (the concurrency in use).
    pub running: i64,
    /// Seconds the oldest due job has waited (0 when none).
    pub oldest_ready_secs: f64,
    /// Slots of the live workers that listen on this queue (platform-wide).
    pub worker_slots: i64,
}

/// Queue figures from the hot set (queued + running), campus-scoped for campus admins.
pub async fn list_queues(ctx: &Ctx, actor: &Actor) -> Result<Vec<QueueView>> {
    let campus = admin_scope(actor)?;
    let mut conn = ctx.db.read_conn().await?;
    let stats = store::queue_stats(&mut conn, campus).await?;
    let workers = jobs::list_live_workers(&mut conn, std::time::Duration::from_secs(60)).await?;
    let mut slots: BTreeMap<String, i64> = BTreeMap::new();
    for w in &workers {
        for q in &w.queues {
            *slots.entry(q.clone()).or_default() += i64::from(w.concurrency);
        }
    }
    let now = Utc::now();
    let mut out: Vec<QueueView> = stats
        .into_iter()
        .map(|s| QueueView {
            paused: s.paused,
            worker_slots: slots.remove(&s.queue).unwrap_or(0),
            oldest_ready_secs: s.oldest_ready.map_or(0.0, |t| secs_between(t, now)),
            name: s.queue,
            ready: s.ready,
            scheduled: s.scheduled,
            running: s.running,
        })
        .collect();
    // Queues with workers but no jobs right now.
    out.extend(slots.into_iter().map(|(name, worker_slots)| QueueView {
        name,
        paused: false,
        ready: 0,
        scheduled: 0,
        running: 0,
        oldest_ready_secs: 0.0,
        worker_slots,
    }));
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Pauses (claims skip it; running jobs go on) or resumes a queue: platform admins only,
/// audited. False when it already was in that state.
pub async fn set_queue_paused(
    ctx: &Ctx,
    actor: &Actor,
    queue: &str,
    paused: bool,
    request_id: Option<String>,
) -> Result<bool> {
    if admin_scope(actor)?.is_some() {
        return Err(DomainError::forbidden("queues are shared by every campus").into());
    }
    let changed = if paused {
        super::jobs::pause_queue(ctx, queue).await?
    } else {
        super::jobs::resume_queue(ctx, queue).await?
    };
    if changed {
        let mut conn = ctx.db.conn().await?;
        audit::insert(
            &mut conn,
            &audit::NewAuditRow {
                campus_id: None,
                actor_id: Some(actor.user_id.into_inner()),
                action: if paused {
                    "queue.paused"
                } else {
                    "queue.resumed"
                }
                .to_owned(),
                target_type: "queue".to_owned(),
                target_id: queue.to_owned(),
                detail: serde_json::json!({}),
                request_id,
            },
        )
        .await?;
    }
    Ok(changed)
}

fn secs_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    let ms = (to - from).num_milliseconds().max(0);
    // Milliseconds of an age fit f64 exactly far beyond any real age.
    #[expect(clippy::as_conversions, reason = "an age in ms is far below 2^53")]
    let secs = ms as f64 / 1000.0;
    secs
}

/// One minute of throughput of one kind on one queue.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MinutePoint {
    /// Start of the minute.
    pub minute: DateTime<Utc>,
    /// Kind.
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// Jobs completed in that minute.
    pub completed: i64,
    /// Attempts that failed and will be retried (null for a campus admin: counted per kind
    /// and queue only).
    pub failed: Option<i64>,
    /// Jobs that died (out of attempts, or failed permanently) in that minute.
    pub dead: i64,
}

/// Outbox figures.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboxFigures {
    /// Events waiting for (or backing off between) deliveries.
    pub pending: i64,
    /// Seconds the oldest pending event has waited (0 when none).
    pub lag_secs: f64,
    /// Events given up on (see the dead-events page).
    pub dead: i64,
}

/// Live workers' totals.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerFigures {
    /// Workers that heartbeated within a minute.
    pub alive: i64,
    /// Their slots.
    pub slots: i64,
    /// Jobs they were running at their last heartbeat.
    pub running: i64,
}

/// A circuit breaker's state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BreakerView {
    /// Name (`push_fcm`, `webhook`, …).
    pub name: String,
    /// closed, half_open or open.
    pub state: String,
}

/// The console's first page.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    /// When these figures were taken.
    pub at: DateTime<Utc>,
    /// Start of the throughput window (one hour, whole minutes).
    pub since: DateTime<Utc>,
    /// Completed and failed jobs per minute, kind and queue.
    pub throughput: Vec<MinutePoint>,
    /// Completed per second over the window.
    pub completed_per_sec: f64,
    /// Failed attempts (retried or dead) per second over the window.
    pub failed_per_sec: f64,
    /// Queue depth and age.
    pub queues: Vec<QueueView>,
    /// The outbox.
    pub outbox: OutboxFigures,
    /// The workers (platform-wide).
    pub workers: WorkerFigures,
    /// Circuit breakers (shared through Redis).
    pub breakers: Vec<BreakerView>,
    /// WebSocket connections open across the fleet (`socketsScope` = `fleet`: every `serve`
    /// instance reports its count through Redis every 5 s, `kv::sockets`), or on the instance
    /// that answered (`instance`: no Redis, or Redis unreachable).
    pub sockets_open: i64,
    /// `fleet` or `instance`: what `socketsOpen` counts.
    pub sockets_scope: String,
}

/// The overview: throughput of the last hour, queues, outbox, workers, breakers, sockets.
pub async fn overview(ctx: &Ctx, actor: &Actor) -> Result<Overview> {
    let campus = admin_scope(actor)?;
    let at = Utc::now();
    let since = (at - Duration::minutes(59))
        .duration_trunc(Duration::minutes(1))
        .map_err(anyhow::Error::from)?;
    let (throughput, outbox) = {
        let mut conn = ctx.db.read_conn().await?;
        let points: Vec<MinutePoint> = match campus {
            None => jobs::list_minute_counts(&mut conn, since)
                .await?
                .into_iter()
                .map(|r| MinutePoint {
                    minute: r.minute,
                    kind: r.kind,
                    queue: r.queue,
                    completed: r.completed,
                    failed: Some(r.failed),
                    dead: r.dead,
                })
                .collect(),
            // Jobs finishing now were created at most a job timeout or two ago: look at the
            // campus's jobs created since an hour before the window.
            Some(c) => store::campus_minute_counts(&mut conn, c, since, since - Duration::hours(1))
                .await?
                .into_iter()
                .map(|r| MinutePoint {
                    minute: r.minute,
                    kind: r.kind,
                    queue: r.queue,
                    completed: r.completed,
                    failed: None,
                    dead: r.dead,
                })
                .collect(),
        };
        let outbox = store::outbox_stats(&mut conn, campus).await?;
        (points, outbox)
    };
    let queues = list_queues(ctx, actor).await?;
    let workers = {
        let mut conn = ctx.db.read_conn().await?;
        store::worker_totals(&mut conn, WORKER_ALIVE_SECS).await?
    };
    for name in KNOWN_BREAKERS {
        ctx.breakers.get(name);
    }
    let breakers = ctx
        .breakers
        .statuses()
        .await
        .into_iter()
        .map(|b| BreakerView {
            name: b.name,
            state: match b.state.code() {
                0 => "closed",
                1 => "half_open",
                _ => "open",
            }
            .to_owned(),
        })
        .collect();
    let (sockets_open, sockets_scope) = sockets_open(ctx).await;
    let window = secs_between(since, at).max(1.0);
    let (done, failed) = throughput.iter().fold((0i64, 0i64), |(c, f), r| {
        (c + r.completed, f + r.failed.unwrap_or(0) + r.dead)
    });
    #[expect(
        clippy::as_conversions,
        reason = "job counts of an hour are far below 2^53"
    )]
    let (completed_per_sec, failed_per_sec) = (done as f64 / window, failed as f64 / window);
    Ok(Overview {
        at,
        since,
        throughput,
        completed_per_sec,
        failed_per_sec,
        queues,
        outbox: OutboxFigures {
            pending: outbox.pending,
            lag_secs: outbox.oldest.map_or(0.0, |t| secs_between(t, at)),
            dead: outbox.dead,
        },
        workers: WorkerFigures {
            alive: workers.alive,
            slots: workers.slots,
            running: workers.running,
        },
        breakers,
        sockets_open,
        sockets_scope: sockets_scope.to_owned(),
    })
}

/// Sockets open across the fleet, or on this instance when Redis cannot say: (count, scope).
async fn sockets_open(ctx: &Ctx) -> (i64, &'static str) {
    let own = ctx.hub.len();
    if let Some(kv) = &ctx.kv {
        match crate::kv::sockets::fleet_total(kv, own).await {
            Ok(n) => return (n, "fleet"),
            Err(e) => {
                tracing::debug!(error = %e, "fleet socket count unavailable; showing this instance's")
            }
        }
    }
    (i64::try_from(own).unwrap_or(i64::MAX), "instance")
}

/// Reports this instance's open sockets through Redis every `kv::sockets::REPORT_EVERY`
/// until shutdown, then removes its entry, so the overview can sum the fleet (issue 14).
/// Returns at once without Redis. Run by every role that serves WebSockets.
pub async fn report_sockets(ctx: Ctx, shutdown: crate::shutdown::Shutdown) {
    let Some(kv) = ctx.kv.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(crate::kv::sockets::REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = crate::kv::sockets::report(&kv, ctx.hub.len()).await {
            tracing::debug!(error = %e, "socket count not reported; the overview falls back");
        }
    }
    if let Err(e) = crate::kv::sockets::forget(&kv).await {
        // Harmless: the entry stops counting once it is older than `kv::sockets::FRESH`.
        tracing::debug!(error = %e, "socket count entry left to expire");
    }
}

/// A cron schedule with its next run and the outcome of its last tick.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronView {
    /// Name.
    pub name: String,
    /// Cron expression.
    pub expression: String,
    /// Time zone it is read in.
    pub time_zone: String,
    /// Job kind it enqueues.
    pub kind: String,
    /// Next tick.
    pub next_run_at: Option<DateTime<Utc>>,
    /// Last tick due.
    pub last_tick_at: Option<DateTime<Utc>>,
    /// That tick's job, if it was enqueued (and not yet pruned).
    pub last_job_id: Option<Uuid>,
    /// Its state.
    pub last_job_state: Option<String>,
}

/// The cron schedules (system-wide: platform admins only).
pub async fn list_cron(ctx: &Ctx, actor: &Actor) -> Result<Vec<CronView>> {
    if admin_scope(actor)?.is_some() {
        return Err(DomainError::forbidden("cron schedules are platform-wide").into());
    }
    let now = Utc::now();
    let mut conn = ctx.db.read_conn().await?;
    let mut out = Vec::new();
    for s in super::cron::schedules() {
        let last = super::cron::previous_tick(&s, now);
        let job = match last {
            Some(t) => jobs::find_by_unique_key(&mut conn, &super::cron::tick_key(&s, t)).await?,
            None => None,
        };
        out.push(CronView {
            name: s.name.to_owned(),
            expression: s.expression.to_owned(),
            time_zone: s.time_zone.name().to_owned(),
            kind: s.kind.to_owned(),
            next_run_at: super::cron::next_tick(&s, now),
            last_tick_at: last,
            last_job_id: job.as_ref().map(|j| j.id),
            last_job_state: job.map(|j| j.state.as_str().to_owned()),
        });
    }
    Ok(out)
}

/// A page of the audit trail, newest first, strictly before `before`.
pub async fn list_audit(
    ctx: &Ctx,
    actor: &Actor,
    actor_filter: Option<Uuid>,
    action: Option<&str>,
    before: Option<i64>,
    limit: Option<i64>,
) -> Result<Keyset<crate::service::audit::AuditEntry, i64>> {
    let campus = admin_scope(actor)?;
    let limit = check_limit(limit)?;
    let mut conn = ctx.db.read_conn().await?;
    let mut rows =
        store::list_audit(&mut conn, campus, actor_filter, action, before, limit + 1).await?;
    let next = page_next(&mut rows, limit, |r| r.id);
    Ok(Keyset {
        data: rows.into_iter().map(Into::into).collect(),
        next,
        window_exhausted: false,
    })
}

/// A page of dead (or pending) outbox events, newest first, strictly before `before`.
pub async fn list_outbox(
    ctx: &Ctx,
    actor: &Actor,
    dead: bool,
    before: Option<i64>,
    limit: Option<i64>,
) -> Result<Keyset<crate::service::events::OutboxEvent, i64>> {
    let campus = admin_scope(actor)?;
    let limit = check_limit(limit)?;
    let mut conn = ctx.db.read_conn().await?;
    let mut rows = store::list_outbox(&mut conn, dead, campus, before, limit + 1).await?;
    let next = page_next(&mut rows, limit, |r| r.id);
    Ok(Keyset {
        data: rows.into_iter().map(Into::into).collect(),
        next,
        window_exhausted: false,
    })
}

/// Trims a `limit + 1` fetch to `limit` and returns the next cursor when there was more.
fn page_next<T, C>(rows: &mut Vec<T>, limit: i64, key: impl Fn(&T) -> C) -> Option<C> {
    let limit = usize::try_from(limit).unwrap_or(0);
    if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(key)
    } else {
        None
    }
}
