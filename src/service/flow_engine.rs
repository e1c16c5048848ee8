//! The flow engine: advances runs when their steps' jobs end, inside the transaction that
//! records the job's end (the job engine's terminal hook), so a step's completion and the
//! enqueue of the steps it unblocks commit together — a worker killed at any point either
//! loses the whole transaction (the job is rescued and runs again) or none of it.
//!
//! Set-based: one call handles a batch of job ends over many runs in a fixed number of
//! statements — lock the runs (id order), load the runs' step rows, record the ends (a plain
//! step's in memory, written with the other step updates; fan-out instances' in SQL), fetch
//! the fan-out outputs the newly ready steps reference, then write steps, instances, jobs,
//! runs and events with one statement each. The decisions between those statements are plain Rust
//! over the run's definition (cached: versions never change).
//!
//! Inputs are resolved when a step is enqueued, not when its job runs: the job's payload is
//! then the node's plain input (every node is an ordinary job kind that knows nothing of
//! flows, and `GET /jobs/{id}` shows what it ran with), the parents' outputs are read once in
//! the transaction that already has them at hand, and a retried attempt runs with exactly the
//! same input.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use serde_json::Value;
use uuid::Uuid;

use crate::domain::event::{
    Event, EventRouting, FlowRunStatusChanged, FlowStepStatusChanged, NewEvent,
};
use crate::domain::flow::{
    Definition, FailurePolicy, MAX_FAN_OUT, RefContext, RefPath, RunStatus, StepResult, lookup,
    referenced_steps, resolve, step_state as st,
};
use crate::store::flows::{self as store, JobOutcome, RunRow, RunUpdate, StepRow, StepUpdate};
use crate::store::outbox::NewOutboxEventRow;

/// How a step's job ended, as the job engine reports it.
#[derive(Debug, Clone)]
pub struct StepJobEnd {
    /// The job.
    pub job_id: Uuid,
    /// Its `flow_step_id`.
    pub step_id: Uuid,
    /// `completed`, `dead` or `cancelled`.
    pub job_state: String,
    /// Result summary (completed).
    pub result: Option<Value>,
    /// Error (dead).
    pub error: Option<String>,
    /// Attempts used.
    pub attempt: i32,
}

pub use crate::app::flow_definitions::{DEFINITION_CACHE_CAPACITY, DefinitionCache};

/// A job to enqueue for a step (or a fan-out instance).
#[derive(Debug, Clone)]
pub struct StepJob {
    /// Job id.
    pub id: Uuid,
    /// Step row.
    pub step_id: Uuid,
    /// Kind.
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// Priority (0..=2).
    pub priority: i16,
    /// Payload (the resolved input).
    pub payload: Value,
    /// Attempts.
    pub max_attempts: i32,
    /// Per-attempt limit.
    pub timeout_secs: i32,
    /// Owner (the run's starter).
    pub owner_id: Option<Uuid>,
    /// Campus.
    pub campus_id: Uuid,
}

/// One run being advanced: its locked row, definition, step rows and what changed.
pub(crate) struct RunWork {
    pub(crate) run: RunRow,
    pub(crate) def: Arc<Definition>,
    /// Steps (not instances) by key.
    pub(crate) steps: HashMap<String, StepRow>,
    dirty: HashSet<String>,
    /// Steps whose job's output was recorded in memory: `update_steps` writes it.
    fresh_output: HashSet<String>,
    /// Logical completions to apply: (key, succeeded?).
    completions: Vec<(String, bool)>,
    /// Steps whose dependencies are done.
    ready: Vec<String>,
    /// Failed fan-out instances to run again (retry): (step key, rows).
    rerun_instances: Vec<StepRow>,
    events: Vec<(String, String)>,
    status_changed: bool,
}

impl RunWork {
    pub(crate) fn new(run: RunRow, def: Arc<Definition>, rows: Vec<StepRow>) -> Self {
        Self {
            steps: rows.into_iter().map(|r| (r.step_key.clone(), r)).collect(),
            run,
            def,
            dirty: HashSet::new(),
            fresh_output: HashSet::new(),
            completions: Vec::new(),
            ready: Vec::new(),
            rerun_instances: Vec::new(),
            events: Vec::new(),
            status_changed: false,
        }
    }

