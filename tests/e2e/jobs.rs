//! The job queue across real `itsur worker` processes: 10,000 jobs on three workers each run
//! exactly once; a worker killed with SIGKILL mid-job has the job rescued by another within
//! about one lease, and it completes once; SIGTERM with jobs in flight lets the short ones
//! finish and hands the long ones back, leaving nothing `running`.
//!
//! The side effect counted is the `noop` job's audit row (`job.noop`, target = job id),
//! written once per run that gets past its sleep. Waits poll Postgres with deadlines that only
//! guard against hangs; the figures printed (`--nocapture`) are observations, not asserts.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Integer, Nullable, Text};
use diesel_async::{AsyncConnection, RunQueryDsl};
use itsur::app::Ctx;
use itsur::domain::job::{JobState, kind};
use itsur::store::jobs::{self as store, JobRow, NewJob};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::proc::{free_port, itsur, sigterm, wait_exit, wait_ready};
use crate::support::{TestDb, ctx_for, eventually};

/// The shortest lease `itsur worker` accepts: a dead worker's jobs come back within it.
const LEASE_SECS: &str = "3";

/// A worker process whose logs go to a file (a pipe nobody reads would fill and block it).
struct WorkerProc {
    child: Child,
    pid: i32,
    health: String,
    log: PathBuf,
}

