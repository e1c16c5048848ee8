//! `jobs` and `workers`: the durable queue. Enqueue runs in the caller's transaction (a job
//! and the business row commit or roll back together) and fires `NOTIFY itsur_jobs` at
//! commit; claims use `FOR UPDATE SKIP LOCKED` on the partial index of queued jobs; every
//! write a worker makes is fenced by (worker id, attempt), so a late completion from a worker
//! whose lease expired changes nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::{jobs, workers};

/// NOTIFY channel for "new work is available"; the payload is the queue name.
pub const JOBS_CHANNEL: &str = "itsur_jobs";
/// NOTIFY channel for "cancel this running job"; the payload is the job id.
pub const CANCEL_CHANNEL: &str = "itsur_job_cancel";

/// A job without its (possibly large) result body.
#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = jobs)]
pub struct JobRow {
    /// Id.
    pub id: Uuid,
    /// Handler name (`domain::job::kind`).
    pub kind: String,
    /// Queue a worker must listen on to claim it.
    pub queue: String,
    /// 0 high, 1 normal, 2 low.
    pub priority: i16,
    /// Stored state (`domain::job::JobState`).
    pub state: String,
    /// Handler input.
    pub payload: serde_json::Value,
    /// Deduplication key.
    pub unique_key: Option<String>,
    /// Not before.
    pub run_at: DateTime<Utc>,
    /// Attempts started so far.
    pub attempt: i32,
    /// Attempts allowed before the job is dead.
    pub max_attempts: i32,
    /// Per-attempt time limit.
    pub timeout_secs: i32,
    /// Worker holding the lease.
    pub worker_id: Option<Uuid>,
    /// Lease end; a running job past it is rescued.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// 0..=100.
    pub progress: i16,
    /// Human-readable progress.
    pub progress_message: Option<String>,
    /// Set by DELETE /jobs/{id} on a running job.
    pub cancel_requested: bool,
    /// Last failure.
    pub last_error: Option<String>,
    /// JSON result summary.
    pub result: Option<serde_json::Value>,
    /// Media type of the downloadable result, if any.
    pub result_content_type: Option<String>,
    /// Who submitted it.
    pub owner_id: Option<Uuid>,
    /// Campus it belongs to.
    pub campus_id: Option<Uuid>,
    /// Enqueued.
    pub created_at: DateTime<Utc>,
    /// Last attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A job to enqueue.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = jobs)]
pub struct NewJob {
    /// Id (UUIDv7).
    pub id: Uuid,
    /// Handler name.
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// 0 high, 1 normal, 2 low.
    pub priority: i16,
    /// Handler input.
    pub payload: serde_json::Value,
    /// Deduplication key.
    pub unique_key: Option<String>,
    /// Not before.
    pub run_at: DateTime<Utc>,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Per-attempt time limit.
    pub timeout_secs: i32,
    /// Submitter.
    pub owner_id: Option<Uuid>,
    /// Campus.
    pub campus_id: Option<Uuid>,
}

async fn notify(conn: &mut AsyncPgConnection, channel: &str, payload: &str) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_notify($1, $2)")
        .bind::<Text, _>(channel)
        .bind::<Text, _>(payload)
        .execute(conn)
        .await
        .map(drop)
}

