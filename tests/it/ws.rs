//! The WebSocket gateway against a real server (port 0), real Postgres and Redis: tenant
//! routing, resume (exact replay, the late-commit look-back, `?after=`), slow consumers,
//! authentication and caps, Redis loss on the gateway, idle timeout, shutdown, and the
//! in-process hub used without Redis. The relay is driven explicitly (`Relay::drain`).

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use itsur::app::Ctx;
use itsur::outbox::relay::Relay;
use itsur::store::outbox::{self, NewOutboxEventRow};
use itsur::store::schema::outbox_events;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::chaos::ChaosProxy;
use crate::support::config_for;
use crate::support::fixtures::{Http, Session, World, order_body};
use crate::support::redis::PrivateRedis;
use crate::support::ws::{WAIT, WsClient, ids, request, try_connect, wait_subscribed};
use crate::support::{TestDb, TestRedis, TestServer, eventually};

/// A server on its own database and Redis prefix, the fixture world and a relay.
struct Rig {
    ctx: Ctx,
    world: World,
    server: TestServer,
    http: Http,
    relay: tokio::sync::Mutex<Relay>,
    redis: TestRedis,
    db: TestDb,
}

async fn rig_with(tune: impl FnOnce(&mut itsur::config::Config)) -> Rig {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let mut config = config_for(&db.url, Some(&redis));
    tune(&mut config);
    let ctx = Ctx::new(config).unwrap();
    let world = World::create(&ctx).await;
    let server = TestServer::start(ctx.clone());
    wait_subscribed(&redis.url, &redis.prefix, 1).await;
    let http = Http::new(&server);
    let relay = tokio::sync::Mutex::new(Relay::new(ctx.clone()));
    Rig {
        ctx,
        world,
        server,
        http,
        relay,
        redis,
        db,
    }
}

async fn rig() -> Rig {
    rig_with(|_| {}).await
}

/// Places an order of one `item` as `s` through the API; its id.
async fn place(http: &Http, s: &Session, vendor: impl Into<Uuid>, item: impl Into<Uuid>) -> Uuid {
    let res = http
        .post("/orders", s.token(), &order_body(vendor, item, 1))
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    res.id()
}

impl Rig {
    async fn place(&self, s: &Session, vendor: impl Into<Uuid>, item: impl Into<Uuid>) -> Uuid {
        place(&self.http, s, vendor, item).await
    }

    /// Publishes synthetic `order.created` events for `student` (campus and vendor A) with a
    /// `blob_kib` KiB body straight onto the events channel, `batch` at a time, each batch
    /// read by `fast`, until the hub has dropped one of its two sockets. Ids run from
    /// `first + 1` and must stay below `max`; returns the last id published and the ids
    /// `fast` received.
    async fn flood(
        &self,
        fast: &mut WsClient,
        student: &Session,
        (first, max): (i64, i64),
        batch: usize,
        blob_kib: usize,
    ) -> (i64, Vec<i64>) {
        let a = &self.world.a;
        let redis = redis::Client::open(self.redis.url.as_str()).unwrap();
        let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
        let blob = "x".repeat(blob_kib * 1024);
        let mut next_id = first;
        let mut received = Vec::new();
        while self.ctx.hub.len() == 2 {
            assert!(next_id < max, "the slow client was never dropped");
            let mut pipe = redis::pipe();
            for _ in 0..batch {
                next_id += 1;
                let event = json!({
                    "id": next_id, "event": "order.created", "aggregateType": "order",
                    "aggregateId": Uuid::now_v7(), "version": 1, "createdAt": "2026-01-01T00:00:00Z",
                    "data": { "blob": blob },
                    "routing": { "campusId": a.campus.id, "vendorId": a.vendor.id, "userId": student.user_id },
                });
                pipe.cmd("PUBLISH")
                    .arg(format!("{}:events", self.redis.prefix))
                    .arg(event.to_string())
                    .ignore();
            }
            let () = pipe.query_async(&mut conn).await.unwrap();
            received.extend(ids(&fast.events(batch).await));
        }
        (next_id, received)
    }

