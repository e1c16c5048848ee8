//! Read models and bulk changes behind the operator console (`/admin/console/*`): keyset
//! pages of jobs, audit entries and outbox events, bounded counts, queue figures and the
//! per-minute throughput of the last hour.
//!
//! Every query here must stay fast on a table of millions of finished jobs: pages are keyset
//! (`id < cursor ORDER BY id DESC`, UUIDv7 ids sort by time), counts stop at a cap
//! (`SELECT count(*) FROM (… LIMIT cap+1)`), and a filter no index answers (kind, queue, text
//! in the payload) only ever looks at a bounded window of rows per request: the page then says
//! where it stopped, and the next request continues from there.
//!
//! L1: depends on `schema` only. Never opens a transaction.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Int4, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::{audit_log, jobs, outbox_events};

/// How many rows a windowed (unindexed) filter may look at per request.
pub const SCAN_WINDOW: i64 = 10_000;

/// A job as a console list shows it: no payload body, no result body.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = jobs)]
pub struct JobSummaryRow {
    /// Id.
    pub id: Uuid,
    /// Handler name.
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// 0 high, 1 normal, 2 low.
    pub priority: i16,
    /// Stored state.
    pub state: String,
    /// Attempts started.
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// 0..=100.
    pub progress: i16,
    /// Last failure.
    pub last_error: Option<String>,
    /// Campus.
    pub campus_id: Option<Uuid>,
    /// Enqueued.
    pub created_at: DateTime<Utc>,
    /// Not before.
    pub run_at: DateTime<Utc>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
}

/// The filter of a console job list, count or bulk action.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this campus (campus admins always have one).
    pub campus_id: Option<Uuid>,
    /// Stored states (any of).
    pub states: Option<Vec<String>>,
    /// Kind.
    pub kind: Option<String>,
    /// Queue.
    pub queue: Option<String>,
    /// Case-insensitive text the payload's JSON must contain.
    pub search: Option<String>,
}

impl JobFilter {
    /// True when a filter needs a bounded window (no index answers it).
    fn windowed(&self) -> bool {
        self.kind.is_some() || self.queue.is_some() || self.search.is_some()
    }
}

/// `%text%` for ILIKE, with the pattern characters escaped.
fn like_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// The jobs matching the indexed part of `f` (campus, states) below `before`.
fn indexed<'a>(f: &'a JobFilter, before: Option<Uuid>) -> jobs::BoxedQuery<'a, diesel::pg::Pg> {
    let mut q = jobs::table.into_boxed();
    if let Some(c) = f.campus_id {
        q = q.filter(jobs::campus_id.eq(c));
    }
    if let Some(states) = &f.states {
        q = q.filter(jobs::state.eq_any(states));
    }
    if let Some(b) = before {
        q = q.filter(jobs::id.lt(b));
    }
    q
}

/// Everything in `f`, below `before`.
fn filtered<'a>(f: &'a JobFilter, before: Option<Uuid>) -> jobs::BoxedQuery<'a, diesel::pg::Pg> {
    let mut q = indexed(f, before);
    if let Some(k) = &f.kind {
        q = q.filter(jobs::kind.eq(k));
    }
    if let Some(queue) = &f.queue {
        q = q.filter(jobs::queue.eq(queue));
    }
    if let Some(s) = &f.search {
        q = q.filter(
            diesel::dsl::sql::<Bool>("payload::text ILIKE ")
                .bind::<Text, _>(like_pattern(s))
                .sql(" ESCAPE '\\'"),
        );
    }
    q
}

/// One keyset page.
#[derive(Debug, Clone)]
pub struct KeysetPage<T> {
    /// The rows, newest first.
    pub rows: Vec<T>,
    /// Where the next page starts (exclusive), None at the end.
    pub next: Option<Uuid>,
    /// True when the page stopped at the scan window before filling up: the rows below
    /// `next` have not been looked at yet.
    pub window_exhausted: bool,
}

/// The lowest id of the `window` newest jobs matching the indexed part of `f` below
/// `before`, or None when fewer exist (the window reaches the end).
async fn window_floor(
    conn: &mut AsyncPgConnection,
    f: &JobFilter,
    before: Option<Uuid>,
    window: i64,
) -> QueryResult<Option<Uuid>> {
    indexed(f, before)
        .order(jobs::id.desc())
        .offset(window - 1)
        .limit(1)
        .select(jobs::id)
        .first(conn)
        .await
        .optional()
}