impl WorkerProc {
    fn spawn(db: &TestDb, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!(
            "itsur-e2e-worker-{}-{port}.log",
            std::process::id()
        ));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd: Command = itsur(&["worker"]);
        cmd.env("DATABASE_URL", &db.url)
            .env("METRICS_BIND", format!("127.0.0.1:{port}"))
            .env("JOB_LEASE_SECS", LEASE_SECS)
            .env("JOB_NO_CRON", "true")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let pid = i32::try_from(child.id().unwrap()).unwrap();
        Self {
            child,
            pid,
            health: format!("http://127.0.0.1:{port}/health/ready"),
            log,
        }
    }

    async fn ready(&self) {
        wait_ready(&self.health, Duration::from_secs(60)).await;
    }

    /// This process's id in the `workers` registry (it registers on its first heartbeat).
    async fn worker_id(&self, ctx: &Ctx) -> Uuid {
        let found = std::cell::Cell::new(None);
        let (found_ref, pid) = (&found, self.pid);
        let ok = eventually(Duration::from_secs(30), move || async move {
            let mut conn = ctx.db.conn().await.unwrap();
            let ids: Vec<IdRow> = diesel::sql_query("SELECT id FROM workers WHERE pid = $1")
                .bind::<Integer, _>(pid)
                .load(&mut conn)
                .await
                .unwrap();
            found_ref.set(ids.into_iter().next().map(|r| r.id));
            found_ref.get().is_some()
        })
        .await;
        assert!(ok, "worker {} registered: {}", self.pid, self.logs());
        found.get().unwrap()
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn kill_9(&mut self) {
        let status = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the killed worker exited")
            .unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }

    /// SIGTERM, then the exit code.
    async fn terminate(&mut self) -> i32 {
        sigterm(&self.child).await;
        wait_exit(&mut self.child, Duration::from_secs(60)).await
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        // kill_on_drop stops the process. A failed test keeps the log to read.
        if std::thread::panicking() {
            eprintln!("worker {} log kept at {}", self.pid, self.log.display());
        } else {
            // Best effort: a leftover log in the temp dir harms nothing.
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct RunBy {
    #[diesel(sql_type = Nullable<Text>)]
    worker: Option<String>,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Jobs whose side effect did not happen exactly once (hash join: `audit_log` has no index
/// on `target_id`).
const ONE_RUN_EACH: &str = "SELECT count(*) AS n FROM (SELECT * FROM jobs UNION ALL SELECT * FROM jobs_history) j LEFT JOIN \
     (SELECT target_id, count(*) AS runs FROM audit_log WHERE action = 'job.noop' \
      GROUP BY target_id) a ON a.target_id = j.id::text \
     WHERE coalesce(a.runs, 0) <> 1";

async fn count(ctx: &Ctx, sql: &str) -> i64 {
    let mut conn = ctx.db.conn().await.unwrap();
    diesel::sql_query(sql)
        .get_result::<Count>(&mut conn)
        .await
        .unwrap()
        .n
}

fn noop(payload: Value) -> NewJob {
    NewJob {
        id: Uuid::now_v7(),
        kind: kind::NOOP.to_owned(),
        queue: "default".to_owned(),
        priority: 1,
        payload,
        unique_key: None,
        run_at: Utc::now(),
        max_attempts: 3,
        timeout_secs: 600,
        owner_id: None,
        campus_id: None,
    }
}

async fn row(ctx: &Ctx, id: Uuid) -> JobRow {
    let mut conn = ctx.db.conn().await.unwrap();
    store::find(&mut conn, id)
        .await
        .unwrap()
        .expect("job exists")
}

/// Audit rows of one `noop` job: how many times it ran to the end.
async fn runs_of(ctx: &Ctx, id: Uuid) -> i64 {
    count(
        ctx,
        &format!(
            "SELECT count(*) AS n FROM audit_log WHERE action = 'job.noop' AND target_id = '{id}'"
        ),
    )
    .await
}

async fn wait_until(ctx: &Ctx, what: &str, deadline: Duration, sql: &str, want: i64) {
    let seen = std::cell::Cell::new(-1);
    let seen_ref = &seen;
    let ok = eventually(deadline, move || async move {
        let n = count(ctx, sql).await;
        seen_ref.set(n);
        n == want
    })
    .await;
    if !ok {
        panic!(
            "{what}: wanted {want}, last saw {}; jobs by state: {}",
            seen.get(),
            job_states(ctx).await
        );
    }
}

/// `state/attempt: count (last error)` of every job, for failure messages.
async fn job_states(ctx: &Ctx) -> String {
    #[derive(QueryableByName)]
    struct Group {
        #[diesel(sql_type = Text)]
        state: String,
        #[diesel(sql_type = Integer)]
        attempt: i32,
        #[diesel(sql_type = Nullable<Text>)]
        last_error: Option<String>,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = ctx.db.conn().await.unwrap();
    let groups: Vec<Group> = diesel::sql_query(
        "SELECT state, attempt, last_error, count(*) AS n FROM (SELECT * FROM jobs UNION ALL SELECT * FROM jobs_history) j \
         GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 20",
    )
    .load(&mut conn)
    .await
    .unwrap();
    groups
        .iter()
        .map(|g| format!("{}/{}: {} ({:?})", g.state, g.attempt, g.n, g.last_error))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_jobs_on_three_workers_each_run_exactly_once() {
    const JOBS: i64 = 10_000;
    let db = TestDb::new().await;
    let ctx = ctx_for(&db.url, None);
    // Connections stay well under Postgres's default 100 (3 × (8 pooled + 1 LISTEN)) so
    // other suites sharing the server do not turn this into a test of "too many clients";
    // a job waits for a pooled connection rather than failing its attempt.
    let env = [
        ("WORKER_CONCURRENCY", "16"),
        ("DB_POOL_SIZE", "8"),
        ("DB_CONNECT_TIMEOUT_MS", "30000"),
    ];
    let mut workers: Vec<WorkerProc> = (0..3).map(|_| WorkerProc::spawn(&db, &env)).collect();
    for w in &workers {
        w.ready().await;
    }

    // All at once, in one transaction: the commit's NOTIFY wakes the three workers together.
    let batch: Vec<NewJob> = (0..JOBS).map(|_| noop(json!({ "audit": true }))).collect();
    let started = Instant::now();
    let inserted = {
        let mut conn = ctx.db.conn().await.unwrap();
        conn.transaction(async |conn| store::enqueue_many(conn, &batch).await)
            .await
            .unwrap()
    };
    assert_eq!(i64::try_from(inserted).unwrap(), JOBS);
    let enqueued = started.elapsed();

    // Until nothing is left to run (a dead job fails the asserts below instead of a wait).
    wait_until(
        &ctx,
        "jobs finished",
        Duration::from_secs(600),
        "SELECT count(*) AS n FROM jobs WHERE state IN ('queued', 'running')",
        0,
    )
    .await;
    let ran = started.elapsed();

    assert_eq!(
        count(
            &ctx,
            "SELECT count(*) AS n FROM jobs_history WHERE state = 'completed'"
        )
        .await,
        JOBS,
        "every job completed: {}",
        job_states(&ctx).await
    );
    assert_eq!(
        count(&ctx, ONE_RUN_EACH).await,
        0,
        "each job's side effect happened exactly once"
    );
    assert_eq!(
        count(
            &ctx,
            "SELECT count(*) AS n FROM audit_log WHERE action = 'job.noop'"
        )
        .await,
        JOBS,
        "one side effect per job, no more"
    );
    assert_eq!(
        count(&ctx, "SELECT count(*) AS n FROM (SELECT * FROM jobs UNION ALL SELECT * FROM jobs_history) j WHERE attempt <> 1").await,
        0,
        "every job ran in its first attempt: {}",
        job_states(&ctx).await
    );
    let mut conn = ctx.db.conn().await.unwrap();
    let by_worker: Vec<RunBy> = diesel::sql_query(
        "SELECT detail->>'worker' AS worker, count(*) AS n FROM audit_log \
         WHERE action = 'job.noop' GROUP BY 1 ORDER BY 2 DESC",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let by_worker: Vec<(String, i64)> = by_worker
        .into_iter()
        .map(|r| (r.worker.unwrap_or_default(), r.n))
        .collect();
    // The three were awake when the batch committed: each took part (the exclusivity
    // under test is between processes).
    assert_eq!(by_worker.len(), 3, "jobs per worker: {by_worker:?}");

    #[expect(clippy::as_conversions, reason = "a rate for the report")]
    let rate = JOBS as f64 / ran.as_secs_f64();
    eprintln!(
        "10k jobs: enqueue_many {enqueued:.2?}; all completed after {ran:.2?} ({rate:.0} jobs/s); \
         per worker {:?}",
        by_worker.iter().map(|(_, n)| n).collect::<Vec<_>>()
    );

    for w in &mut workers {
        assert_eq!(w.terminate().await, 0, "{}", w.logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_a_worker_killed_mid_job_is_rescued_and_completes_once() {
    let db = TestDb::new().await;
    let ctx = ctx_for(&db.url, None);
    let mut a = WorkerProc::spawn(&db, &[]);
    a.ready().await;
    let a_id = a.worker_id(&ctx).await;

    let job = noop(json!({ "sleepMs": 3_000, "audit": true }));
    let id = job.id;
    {
        let mut conn = ctx.db.conn().await.unwrap();
        store::enqueue(&mut conn, &job).await.unwrap();
    }
    let claimed = eventually(Duration::from_secs(30), || async {
        let r = row(&ctx, id).await;
        r.state == JobState::Running && r.worker_id == Some(a_id)
    })
    .await;
    assert!(claimed, "worker A took the job: {}", a.logs());

    a.kill_9().await;
    let killed = Instant::now();
    let r = row(&ctx, id).await;
    assert_eq!(
        (r.state.as_str(), r.worker_id, r.attempt),
        ("running", Some(a_id), 1),
        "killed mid-job"
    );
    assert_eq!(runs_of(&ctx, id).await, 0);

    let mut b = WorkerProc::spawn(&db, &[]);
    b.ready().await;
    let b_id = b.worker_id(&ctx).await;
    let rescued = eventually(Duration::from_secs(60), || async {
        row(&ctx, id).await.worker_id == Some(b_id)
    })
    .await;
    assert!(rescued, "worker B rescued the job: {}", b.logs());
    let rescued_after = killed.elapsed();
    let completed = eventually(Duration::from_secs(60), || async {
        row(&ctx, id).await.state == JobState::Completed
    })
    .await;
    assert!(completed, "the rescued job completed: {}", b.logs());

    let r = row(&ctx, id).await;
    assert_eq!(r.attempt, 2, "one attempt on A, one on B");
    assert_eq!(
        r.last_error.as_deref(),
        Some("lease expired: the worker stopped heartbeating")
    );
    assert_eq!(runs_of(&ctx, id).await, 1, "completed exactly once");
    let ran_on: Vec<RunBy> = diesel::sql_query(
        "SELECT detail->>'worker' AS worker, count(*) AS n FROM audit_log \
         WHERE action = 'job.noop' GROUP BY 1",
    )
    .load(&mut ctx.db.conn().await.unwrap())
    .await
    .unwrap();
    assert_eq!(ran_on.len(), 1);
    assert_eq!(ran_on[0].worker.as_deref(), Some(b_id.to_string().as_str()));
    eprintln!(
        "kill -9: job back under worker B {rescued_after:.2?} after the kill \
         (lease {LEASE_SECS} s, B started after the kill)"
    );
    assert_eq!(b.terminate().await, 0, "{}", b.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_short_jobs_finish_and_hands_long_ones_back() {
    let db = TestDb::new().await;
    let ctx = ctx_for(&db.url, None);
    // Drain budget = 80 % of SHUTDOWN_TIMEOUT_SECS = 4.8 s: room for the 2 s jobs, none
    // for the 10 min ones.
    let mut w = WorkerProc::spawn(
        &db,
        &[("WORKER_CONCURRENCY", "8"), ("SHUTDOWN_TIMEOUT_SECS", "6")],
    );
    w.ready().await;
    let short: Vec<NewJob> = (0..4)
        .map(|_| noop(json!({ "sleepMs": 2_000, "audit": true })))
        .collect();
    let long: Vec<NewJob> = (0..4)
        .map(|_| noop(json!({ "sleepMs": 600_000, "audit": true })))
        .collect();
    {
        let mut conn = ctx.db.conn().await.unwrap();
        let all: Vec<NewJob> = short.iter().chain(&long).cloned().collect();
        store::enqueue_many(&mut conn, &all).await.unwrap();
    }
    wait_until(
        &ctx,
        "all eight in flight",
        Duration::from_secs(30),
        "SELECT count(*) AS n FROM jobs WHERE state = 'running'",
        8,
    )
    .await;

    assert_eq!(w.terminate().await, 0, "{}", w.logs());

    for j in &short {
        let r = row(&ctx, j.id).await;
        assert_eq!((r.state.as_str(), r.attempt), ("completed", 1), "{r:#?}");
        assert_eq!(runs_of(&ctx, j.id).await, 1);
    }
    for j in &long {
        let r = row(&ctx, j.id).await;
        assert_eq!(r.state, JobState::Queued, "handed back: {r:#?}");
        assert_eq!(
            r.attempt, 0,
            "the interrupted attempt is not counted: {r:#?}"
        );
        assert_eq!((r.worker_id, r.lease_expires_at), (None, None), "{r:#?}");
        assert_eq!(runs_of(&ctx, j.id).await, 0);
    }
    assert_eq!(
        count(
            &ctx,
            "SELECT count(*) AS n FROM jobs WHERE state = 'running'"
        )
        .await,
        0,
        "nothing stuck running"
    );
    assert_eq!(
        count(&ctx, "SELECT count(*) AS n FROM workers").await,
        0,
        "the stopped worker unregistered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_a_full_local_buffer_loses_nothing_and_runs_nothing_twice() {
    let db = TestDb::new().await;
    let ctx = ctx_for(&db.url, None);
    // Two slots and a buffer of ten: twelve jobs are claimed, two start, ten wait locally.
    let mut a = WorkerProc::spawn(&db, &[("WORKER_CONCURRENCY", "2"), ("JOB_PREFETCH", "10")]);
    a.ready().await;
    let a_id = a.worker_id(&ctx).await;
    let batch: Vec<NewJob> = (0..12)
        .map(|_| noop(json!({ "sleepMs": 4_000, "audit": true })))
        .collect();
    {
        let mut conn = ctx.db.conn().await.unwrap();
        store::enqueue_many(&mut conn, &batch).await.unwrap();
        store::notify_workers(&mut conn, "default").await.unwrap();
    }
    wait_until(
        &ctx,
        "A claimed all twelve (two running, ten buffered)",
        Duration::from_secs(30),
        &format!("SELECT count(*) AS n FROM jobs WHERE state = 'running' AND worker_id = '{a_id}'"),
        12,
    )
    .await;
    a.kill_9().await;
    assert_eq!(
        count(
            &ctx,
            "SELECT count(*) AS n FROM audit_log WHERE action = 'job.noop'"
        )
        .await,
        0,
        "nothing finished before the kill"
    );

    let mut b = WorkerProc::spawn(&db, &[("WORKER_CONCURRENCY", "12")]);
    b.ready().await;
    wait_until(
        &ctx,
        "every job rescued and completed",
        Duration::from_secs(90),
        "SELECT count(*) AS n FROM jobs_history WHERE state = 'completed'",
        12,
    )
    .await;
    assert_eq!(count(&ctx, "SELECT count(*) AS n FROM jobs").await, 0);
    for job in &batch {
        assert_eq!(
            runs_of(&ctx, job.id).await,
            1,
            "{} ran exactly once",
            job.id
        );
    }
    assert_eq!(b.terminate().await, 0, "{}", b.logs());
}