    async fn transition(&self, s: &Session, order: Uuid, to: &str) {
        let res = self
            .http
            .post(
                &format!("/orders/{order}/transitions"),
                s.token(),
                &json!({ "to": to }),
            )
            .await;
        assert_eq!(res.status, 200, "{}", res.text());
    }

    async fn drain(&self) -> usize {
        self.relay.lock().await.drain().await.unwrap().published
    }

    async fn connect(&self, s: &Session) -> WsClient {
        WsClient::connect(self.server.addr, &s.access).await
    }
}

fn order_of(event: &Value) -> Uuid {
    event["aggregate"]["id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_exactly_the_tenants_allowed_to_see_them() {
    let r = rig().await;
    let (a, b) = (&r.world.a, &r.world.b);
    let login = |email: String| {
        let http = r.http.clone();
        async move { http.login(&email).await }
    };
    let student = login(a.student.email.clone()).await;
    let student2 = login(a.student2.email.clone()).await;
    let staff = login(a.staff.email.clone()).await;
    let other_staff = login(a.other_staff.email.clone()).await;
    let admin = login(a.admin.email.clone()).await;
    let admin_b = login(b.admin.email.clone()).await;
    let staff_b = login(b.staff.email.clone()).await;
    let student_b = login(b.student.email.clone()).await;
    let root = login(r.world.platform_admin.email.clone()).await;

    let mut ws_student = r.connect(&student).await;
    assert_eq!(ws_student.hello["subscription"], "user");
    assert_eq!(ws_student.hello["protocol"], "itsur.v1");
    let mut ws_staff = r.connect(&staff).await;
    assert_eq!(ws_staff.hello["subscription"], "vendor");
    let mut ws_admin = r.connect(&admin).await;
    assert_eq!(ws_admin.hello["subscription"], "campus");
    let mut ws_root = r.connect(&root).await;
    assert_eq!(ws_root.hello["subscription"], "all");
    let mut outsiders = Vec::new();
    for s in [&student2, &other_staff, &admin_b, &staff_b, &student_b] {
        outsiders.push(r.connect(s).await);
    }

    let order = r.place(&student, a.vendor.id, a.items[0].id).await;
    assert_eq!(r.drain().await, 1);
    for ws in [&mut ws_student, &mut ws_staff, &mut ws_admin, &mut ws_root] {
        let e = ws.event().await;
        assert_eq!(e["event"], "order.created");
        assert_eq!(e["version"], 1);
        assert_eq!(order_of(&e), order);
        assert_eq!(e["data"]["id"], order.to_string());
        assert!(e["id"].as_i64().unwrap() > 0);
    }
    r.transition(&staff, order, "accepted").await;
    assert_eq!(r.drain().await, 1);
    for ws in [&mut ws_student, &mut ws_staff, &mut ws_admin, &mut ws_root] {
        let e = ws.event().await;
        assert_eq!(e["event"], "order.status_changed");
        assert_eq!(e["version"], 2);
        assert_eq!(e["data"]["to"], "accepted");
    }
    // The hub dispatches an event to every matching socket at once, and `ping` is a barrier
    // behind everything queued: an outsider's empty sync proves nothing was routed to it.
    for ws in &mut outsiders {
        assert_eq!(ws.sync().await, Vec::<Value>::new());
    }

    // Another vendor of the same campus: its staff and the campus see it, the first vendor's
    // staff does not.
    let other = r
        .place(&student2, a.other_vendor.id, a.other_items[0].id)
        .await;
    assert_eq!(r.drain().await, 1);
    assert_eq!(order_of(&outsiders[0].event().await), other);
    assert_eq!(order_of(&outsiders[1].event().await), other);
    assert_eq!(order_of(&ws_admin.event().await), other);
    assert_eq!(order_of(&ws_root.event().await), other);
    assert!(ws_staff.sync().await.is_empty());
    assert!(ws_student.sync().await.is_empty());
    for ws in &mut outsiders[2..] {
        assert!(ws.sync().await.is_empty());
    }
    assert_eq!(r.ctx.hub.len(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_exactly_what_was_missed_then_continues_live() {
    let r = rig().await;
    let a = &r.world.a;
    let student = r.http.login(&a.student.email).await;
    let mut ws = r.connect(&student).await;
    r.place(&student, a.vendor.id, a.items[0].id).await;
    r.drain().await;
    let seen = ws.event().await["id"].as_i64().unwrap();
    ws.close().await;

    let mut placed = Vec::new();
    for _ in 0..50 {
        placed.push(r.place(&student, a.vendor.id, a.items[1].id).await);
    }
    assert_eq!(r.drain().await, 50);

    let mut ws = r.connect(&student).await;
    assert!(ws.hello["lastEventId"].as_i64().unwrap() > seen);
    let (events, resumed) = ws.resume(seen).await;
    assert_eq!(events.len(), 50, "{resumed}");
    let got = ids(&events);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    assert!(got[0] > seen);
    assert_eq!(events.iter().map(order_of).collect::<Vec<_>>(), placed);
    assert_eq!(resumed["replayed"], 50);
    assert_eq!(resumed["complete"], true);
    assert_eq!(resumed["lastEventId"].as_i64(), got.last().copied());

    // Live again, without a gap.
    let live = r.place(&student, a.vendor.id, a.items[0].id).await;
    r.drain().await;
    let e = ws.event().await;
    assert_eq!(order_of(&e), live);
    assert!(e["id"].as_i64().unwrap() > got[49]);
    // Resuming again on the same connection sends nothing twice.
    let (again, resumed) = ws.resume(seen).await;
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(resumed["replayed"], 0);

    // The same through `?after=`: replayed before any live event.
    let req = request(
        r.server.addr,
        &format!("?after={seen}"),
        Some(&student.access),
    );
    let mut ws2 = WsClient::connect_request(req).await;
    let (events, resumed) = ws2.events_until("resumed").await;
    assert_eq!(events.len(), 51);
    assert_eq!(resumed["complete"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_also_sends_a_lower_id_that_was_published_after_the_cursor() {
    let r = rig().await;
    let a = &r.world.a;
    let student = r.http.login(&a.student.email).await;
    let row = |n: i32| NewOutboxEventRow {
        aggregate_type: "order".to_owned(),
        aggregate_id: Uuid::now_v7(),
        aggregate_version: n,
        event_type: "order.created".to_owned(),
        payload: json!({ "n": n }),
        campus_id: Some(a.campus.id),
        vendor_id: Some(a.vendor.id.into()),
        user_id: Some(student.user_id),
    };
    // Transaction 1 takes the lower id but commits after transaction 2.
    let mut late_conn = AsyncPgConnection::establish(&r.db.url).await.unwrap();
    late_conn.batch_execute("BEGIN").await.unwrap();
    let low = outbox::insert_event(&mut late_conn, &row(1)).await.unwrap();
    let high = {
        let mut c = r.ctx.db.conn().await.unwrap();
        outbox::insert_event(&mut c, &row(2)).await.unwrap()
    };
    assert!(low < high);
    let mut ws = r.connect(&student).await;
    r.drain().await;
    assert_eq!(ws.event().await["id"].as_i64(), Some(high));
    ws.close().await;
    late_conn.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        r.drain().await,
        1,
        "no last-id cursor: the late row is published"
    );

    let mut ws = r.connect(&student).await;
    let (events, resumed) = ws.resume(high).await;
    assert_eq!(ids(&events), vec![low], "{resumed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_disconnected_while_others_keep_up() {
    let r = rig_with(|c| c.ws.send_queue = 32).await;
    let a = &r.world.a;
    let student = r.http.login(&a.student.email).await;
    let staff = r.http.login(&a.staff.email).await;

    // The slow client: a tiny receive buffer, and it does not read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(r.server.addr).await.unwrap();
    let (stream, _) = tokio_tungstenite::client_async(
        request(r.server.addr, "", Some(&student.access)),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .unwrap();
    let mut slow = WsClient::after_handshake(stream).await;
    let mut fast = r.connect(&staff).await;
    assert_eq!(r.ctx.hub.len(), 2);

    // Big synthetic events straight onto the channel, paced by the fast client.
    let (next_id, received) = r
        .flood(&mut fast, &student, (1_000_000, 1_010_000), 20, 16)
        .await;
    assert_eq!(
        received,
        (1_000_001..=next_id).collect::<Vec<_>>(),
        "the fast client got everything, in order"
    );
    assert_eq!(r.ctx.hub.len(), 1);
    eprintln!(
        "slow reader dropped after {} events of 16 KiB",
        next_id - 1_000_000
    );
    // What was already on the wire arrives, then the close that says "resume".
    assert_eq!(slow.close_code(WAIT).await, Some(4008));
    let metrics = r.ctx.metrics.render();
    assert!(metrics.contains("active_socket_connections"), "{metrics}");
    assert!(
        metrics.contains(r#"ws_disconnects_total{reason="slow_consumer"}"#),
        "{metrics}"
    );
}

/// Issue 17 item 12: what sits between a slow reader and its 4008 close frame is bounded
/// by the application's queue, not by megabytes of autotuned kernel send buffer. The slow
/// client (default socket buffers) reads nothing until the hub drops it, then reads
/// everything: the close frame comes after at most about a megabyte, not after the whole
/// kernel buffer. Events go out in batches paced by a fast client, so the slow client's
/// queue drains into its socket for as long as the kernel takes more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_readers_close_frame_is_not_stuck_behind_the_kernel_send_buffer() {
    let r = rig_with(|c| c.ws.send_queue = 32).await;
    let a = &r.world.a;
    let student = r.http.login(&a.student.email).await;
    let staff = r.http.login(&a.staff.email).await;
    let mut slow = WsClient::connect(r.server.addr, &student.access).await;
    let mut fast = r.connect(&staff).await;
    assert_eq!(r.ctx.hub.len(), 2);

    let (next_id, _) = r
        .flood(&mut fast, &student, (2_000_000, 2_050_000), 16, 4)
        .await;
    let published = next_id - 2_000_000;
    let (bytes, code) = slow.bytes_until_close(WAIT).await;
    eprintln!(
        "slow reader: dropped after {published} events of 4 KiB were published; {} KiB arrived before its close frame",
        bytes / 1024
    );
    assert_eq!(
        code,
        Some(4008),
        "the close frame arrived ({bytes} bytes before it)"
    );
    assert!(
        bytes < 1024 * 1024,
        "{} KiB were queued ahead of the close frame: the kernel buffer, not the send queue, was the limit",
        bytes / 1024
    );
}

/// Issue 17 item 12, RFC 6455 §5.5.1: a client's close frame is answered with one carrying
/// its status code (a reserved code with 1002), before the connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_frame_is_echoed() {
    let r = rig().await;
    let a = &r.world.a;
    let student = r.http.login(&a.student.email).await;
    for (sent, echoed) in [(1000_u16, 1000_u16), (4321, 4321), (1001, 1001)] {
        let mut ws = WsClient::connect(r.server.addr, &student.access).await;
        assert_eq!(
            ws.close_and_await_echo(sent, WAIT).await,
            Some(echoed),
            "close {sent}"
        );
    }
    let metrics = r.ctx.metrics.render();
    assert!(
        metrics.contains(r#"ws_disconnects_total{reason="client"}"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_authenticated_and_capped() {
    let r = rig_with(|c| c.ws.max_per_user = 2).await;
    let a = &r.world.a;
    let student = r.http.login(&a.student.email).await;

    let http = crate::support::client(Duration::from_secs(5));
    let res = http.get(r.server.url("/ws")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let res = http
        .get(r.server.url("/ws"))
        .bearer_auth(&student.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "a plain GET is not an upgrade");
    assert_eq!(
        try_connect(request(r.server.addr, "", Some("not-a-token")))
            .await
            .err(),
        Some(401)
    );

    // Token as a sub-protocol (browsers): the server selects itsur.v1, never the token.
    let mut req = request(r.server.addr, "", None);
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("itsur.v1, bearer.{}", student.access)
            .parse()
            .unwrap(),
    );
    let (stream, res) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(res.headers()["sec-websocket-protocol"], "itsur.v1");
    let first = WsClient::after_handshake(stream).await;
    // Token in the query.
    let second = WsClient::connect_request(request(
        r.server.addr,
        &format!("?token={}", student.access),
        None,
    ))
    .await;
    assert_eq!(
        try_connect(request(r.server.addr, "", Some(&student.access)))
            .await
            .err(),
        Some(429),
        "WS_MAX_CONNECTIONS_PER_USER"
    );
    first.close().await;
    assert!(eventually(WAIT, || async { r.ctx.hub.len() == 1 }).await);
    let _third = r.connect(&student).await;
    second.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_survive_a_redis_outage_and_catch_up_after_it() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let (proxy, via) = ChaosProxy::in_front_of(&redis.url).await;
    // The gateway reaches Redis through the proxy; the relay directly.
    let mut config = config_for(&db.url, Some(&redis));
    config.redis.url = Some(itsur::config::Secret::new(via));
    let gateway_ctx = Ctx::new(config).unwrap();
    let relay_ctx = Ctx::new(config_for(&db.url, Some(&redis))).unwrap();
    let world = World::create(&relay_ctx).await;
    let server = TestServer::start(gateway_ctx.clone());
    wait_subscribed(&redis.url, &redis.prefix, 1).await;
    let http = Http::new(&server);
    let student = http.login(&world.a.student.email).await;
    let mut ws = WsClient::connect(server.addr, &student.access).await;
    let mut relay = Relay::new(relay_ctx.clone());

    proxy.cut();
    wait_subscribed(&redis.url, &redis.prefix, 0).await;
    let count = || {
        let redis = redis::Client::open(redis.url.as_str()).unwrap();
        let channel = format!("{}:events", redis_prefix(&relay_ctx));
        async move {
            let mut c = redis.get_multiplexed_async_connection().await.unwrap();
            let v: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(channel)
                .query_async(&mut c)
                .await
                .unwrap();
            v[0].1
        }
    };
    assert!(eventually(WAIT, || async { count().await == 0 }).await);
    let (vendor, item) = (world.a.vendor.id, world.a.items[0].id);
    let mut placed = Vec::new();
    for _ in 0..3 {
        placed.push(place(&http, &student, vendor, item).await);
    }
    assert_eq!(relay.drain().await.unwrap().published, 3);
    // Nobody heard them live; the socket is still open.
    assert!(ws.sync().await.is_empty());

    proxy.restore();
    let caught_up = ws.events(3).await;
    assert_eq!(caught_up.iter().map(order_of).collect::<Vec<_>>(), placed);
    // And live delivery works again.
    let id = place(&http, &student, vendor, item).await;
    relay.drain().await.unwrap();
    assert_eq!(order_of(&ws.event().await), id);
}

/// Issue 17 item 11: a Redis that hangs instead of dying (SIGSTOP of a private
/// redis-server: connections stay open, nothing is answered, nothing is closed). The
/// gateway's PING misses its deadline, so the subscription is declared lost while Redis is
/// still frozen; once Redis thaws it is renewed and the socket catches up from the outbox
/// with what was committed meanwhile (events no relay delivered to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_is_noticed_and_sockets_catch_up_once_it_thaws() {
    let private = PrivateRedis::start().await;
    let db = TestDb::new().await;
    let redis = TestRedis {
        url: private.url.clone(),
        prefix: TestRedis::new().prefix.clone(),
    };
    let ctx = Ctx::new(config_for(&db.url, Some(&redis))).unwrap();
    let world = World::create(&ctx).await;
    let server = TestServer::start(ctx.clone());
    wait_subscribed(&redis.url, &redis.prefix, 1).await;
    let http = Http::new(&server);
    let student = http.login(&world.a.student.email).await;
    let mut ws = WsClient::connect(server.addr, &student.access).await;
    let kv = ctx.kv.clone().unwrap();
    assert!(kv.events_feed_up());

    private.freeze();
    // Within two PING rounds (2 s apart, 2 s deadline) and some slack for a loaded machine;
    // the former 15 s period with a 5 s deadline mostly missed a freeze this short.
    assert!(
        eventually(Duration::from_secs(8), || async { !kv.events_feed_up() }).await,
        "the frozen subscription was not noticed"
    );
    let row = |n: i32| NewOutboxEventRow {
        aggregate_type: "order".to_owned(),
        aggregate_id: Uuid::now_v7(),
        aggregate_version: n,
        event_type: "order.created".to_owned(),
        payload: json!({ "n": n }),
        campus_id: Some(world.a.campus.id),
        vendor_id: Some(world.a.vendor.id.into()),
        user_id: Some(student.user_id),
    };
    let committed = {
        let mut c = ctx.db.conn().await.unwrap();
        vec![
            outbox::insert_event(&mut c, &row(1)).await.unwrap(),
            outbox::insert_event(&mut c, &row(2)).await.unwrap(),
        ]
    };

    private.thaw();
    assert_eq!(
        ids(&ws.events(2).await),
        committed,
        "caught up after the thaw"
    );
    assert!(kv.events_feed_up(), "subscribed again");
}

fn redis_prefix(ctx: &Ctx) -> String {
    ctx.kv.as_ref().unwrap().keys.prefix().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_after_the_idle_timeout() {
    let r = rig_with(|c| {
        c.ws.ping_interval = Duration::from_millis(200);
        c.ws.idle_timeout = Duration::from_millis(600);
    })
    .await;
    let student = r.http.login(&r.world.a.student.email).await;
    let mut ws = r.connect(&student).await;
    // Not reading means not answering pings.
    assert!(eventually(WAIT, || async { r.ctx.hub.is_empty() }).await);
    assert_eq!(ws.close_code(WAIT).await, Some(4000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_closes_once_its_session_is_revoked() {
    let r = rig_with(|c| c.ws.session_recheck = Duration::from_millis(200)).await;
    let student = r.http.login(&r.world.a.student.email).await;
    let mut ws = r.connect(&student).await;
    assert!(
        ws.sync().await.is_empty(),
        "still open while the session lives"
    );
    let res = r
        .http
        .send(
            reqwest::Method::POST,
            "/auth/logout",
            student.token(),
            &[],
            None,
        )
        .await;
    assert_eq!(res.status, 204, "{}", res.text());
    assert_eq!(ws.close_code(WAIT).await, Some(4001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_sockets_to_reconnect_elsewhere() {
    let r = rig().await;
    let student = r.http.login(&r.world.a.student.email).await;
    let mut ws = r.connect(&student).await;
    r.server.shutdown.trigger();
    assert_eq!(ws.close_code(WAIT).await, Some(1012));
    tokio::time::timeout(WAIT, r.server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_relay_feeds_the_in_process_hub() {
    let db = TestDb::new().await;
    let ctx = crate::support::ctx_for(&db.url, None);
    let world = World::create(&ctx).await;
    let server = TestServer::start(ctx.clone());
    let http = Http::new(&server);
    let student = http.login(&world.a.student.email).await;
    let mut ws = WsClient::connect(server.addr, &student.access).await;
    let mut relay = Relay::new(ctx.clone());
    assert_eq!(relay.sink_names(), ["hub", "enqueue_push"]);
    let res = http
        .post(
            "/orders",
            student.token(),
            &order_body(world.a.vendor.id, world.a.items[0].id, 1),
        )
        .await;
    relay.drain().await.unwrap();
    assert_eq!(order_of(&ws.event().await), res.id());
    let mut conn = ctx.db.conn().await.unwrap();
    let sinks: Vec<Vec<String>> = outbox_events::table
        .select(outbox_events::sinks_done)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        sinks,
        vec![vec!["hub".to_owned(), "enqueue_push".to_owned()]]
    );
}
