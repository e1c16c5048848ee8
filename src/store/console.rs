//! Read models and bulk changes behind the operator console (`/admin/console/*`): keyset
//! pages of jobs, audit entries and outbox events, bounded counts, queue figures and the
//! per-minute throughput of one campus.
//!
//! Jobs live in two tables (issue 12): `jobs` holds the hot set (queued, running) and
//! `jobs_history` the finished ones; the same filter runs on each (skipping a table the
//! state filter excludes) and the pages are merged by id.
//!
//! Every query here must stay fast on millions of finished jobs: pages are keyset
//! (`id < cursor ORDER BY id DESC`, UUIDv7 ids sort by creation time; `jobs_history` has
//! `(state, id)` and `(campus_id, id)` indexes for them), counts stop at a cap
//! (`SELECT … LIMIT cap+1`), and a filter no index answers (kind, queue, text in the payload)
//! only ever looks at a bounded window of rows per request: the page then says where it
//! stopped, and the next request continues from there.
//!
//! L1: depends on `schema` and `store::jobs` only. Never opens a transaction.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Int4, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::{audit_log, jobs, jobs_history, outbox_events};
use crate::domain::job::JobState;

/// How many rows a windowed (unindexed) filter may look at per table and request.
pub const SCAN_WINDOW: i64 = 10_000;

/// A job as a console list shows it: no payload body, no result body.
#[derive(Debug, Clone, Queryable)]
pub struct JobSummaryRow {
    /// Id.
    pub id: Uuid,
    /// Handler name.
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// 0 high, 1 normal, 2 low.
    pub priority: i16,
    /// State (stored as its name; an unknown one fails the query).
    pub state: JobState,
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

    /// True when the state filter admits a state of the hot table.
    fn wants_hot(&self) -> bool {
        self.states
            .as_ref()
            .is_none_or(|s| s.iter().any(|s| s == "queued" || s == "running"))
    }

    /// True when the state filter admits a finished state.
    fn wants_history(&self) -> bool {
        self.states
            .as_ref()
            .is_none_or(|s| s.iter().any(|s| s != "queued" && s != "running"))
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

/// The same queries on `jobs` and `jobs_history` (identical column names): the hot and the
/// finished half of every console list, count and bulk batch.
macro_rules! job_queries {
    (
        $table:ident,
        $indexed:ident,
        $filtered:ident,
        $summary:ident,
        $floor:ident,
        $newest_ids:ident,
        $count_upto:ident
    ) => {
        /// The rows matching the indexed part of `f` (campus, states) below `before`.
        fn $indexed<'a>(
            f: &'a JobFilter,
            before: Option<Uuid>,
        ) -> $table::BoxedQuery<'a, diesel::pg::Pg> {
            let mut q = $table::table.into_boxed();
            if let Some(c) = f.campus_id {
                q = q.filter($table::campus_id.eq(c));
            }
            if let Some(states) = &f.states {
                q = q.filter($table::state.eq_any(states));
            }
            if let Some(b) = before {
                q = q.filter($table::id.lt(b));
            }
            q
        }

        /// Everything in `f`, below `before`.
        fn $filtered<'a>(
            f: &'a JobFilter,
            before: Option<Uuid>,
        ) -> $table::BoxedQuery<'a, diesel::pg::Pg> {
            let mut q = $indexed(f, before);
            if let Some(k) = &f.kind {
                q = q.filter($table::kind.eq(k));
            }
            if let Some(queue) = &f.queue {
                q = q.filter($table::queue.eq(queue));
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

        /// The list columns.
        async fn $summary(
            conn: &mut AsyncPgConnection,
            f: &JobFilter,
            before: Option<Uuid>,
            floor: Option<Uuid>,
            limit: i64,
        ) -> QueryResult<Vec<JobSummaryRow>> {
            let mut q = $filtered(f, before);
            if let Some(floor) = floor {
                q = q.filter($table::id.ge(floor));
            }
            q.order($table::id.desc())
                .limit(limit)
                .select((
                    $table::id,
                    $table::kind,
                    $table::queue,
                    $table::priority,
                    $table::state,
                    $table::attempt,
                    $table::max_attempts,
                    $table::progress,
                    $table::last_error,
                    $table::campus_id,
                    $table::created_at,
                    $table::run_at,
                    $table::finished_at.nullable(),
                ))
                .load(conn)
                .await
        }

        /// The id of the `window`-th newest row matching the indexed part of `f` below
        /// `before`; None when there are fewer.
        async fn $floor(
            conn: &mut AsyncPgConnection,
            f: &JobFilter,
            before: Option<Uuid>,
            window: i64,
        ) -> QueryResult<Option<Uuid>> {
            $indexed(f, before)
                .order($table::id.desc())
                .offset(window - 1)
                .limit(1)
                .select($table::id)
                .first(conn)
                .await
                .optional()
        }

        /// Up to `limit` ids matching `f` below `before`, newest first.
        async fn $newest_ids(
            conn: &mut AsyncPgConnection,
            f: &JobFilter,
            before: Option<Uuid>,
            limit: i64,
        ) -> QueryResult<Vec<Uuid>> {
            $filtered(f, before)
                .order($table::id.desc())
                .limit(limit)
                .select($table::id)
                .load(conn)
                .await
        }

        /// How many rows match `f`, counting no further than `cap + 1`.
        async fn $count_upto(
            conn: &mut AsyncPgConnection,
            f: &JobFilter,
            cap: i64,
        ) -> QueryResult<usize> {
            let ids: Vec<Uuid> = $filtered(f, None)
                .select($table::id)
                .limit(cap + 1)
                .load(conn)
                .await?;
            Ok(ids.len())
        }
    };
}

