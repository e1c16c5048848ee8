//! `jobs` (the hot set: queued and running jobs only), `jobs_history` (finished jobs),
//! `job_keys` (unique keys across both), `job_queues` (paused queues), `job_counts_minute`
//! (per-minute counters) and `workers`: the durable queue.
//!
//! Enqueue runs in the caller's transaction (a job and the business row commit or roll back
//! together) and fires no `NOTIFY` (that would take Postgres's database-wide notify lock
//! during the caller's commit): the caller wakes the workers after commit
//! ([`notify_workers`], or `service::jobs::JobWaker`). Claims take a batch with `FOR UPDATE
//! SKIP LOCKED` on the partial index of queued jobs; every write a worker makes is fenced by
//! (worker id, attempt), so a late completion from a worker whose lease expired changes
//! nothing. A job that ends moves to `jobs_history` in the statement that ends it, so the
//! claim index never carries the dead entries of finished jobs. The hot statements (claim,
//! batched end, batched requeue) are fixed query types, so diesel keeps them prepared per
//! connection.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{
    Array, BigInt, Bool, Bytea, Integer, Jsonb, Nullable, SmallInt, Text, Timestamptz, Untyped,
    Uuid as SqlUuid,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::{job_counts_minute, job_queues, jobs, workers};
use crate::domain::job::JobState;

/// NOTIFY channel for "new work is available"; the payload is the queue name (or `*`).
pub const JOBS_CHANNEL: &str = "itsur_jobs";
/// NOTIFY channel for "cancel this running job"; the payload is the job id.
pub const CANCEL_CHANNEL: &str = "itsur_job_cancel";

/// The columns of [`JobRow`], for hand-written statements over either table.
const COLS: &str = "id, kind, queue, priority, state, payload, unique_key, run_at, attempt, \
    max_attempts, timeout_secs, worker_id, lease_expires_at, progress, progress_message, \
    cancel_requested, last_error, result, result_content_type, owner_id, campus_id, \
    created_at, started_at, finished_at, updated_at, flow_step_id";

/// Every column of both tables, in the order of `jobs_history`.
const ALL_COLS: &str = "id, kind, queue, priority, state, payload, unique_key, run_at, \
    attempt, max_attempts, timeout_secs, worker_id, lease_expires_at, progress, \
    progress_message, cancel_requested, last_error, result, result_content_type, result_body, \
    owner_id, campus_id, created_at, started_at, finished_at, updated_at, flow_step_id";

/// A job without its (possibly large) result body, from either table.
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
    /// State (stored as its `as_str` name; an unknown name fails the query).
    pub state: JobState,
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
    /// The flow step this job runs (its end calls the flow hook), if any.
    pub flow_step_id: Option<Uuid>,
}

/// A job to enqueue.
#[derive(Debug, Clone)]
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

/// Sets up a worker's claim (or completer) session: its planner always walks the claim
/// index and the primary key, whatever the statistics say (a table analyzed while empty must
/// not turn a claim of 32 into a sort of the whole backlog), and never compiles a statement
/// that runs for a millisecond. Tests that check these plans use the same settings.
pub async fn set_worker_session(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    diesel_async::SimpleAsyncConnection::batch_execute(
        conn,
        "SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_sort = off; \
         SET jit = off",
    )
    .await
}

async fn notify(conn: &mut AsyncPgConnection, channel: &str, payload: &str) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_notify($1, $2)")
        .bind::<Text, _>(channel)
        .bind::<Text, _>(payload)
        .execute(conn)
        .await
        .map(drop)
}

/// Wakes the workers (`NOTIFY itsur_jobs`). Call it after the transaction that enqueued has
/// committed, outside any business transaction.
pub async fn notify_workers(conn: &mut AsyncPgConnection, queue: &str) -> QueryResult<()> {
    notify(conn, JOBS_CHANNEL, queue).await
}

/// Defines the `QueryId`/`Query`/`QueryFragment` of a hand-written statement with a static
/// query id, so diesel keeps it prepared per connection (`sql_query` prepares anew each
/// time: two round trips instead of one).
macro_rules! prepared {
    ($name:ident, $marker:ident, $sql_type:ty, |$this:ident, $out:ident| $body:block) => {
        struct $marker;
        impl QueryId for $name<'_> {
            type QueryId = $marker;
            const HAS_STATIC_QUERY_ID: bool = true;
        }
        impl diesel::query_builder::Query for $name<'_> {
            type SqlType = $sql_type;
        }
        impl QueryFragment<Pg> for $name<'_> {
            fn walk_ast<'b>(&'b self, mut $out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
                let $this = self;
                $body
            }
        }
    };
}

/// Columns of a bulk insert, one array per column.
#[derive(Default)]
struct Columns<'a> {
    id: Vec<Uuid>,
    kind: Vec<&'a str>,
    queue: Vec<&'a str>,
    priority: Vec<i16>,
    payload: Vec<&'a serde_json::Value>,
    unique_key: Vec<Option<&'a str>>,
    run_at: Vec<DateTime<Utc>>,
    max_attempts: Vec<i32>,
    timeout_secs: Vec<i32>,
    owner_id: Vec<Option<Uuid>>,
    campus_id: Vec<Option<Uuid>>,
    flow_step_id: Vec<Option<Uuid>>,
}

impl<'a> Columns<'a> {
    fn of(jobs: &'a [NewJob], flow_step_id: Option<Uuid>) -> Self {
        Self::of_steps(jobs.iter().map(|j| (j, flow_step_id)))
    }