    fn set_state(&mut self, key: &str, state: &str) {
        if let Some(s) = self.steps.get_mut(key)
            && s.state != state
        {
            s.state = state.to_owned();
            self.dirty.insert(key.to_owned());
            self.events.push((key.to_owned(), state.to_owned()));
        }
    }

    pub(crate) fn mark_ready(&mut self, key: &str) {
        self.ready.push(key.to_owned());
    }

    pub(crate) fn mark_status_changed(&mut self) {
        self.status_changed = true;
    }

    pub(crate) fn rerun(&mut self, rows: Vec<StepRow>) {
        self.rerun_instances.extend(rows);
    }

    pub(crate) fn touch(&mut self, key: &str) {
        self.dirty.insert(key.to_owned());
    }

    /// Applies queued logical completions: policies, dependents, skips.
    fn apply_completions(&mut self) {
        while let Some((key, ok)) = self.completions.pop() {
            let policy = self
                .def
                .step(&key)
                .map(|s| s.on_failure)
                .unwrap_or_default();
            self.set_state(&key, if ok { st::SUCCEEDED } else { st::FAILED });
            self.run.steps_remaining -= 1;
            if !ok && policy != FailurePolicy::Ignore {
                self.run.steps_failed += 1;
            }
            if !ok && policy == FailurePolicy::Fail {
                for d in self.def.descendants(&key) {
                    if self.steps.get(&d).is_some_and(|s| s.state == st::WAITING) {
                        self.set_state(&d, st::SKIPPED);
                        self.run.steps_remaining -= 1;
                    }
                }
                continue;
            }
            let dependents: Vec<String> = self
                .def
                .steps
                .iter()
                .filter(|s| s.depends_on.contains(&key))
                .map(|s| s.id.clone())
                .collect();
            for d in dependents {
                let Some(row) = self.steps.get_mut(&d) else {
                    continue;
                };
                if row.state != st::WAITING {
                    continue;
                }
                row.deps_remaining -= 1;
                self.dirty.insert(d.clone());
                if row.deps_remaining <= 0 {
                    self.ready.push(d);
                }
            }
        }
    }

    fn finish_if_done(&mut self) {
        if self.run.status == RunStatus::Running.as_str() && self.run.steps_remaining <= 0 {
            self.run.status = if self.run.steps_failed > 0 {
                RunStatus::Failed
            } else {
                RunStatus::Succeeded
            }
            .as_str()
            .to_owned();
            self.status_changed = true;
        }
    }
}

/// Everything an advancement writes, collected over all runs of the batch.
#[derive(Default)]
struct Writes {
    new_instances: Vec<StepRow>,
    jobs: Vec<StepJob>,
    /// Step rows (by id) that got a job or changed: state, counters, job, input.
    step_updates: Vec<StepUpdate>,
    runs: Vec<RunUpdate>,
    events: Vec<NewEvent>,
    /// Runs that ended, for metrics: (flow name, status, seconds).
    ended: Vec<(String, String, f64)>,
}

