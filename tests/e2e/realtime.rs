//! Realtime end to end (issue #5, "Done means"): the real binary as two `serve` instances
//! and one or two `outbox-relay` processes on one Postgres and one Redis. An order crosses
//! instances both ways; a client that was away resumes exactly what it missed; `kill -9` of
//! a relay mid-stream loses nothing; no event reaches another tenant's socket; a reader that
//! stops reading is disconnected while the server's memory stays bounded.
//!
//! Figures (latency, takeover, memory) are printed, never asserted as timings.

use std::collections::{BTreeSet, HashMap};
use std::process::Stdio;
use std::time::{Duration, Instant};

use itsur::app::Ctx;
use serde_json::{Value, json};
use tokio::process::Child;
use uuid::Uuid;

use crate::proc::{free_port, itsur, sigterm, wait_exit, wait_ready};
use crate::support::fixtures::{Http, Session, World, order_body};
use crate::support::ws::{WAIT, WsClient, ids, request, wait_subscribed};
use crate::support::{TestDb, TestRedis, ctx_for, eventually};

const SECRET: &str = "e2e-secret-that-is-long-enough-0123456789";

/// Postgres + Redis + fixtures, and the processes started on them.
struct Stack {
    db: TestDb,
    redis: TestRedis,
    ctx: Ctx,
    world: World,
    logs: std::path::PathBuf,
}