job_queries!(
    jobs,
    hot_indexed,
    hot_filtered,
    hot_summaries,
    hot_floor,
    hot_newest_ids,
    hot_count_upto
);
job_queries!(
    jobs_history,
    history_indexed,
    history_filtered,
    history_summaries,
    history_floor,
    history_newest_ids,
    history_count_upto
);

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
/// `before`, in the table with the tighter bound; None when both have fewer (the window
/// reaches the end). Rows at or above it are at most `window` per table.
async fn window_floor(
    conn: &mut AsyncPgConnection,
    f: &JobFilter,
    before: Option<Uuid>,
    window: i64,
) -> QueryResult<Option<Uuid>> {
    let hot = if f.wants_hot() {
        hot_floor(conn, f, before, window).await?
    } else {
        None
    };
    let history = if f.wants_history() {
        history_floor(conn, f, before, window).await?
    } else {
        None
    };
    Ok(hot.max(history))
}

/// The newest `limit` rows of both tables below `before` (and at or above `floor`).
async fn merged(
    conn: &mut AsyncPgConnection,
    f: &JobFilter,
    before: Option<Uuid>,
    floor: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<JobSummaryRow>> {
    let mut rows = if f.wants_hot() {
        hot_summaries(conn, f, before, floor, limit).await?
    } else {
        Vec::new()
    };
    if f.wants_history() {
        rows.extend(history_summaries(conn, f, before, floor, limit).await?);
    }
    rows.sort_unstable_by_key(|r| std::cmp::Reverse(r.id));
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    Ok(rows)
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
    let mut rows = merged(conn, f, before, floor, limit + 1).await?;
    if i64::try_from(rows.len()).unwrap_or(i64::MAX) > limit {
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

/// Counts the jobs matching `f`, stopping at `cap + 1` per table: (count, exact).
pub async fn count_jobs(
    conn: &mut AsyncPgConnection,
    f: &JobFilter,
    cap: i64,
) -> QueryResult<(i64, bool)> {
    let mut n = 0usize;
    if f.wants_hot() {
        n += hot_count_upto(conn, f, cap).await?;
    }
    if f.wants_history() && i64::try_from(n).unwrap_or(i64::MAX) <= cap {
        n += history_count_upto(conn, f, cap).await?;
    }
    let n = i64::try_from(n).unwrap_or(i64::MAX);
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
    let mut ids: Vec<Uuid> = if f.wants_hot() {
        hot_newest_ids(conn, f, before, limit).await?
    } else {
        Vec::new()
    };
    if f.wants_history() {
        ids.extend(history_newest_ids(conn, f, before, limit).await?);
    }
    ids.sort_unstable_by_key(|id| std::cmp::Reverse(*id));
    ids.truncate(usize::try_from(limit).unwrap_or(0));
    Ok(ids)
}

/// Of `ids`, those in `campus` (all that exist when None), in either table.
pub async fn ids_in_campus(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    campus: Option<Uuid>,
) -> QueryResult<Vec<Uuid>> {
    let mut hot = jobs::table.filter(jobs::id.eq_any(ids)).into_boxed();
    let mut done = jobs_history::table
        .filter(jobs_history::id.eq_any(ids))
        .into_boxed();
    if let Some(c) = campus {
        hot = hot.filter(jobs::campus_id.eq(c));
        done = done.filter(jobs_history::campus_id.eq(c));
    }
    let mut out: Vec<Uuid> = hot.select(jobs::id).load(conn).await?;
    out.extend(done.select(jobs_history::id).load::<Uuid>(conn).await?);
    Ok(out)
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// Of `ids`, those in the hot table (queued or running: what a cancel applies to).
pub async fn hot_ids(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<Uuid>> {
    jobs::table
        .filter(jobs::id.eq_any(ids))
        .select(jobs::id)
        .load(conn)
        .await
}

/// The distinct queues of the hot jobs among `ids` (to wake their workers).
pub async fn queues_of(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<String>> {
    jobs::table
        .filter(jobs::id.eq_any(ids))
        .select(jobs::queue)
        .distinct()
        .load(conn)
        .await
}

/// Deletes the finished jobs among `ids` (and their unique keys); returns the ids deleted.
/// Queued and running jobs are never deleted: cancel them first (a queued flow step must
/// end through the engine, which tells its flow).
pub async fn delete_finished_many(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> QueryResult<Vec<Uuid>> {
    let rows: Vec<IdRow> = diesel::sql_query(
        "WITH del AS (DELETE FROM jobs_history WHERE id = ANY($1) RETURNING id, unique_key), \
              keys AS (DELETE FROM job_keys WHERE unique_key IN \
                  (SELECT unique_key FROM del WHERE unique_key IS NOT NULL)) \
         SELECT id FROM del",
    )
    .bind::<diesel::sql_types::Array<SqlUuid>, _>(ids)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// Figures of one queue, from the hot table (queued and running jobs) and `job_queues`.
#[derive(Debug, Clone, QueryableByName)]
pub struct QueueStatsRow {
    /// Queue name.
    #[diesel(sql_type = Text)]
    pub queue: String,
    /// Claims skip it.
    #[diesel(sql_type = Bool)]
    pub paused: bool,
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

/// Queue figures of the hot set, optionally of one campus, with each queue's pause flag.
pub async fn queue_stats(
    conn: &mut AsyncPgConnection,
    campus: Option<Uuid>,
) -> QueryResult<Vec<QueueStatsRow>> {
    diesel::sql_query(
        "SELECT queue, coalesce(p.paused, false) AS paused, coalesce(c.ready, 0) AS ready, \
             coalesce(c.scheduled, 0) AS scheduled, coalesce(c.running, 0) AS running, \
             c.oldest_ready \
         FROM (SELECT queue, \
                 count(*) FILTER (WHERE state = 'queued' AND run_at <= now()) AS ready, \
                 count(*) FILTER (WHERE state = 'queued' AND run_at > now()) AS scheduled, \
                 count(*) FILTER (WHERE state = 'running') AS running, \
                 min(run_at) FILTER (WHERE state = 'queued' AND run_at <= now()) AS oldest_ready \
               FROM jobs WHERE ($1::uuid IS NULL OR campus_id = $1) GROUP BY queue) c \
         FULL JOIN job_queues p USING (queue) ORDER BY queue",
    )
    .bind::<Nullable<SqlUuid>, _>(campus)
    .load(conn)
    .await
}

/// Jobs finished in one minute, per kind and queue, of one campus.
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
    /// Died in that minute.
    #[diesel(sql_type = BigInt)]
    pub dead: i64,
}

/// The smallest UUIDv7 of a millisecond: every v7 id made at or after `t` sorts above it.
pub fn uuid_v7_floor(t: DateTime<Utc>) -> Uuid {
    let ms = u64::try_from(t.timestamp_millis()).unwrap_or(0);
    let b = ms.to_be_bytes();
    Uuid::from_bytes([
        b[2], b[3], b[4], b[5], b[6], b[7], 0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, 0,
    ])
}

/// Per-minute completed/dead counts of one campus since `since`, read from its finished
/// jobs created since `created_after` through `jobs_history_campus_id_idx` (the counters of
/// `job_counts_minute` have no campus).
pub async fn campus_minute_counts(
    conn: &mut AsyncPgConnection,
    campus: Uuid,
    since: DateTime<Utc>,
    created_after: DateTime<Utc>,
) -> QueryResult<Vec<MinuteRow>> {
    diesel::sql_query(
        "SELECT date_trunc('minute', finished_at) AS minute, kind, queue, \
           count(*) FILTER (WHERE state = 'completed') AS completed, \
           count(*) FILTER (WHERE state = 'dead') AS dead \
         FROM jobs_history WHERE campus_id = $1 AND id >= $2 AND finished_at >= $3 \
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .bind::<SqlUuid, _>(campus)
    .bind::<SqlUuid, _>(uuid_v7_floor(created_after))
    .bind::<Timestamptz, _>(since)
    .load(conn)
    .await
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
    fn the_v7_floor_sorts_below_every_id_of_its_millisecond() {
        let t = Utc::now();
        let floor = uuid_v7_floor(t);
        assert_eq!(floor.get_version_num(), 7);
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            u64::try_from(t.timestamp()).unwrap(),
            t.timestamp_subsec_nanos(),
        );
        assert!(Uuid::new_v7(ts) >= floor);
        assert!(Uuid::new_v7(ts) < uuid_v7_floor(t + chrono::Duration::milliseconds(1)));
    }

    #[test]
    fn search_text_is_matched_literally() {
        assert_eq!(like_pattern("a%b_c\\"), "%a\\%b\\_c\\\\%");
        assert_eq!(like_pattern("taco"), "%taco%");
    }
}
