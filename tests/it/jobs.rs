//! The job queue with in-process workers on a real Postgres: the retry schedule, dead jobs
//! and admin retry, permanent errors, unique keys, delayed jobs, priorities, cancelling
//! queued and running jobs, timeouts, panicking handlers, lease rescue with a fenced-out late
//! completion, one cron job per tick under concurrent enqueuers, the shutdown drain; then the
//! API: sales reports (202, progress, CSV and JSON results), tenant scoping, bulk user import,
//! the worker registry and the job metrics; last, what the hot statements read, and that an
//! idle worker sends no claim until a NOTIFY says work is due.
//!
//! Workers run `itsur::jobs::runner::run` as tasks with their own `Shutdown`, a 3 s lease
//! (heartbeats every second) and a 100 ms poll. Nothing sleeps to synchronise: every wait
//! polls the database with a deadline that only guards against hangs (the one test that
//! proves an absence — no claim — waits out its quiet periods).

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::test::TestRequest;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use itsur::app::Ctx;
use itsur::domain::job::{JobState, kind};
use itsur::jobs::registry::Registry;
use itsur::jobs::runner::{self, WorkerOptions};
use itsur::jobs::{Handler, JobCx, JobError, Output};
use itsur::shutdown::Shutdown;
use itsur::store::jobs::{self as store, Finish, JobRow, NewJob};
use itsur::store::schema::{audit_log, jobs, orders};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::fixtures::{Api, Resp, Session, World};
use crate::support::{TestApp, eventually};

/// Hang guard for every wait (not a speed claim: most waits end within a second).
const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// An in-process worker; stopped (and awaited) by [`Worker::stop`], told to stop on Drop.
struct Worker {
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    fn start(ctx: &Ctx, options: WorkerOptions, registry: Registry) -> Self {
        let shutdown = Shutdown::new();
        let task = tokio::spawn(runner::run(
            ctx.clone(),
            shutdown.clone(),
            options,
            registry,
        ));
        Self { shutdown, task }
    }

    /// Triggers the worker's shutdown and waits for `run` to return (drain included).
    async fn stop(mut self) {
        self.shutdown.trigger();
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("the worker stopped")
            .expect("the worker did not panic");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Small lease and fast poll so tests never wait long; no cron (tests drive ticks).
fn options() -> WorkerOptions {
    WorkerOptions {
        queues: vec!["default".to_owned()],
        concurrency: 4,
        lease: Duration::from_secs(3),
        poll_interval: Duration::from_millis(100),
        poll_only: false,
        drain_timeout: Duration::from_secs(20),
        cron: false,
        prefetch: 8,
        adaptive: false,
    }
}

fn new_job(kind: &str, payload: Value) -> NewJob {
    NewJob {
        id: Uuid::now_v7(),
        kind: kind.to_owned(),
        queue: "default".to_owned(),
        priority: 1,
        payload,
        unique_key: None,
        run_at: Utc::now(),
        max_attempts: 3,
        timeout_secs: 60,
        owner_id: None,
        campus_id: None,
    }
}

async fn enqueue(ctx: &Ctx, job: &NewJob) -> JobRow {
    let mut conn = ctx.db.conn().await.unwrap();
    let (row, inserted) = store::enqueue(&mut conn, job).await.unwrap();
    store::notify_workers(&mut conn, &row.queue).await.unwrap();
    assert!(inserted);
    row
}

async fn row(ctx: &Ctx, id: Uuid) -> JobRow {
    let mut conn = ctx.db.conn().await.unwrap();
    store::find(&mut conn, id)
        .await
        .unwrap()
        .expect("job exists")
}

/// Polls the job until `pred` holds; panics with the last row seen after [`DEADLINE`].
async fn wait_job(ctx: &Ctx, id: Uuid, what: &str, pred: impl Fn(&JobRow) -> bool) -> JobRow {
    let last: RefCell<Option<JobRow>> = RefCell::new(None);
    let (last_ref, pred) = (&last, &pred);
    let ok = eventually(DEADLINE, move || async move {
        let r = row(ctx, id).await;
        let hit = pred(&r);
        *last_ref.borrow_mut() = Some(r);
        hit
    })
    .await;
    let last = last.into_inner().expect("polled at least once");
    assert!(ok, "job {id} never became {what}: {last:#?}");
    last
}

fn in_state(state: &'static str) -> impl Fn(&JobRow) -> bool {
    move |r| r.state.as_str() == state
}

/// A retry waiting for its backoff after attempt `n`.
fn waiting_retry(n: i32) -> impl Fn(&JobRow) -> bool {
    move |r| r.state == JobState::Queued && r.attempt == n
}

/// Skips a backoff or a delay: the job becomes due now.
async fn make_due(ctx: &Ctx, id: Uuid) {
    let mut conn = ctx.db.conn().await.unwrap();
    diesel::update(jobs::table.find(id))
        .set(jobs::run_at.eq(diesel::dsl::now))
        .execute(&mut conn)
        .await
        .unwrap();
}

/// Runs of a `noop` job with `audit: true` (one audit row per run that got that far).
async fn noop_runs(ctx: &Ctx, id: Uuid) -> i64 {
    let mut conn = ctx.db.conn().await.unwrap();
    audit_log::table
        .filter(audit_log::action.eq("job.noop"))
        .filter(audit_log::target_id.eq(id.to_string()))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap()
}

fn noop(payload: Value) -> NewJob {
    new_job(kind::NOOP, payload)
}

/// `run_at - updated_at` of a job whose retry was just scheduled: the backoff it was given.
fn scheduled_delay(r: &JobRow) -> Duration {
    (r.run_at - r.updated_at).to_std().expect("run_at is ahead")
}

/// Asserts a backoff of `base` plus at most 20 % jitter. The worker computes `run_at` from
/// its clock before it checks out a connection and the database stamps `updated_at` after,
/// so the measured delay can only come out short: generous slack below (a slow checkout on a
/// busy machine), little above.
#[track_caller]
fn assert_backoff(r: &JobRow, base: Duration) {
    let delay = scheduled_delay(r);
    assert!(
        delay + Duration::from_secs(2) >= base
            && delay <= base.mul_f64(1.2) + Duration::from_millis(200),
        "backoff after attempt {} was {delay:?}, expected {base:?} + ≤20 %: {r:#?}",
        r.attempt
    );
}

// ---------------------------------------------------------------------------------------
// Test handlers
// ---------------------------------------------------------------------------------------

/// Fails with a retryable error while `broken`; counts its runs.
#[derive(Clone, Default)]
struct Flaky {
    broken: Arc<AtomicBool>,
    runs: Arc<AtomicUsize>,
}

impl Handler for Flaky {
    fn run<'a>(&'a self, _cx: &'a JobCx) -> BoxFuture<'a, Result<Output, JobError>> {
        async move {
            self.runs.fetch_add(1, Ordering::SeqCst);
            if AtomicBool::load(&self.broken, Ordering::SeqCst) {
                Err(JobError::Retryable("provider answered 503".to_owned()))
            } else {
                Ok(Output::default())
            }
        }
        .boxed()
    }
}

/// Fails for good; counts its runs.
#[derive(Clone, Default)]
struct Refuses {
    runs: Arc<AtomicUsize>,
}

impl Handler for Refuses {
    fn run<'a>(&'a self, _cx: &'a JobCx) -> BoxFuture<'a, Result<Output, JobError>> {
        async move {
            self.runs.fetch_add(1, Ordering::SeqCst);
            Err(JobError::Permanent(
                "the vendor no longer exists".to_owned(),
            ))
        }
        .boxed()
    }
}

/// Records `payload.name` in the order jobs run.
#[derive(Clone, Default)]
struct Records {
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Handler for Records {
    fn run<'a>(&'a self, cx: &'a JobCx) -> BoxFuture<'a, Result<Output, JobError>> {
        async move {
            let name = cx.job.payload["name"].as_str().unwrap_or("?").to_owned();
            self.seen.lock().unwrap().push(name);
            Ok(Output::default())
        }
        .boxed()
    }
}

/// A handler with a bug.
struct Panics;

impl Handler for Panics {
    fn run<'a>(&'a self, _cx: &'a JobCx) -> BoxFuture<'a, Result<Output, JobError>> {
        async move { panic!("handler bug: index out of bounds") }.boxed()
    }
}

/// Waits until the job is cancelled, then reports it (the cooperative way to stop).
#[derive(Clone, Default)]
struct WaitsForCancel {
    stopped: Arc<AtomicUsize>,
}

impl Handler for WaitsForCancel {
    fn run<'a>(&'a self, cx: &'a JobCx) -> BoxFuture<'a, Result<Output, JobError>> {
        async move {
            cx.cancel_token().cancelled().await;
            self.stopped.fetch_add(1, Ordering::SeqCst);
            Err(JobError::Cancelled)
        }
        .boxed()
    }
}

/// Never looks at cancellation (a handler stuck in a blocking call).
struct IgnoresCancel;

impl Handler for IgnoresCancel {
    fn run<'a>(&'a self, _cx: &'a JobCx) -> BoxFuture<'a, Result<Output, JobError>> {
        async move {
            tokio::time::sleep(Duration::from_secs(600)).await;
            Ok(Output::default())
        }
        .boxed()
    }
}

// ---------------------------------------------------------------------------------------
// Queue semantics
// ---------------------------------------------------------------------------------------

/// A state the code does not know (written by a newer release, or by hand) fails the read
/// with a 500; it used to be shown as `queued`.
#[actix_web::test]
async fn an_unknown_job_state_in_the_database_is_an_error_not_queued() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let root = api.login(&world.platform_admin.email).await;
    let id = enqueue(&t.ctx, &noop(json!({}))).await.id;
    let mut conn = t.ctx.db.conn().await.unwrap();
    diesel::sql_query("ALTER TABLE jobs DROP CONSTRAINT jobs_state_check")
        .execute(&mut conn)
        .await
        .unwrap();
    diesel::update(jobs::table.find(id))
        .set(jobs::state.eq("paused"))
        .execute(&mut conn)
        .await
        .unwrap();

    api.get(&format!("/jobs/{id}"), root.token())
        .await
        .assert_problem(500);
    assert!(store::find(&mut conn, id).await.is_err());
    diesel::delete(jobs::table.find(id))
        .execute(&mut conn)
        .await
        .unwrap();
}

#[actix_web::test]
async fn retries_back_off_5s_then_25s_and_the_third_attempt_completes() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let root = api.login(&world.platform_admin.email).await;
    let worker = Worker::start(&t.ctx, options(), Registry::standard());

    let mut job = noop(json!({ "audit": true, "failAttempts": [1, 2] }));
    job.max_attempts = 3;
    let id = enqueue(&t.ctx, &job).await.id;

    let r = wait_job(&t.ctx, id, "waiting for retry 2", waiting_retry(1)).await;
    assert_backoff(&r, Duration::from_secs(5));
    assert_eq!(r.last_error.as_deref(), Some("asked to fail attempt 1"));
    assert_eq!((r.worker_id, r.lease_expires_at), (None, None));
    // A retry waiting to run shows `queued` with its attempt and last error (DESIGN.md).
    let res = api.get(&format!("/jobs/{id}"), root.token()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.data()["status"], "queued");
    assert_eq!(res.data()["attempt"], 1);
    assert_eq!(res.data()["lastError"], "asked to fail attempt 1");

    make_due(&t.ctx, id).await;
    let r = wait_job(&t.ctx, id, "waiting for retry 3", waiting_retry(2)).await;
    assert_backoff(&r, Duration::from_secs(25));
    assert_eq!(r.last_error.as_deref(), Some("asked to fail attempt 2"));

    make_due(&t.ctx, id).await;
    let r = wait_job(&t.ctx, id, "completed", in_state("completed")).await;
    assert_eq!(r.attempt, 3);
    assert_eq!(r.progress, 100);
    assert!(r.finished_at.is_some());
    assert_eq!(
        noop_runs(&t.ctx, id).await,
        1,
        "the side effect happened once"
    );
    worker.stop().await;
}

#[actix_web::test]
async fn an_exhausted_job_is_dead_and_an_admin_retry_runs_it_again() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let admin_a = api.login(&world.a.admin.email).await;
    let admin_b = api.login(&world.b.admin.email).await;
    let student_a = api.login(&world.a.student.email).await;
    let flaky = Flaky::default();
    flaky.broken.store(true, Ordering::SeqCst);
    let worker = Worker::start(
        &t.ctx,
        options(),
        Registry::standard().with("flaky", flaky.clone()),
    );