    fn of_steps(jobs: impl Iterator<Item = (&'a NewJob, Option<Uuid>)>) -> Self {
        let mut c = Self::default();
        for (j, flow_step_id) in jobs {
            c.id.push(j.id);
            c.kind.push(&j.kind);
            c.queue.push(&j.queue);
            c.priority.push(j.priority);
            c.payload.push(&j.payload);
            c.unique_key.push(j.unique_key.as_deref());
            c.run_at.push(j.run_at);
            c.max_attempts.push(j.max_attempts);
            c.timeout_secs.push(j.timeout_secs);
            c.owner_id.push(j.owner_id);
            c.campus_id.push(j.campus_id);
            c.flow_step_id.push(flow_step_id);
        }
        c
    }
}

/// The bulk insert: one statement over arrays, whatever the batch size. A job whose unique
/// key is taken (by a job in either table, or earlier in the batch) is skipped. Returns the
/// inserted jobs' ids.
struct Insert<'a>(&'a Columns<'a>);

prepared!(Insert, InsertId, Untyped, |this, out| {
    let c = this.0;
    out.push_sql("WITH input AS (SELECT * FROM unnest(");
    out.push_bind_param::<Array<SqlUuid>, _>(&c.id)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Text>, _>(&c.kind)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Text>, _>(&c.queue)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<SmallInt>, _>(&c.priority)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Jsonb>, _>(&c.payload)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Nullable<Text>>, _>(&c.unique_key)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Timestamptz>, _>(&c.run_at)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Integer>, _>(&c.max_attempts)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Integer>, _>(&c.timeout_secs)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Nullable<SqlUuid>>, _>(&c.owner_id)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Nullable<SqlUuid>>, _>(&c.campus_id)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Nullable<SqlUuid>>, _>(&c.flow_step_id)?;
    out.push_sql(
        ") AS t(id, kind, queue, priority, payload, unique_key, run_at, max_attempts, \
             timeout_secs, owner_id, campus_id, flow_step_id)), \
         keys AS (INSERT INTO job_keys (unique_key, job_id) \
             SELECT unique_key, id FROM input WHERE unique_key IS NOT NULL \
             ON CONFLICT DO NOTHING RETURNING job_id) \
         INSERT INTO jobs (id, kind, queue, priority, payload, unique_key, run_at, \
             max_attempts, timeout_secs, owner_id, campus_id, flow_step_id) \
         SELECT id, kind, queue, priority, payload, unique_key, run_at, max_attempts, \
             timeout_secs, owner_id, campus_id, flow_step_id FROM input \
         WHERE unique_key IS NULL OR id IN (SELECT job_id FROM keys) \
         RETURNING id",
    );
    Ok(())
});

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

async fn insert(
    conn: &mut AsyncPgConnection,
    batch: &[NewJob],
    flow_step_id: Option<Uuid>,
) -> QueryResult<Vec<Uuid>> {
    let columns = Columns::of(batch, flow_step_id);
    let rows: Vec<IdRow> = Insert(&columns).load(conn).await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// Enqueues a job in the caller's transaction. With a `unique_key` already present, nothing
/// is inserted and the existing job is returned (`false`). Fires no NOTIFY: wake the
/// workers after commit.
pub async fn enqueue(conn: &mut AsyncPgConnection, job: &NewJob) -> QueryResult<(JobRow, bool)> {
    enqueue_with_step(conn, job, None).await
}

/// [`enqueue`] for a flow step: the job's end (completed, dead, cancelled) calls the flow
/// hook in the transaction that ends it (`service::job_hooks`).
pub async fn enqueue_with_step(
    conn: &mut AsyncPgConnection,
    job: &NewJob,
    flow_step_id: Option<Uuid>,
) -> QueryResult<(JobRow, bool)> {
    let inserted = insert(conn, std::slice::from_ref(job), flow_step_id).await?;
    if let [id, ..] = inserted.as_slice() {
        metrics::counter!("jobs_enqueued_total", "kind" => job.kind.clone()).increment(1);
        let row = find(conn, *id)
            .await?
            .ok_or(diesel::result::Error::NotFound)?;
        return Ok((row, true));
    }
    let key = job
        .unique_key
        .as_deref()
        .ok_or(diesel::result::Error::NotFound)?;
    let existing = find_by_unique_key(conn, key)
        .await?
        .ok_or(diesel::result::Error::NotFound)?;
    Ok((existing, false))
}

/// The job holding a unique key, in either table.
pub async fn find_by_unique_key(
    conn: &mut AsyncPgConnection,
    key: &str,
) -> QueryResult<Option<JobRow>> {
    let id: Option<Uuid> = super::schema::job_keys::table
        .find(key)
        .select(super::schema::job_keys::job_id)
        .first(conn)
        .await
        .optional()?;
    match id {
        Some(id) => find(conn, id).await,
        None => Ok(None),
    }
}

/// Enqueues many jobs in one statement over arrays (duplicates of unique keys are
/// skipped); returns how many were inserted. Fires no NOTIFY: wake the workers after commit.
pub async fn enqueue_many(conn: &mut AsyncPgConnection, batch: &[NewJob]) -> QueryResult<usize> {
    let mut inserted = 0;
    // Bounded statements: 50,000 rows of arrays is a few MB at most.
    for chunk in batch.chunks(50_000) {
        inserted += insert(conn, chunk, None).await?.len();
    }
    if let Some(first) = batch.first() {
        // Counted under the first job's kind: bulk batches are of one kind in practice.
        metrics::counter!("jobs_enqueued_total", "kind" => first.kind.clone())
            .increment(u64::try_from(inserted).unwrap_or(0));
    }
    Ok(inserted)
}

/// Enqueues flow-step jobs, each with its own `flow_step_id`, in one statement per 50,000
/// (in the caller's transaction; duplicates of unique keys are skipped); returns how many
/// were inserted. Fires no NOTIFY: wake the workers after commit.
pub async fn enqueue_many_steps(
    conn: &mut AsyncPgConnection,
    batch: &[(NewJob, Uuid)],
) -> QueryResult<usize> {
    let mut inserted = 0;
    for chunk in batch.chunks(50_000) {
        let columns = Columns::of_steps(chunk.iter().map(|(j, s)| (j, Some(*s))));
        let rows: Vec<IdRow> = Insert(&columns).load(conn).await?;
        inserted += rows.len();
    }
    Ok(inserted)
}

/// The claim: up to `limit` due jobs of the unpaused `queues`, highest priority then oldest
/// first, skipping rows other workers are claiming, leased to `worker_id`.
struct Claim<'a> {
    queues: &'a [String],
    limit: i64,
    worker_id: Uuid,
    lease_ms: i64,
    after: &'a ClaimCursor,
}

/// Where a claim's index scan starts: past the last job this worker claimed, so a drain
/// does not walk the dead entries its own earlier claims left at the front of the claim
/// index (they cannot be removed while an old snapshot is open, whatever vacuum does).
/// [`ClaimCursor::START`] scans from the beginning; the runner goes back to it whenever a
/// claim comes up short and at least once a second, so newer jobs that sort earlier (a
/// higher priority, an old `run_at`) wait at most that long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimCursor {
    /// Priority of the last job claimed.
    pub priority: i16,
    /// Its `run_at`.
    pub run_at: DateTime<Utc>,
    /// Its id.
    pub id: Uuid,
}

impl ClaimCursor {
    /// Before every job (priorities are ≥ 0, so the rest of the key never matters).
    pub const START: Self = Self {
        priority: -1,
        run_at: DateTime::<Utc>::UNIX_EPOCH,
        id: Uuid::nil(),
    };