/// Enqueues a job in the caller's transaction. With a `unique_key` already present, nothing
/// is inserted and the existing job is returned (`false`).
pub async fn enqueue(conn: &mut AsyncPgConnection, job: &NewJob) -> QueryResult<(JobRow, bool)> {
    let inserted: Option<JobRow> = diesel::insert_into(jobs::table)
        .values(job)
        .on_conflict(jobs::unique_key)
        .filter_target(jobs::unique_key.is_not_null())
        .do_nothing()
        .returning(JobRow::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    if let Some(row) = inserted {
        metrics::counter!("jobs_enqueued_total", "kind" => row.kind.clone()).increment(1);
        if row.run_at <= Utc::now() {
            notify(conn, JOBS_CHANNEL, &row.queue).await?;
        }
        return Ok((row, true));
    }
    let existing = jobs::table
        .filter(jobs::unique_key.eq(&job.unique_key))
        .select(JobRow::as_select())
        .first(conn)
        .await?;
    Ok((existing, false))
}

/// Enqueues many jobs in one statement (duplicates of unique keys are skipped); returns how
/// many were inserted.
pub async fn enqueue_many(conn: &mut AsyncPgConnection, batch: &[NewJob]) -> QueryResult<usize> {
    let mut inserted = 0;
    // Postgres caps bind parameters at 65535 per statement: 11 columns × 5000 rows fits.
    for chunk in batch.chunks(5000) {
        inserted += diesel::insert_into(jobs::table)
            .values(chunk)
            .on_conflict(jobs::unique_key)
            .filter_target(jobs::unique_key.is_not_null())
            .do_nothing()
            .execute(conn)
            .await?;
    }
    if let Some(first) = batch.first() {
        // Counted under the first job's kind: bulk batches are of one kind in practice.
        metrics::counter!("jobs_enqueued_total", "kind" => first.kind.clone())
            .increment(u64::try_from(inserted).unwrap_or(0));
    }
    let mut queues: Vec<&str> = batch.iter().map(|j| j.queue.as_str()).collect();
    queues.sort_unstable();
    queues.dedup();
    for q in queues {
        notify(conn, JOBS_CHANNEL, q).await?;
    }
    Ok(inserted)
}

/// Claims up to `limit` due jobs of `queues`, highest priority then oldest first, skipping
/// rows other workers are claiming, and leases them to `worker_id` for `lease`.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    queues: &[String],
    limit: i64,
    worker_id: Uuid,
    lease: Duration,
) -> QueryResult<Vec<JobRow>> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    diesel::sql_query(
        "WITH next AS ( \
             SELECT id FROM jobs \
             WHERE state = 'queued' AND run_at <= now() AND queue = ANY($1) \
             ORDER BY priority, run_at, id \
             LIMIT $2 \
             FOR UPDATE SKIP LOCKED) \
         UPDATE jobs j SET state = 'running', attempt = j.attempt + 1, worker_id = $3, \
             lease_expires_at = now() + $4 * interval '1 millisecond', started_at = now(), \
             progress = 0, progress_message = NULL, updated_at = now() \
         FROM next WHERE j.id = next.id \
         RETURNING j.id, j.kind, j.queue, j.priority, j.state, j.payload, j.unique_key, j.run_at, \
             j.attempt, j.max_attempts, j.timeout_secs, j.worker_id, j.lease_expires_at, \
             j.progress, j.progress_message, j.cancel_requested, j.last_error, j.result, \
             j.result_content_type, j.owner_id, j.campus_id, j.created_at, j.started_at, \
             j.finished_at, j.updated_at",
    )
    .bind::<Array<Text>, _>(queues)
    .bind::<BigInt, _>(limit)
    .bind::<SqlUuid, _>(worker_id)
    .bind::<BigInt, _>(lease_ms)
    .load(conn)
    .await
}

#[derive(QueryableByName)]
struct CancelFlag {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Bool)]
    cancel_requested: bool,
}

/// Extends the lease of this worker's running jobs; returns the ids whose cancellation was
/// requested, and (implicitly, by absence) the ones it no longer holds.
pub async fn heartbeat(
    conn: &mut AsyncPgConnection,
    worker_id: Uuid,
    job_ids: &[Uuid],
    lease: Duration,
) -> QueryResult<Vec<(Uuid, bool)>> {
    if job_ids.is_empty() {
        return Ok(Vec::new());
    }
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let rows: Vec<CancelFlag> = diesel::sql_query(
        "UPDATE jobs SET lease_expires_at = now() + $3 * interval '1 millisecond' \
         WHERE id = ANY($2) AND worker_id = $1 AND state = 'running' \
         RETURNING id, cancel_requested",
    )
    .bind::<SqlUuid, _>(worker_id)
    .bind::<Array<SqlUuid>, _>(job_ids)
    .bind::<BigInt, _>(lease_ms)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.id, r.cancel_requested))
        .collect())
}