impl Drop for Stack {
    fn drop(&mut self) {
        // The processes' logs are kept only when the test failed.
        if std::thread::panicking() {
            eprintln!("process logs kept in {}", self.logs.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
    }
}

/// A running `serve`.
struct Serve {
    child: Child,
    port: u16,
    http: Http,
}

impl Serve {
    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Stack {
    async fn new() -> Self {
        let db = TestDb::new().await;
        let redis = TestRedis::new();
        let ctx = ctx_for(&db.url, Some(&redis));
        let world = World::create(&ctx).await;
        let logs = std::env::temp_dir().join(format!("itsur-e2e-rt-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&logs).unwrap();
        Self {
            db,
            redis,
            ctx,
            world,
            logs,
        }
    }

    fn command(&self, role: &str, name: &str, extra: &[(&str, &str)]) -> tokio::process::Command {
        let mut cmd = itsur(&[role]);
        let log = std::fs::File::create(self.logs.join(format!("{name}.log"))).unwrap();
        cmd.env("DATABASE_URL", &self.db.url)
            .env("REDIS_URL", &self.redis.url)
            .env("REDIS_PREFIX", &self.redis.prefix)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd
    }

    async fn serve(&self, name: &str, extra: &[(&str, &str)]) -> Serve {
        let port = free_port();
        let mut env = vec![
            ("JWT_SECRET", SECRET.to_owned()),
            ("BIND_ADDR", format!("127.0.0.1:{port}")),
            ("HTTP_WORKERS", "2".to_owned()),
            // These tests drive hundreds of orders from one student and one address; the
            // limits themselves are tested in tests/it/edge.rs.
            ("RATE_LIMIT_ORDERS", "off".to_owned()),
            ("RATE_LIMIT_USER", "off".to_owned()),
            ("RATE_LIMIT_IP", "off".to_owned()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let child = self.command("serve", name, &env).spawn().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&format!("{base}/health/ready"), Duration::from_secs(30)).await;
        Serve {
            child,
            port,
            http: Http::at(&base),
        }
    }

    async fn relay(&self, name: &str) -> Child {
        let port = free_port();
        let child = self
            .command(
                "outbox-relay",
                name,
                &[
                    ("METRICS_BIND", &format!("127.0.0.1:{port}")),
                    ("OUTBOX_BATCH_SIZE", "10"),
                ],
            )
            .spawn()
            .unwrap();
        wait_ready(
            &format!("http://127.0.0.1:{port}/health/ready"),
            Duration::from_secs(30),
        )
        .await;
        child
    }

    async fn unpublished(&self) -> i64 {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use itsur::store::schema::outbox_events as o;
        let mut conn = self.ctx.db.conn().await.unwrap();
        o::table
            .filter(o::published_at.is_null())
            .count()
            .get_result(&mut conn)
            .await
            .unwrap()
    }
}

async fn place(http: &Http, s: &Session, vendor: impl Into<Uuid>, item: impl Into<Uuid>) -> Uuid {
    let (vendor, item) = (vendor.into(), item.into());
    let res = http
        .post("/orders", s.token(), &order_body(vendor, item, 1))
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    res.id()
}

async fn transition(http: &Http, s: &Session, order: Uuid, to: &str) {
    let res = http
        .post(
            &format!("/orders/{order}/transitions"),
            s.token(),
            &json!({ "to": to }),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
}

fn order_of(e: &Value) -> Uuid {
    e["aggregate"]["id"].as_str().unwrap().parse().unwrap()
}

async fn stop(mut child: Child) {
    sigterm(&child).await;
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_crosses_instances_both_ways_and_never_reaches_another_tenant() {
    let stack = Stack::new().await;
    let (a, b) = (&stack.world.a, &stack.world.b);
    let serve_a = stack.serve("serve-a", &[]).await;
    let serve_b = stack.serve("serve-b", &[]).await;
    wait_subscribed(&stack.redis.url, &stack.redis.prefix, 2).await;
    let relay = stack.relay("relay").await;
    // A worker whose FCM is a local server answering as FCM documents.
    let fcm = crate::support::fake_push::FakeProvider::start(crate::support::fake_push::fcm_ok());
    let worker_port = free_port();
    let worker = stack
        .command(
            "worker",
            "worker",
            &[
                ("METRICS_BIND", &format!("127.0.0.1:{worker_port}")),
                ("FCM_BASE_URL", &fcm.base),
                ("FCM_PROJECT_ID", "itsur-e2e"),
                ("FCM_ACCESS_TOKEN", "e2e-fcm-token"),
                ("JOB_POLL_INTERVAL_MS", "200"),
            ],
        )
        .spawn()
        .unwrap();

    let student = serve_a.http.login(&a.student.email).await;
    let staff = serve_b.http.login(&a.staff.email).await;
    let device = serve_a
        .http
        .post(
            "/me/devices",
            student.token(),
            &serde_json::json!({ "platform": "fcm", "token": "student-phone" }),
        )
        .await;
    assert_eq!(device.status, 201, "{}", device.text());
    let mut ws_student = WsClient::connect(serve_a.addr(), &student.access).await;
    let mut ws_staff = WsClient::connect(serve_b.addr(), &staff.access).await;
    // Outsiders on both instances: another vendor's staff, another student, campus B.
    let mut outsiders = Vec::new();
    for (serve, email) in [
        (&serve_a, &a.other_staff.email),
        (&serve_b, &a.student2.email),
        (&serve_a, &b.admin.email),
        (&serve_b, &b.staff.email),
        (&serve_a, &b.student.email),
    ] {
        let s = serve.http.login(email).await;
        outsiders.push(WsClient::connect(serve.addr(), &s.access).await);
    }

    let started = Instant::now();
    let order = place(&serve_a.http, &student, a.vendor.id, a.items[0].id).await;
    let committed = started.elapsed();
    let created = ws_staff.event().await;
    let latency = started.elapsed().saturating_sub(committed);
    assert_eq!(created["event"], "order.created");
    assert_eq!(order_of(&created), order);
    assert_eq!(order_of(&ws_student.event().await), order);

    for to in ["accepted", "preparing", "ready"] {
        transition(&serve_b.http, &staff, order, to).await;
    }
    let changes = ws_student.events(3).await;
    assert!(changes.iter().all(|e| e["event"] == "order.status_changed"));
    assert_eq!(
        changes
            .iter()
            .map(|e| e["version"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [2, 3, 4]
    );
    assert_eq!(changes[2]["data"]["to"], "ready");
    assert_eq!(ws_staff.events(3).await.len(), 3);
    // Everything routed has been dispatched by now on both instances; ping is a barrier.
    for ws in &mut outsiders {
        assert!(ws.sync().await.is_empty(), "an outsider received an event");
    }
    eprintln!(
        "realtime: POST /orders answered in {committed:?}; order.created reached the other instance's socket {latency:?} after the response"
    );
    // Ready → relay enqueues send_push → the worker delivers to the student's phone, once.
    let pushed = eventually(Duration::from_secs(30), || async { fcm.hits() >= 1 }).await;
    assert!(pushed, "the ready order was pushed to FCM");
    let sent = &fcm.received()[0];
    assert_eq!(sent.body["message"]["token"], "student-phone");
    assert_eq!(sent.authorization.as_deref(), Some("Bearer e2e-fcm-token"));
    // No second delivery shows up while the worker keeps polling.
    let mut health = stack.command(
        "healthcheck",
        "hc",
        &[(
            "HEALTHCHECK_URL",
            &format!("http://127.0.0.1:{worker_port}/health/ready"),
        )],
    );
    assert_eq!(health.status().await.unwrap().code(), Some(0));
    assert_eq!(fcm.hits(), 1, "delivered exactly once");
    stop(worker).await;
    stop(relay).await;
    stop(serve_a.child).await;
    stop(serve_b.child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_was_away_gets_exactly_the_50_events_it_missed() {
    let stack = Stack::new().await;
    let a = &stack.world.a;
    let serve_a = stack.serve("serve-a", &[]).await;
    let serve_b = stack.serve("serve-b", &[]).await;
    wait_subscribed(&stack.redis.url, &stack.redis.prefix, 2).await;
    let relay = stack.relay("relay").await;
    let student = serve_a.http.login(&a.student.email).await;

    let mut ws = WsClient::connect(serve_a.addr(), &student.access).await;
    place(&serve_a.http, &student, a.vendor.id, a.items[0].id).await;
    let last = ws.event().await["id"].as_i64().unwrap();
    ws.close().await;

    let mut missed = Vec::new();
    for i in 0..50 {
        let via = if i % 2 == 0 { &serve_a } else { &serve_b };
        missed.push(place(&via.http, &student, a.vendor.id, a.items[1].id).await);
    }
    assert!(eventually(WAIT, || async { stack.unpublished().await == 0 }).await);

    // Back, on the other instance.
    let mut ws = WsClient::connect(serve_b.addr(), &student.access).await;
    let (events, resumed) = ws.resume(last).await;
    assert_eq!(events.len(), 50, "{resumed}");
    assert_eq!(events.iter().map(order_of).collect::<Vec<_>>(), missed);
    let got = ids(&events);
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates"
    );
    assert_eq!(resumed["complete"], true);
    let live = place(&serve_a.http, &student, a.vendor.id, a.items[0].id).await;
    let e = ws.event().await;
    assert_eq!(order_of(&e), live);
    assert!(e["id"].as_i64().unwrap() > got[49]);
    stop(relay).await;
    stop(serve_a.child).await;
    stop(serve_b.child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_relay_mid_stream_loses_nothing() {
    let stack = Stack::new().await;
    let a = &stack.world.a;
    let serve = stack.serve("serve", &[]).await;
    wait_subscribed(&stack.redis.url, &stack.redis.prefix, 1).await;
    let mut doomed = stack.relay("relay-1").await;
    let survivor = stack.relay("relay-2").await;
    let student = serve.http.login(&a.student.email).await;
    let staff = serve.http.login(&a.staff.email).await;
    let mut ws = WsClient::connect(serve.addr(), &staff.access).await;

    const TOTAL: usize = 120;
    let producer = {
        let http = serve.http.clone();
        let student = student.clone();
        let (vendor, item) = (a.vendor.id, a.items[0].id);
        tokio::spawn(async move {
            let mut orders = Vec::new();
            for _ in 0..TOTAL {
                orders.push(place(&http, &student, vendor, item).await);
            }
            orders
        })
    };
    // Each id counted once per arrival: the socket de-duplicates, so repeats stay at 0.
    let mut seen: HashMap<i64, usize> = HashMap::new();
    let mut by_order: HashMap<Uuid, i64> = HashMap::new();
    let mut killed_at = None;
    let mut first_after_kill = None;
    let mut restarted = None;
    while by_order.len() < TOTAL {
        let e = ws.event().await;
        *seen.entry(e["id"].as_i64().unwrap()).or_default() += 1;
        by_order.insert(order_of(&e), e["id"].as_i64().unwrap());
        if killed_at.is_some() && first_after_kill.is_none() {
            first_after_kill = killed_at.map(|t: Instant| t.elapsed());
        }
        if by_order.len() == TOTAL / 3 && killed_at.is_none() {
            doomed.start_kill().unwrap();
            doomed.wait().await.unwrap();
            killed_at = Some(Instant::now());
        }
        if by_order.len() == 2 * TOTAL / 3 && restarted.is_none() {
            restarted = Some(stack.relay("relay-1-again").await);
        }
    }
    let orders = producer.await.unwrap();
    assert_eq!(
        orders.iter().copied().collect::<BTreeSet<_>>(),
        by_order.keys().copied().collect::<BTreeSet<_>>(),
        "every order's event arrived"
    );
    assert!(seen.values().all(|n| *n == 1), "each id once on the socket");
    assert!(eventually(WAIT, || async { stack.unpublished().await == 0 }).await);
    // A consumer starting from scratch sees each of them exactly once too.
    let mut fresh = WsClient::connect(serve.addr(), &staff.access).await;
    let (replayed, _) = fresh.resume(0).await;
    let replayed_ids = ids(&replayed);
    assert_eq!(
        replayed_ids.iter().copied().collect::<BTreeSet<_>>().len(),
        replayed_ids.len()
    );
    assert_eq!(
        replayed_ids.into_iter().collect::<BTreeSet<_>>(),
        seen.keys().copied().collect::<BTreeSet<_>>()
    );
    eprintln!(
        "relay kill -9: first event via the surviving relay {:?} after the kill",
        first_after_kill.unwrap()
    );
    stop(survivor).await;
    if let Some(r) = restarted {
        stop(r).await;
    }
    stop(serve.child).await;
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_disconnected_and_memory_stays_bounded() {
    let stack = Stack::new().await;
    let a = &stack.world.a;
    let serve = stack.serve("serve", &[("WS_SEND_QUEUE", "64")]).await;
    wait_subscribed(&stack.redis.url, &stack.redis.prefix, 1).await;
    let student = serve.http.login(&a.student.email).await;
    let staff = serve.http.login(&a.staff.email).await;
    let pid = serve.child.id().unwrap();

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(serve.addr()).await.unwrap();
    let (stream, _) = tokio_tungstenite::client_async(
        request(serve.addr(), "", Some(&student.access)),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .unwrap();
    let mut slow = Some(WsClient::after_handshake(stream).await);
    let mut slow_closed = None;
    let mut fast = WsClient::connect(serve.addr(), &staff.access).await;
    let metrics = crate::support::client(Duration::from_secs(5));
    let open_sockets = || {
        let metrics = metrics.clone();
        let url = format!("{}/metrics", serve.base());
        async move {
            let text = metrics.get(url).send().await.unwrap().text().await.unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("active_socket_connections "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(-1.0)
        }
    };
    assert!(eventually(WAIT, || async { open_sockets().await == 2.0 }).await);
    let rss_before = rss_kib(pid, "VmRSS:");

    // 128 KiB events straight onto the channel, paced by the fast reader: 1280 of them is
    // 160 MiB aimed at a client that reads nothing.
    let redis = redis::Client::open(stack.redis.url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let blob = "x".repeat(128 * 1024);
    let mut dropped_after = None;
    for round in 0..64_i64 {
        let mut pipe = redis::pipe();
        for k in 0..20 {
            let event = json!({
                "id": 1_000_000 + round * 20 + k, "event": "order.created", "aggregateType": "order",
                "aggregateId": Uuid::now_v7(), "version": 1, "createdAt": "2026-01-01T00:00:00Z",
                "data": { "blob": blob },
                "routing": { "campusId": a.campus.id, "vendorId": a.vendor.id, "userId": student.user_id },
            });
            pipe.cmd("PUBLISH")
                .arg(format!("{}:events", stack.redis.prefix))
                .arg(event.to_string())
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await.unwrap();
        assert_eq!(fast.events(20).await.len(), 20);
        if dropped_after.is_none() && open_sockets().await == 1.0 {
            dropped_after = Some((round + 1) * 20);
            // It reads from now on: what was on the wire, then the close (the server waits
            // a bounded time for a close frame to get through).
            let mut client = slow.take().unwrap();
            slow_closed = Some(tokio::spawn(async move { client.close_code(WAIT).await }));
        }
    }
    assert!(eventually(WAIT, || async { open_sockets().await == 1.0 }).await);
    let peak = rss_kib(pid, "VmHWM:");
    let after = rss_kib(pid, "VmRSS:");
    eprintln!(
        "slow reader: dropped after {dropped_after:?} events of 128 KiB (160 MiB sent in total); serve RSS {} MiB before, peak {} MiB, {} MiB after",
        rss_before / 1024,
        peak / 1024,
        after / 1024
    );
    // Bounded by the queues (64 events + actix-ws's 32 frames per socket), not by the
    // 160 MiB sent: debug build, allocator slack and other tests' load on a shared 2-core
    // machine included (alone it stays far lower; the figure is printed above).
    assert!(
        peak.saturating_sub(rss_before) < 96 * 1024,
        "memory grew with the slow reader: {rss_before} KiB -> peak {peak} KiB"
    );
    let closed = slow_closed.expect("the slow client was dropped");
    assert_eq!(closed.await.unwrap(), Some(4008));
    stop(serve.child).await;
}
