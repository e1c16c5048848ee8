//! `relay` (issue 15): outbox relay throughput (events/s) per sink, on `BENCH_RELAY_EVENTS`
//! (20,000) committed `order.created` events, one fresh database and one `itsur outbox-relay`
//! per configuration, run back to back so the ratios are meaningful on a loaded machine:
//!
//! - `gateway`: the default sinks only — Redis publish for the WebSocket gateway, plus the
//!   push enqueue (which always runs; for `order.created` it enqueues nothing);
//! - `+ rabbitmq`: plus RabbitMQ with publisher confirms into a bound durable queue;
//! - `+ nats`: plus NATS JetStream with acked publishes;
//! - `all`: every sink.
//!
//! The rate is taken from the database's clock (events marked published after the first
//! batch / time from the first batch to the last), so process start-up and broker connects
//! are not counted; the wall-clock rate including them is written too. Each broker sink's cost
//! per event is its configuration's time per event minus the gateway's. Brokers:
//! BENCH_AMQP_URL (default guest@127.0.0.1:5672) and BENCH_NATS_URL (default
//! 127.0.0.1:4222); unique exchange/queue/stream names per run, deleted afterwards. A broker
//! that does not answer skips its runs with a line saying so.

use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{Value, json};

use super::{Row, Server, env, fresh_db, write_result};

#[derive(diesel::QueryableByName)]
struct Published {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    total: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    after_first: i64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    secs: f64,
}

async fn published(conn: &mut AsyncPgConnection) -> Published {
    use diesel_async::RunQueryDsl;
    diesel::sql_query(
        "WITH p AS (SELECT published_at FROM outbox_events WHERE published_at IS NOT NULL) \
         SELECT count(*) AS total, \
                count(*) FILTER (WHERE published_at > (SELECT min(published_at) FROM p)) AS after_first, \
                coalesce(extract(epoch FROM max(published_at) - min(published_at)), 0)::float8 AS secs \
         FROM p",
    )
    .get_result::<Published>(conn)
    .await
    .unwrap()
}

/// One configuration's figures.
struct Rate {
    /// Steady events/s by the database's clock.
    steady: f64,
    /// Events/s from the relay's process start to the last event.
    wall: f64,
}