    let mut job = new_job("flaky", json!({}));
    job.max_attempts = 2;
    job.campus_id = Some(world.a.campus.id);
    let id = enqueue(&t.ctx, &job).await.id;
    wait_job(&t.ctx, id, "waiting for retry 2", waiting_retry(1)).await;
    make_due(&t.ctx, id).await;
    let dead = wait_job(&t.ctx, id, "dead", in_state("dead")).await;
    assert_eq!(dead.attempt, 2);
    assert!(dead.finished_at.is_some());
    let error = dead.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("provider answered 503") && error.contains("attempt 2 of 2"),
        "{error}"
    );
    assert_eq!(AtomicUsize::load(&flaky.runs, Ordering::SeqCst), 2);

    // Kept, visible as failed to its campus's admin, invisible to the other campus.
    let res = api.get(&format!("/jobs/{id}"), admin_a.token()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.data()["status"], "failed");
    assert_eq!(res.data()["lastError"], error.as_str());
    let retry = format!("/admin/jobs/{id}/retry");
    api.post(&retry, admin_b.token(), &json!({}))
        .await
        .assert_problem(404);
    api.post(&retry, student_a.token(), &json!({}))
        .await
        .assert_problem(403);
    assert_eq!(row(&t.ctx, id).await.state, JobState::Dead);

    // The provider is back; the admin retries with a fresh set of attempts.
    flaky.broken.store(false, Ordering::SeqCst);
    let res = api.post(&retry, admin_a.token(), &json!({})).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.data()["status"], "queued");
    assert_eq!(res.data()["attempt"], 0);
    let done = wait_job(&t.ctx, id, "completed", in_state("completed")).await;
    assert_eq!(done.attempt, 1);
    assert_eq!(AtomicUsize::load(&flaky.runs, Ordering::SeqCst), 3);
    // Only dead jobs can be retried.
    api.post(&retry, admin_a.token(), &json!({}))
        .await
        .assert_problem(409);
    worker.stop().await;
}

#[actix_web::test]
async fn a_permanent_error_is_dead_at_once() {
    let t = TestApp::new().await;
    let refuses = Refuses::default();
    let worker = Worker::start(
        &t.ctx,
        options(),
        Registry::standard().with("refuses", refuses.clone()),
    );

    let mut job = new_job("refuses", json!({}));
    job.max_attempts = 5;
    let refused = enqueue(&t.ctx, &job).await.id;
    // A payload the handler cannot read, and a kind no handler knows: permanent too.
    let unreadable = enqueue(&t.ctx, &noop(json!({ "sleepMs": "soon" })))
        .await
        .id;
    let unknown = enqueue(&t.ctx, &new_job("no_such_kind", json!({})))
        .await
        .id;

    for (id, needle) in [
        (refused, "the vendor no longer exists"),
        (unreadable, "bad payload"),
        (unknown, "no handler for kind no_such_kind"),
    ] {
        let r = wait_job(&t.ctx, id, "dead", in_state("dead")).await;
        assert_eq!(r.attempt, 1, "no retry after a permanent error: {r:#?}");
        let error = r.last_error.unwrap_or_default();
        assert!(error.contains(needle), "{error}");
    }
    assert_eq!(AtomicUsize::load(&refuses.runs, Ordering::SeqCst), 1);
    worker.stop().await;
}

#[tokio::test]
async fn a_duplicate_unique_key_returns_the_existing_job() {
    let t = TestApp::new().await;
    let mut conn = t.ctx.db.conn().await.unwrap();
    let mut first = noop(json!({ "n": 1 }));
    first.unique_key = Some("push:order-42:accepted".to_owned());
    let mut second = noop(json!({ "n": 2 }));
    second.unique_key = first.unique_key.clone();

    let (a, inserted_a) = store::enqueue(&mut conn, &first).await.unwrap();
    let (b, inserted_b) = store::enqueue(&mut conn, &second).await.unwrap();
    assert!(inserted_a);
    assert!(!inserted_b, "the duplicate is a no-op");
    assert_eq!(b.id, a.id, "and returns the existing job");
    assert_eq!(b.payload, json!({ "n": 1 }));

    // In bulk too: duplicates (of the table and of the batch) are skipped.
    let mut batch: Vec<NewJob> = (0..3)
        .map(|i| {
            let mut j = noop(json!({ "i": i }));
            j.unique_key = Some(format!("bulk-{i}"));
            j
        })
        .collect();
    batch.push(second.clone());
    assert_eq!(store::enqueue_many(&mut conn, &batch).await.unwrap(), 3);
    assert_eq!(store::enqueue_many(&mut conn, &batch).await.unwrap(), 0);
    let keyed: i64 = itsur::store::schema::job_keys::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(keyed, 4);
}

#[actix_web::test]
async fn a_delayed_job_is_not_claimed_until_due() {
    let t = TestApp::new().await;
    let mut delayed = noop(json!({ "audit": true }));
    delayed.run_at = Utc::now() + chrono::Duration::hours(1);
    let delayed = enqueue(&t.ctx, &delayed).await.id;
    let worker = Worker::start(&t.ctx, options(), Registry::standard());

    // A job due now, enqueued after it, runs: the worker has looked at the queue.
    let marker = enqueue(&t.ctx, &noop(json!({}))).await.id;
    wait_job(&t.ctx, marker, "completed", in_state("completed")).await;
    let r = row(&t.ctx, delayed).await;
    assert_eq!((r.state.as_str(), r.attempt), ("queued", 0), "{r:#?}");
    assert_eq!(noop_runs(&t.ctx, delayed).await, 0);

    make_due(&t.ctx, delayed).await;
    let r = wait_job(&t.ctx, delayed, "completed", in_state("completed")).await;
    assert_eq!(r.attempt, 1);
    assert_eq!(noop_runs(&t.ctx, delayed).await, 1);
    worker.stop().await;
}