/// Fences a worker's write: the job is still running under this worker and attempt.
macro_rules! held {
    ($id:expr, $worker:expr, $attempt:expr) => {
        jobs::table
            .filter(jobs::id.eq($id))
            .filter(jobs::worker_id.eq($worker))
            .filter(jobs::attempt.eq($attempt))
            .filter(jobs::state.eq("running"))
    };
}

/// Records progress (persisted; the caller throttles).
pub async fn set_progress(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    worker_id: Uuid,
    attempt: i32,
    pct: i16,
    message: Option<&str>,
) -> QueryResult<bool> {
    let n = diesel::update(held!(id, worker_id, attempt))
        .set((
            jobs::progress.eq(pct.clamp(0, 100)),
            jobs::progress_message.eq(message),
            jobs::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// A job's outcome as the worker reports it.
#[derive(Debug, Clone)]
pub enum Finish<'a> {
    /// Completed with a JSON summary and an optional downloadable body.
    Completed {
        /// Summary.
        result: serde_json::Value,
        /// Downloadable body and its media type.
        body: Option<(&'a str, &'a [u8])>,
    },
    /// Failed; retry at `run_at`.
    Retry {
        /// Why.
        error: &'a str,
        /// When.
        run_at: DateTime<Utc>,
    },
    /// Failed for good.
    Dead {
        /// Why.
        error: &'a str,
    },
    /// Stopped on request.
    Cancelled,
    /// Not finished: the worker is stopping; another worker takes it (the attempt is not
    /// counted).
    HandBack,
}

/// Applies a worker's outcome; false when the worker no longer held the job (its lease
/// expired and the job was rescued): a late completion is ignored.
pub async fn finish(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    worker_id: Uuid,
    attempt: i32,
    outcome: Finish<'_>,
) -> QueryResult<bool> {
    let target = held!(id, worker_id, attempt);
    let now = diesel::dsl::now;
    let n = match outcome {
        Finish::Completed { result, body } => {
            let (content_type, bytes) = body.map_or((None, None), |(ct, b)| (Some(ct), Some(b)));
            diesel::update(target)
                .set((
                    jobs::state.eq("completed"),
                    jobs::progress.eq(100),
                    jobs::result.eq(result),
                    jobs::result_content_type.eq(content_type),
                    jobs::result_body.eq(bytes),
                    jobs::finished_at.eq(now),
                    jobs::lease_expires_at.eq(None::<DateTime<Utc>>),
                    jobs::updated_at.eq(now),
                ))
                .execute(conn)
                .await?
        }
        Finish::Retry { error, run_at } => {
            diesel::update(target)
                .set((
                    jobs::state.eq("queued"),
                    jobs::last_error.eq(error),
                    jobs::run_at.eq(run_at),
                    jobs::worker_id.eq(None::<Uuid>),
                    jobs::lease_expires_at.eq(None::<DateTime<Utc>>),
                    jobs::updated_at.eq(now),
                ))
                .execute(conn)
                .await?
        }
        Finish::Dead { error } => {
            diesel::update(target)
                .set((
                    jobs::state.eq("dead"),
                    jobs::last_error.eq(error),
                    jobs::finished_at.eq(now),
                    jobs::lease_expires_at.eq(None::<DateTime<Utc>>),
                    jobs::updated_at.eq(now),
                ))
                .execute(conn)
                .await?
        }
        Finish::Cancelled => {
            diesel::update(target)
                .set((
                    jobs::state.eq("cancelled"),
                    jobs::finished_at.eq(now),
                    jobs::lease_expires_at.eq(None::<DateTime<Utc>>),
                    jobs::updated_at.eq(now),
                ))
                .execute(conn)
                .await?
        }
        Finish::HandBack => {
            diesel::update(target)
                .set((
                    jobs::state.eq("queued"),
                    jobs::attempt.eq(jobs::attempt - 1),
                    jobs::run_at.eq(now),
                    jobs::worker_id.eq(None::<Uuid>),
                    jobs::lease_expires_at.eq(None::<DateTime<Utc>>),
                    jobs::progress.eq(0),
                    jobs::updated_at.eq(now),
                ))
                .execute(conn)
                .await?
        }
    };
    Ok(n == 1)
}

/// The common end of a job — completed, with its owner's `job.status_changed` event — as ONE
/// statement (a CTE writes the event only when the update matched), instead of a
/// transaction of four round trips: at saturation the worker spends its time here. Same
/// fencing as [`finish`]: false when the worker no longer held the job.
pub async fn complete(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    worker_id: Uuid,
    attempt: i32,
    result: &serde_json::Value,
    body: Option<(&str, &[u8])>,
    event: &super::outbox::NewOutboxEventRow,
) -> QueryResult<bool> {
    let (content_type, bytes) = body.map_or((None, None), |(ct, b)| (Some(ct), Some(b)));
    let n: i64 = Complete {
        id,
        worker_id,
        attempt,
        result,
        content_type,
        bytes,
        event,
    }
    .get_result(conn)
    .await?;
    Ok(n == 1)
}

/// The statement of [`complete`]: a fixed query type, so diesel keeps it prepared per
/// connection (`sql_query` would prepare it anew each time: two round trips instead of one).
struct Complete<'a> {
    id: Uuid,
    worker_id: Uuid,
    attempt: i32,
    result: &'a serde_json::Value,
    content_type: Option<&'a str>,
    bytes: Option<&'a [u8]>,
    event: &'a super::outbox::NewOutboxEventRow,
}

/// The cache key of [`Complete`] (a `QueryId` must be `'static`; `Complete` borrows).
struct CompleteId;

impl diesel::query_builder::QueryId for Complete<'_> {
    type QueryId = CompleteId;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl diesel::query_builder::Query for Complete<'_> {
    type SqlType = BigInt;
}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for Complete<'_> {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> QueryResult<()> {
        use diesel::sql_types::{Bytea, Integer, Jsonb, Nullable};
        let e = self.event;
        out.push_sql(
            "WITH done AS (UPDATE jobs SET state = 'completed', progress = 100, result = ",
        );
        out.push_bind_param::<Jsonb, _>(self.result)?;
        out.push_sql(", result_content_type = ");
        out.push_bind_param::<Nullable<Text>, _>(&self.content_type)?;
        out.push_sql(", result_body = ");
        out.push_bind_param::<Nullable<Bytea>, _>(&self.bytes)?;
        out.push_sql(
            ", finished_at = now(), lease_expires_at = NULL, updated_at = now() WHERE id = ",
        );
        out.push_bind_param::<SqlUuid, _>(&self.id)?;
        out.push_sql(" AND worker_id = ");
        out.push_bind_param::<SqlUuid, _>(&self.worker_id)?;
        out.push_sql(" AND attempt = ");
        out.push_bind_param::<Integer, _>(&self.attempt)?;
        out.push_sql(
            " AND state = 'running' RETURNING id), \
             event AS (INSERT INTO outbox_events (aggregate_type, aggregate_id, \
             aggregate_version, event_type, payload, campus_id, vendor_id, user_id) SELECT ",
        );
        out.push_bind_param::<Text, _>(&e.aggregate_type)?;
        out.push_sql(", ");
        out.push_bind_param::<SqlUuid, _>(&e.aggregate_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Integer, _>(&e.aggregate_version)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&e.event_type)?;
        out.push_sql(", ");
        out.push_bind_param::<Jsonb, _>(&e.payload)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<SqlUuid>, _>(&e.campus_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<SqlUuid>, _>(&e.vendor_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<SqlUuid>, _>(&e.user_id)?;
        out.push_sql(" FROM done) SELECT count(*) FROM done");
        Ok(())
    }
}