    /// The greatest claim key among `jobs` (None when empty).
    pub fn last_of(jobs: &[JobRow]) -> Option<Self> {
        jobs.iter()
            .map(|j| Self {
                priority: j.priority,
                run_at: j.run_at,
                id: j.id,
            })
            .max_by(|a, b| (a.priority, a.run_at, a.id).cmp(&(b.priority, b.run_at, b.id)))
    }
}

// `max_attempts > 0` (always true) is the claim index's predicate: only the claim may use that
// index, so every lookup by id takes the primary key whatever the statistics say (migration
// `000070`).
prepared!(Claim, ClaimId, Untyped, |this, out| {
    out.push_sql(
        "WITH next AS (SELECT id FROM jobs \
             WHERE max_attempts > 0 AND state = 'queued' AND run_at <= now() \
             AND queue = ANY(ARRAY(SELECT unnest(",
    );
    out.push_bind_param::<Array<Text>, _>(this.queues)?;
    out.push_sql(
        "::text[]) EXCEPT SELECT queue FROM job_queues WHERE paused)) \
             AND (priority, run_at, id) > (",
    );
    out.push_bind_param::<SmallInt, _>(&this.after.priority)?;
    out.push_sql(", ");
    out.push_bind_param::<Timestamptz, _>(&this.after.run_at)?;
    out.push_sql(", ");
    out.push_bind_param::<SqlUuid, _>(&this.after.id)?;
    out.push_sql(
        ") \
             ORDER BY priority, run_at, id LIMIT ",
    );
    out.push_bind_param::<BigInt, _>(&this.limit)?;
    out.push_sql(
        " FOR UPDATE SKIP LOCKED) \
         UPDATE jobs j SET state = 'running', attempt = j.attempt + 1, worker_id = ",
    );
    out.push_bind_param::<SqlUuid, _>(&this.worker_id)?;
    out.push_sql(", lease_expires_at = now() + ");
    out.push_bind_param::<BigInt, _>(&this.lease_ms)?;
    out.push_sql(
        " * interval '1 millisecond', started_at = now(), \
             progress = 0, progress_message = NULL, updated_at = now() \
         WHERE j.id = ANY(ARRAY(SELECT id FROM next)) \
         RETURNING j.id, j.kind, j.queue, j.priority, j.state, j.payload, j.unique_key, j.run_at, \
             j.attempt, j.max_attempts, j.timeout_secs, j.worker_id, j.lease_expires_at, \
             j.progress, j.progress_message, j.cancel_requested, j.last_error, j.result, \
             j.result_content_type, j.owner_id, j.campus_id, j.created_at, j.started_at, \
             j.finished_at, j.updated_at, j.flow_step_id",
    );
    Ok(())
});

/// Claims up to `limit` due jobs of `queues` (paused queues skipped), highest priority then
/// oldest first, skipping rows other workers are claiming, and leases them to `worker_id`
/// for `lease`. One prepared statement.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    queues: &[String],
    limit: i64,
    worker_id: Uuid,
    lease: Duration,
) -> QueryResult<Vec<JobRow>> {
    claim_after(conn, queues, limit, worker_id, lease, &ClaimCursor::START).await
}

/// [`claim`] of jobs that sort after `after` in claim order (see [`ClaimCursor`]).
pub async fn claim_after(
    conn: &mut AsyncPgConnection,
    queues: &[String],
    limit: i64,
    worker_id: Uuid,
    lease: Duration,
    after: &ClaimCursor,
) -> QueryResult<Vec<JobRow>> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let mut jobs: Vec<JobRow> = Claim {
        queues,
        limit,
        worker_id,
        lease_ms,
        after,
    }
    .load(conn)
    .await?;
    // The update returns rows in the order it found them by id; start them in claim order.
    jobs.sort_unstable_by_key(|j| (j.priority, j.run_at, j.id));
    Ok(jobs)
}

#[derive(QueryableByName)]
struct CancelFlag {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Bool)]
    cancel_requested: bool,
}

/// Extends the lease of this worker's running (and claimed, not yet started) jobs; returns
/// the ids whose cancellation was requested, and (implicitly, by absence) the ones it no
/// longer holds.
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

/// Records progress (persisted; the caller throttles). Fenced by worker and attempt.
pub async fn set_progress(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    worker_id: Uuid,
    attempt: i32,
    pct: i16,
    message: Option<&str>,
) -> QueryResult<bool> {
    let n = diesel::update(
        jobs::table
            .filter(jobs::id.eq(id))
            .filter(jobs::worker_id.eq(worker_id))
            .filter(jobs::attempt.eq(attempt))
            .filter(jobs::state.eq("running")),
    )
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

/// How a job ended, for the batched end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndState {
    /// Completed.
    Completed,
    /// Out of attempts or failed permanently.
    Dead,
    /// Stopped on request.
    Cancelled,
}

impl EndState {
    /// The stored state.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }

    /// The status its owner's `job.status_changed` event carries.
    fn public(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Dead => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One job's end in a batch.
#[derive(Debug, Clone)]
pub struct End<'a> {
    /// Job.
    pub id: Uuid,
    /// The attempt the worker ran (fencing).
    pub attempt: i32,
    /// How it ended.
    pub state: EndState,
    /// Result summary (completed).
    pub result: Option<&'a serde_json::Value>,
    /// Downloadable body and its media type (completed).
    pub body: Option<(&'a str, &'a [u8])>,
    /// Why it failed (dead).
    pub error: Option<&'a str>,
    /// The message of its owner's event.
    pub message: Option<&'a str>,
}

/// A job that reached a terminal state, as the flow hook needs it.
#[derive(Debug, Clone, QueryableByName)]
pub struct Terminal {
    /// Job.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// Kind.
    #[diesel(sql_type = Text)]
    pub kind: String,
    /// Queue.
    #[diesel(sql_type = Text)]
    pub queue: String,
    /// Flow step, if the job runs one.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub flow_step_id: Option<Uuid>,
    /// `completed`, `dead` or `cancelled`.
    #[diesel(sql_type = Text)]
    pub state: JobState,
    /// Result summary.
    #[diesel(sql_type = Nullable<Jsonb>)]
    pub result: Option<serde_json::Value>,
    /// Last failure.
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
    /// Attempt it ended in.
    #[diesel(sql_type = Integer)]
    pub attempt: i32,
}

/// The batched end: moves the held jobs to `jobs_history` with their end state, writes each
/// owner's `job.status_changed` event (jobs with neither owner nor campus have nobody to tell:
/// no event) and bumps the per-minute counters, in ONE statement.
#[derive(Default)]
struct EndBatch<'a> {
    worker_id: Uuid,
    shard: i16,
    id: Vec<Uuid>,
    attempt: Vec<i32>,
    state: Vec<&'static str>,
    public: Vec<&'static str>,
    result: Vec<Option<&'a serde_json::Value>>,
    content_type: Vec<Option<&'a str>>,
    body: Vec<Option<&'a [u8]>>,
    error: Vec<Option<&'a str>>,
    message: Vec<Option<&'a str>>,
}

