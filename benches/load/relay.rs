//! `relay`: outbox relay throughput (events/s) on 20,000 committed `order.created` events,
//! first with the default sinks only (Redis + push enqueue), then with every sink on (plus
//! RabbitMQ with publisher confirms into a bound durable queue, and NATS JetStream with
//! acks), in one run so the ratio is meaningful on a loaded machine. Brokers: BENCH_AMQP_URL
//! (default guest@127.0.0.1:5672) and BENCH_NATS_URL (default 127.0.0.1:4222); unique
//! exchange/queue/stream names, deleted afterwards. A broker that does not answer skips the
//! all-sinks run with a line saying so.

use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::json;

use super::{Row, Server, env, fresh_db, write_result};

const EVENTS: i64 = 20_000;

async fn published(conn: &mut AsyncPgConnection) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    use diesel_async::RunQueryDsl;
    diesel::sql_query("SELECT count(*) AS n FROM outbox_events WHERE published_at IS NOT NULL")
        .get_result::<N>(conn)
        .await
        .unwrap()
        .n
}

/// Inserts the events, runs one relay process with `extra` settings until all are
/// published; events/s.
async fn run(name: &str, extra: &[(&str, &str)]) -> f64 {
    let db = fresh_db(name).await;
    let mut conn = AsyncPgConnection::establish(&db).await.unwrap();
    conn.batch_execute(&format!(
        "INSERT INTO outbox_events (aggregate_type, aggregate_id, aggregate_version, event_type, \
         payload) SELECT 'order', gen_random_uuid(), 1, 'order.created', \
         jsonb_build_object('n', n, 'items', jsonb_build_array(jsonb_build_object('qty', 1))) \
         FROM generate_series(1, {EVENTS}) AS n"
    ))
    .await
    .unwrap();
    let t = Instant::now();
    let relay = Server::start("outbox-relay", &db, extra);
    let deadline = Instant::now() + Duration::from_secs(600);
    while published(&mut conn).await < EVENTS {
        assert!(Instant::now() < deadline, "{name}: relay did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rate = EVENTS as f64 / t.elapsed().as_secs_f64();
    drop(relay);
    rate
}

pub async fn bench_relay(rows: &mut Vec<Row>) {
    let base = run("itsur_bench_relay_base", &[]).await;
    let amqp = env("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let nats = env("BENCH_NATS_URL", "nats://127.0.0.1:4222");
    let tag = format!("bench{}", std::process::id());
    let exchange = format!("itsur.{tag}");
    let stream = format!("ITSUR_{tag}");
    let Ok(conn) = Connection::connect(&amqp, ConnectionProperties::default()).await else {
        println!("relay: SKIP all-sinks run: no RabbitMQ at BENCH_AMQP_URL");
        rows.push((
            "relay: Redis + push sinks".to_owned(),
            format!("{base:.0} events/s"),
        ));
        return;
    };
    let Ok(nats_client) = async_nats::connect(&nats).await else {
        println!("relay: SKIP all-sinks run: no NATS at BENCH_NATS_URL");
        rows.push((
            "relay: Redis + push sinks".to_owned(),
            format!("{base:.0} events/s"),
        ));
        return;
    };
    let ch = conn.create_channel().await.unwrap();
    let durable_x = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        ShortString::from(exchange.as_str()),
        ExchangeKind::Topic,
        durable_x,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        ShortString::from(exchange.as_str()),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        ShortString::from(exchange.as_str()),
        ShortString::from(exchange.as_str()),
        ShortString::from("#"),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let all = run(
        "itsur_bench_relay_all",
        &[
            ("AMQP_URL", amqp.as_str()),
            ("AMQP_EXCHANGE", exchange.as_str()),
            ("NATS_URL", nats.as_str()),
            ("NATS_SUBJECT_PREFIX", tag.as_str()),
            ("NATS_STREAM", stream.as_str()),
        ],
    )
    .await;
    let js = async_nats::jetstream::new(nats_client);
    let stored = js
        .get_stream(&stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    let queued = ch
        .queue_declare(
            ShortString::from(exchange.as_str()),
            QueueDeclareOptions {
                durable: true,
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count();
    // Cleanup: the bench's own names only.
    let _ = js.delete_stream(&stream).await;
    for x in [exchange.clone(), format!("{exchange}.dlx")] {
        let _ = ch
            .exchange_delete(
                ShortString::from(x.as_str()),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
    for q in [exchange.clone(), format!("{exchange}.dead")] {
        let _ = ch
            .queue_delete(ShortString::from(q.as_str()), QueueDeleteOptions::default())
            .await;
    }
    write_result(
        "relay",
        json!({"events": EVENTS, "batch": 200}),
        json!({"base_events_per_s": base, "all_sinks_events_per_s": all,
               "rabbitmq_queued": queued, "jetstream_stored": stored}),
    );
    rows.push((
        "relay: Redis + push sinks".to_owned(),
        format!("{base:.0} events/s"),
    ));
    rows.push((
        "relay: + RabbitMQ (confirms) + NATS JetStream (acks)".to_owned(),
        format!(
            "{all:.0} events/s ({:.0} % of the base; {queued} queued, {stored} in the stream)",
            all / base * 100.0
        ),
    ));
}