/// Inserts the events, runs one relay process with `extra` settings until all are
/// published.
async fn run(name: &str, events: i64, extra: &[(&str, &str)]) -> Rate {
    let db = fresh_db(name).await;
    let mut conn = AsyncPgConnection::establish(&db).await.unwrap();
    conn.batch_execute(&format!(
        "INSERT INTO outbox_events (aggregate_type, aggregate_id, aggregate_version, event_type, \
         payload) SELECT 'order', gen_random_uuid(), 1, 'order.created', \
         jsonb_build_object('n', n, 'items', jsonb_build_array(jsonb_build_object('qty', 1))) \
         FROM generate_series(1, {events}) AS n"
    ))
    .await
    .unwrap();
    let t = Instant::now();
    let relay = Server::start("outbox-relay", &db, extra);
    let deadline = Instant::now() + Duration::from_secs(600);
    let p = loop {
        let p = published(&mut conn).await;
        if p.total >= events {
            break p;
        }
        assert!(Instant::now() < deadline, "{name}: relay did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let wall = events as f64 / t.elapsed().as_secs_f64();
    drop(relay);
    let steady = if p.secs > 0.0 {
        p.after_first as f64 / p.secs
    } else {
        wall
    };
    Rate { steady, wall }
}

/// A RabbitMQ exchange the relay declares and a durable queue the bench binds to it.
async fn amqp_queue(ch: &Channel, exchange: &str) {
    ch.exchange_declare(
        ShortString::from(exchange),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        ShortString::from(exchange),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        ShortString::from(exchange),
        ShortString::from(exchange),
        ShortString::from("#"),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// Messages in the bench's queue for `exchange`, then the exchange, its DLX and both queues
/// deleted.
async fn amqp_drain(ch: &Channel, exchange: &str) -> u32 {
    let queued = ch
        .queue_declare(
            ShortString::from(exchange),
            QueueDeclareOptions {
                durable: true,
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_or(0, |q| q.message_count());
    // Cleanup: the bench's own names only; a leftover is harmless.
    for x in [exchange.to_owned(), format!("{exchange}.dlx")] {
        let _ = ch
            .exchange_delete(
                ShortString::from(x.as_str()),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
    for q in [exchange.to_owned(), format!("{exchange}.dead")] {
        let _ = ch
            .queue_delete(ShortString::from(q.as_str()), QueueDeleteOptions::default())
            .await;
    }
    queued
}

/// Messages stored in `stream`, then the stream deleted.
async fn nats_drain(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    let stored = match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map_or(0, |i| i.state.messages),
        Err(_) => 0,
    };
    // Cleanup: the bench's own stream only; a leftover is harmless.
    let _ = js.delete_stream(stream).await;
    stored
}

pub async fn bench_relay(rows: &mut Vec<Row>) {
    let events: i64 = env("BENCH_RELAY_EVENTS", "20000").parse().unwrap_or(20_000);
    let amqp = env("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let nats = env("BENCH_NATS_URL", "nats://127.0.0.1:4222");
    let tag = format!("bench{}", std::process::id());
    let rabbit = match Connection::connect(&amqp, ConnectionProperties::default()).await {
        Ok(c) => Some(c.create_channel().await.unwrap()),
        Err(e) => {
            println!("relay: SKIP RabbitMQ runs: no RabbitMQ at BENCH_AMQP_URL ({e})");
            None
        }
    };
    let js = match async_nats::connect(&nats).await {
        Ok(c) => Some(async_nats::jetstream::new(c)),
        Err(e) => {
            println!("relay: SKIP NATS runs: no NATS at BENCH_NATS_URL ({e})");
            None
        }
    };

    let mut figures = Vec::new();
    let mut table = Vec::new();
    let base = run("itsur_bench_relay_gateway", events, &[]).await;
    println!(
        "relay: gateway (Redis publish) + push enqueue: {:.0} events/s ({:.0} with start-up)",
        base.steady, base.wall
    );
    figures.push(json!({"sinks": "gateway", "events_per_s": base.steady, "events_per_s_with_startup": base.wall}));
    table.push((
        "relay: gateway (Redis publish) + push enqueue".to_owned(),
        format!("{:.0} events/s", base.steady),
    ));
    let configs: [(&str, bool, bool); 3] = [
        ("rabbitmq", true, false),
        ("nats", false, true),
        ("all", true, true),
    ];
    for (name, with_amqp, with_nats) in configs {
        if (with_amqp && rabbit.is_none()) || (with_nats && js.is_none()) {
            continue;
        }
        let exchange = format!("itsur.{tag}.{name}");
        let prefix = format!("{tag}_{name}");
        let stream = format!("ITSUR_{tag}_{name}");
        let mut extra: Vec<(&str, &str)> = Vec::new();
        if let (true, Some(ch)) = (with_amqp, &rabbit) {
            amqp_queue(ch, &exchange).await;
            extra.extend([("AMQP_URL", amqp.as_str()), ("AMQP_EXCHANGE", &exchange)]);
        }
        if with_nats {
            extra.extend([
                ("NATS_URL", nats.as_str()),
                ("NATS_SUBJECT_PREFIX", &prefix),
                ("NATS_STREAM", &stream),
            ]);
        }
        let r = run(&format!("itsur_bench_relay_{name}"), events, &extra).await;
        let queued = match (with_amqp, &rabbit) {
            (true, Some(ch)) => Some(amqp_drain(ch, &exchange).await),
            _ => None,
        };
        let stored = match (with_nats, &js) {
            (true, Some(js)) => Some(nats_drain(js, &stream).await),
            _ => None,
        };
        // What this configuration adds to the gateway's time per event.
        let cost_us = (1e6 / r.steady - 1e6 / base.steady).max(0.0);
        let label = match name {
            "rabbitmq" => "relay: + RabbitMQ (publisher confirms)",
            "nats" => "relay: + NATS JetStream (acked)",
            _ => "relay: + RabbitMQ + NATS (every sink)",
        };
        let delivered = [
            queued.map(|q| format!("{q} queued in RabbitMQ")),
            stored.map(|s| format!("{s} stored in JetStream")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
        println!(
            "{label}: {:.0} events/s ({:.0} with start-up), {:.0} % of the gateway's rate, \
             +{cost_us:.0} µs/event; {delivered} (expected {events} each)",
            r.steady,
            r.wall,
            r.steady / base.steady * 100.0
        );
        figures.push(json!({"sinks": name, "events_per_s": r.steady,
            "events_per_s_with_startup": r.wall, "extra_us_per_event": cost_us,
            "rabbitmq_queued": queued, "jetstream_stored": stored}));
        table.push((
            label.to_owned(),
            format!(
                "{:.0} events/s ({:.0} % of gateway, +{cost_us:.0} µs/event); {delivered}",
                r.steady,
                r.steady / base.steady * 100.0
            ),
        ));
    }
    write_result(
        "relay",
        json!({"events": events, "batch": 200}),
        Value::Array(figures),
    );
    rows.extend(table);
}