prepared!(EndBatch, EndBatchId, Untyped, |this, out| {
    out.push_sql("WITH d AS (SELECT * FROM unnest(");
    out.push_bind_param::<Array<SqlUuid>, _>(&this.id)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Integer>, _>(&this.attempt)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Text>, _>(&this.state)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Text>, _>(&this.public)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Nullable<Jsonb>>, _>(&this.result)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Nullable<Text>>, _>(&this.content_type)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Nullable<Bytea>>, _>(&this.body)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Nullable<Text>>, _>(&this.error)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Nullable<Text>>, _>(&this.message)?;
    out.push_sql(
        ") AS d(job_id, job_attempt, end_state, public, end_result, content_type, body, \
             error, message)), \
         t AS MATERIALIZED (SELECT d.*, (SELECT j FROM jobs j WHERE j.id = d.job_id \
             AND j.attempt = d.job_attempt AND j.state = 'running' AND j.worker_id = ",
    );
    out.push_bind_param::<SqlUuid, _>(&this.worker_id)?;
    out.push_sql(
        " FOR UPDATE) AS row FROM d), \
         moved AS MATERIALIZED (SELECT (row).*, end_state, public, end_result, content_type, \
             body, error, message FROM t WHERE (row).id IS NOT NULL), \
         gone AS (DELETE FROM jobs WHERE id = ANY(ARRAY(SELECT id FROM moved))), \
         hist AS (INSERT INTO jobs_history (id, kind, queue, priority, state, payload, \
             unique_key, run_at, attempt, max_attempts, timeout_secs, worker_id, \
             lease_expires_at, progress, progress_message, cancel_requested, last_error, \
             result, result_content_type, result_body, owner_id, campus_id, created_at, \
             started_at, finished_at, updated_at, flow_step_id) \
             SELECT id, kind, queue, priority, end_state, payload, unique_key, run_at, attempt, \
             max_attempts, timeout_secs, worker_id, NULL, \
             CASE WHEN end_state = 'completed' THEN 100 ELSE progress END, progress_message, \
             cancel_requested, coalesce(error, last_error), end_result, content_type, body, \
             owner_id, campus_id, created_at, started_at, now(), now(), flow_step_id \
             FROM moved), \
         ev AS (INSERT INTO outbox_events (aggregate_type, aggregate_id, aggregate_version, \
             event_type, payload, campus_id, vendor_id, user_id) \
             SELECT 'job', id, attempt * 1000 + 999, 'job.status_changed', \
             jsonb_build_object('jobId', id, 'type', kind, 'status', public, 'progress', 100, \
                 'message', message, 'attempt', attempt), campus_id, NULL, owner_id \
             FROM moved WHERE owner_id IS NOT NULL OR campus_id IS NOT NULL), \
         counts AS (INSERT INTO job_counts_minute (minute, kind, queue, shard, completed, dead) \
             SELECT date_trunc('minute', now()), kind, queue, ",
    );
    out.push_bind_param::<SmallInt, _>(&this.shard)?;
    out.push_sql(
        ", count(*) FILTER (WHERE end_state = 'completed'), \
             count(*) FILTER (WHERE end_state = 'dead') FROM moved GROUP BY kind, queue \
             ON CONFLICT (minute, kind, queue, shard) DO UPDATE SET \
             completed = job_counts_minute.completed + excluded.completed, \
             dead = job_counts_minute.dead + excluded.dead) \
         SELECT id, kind, queue, flow_step_id, end_state AS state, end_result AS result, \
             coalesce(error, last_error) AS last_error, attempt FROM moved",
    );
    Ok(())
});

/// Ends a batch of this worker's jobs in one statement: each held job (same worker, same
/// attempt, still running) moves to `jobs_history` with its end state, its owner's
/// `job.status_changed` event is written and the per-minute counters (`shard`: this
/// worker's row) are bumped. Returns the jobs that were held; the others were rescued
/// meanwhile and their late end is ignored.
pub async fn end_batch(
    conn: &mut AsyncPgConnection,
    worker_id: Uuid,
    shard: i16,
    ends: &[End<'_>],
) -> QueryResult<Vec<Terminal>> {
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = EndBatch {
        worker_id,
        shard,
        id: Vec::with_capacity(ends.len()),
        attempt: Vec::with_capacity(ends.len()),
        state: Vec::with_capacity(ends.len()),
        public: Vec::with_capacity(ends.len()),
        result: Vec::with_capacity(ends.len()),
        content_type: Vec::with_capacity(ends.len()),
        body: Vec::with_capacity(ends.len()),
        error: Vec::with_capacity(ends.len()),
        message: Vec::with_capacity(ends.len()),
    };
    for e in ends {
        q.id.push(e.id);
        q.attempt.push(e.attempt);
        q.state.push(e.state.as_str());
        q.public.push(e.state.public());
        q.result.push(e.result);
        q.content_type.push(e.body.map(|b| b.0));
        q.body.push(e.body.map(|b| b.1));
        q.error.push(e.error);
        q.message.push(e.message);
    }
    q.load(conn).await
}

/// One job going back to the queue in a batch.
#[derive(Debug, Clone)]
pub struct Requeue<'a> {
    /// Job.
    pub id: Uuid,
    /// The attempt the worker ran (fencing).
    pub attempt: i32,
    /// A hand-back (shutdown, never started): the attempt is not counted, no event, no
    /// counter. Otherwise a failed attempt waiting for its retry.
    pub hand_back: bool,
    /// When it may run again.
    pub run_at: DateTime<Utc>,
    /// Why it failed (retry).
    pub error: Option<&'a str>,
}

/// The batched requeue (retries and hand-backs), with the retries' events and counters.
#[derive(Default)]
struct RequeueBatch<'a> {
    worker_id: Uuid,
    shard: i16,
    id: Vec<Uuid>,
    attempt: Vec<i32>,
    hand_back: Vec<bool>,
    run_at: Vec<DateTime<Utc>>,
    error: Vec<Option<&'a str>>,
}

