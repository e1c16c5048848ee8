//! `make bench SCENARIO=flows` (issue 13): (a) a 5-step diamond of no-op steps (a → b, c, d →
//! e), `BENCH_FLOW_RUNS` (10,000) runs started first, then drained by 2 worker processes ×
//! `BENCH_FLOW_CONCURRENCY` (64) → runs/minute by the database's clock (first step start →
//! last run end; goal 60,000) and step latency (a step's job enqueued by its last parent's
//! completion → started by a worker); (b) `BENCH_FLOW_IN_FLIGHT` (10,000) runs in flight at
//! once (first step sleeping `BENCH_FLOW_SLEEP_MS`, 30 s; 2 workers × 1,024 slots, the rest
//! queued) → worker RSS and `GET /flow-runs/{id}` latency while they run.
//!
//! Phase (a) also reports CPU per run — the two workers' user+system time
//! (`/proc/<pid>/stat`) and the time on CPU of the database's backends
//! (`/proc/<pid>/schedstat`, when Postgres runs on this machine) — a figure that holds
//! on a loaded machine, where runs/minute does not. `BENCH_FLOW_IN_FLIGHT=0` skips (b).

use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::json;
use uuid::Uuid;

use super::{Row, Server, env, fresh_db, session_token, write_result};
use itsur::app::Ctx;
use itsur::config::Config;