#[actix_web::test]
async fn jobs_run_by_priority_then_age() {
    let t = TestApp::new().await;
    let records = Records::default();
    let mut ids = Vec::new();
    for (name, priority) in [("low", 2), ("normal-1", 1), ("high", 0), ("normal-2", 1)] {
        let mut job = new_job("record", json!({ "name": name }));
        job.priority = priority;
        ids.push(enqueue(&t.ctx, &job).await.id);
    }
    let mut one_at_a_time = options();
    one_at_a_time.concurrency = 1;
    let worker = Worker::start(
        &t.ctx,
        one_at_a_time,
        Registry::standard().with("record", records.clone()),
    );
    for id in ids {
        wait_job(&t.ctx, id, "completed", in_state("completed")).await;
    }
    assert_eq!(
        *records.seen.lock().unwrap(),
        ["high", "normal-1", "normal-2", "low"]
    );
    worker.stop().await;
}

#[actix_web::test]
async fn cancelling_a_queued_job_cancels_it_and_it_never_runs() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let owner = api.login(&world.a.student.email).await;
    let other = api.login(&world.a.student2.email).await;

    let mut job = noop(json!({ "audit": true }));
    job.owner_id = Some(world.a.student.id);
    job.campus_id = Some(world.a.campus.id);
    let id = enqueue(&t.ctx, &job).await.id;

    let path = format!("/jobs/{id}");
    api.delete(&path, other.token()).await.assert_problem(404);
    let res = api.delete(&path, owner.token()).await;
    assert_eq!(res.status, 204, "{}", res.text());
    let r = row(&t.ctx, id).await;
    assert_eq!(r.state, JobState::Cancelled);
    assert!(r.finished_at.is_some());
    assert_eq!(
        api.get(&path, owner.token()).await.data()["status"],
        "cancelled"
    );
    api.delete(&path, owner.token()).await.assert_problem(409);

    // A worker starts and drains the queue: the cancelled job is not among what it runs.
    let worker = Worker::start(&t.ctx, options(), Registry::standard());
    let marker = enqueue(&t.ctx, &noop(json!({}))).await.id;
    wait_job(&t.ctx, marker, "completed", in_state("completed")).await;
    let r = row(&t.ctx, id).await;
    assert_eq!((r.state.as_str(), r.attempt), ("cancelled", 0));
    assert_eq!(noop_runs(&t.ctx, id).await, 0);
    worker.stop().await;
}

/// Cancels a running job through the API and waits for it to end `cancelled`. The
/// deadline is the contract ("stops within a second or two"), padded for a busy machine.
async fn cancel_running(poll_only: bool) {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let owner = api.login(&world.a.staff.email).await;
    let admin_b = api.login(&world.b.admin.email).await;
    let waits = WaitsForCancel::default();
    let mut opts = options();
    opts.poll_only = poll_only;
    let worker = Worker::start(
        &t.ctx,
        opts,
        Registry::standard().with("waits", waits.clone()),
    );

    let mut long_noop = noop(json!({ "sleepMs": 600_000, "audit": true }));
    let mut waiting = new_job("waits", json!({}));
    for j in [&mut long_noop, &mut waiting] {
        j.owner_id = Some(world.a.staff.id);
        j.campus_id = Some(world.a.campus.id);
    }
    let noop_id = enqueue(&t.ctx, &long_noop).await.id;
    let waits_id = enqueue(&t.ctx, &waiting).await.id;
    for id in [noop_id, waits_id] {
        wait_job(&t.ctx, id, "running", in_state("running")).await;
        let path = format!("/jobs/{id}");
        api.delete(&path, admin_b.token()).await.assert_problem(404);
        let res = api.delete(&path, owner.token()).await;
        assert_eq!(res.status, 204, "{}", res.text());
    }
    for id in [noop_id, waits_id] {
        let last: RefCell<Option<JobRow>> = RefCell::new(None);
        let last_ref = &last;
        let ctx = &t.ctx;
        let stopped = eventually(Duration::from_secs(5), move || async move {
            let r = row(ctx, id).await;
            let done = r.state == JobState::Cancelled;
            *last_ref.borrow_mut() = Some(r);
            done
        })
        .await;
        assert!(stopped, "running job stopped: {:#?}", last.into_inner());
        let r = row(&t.ctx, id).await;
        assert_eq!(r.attempt, 1);
        assert!(r.finished_at.is_some());
        let path = format!("/jobs/{id}");
        assert_eq!(
            api.get(&path, owner.token()).await.data()["status"],
            "cancelled"
        );
        api.delete(&path, owner.token()).await.assert_problem(409);
    }
    assert_eq!(AtomicUsize::load(&waits.stopped, Ordering::SeqCst), 1);
    assert_eq!(noop_runs(&t.ctx, noop_id).await, 0);
    worker.stop().await;
}

#[actix_web::test]
async fn cancelling_a_running_job_stops_it_via_notify() {
    cancel_running(false).await;
}

#[actix_web::test]
async fn cancelling_a_running_job_stops_it_via_heartbeat_when_polling_only() {
    cancel_running(true).await;
}

#[actix_web::test]
async fn a_job_over_its_timeout_is_retried_as_timed_out() {
    let t = TestApp::new().await;
    let worker = Worker::start(&t.ctx, options(), Registry::standard());
    let mut job = noop(json!({ "sleepMs": 5_000, "audit": true }));
    job.timeout_secs = 1;
    job.max_attempts = 2;
    let id = enqueue(&t.ctx, &job).await.id;
    let r = wait_job(&t.ctx, id, "waiting for retry 2", waiting_retry(1)).await;
    let error = r.last_error.clone().unwrap_or_default();
    assert!(error.contains("timed out"), "{error}");
    assert_backoff(&r, Duration::from_secs(5));
    assert_eq!(noop_runs(&t.ctx, id).await, 0, "the attempt was stopped");
    worker.stop().await;
}

#[actix_web::test]
async fn a_panicking_handler_does_not_take_the_worker_down() {
    let t = TestApp::new().await;
    let mut opts = options();
    opts.concurrency = 1;
    let worker = Worker::start(&t.ctx, opts, Registry::standard().with("panics", Panics));
    let mut bad = new_job("panics", json!({}));
    bad.max_attempts = 2;
    let bad = enqueue(&t.ctx, &bad).await.id;
    let next = enqueue(&t.ctx, &noop(json!({ "audit": true }))).await.id;

    let r = wait_job(&t.ctx, bad, "waiting for retry 2", waiting_retry(1)).await;
    let error = r.last_error.unwrap_or_default();
    assert!(error.contains("panicked"), "{error}");
    wait_job(&t.ctx, next, "completed", in_state("completed")).await;
    assert_eq!(noop_runs(&t.ctx, next).await, 1);
    assert!(!worker.task.is_finished(), "the worker is still running");
    worker.stop().await;
}

#[actix_web::test]
async fn a_job_whose_worker_stopped_heartbeating_is_rescued_and_the_late_finish_ignored() {
    let t = TestApp::new().await;
    let id = enqueue(&t.ctx, &noop(json!({ "audit": true }))).await.id;

    // A "worker" claims it with a 1 s lease and then goes silent (hung or dead).
    let ghost = Uuid::now_v7();
    let claimed = {
        let mut conn = t.ctx.db.conn().await.unwrap();
        store::claim(
            &mut conn,
            &["default".to_owned()],
            10,
            ghost,
            Duration::from_secs(1),
        )
        .await
        .unwrap()
    };
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].id, claimed[0].attempt), (id, 1));

    let worker = Worker::start(&t.ctx, options(), Registry::standard());
    let done = wait_job(&t.ctx, id, "completed", in_state("completed")).await;
    assert_eq!(done.attempt, 2, "the rescue started a new attempt");
    assert_ne!(done.worker_id, Some(ghost));
    assert_eq!(
        done.last_error.as_deref(),
        Some("lease expired: the worker stopped heartbeating")
    );
    assert_eq!(noop_runs(&t.ctx, id).await, 1);

    // The ghost wakes up and reports: fenced out, nothing changes.
    let mut conn = t.ctx.db.conn().await.unwrap();
    let before = row(&t.ctx, id).await;
    for late in [
        Finish::Completed {
            result: json!({ "from": "ghost" }),
            body: Some(("text/plain", b"ghost".as_slice())),
        },
        Finish::Retry {
            error: "ghost",
            run_at: Utc::now(),
        },
        Finish::Dead { error: "ghost" },
        Finish::Cancelled,
        Finish::HandBack,
    ] {
        let applied = store::finish(&mut conn, id, ghost, 1, late.clone())
            .await
            .unwrap();
        assert!(!applied, "late {late:?} ignored");
    }
    assert!(
        store::heartbeat(&mut conn, ghost, &[id], Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty(),
        "the ghost's heartbeat holds nothing"
    );
    let after = row(&t.ctx, id).await;
    assert_eq!(
        (&after.state, after.attempt, &after.result, after.updated_at),
        (
            &before.state,
            before.attempt,
            &before.result,
            before.updated_at
        )
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cron_enqueuers_make_one_job_per_tick() {
    let t = TestApp::new().await;
    // Two "workers" (each with its own pool), four enqueuers each, racing on every tick.
    let workers = [
        crate::support::ctx_for(&t._db.url, None),
        crate::support::ctx_for(&t._db.url, None),
    ];
    let schedule = itsur::jobs::cron::schedules()
        .into_iter()
        .find(|s| s.name == "maintenance")
        .unwrap();
    let mut tick = Utc::now();
    for _ in 0..5 {
        tick = itsur::jobs::cron::next_tick(&schedule, tick).unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(8));
        let racers: Vec<_> = (0..8)
            .map(|i| {
                let ctx = workers[i % 2].clone();
                let (barrier, schedule) = (barrier.clone(), schedule.clone());
                tokio::spawn(async move {
                    let mut conn = ctx.db.conn().await.unwrap();
                    barrier.wait().await;
                    let job = itsur::jobs::cron::tick_job(&schedule, tick);
                    store::enqueue(&mut conn, &job).await.unwrap()
                })
            })
            .collect();
        let mut results = Vec::new();
        for r in racers {
            results.push(r.await.unwrap());
        }
        assert_eq!(results.len(), 8);
        let inserted = results.iter().filter(|(_, inserted)| *inserted).count();
        assert_eq!(inserted, 1, "exactly one enqueuer created tick {tick}");
        let first = results[0].0.id;
        assert!(
            results.iter().all(|(r, _)| r.id == first),
            "every enqueuer got the same job"
        );
    }
    let mut conn = t.ctx.db.conn().await.unwrap();
    let per_tick: Vec<(Option<String>, i64)> = jobs::table
        .group_by(jobs::unique_key)
        .select((jobs::unique_key, diesel::dsl::count_star()))
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(per_tick.len(), 5, "{per_tick:?}");
    assert!(per_tick.iter().all(|(_, n)| *n == 1), "{per_tick:?}");
}

#[actix_web::test]
async fn shutdown_lets_short_jobs_finish() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let admin = api.login(&world.a.admin.email).await;
    let worker = Worker::start(&t.ctx, options(), Registry::standard());
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            enqueue(&t.ctx, &noop(json!({ "sleepMs": 300, "audit": true })))
                .await
                .id,
        );
    }
    for id in &ids {
        wait_job(&t.ctx, *id, "running", in_state("running")).await;
    }
    worker.stop().await;
    for id in ids {
        let r = row(&t.ctx, id).await;
        assert_eq!((r.state.as_str(), r.attempt), ("completed", 1), "{r:#?}");
        assert_eq!(noop_runs(&t.ctx, id).await, 1);
    }
    // A stopped worker unregisters itself.
    let res = api.get("/admin/workers", admin.token()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.data().as_array().map(Vec::len),
        Some(0),
        "{}",
        res.text()
    );
}