prepared!(RequeueBatch, RequeueBatchId, Untyped, |this, out| {
    out.push_sql("WITH d AS (SELECT * FROM unnest(");
    out.push_bind_param::<Array<SqlUuid>, _>(&this.id)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Integer>, _>(&this.attempt)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Bool>, _>(&this.hand_back)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Timestamptz>, _>(&this.run_at)?;
    out.push_sql(", ");
    out.push_bind_param::<Array<Nullable<Text>>, _>(&this.error)?;
    out.push_sql(
        ") AS d(id, attempt, hand_back, run_at, error)), \
         t AS MATERIALIZED (SELECT d.*, (SELECT j FROM jobs j WHERE j.id = d.id \
             AND j.attempt = d.attempt AND j.state = 'running' AND j.worker_id = ",
    );
    out.push_bind_param::<SqlUuid, _>(&this.worker_id)?;
    out.push_sql(
        " FOR UPDATE) AS row FROM d), \
         held AS MATERIALIZED (SELECT id, attempt, hand_back, run_at, error, (row).kind, \
             (row).queue, (row).owner_id, (row).campus_id, (row).last_error AS old_error, \
             (row).progress AS old_progress FROM t WHERE (row).id IS NOT NULL), \
         upd AS (UPDATE jobs j SET state = 'queued', \
             (attempt, run_at, last_error, progress) = (SELECT \
                 CASE WHEN h.hand_back THEN h.attempt - 1 ELSE h.attempt END, h.run_at, \
                 coalesce(h.error, h.old_error), \
                 CASE WHEN h.hand_back THEN 0 ELSE h.old_progress END \
                 FROM held h WHERE h.id = j.id), \
             worker_id = NULL, lease_expires_at = NULL, updated_at = now() \
             WHERE j.id = ANY(ARRAY(SELECT id FROM held))), \
         ev AS (INSERT INTO outbox_events (aggregate_type, aggregate_id, aggregate_version, \
             event_type, payload, campus_id, vendor_id, user_id) \
             SELECT 'job', id, attempt * 1000 + 999, 'job.status_changed', \
             jsonb_build_object('jobId', id, 'type', kind, 'status', 'queued', 'progress', 100, \
                 'message', error, 'attempt', attempt), campus_id, NULL, owner_id \
             FROM held WHERE NOT hand_back AND (owner_id IS NOT NULL OR campus_id IS NOT NULL)), \
         counts AS (INSERT INTO job_counts_minute (minute, kind, queue, shard, failed) \
             SELECT date_trunc('minute', now()), kind, queue, ",
    );
    out.push_bind_param::<SmallInt, _>(&this.shard)?;
    out.push_sql(
        ", count(*) FROM held WHERE NOT hand_back GROUP BY kind, queue \
             ON CONFLICT (minute, kind, queue, shard) DO UPDATE SET \
             failed = job_counts_minute.failed + excluded.failed) \
         SELECT id FROM held",
    );
    Ok(())
});