#[derive(diesel::QueryableByName)]
struct N {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn open_runs(conn: &mut AsyncPgConnection) -> i64 {
    diesel_async::RunQueryDsl::load::<N>(
        diesel::sql_query("SELECT count(*) AS n FROM flow_runs WHERE status = 'running'"),
        conn,
    )
    .await
    .unwrap()[0]
        .n
}

/// Starts `n` runs of `flow` in transactions of 500, four transactions at a time (the
/// seeding is not what is measured); returns their ids.
async fn start_runs(ctx: &Ctx, flow: &itsur::store::flows::FlowRow, n: usize) -> Vec<Uuid> {
    use futures_util::StreamExt;
    let chunks: Vec<usize> = (0..n.div_ceil(500)).map(|c| 500.min(n - c * 500)).collect();
    let batches: Vec<Vec<Uuid>> = futures_util::stream::iter(chunks)
        .map(|k| async move {
            let mut conn = ctx.db.conn().await.unwrap();
            conn.transaction(async |conn| -> itsur::service::Result<Vec<Uuid>> {
                let mut out = Vec::with_capacity(k);
                for _ in 0..k {
                    let run = itsur::service::flows::start_run_in(
                        conn,
                        &ctx.flow_definitions,
                        flow,
                        json!({}),
                        None,
                        "api",
                        None,
                    )
                    .await?;
                    out.extend(run.map(|r| r.id));
                }
                Ok(out)
            })
            .await
            .unwrap()
        })
        .buffer_unordered(4)
        .collect()
        .await;
    batches.concat()
}

#[derive(diesel::QueryableByName)]
struct Span {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    runs: i64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    secs: f64,
}

/// Runs of `flow` finished per minute by the database's clock: from the first step job's
/// start to the last run's end (worker start-up is not counted).
async fn runs_per_minute(conn: &mut AsyncPgConnection, flow: Uuid) -> (i64, f64) {
    let s: Span = diesel_async::RunQueryDsl::get_result(
        diesel::sql_query(
            "SELECT count(*) AS runs, \
                    coalesce(extract(epoch FROM max(r.finished_at) - \
                        (SELECT min(h.started_at) FROM jobs_history h \
                         JOIN flow_steps s ON s.id = h.flow_step_id \
                         JOIN flow_runs r2 ON r2.id = s.run_id WHERE r2.flow_id = $1)), 0)::float8 AS secs \
             FROM flow_runs r WHERE r.flow_id = $1 AND r.status = 'succeeded'",
        )
        .bind::<diesel::sql_types::Uuid, _>(flow),
        conn,
    )
    .await
    .unwrap();
    let per_min = if s.secs > 0.0 {
        s.runs as f64 / s.secs * 60.0
    } else {
        0.0
    };
    (s.runs, per_min)
}

#[derive(diesel::QueryableByName)]
struct Latency {
    #[diesel(sql_type = diesel::sql_types::Double)]
    p50: f64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    p99: f64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    max: f64,
}

/// Step latency of `flow`'s runs (ms): from the moment a step's job was enqueued (in the
/// transaction that completed its last parent) to the moment a worker started it. Steps
/// without parents are left out: their jobs were enqueued before the workers started.
async fn step_latency(conn: &mut AsyncPgConnection, flow: Uuid) -> Latency {
    diesel_async::RunQueryDsl::get_result(
        diesel::sql_query(
            "SELECT coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), 0)::float8 AS p50, \
                    coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), 0)::float8 AS p99, \
                    coalesce(max(ms), 0)::float8 AS max \
             FROM (SELECT extract(epoch FROM h.started_at - h.created_at) * 1000 AS ms \
                   FROM jobs_history h JOIN flow_steps s ON s.id = h.flow_step_id \
                   JOIN flow_runs r ON r.id = s.run_id \
                   WHERE r.flow_id = $1 AND s.step_key <> 'a') l",
        )
        .bind::<diesel::sql_types::Uuid, _>(flow),
        conn,
    )
    .await
    .unwrap()
}

async fn diamond(
    ctx: &Ctx,
    campus: Uuid,
    name: &str,
    first_sleep_ms: u64,
) -> itsur::store::flows::FlowRow {
    let def = json!({"steps": [
        {"id": "a", "node": "noop", "input": {"sleepMs": first_sleep_ms}},
        {"id": "b", "node": "noop", "dependsOn": ["a"]},
        {"id": "c", "node": "noop", "dependsOn": ["a"]},
        {"id": "d", "node": "noop", "dependsOn": ["a"]},
        {"id": "e", "node": "noop", "dependsOn": ["b", "c", "d"]}
    ]});
    let def = itsur::service::flows::validate_definition(&def).unwrap();
    let mut conn = ctx.db.conn().await.unwrap();
    conn.transaction(async |conn| {
        itsur::service::flows::save_new_flow(conn, campus, name, "", &def, None).await
    })
    .await
    .unwrap()
}

pub(crate) async fn bench_flows(rows: &mut Vec<Row>) {
    let db = fresh_db("itsur_bench_flows").await;
    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        common: itsur::config::CommonArgs,
    }
    let args = <Args as clap::Parser>::parse_from(["itsur", "--database-url", db.as_str()]);
    let ctx = Ctx::new(Config::from_args(&args.common, None).unwrap()).unwrap();
    let mut conn = AsyncPgConnection::establish(&db).await.unwrap();
    let campus = Uuid::now_v7();
    let admin = Uuid::now_v7();
    diesel_async::SimpleAsyncConnection::batch_execute(
        &mut conn,
        &format!(
            "INSERT INTO campuses (id, name, slug, email_domains, time_zone) \
             VALUES ('{campus}', 'Bench', 'bench', '{{bench.edu}}', 'America/Mexico_City'); \
             INSERT INTO users (id, campus_id, email, display_name, password_hash, role) \
             VALUES ('{admin}', '{campus}', 'admin@bench.edu', 'Admin', 'x', 'campus_admin')"
        ),
    )
    .await
    .unwrap();
    let concurrency = env("BENCH_FLOW_CONCURRENCY", "64");
    // (a) throughput: N diamonds started, then drained by 2 workers.
    let n: usize = env("BENCH_FLOW_RUNS", "10000").parse().unwrap_or(10_000);
    let flow = diamond(&ctx, campus, "bench.diamond", 0).await;
    let t = Instant::now();
    start_runs(&ctx, &flow, n).await;
    let start_rate = n as f64 / t.elapsed().as_secs_f64();
    println!("flows: {n} diamond runs started at {start_rate:.0} runs/s");
    let pg_before = backend_cpu_ns(&mut conn).await;
    let commits_before = commits(&mut conn).await;
    let workers = super::start_workers(&db, "default", 2, &concurrency, &mut conn).await;
    while open_runs(&mut conn).await > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let worker_ms: f64 = workers.iter().map(|w| process_cpu_ms(w.child.id())).sum();
    let pg_ns: u64 = backend_cpu_ns(&mut conn)
        .await
        .iter()
        .map(|(pid, ns)| ns - pg_before.get(pid).copied().unwrap_or(0).min(*ns))
        .sum();
    let commits = commits(&mut conn).await - commits_before;
    drop(workers);
    let (done, runs_per_min) = runs_per_minute(&mut conn, flow.id).await;
    let step = step_latency(&mut conn, flow.id).await;
    let runs = n.max(1) as f64;
    let worker_us_per_run = worker_ms * 1000.0 / runs;
    let pg_us_per_run = pg_ns as f64 / 1000.0 / runs;
    println!(
        "flows: {done} of {n} runs succeeded, {runs_per_min:.0} runs/min (goal 60000); \
         step latency (enqueue → start) p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         CPU per run: workers {worker_us_per_run:.0} µs, Postgres backends {pg_us_per_run:.0} µs; \
         {commits} commits",
        step.p50, step.p99, step.max
    );
    if in_flight_runs() == 0 {
        write_result(
            "flows",
            json!({"runs": n, "steps": 5, "workers": 2, "concurrency": concurrency}),
            json!({"start_runs_per_s": start_rate, "runs_succeeded": done,
                   "runs_per_min": runs_per_min,
                   "step_latency_ms_p50": step.p50, "step_latency_ms_p99": step.p99,
                   "step_latency_ms_max": step.max,
                   "worker_cpu_us_per_run": worker_us_per_run,
                   "postgres_cpu_us_per_run": pg_us_per_run, "commits": commits}),
        );
        rows.push((
            format!("flows: {n} × 5-step diamond, 2 workers × {concurrency}"),
            format!(
                "{runs_per_min:.0} runs/min (goal 60,000); CPU/run workers {worker_us_per_run:.0} µs, Postgres {pg_us_per_run:.0} µs"
            ),
        ));
        return;
    }

