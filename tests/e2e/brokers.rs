//! 1,000 committed order events through real `itsur outbox-relay` processes to the machine's
//! RabbitMQ and a private JetStream nats-server, with a relay killed by SIGKILL part-way and
//! both brokers "restarted" in the middle: RabbitMQ's connections are reset and refused for a
//! while by a ChaosProxy between the relay and the shared broker (the shared node itself is
//! never restarted), the private nats-server is SIGKILLed and started again on its port and
//! store. Afterwards a bound queue and a JetStream consumer each hold every outbox id; after
//! de-duplication by outbox id each appears exactly once (RabbitMQ may hold redeliveries,
//! at-least-once; JetStream drops them by `Nats-Msg-Id`). Figures are printed, not asserted.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;
use itsur::app::Ctx;
use tokio::process::{Child, Command};

use crate::proc::{free_port, itsur, wait_ready};
use crate::support::brokers::{
    NatsServer, amqp_host, amqp_via, bind_queue, consume_queue, consume_stream, delete_topology,
    rabbitmq, stream_messages, unique,
};
use crate::support::chaos::ChaosProxy;
use crate::support::{TestDb, ctx_for, eventually};

const EVENTS: i64 = 1000;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn count(ctx: &Ctx, sql: &str) -> i64 {
    let mut conn = ctx.db.conn().await.unwrap();
    diesel::sql_query(sql)
        .get_result::<Count>(&mut conn)
        .await
        .unwrap()
        .n
}

struct RelayProc {
    child: Child,
    log: PathBuf,
}

impl RelayProc {
    async fn spawn(db_url: &str, env: &[(&str, String)]) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(unique("itsur-e2e-relay-"));
        let mut cmd: Command = itsur(&["outbox-relay"]);
        cmd.env("DATABASE_URL", db_url)
            .env("METRICS_BIND", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        wait_ready(
            &format!("http://127.0.0.1:{port}/health/live"),
            Duration::from_secs(60),
        )
        .await;
        Self { child, log }
    }

    async fn kill_9(&mut self) {
        let pid = self.child.id().unwrap().to_string();
        let status = Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        self.child.wait().await.unwrap();
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("relay log kept at {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_events_reach_rabbitmq_and_jetstream_once_each_across_kill_9_and_restarts() {
    let test = "brokers e2e";
    let Some(amqp) = rabbitmq(test).await else {
        return;
    };
    let Some(mut nats) = NatsServer::start(test).await else {
        return;
    };
    let db = TestDb::new().await;
    let ctx = ctx_for(&db.url, None);
    let proxy = ChaosProxy::start(&amqp_host(&amqp)).await;
    let exchange = unique("itsur.t.");
    let queue = unique("itsur-t-");
    let (_conn, ch) = bind_queue(&amqp, &exchange, &queue).await;
    let stream = unique("ITSUR_T_");
    let env = vec![
        ("AMQP_URL", amqp_via(&amqp, &proxy.addr.to_string())),
        ("AMQP_EXCHANGE", exchange.clone()),
        ("AMQP_TIMEOUT_MS", "1000".to_owned()),
        ("NATS_URL", nats.url.clone()),
        ("NATS_SUBJECT_PREFIX", unique("itsurt")),
        ("NATS_STREAM", stream.clone()),
        ("NATS_TIMEOUT_MS", "1000".to_owned()),
        ("OUTBOX_BATCH_SIZE", "25".to_owned()),
        ("OUTBOX_POLL_INTERVAL_MS", "100".to_owned()),
        ("BREAKER_COOLDOWN_SECS", "1".to_owned()),
        ("BREAKER_CONSECUTIVE_FAILURES", "3".to_owned()),
    ];

    // 1,000 committed order events (one statement; the relay wakes on the poll).
    {
        let mut conn = ctx.db.conn().await.unwrap();
        diesel::sql_query(format!(
            "INSERT INTO outbox_events (aggregate_type, aggregate_id, aggregate_version, \
             event_type, payload) SELECT 'order', gen_random_uuid(), 1, 'order.created', \
             jsonb_build_object('n', n) FROM generate_series(1, {EVENTS}) AS n"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let published = "SELECT count(*) AS n FROM outbox_events WHERE published_at IS NOT NULL";
    let start = Instant::now();

    let mut a = RelayProc::spawn(&db.url, &env).await;
    let part = eventually(Duration::from_secs(120), || async {
        count(&ctx, published).await >= 200
    })
    .await;
    assert!(part, "relay A published a part");
    a.kill_9().await;
    let at_kill = count(&ctx, published).await;

    // Both brokers go away while relay B starts; NATS comes back first.
    proxy.cut();
    nats.restart().await;
    let b = RelayProc::spawn(&db.url, &env).await;
    let nats_only = "SELECT count(*) AS n FROM outbox_events WHERE published_at IS NULL \
                     AND 'nats' = ANY(sinks_done)";
    let progressed = eventually(Duration::from_secs(60), || async {
        count(&ctx, nats_only).await > 0
    })
    .await;
    assert!(
        progressed,
        "NATS kept taking events while RabbitMQ was away"
    );
    proxy.restore();

    let all = eventually(Duration::from_secs(180), || async {
        count(&ctx, published).await == EVENTS
    })
    .await;
    assert!(all, "every event published");
    let took = start.elapsed();
    drop(b);
    let dead = count(
        &ctx,
        "SELECT count(*) AS n FROM outbox_events WHERE dead_at IS NOT NULL",
    )
    .await;
    assert_eq!(dead, 0);

    let want = usize::try_from(EVENTS).unwrap();
    let ids: Vec<i64> = (1..=EVENTS).collect();
    let rabbit = consume_queue(&ch, &queue, want, Duration::from_secs(5)).await;
    assert_eq!(
        rabbit.keys().copied().collect::<Vec<_>>(),
        ids,
        "queue holds every id"
    );
    let js = consume_stream(&nats.url, &stream, want, Duration::from_secs(5)).await;
    assert_eq!(
        js.keys().copied().collect::<Vec<_>>(),
        ids,
        "stream holds every id"
    );
    let stored = stream_messages(&nats.url, &stream).await;
    eprintln!(
        "brokers e2e: {EVENTS} events in {took:.1?} (relay A killed after {at_kill}); \
         RabbitMQ delivered {} messages ({} redelivered ids), JetStream stored {stored}",
        rabbit.values().sum::<u32>(),
        rabbit.values().filter(|&&n| n > 1).count(),
    );
    delete_topology(&ch, &exchange, &queue).await;
}