/// Jobs the drain budget cannot wait for are handed back: queued, due now, attempt not
/// counted, no lease, nothing `running`.
async fn assert_handed_back(ctx: &Ctx, ids: &[Uuid]) {
    for id in ids {
        let r = row(ctx, *id).await;
        assert_eq!(r.state, JobState::Queued, "{r:#?}");
        assert_eq!(
            r.attempt, 0,
            "the interrupted attempt is not counted: {r:#?}"
        );
        assert_eq!((r.worker_id, r.lease_expires_at), (None, None), "{r:#?}");
        assert!(r.run_at <= Utc::now(), "due at once: {r:#?}");
    }
    let mut conn = ctx.db.conn().await.unwrap();
    let running: i64 = jobs::table
        .filter(jobs::state.eq("running"))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(running, 0);
}

#[actix_web::test]
async fn shutdown_hands_back_jobs_longer_than_the_drain_budget() {
    let t = TestApp::new().await;
    let mut opts = options();
    opts.drain_timeout = Duration::from_millis(200);
    let worker = Worker::start(&t.ctx, opts, Registry::standard());
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(
            enqueue(&t.ctx, &noop(json!({ "sleepMs": 600_000, "audit": true })))
                .await
                .id,
        );
    }
    for id in &ids {
        wait_job(&t.ctx, *id, "running", in_state("running")).await;
    }
    worker.stop().await;
    assert_handed_back(&t.ctx, &ids).await;
    for id in &ids {
        assert_eq!(noop_runs(&t.ctx, *id).await, 0);
    }

    // The next worker takes them from the start, and hands them back again when it too
    // stops before they are done.
    let mut opts = options();
    opts.drain_timeout = Duration::from_millis(200);
    let worker = Worker::start(&t.ctx, opts, Registry::standard());
    for id in &ids {
        let r = wait_job(&t.ctx, *id, "running", in_state("running")).await;
        assert_eq!(r.attempt, 1);
    }
    worker.stop().await;
    assert_handed_back(&t.ctx, &ids).await;
}

#[actix_web::test]
async fn shutdown_hands_back_a_handler_that_ignores_cancellation() {
    let t = TestApp::new().await;
    let mut opts = options();
    opts.drain_timeout = Duration::from_millis(200);
    let worker = Worker::start(
        &t.ctx,
        opts,
        Registry::standard().with("stuck", IgnoresCancel),
    );
    let id = enqueue(&t.ctx, &new_job("stuck", json!({}))).await.id;
    wait_job(&t.ctx, id, "running", in_state("running")).await;
    worker.stop().await;
    assert_handed_back(&t.ctx, &[id]).await;
}

// ---------------------------------------------------------------------------------------
// API
// ---------------------------------------------------------------------------------------