/// Puts a batch of this worker's jobs back in the queue in one statement (fenced like
/// [`end_batch`]); returns the ids it still held.
pub async fn requeue_batch(
    conn: &mut AsyncPgConnection,
    worker_id: Uuid,
    shard: i16,
    requeues: &[Requeue<'_>],
) -> QueryResult<Vec<Uuid>> {
    if requeues.is_empty() {
        return Ok(Vec::new());
    }
    let q = RequeueBatch {
        worker_id,
        shard,
        id: requeues.iter().map(|r| r.id).collect(),
        attempt: requeues.iter().map(|r| r.attempt).collect(),
        hand_back: requeues.iter().map(|r| r.hand_back).collect(),
        run_at: requeues.iter().map(|r| r.run_at).collect(),
        error: requeues.iter().map(|r| r.error).collect(),
    };
    let rows: Vec<IdRow> = q.load(conn).await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// Prepares the completer's two statements on its connection (each run once over empty
/// arrays: it matches nothing and writes nothing), so the first outcomes a worker records
/// do not also pay for parsing and planning them.
pub async fn prepare_completion(
    conn: &mut AsyncPgConnection,
    worker_id: Uuid,
    shard: i16,
) -> QueryResult<()> {
    let ends: Vec<Terminal> = EndBatch {
        worker_id,
        shard,
        ..EndBatch::default()
    }
    .load(conn)
    .await?;
    let requeues: Vec<IdRow> = RequeueBatch {
        worker_id,
        shard,
        ..RequeueBatch::default()
    }
    .load(conn)
    .await?;
    debug_assert!(ends.is_empty() && requeues.is_empty());
    Ok(())
}

/// Applies one worker's outcome (counters in shard 0); false when the worker no longer held
/// the job (its lease expired and the job was rescued): a late completion is ignored. The
/// runner batches these through [`end_batch`] and [`requeue_batch`].
pub async fn finish(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    worker_id: Uuid,
    attempt: i32,
    outcome: Finish<'_>,
) -> QueryResult<bool> {
    let end = |state, result, body, error| End {
        id,
        attempt,
        state,
        result,
        body,
        error,
        message: error,
    };
    let n = match &outcome {
        Finish::Completed { result, body } => end_batch(
            conn,
            worker_id,
            0,
            &[end(EndState::Completed, Some(result), *body, None)],
        )
        .await?
        .len(),
        Finish::Dead { error } => end_batch(
            conn,
            worker_id,
            0,
            &[end(EndState::Dead, None, None, Some(*error))],
        )
        .await?
        .len(),
        Finish::Cancelled => end_batch(
            conn,
            worker_id,
            0,
            &[end(EndState::Cancelled, None, None, None)],
        )
        .await?
        .len(),
        Finish::Retry { error, run_at } => {
            let r = Requeue {
                id,
                attempt,
                hand_back: false,
                run_at: *run_at,
                error: Some(*error),
            };
            requeue_batch(conn, worker_id, 0, &[r]).await?.len()
        }
        Finish::HandBack => {
            let r = Requeue {
                id,
                attempt,
                hand_back: true,
                run_at: Utc::now(),
                error: None,
            };
            requeue_batch(conn, worker_id, 0, &[r]).await?.len()
        }
    };
    Ok(n == 1)
}

/// What a rescue did to one job.
#[derive(Debug, Clone, QueryableByName)]
pub struct Rescued {
    /// Job.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// `queued` (another attempt) or `dead` (that was its last).
    #[diesel(sql_type = Text)]
    pub state: JobState,
    /// Kind.
    #[diesel(sql_type = Text)]
    pub kind: String,
    /// Queue.
    #[diesel(sql_type = Text)]
    pub queue: String,
    /// Flow step, if any.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub flow_step_id: Option<Uuid>,
    /// Its attempt.
    #[diesel(sql_type = Integer)]
    pub attempt: i32,
    /// Why.
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
}

impl Rescued {
    /// The terminal view of a job the rescue declared dead.
    pub fn terminal(&self) -> Option<Terminal> {
        (self.state == JobState::Dead).then(|| Terminal {
            id: self.id,
            kind: self.kind.clone(),
            queue: self.queue.clone(),
            flow_step_id: self.flow_step_id,
            state: self.state,
            result: None,
            last_error: self.last_error.clone(),
            attempt: self.attempt,
        })
    }
}

/// Returns running jobs whose lease expired (their worker died or hung — including jobs it
/// had claimed into its buffer and not started) to the queue, or moves them to history as
/// dead when that was their last attempt. Safe to run from every worker at once (workers run
/// it in the round [`claim_maintenance_round`] elected them for). Fires no NOTIFY; the caller
/// wakes the workers after commit.
pub async fn rescue_expired(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Rescued>> {
    diesel::sql_query(format!(
        "WITH expired AS (SELECT id, attempt >= max_attempts AS last FROM jobs \
             WHERE state = 'running' AND lease_expires_at < now() \
             ORDER BY lease_expires_at LIMIT 10000 FOR UPDATE SKIP LOCKED), \
         requeued AS (UPDATE jobs SET state = 'queued', \
             last_error = 'lease expired: the worker stopped heartbeating', \
             worker_id = NULL, lease_expires_at = NULL, run_at = now(), updated_at = now() \
             WHERE id = ANY(ARRAY(SELECT id FROM expired WHERE NOT last)) \
             RETURNING id, state, kind, queue, flow_step_id, attempt, last_error), \
         dead AS (DELETE FROM jobs WHERE id = ANY(ARRAY(SELECT id FROM expired WHERE last)) RETURNING *), \
         hist AS (INSERT INTO jobs_history ({ALL_COLS}) \
             SELECT id, kind, queue, priority, 'dead', payload, unique_key, run_at, attempt, \
             max_attempts, timeout_secs, worker_id, NULL, progress, progress_message, \
             cancel_requested, 'lease expired: the worker stopped heartbeating', result, \
             result_content_type, result_body, owner_id, campus_id, created_at, started_at, \
             now(), now(), flow_step_id FROM dead), \
         counts AS (INSERT INTO job_counts_minute (minute, kind, queue, shard, dead) \
             SELECT date_trunc('minute', now()), kind, queue, 0, count(*) FROM dead \
             GROUP BY kind, queue ON CONFLICT (minute, kind, queue, shard) DO UPDATE SET \
             dead = job_counts_minute.dead + excluded.dead) \
         SELECT * FROM requeued UNION ALL \
         SELECT id, 'dead', kind, queue, flow_step_id, attempt, \
             'lease expired: the worker stopped heartbeating' FROM dead"
    ))
    .load(conn)
    .await
}

/// Advisory lock key of the workers' maintenance round (the rescue of expired leases and the
/// cluster-wide job gauges): "itsur-mt" in ASCII, beside the migrations' "itsur-mg"
/// (`store::migrations`) and the test template's "itsur-tp".
pub const MAINTENANCE_LOCK_KEY: i64 = 0x6974_7375_722d_6d74;

#[derive(QueryableByName)]
struct Elected {
    #[diesel(sql_type = Bool)]
    elected: bool,
}

/// Takes the maintenance round for the calling transaction when `worker_id` is the elected
/// worker — the oldest (smallest UUIDv7 id) of the workers that heartbeated within
/// `alive_within` — and no other round holds [`MAINTENANCE_LOCK_KEY`]; false otherwise, and
/// the round is skipped. One worker does the cluster's rounds as long as it lives; when it
/// dies, its heartbeat ages out and the next oldest takes over. The lock is transaction-level
/// (released at commit, or with the session of a worker that dies mid-round), so two workers
/// that both believe they are the oldest (different leases, a late heartbeat) still never run
/// a round at once. Call it first in the round's transaction.
pub async fn claim_maintenance_round(
    conn: &mut AsyncPgConnection,
    worker_id: Uuid,
    alive_within: Duration,
) -> QueryResult<bool> {
    // CASE, not AND: a worker that is not the oldest must not take the lock even for an
    // instant, or the elected worker's try could fail and skip the round.
    let row: Elected = diesel::sql_query(
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM workers WHERE id < $1 \
             AND heartbeat_at >= now() - $2 * interval '1 millisecond') \
         THEN false ELSE pg_try_advisory_xact_lock($3) END AS elected",
    )
    .bind::<SqlUuid, _>(worker_id)
    .bind::<BigInt, _>(i64::try_from(alive_within.as_millis()).unwrap_or(i64::MAX))
    .bind::<BigInt, _>(MAINTENANCE_LOCK_KEY)
    .get_result(conn)
    .await?;
    Ok(row.elected)
}

/// What a cancel request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued: cancelled at once (moved to history).
    Cancelled(Terminal),
    /// It is running: its worker was told to stop.
    Requested,
    /// It had already finished.
    AlreadyFinished,
    /// No such job.
    NotFound,
}

impl PartialEq for Terminal {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.state == other.state && self.attempt == other.attempt
    }
}
impl Eq for Terminal {}

