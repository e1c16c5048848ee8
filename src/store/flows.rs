//! `flows`, `flow_versions`, `flow_runs`, `flow_steps`, `flow_schedules`: storage of flow
//! definitions and runs. Functions run in the caller's transaction and never commit. The run
//! row is the lock of a run's advancement: whoever changes a run's steps locks its run row
//! first (`lock_runs*`, always in id order, so two transactions never deadlock on runs).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Int4, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::{flow_runs, flow_schedules, flow_steps, flow_versions, flows};

/// A flow (its current version number; the definition is in `flow_versions`).
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = flows)]
pub struct FlowRow {
    /// Id.
    pub id: Uuid,
    /// Campus it belongs to.
    pub campus_id: Uuid,
    /// Unique per campus.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Version new runs use.
    pub version: i32,
    /// Creator.
    pub created_by: Option<Uuid>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Soft-deleted (runs keep pointing at it).
    pub deleted_at: Option<DateTime<Utc>>,
}

/// One version of a flow.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = flow_versions)]
pub struct VersionRow {
    /// Flow.
    pub flow_id: Uuid,
    /// 1, 2, …
    pub version: i32,
    /// `domain::flow::Definition` as JSON.
    pub definition: serde_json::Value,
    /// Author.
    pub created_by: Option<Uuid>,
    /// Saved.
    pub created_at: DateTime<Utc>,
}