/// A page of jobs matching `f`, newest first, strictly below `before`.
pub async fn list_jobs(
    conn: &mut AsyncPgConnection,
    f: &JobFilter,
    before: Option<Uuid>,
    limit: i64,
) -> QueryResult<KeysetPage<JobSummaryRow>> {
    let floor = if f.windowed() {
        window_floor(conn, f, before, SCAN_WINDOW).await?
    } else {
        None
    };
    let mut q = filtered(f, before);
    if let Some(floor) = floor {
        q = q.filter(jobs::id.ge(floor));
    }
    let mut rows: Vec<JobSummaryRow> = q
        .order(jobs::id.desc())
        .limit(limit + 1)
        .select(JobSummaryRow::as_select())
        .load(conn)
        .await?;
    let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) > limit;
    if full {
        rows.truncate(usize::try_from(limit).unwrap_or(0));
        let next = rows.last().map(|r| r.id);
        return Ok(KeysetPage {
            rows,
            next,
            window_exhausted: false,
        });
    }
    // Not full: either the end, or the window's floor (continue strictly below it; the
    // floor row itself was inside the window and has been looked at).
    Ok(KeysetPage {
        rows,
        next: floor,
        window_exhausted: floor.is_some(),
    })
}

/// Counts the jobs matching `f`, stopping at `cap + 1`: (count, exact).
pub async fn count_jobs(
    conn: &mut AsyncPgConnection,
    f: &JobFilter,
    cap: i64,
) -> QueryResult<(i64, bool)> {
    let ids: Vec<Uuid> = filtered(f, None)
        .select(jobs::id)
        .limit(cap + 1)
        .load(conn)
        .await?;
    let n = i64::try_from(ids.len()).unwrap_or(i64::MAX);
    Ok((n.min(cap), n <= cap))
}

/// Up to `limit` ids matching `f` strictly below `before`, newest first: one batch of a bulk
/// action by filter.
pub async fn batch_ids(
    conn: &mut AsyncPgConnection,
    f: &JobFilter,
    before: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<Uuid>> {
    filtered(f, before)
        .order(jobs::id.desc())
        .limit(limit)
        .select(jobs::id)
        .load(conn)
        .await
}

/// Of `ids`, those in `campus` (all of them when None).
pub async fn ids_in_campus(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    campus: Option<Uuid>,
) -> QueryResult<Vec<Uuid>> {
    let mut q = jobs::table.filter(jobs::id.eq_any(ids)).into_boxed();
    if let Some(c) = campus {
        q = q.filter(jobs::campus_id.eq(c));
    }
    q.select(jobs::id).load(conn).await
}

#[derive(QueryableByName)]
struct QueueRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    queue: String,
}

async fn notify_queues(conn: &mut AsyncPgConnection, queues: &[String]) -> QueryResult<()> {
    for q in queues {
        diesel::sql_query("SELECT pg_notify($1, $2)")
            .bind::<Text, _>(super::jobs::JOBS_CHANNEL)
            .bind::<Text, _>(q)
            .execute(conn)
            .await?;
    }
    Ok(())
}

fn distinct_queues(rows: &[QueueRow]) -> Vec<String> {
    let mut qs: Vec<String> = rows.iter().map(|r| r.queue.clone()).collect();
    qs.sort_unstable();
    qs.dedup();
    qs
}