/// Advances runs after a batch of their steps' jobs ended. Runs in the caller's transaction
/// (the job engine's terminal hook). Returns how many outbox events it wrote (the caller
/// wakes the relay after commit when > 0).
pub async fn on_jobs_ended(
    conn: &mut AsyncPgConnection,
    defs: &DefinitionCache,
    ends: &[StepJobEnd],
) -> QueryResult<usize> {
    if ends.is_empty() {
        return Ok(0);
    }
    let step_ids: Vec<Uuid> = ends.iter().map(|e| e.step_id).collect();
    // Lock first (id order), then write the steps: the same order as cancel and retry.
    let runs = store::lock_runs_of_steps(conn, &step_ids).await?;
    let running: Vec<RunRow> = runs
        .into_iter()
        .filter(|r| r.status == RunStatus::Running.as_str())
        .collect();
    let mut work = if running.is_empty() {
        Vec::new()
    } else {
        load_work(conn, defs, running).await?
    };
    // A plain step of a running run is recorded in memory (its row is loaded and its run
    // locked: nobody else changes it before commit) and written once, with the rest of the
    // advancement, by `update_steps`. Fan-out instances and steps of runs that no longer
    // run are recorded here, fenced in SQL: instances are read back by the fan-in's output
    // aggregate, and nothing else is written for the others.
    let plain: HashMap<Uuid, (usize, String)> = work
        .iter()
        .enumerate()
        .flat_map(|(i, w)| {
            w.steps
                .values()
                .map(move |r| (r.id, (i, r.step_key.clone())))
        })
        .collect();
    let mut ended: Vec<(usize, String, Option<i32>, &'static str)> = Vec::new();
    let mut outcomes: Vec<JobOutcome> = Vec::new();
    for e in ends {
        let state = match e.job_state.as_str() {
            "completed" => st::SUCCEEDED,
            "cancelled" => st::CANCELLED,
            _ => st::FAILED,
        };
        let Some((i, key)) = plain.get(&e.step_id) else {
            outcomes.push(JobOutcome {
                job_id: e.job_id,
                step_id: e.step_id,
                state,
                output: e.result.clone(),
                error: e.error.clone(),
                attempt: e.attempt,
            });
            continue;
        };
        let w = &mut work[*i];
        let Some(row) = w.steps.get_mut(key) else {
            continue;
        };
        // The fence of `record_outcomes`: a retried step's earlier job, or a step no
        // longer queued, changes nothing.
        if row.job_id != Some(e.job_id) || row.state != st::QUEUED {
            continue;
        }
        row.output = e.result.clone();
        row.error = e.error.clone();
        row.attempt = e.attempt;
        w.fresh_output.insert(key.clone());
        ended.push((*i, key.clone(), None, state));
    }
    if !outcomes.is_empty() {
        let by_id: HashMap<Uuid, usize> = work
            .iter()
            .enumerate()
            .map(|(i, w)| (w.run.id, i))
            .collect();
        for e in store::record_outcomes(conn, &outcomes).await? {
            if let Some(&i) = by_id.get(&e.run_id) {
                let state = if e.state == st::SUCCEEDED {
                    st::SUCCEEDED
                } else if e.state == st::CANCELLED {
                    st::CANCELLED
                } else {
                    st::FAILED
                };
                ended.push((i, e.step_key, e.item_index, state));
            }
        }
    }
    if ended.is_empty() {
        return Ok(0);
    }
    for (i, step_key, item_index, state) in ended {
        let w = &mut work[i];
        let ok = state == st::SUCCEEDED;
        if state == st::CANCELLED {
            // A job cancelled outside the run's cancel (an operator's DELETE /jobs/{id}):
            // the step failed.
            tracing::info!(flow_run.id = %w.run.id, step = %step_key, "a step's job was cancelled: the step fails");
        }
        match item_index {
            None => w.completions.push((step_key, ok)),
            Some(_) => {
                let Some(group) = w.steps.get_mut(&step_key) else {
                    continue;
                };
                let remaining = group.items_remaining.unwrap_or(1) - 1;
                group.items_remaining = Some(remaining);
                if !ok {
                    group.items_failed += 1;
                    group.error = Some(format!(
                        "{} of {} instances failed",
                        group.items_failed,
                        group.items_total.unwrap_or(0)
                    ));
                }
                let all_ok = group.items_failed == 0;
                w.dirty.insert(step_key.clone());
                if remaining <= 0 {
                    w.completions.push((step_key, all_ok));
                }
            }
        }
    }
    settle(conn, &mut work).await
}

/// Loads the step rows and definitions of locked runs.
pub(crate) async fn load_work(
    conn: &mut AsyncPgConnection,
    cache: &DefinitionCache,
    runs: Vec<RunRow>,
) -> QueryResult<Vec<RunWork>> {
    let ids: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
    let keys: Vec<(Uuid, i32)> = runs.iter().map(|r| (r.flow_id, r.version)).collect();
    let defs = cache.definitions(conn, &keys).await?;
    let mut rows_by_run: HashMap<Uuid, Vec<StepRow>> = HashMap::new();
    for row in store::load_steps(conn, &ids).await? {
        rows_by_run.entry(row.run_id).or_default().push(row);
    }
    Ok(runs
        .into_iter()
        .filter_map(|run| {
            let def = defs.get(&(run.flow_id, run.version))?.clone();
            let rows = rows_by_run.remove(&run.id).unwrap_or_default();
            Some(RunWork::new(run, def, rows))
        })
        .collect())
}

/// Applies completions, starts what became ready (repeating while starts complete at once:
/// an empty fan-out, a `forEach` that is not a list), ends finished runs, and writes it all.
pub(crate) async fn settle(
    conn: &mut AsyncPgConnection,
    work: &mut [RunWork],
) -> QueryResult<usize> {
    let mut writes = Writes::default();
    loop {
        for w in work.iter_mut() {
            w.apply_completions();
        }
        // A plain step's output is on its loaded row (or was just recorded there); only a
        // fan-out step's, the list of its instances' outputs, is read from the database.
        let pending: Vec<(Uuid, String)> = work
            .iter()
            .flat_map(|w| {
                w.ready
                    .iter()
                    .filter_map(|k| w.def.step(k))
                    .flat_map(referenced_steps)
                    .filter(|s| w.steps.get(s).is_some_and(|r| r.items_total.is_some()))
                    .map(|s| (w.run.id, s))
                    .collect::<Vec<_>>()
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if work.iter().all(|w| w.ready.is_empty()) {
            break;
        }
        let mut outputs: HashMap<(Uuid, String), Value> = HashMap::new();
        for o in store::outputs(conn, &pending).await? {
            outputs.insert((o.run_id, o.step_key), o.output.unwrap_or(Value::Null));
        }
        for w in work.iter_mut() {
            let ready = std::mem::take(&mut w.ready);
            for key in ready {
                start_step(w, &key, &outputs, &mut writes);
            }
        }
    }
    for w in work.iter_mut() {
        for row in std::mem::take(&mut w.rerun_instances) {
            let Some(step) = w.def.step(&row.step_key) else {
                continue;
            };
            let job = step_job(
                &w.run,
                step,
                row.id,
                row.input.clone().unwrap_or(Value::Null),
            );
            writes.step_updates.push(StepUpdate {
                id: row.id,
                state: st::QUEUED.to_owned(),
                deps_remaining: 0,
                items_total: None,
                items_remaining: None,
                items_failed: 0,
                job_id: Some(job.id),
                input: None,
                output: None,
                error: None,
                attempt: 0,
            });
            writes.jobs.push(job);
        }
        w.finish_if_done();
        collect(w, &mut writes);
    }
    let events = writes.events.len();
    store::insert_steps(conn, &writes.new_instances).await?;
    store::update_steps(conn, &writes.step_updates).await?;
    enqueue_jobs(conn, &writes.jobs).await?;
    store::update_runs(conn, &writes.runs).await?;
    if !writes.events.is_empty() {
        let rows = writes
            .events
            .iter()
            .map(NewOutboxEventRow::from_event)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?;
        crate::store::outbox::insert_events(conn, &rows).await?;
    }
    for (flow, status, secs) in writes.ended {
        metrics::counter!("flow_runs_finished_total", "flow" => flow.clone(), "status" => status)
            .increment(1);
        metrics::histogram!("flow_run_duration_seconds", "flow" => flow).record(secs);
    }
    Ok(events)
}

fn step_job(
    run: &RunRow,
    step: &crate::domain::flow::StepDef,
    step_id: Uuid,
    payload: Value,
) -> StepJob {
    StepJob {
        id: Uuid::now_v7(),
        step_id,
        kind: step.node.clone(),
        queue: step.queue().to_owned(),
        priority: step.priority.unwrap_or_default().as_i16(),
        payload,
        max_attempts: step.max_attempts(),
        timeout_secs: step.timeout_secs(),
        owner_id: run.user_id,
        campus_id: run.campus_id,
    }
}

/// Starts one ready step: resolves its input, enqueues its job (or its instances' jobs), or
/// completes it at once (empty fan-out, `forEach` not a list).
fn start_step(
    w: &mut RunWork,
    key: &str,
    outputs: &HashMap<(Uuid, String), Value>,
    writes: &mut Writes,
) {
    let Some(step) = w.def.step(key).cloned() else {
        return;
    };
    let mut results = BTreeMap::new();
    for r in referenced_steps(&step) {
        let row = w.steps.get(&r);
        results.insert(
            r.clone(),
            StepResult {
                status: row.map_or_else(|| "unknown".to_owned(), |s| s.state.clone()),
                output: outputs
                    .get(&(w.run.id, r))
                    .or_else(|| row.and_then(|s| s.output.as_ref()))
                    .cloned()
                    .unwrap_or(Value::Null),
                error: row.and_then(|s| s.error.clone()),
            },
        );
    }
    let run_id = w.run.id.to_string();
    let campus_id = w.run.campus_id.to_string();
    let cx = |item| RefContext {
        run_id: run_id.clone(),
        campus_id: campus_id.clone(),
        input: &w.run.input,
        steps: &results,
        item,
    };
    let Some(row) = w.steps.get(key) else {
        return;
    };
    let row_id = row.id;
    match &step.for_each {
        None => {
            let input = resolve(&step.input, &cx(None));
            let job = step_job(&w.run, &step, row_id, input.clone());
            if let Some(r) = w.steps.get_mut(key) {
                r.job_id = Some(job.id);
                r.input = Some(input);
                r.attempt = 0;
            }
            writes.jobs.push(job);
            w.set_state(key, st::QUEUED);
        }
        Some(path) => {
            let list = RefPath::parse(path).map(|p| lookup(&p, &cx(None)));
            let items = match list {
                Ok(Value::Array(items)) if items.len() <= MAX_FAN_OUT => items,
                Ok(Value::Array(items)) => {
                    fail_now(
                        w,
                        key,
                        format!("forEach: {} elements, at most {MAX_FAN_OUT}", items.len()),
                    );
                    return;
                }
                Ok(other) => {
                    let kind = match other {
                        Value::Null => "null",
                        Value::Object(_) => "an object",
                        _ => "not a list",
                    };
                    fail_now(w, key, format!("forEach `{path}` is {kind}, not a list"));
                    return;
                }
                Err(e) => {
                    fail_now(w, key, format!("forEach: {e}"));
                    return;
                }
            };
            let n = i32::try_from(items.len()).unwrap_or(i32::MAX);
            let now = Utc::now();
            for (i, item) in items.iter().enumerate() {
                let input = resolve(&step.input, &cx(Some(item)));
                let id = Uuid::now_v7();
                let job = step_job(&w.run, &step, id, input.clone());
                writes.new_instances.push(StepRow {
                    id,
                    run_id: w.run.id,
                    step_key: key.to_owned(),
                    item_index: Some(i32::try_from(i).unwrap_or(i32::MAX)),
                    state: st::QUEUED.to_owned(),
                    deps_remaining: 0,
                    items_total: None,
                    items_remaining: None,
                    items_failed: 0,
                    job_id: Some(job.id),
                    attempt: 0,
                    input: Some(input),
                    output: None,
                    error: None,
                    created_at: now,
                    started_at: Some(now),
                    finished_at: None,
                });
                writes.jobs.push(job);
            }
            if let Some(r) = w.steps.get_mut(key) {
                r.items_total = Some(n);
                r.items_remaining = Some(n);
                r.items_failed = 0;
            }
            w.set_state(key, st::QUEUED);
            if n == 0 {
                w.completions.push((key.to_owned(), true));
            }
        }
    }
}

fn fail_now(w: &mut RunWork, key: &str, error: String) {
    if let Some(r) = w.steps.get_mut(key) {
        r.error = Some(error);
    }
    w.dirty.insert(key.to_owned());
    w.completions.push((key.to_owned(), false));
}

/// Turns a run's changes into rows and events.
fn collect(w: &mut RunWork, writes: &mut Writes) {
    for key in w.dirty.drain() {
        let Some(r) = w.steps.get(&key) else { continue };
        writes.step_updates.push(StepUpdate {
            id: r.id,
            state: r.state.clone(),
            deps_remaining: r.deps_remaining,
            items_total: r.items_total,
            items_remaining: r.items_remaining,
            items_failed: r.items_failed,
            job_id: r.job_id,
            // Only a step just started has a new input; the others keep theirs.
            input: (r.state == st::QUEUED).then(|| r.input.clone()).flatten(),
            output: w
                .fresh_output
                .remove(&key)
                .then(|| r.output.clone())
                .flatten(),
            error: r.error.clone(),
            attempt: r.attempt,
        });
    }
    let events = std::mem::take(&mut w.events);
    if events.is_empty() && !w.status_changed {
        return;
    }
    for (key, state) in events {
        w.run.event_seq += 1;
        let row = w.steps.get(&key);
        writes.events.push(run_event(
            &w.run,
            Event::FlowStepStatusChanged(FlowStepStatusChanged {
                run_id: w.run.id,
                flow_id: w.run.flow_id,
                step: key,
                status: state,
                error: row.and_then(|r| r.error.clone()),
                items: row.and_then(|r| r.items_total),
            }),
        ));
    }
    let finished = w.run.status != RunStatus::Running.as_str() && w.status_changed;
    if w.status_changed {
        w.run.event_seq += 1;
        writes.events.push(run_event(
            &w.run,
            Event::FlowRunStatusChanged(FlowRunStatusChanged {
                run_id: w.run.id,
                flow_id: w.run.flow_id,
                flow: w.run.flow_name.clone(),
                version: w.run.version,
                status: w.run.status.clone(),
                steps_remaining: Some(w.run.steps_remaining),
                steps_failed: Some(w.run.steps_failed),
            }),
        ));
        if finished {
            let secs = (Utc::now() - w.run.created_at).as_seconds_f64();
            writes
                .ended
                .push((w.run.flow_name.clone(), w.run.status.clone(), secs));
        }
    }
    writes.runs.push(RunUpdate {
        id: w.run.id,
        status: w.run.status.clone(),
        steps_remaining: w.run.steps_remaining,
        steps_failed: w.run.steps_failed,
        event_seq: w.run.event_seq,
        finished,
    });
}

/// An outbox event of a run, routed to its campus and its starter; the version is the run's
/// event counter, so clients order step and run events of one run.
pub(crate) fn run_event(run: &RunRow, event: Event) -> NewEvent {
    NewEvent {
        event,
        aggregate_id: run.id,
        version: run.event_seq,
        routing: EventRouting {
            campus_id: Some(run.campus_id.into()),
            vendor_id: None,
            user_id: run.user_id.map(Into::into),
        },
    }
}

/// The outbox row of [`run_event`].
pub(crate) fn run_event_row(run: &RunRow, event: Event) -> QueryResult<NewOutboxEventRow> {
    NewOutboxEventRow::from_event(&run_event(run, event))
        .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))
}

/// Enqueues step jobs in the caller's transaction, one statement for the batch.
async fn enqueue_jobs(conn: &mut AsyncPgConnection, jobs: &[StepJob]) -> QueryResult<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    let rows: Vec<(crate::store::jobs::NewJob, Uuid)> = jobs
        .iter()
        .map(|j| {
            (
                crate::store::jobs::NewJob {
                    id: j.id,
                    kind: j.kind.clone(),
                    queue: j.queue.clone(),
                    priority: j.priority,
                    payload: j.payload.clone(),
                    unique_key: None,
                    run_at: now,
                    max_attempts: j.max_attempts,
                    timeout_secs: j.timeout_secs,
                    owner_id: j.owner_id,
                    campus_id: Some(j.campus_id),
                },
                j.step_id,
            )
        })
        .collect();
    crate::store::jobs::enqueue_many_steps(conn, &rows)
        .await
        .map(drop)
}