/// A run.
#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = flow_runs)]
pub struct RunRow {
    /// Id.
    pub id: Uuid,
    /// Flow.
    pub flow_id: Uuid,
    /// The version it runs (fixed at start).
    pub version: i32,
    /// The flow's name at start.
    pub flow_name: String,
    /// Campus.
    pub campus_id: Uuid,
    /// running, succeeded, failed, cancelled.
    pub status: String,
    /// Run input.
    pub input: serde_json::Value,
    /// Who started it.
    pub user_id: Option<Uuid>,
    /// api or schedule.
    pub trigger: String,
    /// Schedule tick key.
    pub unique_key: Option<String>,
    /// Steps not finished.
    pub steps_remaining: i32,
    /// Steps failed (policy fail/continue).
    pub steps_failed: i32,
    /// Event version counter.
    pub event_seq: i32,
    /// Started.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A new run.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = flow_runs, treat_none_as_default_value = false)]
pub struct NewRunRow {
    /// Id.
    pub id: Uuid,
    /// Flow.
    pub flow_id: Uuid,
    /// Version.
    pub version: i32,
    /// Flow name.
    pub flow_name: String,
    /// Campus.
    pub campus_id: Uuid,
    /// Input.
    pub input: serde_json::Value,
    /// Starter.
    pub user_id: Option<Uuid>,
    /// api or schedule.
    pub trigger: String,
    /// Schedule tick key.
    pub unique_key: Option<String>,
    /// Number of steps.
    pub steps_remaining: i32,
}

/// A step (item_index None) or a fan-out instance of one.
#[derive(Debug, Clone, Queryable, Selectable, QueryableByName, Insertable)]
#[diesel(table_name = flow_steps, treat_none_as_default_value = false)]
pub struct StepRow {
    /// Id (the jobs' `flow_step_id`).
    pub id: Uuid,
    /// Run.
    pub run_id: Uuid,
    /// Step id in the definition.
    pub step_key: String,
    /// Fan-out element index.
    pub item_index: Option<i32>,
    /// `domain::flow::step_state`.
    pub state: String,
    /// Dependencies not finished.
    pub deps_remaining: i32,
    /// Fan-out: instances.
    pub items_total: Option<i32>,
    /// Fan-out: instances not finished.
    pub items_remaining: Option<i32>,
    /// Fan-out: instances failed.
    pub items_failed: i32,
    /// Current job.
    pub job_id: Option<Uuid>,
    /// Attempts of the last job.
    pub attempt: i32,
    /// Resolved input.
    pub input: Option<serde_json::Value>,
    /// Output.
    pub output: Option<serde_json::Value>,
    /// Failure.
    pub error: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Enqueued.
    pub started_at: Option<DateTime<Utc>>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A schedule row (materialised from the flow's current version).
#[derive(Debug, Clone, Queryable, Selectable, QueryableByName, Insertable)]
#[diesel(table_name = flow_schedules)]
pub struct ScheduleRow {
    /// Flow.
    pub flow_id: Uuid,
    /// Index in the definition's `schedules`.
    pub idx: i32,
    /// Version it came from.
    pub version: i32,
    /// Cron expression.
    pub cron: String,
    /// IANA zone.
    pub time_zone: String,
    /// Run input.
    pub input: serde_json::Value,
    /// Next tick.
    pub next_run_at: DateTime<Utc>,
}

// ----------------------------------------------------------------------------- flows

/// Inserts a flow and its first version.
pub async fn insert_flow(
    conn: &mut AsyncPgConnection,
    flow: &FlowRow,
    version: &VersionRow,
) -> QueryResult<()> {
    diesel::insert_into(flows::table)
        .values(flow)
        .execute(conn)
        .await?;
    insert_version(conn, version).await
}

/// Inserts a version.
pub async fn insert_version(conn: &mut AsyncPgConnection, v: &VersionRow) -> QueryResult<()> {
    diesel::insert_into(flow_versions::table)
        .values(v)
        .execute(conn)
        .await
        .map(drop)
}

/// A live (not deleted) flow.
pub async fn find_flow(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<FlowRow>> {
    flows::table
        .find(id)
        .filter(flows::deleted_at.is_null())
        .select(FlowRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A live flow, locked.
pub async fn lock_flow(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<FlowRow>> {
    flows::table
        .find(id)
        .filter(flows::deleted_at.is_null())
        .select(FlowRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// A live flow by campus and name.
pub async fn find_flow_by_name(
    conn: &mut AsyncPgConnection,
    campus_id: Uuid,
    name: &str,
) -> QueryResult<Option<FlowRow>> {
    flows::table
        .filter(flows::campus_id.eq(campus_id))
        .filter(flows::name.eq(name))
        .filter(flows::deleted_at.is_null())
        .select(FlowRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Live flows of a campus (None: all campuses), by name.
pub async fn list_flows(
    conn: &mut AsyncPgConnection,
    campus_id: Option<Uuid>,
    limit: i64,
    offset: i64,
) -> QueryResult<(Vec<FlowRow>, i64)> {
    let scoped = || {
        let mut q = flows::table
            .filter(flows::deleted_at.is_null())
            .into_boxed();
        if let Some(c) = campus_id {
            q = q.filter(flows::campus_id.eq(c));
        }
        q
    };
    let rows = scoped()
        .order((flows::name.asc(), flows::id.asc()))
        .limit(limit)
        .offset(offset)
        .select(FlowRow::as_select())
        .load(conn)
        .await?;
    let total = scoped().count().get_result(conn).await?;
    Ok((rows, total))
}

/// Sets name, description and current version.
pub async fn update_flow(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    name: &str,
    description: &str,
    version: i32,
) -> QueryResult<FlowRow> {
    diesel::update(flows::table.find(id))
        .set((
            flows::name.eq(name),
            flows::description.eq(description),
            flows::version.eq(version),
            flows::updated_at.eq(diesel::dsl::now),
        ))
        .returning(FlowRow::as_returning())
        .get_result(conn)
        .await
}

/// Soft-deletes a flow and drops its schedules (runs keep their version).
pub async fn delete_flow(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<bool> {
    let n = diesel::update(flows::table.find(id).filter(flows::deleted_at.is_null()))
        .set(flows::deleted_at.eq(diesel::dsl::now))
        .execute(conn)
        .await?;
    diesel::delete(flow_schedules::table.filter(flow_schedules::flow_id.eq(id)))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// One version.
pub async fn find_version(
    conn: &mut AsyncPgConnection,
    flow_id: Uuid,
    version: i32,
) -> QueryResult<Option<VersionRow>> {
    flow_versions::table
        .find((flow_id, version))
        .select(VersionRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Every version of a flow, newest first.
pub async fn list_versions(
    conn: &mut AsyncPgConnection,
    flow_id: Uuid,
) -> QueryResult<Vec<VersionRow>> {
    flow_versions::table
        .filter(flow_versions::flow_id.eq(flow_id))
        .order(flow_versions::version.desc())
        .select(VersionRow::as_select())
        .load(conn)
        .await
}

/// The definitions of these (flow, version) pairs.
pub async fn definitions(
    conn: &mut AsyncPgConnection,
    keys: &[(Uuid, i32)],
) -> QueryResult<Vec<VersionRow>> {
    let flows: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
    let versions: Vec<i32> = keys.iter().map(|k| k.1).collect();
    diesel::sql_query(
        "SELECT v.flow_id, v.version, v.definition, v.created_by, v.created_at \
         FROM flow_versions v JOIN unnest($1::uuid[], $2::int4[]) AS k(f, n) \
         ON v.flow_id = k.f AND v.version = k.n",
    )
    .bind::<Array<SqlUuid>, _>(flows)
    .bind::<Array<Int4>, _>(versions)
    .load::<VersionByName>(conn)
    .await
    .map(|rows| rows.into_iter().map(VersionRow::from).collect())
}

#[derive(QueryableByName)]
struct VersionByName {
    #[diesel(sql_type = SqlUuid)]
    flow_id: Uuid,
    #[diesel(sql_type = Int4)]
    version: i32,
    #[diesel(sql_type = Jsonb)]
    definition: serde_json::Value,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    created_by: Option<Uuid>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
}

impl From<VersionByName> for VersionRow {
    fn from(v: VersionByName) -> Self {
        Self {
            flow_id: v.flow_id,
            version: v.version,
            definition: v.definition,
            created_by: v.created_by,
            created_at: v.created_at,
        }
    }
}

// ----------------------------------------------------------------------------- schedules

/// Replaces a flow's schedules.
pub async fn replace_schedules(
    conn: &mut AsyncPgConnection,
    flow_id: Uuid,
    rows: &[ScheduleRow],
) -> QueryResult<()> {
    diesel::delete(flow_schedules::table.filter(flow_schedules::flow_id.eq(flow_id)))
        .execute(conn)
        .await?;
    if !rows.is_empty() {
        diesel::insert_into(flow_schedules::table)
            .values(rows)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Claims due schedules (locked, skipping those another worker is firing).
pub async fn claim_due_schedules(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<ScheduleRow>> {
    flow_schedules::table
        .filter(flow_schedules::next_run_at.le(now))
        .order(flow_schedules::next_run_at.asc())
        .limit(limit)
        .select(ScheduleRow::as_select())
        .for_update()
        .skip_locked()
        .load(conn)
        .await
}

/// Moves a schedule to its next tick.
pub async fn set_next_run(
    conn: &mut AsyncPgConnection,
    flow_id: Uuid,
    idx: i32,
    next: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(flow_schedules::table.find((flow_id, idx)))
        .set(flow_schedules::next_run_at.eq(next))
        .execute(conn)
        .await
        .map(drop)
}

/// A flow's schedules.
pub async fn list_schedules(
    conn: &mut AsyncPgConnection,
    flow_id: Uuid,
) -> QueryResult<Vec<ScheduleRow>> {
    flow_schedules::table
        .filter(flow_schedules::flow_id.eq(flow_id))
        .order(flow_schedules::idx.asc())
        .select(ScheduleRow::as_select())
        .load(conn)
        .await
}

// ----------------------------------------------------------------------------- runs

/// Inserts a run; None when its unique key exists (a schedule tick already fired).
pub async fn insert_run(
    conn: &mut AsyncPgConnection,
    run: &NewRunRow,
) -> QueryResult<Option<RunRow>> {
    diesel::insert_into(flow_runs::table)
        .values(run)
        .on_conflict(flow_runs::unique_key)
        .filter_target(flow_runs::unique_key.is_not_null())
        .do_nothing()
        .returning(RunRow::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// A run.
pub async fn find_run(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<RunRow>> {
    flow_runs::table
        .find(id)
        .select(RunRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A run, locked.
pub async fn lock_run(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<RunRow>> {
    flow_runs::table
        .find(id)
        .select(RunRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Locks the runs of these steps, in id order.
///
/// The run ids are computed once (an InitPlan) and the lock scans `flow_runs` alone: when a
/// run is locked by a concurrent advancement (another worker ending a sibling step), the
/// lock waits and then rechecks only that row. A join with `flow_steps` here made every such
/// recheck re-run the join (EvalPlanQual), which cost most of the database's time per step
/// under two busy workers (issue 13).
pub async fn lock_runs_of_steps(
    conn: &mut AsyncPgConnection,
    step_ids: &[Uuid],
) -> QueryResult<Vec<RunRow>> {
    diesel::sql_query(
        "SELECT * FROM flow_runs \
         WHERE id = ANY(ARRAY(SELECT DISTINCT run_id FROM flow_steps WHERE id = ANY($1))) \
         ORDER BY id FOR UPDATE",
    )
    .bind::<Array<SqlUuid>, _>(step_ids)
    .load(conn)
    .await
}

/// Which runs a list covers.
#[derive(Debug, Clone, Copy)]
pub enum RunScope {
    /// Runs started by (or concerning) this user.
    User(Uuid),
    /// One campus's.
    Campus(Uuid),
    /// All.
    All,
}

/// A page of runs, newest first, with the total.
pub async fn list_runs(
    conn: &mut AsyncPgConnection,
    scope: RunScope,
    flow: Option<Uuid>,
    status: Option<&str>,
    limit: i64,
    offset: i64,
) -> QueryResult<(Vec<RunRow>, i64)> {
    let scoped = || {
        let mut q = flow_runs::table.into_boxed();
        q = match scope {
            RunScope::User(u) => q.filter(flow_runs::user_id.eq(u)),
            RunScope::Campus(c) => q.filter(flow_runs::campus_id.eq(c)),
            RunScope::All => q,
        };
        if let Some(f) = flow {
            q = q.filter(flow_runs::flow_id.eq(f));
        }
        if let Some(s) = status {
            q = q.filter(flow_runs::status.eq(s.to_owned()));
        }
        q
    };
    let rows = scoped()
        .order((flow_runs::created_at.desc(), flow_runs::id.desc()))
        .limit(limit)
        .offset(offset)
        .select(RunRow::as_select())
        .load(conn)
        .await?;
    let total = scoped().count().get_result(conn).await?;
    Ok((rows, total))
}

/// A run's counters and status after an advancement.
#[derive(Debug, Clone)]
pub struct RunUpdate {
    /// Run.
    pub id: Uuid,
    /// New status.
    pub status: String,
    /// Steps not finished.
    pub steps_remaining: i32,
    /// Steps failed.
    pub steps_failed: i32,
    /// Event counter.
    pub event_seq: i32,
    /// Set when the run ended now.
    pub finished: bool,
}

/// Writes run updates in one statement.
pub async fn update_runs(conn: &mut AsyncPgConnection, runs: &[RunUpdate]) -> QueryResult<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
    let status: Vec<&str> = runs.iter().map(|r| r.status.as_str()).collect();
    let remaining: Vec<i32> = runs.iter().map(|r| r.steps_remaining).collect();
    let failed: Vec<i32> = runs.iter().map(|r| r.steps_failed).collect();
    let seq: Vec<i32> = runs.iter().map(|r| r.event_seq).collect();
    let finished: Vec<bool> = runs.iter().map(|r| r.finished).collect();
    diesel::sql_query(
        "UPDATE flow_runs r SET status = u.status, steps_remaining = u.remaining, \
             steps_failed = u.failed, event_seq = u.seq, updated_at = now(), \
             finished_at = CASE WHEN u.finished THEN now() WHEN u.status = 'running' THEN NULL \
                 ELSE r.finished_at END \
         FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::int4[], $5::int4[], $6::bool[]) \
             AS u(id, status, remaining, failed, seq, finished) \
         WHERE r.id = u.id",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .bind::<Array<Text>, _>(status)
    .bind::<Array<Int4>, _>(remaining)
    .bind::<Array<Int4>, _>(failed)
    .bind::<Array<Int4>, _>(seq)
    .bind::<Array<diesel::sql_types::Bool>, _>(finished)
    .execute(conn)
    .await
    .map(drop)
}

// ----------------------------------------------------------------------------- steps

/// Inserts step rows.
pub async fn insert_steps(conn: &mut AsyncPgConnection, rows: &[StepRow]) -> QueryResult<()> {
    // 17 columns × 3000 rows stays under Postgres's 65535 bind parameters.
    for chunk in rows.chunks(3000) {
        diesel::insert_into(flow_steps::table)
            .values(chunk)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// The steps (not fan-out instances) of these runs.
pub async fn load_steps(
    conn: &mut AsyncPgConnection,
    run_ids: &[Uuid],
) -> QueryResult<Vec<StepRow>> {
    flow_steps::table
        .filter(flow_steps::run_id.eq_any(run_ids))
        .filter(flow_steps::item_index.is_null())
        .select(StepRow::as_select())
        .load(conn)
        .await
}

/// Every row of a run, instances included, in step order then item order.
pub async fn load_all_steps(
    conn: &mut AsyncPgConnection,
    run_id: Uuid,
) -> QueryResult<Vec<StepRow>> {
    flow_steps::table
        .filter(flow_steps::run_id.eq(run_id))
        .order((
            flow_steps::created_at.asc(),
            flow_steps::step_key.asc(),
            flow_steps::item_index.asc(),
        ))
        .select(StepRow::as_select())
        .load(conn)
        .await
}

/// A job's end as the flow engine receives it.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    /// The job.
    pub job_id: Uuid,
    /// Its step row.
    pub step_id: Uuid,
    /// succeeded, failed or cancelled.
    pub state: &'static str,
    /// Output (completed).
    pub output: Option<serde_json::Value>,
    /// Error (dead).
    pub error: Option<String>,
    /// Attempts used.
    pub attempt: i32,
}

/// A step row that just ended.
#[derive(Debug, Clone, QueryableByName)]
pub struct Ended {
    /// Row id.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// Run.
    #[diesel(sql_type = SqlUuid)]
    pub run_id: Uuid,
    /// Step id.
    #[diesel(sql_type = Text)]
    pub step_key: String,
    /// Fan-out index.
    #[diesel(sql_type = Nullable<Int4>)]
    pub item_index: Option<i32>,
    /// New state.
    #[diesel(sql_type = Text)]
    pub state: String,
    /// Error.
    #[diesel(sql_type = Nullable<Text>)]
    pub error: Option<String>,
}

/// Records job ends on their step rows, fenced by the job id (a retried step's earlier job
/// changes nothing) and by the state (a step cancelled with its run stays cancelled).
pub async fn record_outcomes(
    conn: &mut AsyncPgConnection,
    outcomes: &[JobOutcome],
) -> QueryResult<Vec<Ended>> {
    let ids: Vec<Uuid> = outcomes.iter().map(|o| o.step_id).collect();
    let jobs: Vec<Uuid> = outcomes.iter().map(|o| o.job_id).collect();
    let states: Vec<&str> = outcomes.iter().map(|o| o.state).collect();
    let outputs: Vec<Option<serde_json::Value>> =
        outcomes.iter().map(|o| o.output.clone()).collect();
    let errors: Vec<Option<&str>> = outcomes.iter().map(|o| o.error.as_deref()).collect();
    let attempts: Vec<i32> = outcomes.iter().map(|o| o.attempt).collect();
    diesel::sql_query(
        "UPDATE flow_steps s SET state = o.state, output = o.output, error = o.error, \
             attempt = o.attempt, finished_at = now() \
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::jsonb[], $5::text[], $6::int4[]) \
             AS o(id, job_id, state, output, error, attempt) \
         WHERE s.id = o.id AND s.job_id = o.job_id AND s.state = 'queued' \
         RETURNING s.id, s.run_id, s.step_key, s.item_index, s.state, s.error",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .bind::<Array<SqlUuid>, _>(jobs)
    .bind::<Array<Text>, _>(states)
    .bind::<Array<Nullable<Jsonb>>, _>(outputs)
    .bind::<Array<Nullable<Text>>, _>(errors)
    .bind::<Array<Int4>, _>(attempts)
    .load(conn)
    .await
}

/// A step row's changed fields.
#[derive(Debug, Clone)]
pub struct StepUpdate {
    /// Row.
    pub id: Uuid,
    /// State.
    pub state: String,
    /// Dependencies not finished.
    pub deps_remaining: i32,
    /// Fan-out counters.
    pub items_total: Option<i32>,
    /// Fan-out counters.
    pub items_remaining: Option<i32>,
    /// Fan-out counters.
    pub items_failed: i32,
    /// Job now running it.
    pub job_id: Option<Uuid>,
    /// Resolved input (None keeps the row's).
    pub input: Option<serde_json::Value>,
    /// The output of the job that just ended it (None keeps the row's; a step back to
    /// waiting or queued loses it).
    pub output: Option<serde_json::Value>,
    /// Error.
    pub error: Option<String>,
    /// Attempt counter.
    pub attempt: i32,
}

/// Writes step updates in one statement (timestamps follow the state).
pub async fn update_steps(conn: &mut AsyncPgConnection, rows: &[StepUpdate]) -> QueryResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let states: Vec<&str> = rows.iter().map(|r| r.state.as_str()).collect();
    let deps: Vec<i32> = rows.iter().map(|r| r.deps_remaining).collect();
    let total: Vec<Option<i32>> = rows.iter().map(|r| r.items_total).collect();
    let remaining: Vec<Option<i32>> = rows.iter().map(|r| r.items_remaining).collect();
    let failed: Vec<i32> = rows.iter().map(|r| r.items_failed).collect();
    let jobs: Vec<Option<Uuid>> = rows.iter().map(|r| r.job_id).collect();
    let inputs: Vec<Option<&serde_json::Value>> = rows.iter().map(|r| r.input.as_ref()).collect();
    let outputs: Vec<Option<&serde_json::Value>> = rows.iter().map(|r| r.output.as_ref()).collect();
    let errors: Vec<Option<&str>> = rows.iter().map(|r| r.error.as_deref()).collect();
    let attempts: Vec<i32> = rows.iter().map(|r| r.attempt).collect();
    diesel::sql_query(
        "UPDATE flow_steps s SET state = u.state, deps_remaining = u.deps, \
             items_total = u.total, items_remaining = u.remaining, items_failed = u.failed, \
             job_id = u.job_id, input = coalesce(u.input, s.input), error = u.error, \
             attempt = u.attempt, \
             started_at = CASE WHEN u.state = 'queued' AND s.state <> 'queued' THEN now() \
                 WHEN u.state = 'waiting' THEN NULL ELSE s.started_at END, \
             finished_at = CASE WHEN u.state IN ('succeeded', 'failed', 'skipped', 'cancelled') \
                 THEN coalesce(s.finished_at, now()) ELSE NULL END, \
             output = CASE WHEN u.state IN ('waiting', 'queued') THEN NULL \
                 ELSE coalesce(u.output, s.output) END \
         FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::int4[], $5::int4[], $6::int4[], \
             $7::uuid[], $8::jsonb[], $9::text[], $10::int4[], $11::jsonb[]) \
             AS u(id, state, deps, total, remaining, failed, job_id, input, error, attempt, \
                 output) \
         WHERE s.id = u.id",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .bind::<Array<Text>, _>(states)
    .bind::<Array<Int4>, _>(deps)
    .bind::<Array<Nullable<Int4>>, _>(total)
    .bind::<Array<Nullable<Int4>>, _>(remaining)
    .bind::<Array<Int4>, _>(failed)
    .bind::<Array<Nullable<SqlUuid>>, _>(jobs)
    .bind::<Array<Nullable<Jsonb>>, _>(inputs)
    .bind::<Array<Nullable<Text>>, _>(errors)
    .bind::<Array<Int4>, _>(attempts)
    .bind::<Array<Nullable<Jsonb>>, _>(outputs)
    .execute(conn)
    .await
    .map(drop)
}

/// The output of a step as references see it.
#[derive(Debug, Clone, QueryableByName)]
pub struct StepOutput {
    /// Run.
    #[diesel(sql_type = SqlUuid)]
    pub run_id: Uuid,
    /// Step id.
    #[diesel(sql_type = Text)]
    pub step_key: String,
    /// Output; for a fan-out step the list of its instances' outputs in item order.
    #[diesel(sql_type = Nullable<Jsonb>)]
    pub output: Option<serde_json::Value>,
}

/// Outputs of these (run, step) pairs.
pub async fn outputs(
    conn: &mut AsyncPgConnection,
    keys: &[(Uuid, String)],
) -> QueryResult<Vec<StepOutput>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let runs: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
    let steps: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    diesel::sql_query(
        "SELECT s.run_id, s.step_key, CASE WHEN s.items_total IS NULL THEN s.output ELSE \
             (SELECT coalesce(jsonb_agg(i.output ORDER BY i.item_index), '[]'::jsonb) \
              FROM flow_steps i WHERE i.run_id = s.run_id AND i.step_key = s.step_key \
              AND i.item_index IS NOT NULL) END AS output \
         FROM flow_steps s JOIN unnest($1::uuid[], $2::text[]) AS k(run_id, step_key) \
             ON s.run_id = k.run_id AND s.step_key = k.step_key \
         WHERE s.item_index IS NULL",
    )
    .bind::<Array<SqlUuid>, _>(runs)
    .bind::<Array<Text>, _>(steps)
    .load(conn)
    .await
}

/// Instances of a fan-out step in these states.
pub async fn instances_in(
    conn: &mut AsyncPgConnection,
    run_id: Uuid,
    step_key: &str,
    states: &[&str],
) -> QueryResult<Vec<StepRow>> {
    flow_steps::table
        .filter(flow_steps::run_id.eq(run_id))
        .filter(flow_steps::step_key.eq(step_key))
        .filter(flow_steps::item_index.is_not_null())
        .filter(flow_steps::state.eq_any(states))
        .order(flow_steps::item_index.asc())
        .select(StepRow::as_select())
        .load(conn)
        .await
}

/// Marks every unfinished row of a run cancelled; returns the jobs of the queued ones.
pub async fn cancel_open_steps(
    conn: &mut AsyncPgConnection,
    run_id: Uuid,
) -> QueryResult<Vec<Uuid>> {
    let jobs: Vec<Option<Uuid>> = diesel::update(
        flow_steps::table
            .filter(flow_steps::run_id.eq(run_id))
            .filter(flow_steps::state.eq_any(["waiting", "queued"])),
    )
    .set((
        flow_steps::state.eq("cancelled"),
        flow_steps::finished_at.eq(diesel::dsl::now),
    ))
    .returning(flow_steps::job_id)
    .get_results(conn)
    .await?;
    Ok(jobs.into_iter().flatten().collect())
}

/// Live state of jobs (queued or running) by id: (job id, state, attempt).
#[derive(Debug, Clone, QueryableByName)]
pub struct LiveJob {
    /// Job.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// queued or running.
    #[diesel(sql_type = Text)]
    pub state: String,
    /// Attempt.
    #[diesel(sql_type = Int4)]
    pub attempt: i32,
}

/// The jobs among `ids` that are still in the queue (queued or running).
pub async fn live_jobs(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<LiveJob>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    diesel::sql_query(
        "SELECT id, state, attempt FROM jobs WHERE id = ANY($1) AND state IN ('queued', 'running')",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .load(conn)
    .await
}

/// Step rows by state, over all runs: the `flow_steps` gauge.
#[derive(Debug, Clone, QueryableByName)]
pub struct StateCount {
    /// State.
    #[diesel(sql_type = Text)]
    pub state: String,
    /// Rows.
    #[diesel(sql_type = BigInt)]
    pub count: i64,
}

/// Steps of running runs by state (cheap: the running-runs index bounds it).
pub async fn count_open_steps(conn: &mut AsyncPgConnection) -> QueryResult<Vec<StateCount>> {
    diesel::sql_query(
        "SELECT s.state, count(*) AS count FROM flow_steps s \
         JOIN flow_runs r ON r.id = s.run_id WHERE r.status = 'running' GROUP BY s.state",
    )
    .load(conn)
    .await
}

/// Deletes the instances of a fan-out step (a retry that starts it afresh).
pub async fn delete_instances(
    conn: &mut AsyncPgConnection,
    run_id: Uuid,
    step_key: &str,
) -> QueryResult<usize> {
    diesel::delete(
        flow_steps::table
            .filter(flow_steps::run_id.eq(run_id))
            .filter(flow_steps::step_key.eq(step_key))
            .filter(flow_steps::item_index.is_not_null()),
    )
    .execute(conn)
    .await
}