/// Puts the dead jobs among `ids` back in their queues with fresh attempts (as
/// `store::jobs::retry_dead` does for one); returns the ids retried.
pub async fn retry_dead_many(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<Uuid>> {
    let rows: Vec<QueueRow> = diesel::sql_query(
        "UPDATE jobs SET state = 'queued', attempt = 0, run_at = now(), finished_at = NULL, \
             cancel_requested = false, updated_at = now() \
         WHERE id = ANY($1) AND state = 'dead' RETURNING id, queue",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .load(conn)
    .await?;
    notify_queues(conn, &distinct_queues(&rows)).await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// Cancels the unfinished jobs among `ids` (queued: at once; running: their worker is told to
/// stop, as `store::jobs::cancel` does for one); returns the ids cancelled or flagged.
pub async fn cancel_many(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<Uuid>> {
    let queued: Vec<Uuid> = diesel::update(
        jobs::table
            .filter(jobs::id.eq_any(ids))
            .filter(jobs::state.eq("queued")),
    )
    .set((
        jobs::state.eq("cancelled"),
        jobs::finished_at.eq(diesel::dsl::now),
        jobs::updated_at.eq(diesel::dsl::now),
    ))
    .returning(jobs::id)
    .get_results(conn)
    .await?;
    let running: Vec<Uuid> = diesel::update(
        jobs::table
            .filter(jobs::id.eq_any(ids))
            .filter(jobs::state.eq("running"))
            .filter(jobs::cancel_requested.eq(false)),
    )
    .set((
        jobs::cancel_requested.eq(true),
        jobs::updated_at.eq(diesel::dsl::now),
    ))
    .returning(jobs::id)
    .get_results(conn)
    .await?;
    for id in &running {
        diesel::sql_query("SELECT pg_notify($1, $2)")
            .bind::<Text, _>(super::jobs::CANCEL_CHANNEL)
            .bind::<Text, _>(id.to_string())
            .execute(conn)
            .await?;
    }
    Ok(queued.into_iter().chain(running).collect())
}

/// Deletes the jobs among `ids` that are not running (a running job belongs to its worker
/// until it ends); returns the ids deleted.
pub async fn delete_many(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<Uuid>> {
    diesel::delete(
        jobs::table
            .filter(jobs::id.eq_any(ids))
            .filter(jobs::state.ne("running")),
    )
    .returning(jobs::id)
    .get_results(conn)
    .await
}

/// Figures of one queue, from the hot set only (queued and running jobs).
#[derive(Debug, Clone, QueryableByName)]
pub struct QueueStatsRow {
    /// Queue name.
    #[diesel(sql_type = Text)]
    pub queue: String,
    /// Queued and due now.
    #[diesel(sql_type = BigInt)]
    pub ready: i64,
    /// Queued for later (delayed, or a retry backing off).
    #[diesel(sql_type = BigInt)]
    pub scheduled: i64,
    /// Running.
    #[diesel(sql_type = BigInt)]
    pub running: i64,
    /// `run_at` of the oldest job that is due and waiting.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub oldest_ready: Option<DateTime<Utc>>,
}

/// Queue figures of the hot set, optionally of one campus.
pub async fn queue_stats(
    conn: &mut AsyncPgConnection,
    campus: Option<Uuid>,
) -> QueryResult<Vec<QueueStatsRow>> {
    diesel::sql_query(
        "SELECT queue, \
           count(*) FILTER (WHERE state = 'queued' AND run_at <= now()) AS ready, \
           count(*) FILTER (WHERE state = 'queued' AND run_at > now()) AS scheduled, \
           count(*) FILTER (WHERE state = 'running') AS running, \
           min(run_at) FILTER (WHERE state = 'queued' AND run_at <= now()) AS oldest_ready \
         FROM jobs WHERE state IN ('queued', 'running') AND ($1::uuid IS NULL OR campus_id = $1) \
         GROUP BY queue ORDER BY queue",
    )
    .bind::<Nullable<SqlUuid>, _>(campus)
    .load(conn)
    .await
}

/// Jobs finished in one minute, per kind and queue.
#[derive(Debug, Clone, QueryableByName)]
pub struct MinuteRow {
    /// Start of the minute.
    #[diesel(sql_type = Timestamptz)]
    pub minute: DateTime<Utc>,
    /// Kind.
    #[diesel(sql_type = Text)]
    pub kind: String,
    /// Queue.
    #[diesel(sql_type = Text)]
    pub queue: String,
    /// Completed in that minute.
    #[diesel(sql_type = BigInt)]
    pub completed: i64,
    /// Failed for good (dead) in that minute.
    #[diesel(sql_type = BigInt)]
    pub failed: i64,
}

/// Per-minute completed/dead counts since `since`, read from the finished jobs themselves
/// (`jobs_finished_idx`).
pub async fn minute_counts_from_jobs(
    conn: &mut AsyncPgConnection,
    since: DateTime<Utc>,
    campus: Option<Uuid>,
) -> QueryResult<Vec<MinuteRow>> {
    diesel::sql_query(
        "SELECT date_trunc('minute', finished_at) AS minute, kind, queue, \
           count(*) FILTER (WHERE state = 'completed') AS completed, \
           count(*) FILTER (WHERE state = 'dead') AS failed \
         FROM jobs WHERE finished_at >= $1 AND ($2::uuid IS NULL OR campus_id = $2) \
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .bind::<Timestamptz, _>(since)
    .bind::<Nullable<SqlUuid>, _>(campus)
    .load(conn)
    .await
}

/// The job of a unique key (a cron tick), if any: (id, state, finished_at).
pub async fn find_by_unique_key(
    conn: &mut AsyncPgConnection,
    key: &str,
) -> QueryResult<Option<(Uuid, String, Option<DateTime<Utc>>)>> {
    jobs::table
        .filter(jobs::unique_key.eq(key))
        .select((jobs::id, jobs::state, jobs::finished_at))
        .first(conn)
        .await
        .optional()
}

/// A page of audit entries (optionally of one campus, actor or action), newest first,
/// strictly below `before`. Served by `audit_log_campus_idx`/`_actor_idx`/`_action_idx`
/// or the primary key.
pub async fn list_audit(
    conn: &mut AsyncPgConnection,
    campus: Option<Uuid>,
    actor: Option<Uuid>,
    action: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> QueryResult<Vec<super::audit::AuditRow>> {
    let mut q = audit_log::table.into_boxed();
    if let Some(c) = campus {
        q = q.filter(audit_log::campus_id.eq(c));
    }
    if let Some(a) = actor {
        q = q.filter(audit_log::actor_id.eq(a));
    }
    if let Some(a) = action {
        q = q.filter(audit_log::action.eq(a));
    }
    if let Some(b) = before {
        q = q.filter(audit_log::id.lt(b));
    }
    q.order(audit_log::id.desc())
        .limit(limit)
        .select(super::audit::AuditRow::as_select())
        .load(conn)
        .await
}

/// A page of dead (or pending) outbox events, newest first, strictly below `before`.
pub async fn list_outbox(
    conn: &mut AsyncPgConnection,
    dead: bool,
    campus: Option<Uuid>,
    before: Option<i64>,
    limit: i64,
) -> QueryResult<Vec<super::outbox::OutboxEventRow>> {
    let mut q = outbox_events::table.into_boxed();
    q = if dead {
        q.filter(outbox_events::dead_at.is_not_null())
    } else {
        q.filter(outbox_events::published_at.is_null())
            .filter(outbox_events::dead_at.is_null())
    };
    if let Some(c) = campus {
        q = q.filter(outbox_events::campus_id.eq(c));
    }
    if let Some(b) = before {
        q = q.filter(outbox_events::id.lt(b));
    }
    q.order(outbox_events::id.desc())
        .limit(limit)
        .select(super::outbox::OutboxEventRow::as_select())
        .load(conn)
        .await
}

/// Outbox figures, optionally of one campus: (pending, dead, oldest pending).
#[derive(Debug, Clone, Copy, QueryableByName)]
pub struct OutboxStatsRow {
    /// Unpublished, not dead.
    #[diesel(sql_type = BigInt)]
    pub pending: i64,
    /// Dead.
    #[diesel(sql_type = BigInt)]
    pub dead: i64,
    /// `created_at` of the oldest pending event.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub oldest: Option<DateTime<Utc>>,
}

/// Outbox figures, each part answered by a partial index.
pub async fn outbox_stats(
    conn: &mut AsyncPgConnection,
    campus: Option<Uuid>,
) -> QueryResult<OutboxStatsRow> {
    diesel::sql_query(
        "SELECT \
           (SELECT count(*) FROM outbox_events WHERE published_at IS NULL AND dead_at IS NULL \
              AND ($1::uuid IS NULL OR campus_id = $1)) AS pending, \
           (SELECT count(*) FROM outbox_events WHERE dead_at IS NOT NULL \
              AND ($1::uuid IS NULL OR campus_id = $1)) AS dead, \
           (SELECT min(created_at) FROM outbox_events WHERE published_at IS NULL AND dead_at IS NULL \
              AND ($1::uuid IS NULL OR campus_id = $1)) AS oldest",
    )
    .bind::<Nullable<SqlUuid>, _>(campus)
    .get_result(conn)
    .await
}

/// Live workers' totals: (workers, slots, running).
#[derive(Debug, Clone, Copy, QueryableByName)]
pub struct WorkerTotalsRow {
    /// Workers that heartbeated within the window.
    #[diesel(sql_type = BigInt)]
    pub alive: i64,
    /// Their slots.
    #[diesel(sql_type = BigInt)]
    pub slots: i64,
    /// Jobs they ran at their last heartbeat.
    #[diesel(sql_type = BigInt)]
    pub running: i64,
}

/// Totals of the workers that heartbeated within `alive_secs`.
pub async fn worker_totals(
    conn: &mut AsyncPgConnection,
    alive_secs: i32,
) -> QueryResult<WorkerTotalsRow> {
    diesel::sql_query(
        "SELECT count(*) AS alive, coalesce(sum(concurrency), 0)::bigint AS slots, \
           coalesce(sum(running), 0)::bigint AS running \
         FROM workers WHERE heartbeat_at >= now() - make_interval(secs => $1)",
    )
    .bind::<Int4, _>(alive_secs)
    .get_result(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_text_is_matched_literally() {
        assert_eq!(like_pattern("a%b_c\\"), "%a\\%b\\_c\\\\%");
        assert_eq!(like_pattern("taco"), "%taco%");
    }
}
