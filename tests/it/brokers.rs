//! The broker sinks against real servers: the machine's RabbitMQ (through a ChaosProxy that
//! plays the outage) and a private JetStream-enabled nats-server. A RabbitMQ that goes down
//! opens the `amqp` breaker after a few calls while Redis and NATS keep taking every event;
//! nothing is lost, no attempt is spent, and once it is back every event arrives.
//! (1,000 events across a relay kill -9 and broker restarts: tests/e2e/brokers.rs.)

use std::time::Duration;

use diesel_async::SimpleAsyncConnection;
use itsur::app::Ctx;
use itsur::config::{AmqpSettings, NatsSettings, Secret};
use itsur::outbox::relay::Relay;
use itsur::resilience::breaker::State;
use itsur::store::outbox::{self, NewOutboxEventRow};
use serde_json::json;
use uuid::Uuid;

use crate::support::brokers::{
    NatsServer, amqp_host, amqp_via, bind_queue, consume_queue, consume_stream, delete_topology,
    rabbitmq, stream_messages, unique,
};
use crate::support::chaos::ChaosProxy;
use crate::support::{TestDb, TestRedis, config_for};

async fn insert_events(ctx: &Ctx, n: i32) -> Vec<i64> {
    let mut conn = ctx.db.conn().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let row = NewOutboxEventRow {
            aggregate_type: "order".to_owned(),
            aggregate_id: Uuid::now_v7(),
            aggregate_version: 1,
            event_type: "order.created".to_owned(),
            payload: json!({ "n": i }),
            campus_id: None,
            vendor_id: None,
            user_id: None,
        };
        ids.push(outbox::insert_event(&mut conn, &row).await.unwrap());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_rabbitmq_opens_its_breaker_while_redis_and_nats_keep_delivering() {
    let test = "a_down_rabbitmq_opens_its_breaker";
    let Some(amqp) = rabbitmq(test).await else {
        return;
    };
    let Some(mut nats) = NatsServer::start(test).await else {
        return;
    };
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let proxy = ChaosProxy::start(&amqp_host(&amqp)).await;
    let exchange = unique("itsur.t.");
    let queue = unique("itsur-t-");
    let (_conn, ch) = bind_queue(&amqp, &exchange, &queue).await;
    let stream = unique("ITSUR_T_");

    let mut config = config_for(&db.url, Some(&redis));
    config.breaker.consecutive_failures = Some(2);
    config.breaker.cooldown = Duration::from_millis(500);
    config.outbox.amqp = Some(AmqpSettings {
        url: Secret::new(amqp_via(&amqp, &proxy.addr.to_string())),
        exchange: exchange.clone(),
        timeout: Duration::from_secs(2),
    });
    config.outbox.nats = Some(NatsSettings {
        url: Secret::new(nats.url.clone()),
        subject_prefix: unique("itsurt"),
        stream: stream.clone(),
        timeout: Duration::from_secs(2),
    });
    let ctx = Ctx::new(config).unwrap();
    let mut relay = Relay::new(ctx.clone());
    assert_eq!(
        relay.sink_names(),
        ["redis", "enqueue_push", "amqp", "nats"]
    );

    proxy.cut();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.extend(insert_events(&ctx, 10).await);
        let report = relay.drain().await.unwrap();
        assert_eq!((report.published, report.dead), (0, 0), "{report:?}");
    }
    let breaker = ctx.breakers.get("amqp");
    assert_eq!(
        breaker.state().await,
        State::Open,
        "two failed calls open it"
    );
    let nats_breaker = ctx.breakers.get("nats").state().await;
    assert_eq!(nats_breaker, State::Closed);
    {
        let mut conn = ctx.db.conn().await.unwrap();
        for &id in &ids {
            let row = outbox::find(&mut conn, id).await.unwrap().unwrap();
            assert!(row.published_at.is_none());
            assert_eq!(row.attempts, 0, "an outage spends no attempt");
            for sink in ["redis", "nats"] {
                assert!(row.sinks_done.iter().any(|s| s == sink), "{sink} took {id}");
            }
            assert!(!row.sinks_done.iter().any(|s| s == "amqp"));
        }
    }

    // NATS crashes and comes back (same port and store): what it acked is still there.
    nats.restart().await;
    proxy.restore();
    // Poll with a deadline: make the waiting events due, drain, until none is pending.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let published = loop {
        let mut conn = ctx.db.conn().await.unwrap();
        conn.batch_execute(
            "UPDATE outbox_events SET next_attempt_at = now() WHERE published_at IS NULL",
        )
        .await
        .unwrap();
        drop(conn);
        relay.drain().await.unwrap();
        let mut conn = ctx.db.conn().await.unwrap();
        if outbox::pending_stats(&mut conn).await.unwrap().pending == 0 {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(published, "every event published once RabbitMQ is back");
    assert_eq!(
        breaker.state().await,
        State::Closed,
        "the trial call closed it"
    );

    let seen = consume_queue(&ch, &queue, ids.len(), Duration::from_secs(5)).await;
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), ids);
    let seen = consume_stream(&nats.url, &stream, ids.len(), Duration::from_secs(5)).await;
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), ids);
    assert!(seen.values().all(|&n| n == 1), "each stored once");
    assert_eq!(stream_messages(&nats.url, &stream).await, 30);
    delete_topology(&ch, &exchange, &queue).await;
}
