//! `make bench SCENARIO=flows`: (a) a 5-step diamond of no-op steps (a → b, c, d → e), N runs
//! started at once, drained by 2 worker processes → runs/minute; (b) 10,000 runs in flight
//! (first step sleeping) → worker RSS and `GET /flow-runs/{id}` latency while they run.

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

/// Starts `n` runs of `flow` in transactions of 500; returns their ids.
async fn start_runs(ctx: &Ctx, flow: &itsur::store::flows::FlowRow, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(n);
    let mut conn = ctx.db.conn().await.unwrap();
    for chunk in 0..n.div_ceil(500) {
        let k = 500.min(n - chunk * 500);
        let batch = conn
            .transaction(async |conn| -> itsur::service::Result<Vec<Uuid>> {
                let mut out = Vec::new();
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
            .unwrap();
        ids.extend(batch);
    }
    ids
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
    // (a) throughput: N diamonds, 2 workers.
    let n: usize = env("BENCH_FLOW_RUNS", "5000").parse().unwrap_or(5000);
    let flow = diamond(&ctx, campus, "bench.diamond", 0).await;
    let t = Instant::now();
    start_runs(&ctx, &flow, n).await;
    let start_rate = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let workers: Vec<Server> = (0..2)
        .map(|_| {
            Server::start(
                "worker",
                &db,
                &[
                    ("WORKER_CONCURRENCY", concurrency.as_str()),
                    ("JOB_NO_CRON", "true"),
                ],
            )
        })
        .collect();
    while open_runs(&mut conn).await > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let runs_per_min = n as f64 / t.elapsed().as_secs_f64() * 60.0;
    drop(workers);
    // (b) 10,000 in flight: step a sleeps, so runs stay open while we measure.
    let in_flight: usize = env("BENCH_FLOW_IN_FLIGHT", "10000")
        .parse()
        .unwrap_or(10_000);
    let slow = diamond(&ctx, campus, "bench.slow", 20_000).await;
    let ids = start_runs(&ctx, &slow, in_flight).await;
    let server = Server::start("serve", &db, &[]);
    server.wait_ready().await;
    let workers: Vec<Server> = (0..2)
        .map(|_| {
            Server::start(
                "worker",
                &db,
                &[("WORKER_CONCURRENCY", "1024"), ("JOB_NO_CRON", "true")],
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
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
    drop(workers);
    drop(server);
    write_result(
        "flows",
        json!({"runs": n, "steps": 5, "workers": 2, "concurrency": concurrency, "in_flight": in_flight}),
        json!({"start_runs_per_s": start_rate, "runs_per_min": runs_per_min,
               "in_flight_open": open, "worker_rss_kib": rss,
               "get_run_ms_p50": p(0.5), "get_run_ms_p99": p(0.99)}),
    );
    rows.push((
        format!("flows: {n} × 5-step diamond, 2 workers × {concurrency}"),
        format!("{runs_per_min:.0} runs/min (start {start_rate:.0} runs/s)"),
    ));
    rows.push((
        format!("flows: {in_flight} runs in flight"),
        format!(
            "{open} open; worker RSS {rss:?} KiB; GET /flow-runs/{{id}} p50 {:.1} ms, p99 {:.1} ms",
            p(0.5),
            p(0.99)
        ),
    ));
}