    // (b) 10,000 in flight: step a sleeps, so runs stay open while we measure.
    let in_flight = in_flight_runs();
    let sleep_ms: u64 = env("BENCH_FLOW_SLEEP_MS", "30000")
        .parse()
        .unwrap_or(30_000);
    let slow = diamond(&ctx, campus, "bench.slow", sleep_ms).await;
    let ids = start_runs(&ctx, &slow, in_flight).await;
    let server = Server::start("serve", &db, &[]);
    server.wait_ready().await;
    let workers = super::start_workers(&db, "default", 2, "1024", &mut conn).await;
    // Let the workers fill their 2 × 1024 slots (the rest of the runs wait queued).
    let deadline = Instant::now() + Duration::from_secs(60);
    while running_jobs(&mut conn).await < 2048.min(in_flight as i64) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = session_token(&mut conn, admin).await;
    let http = reqwest::Client::new();
    let mut lat = Vec::new();
    for id in ids.iter().step_by((ids.len() / 500).max(1)) {
        let t = Instant::now();
        let r = http
            .get(format!("{}/flow-runs/{id}", server.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
    let rss: Vec<u64> = workers.iter().map(Server::rss_kib).collect();
    let open = open_runs(&mut conn).await;
    let running = running_jobs(&mut conn).await;
    println!(
        "flows: {open} runs open ({running} steps running); worker RSS {rss:?} KiB; \
          GET /flow-runs/{{id}} p50 {:.1} ms, p99 {:.1} ms",
        p(0.5),
        p(0.99)
    );
    drop(workers);
    drop(server);
    write_result(
        "flows",
        json!({"runs": n, "steps": 5, "workers": 2, "concurrency": concurrency,
               "in_flight": in_flight, "in_flight_concurrency": 1024, "first_step_sleep_ms": sleep_ms}),
        json!({"start_runs_per_s": start_rate, "runs_succeeded": done, "runs_per_min": runs_per_min,
               "step_latency_ms_p50": step.p50, "step_latency_ms_p99": step.p99,
               "step_latency_ms_max": step.max,
               "worker_cpu_us_per_run": worker_us_per_run,
               "postgres_cpu_us_per_run": pg_us_per_run, "commits": commits,
               "in_flight_open": open, "in_flight_running_steps": running,
               "worker_rss_kib": rss,
               "get_run_ms_p50": p(0.5), "get_run_ms_p99": p(0.99)}),
    );
    rows.push((
        format!("flows: {n} × 5-step diamond, 2 workers × {concurrency}"),
        format!(
            "{runs_per_min:.0} runs/min (goal 60,000; start {start_rate:.0} runs/s); step latency p50 {:.1} ms, p99 {:.1} ms; CPU/run workers {worker_us_per_run:.0} µs, Postgres {pg_us_per_run:.0} µs",
            step.p50, step.p99
        ),
    ));
    rows.push((
        format!("flows: {in_flight} runs in flight"),
        format!(
            "{open} open, {running} steps running; worker RSS {rss:?} KiB; GET /flow-runs/{{id}} p50 {:.1} ms, p99 {:.1} ms",
            p(0.5),
            p(0.99)
        ),
    ));
}

async fn running_jobs(conn: &mut AsyncPgConnection) -> i64 {
    diesel_async::RunQueryDsl::load::<N>(
        diesel::sql_query("SELECT count(*) AS n FROM jobs WHERE state = 'running'"),
        conn,
    )
    .await
    .unwrap()[0]
        .n
}

fn in_flight_runs() -> usize {
    env("BENCH_FLOW_IN_FLIGHT", "10000")
        .parse()
        .unwrap_or(10_000)
}

/// User + system CPU of a process and all its threads, in ms (`/proc/<pid>/stat`, clock
/// ticks of 10 ms).
fn process_cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is the first, utime the
    // 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 * 10.0
}

#[derive(diesel::QueryableByName)]
struct Pid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

/// Time on CPU (ns) of every backend of this database but the caller's, by pid
/// (`/proc/<pid>/schedstat`; empty when Postgres runs elsewhere).
async fn backend_cpu_ns(conn: &mut AsyncPgConnection) -> std::collections::HashMap<i32, u64> {
    let pids: Vec<Pid> = diesel_async::RunQueryDsl::load(
        diesel::sql_query(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        ),
        conn,
    )
    .await
    .unwrap();
    pids.into_iter()
        .filter_map(|p| {
            let s = std::fs::read_to_string(format!("/proc/{}/schedstat", p.pid)).ok()?;
            Some((p.pid, s.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// Transactions committed in this database so far.
async fn commits(conn: &mut AsyncPgConnection) -> i64 {
    diesel_async::RunQueryDsl::load::<N>(
        diesel::sql_query(
            "SELECT xact_commit AS n FROM pg_stat_database WHERE datname = current_database()",
        ),
        conn,
    )
    .await
    .unwrap()[0]
        .n
}
