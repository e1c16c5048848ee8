//! The outbox relay against real Postgres and Redis: publishing to Redis, several relays at
//! once, takeover after a relay dies mid-batch, per-sink failures (backoff, dead, admin list
//! and retry), Redis outages, the NOTIFY wake-up and the signed webhook. (Late commits are in
//! `ws.rs`; pruning is the worker's `maintenance` job.)

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use itsur::app::Ctx;
use itsur::domain::event::EventEnvelope;
use itsur::outbox::relay::{self, Relay};
use itsur::outbox::sinks::{Sink, SinkError};
use itsur::shutdown::Shutdown;
use itsur::store::outbox::{self, NewOutboxEventRow, OutboxEventRow};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::chaos::ChaosProxy;
use crate::support::config_for;
use crate::support::fixtures::{Api, Http, World, order_body};
use crate::support::ws::WAIT;
use crate::support::{TestApp, TestDb, TestRedis, TestServer, eventually};

const OK: u8 = 0;
const FAIL: u8 = 1;
const UNAVAILABLE: u8 = 2;

/// A sink that records the ids it took and can be told to fail.
#[derive(Clone)]
struct Recorder {
    name: &'static str,
    seen: Arc<Mutex<Vec<i64>>>,
    mode: Arc<AtomicU8>,
}

impl Recorder {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            seen: Arc::default(),
            mode: Arc::new(AtomicU8::new(OK)),
        }
    }

    fn seen(&self) -> Vec<i64> {
        self.seen.lock().unwrap().clone()
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

impl Sink for Recorder {
    fn name(&self) -> &'static str {
        self.name
    }

    fn deliver<'a>(
        &'a self,
        _tx: &'a mut AsyncPgConnection,
        events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Vec<Result<(), SinkError>>> {
        async move {
            // Let other relays run while this one holds its batch.
            tokio::task::yield_now().await;
            let mode = AtomicU8::load(&self.mode, Ordering::SeqCst);
            events
                .iter()
                .map(|e| match mode {
                    OK => {
                        self.seen.lock().unwrap().push(e.id);
                        Ok(())
                    }
                    FAIL => Err(SinkError::Failed("boom".to_owned())),
                    _ => Err(SinkError::Unavailable("down".to_owned())),
                })
                .collect()
        }
        .boxed()
    }
}

fn event_row(campus: Option<Uuid>, n: i32) -> NewOutboxEventRow {
    NewOutboxEventRow {
        aggregate_type: "order".to_owned(),
        aggregate_id: Uuid::now_v7(),
        aggregate_version: n,
        event_type: "order.created".to_owned(),
        payload: json!({ "n": n }),
        campus_id: campus,
        vendor_id: None,
        user_id: None,
    }
}

async fn insert_events(ctx: &Ctx, campus: Option<Uuid>, n: i32) -> Vec<i64> {
    let mut conn = ctx.db.conn().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            outbox::insert_event(&mut conn, &event_row(campus, i))
                .await
                .unwrap(),
        );
    }
    ids
}

async fn row(ctx: &Ctx, id: i64) -> OutboxEventRow {
    let mut conn = ctx.db.conn().await.unwrap();
    outbox::find(&mut conn, id).await.unwrap().unwrap()
}