#[derive(QueryableByName)]
struct Rescued {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    state: String,
}

/// Returns running jobs whose lease expired (their worker died or hung) to the queue, or
/// marks them dead when that was their last attempt. Safe to run from every worker at once.
pub async fn rescue_expired(conn: &mut AsyncPgConnection) -> QueryResult<Vec<(Uuid, String)>> {
    let rows: Vec<Rescued> = diesel::sql_query(
        "UPDATE jobs SET \
             state = CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'queued' END, \
             finished_at = CASE WHEN attempt >= max_attempts THEN now() ELSE NULL END, \
             last_error = 'lease expired: the worker stopped heartbeating', \
             worker_id = NULL, lease_expires_at = NULL, run_at = now(), updated_at = now() \
         WHERE id IN (SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at < now() \
                      FOR UPDATE SKIP LOCKED) \
         RETURNING id, state",
    )
    .load(conn)
    .await?;
    if rows.iter().any(|r| r.state == "queued") {
        notify(conn, JOBS_CHANNEL, "*").await?;
    }
    Ok(rows.into_iter().map(|r| (r.id, r.state)).collect())
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued: cancelled at once.
    Cancelled,
    /// It is running: its worker was told to stop.
    Requested,
    /// It had already finished.
    AlreadyFinished,
    /// No such job.
    NotFound,
}