/// Cancels a job: queued → cancelled now (moved to history); running → flagged and its
/// worker notified (`NOTIFY itsur_job_cancel`, delivered at commit).
pub async fn cancel(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<CancelOutcome> {
    let state: Option<JobState> = jobs::table
        .find(id)
        .select(jobs::state)
        .for_update()
        .first(conn)
        .await
        .optional()?;
    Ok(match state {
        None => {
            let finished: Option<Uuid> = super::schema::jobs_history::table
                .find(id)
                .select(super::schema::jobs_history::id)
                .first(conn)
                .await
                .optional()?;
            if finished.is_some() {
                CancelOutcome::AlreadyFinished
            } else {
                CancelOutcome::NotFound
            }
        }
        Some(JobState::Queued) => {
            let mut rows: Vec<Terminal> = diesel::sql_query(format!(
                "WITH moved AS (DELETE FROM jobs WHERE id = $1 AND state = 'queued' RETURNING *), \
                 hist AS (INSERT INTO jobs_history ({ALL_COLS}) \
                     SELECT id, kind, queue, priority, 'cancelled', payload, unique_key, run_at, \
                     attempt, max_attempts, timeout_secs, worker_id, NULL, progress, \
                     progress_message, cancel_requested, last_error, result, \
                     result_content_type, result_body, owner_id, campus_id, created_at, \
                     started_at, now(), now(), flow_step_id FROM moved) \
                 SELECT id, kind, queue, flow_step_id, 'cancelled' AS state, result, \
                     last_error, attempt FROM moved"
            ))
            .bind::<SqlUuid, _>(id)
            .load(conn)
            .await?;
            match rows.pop() {
                Some(t) => CancelOutcome::Cancelled(t),
                None => CancelOutcome::NotFound,
            }
        }
        Some(_) => {
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
    })
}

const RETRY_DEAD: &str = "WITH back AS (DELETE FROM jobs_history WHERE state = 'dead' AND ";
const RETRY_DEAD_TAIL: &str = " RETURNING *) \
    INSERT INTO jobs (id, kind, queue, priority, state, payload, unique_key, run_at, attempt, \
        max_attempts, timeout_secs, progress, progress_message, cancel_requested, last_error, \
        owner_id, campus_id, created_at, updated_at, flow_step_id) \
    SELECT id, kind, queue, priority, 'queued', payload, unique_key, now(), 0, max_attempts, \
        timeout_secs, 0, NULL, false, last_error, owner_id, campus_id, created_at, now(), \
        flow_step_id FROM back RETURNING id";

/// Puts a dead job back in the queue with a fresh set of attempts; false unless it was dead.
/// Fires no NOTIFY: wake the workers after commit.
pub async fn retry_dead(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<bool> {
    let rows: Vec<IdRow> = diesel::sql_query(format!("{RETRY_DEAD}id = $1{RETRY_DEAD_TAIL}"))
        .bind::<SqlUuid, _>(id)
        .load(conn)
        .await?;
    Ok(!rows.is_empty())
}

/// Puts the dead jobs among `ids` back in the queue (as [`retry_dead`] does for one, in one
/// statement: the console's bulk retry); returns their ids. Fires no NOTIFY.
pub async fn retry_dead_many(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<Uuid>> {
    let rows: Vec<IdRow> = diesel::sql_query(format!("{RETRY_DEAD}id = ANY($1){RETRY_DEAD_TAIL}"))
        .bind::<Array<SqlUuid>, _>(ids)
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// Puts every dead job (of `kind`, if given) back in the queue; returns how many.
pub async fn retry_dead_all(
    conn: &mut AsyncPgConnection,
    kind: Option<&str>,
) -> QueryResult<usize> {
    let rows: Vec<IdRow> = diesel::sql_query(format!(
        "{RETRY_DEAD}($1::text IS NULL OR kind = $1){RETRY_DEAD_TAIL}"
    ))
    .bind::<Nullable<Text>, _>(kind)
    .load(conn)
    .await?;
    Ok(rows.len())
}

/// A job by id, wherever it lives (hot table or history).
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<JobRow>> {
    // One statement: both scans see the same snapshot, so a job moving meanwhile is found once.
    let mut rows: Vec<JobRow> = diesel::sql_query(format!(
        "SELECT {COLS} FROM jobs WHERE id = $1 UNION ALL \
         SELECT {COLS} FROM jobs_history WHERE id = $1 LIMIT 1"
    ))
    .bind::<SqlUuid, _>(id)
    .load(conn)
    .await?;
    Ok(rows.pop())
}

/// A job's downloadable result: (media type, body). Only finished jobs have one.
pub async fn find_result_body(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<(Option<String>, Option<Vec<u8>>)>> {
    use super::schema::jobs_history as h;
    h::table
        .find(id)
        .select((h::result_content_type, h::result_body))
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

/// The WHERE clause of a list over one table, binds numbered from 1 in the order scope,
/// states, kind (the same in both halves of the UNION, so they share the binds).
fn list_filter(scope: Scope, states: Option<&[String]>, kind: Option<&str>) -> String {
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    let mut clauses = vec!["true".to_owned()];
    match scope {
        Scope::Owner(_) => clauses.push(format!("owner_id = ${}", next())),
        Scope::Campus(_) => clauses.push(format!("campus_id = ${}", next())),
        Scope::All => {}
    }
    if states.is_some() {
        clauses.push(format!("state = ANY(${})", next()));
    }
    if kind.is_some() {
        clauses.push(format!("kind = ${}", next()));
    }
    clauses.join(" AND ")
}

fn bind_list<'a>(
    sql: String,
    scope: Scope,
    states: Option<&'a [String]>,
    kind: Option<&'a str>,
) -> diesel::query_builder::BoxedSqlQuery<'a, Pg, diesel::query_builder::SqlQuery> {
    let mut q = diesel::sql_query(sql).into_boxed();
    match scope {
        Scope::Owner(id) | Scope::Campus(id) => q = q.bind::<SqlUuid, _>(id),
        Scope::All => {}
    }
    if let Some(states) = states {
        q = q.bind::<Array<Text>, _>(states);
    }
    if let Some(kind) = kind {
        q = q.bind::<Text, _>(kind);
    }
    q
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// A page of jobs in scope, from both tables, newest first, with the total count.
pub async fn list(
    conn: &mut AsyncPgConnection,
    scope: Scope,
    states: Option<&[String]>,
    kind: Option<&str>,
    limit: i64,
    offset: i64,
) -> QueryResult<(Vec<JobRow>, i64)> {
    let filter = list_filter(scope, states, kind);
    // Each half is limited first, so an index on id (the primary key, or the owner's or the
    // campus's (…, id) index) serves the page: ids are UUIDv7, so this is creation order.
    let window = limit.saturating_add(offset).max(0);
    let rows: Vec<JobRow> = bind_list(
        format!(
            "SELECT * FROM ( \
             (SELECT {COLS} FROM jobs WHERE {filter} ORDER BY id DESC LIMIT {window}) \
             UNION ALL \
             (SELECT {COLS} FROM jobs_history WHERE {filter} ORDER BY id DESC LIMIT {window}) \
             ) AS j ORDER BY id DESC LIMIT {} OFFSET {}",
            limit.max(0),
            offset.max(0)
        ),
        scope,
        states,
        kind,
    )
    .load(conn)
    .await?;
    let total: Count = bind_list(
        format!(
            "SELECT (SELECT count(*) FROM jobs WHERE {filter}) + \
             (SELECT count(*) FROM jobs_history WHERE {filter}) AS count"
        ),
        scope,
        states,
        kind,
    )
    .get_result(conn)
    .await?;
    Ok((rows, total.count))
}

#[derive(QueryableByName)]
struct StateCount {
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Jobs per unfinished state (queued, running) plus dead: the hot table is small by design
/// and dead jobs have their own partial index.
pub async fn count_active_by_state(
    conn: &mut AsyncPgConnection,
) -> QueryResult<Vec<(String, i64)>> {
    let rows: Vec<StateCount> = diesel::sql_query(
        "SELECT 'queued' AS state, count(*) AS count FROM jobs WHERE state = 'queued' \
         UNION ALL SELECT 'running', count(*) FROM jobs WHERE state = 'running' \
         UNION ALL SELECT 'dead', count(*) FROM jobs_history WHERE state = 'dead'",
    )
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.state, r.count)).collect())
}

#[derive(QueryableByName)]
struct StoredStateCount {
    #[diesel(sql_type = Text)]
    state: JobState,
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Jobs per state across both tables (`itsur jobs stats`): exact counts, so it reads the
/// whole history once.
pub async fn count_by_state(conn: &mut AsyncPgConnection) -> QueryResult<Vec<(JobState, i64)>> {
    let rows: Vec<StoredStateCount> = diesel::sql_query(
        "SELECT state, count(*) AS count FROM jobs GROUP BY state \
         UNION ALL SELECT state, count(*) FROM jobs_history GROUP BY state",
    )
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.state, r.count)).collect())
}

/// Deletes up to `batch` finished jobs that finished before `before` (dead ones are kept:
/// an admin may still want them), with their unique keys; returns how many.
pub async fn delete_finished_before(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    batch: i64,
) -> QueryResult<usize> {
    let n: Count = diesel::sql_query(
        "WITH del AS (DELETE FROM jobs_history WHERE id IN (SELECT id FROM jobs_history \
             WHERE finished_at < $1 AND state IN ('completed', 'cancelled') LIMIT $2) \
             RETURNING unique_key), \
         keys AS (DELETE FROM job_keys WHERE unique_key IN \
             (SELECT unique_key FROM del WHERE unique_key IS NOT NULL)) \
         SELECT count(*) AS count FROM del",
    )
    .bind::<Timestamptz, _>(before)
    .bind::<BigInt, _>(batch)
    .get_result(conn)
    .await?;
    Ok(usize::try_from(n.count).unwrap_or(0))
}

/// A queue as operators see it.
#[derive(Debug, Clone, QueryableByName)]
pub struct QueueRow {
    /// Name.
    #[diesel(sql_type = Text)]
    pub queue: String,
    /// Claims skip it.
    #[diesel(sql_type = Bool)]
    pub paused: bool,
    /// Queued jobs (due or not).
    #[diesel(sql_type = BigInt)]
    pub queued: i64,
    /// Running (or claimed) jobs.
    #[diesel(sql_type = BigInt)]
    pub running: i64,
    /// When the oldest due queued job became due.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub oldest_due_at: Option<DateTime<Utc>>,
}

/// Every queue with jobs or a pause flag: depth, running count, paused, oldest due job.
/// Reads the hot table only (small by design).
pub async fn list_queues(conn: &mut AsyncPgConnection) -> QueryResult<Vec<QueueRow>> {
    diesel::sql_query(
        "SELECT queue, coalesce(p.paused, false) AS paused, coalesce(c.queued, 0) AS queued, \
             coalesce(c.running, 0) AS running, c.oldest_due_at \
         FROM (SELECT queue, count(*) FILTER (WHERE state = 'queued') AS queued, \
                 count(*) FILTER (WHERE state = 'running') AS running, \
                 min(run_at) FILTER (WHERE state = 'queued' AND run_at <= now()) AS oldest_due_at \
               FROM jobs GROUP BY queue) c \
         FULL JOIN job_queues p USING (queue) ORDER BY queue",
    )
    .load(conn)
    .await
}

/// Pauses (claims skip it) or resumes a queue; true when the flag changed.
pub async fn set_queue_paused(
    conn: &mut AsyncPgConnection,
    queue: &str,
    paused: bool,
) -> QueryResult<bool> {
    let n = if paused {
        diesel::sql_query(
            "INSERT INTO job_queues (queue, paused, paused_at) VALUES ($1, true, now()) \
             ON CONFLICT (queue) DO UPDATE SET paused = true, paused_at = now(), \
                 updated_at = now() \
             WHERE NOT job_queues.paused",
        )
        .bind::<Text, _>(queue)
        .execute(conn)
        .await?
    } else {
        diesel::update(
            job_queues::table
                .filter(job_queues::queue.eq(queue))
                .filter(job_queues::paused.eq(true)),
        )
        .set((
            job_queues::paused.eq(false),
            job_queues::paused_at.eq(None::<DateTime<Utc>>),
            job_queues::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?
    };
    Ok(n == 1)
}

/// Jobs ended in one minute, kind and queue.
#[derive(Debug, Clone, QueryableByName)]
pub struct MinuteCount {
    /// Start of the minute.
    #[diesel(sql_type = Timestamptz)]
    pub minute: DateTime<Utc>,
    /// Kind.
    #[diesel(sql_type = Text)]
    pub kind: String,
    /// Queue.
    #[diesel(sql_type = Text)]
    pub queue: String,
    /// Completed.
    #[diesel(sql_type = BigInt)]
    pub completed: i64,
    /// Attempts failed that will be retried.
    #[diesel(sql_type = BigInt)]
    pub failed: i64,
    /// Dead.
    #[diesel(sql_type = BigInt)]
    pub dead: i64,
}

/// Per-minute counters since `since`, oldest first (the shards summed).
pub async fn list_minute_counts(
    conn: &mut AsyncPgConnection,
    since: DateTime<Utc>,
) -> QueryResult<Vec<MinuteCount>> {
    diesel::sql_query(
        "SELECT minute, kind, queue, sum(completed)::int8 AS completed, \
             sum(failed)::int8 AS failed, sum(dead)::int8 AS dead \
         FROM job_counts_minute WHERE minute >= date_trunc('minute', $1::timestamptz) \
         GROUP BY minute, kind, queue ORDER BY minute, kind, queue",
    )
    .bind::<Timestamptz, _>(since)
    .load(conn)
    .await
}

/// Deletes per-minute counters older than `before`; returns how many rows.
pub async fn delete_minute_counts_before(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::delete(job_counts_minute::table.filter(job_counts_minute::minute.lt(before)))
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