async fn make_due(ctx: &Ctx) {
    let mut conn = ctx.db.conn().await.unwrap();
    conn.batch_execute(
        "UPDATE outbox_events SET next_attempt_at = now() WHERE published_at IS NULL",
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_each_committed_event_to_redis_once() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let server = TestServer::start(t.ctx.clone());
    let http = Http::new(&server);
    let student = http.login(&world.a.student.email).await;

    let client = redis::Client::open(t._redis.url.as_str()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(format!("{}:events", t._redis.prefix))
        .await
        .unwrap();
    let mut messages = pubsub.into_on_message();

    let res = http
        .post(
            "/orders",
            student.token(),
            &order_body(world.a.vendor.id, world.a.items[0].id, 1),
        )
        .await;
    assert_eq!(res.status, 201);
    let mut relay = Relay::new(t.ctx.clone());
    assert_eq!(relay.sink_names(), ["redis", "enqueue_push"]);
    let report = relay.drain().await.unwrap();
    assert_eq!((report.claimed, report.published), (1, 1));

    let msg = tokio::time::timeout(WAIT, messages.next())
        .await
        .unwrap()
        .unwrap();
    let event: Value = serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
    assert_eq!(event["event"], "order.created");
    assert_eq!(event["aggregateId"], res.id().to_string());
    assert_eq!(event["version"], 1);
    assert_eq!(event["routing"]["vendorId"], world.a.vendor.id.to_string());
    assert_eq!(event["routing"]["userId"], student.user_id.to_string());
    let id = event["id"].as_i64().unwrap();
    let published = row(&t.ctx, id).await;
    assert!(published.published_at.is_some());
    assert_eq!(published.sinks_done, ["redis", "enqueue_push"]);
    assert_eq!(relay.drain().await.unwrap().claimed, 0, "published once");

    relay::record_stats(&t.ctx).await.unwrap();
    let metrics = t.ctx.metrics.render();
    for name in [
        "outbox_pending",
        "outbox_lag_seconds",
        "outbox_dead",
        r#"outbox_published_total{sink="redis"}"#,
    ] {
        assert!(metrics.contains(name), "{name} in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_relays_at_once_publish_every_event_exactly_once() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let mut config = config_for(&db.url, Some(&redis));
    config.outbox.batch_size = 7;
    config.database.pool_size = 12;
    let ctx = Ctx::new(config).unwrap();
    let ids = insert_events(&ctx, None, 300).await;
    let sink = Recorder::new("rec");
    let relays = (0..4).map(|_| {
        let mut relay = Relay::with_sinks(ctx.clone(), vec![Box::new(sink.clone())]);
        tokio::spawn(async move { relay.drain().await.unwrap() })
    });
    let reports = futures_util::future::join_all(relays).await;
    let claimed: usize = reports.iter().map(|r| r.as_ref().unwrap().claimed).sum();
    let mut seen = sink.seen();
    assert_eq!(claimed, 300);
    assert_eq!(seen.len(), 300, "no event twice");
    seen.sort_unstable();
    assert_eq!(seen, ids);
    assert!(
        reports
            .iter()
            .filter(|r| r.as_ref().unwrap().claimed > 0)
            .count()
            > 1,
        "the relays shared the work"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_dies_mid_batch_releases_its_events() {
    let t = TestApp::new().await;
    let ids = insert_events(&t.ctx, None, 5).await;
    // Relay A claims everything and dies before marking (its connection drops, as with kill -9).
    let mut dying = AsyncPgConnection::establish(&t._db.url).await.unwrap();
    dying.batch_execute("BEGIN").await.unwrap();
    let claimed = outbox::claim_batch(&mut dying, 100).await.unwrap();
    assert_eq!(claimed.len(), 5);
    let sink = Recorder::new("rec");
    let mut other = Relay::with_sinks(t.ctx.clone(), vec![Box::new(sink.clone())]);
    assert_eq!(
        other.drain().await.unwrap().claimed,
        0,
        "locked rows are skipped"
    );
    let died = Instant::now();
    drop(dying);
    assert!(
        eventually(WAIT, || {
            let mut relay = Relay::with_sinks(t.ctx.clone(), vec![Box::new(sink.clone())]);
            async move { relay.drain().await.unwrap().published == 5 }
        })
        .await
    );
    eprintln!(
        "takeover after a dropped claim connection: {:?}",
        died.elapsed()
    );
    assert_eq!(sink.seen(), ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_back_off_then_die_and_an_admin_can_retry() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let mut config = config_for(&t._db.url, Some(&t._redis));
    config.outbox.max_attempts = 2;
    let ctx = Ctx::new(config).unwrap();
    let campus = Some(world.a.campus.id);
    let id = insert_events(&ctx, campus, 1).await[0];
    let good = Recorder::new("good");
    let bad = Recorder::new("bad");
    let mut relay = Relay::with_sinks(
        ctx.clone(),
        vec![Box::new(good.clone()), Box::new(bad.clone())],
    );
    // Unavailable first: pending, no attempt spent, retried soon.
    bad.set(UNAVAILABLE);
    assert_eq!(relay.drain().await.unwrap().retrying, 1);
    let r = row(&ctx, id).await;
    assert_eq!(
        (r.attempts, r.sinks_done.as_slice()),
        (0, ["good".to_owned()].as_slice())
    );
    make_due(&ctx).await;
    bad.set(FAIL);

    let report = relay.drain().await.unwrap();
    assert_eq!((report.published, report.retrying), (0, 1));
    let r = row(&ctx, id).await;
    assert_eq!(r.attempts, 1);
    assert_eq!(r.sinks_done, ["good"]);
    assert!(
        r.last_error
            .as_deref()
            .unwrap()
            .contains("bad: failed: boom")
    );
    let wait = r.next_attempt_at - chrono::Utc::now();
    assert!(
        wait > chrono::Duration::seconds(3),
        "backs off ~5 s: {wait}"
    );
    assert_eq!(relay.drain().await.unwrap().claimed, 0, "not due yet");

    make_due(&ctx).await;
    assert_eq!(relay.drain().await.unwrap().dead, 1);
    let r = row(&ctx, id).await;
    assert!(r.dead_at.is_some() && r.published_at.is_none());
    assert_eq!(r.attempts, 2);
    assert_eq!(good.seen(), [id], "a retry re-runs only the failed sink");

    // The admin API (in process).
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let api = Api::new(ctx.clone()).await;
            let root = api.login(&world.platform_admin.email).await;
            let admin_a = api.login(&world.a.admin.email).await;
            let admin_b = api.login(&world.b.admin.email).await;
            let student = api.login(&world.a.student.email).await;
            let listed = |res: &crate::support::fixtures::Resp| -> Vec<i64> {
                res.data()
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["id"].as_i64().unwrap())
                    .collect()
            };
            let res = api.get("/admin/outbox?state=dead", root.token()).await;
            assert_eq!(res.status, 200, "{}", res.text());
            assert_eq!(listed(&res), [id]);
            let first = &res.data()[0];
            assert_eq!(first["attempts"], 2);
            assert_eq!(first["sinksDone"], json!(["good"]));
            assert!(first["lastError"].as_str().unwrap().contains("boom"));
            assert_eq!(res.body["pagination"]["total"], 1);
            assert_eq!(
                listed(&api.get("/admin/outbox?state=dead", admin_a.token()).await),
                [id]
            );
            assert!(listed(&api.get("/admin/outbox?state=dead", admin_b.token()).await).is_empty());
            api.get("/admin/outbox?state=dead", student.token())
                .await
                .assert_problem(403);
            api.get("/admin/outbox?state=gone", root.token())
                .await
                .assert_problem(400);

            let retry = format!("/admin/outbox/{id}/retry");
            api.post(&retry, admin_b.token(), &json!({}))
                .await
                .assert_problem(404);
            let res = api.post(&retry, admin_a.token(), &json!({})).await;
            assert_eq!(res.status, 200, "{}", res.text());
            assert_eq!(res.data()["attempts"], 0);
            assert!(res.data()["deadAt"].is_null());
            api.post(&retry, admin_a.token(), &json!({}))
                .await
                .assert_problem(409);
            assert_eq!(
                listed(&api.get("/admin/outbox?state=pending", root.token()).await),
                [id]
            );
        })
        .await;

    bad.set(OK);
    assert_eq!(relay.drain().await.unwrap().published, 1);
    assert_eq!(good.seen(), [id]);
    assert_eq!(bad.seen(), [id]);
    let r = row(&ctx, id).await;
    assert!(r.published_at.is_some());
    assert_eq!(r.sinks_done, ["good", "bad"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_sink_keeps_events_pending_without_spending_attempts() {
    let t = TestApp::new().await;
    let (proxy, via) = ChaosProxy::in_front_of(&t._redis.url).await;
    let mut config = config_for(&t._db.url, Some(&t._redis));
    config.redis.url = Some(itsur::config::Secret::new(via));
    config.outbox.max_attempts = 1;
    let ctx = Ctx::new(config).unwrap();
    let id = insert_events(&ctx, None, 1).await[0];
    let mut relay = Relay::new(ctx.clone());
    proxy.cut();
    for _ in 0..3 {
        let report = relay.drain().await.unwrap();
        assert_eq!((report.published, report.dead), (0, 0));
        make_due(&ctx).await;
    }
    let r = row(&ctx, id).await;
    assert_eq!(r.attempts, 0, "Redis being down is not the event's fault");
    assert!(r.dead_at.is_none() && r.published_at.is_none());
    assert!(
        r.last_error
            .as_deref()
            .unwrap()
            .starts_with("redis: unavailable")
    );

    proxy.restore();
    assert!(
        eventually(WAIT, || {
            let ctx = ctx.clone();
            async move {
                make_due(&ctx).await;
                Relay::new(ctx).drain().await.unwrap().published == 1
            }
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_wakes_the_relay_through_notify_long_before_it_would_poll() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let mut config = config_for(&t._db.url, Some(&t._redis));
    config.outbox.poll_interval = Duration::from_secs(3600);
    let ctx = Ctx::new(config).unwrap();
    let server = TestServer::start(ctx.clone());
    let http = Http::new(&server);
    let student = http.login(&world.a.student.email).await;
    let shutdown = Shutdown::new();
    let relay = tokio::spawn(relay::run(ctx.clone(), shutdown.clone()));
    // The relay's LISTEN connection is up.
    assert!(
        eventually(WAIT, || {
            let ctx = ctx.clone();
            async move {
                let mut conn = ctx.db.conn().await.unwrap();
                diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                    "(SELECT count(*) FROM pg_listening_channels()) + (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query = 'LISTEN itsur_outbox')",
                ))
                .get_result::<i64>(&mut conn)
                .await
                .unwrap()
                    > 0
            }
        })
        .await
    );
    let started = Instant::now();
    let res = http
        .post(
            "/orders",
            student.token(),
            &order_body(world.a.vendor.id, world.a.items[0].id, 1),
        )
        .await;
    assert_eq!(res.status, 201);
    let order = res.id();
    assert!(
        eventually(WAIT, || {
            let ctx = ctx.clone();
            async move {
                let mut conn = ctx.db.conn().await.unwrap();
                outbox::list_for_aggregate(&mut conn, "order", order)
                    .await
                    .unwrap()
                    .iter()
                    .all(|e| e.published_at.is_some())
            }
        })
        .await,
        "published although the relay polls only hourly"
    );
    eprintln!(
        "order commit -> published via NOTIFY: {:?}",
        started.elapsed()
    );
    shutdown.trigger();
    tokio::time::timeout(WAIT, relay).await.unwrap().unwrap();
}

/// What the fake webhook receiver saw: (signature header, body).
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A webhook receiver answering 500 to the first `fail_first` calls, then 204.
fn webhook_receiver(fail_first: usize) -> (String, Received) {
    use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
    let received: Received = Arc::default();
    let r = received.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(move || {
        let r = r.clone();
        App::new().route(
            "/hook",
            web::post().to(move |req: HttpRequest, body: web::Bytes| {
                let r = r.clone();
                async move {
                    let sig = req
                        .headers()
                        .get("x-itsur-signature")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    let mut got = r.lock().unwrap();
                    got.push((sig, body.to_vec()));
                    if got.len() <= fail_first {
                        HttpResponse::InternalServerError().finish()
                    } else {
                        HttpResponse::NoContent().finish()
                    }
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    (format!("http://{addr}/hook"), received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_is_signed_and_retried() {
    let t = TestApp::new().await;
    let (url, received) = webhook_receiver(1);
    let secret = "webhook-secret-that-is-long-enough-0123";
    let mut config = config_for(&t._db.url, Some(&t._redis));
    config.outbox.webhook = Some(itsur::config::WebhookSettings {
        url: itsur::config::Secret::new(url),
        secret: itsur::config::Secret::new(secret.to_owned()),
        timeout: Duration::from_secs(5),
    });
    let ctx = Ctx::new(config).unwrap();
    let id = insert_events(&ctx, None, 1).await[0];
    let mut relay = Relay::new(ctx.clone());
    assert_eq!(relay.sink_names(), ["redis", "enqueue_push", "webhook"]);
    let report = relay.drain().await.unwrap();
    assert_eq!(report.retrying, 1, "the receiver answered 500");
    let r = row(&ctx, id).await;
    assert_eq!(r.sinks_done, ["redis", "enqueue_push"]);
    assert!(r.last_error.unwrap().contains("500"));
    make_due(&ctx).await;
    assert_eq!(relay.drain().await.unwrap().published, 1);

    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    let (sig, body) = &got[1];
    let t_part = sig.split(',').next().unwrap().strip_prefix("t=").unwrap();
    let ts: i64 = t_part.parse().unwrap();
    assert_eq!(
        sig,
        &itsur::outbox::sinks::signature(secret.as_bytes(), ts, body),
        "X-Itsur-Signature = t=<unix>,v1=<hex hmac-sha256 of \"t.body\">"
    );
    let event: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(event["id"], id);
}

/// An order that becomes ready enqueues exactly one `send_push` job for its student, in the
/// relay's transaction, even when the event is delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_order_enqueues_one_push_job_even_when_delivered_twice() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let a = &world.a;
    let student = api.login(&a.student.email).await;
    let staff = api.login(&a.staff.email).await;
    let order = api
        .post(
            "/orders",
            student.token(),
            &order_body(a.vendor.id, a.items[0].id, 1),
        )
        .await
        .id();
    for to in ["accepted", "preparing", "ready"] {
        let res = api
            .post(
                &format!("/orders/{order}/transitions"),
                staff.token(),
                &json!({ "to": to }),
            )
            .await;
        assert_eq!(res.status, 200, "{}", res.text());
    }
    let mut relay = Relay::new(t.ctx.clone());
    relay.drain().await.unwrap();
    let push_jobs = |ctx: Ctx| async move {
        let mut conn = ctx.db.conn().await.unwrap();
        itsur::store::jobs::list(
            &mut conn,
            itsur::store::jobs::Scope::All,
            None,
            Some("send_push"),
            10,
            0,
        )
        .await
        .unwrap()
        .0
    };
    let jobs = push_jobs(t.ctx.clone()).await;
    assert_eq!(
        jobs.len(),
        1,
        "one push for the ready transition, none for the others"
    );
    assert_eq!(jobs[0].payload["userId"], a.student.id.to_string());
    assert_eq!(jobs[0].priority, 0, "pushes jump the queue");

    // The same events delivered again (a relay died after enqueueing, before marking).
    let mut conn = t.ctx.db.conn().await.unwrap();
    conn.batch_execute("UPDATE outbox_events SET published_at = NULL, sinks_done = '{}'")
        .await
        .unwrap();
    drop(conn);
    relay.drain().await.unwrap();
    assert_eq!(
        push_jobs(t.ctx.clone()).await.len(),
        1,
        "still exactly one job"
    );
}