async fn place(
    api: &Api,
    s: &Session,
    vendor: impl Into<Uuid>,
    lines: &[(impl serde::Serialize, i32)],
) -> Uuid {
    let vendor = vendor.into();
    let items: Vec<Value> = lines
        .iter()
        .map(|(item, quantity)| json!({ "menuItemId": item, "quantity": quantity }))
        .collect();
    let res = api
        .post(
            "/orders",
            s.token(),
            &json!({ "vendorId": vendor, "items": items }),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    res.id()
}

async fn created_at(ctx: &Ctx, order: Uuid) -> DateTime<Utc> {
    let mut conn = ctx.db.conn().await.unwrap();
    orders::table
        .find(order)
        .select(orders::created_at)
        .first(&mut conn)
        .await
        .unwrap()
}

/// Checks the 202 contract (DESIGN.md "HTTP conventions") and returns the job id.
#[track_caller]
fn accepted(res: &Resp, kind: &str) -> Uuid {
    assert_eq!(res.status, 202, "{}", res.text());
    let d = res.data();
    let id: Uuid = d["jobId"].as_str().unwrap().parse().unwrap();
    assert_eq!(res.header("location"), Some(format!("/jobs/{id}").as_str()));
    assert_eq!(d["status"], "queued");
    assert_eq!(d["type"], kind);
    assert!(
        d["createdAt"]
            .as_str()
            .is_some_and(|s| s.parse::<DateTime<Utc>>().is_ok()),
        "{}",
        res.text()
    );
    assert!(d["estimatedDuration"].is_u64(), "{}", res.text());
    assert_eq!(d["progress"], 0);
    assert!(
        res.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        res.text()
    );
    id
}

/// Polls `GET /jobs/{id}` until the job is completed; returns its view.
async fn wait_completed(api: &Api, s: &Session, id: Uuid) -> Value {
    let last = RefCell::new(Value::Null);
    let last_ref = &last;
    let path = format!("/jobs/{id}");
    let path = path.as_str();
    let ok = eventually(DEADLINE, move || async move {
        let res = api.get(path, s.token()).await;
        let done = res.status == 200 && res.data()["status"] == "completed";
        *last_ref.borrow_mut() = res.body;
        done
    })
    .await;
    let last = last.into_inner();
    assert!(ok, "job {id} completed: {last}");
    last["data"].clone()
}

/// The CSV rows (header excluded), sorted.
fn csv_rows(body: &[u8]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_reader(body);
    let header = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let mut rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    rows.sort();
    (header, rows)
}

#[actix_web::test]
async fn a_sales_report_runs_in_the_background_and_its_result_downloads() {
    let t = TestApp::new().await;
    let w = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let student = api.login(&w.a.student.email).await;
    let student2 = api.login(&w.a.student2.email).await;
    let staff = api.login(&w.a.staff.email).await;
    let other_staff = api.login(&w.a.other_staff.email).await;
    let admin_a = api.login(&w.a.admin.email).await;
    let staff_b = api.login(&w.b.staff.email).await;
    let admin_b = api.login(&w.b.admin.email).await;
    let root = api.login(&w.platform_admin.email).await;
    let vendor = w.a.vendor.id;
    let (burrito, agua) = (&w.a.items[0], &w.a.items[1]);

    // Sales: two orders of the vendor, one of another vendor, one cancelled (excluded).
    let first = place(&api, &student, vendor, &[(burrito.id, 2), (agua.id, 1)]).await;
    let cancelled = place(&api, &student2, vendor, &[(burrito.id, 7)]).await;
    let res = api
        .post(
            &format!("/orders/{cancelled}/transitions"),
            student2.token(),
            &json!({ "to": "cancelled" }),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    place(
        &api,
        &student,
        w.a.other_vendor.id,
        &[(w.a.other_items[0].id, 3)],
    )
    .await;
    let second = place(&api, &student2, vendor, &[(burrito.id, 1)]).await;
    let (t1, t2) = (
        created_at(&t.ctx, first).await,
        created_at(&t.ctx, second).await,
    );
    assert!(t1 < t2);
    // The report reads its period in 20 slices. A 20 h period starting 1 h before the
    // second order puts a slice boundary exactly between the two orders: the report must
    // still show one row per day and item.
    let from = t2 - chrono::Duration::hours(1);
    let to = from + chrono::Duration::hours(20);
    // Reports group by the campus's local day (issue 17), and the fixture campus is in
    // America/Mexico_City.
    let day = t1
        .with_timezone(&chrono_tz::America::Mexico_City)
        .date_naive()
        .to_string();

    let path = format!("/vendors/{vendor}/reports/sales");
    let body = json!({ "from": from, "to": to, "format": "csv" });
    // Another vendor's staff may not; another campus does not even see the vendor.
    api.post(&path, other_staff.token(), &body)
        .await
        .assert_problem(403);
    api.post(&path, staff_b.token(), &body)
        .await
        .assert_problem(404);
    let bad = api
        .post(&path, staff.token(), &json!({ "from": to, "to": from }))
        .await;
    bad.assert_problem(400);
    assert_eq!(bad.field_errors(), ["to"]);

    let csv_job = accepted(&api.post(&path, staff.token(), &body).await, "sales_report");
    let json_job = accepted(
        &api.post(
            &path,
            admin_a.token(),
            &json!({ "from": from, "to": to, "format": "json" }),
        )
        .await,
        "sales_report",
    );
    // Not ready before a worker has run it.
    api.get(&format!("/jobs/{csv_job}/result"), staff.token())
        .await
        .assert_problem(409);

    let worker = Worker::start(&t.ctx, options(), Registry::standard());
    let view = wait_completed(&api, &staff, csv_job).await;
    assert_eq!(view["progress"], 100);
    assert_eq!(view["type"], "sales_report");
    assert_eq!(view["hasResultFile"], true);
    assert_eq!(view["result"]["quantity"], 4);
    assert_eq!(view["result"]["revenueCents"], 3 * 5000 + 1500);

    let res = api
        .get(&format!("/jobs/{csv_job}/result"), staff.token())
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(
        res.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/csv")),
        "{:?}",
        res.headers
    );
    assert!(
        res.header("content-disposition")
            .is_some_and(|cd| cd.contains(".csv")),
        "{:?}",
        res.headers
    );
    let (header, rows) = csv_rows(&res.raw);
    assert_eq!(
        header,
        [
            "day",
            "menu_item_id",
            "item",
            "quantity",
            "revenue_cents",
            "orders"
        ]
    );
    let mut expected = vec![
        vec![
            day.clone(),
            burrito.id.to_string(),
            burrito.name.clone(),
            "3".to_owned(),
            "15000".to_owned(),
            "2".to_owned(),
        ],
        vec![
            day.clone(),
            agua.id.to_string(),
            agua.name.clone(),
            "1".to_owned(),
            "1500".to_owned(),
            "1".to_owned(),
        ],
    ];
    expected.sort();
    assert_eq!(rows, expected, "{}", res.text());

    // JSON: the same totals, by item and by day.
    wait_completed(&api, &admin_a, json_job).await;
    let res = api
        .get(&format!("/jobs/{json_job}/result"), admin_a.token())
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("content-type"), Some("application/json"));
    let report = &res.body;
    assert_eq!(report["summary"]["quantity"], 4, "{report}");
    assert_eq!(report["summary"]["revenueCents"], 16_500);
    let by_item: Vec<(String, i64, i64)> = report["byItem"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["menuItemId"].as_str().unwrap().to_owned(),
                i["quantity"].as_i64().unwrap(),
                i["revenueCents"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut want = vec![
        (burrito.id.to_string(), 3, 15_000),
        (agua.id.to_string(), 1, 1_500),
    ];
    want.sort();
    let mut by_item = by_item;
    by_item.sort();
    assert_eq!(by_item, want);
    assert_eq!(
        report["byDay"],
        json!([{ "day": day, "quantity": 4, "revenueCents": 16_500 }])
    );

    // Tenant scoping: the owner, its campus admin and the platform admin see the job;
    // nobody else learns it exists.
    for (who, s) in [
        ("owner", &staff),
        ("campus admin", &admin_a),
        ("root", &root),
    ] {
        let res = api.get(&format!("/jobs/{csv_job}"), s.token()).await;
        assert_eq!(res.status, 200, "{who}: {}", res.text());
    }
    for s in [&student, &other_staff, &staff_b, &admin_b] {
        api.get(&format!("/jobs/{csv_job}"), s.token())
            .await
            .assert_problem(404);
        api.get(&format!("/jobs/{csv_job}/result"), s.token())
            .await
            .assert_problem(404);
        api.delete(&format!("/jobs/{csv_job}"), s.token())
            .await
            .assert_problem(404);
    }
    let listed = |res: &Resp| -> Vec<String> {
        assert_eq!(res.status, 200, "{}", res.text());
        res.data()
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["jobId"].as_str().unwrap().to_owned())
            .collect()
    };
    let res = api.get("/jobs", staff.token()).await;
    assert_eq!(listed(&res), [csv_job.to_string()]);
    assert_eq!(res.body["pagination"]["total"], 1);
    let res = api
        .get("/jobs?status=completed&type=sales_report", admin_a.token())
        .await;
    assert_eq!(listed(&res), [json_job.to_string(), csv_job.to_string()]);
    let res = api.get("/jobs?status=queued", admin_a.token()).await;
    assert!(listed(&res).is_empty());
    assert!(listed(&api.get("/jobs", admin_b.token()).await).is_empty());
    assert!(listed(&api.get("/jobs", student.token()).await).is_empty());
    api.get("/jobs?status=bogus", staff.token())
        .await
        .assert_problem(400);
    api.get("/jobs", None).await.assert_problem(401);
    worker.stop().await;
}

/// Import files still stored.
async fn uploads(ctx: &Ctx) -> i64 {
    use itsur::store::schema::import_uploads;
    let mut conn = ctx.db.conn().await.unwrap();
    import_uploads::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap()
}

fn csv_request(token: &str, content_type: &str, body: Vec<u8>) -> TestRequest {
    TestRequest::post()
        .uri("/admin/users/import")
        .insert_header(("Authorization", format!("Bearer {token}")))
        .insert_header(("Content-Type", content_type))
        .set_payload(body)
}

#[actix_web::test]
async fn a_user_import_reports_bad_rows_and_imported_users_can_log_in() {
    let t = TestApp::new().await;
    let w = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let admin = api.login(&w.a.admin.email).await;
    let student = api.login(&w.a.student.email).await;
    let vendor = w.a.vendor.id;
    let csv = format!(
        "email,display_name,role,password,vendor_id\n\
         new.student@a.edu,New Student,student,student-pass-1,\n\
         intruder@b.edu,Wrong Campus,student,student-pass-2,\n\
         new.staff@a.edu,New Staff,vendor_staff,staff-pass-1,{vendor}\n\
         NEW.STUDENT@a.edu,Twice,student,student-pass-3,\n\
         student@a.edu,Already Here,student,student-pass-4,\n\
         short@a.edu,Short,student,short,\n\
         boss@a.edu,Boss,platform_admin,boss-pass-12,\n\
         lost@a.edu,Lost Staff,vendor_staff,staff-pass-2,\n\
         new.admin@a.edu,New Admin,campus_admin,admin-pass-1,\n"
    );

    // Wrong media type, oversize body, wrong role: refused before anything is queued.
    api.send(csv_request(
        &admin.access,
        "application/json",
        csv.clone().into_bytes(),
    ))
    .await
    .assert_problem(415);
    let huge = vec![b'a'; itsur::service::imports::MAX_CSV_BYTES + 1];
    api.send(csv_request(&admin.access, "text/csv", huge))
        .await
        .assert_problem(413);
    // 20,001 short rows fit in the byte limit but not in the row limit.
    let many = format!(
        "email,display_name,role,password\n{}",
        "x@a.edu,X,student,pass-word-1\n".repeat(itsur::service::imports::MAX_ROWS + 1)
    );
    assert!(many.len() < itsur::service::imports::MAX_CSV_BYTES);
    let res = api
        .send(csv_request(&admin.access, "text/csv", many.into_bytes()))
        .await;
    res.assert_problem(413);
    assert!(res.text().contains("20000 rows"), "{}", res.text());
    api.send(csv_request(
        &student.access,
        "text/csv",
        csv.clone().into_bytes(),
    ))
    .await
    .assert_problem(403);

    let res = api
        .send(csv_request(
            &admin.access,
            "text/csv; charset=utf-8",
            csv.into_bytes(),
        ))
        .await;
    let id = accepted(&res, "bulk_import_users");
    // Only the accepted import was queued; its row never holds the file's passwords, which
    // wait in import_uploads until the job ends.
    let mut conn = t.ctx.db.conn().await.unwrap();
    let queued: Vec<(Uuid, Value)> = jobs::table
        .filter(jobs::kind.eq("bulk_import_users"))
        .select((jobs::id, jobs::payload))
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].0, id);
    assert!(!queued[0].1.to_string().contains("pass"), "{}", queued[0].1);
    assert_eq!(uploads(&t.ctx).await, 1);
    drop(conn);
    let worker = Worker::start(&t.ctx, options(), Registry::standard());
    let view = wait_completed(&api, &admin, id).await;
    assert_eq!(view["progress"], 100);
    assert_eq!(uploads(&t.ctx).await, 0, "the file goes when the job ends");
    let summary = &view["result"];
    assert_eq!(summary["total"], 9, "{summary}");
    assert_eq!(summary["imported"], 3, "{summary}");
    assert_eq!(summary["failed"], 6, "{summary}");
    let errors: Vec<(u64, String)> = summary["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().unwrap(),
                e["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let lines: Vec<u64> = errors.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [3, 5, 6, 7, 8, 9], "{summary}");
    for (line, needle) in [
        (3, "does not belong to this campus"),
        (5, "duplicate of line 2"),
        (6, "already exists"),
        (7, "password"),
        (8, "role"),
        (9, "vendor_id"),
    ] {
        let (_, message) = errors.iter().find(|(l, _)| *l == line).unwrap();
        assert!(message.contains(needle), "line {line}: {message}");
    }
    // No file: the result is the summary as JSON.
    let res = api.get(&format!("/jobs/{id}/result"), admin.token()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("content-type"), Some("application/json"));
    assert_eq!(res.body["imported"], 3);

    for (email, password, role) in [
        ("new.student@a.edu", "student-pass-1", "student"),
        ("new.staff@a.edu", "staff-pass-1", "vendor_staff"),
        ("new.admin@a.edu", "admin-pass-1", "campus_admin"),
    ] {
        let res = api
            .post(
                "/auth/login",
                None,
                &json!({ "email": email, "password": password }),
            )
            .await;
        assert_eq!(res.status, 200, "{email}: {}", res.text());
        assert_eq!(res.data()["user"]["role"], role, "{}", res.text());
    }
    // The rejected rows did not become accounts.
    let res = api
        .post(
            "/auth/login",
            None,
            &json!({ "email": "intruder@b.edu", "password": "student-pass-2" }),
        )
        .await;
    assert_eq!(res.status, 401, "{}", res.text());
    worker.stop().await;
}

#[actix_web::test]
async fn admins_see_live_workers_and_job_metrics_are_exported() {
    let t = TestApp::new().await;
    let w = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let admin = api.login(&w.a.admin.email).await;
    let staff = api.login(&w.a.staff.email).await;
    let mut opts = options();
    opts.concurrency = 3;
    opts.queues = vec!["default".to_owned(), "reports".to_owned()];
    let worker = Worker::start(&t.ctx, opts, Registry::standard());

    let found = eventually(DEADLINE, || async {
        let res = api.get("/admin/workers", admin.token()).await;
        res.status == 200 && res.data().as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    assert!(found, "the worker registered");
    let res = api.get("/admin/workers", admin.token()).await;
    let me = &res.data()[0];
    assert_eq!(me["pid"], std::process::id(), "{}", res.text());
    assert_eq!(me["concurrency"], 3);
    assert_eq!(me["queues"], json!(["default", "reports"]));
    assert!(me["heartbeatAt"].is_string() && me["host"].is_string());
    api.get("/admin/workers", staff.token())
        .await
        .assert_problem(403);

    let res = api
        .post(
            &format!("/vendors/{}/reports/sales", w.a.vendor.id),
            staff.token(),
            &json!({ "from": Utc::now() - chrono::Duration::days(1), "to": Utc::now() }),
        )
        .await;
    let id = accepted(&res, "sales_report");
    wait_completed(&api, &staff, id).await;

    // Gauges refresh on the worker's heartbeat (every lease / 3).
    let text = RefCell::new(String::new());
    let text_ref = &text;
    let api_ref = &api;
    let all_there = eventually(DEADLINE, move || async move {
        let res = api_ref.get("/metrics", None).await;
        let body = res.text();
        let ok = [
            r#"jobs_enqueued_total{kind="sales_report"}"#,
            r#"jobs_completed_total{kind="sales_report"}"#,
            r#"jobs_queue_depth{state="queued"}"#,
            "jobs_workers_alive",
            "jobs_duration_seconds_bucket",
            "jobs_wait_seconds_bucket",
        ]
        .iter()
        .all(|m| body.contains(m));
        *text_ref.borrow_mut() = body;
        ok
    })
    .await;
    assert!(all_there, "{}", text.into_inner());
    worker.stop().await;
}

/// A job's progress and its end are outbox events routed to its owner (the WebSocket
/// gateway delivers them like any user event), ordered across attempts by their version.
#[actix_web::test]
async fn progress_and_the_end_of_a_job_are_events_for_its_owner() {
    use itsur::store::schema::outbox_events as o;
    let t = TestApp::new().await;
    let w = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let staff = api.login(&w.a.staff.email).await;
    let res = api
        .post(
            &format!("/vendors/{}/reports/sales", w.a.vendor.id),
            staff.token(),
            &json!({ "from": "2026-01-01T00:00:00Z", "to": "2027-01-01T00:00:00Z" }),
        )
        .await;
    assert_eq!(res.status, 202, "{}", res.text());
    let job: Uuid = res.body["data"]["jobId"].as_str().unwrap().parse().unwrap();
    let worker = Worker::start(&t.ctx, options(), Registry::standard());
    wait_job(&t.ctx, job, "completed", in_state("completed")).await;
    worker.stop().await;

    let mut conn = t.ctx.db.conn().await.unwrap();
    let events: Vec<(String, i32, Option<Uuid>, Value)> = o::table
        .filter(o::aggregate_type.eq("job"))
        .filter(o::aggregate_id.eq(job))
        .order(o::id.asc())
        .select((o::event_type, o::aggregate_version, o::user_id, o::payload))
        .load(&mut conn)
        .await
        .unwrap();
    assert!(events.len() >= 2, "{events:?}");
    assert!(
        events.iter().all(|e| e.2 == Some(w.a.staff.id)),
        "routed to the owner"
    );
    assert!(
        events.windows(2).all(|p| p[0].1 < p[1].1),
        "versions increase: {events:?}"
    );
    assert_eq!(events[0].0, "job.progress");
    let last = events.last().unwrap();
    assert_eq!(last.0, "job.status_changed");
    assert_eq!(last.3["status"], "completed");
}

/// The job engine writes `job.status_changed` inside its SQL (`jsonb_build_object` in
/// `store::jobs`, for the end and for a retry); what it writes must be the domain's typed
/// payload (`domain::event::JobUpdate`), which consumers deserialize.
#[actix_web::test]
async fn the_job_events_the_engine_builds_in_sql_are_the_typed_domain_payload() {
    use itsur::domain::event::{Event, EventType, JobUpdate};
    use itsur::store::schema::outbox_events as o;
    let t = TestApp::new().await;
    let w = World::create(&t.ctx).await;
    let worker = Worker::start(&t.ctx, options(), Registry::standard());
    let mut job = noop(json!({ "failAttempts": [1] }));
    job.owner_id = Some(w.a.staff.id);
    job.max_attempts = 2;
    let id = enqueue(&t.ctx, &job).await.id;
    wait_job(&t.ctx, id, "waiting for retry 2", waiting_retry(1)).await;
    make_due(&t.ctx, id).await;
    wait_job(&t.ctx, id, "completed", in_state("completed")).await;
    worker.stop().await;

    let mut conn = t.ctx.db.conn().await.unwrap();
    let rows: Vec<(String, Value)> = o::table
        .filter(o::aggregate_id.eq(id))
        .order(o::id.asc())
        .select((o::event_type, o::payload))
        .load(&mut conn)
        .await
        .unwrap();
    let updates: Vec<JobUpdate> = rows
        .iter()
        .map(|(name, payload)| {
            let t = EventType::parse(name).unwrap();
            assert_eq!(t, EventType::JobStatusChanged, "{name}");
            match Event::from_payload(t, payload) {
                Ok(Event::JobStatusChanged(u)) => u,
                other => panic!("{payload} is not a JobUpdate: {other:?}"),
            }
        })
        .collect();
    let expected = |status: &str, message: Option<&str>, attempt| JobUpdate {
        job_id: id,
        kind: kind::NOOP.to_owned(),
        status: status.to_owned(),
        progress: 100,
        message: message.map(str::to_owned),
        attempt,
    };
    assert_eq!(
        updates,
        [
            expected("queued", Some("asked to fail attempt 1"), 1),
            expected("completed", None, 2),
        ]
    );
}

#[actix_web::test]
async fn the_file_of_a_cancelled_import_goes_with_the_job() {
    let t = TestApp::new().await;
    let w = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let admin = api.login(&w.a.admin.email).await;
    let csv = "email,display_name,role,password\nzed@a.edu,Zed,student,zed-password-1\n";
    let res = api
        .send(csv_request(
            &admin.access,
            "text/csv",
            csv.as_bytes().to_vec(),
        ))
        .await;
    let id = accepted(&res, "bulk_import_users");
    assert_eq!(uploads(&t.ctx).await, 1);
    assert_eq!(
        api.delete(&format!("/jobs/{id}"), admin.token())
            .await
            .status,
        204
    );
    assert_eq!(uploads(&t.ctx).await, 0, "a cancelled import keeps no file");
}

#[tokio::test]
async fn a_batch_completion_racing_a_rescue_never_resurrects_or_double_completes() {
    let t = TestApp::new().await;
    let ghost = Uuid::now_v7();
    let batch: Vec<NewJob> = (0..200).map(|i| noop(json!({ "i": i }))).collect();
    let ids: Vec<Uuid> = batch.iter().map(|j| j.id).collect();
    {
        let mut conn = t.ctx.db.conn().await.unwrap();
        assert_eq!(store::enqueue_many(&mut conn, &batch).await.unwrap(), 200);
        let claimed = store::claim(
            &mut conn,
            &["default".to_owned()],
            200,
            ghost,
            Duration::from_millis(1),
        )
        .await
        .unwrap();
        assert_eq!(claimed.len(), 200);
    }
    // The leases are over at once; the ghost's batch end and a rescue now race.
    let expired = eventually(DEADLINE, || async {
        let mut conn = t.ctx.db.conn().await.unwrap();
        jobs::table
            .filter(jobs::lease_expires_at.ge(diesel::dsl::now))
            .count()
            .get_result::<i64>(&mut conn)
            .await
            .unwrap()
            == 0
    })
    .await;
    assert!(expired);
    let result = json!({ "from": "ghost" });
    let ends: Vec<store::End<'_>> = ids
        .iter()
        .map(|id| store::End {
            id: *id,
            attempt: 1,
            state: store::EndState::Completed,
            result: Some(&result),
            body: None,
            error: None,
            message: None,
        })
        .collect();
    let (mut c1, mut c2) = (
        t.ctx.db.conn().await.unwrap(),
        t.ctx.db.conn().await.unwrap(),
    );
    let (ended, rescued) = tokio::join!(
        store::end_batch(&mut c1, ghost, 7, &ends),
        store::rescue_expired(&mut c2)
    );
    let (ended, rescued) = (ended.unwrap(), rescued.unwrap());
    let ended: std::collections::HashSet<Uuid> = ended.iter().map(|e| e.id).collect();
    let rescued: std::collections::HashSet<Uuid> = rescued.iter().map(|r| r.id).collect();
    assert!(ended.is_disjoint(&rescued), "no job both ended and rescued");
    assert_eq!(ended.len() + rescued.len(), 200, "each job went one way");
    // A second late batch from the ghost changes nothing.
    assert!(
        store::end_batch(&mut c1, ghost, 7, &ends)
            .await
            .unwrap()
            .is_empty()
    );
    drop((c1, c2));

    let worker = Worker::start(&t.ctx, options(), Registry::standard());
    for id in &ids {
        let r = wait_job(&t.ctx, *id, "completed", in_state("completed")).await;
        if ended.contains(id) {
            assert_eq!(
                (r.attempt, r.result.clone()),
                (1, Some(result.clone())),
                "{r:#?}"
            );
        } else {
            assert_eq!(r.attempt, 2, "rescued, then run once more: {r:#?}");
        }
    }
    worker.stop().await;
    let mut conn = t.ctx.db.conn().await.unwrap();
    let hot: i64 = jobs::table.count().get_result(&mut conn).await.unwrap();
    let history: i64 = itsur::store::schema::jobs_history::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        (hot, history),
        (0, 200),
        "every job completed once, in history only"
    );
}

/// Makes this session's statistics visible to other sessions after its next statement (a
/// backend otherwise flushes them at most once a second, or ten seconds later when idle).
async fn flush_stats(conn: &mut diesel_async::AsyncPgConnection) {
    diesel_async::SimpleAsyncConnection::batch_execute(conn, "SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
}

#[derive(QueryableByName)]
struct TuplesRead {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Rows of `jobs` read by a sequential scan plus entries read from its indexes named
/// `like` (a `LIKE` pattern), so far.
async fn hot_table_reads(ctx: &Ctx, like: &str) -> i64 {
    let mut conn = ctx.db.conn().await.unwrap();
    diesel::sql_query(
        "SELECT (coalesce((SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'jobs'), 0) \
         + coalesce((SELECT sum(idx_tup_read) FROM pg_stat_user_indexes \
             WHERE relname = 'jobs' AND indexrelname LIKE $1), 0))::int8 AS n",
    )
    .bind::<diesel::sql_types::Text, _>(like)
    .get_result::<TuplesRead>(&mut conn)
    .await
    .unwrap()
    .n
}

/// After a churn with autovacuum off, `ANALYZE` of the all-dead hot table says it holds no
/// rows; the claim, the batched end and the requeue must still reach their jobs by the
/// primary key, not by reading the table or its primary key whole (a join planned for a
/// one-row table once cost 1.2 s a claim).
#[tokio::test]
async fn claims_and_ends_stay_primary_key_lookups_when_statistics_say_the_table_is_empty() {
    let t = TestApp::new().await;
    let worker_id = Uuid::now_v7();
    let queues = ["default".to_owned()];
    // The worker's own session settings.
    let mut conn = t.ctx.db.conn().await.unwrap();
    store::set_worker_session(&mut conn).await.unwrap();
    let end_all = async |conn: &mut _, jobs: &[JobRow]| {
        let ends: Vec<store::End<'_>> = jobs
            .iter()
            .map(|j| store::End {
                id: j.id,
                attempt: j.attempt,
                state: store::EndState::Completed,
                result: None,
                body: None,
                error: None,
                message: None,
            })
            .collect();
        store::end_batch(conn, worker_id, 0, &ends)
            .await
            .unwrap()
            .len()
    };
    // Churn: 3,000 jobs through the hot table, then statistics taken while it is all dead.
    let churn: Vec<NewJob> = (0..3000).map(|_| noop(json!({}))).collect();
    store::enqueue_many(&mut conn, &churn).await.unwrap();
    let claimed = store::claim(&mut conn, &queues, 3000, worker_id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(end_all(&mut conn, &claimed).await, 3000);
    diesel_async::SimpleAsyncConnection::batch_execute(&mut *conn, "ANALYZE jobs")
        .await
        .unwrap();

    let fresh: Vec<NewJob> = (0..100).map(|_| noop(json!({}))).collect();
    store::enqueue_many(&mut conn, &fresh).await.unwrap();
    flush_stats(&mut conn).await;
    // The claims read the claim index (and its dead entries), then the primary key only.
    let before = hot_table_reads(&t.ctx, "jobs_pkey").await;
    let mut claimed = Vec::new();
    for _ in 0..4 {
        claimed.extend(
            store::claim(&mut conn, &queues, 25, worker_id, Duration::from_secs(60))
                .await
                .unwrap(),
        );
    }
    assert_eq!(claimed.len(), 100);
    flush_stats(&mut conn).await;
    let claims_read = hot_table_reads(&t.ctx, "jobs_pkey").await - before;
    // The end and the requeue read the primary key only (no index but it holds ids for them).
    let before = hot_table_reads(&t.ctx, "%").await;
    let (retry, done) = claimed.split_at(10);
    assert_eq!(end_all(&mut conn, done).await, 90);
    let requeues: Vec<store::Requeue<'_>> = retry
        .iter()
        .map(|j| store::Requeue {
            id: j.id,
            attempt: j.attempt,
            hand_back: false,
            run_at: Utc::now(),
            error: Some("try again"),
        })
        .collect();
    assert_eq!(
        store::requeue_batch(&mut conn, worker_id, 0, &requeues)
            .await
            .unwrap()
            .len(),
        10
    );
    flush_stats(&mut conn).await;
    drop(conn);
    let read = claims_read + hot_table_reads(&t.ctx, "%").await - before;
    // Primary-key probes: about one per job per statement (4 claims, 1 end, 1 requeue) —
    // a few hundred; a whole-table read is over 3,000 per statement.
    assert!(
        read < 1000,
        "{read} rows and primary-key entries read for 100 claims, 90 ends and 10 requeues"
    );
    let r = row(&t.ctx, retry[0].id).await;
    assert_eq!(
        (r.state, r.attempt, r.last_error.as_deref()),
        (JobState::Queued, 1, Some("try again"))
    );
}

/// Claim statements this database has seen, as far as their sessions flushed their
/// statistics (a session always flushes when it ends): every claim, even one that finds
/// nothing, reads the claim index once, and no other statement may read that index (its
/// predicate is the claim's own, migration `000070`).
async fn claims_counted(ctx: &Ctx) -> i64 {
    let mut conn = ctx.db.conn().await.unwrap();
    diesel::sql_query(
        "SELECT coalesce((SELECT idx_scan FROM pg_stat_user_indexes \
             WHERE indexrelname = 'jobs_claim_idx'), 0)::int8 AS n",
    )
    .get_result::<TuplesRead>(&mut conn)
    .await
    .unwrap()
    .n
}

#[derive(QueryableByName, PartialEq, Eq, Debug, Clone, Copy)]
struct SessionActivity {
    /// When the newest claim on this database was sent, by any session other than the asking
    /// one whose last statement is a claim.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    last_claim: Option<DateTime<Utc>>,
    /// Some session of this database LISTENs for new jobs (its last statement is the LISTEN).
    #[diesel(sql_type = diesel::sql_types::Bool)]
    listening: bool,
}

/// Live session state from `pg_stat_activity` (not the statistics: it moves the moment a
/// statement is sent). The claim is recognised by the start of its text in `store::jobs`.
async fn session_activity(ctx: &Ctx) -> SessionActivity {
    let mut conn = ctx.db.conn().await.unwrap();
    diesel::sql_query(
        "SELECT (SELECT max(query_start) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND query LIKE 'WITH next AS (SELECT id FROM jobs %') AS last_claim, \
         EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
             AND query LIKE 'LISTEN itsur_jobs%') AS listening",
    )
    .get_result(&mut conn)
    .await
    .unwrap()
}

/// Asserts that no claim is sent for `quiet`: the newest claim stays the one seen before.
/// (Proving an absence takes waiting; nothing else in these tests sleeps to synchronise.)
async fn assert_no_claim_for(ctx: &Ctx, quiet: Duration, when: &str) {
    let before = session_activity(ctx).await.last_claim;
    assert!(before.is_some(), "the worker has a claim connection");
    tokio::time::sleep(quiet).await;
    let after = session_activity(ctx).await.last_claim;
    assert_eq!(before, after, "a claim was sent {when}");
}

/// A worker claims when work may be due (a NOTIFY, a rescue, the poll timer) or while its
/// last claim came back full; a freed slot or recorded outcomes only start buffered jobs
/// (`runner::claim_loop`). So an idle worker's claim connection is free when the next NOTIFY
/// arrives, and N jobs enqueued one at a time cost N claims — not 3N (a claim for the
/// NOTIFY, one for the freed slot, one for the recorded outcome).
#[tokio::test]
async fn an_idle_worker_sends_no_claim_between_jobs() {
    const JOBS: i64 = 5;
    let t = TestApp::new().await;
    // The counter counts: two claims (the worker's session settings, an empty queue) are
    // two reads of the claim index.
    let base = claims_counted(&t.ctx).await;
    {
        let mut conn = itsur::store::connect::establish(t.ctx.config.database.url.expose())
            .await
            .unwrap();
        store::set_worker_session(&mut conn).await.unwrap();
        for _ in 0..2 {
            let claimed = store::claim(
                &mut conn,
                &["default".to_owned()],
                10,
                Uuid::now_v7(),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
            assert!(claimed.is_empty());
        }
        flush_stats(&mut conn).await;
    }
    assert_eq!(
        claims_counted(&t.ctx).await - base,
        2,
        "one claim, one read of the claim index"
    );

    let mut opts = options();
    // The poll timer must not fire during the test: only NOTIFYs may make it claim.
    opts.poll_interval = Duration::from_secs(600);
    let worker = Worker::start(&t.ctx, opts, Registry::standard());
    // Startup claims once, and once more if the listener's connect wake-up comes after the
    // first claim. Settled: listening, and no claim sent for a second.
    let seen = std::cell::Cell::new(SessionActivity {
        last_claim: None,
        listening: false,
    });
    let settled = eventually(DEADLINE, || async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = session_activity(&t.ctx).await;
        let quiet = now.listening && now.last_claim.is_some() && now == seen.get();
        seen.set(now);
        quiet
    })
    .await;
    assert!(
        settled,
        "the worker started, listened and stopped claiming: {:?}",
        seen.get()
    );
    assert_no_claim_for(&t.ctx, Duration::from_millis(1500), "by an idle worker").await;

    for i in 0..JOBS {
        // Long enough to be seen running: the claim that took it is the last one allowed.
        let job = enqueue(&t.ctx, &noop(json!({ "i": i, "sleepMs": 400 }))).await;
        wait_job(&t.ctx, job.id, "claimed", |r| r.state != JobState::Queued).await;
        let taken_by = session_activity(&t.ctx).await.last_claim;
        wait_job(&t.ctx, job.id, "completed", in_state("completed")).await;
        // The slot freed and the outcome was recorded: neither may claim.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            session_activity(&t.ctx).await.last_claim,
            taken_by,
            "a claim was sent after job {i} was claimed (its end, its slot, its outcome)"
        );
    }
    assert_no_claim_for(&t.ctx, Duration::from_millis(1500), "by an idle worker").await;
    worker.stop().await;

    // The claim session flushes its statistics when it ends.
    let ended = eventually(DEADLINE, || async {
        session_activity(&t.ctx).await.last_claim.is_none()
    })
    .await;
    assert!(ended, "the worker's claim session ended");
    let claims = claims_counted(&t.ctx).await - base - 2;
    assert!(
        (JOBS + 1..=JOBS + 2).contains(&claims),
        "{claims} claims for {JOBS} jobs enqueued one at a time (1 or 2 at startup, 1 per NOTIFY)"
    );
}

/// A dedicated session (not pooled: the tests below leave transactions open and drop
/// sessions mid-transaction).
async fn own_session(ctx: &Ctx) -> diesel_async::AsyncPgConnection {
    itsur::store::connect::establish(ctx.config.database.url.expose())
        .await
        .unwrap()
}

async fn sql(conn: &mut diesel_async::AsyncPgConnection, statement: &str) {
    diesel_async::SimpleAsyncConnection::batch_execute(conn, statement)
        .await
        .unwrap();
}

fn worker_row(id: Uuid) -> store::WorkerRow {
    store::WorkerRow {
        id,
        host: "test".to_owned(),
        pid: 1,
        queues: vec!["default".to_owned()],
        concurrency: 1,
        running: 0,
        started_at: Utc::now(),
        heartbeat_at: Utc::now(),
    }
}

/// Every worker starts a maintenance round (rescue, gauges) every third of a lease; the
/// round goes on only on the oldest live worker, and on one session at a time: two workers
/// that both think they are the oldest, at the same moment, rescue once.
#[tokio::test]
async fn one_worker_does_the_maintenance_round_and_another_takes_over_when_it_is_gone() {
    let t = TestApp::new().await;
    let lease = Duration::from_secs(30);
    let (old, young) = (Uuid::now_v7(), Uuid::now_v7());
    {
        let mut conn = t.ctx.db.conn().await.unwrap();
        store::insert_worker(&mut conn, &worker_row(old))
            .await
            .unwrap();
        store::insert_worker(&mut conn, &worker_row(young))
            .await
            .unwrap();
    }
    let (mut a, mut b) = (own_session(&t.ctx).await, own_session(&t.ctx).await);

    // Two rounds at the same moment: the oldest gets it; the younger skips it, and so does
    // a second round that believes it is the oldest (a different lease, a late heartbeat).
    sql(&mut a, "BEGIN").await;
    sql(&mut b, "BEGIN").await;
    assert!(
        store::claim_maintenance_round(&mut a, old, lease)
            .await
            .unwrap()
    );
    assert!(
        !store::claim_maintenance_round(&mut b, young, lease)
            .await
            .unwrap()
    );
    assert!(
        !store::claim_maintenance_round(&mut b, old, lease)
            .await
            .unwrap()
    );
    sql(&mut b, "COMMIT").await;
    // The younger worker never takes the lock, not even to find it is not elected: the
    // oldest's next round is never skipped because of it.
    sql(&mut a, "COMMIT").await;
    sql(&mut b, "BEGIN").await;
    assert!(
        !store::claim_maintenance_round(&mut b, young, lease)
            .await
            .unwrap()
    );
    sql(&mut a, "BEGIN").await;
    assert!(
        store::claim_maintenance_round(&mut a, old, lease)
            .await
            .unwrap()
    );
    sql(&mut b, "COMMIT").await;

    // The elected worker dies mid-round: its session goes, and the lock with it.
    drop(a);
    let deadline = std::time::Instant::now() + DEADLINE;
    let released = loop {
        sql(&mut b, "BEGIN").await;
        let got = store::claim_maintenance_round(&mut b, old, lease)
            .await
            .unwrap();
        sql(&mut b, "ROLLBACK").await;
        if got || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(released, "a dead session's round lock is released");

    // Its heartbeat ages past the lease: the next oldest is elected.
    {
        let mut conn = t.ctx.db.conn().await.unwrap();
        diesel::update(itsur::store::schema::workers::table.find(old))
            .set(itsur::store::schema::workers::heartbeat_at.eq(Utc::now() - lease * 2))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    sql(&mut b, "BEGIN").await;
    assert!(
        store::claim_maintenance_round(&mut b, young, lease)
            .await
            .unwrap()
    );
    sql(&mut b, "COMMIT").await;
}

/// Two real workers: the second one started is not elected while the first lives; when the
/// first stops (and unregisters), the second rescues a dead worker's job.
#[tokio::test]
async fn the_rescue_goes_on_when_the_elected_worker_stops() {
    let t = TestApp::new().await;
    let first = Worker::start(&t.ctx, options(), Registry::standard());
    let registered = |n: i64| {
        let ctx = &t.ctx;
        async move {
            eventually(DEADLINE, || async {
                let mut conn = ctx.db.conn().await.unwrap();
                itsur::store::schema::workers::table
                    .count()
                    .get_result::<i64>(&mut conn)
                    .await
                    .unwrap()
                    == n
            })
            .await
        }
    };
    assert!(registered(1).await, "the first worker registered");
    let second = Worker::start(&t.ctx, options(), Registry::standard());
    assert!(registered(2).await, "the second worker registered");
    first.stop().await;
    assert!(registered(1).await, "the first worker unregistered");

    // A "worker" that is not registered claims a job with a 1 s lease and goes silent. (A
    // queue the real worker does not claim from: the rescue is what this test watches.)
    let mut job = noop(json!({}));
    job.queue = "ghosts".to_owned();
    let id = enqueue(&t.ctx, &job).await.id;
    let ghost = Uuid::now_v7();
    {
        let mut conn = t.ctx.db.conn().await.unwrap();
        let claimed = store::claim(
            &mut conn,
            &["ghosts".to_owned()],
            10,
            ghost,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(claimed.len(), 1);
    }
    let rescued = wait_job(&t.ctx, id, "rescued", in_state("queued")).await;
    assert_eq!(
        (
            rescued.attempt,
            rescued.worker_id,
            rescued.last_error.as_deref()
        ),
        (
            1,
            None,
            Some("lease expired: the worker stopped heartbeating")
        )
    );
    second.stop().await;
}