/// The flow engine's side of a job's end: `jobs` (flow-step jobs, never empty) ended in the
/// transaction `conn` is in; advance their runs in it. Called by `app::JobHooks::call`
/// (`service::job_hooks`).
pub(crate) async fn on_terminal(
    conn: &mut AsyncPgConnection,
    jobs: &[super::job_hooks::TerminalJob],
    relay: &crate::app::relay_waker::RelayWaker,
    definitions: &DefinitionCache,
) -> Result<(), super::Error> {
    let ends: Vec<StepJobEnd> = jobs
        .iter()
        .map(|j| StepJobEnd {
            job_id: j.id,
            step_id: j.flow_step_id,
            job_state: j.state.as_str().to_owned(),
            result: j.result.clone(),
            error: j.last_error.clone(),
            attempt: j.attempt,
        })
        .collect();
    let events = on_jobs_ended(conn, definitions, &ends).await?;
    if events > 0 {
        // Before commit: a relay that looks too early finds nothing new and the
        // worker's own wake after the batch (or the relay's poll) picks it up.
        relay.wake();
    }
    Ok(())
}

/// Wakes the workers after a transaction that started steps (API start, retry, schedules)
/// has committed: `NOTIFY itsur_jobs` outside the business transaction.
pub async fn notify_workers(ctx: &crate::app::Ctx) {
    if let Ok(mut conn) = ctx.db.conn().await
        && let Err(e) = crate::store::jobs::notify_workers(&mut conn, "*").await
    {
        tracing::debug!(error = %e, "workers not notified; they poll");
    }
}