/// Cancels a job: queued → cancelled now; running → flagged and its worker notified.
pub async fn cancel(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<CancelOutcome> {
    let state: Option<String> = jobs::table
        .find(id)
        .select(jobs::state)
        .for_update()
        .first(conn)
        .await
        .optional()?;
    Ok(match state.as_deref() {
        None => CancelOutcome::NotFound,
        Some("queued") => {
            diesel::update(jobs::table.find(id))
                .set((
                    jobs::state.eq("cancelled"),
                    jobs::finished_at.eq(diesel::dsl::now),
                    jobs::updated_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?;
            CancelOutcome::Cancelled
        }
        Some("running") => {
            diesel::update(jobs::table.find(id))
                .set((
                    jobs::cancel_requested.eq(true),
                    jobs::updated_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?;
            notify(conn, CANCEL_CHANNEL, &id.to_string()).await?;
            CancelOutcome::Requested
        }
        Some(_) => CancelOutcome::AlreadyFinished,
    })
}

/// Puts a dead job back in the queue with a fresh set of attempts; false unless it was dead.
pub async fn retry_dead(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<bool> {
    let row: Option<String> = diesel::update(jobs::table.find(id).filter(jobs::state.eq("dead")))
        .set((
            jobs::state.eq("queued"),
            jobs::attempt.eq(0),
            jobs::run_at.eq(diesel::dsl::now),
            jobs::finished_at.eq(None::<DateTime<Utc>>),
            jobs::cancel_requested.eq(false),
            jobs::updated_at.eq(diesel::dsl::now),
        ))
        .returning(jobs::queue)
        .get_result(conn)
        .await
        .optional()?;
    match row {
        Some(queue) => {
            notify(conn, JOBS_CHANNEL, &queue).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// A job by id.
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<JobRow>> {
    jobs::table
        .find(id)
        .select(JobRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A job's downloadable result: (media type, body).
pub async fn find_result_body(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<(Option<String>, Option<Vec<u8>>)>> {
    jobs::table
        .find(id)
        .select((jobs::result_content_type, jobs::result_body))
        .first(conn)
        .await
        .optional()
}

/// Which jobs a list covers.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    /// One submitter's.
    Owner(Uuid),
    /// One campus's.
    Campus(Uuid),
    /// All (platform admin).
    All,
}

fn scoped<'a>(
    scope: Scope,
    states: Option<&'a [String]>,
    kind: Option<&'a str>,
) -> jobs::BoxedQuery<'a, diesel::pg::Pg> {
    let mut q = jobs::table.into_boxed();
    q = match scope {
        Scope::Owner(id) => q.filter(jobs::owner_id.eq(id)),
        Scope::Campus(id) => q.filter(jobs::campus_id.eq(id)),
        Scope::All => q,
    };
    if let Some(states) = states {
        q = q.filter(jobs::state.eq_any(states));
    }
    if let Some(kind) = kind {
        q = q.filter(jobs::kind.eq(kind));
    }
    q
}

/// A page of jobs in scope, newest first, with the total count.
pub async fn list(
    conn: &mut AsyncPgConnection,
    scope: Scope,
    states: Option<&[String]>,
    kind: Option<&str>,
    limit: i64,
    offset: i64,
) -> QueryResult<(Vec<JobRow>, i64)> {
    let rows = scoped(scope, states, kind)
        .order((jobs::created_at.desc(), jobs::id.desc()))
        .limit(limit)
        .offset(offset)
        .select(JobRow::as_select())
        .load(conn)
        .await?;
    let total = scoped(scope, states, kind).count().get_result(conn).await?;
    Ok((rows, total))
}

#[derive(QueryableByName)]
struct StateCount {
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Jobs per unfinished state (queued, running) plus dead — the states the partial indexes
/// cover, so this stays cheap on a table with millions of finished jobs.
pub async fn count_active_by_state(
    conn: &mut AsyncPgConnection,
) -> QueryResult<Vec<(String, i64)>> {
    let rows: Vec<StateCount> = diesel::sql_query(
        "SELECT 'queued' AS state, count(*) AS count FROM jobs WHERE state = 'queued' \
         UNION ALL SELECT 'running', count(*) FROM jobs WHERE state = 'running' \
         UNION ALL SELECT 'dead', count(*) FROM jobs WHERE state = 'dead'",
    )
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.state, r.count)).collect())
}

/// Deletes up to `batch` finished jobs that finished before `before` (dead ones are kept:
/// an admin may still want them); returns how many.
pub async fn delete_finished_before(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    batch: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE finished_at < $1 \
         AND state IN ('completed', 'cancelled') LIMIT $2)",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(before)
    .bind::<BigInt, _>(batch)
    .execute(conn)
    .await
}

/// A registered worker.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = workers)]
pub struct WorkerRow {
    /// Id.
    pub id: Uuid,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: i32,
    /// Queues it claims from.
    pub queues: Vec<String>,
    /// Jobs it runs at once.
    pub concurrency: i32,
    /// Jobs running now.
    pub running: i32,
    /// Started.
    pub started_at: DateTime<Utc>,
    /// Last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
}

/// Registers a worker.
pub async fn insert_worker(conn: &mut AsyncPgConnection, row: &WorkerRow) -> QueryResult<()> {
    diesel::insert_into(workers::table)
        .values(row)
        .execute(conn)
        .await
        .map(drop)
}

/// Records a worker's heartbeat and load (re-registering it if it was pruned).
pub async fn update_worker_heartbeat(
    conn: &mut AsyncPgConnection,
    row: &WorkerRow,
    running: i32,
) -> QueryResult<()> {
    diesel::insert_into(workers::table)
        .values(row)
        .on_conflict(workers::id)
        .do_update()
        .set((
            workers::running.eq(running),
            workers::heartbeat_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// Removes a worker (graceful stop).
pub async fn delete_worker(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<()> {
    diesel::delete(workers::table.find(id))
        .execute(conn)
        .await
        .map(drop)
}

/// Workers that heartbeated within `alive_within`, oldest first; stale ones are deleted.
pub async fn list_live_workers(
    conn: &mut AsyncPgConnection,
    alive_within: Duration,
) -> QueryResult<Vec<WorkerRow>> {
    let cutoff = Utc::now()
        - chrono::Duration::from_std(alive_within)
            .unwrap_or_else(|_| chrono::Duration::seconds(60));
    diesel::delete(
        workers::table.filter(workers::heartbeat_at.lt(cutoff - chrono::Duration::minutes(10))),
    )
    .execute(conn)
    .await?;
    workers::table
        .filter(workers::heartbeat_at.ge(cutoff))
        .order(workers::started_at.asc())
        .select(WorkerRow::as_select())
        .load(conn)
        .await
}
