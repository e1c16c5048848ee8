//! Edge protection through the production app factory: shared rate limits, trusted proxies,
//! login/order buckets, security headers, CORS, body limits, load shedding and the request
//! deadline.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::test::TestRequest;
use itsur::app::Ctx;
use itsur::config::{Config, CorsConfig, Quota, RateLimits};
use serde_json::json;

use crate::support::chaos::ChaosProxy;
use crate::support::config_for;
use crate::support::fixtures::{Api, PASSWORD, Resp, World, order_body};
use crate::support::{TestDb, TestRedis};

fn peer(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ctx_with(config: Config) -> Ctx {
    Ctx::new(config).unwrap()
}

fn get(path: &str, from: &str) -> TestRequest {
    TestRequest::get().uri(path).peer_addr(peer(from))
}

#[track_caller]
fn assert_limited(res: &Resp, limit: u32) {
    res.assert_problem(429);
    let retry: u64 = res.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(res.header("ratelimit-limit"), Some(&*limit.to_string()));
    assert_eq!(res.header("ratelimit-remaining"), Some("0"));
    let reset: u64 = res.header("ratelimit-reset").unwrap().parse().unwrap();
    assert!((1..=60).contains(&reset), "RateLimit-Reset {reset}");
}

#[actix_web::test]
async fn two_instances_sharing_redis_allow_exactly_the_limit_in_total() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let mut config = config_for(&db.url, Some(&redis));
    config.edge.rate_limits = RateLimits {
        ip: Some(Quota::per_minute(100)),
        ..RateLimits::off()
    };
    // Two `serve` instances: separate pools, limiters and apps on one Redis prefix.
    let a = Api::new(ctx_with(config.clone())).await;
    let b = Api::new(ctx_with(config)).await;

    let (mut ok, mut limited) = (0_u32, 0_u32);
    let mut last_remaining = u32::MAX;
    for i in 0..300 {
        let api = if i % 2 == 0 { &a } else { &b };
        let res = api.send(get("/campuses", "203.0.113.7:40000")).await;
        match res.status {
            200 => {
                ok += 1;
                assert_eq!(res.header("ratelimit-limit"), Some("100"));
                let remaining: u32 = res.header("ratelimit-remaining").unwrap().parse().unwrap();
                assert!(
                    remaining < last_remaining,
                    "remaining counts down across instances"
                );
                last_remaining = remaining;
                assert!(res.header("ratelimit-reset").is_some());
            }
            429 => {
                limited += 1;
                assert_limited(&res, 100);
            }
            other => panic!("unexpected {other}: {}", res.text()),
        }
    }
    assert!((99..=101).contains(&ok), "allowed {ok} of 300 (limit 100)");
    assert_eq!(ok + limited, 300);
    assert_eq!(last_remaining, 0);
    let metrics = itsur::telemetry::install_metrics().render();
    assert!(
        metrics.contains("rate_limit_rejections_total{bucket=\"ip\"}"),
        "{metrics}"
    );

    // Another client is not affected; the decisions were taken in Redis.
    let res = b.send(get("/campuses", "203.0.113.8:40000")).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("ratelimit-remaining"), Some("99"));
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let n: u64 = redis::cmd("ZCARD")
        .arg(format!("{}:rate:ip:203.0.113.7", redis.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, u64::from(ok));
}

#[actix_web::test]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let mut config = config_for(&db.url, Some(&redis));
    config.edge.rate_limits = RateLimits {
        ip: Some(Quota::per_minute(2)),
        ..RateLimits::off()
    };
    config.edge.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    let api = Api::new(ctx_with(config)).await;
    let via = |from: &str, xff: &str| {
        get("/campuses", from).insert_header(("X-Forwarded-For", xff.to_owned()))
    };

    // An untrusted peer's X-Forwarded-For is ignored: a new value per request does not help.
    for (i, expected) in [200, 200, 429, 429].into_iter().enumerate() {
        let res = api
            .send(via("198.51.100.1:5000", &format!("192.0.2.{i}")))
            .await;
        assert_eq!(res.status, expected, "untrusted request {i}");
    }
    // From nginx (trusted) the forwarded client is the subject.
    for expected in [200, 200, 429] {
        let res = api.send(via("10.0.0.2:5000", "203.0.113.50")).await;
        assert_eq!(res.status, expected);
    }
    let res = api.send(via("10.0.0.2:5000", "203.0.113.51")).await;
    assert_eq!(
        res.status, 200,
        "another client behind the same proxy has its own quota"
    );
    // A client forging the left part of the header is still counted by its real address
    // (the right-most untrusted hop).
    let res = api
        .send(via("10.0.0.2:5000", "192.0.2.77, 203.0.113.50"))
        .await;
    assert_eq!(res.status, 429);
    // Health probes are never limited.
    let res = api.send(get("/health/live", "198.51.100.1:5000")).await;
    assert_eq!(res.status, 200);
}

#[actix_web::test]
async fn login_register_orders_and_user_buckets() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let mut config = config_for(&db.url, Some(&redis));
    config.edge.rate_limits = RateLimits {
        ip: None,
        user: Some(Quota::per_minute(8)),
        auth: Some(Quota::per_minute(6)),
        login: Some(Quota::per_minute(3)),
        orders: Some(Quota::per_minute(2)),
    };
    let ctx = ctx_with(config);
    let world = World::create(&ctx).await;
    let api = Api::new(ctx).await;
    let login = |email: &str, password: &str, from: &str| {
        TestRequest::post()
            .uri("/auth/login")
            .peer_addr(peer(from))
            .set_json(json!({ "email": email, "password": password }))
    };

    // Password guessing on one account from one IP: 3 tries, then 429 even with the right
    // password; the same IP may still log in to another account.
    for _ in 0..3 {
        let res = api
            .send(login("student@a.edu", "wrong-password", "198.51.100.9:1"))
            .await;
        res.assert_problem(401);
    }
    let res = api
        .send(login("student@a.edu", PASSWORD, "198.51.100.9:1"))
        .await;
    assert_limited(&res, 3);
    let res = api
        .send(login("student2@a.edu", PASSWORD, "198.51.100.9:1"))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    // Login and register share the per-IP auth bucket (6): 5 logins used it (the refused
    // one too: the auth bucket said yes before the login bucket said no), 1 register left.
    for expected in [400, 429] {
        let res = api
            .send(
                TestRequest::post()
                    .uri("/auth/register")
                    .peer_addr(peer("198.51.100.9:1"))
                    .set_json(json!({ "email": "x", "password": "y", "displayName": "z" })),
            )
            .await;
        assert_eq!(res.status, expected, "{}", res.text());
    }

    // Orders: 2 per minute per user; reads of the same user are not in that bucket.
    let student = api.login("student@b.edu").await;
    let order = |key: &str| {
        TestRequest::post()
            .uri("/orders")
            .peer_addr(peer("198.51.100.20:1"))
            .insert_header(("Authorization", format!("Bearer {}", student.access)))
            .insert_header(("Idempotency-Key", key.to_owned()))
            .set_json(order_body(world.b.vendor.id, world.b.items[0].id, 1))
    };
    assert_eq!(api.send(order("k1")).await.status, 201);
    assert_eq!(api.send(order("k2")).await.status, 201);
    assert_limited(&api.send(order("k3")).await, 2);
    let res = api.get("/orders", student.token()).await;
    assert_eq!(res.status, 200);

    // The user bucket (8) counts every authenticated request of that user, whatever its IP:
    // 3 orders + 1 list so far.
    for i in 0..4 {
        let res = api.get("/orders", student.token()).await;
        assert_eq!(res.status, 200, "request {i}");
    }
    assert_limited(&api.get("/orders", student.token()).await, 8);
    // Anonymous requests are not in any user's bucket.
    assert_eq!(api.get("/campuses", None).await.status, 200);
}

#[actix_web::test]
async fn security_headers_cors_and_body_limits() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let mut config = config_for(&db.url, Some(&redis));
    config.edge.cors = CorsConfig {
        origins: vec!["https://app.a.edu".to_owned()],
        allow_credentials: true,
        max_age: Duration::from_secs(600),
    };
    config.edge.json_body_limit = 2048;
    config.edge.auth_body_limit = 512;
    config.edge.hsts_max_age = Some(Duration::from_secs(86_400));
    let ctx = ctx_with(config);
    World::create(&ctx).await;
    let api = Api::new(ctx).await;

    let res = api.get("/campuses", None).await;
    assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(res.header("x-frame-options"), Some("DENY"));
    assert_eq!(res.header("referrer-policy"), Some("no-referrer"));
    assert!(
        res.header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );
    assert_eq!(
        res.header("strict-transport-security"),
        Some("max-age=86400; includeSubDomains")
    );
    let student = api.login("student@a.edu").await;
    let res = api.get("/orders", student.token()).await;
    assert_eq!(res.header("cache-control"), Some("no-store"));
    // Errors carry them too.
    let res = api.get("/nowhere", None).await;
    res.assert_problem(404);
    assert_eq!(res.header("x-content-type-options"), Some("nosniff"));

    // CORS: preflight from an allowed origin, with credentials (so the origin is echoed,
    // never `*`).
    let preflight = |origin: &str| {
        TestRequest::default()
            .method(actix_web::http::Method::OPTIONS)
            .uri("/orders")
            .insert_header(("Origin", origin.to_owned()))
            .insert_header(("Access-Control-Request-Method", "POST"))
            .insert_header((
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ))
    };
    let res = api.send(preflight("https://app.a.edu")).await;
    assert_eq!(res.status, 204);
    assert_eq!(
        res.header("access-control-allow-origin"),
        Some("https://app.a.edu")
    );
    assert_eq!(res.header("access-control-allow-credentials"), Some("true"));
    assert!(
        res.header("access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );
    assert!(
        res.header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    assert_eq!(res.header("access-control-max-age"), Some("600"));
    let res = api.send(preflight("https://evil.example")).await;
    res.assert_problem(403);
    assert_eq!(res.header("access-control-allow-origin"), None);

    let res = api
        .send(
            TestRequest::get()
                .uri("/campuses")
                .insert_header(("Origin", "https://app.a.edu")),
        )
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.header("access-control-allow-origin"),
        Some("https://app.a.edu")
    );
    assert!(
        res.header("access-control-expose-headers")
            .unwrap()
            .contains("retry-after")
    );
    let res = api
        .send(
            TestRequest::get()
                .uri("/campuses")
                .insert_header(("Origin", "https://evil.example")),
        )
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("access-control-allow-origin"), None);

    // Body limits per route: JSON (2 KiB here) and the smaller /auth limit (512 B).
    let big = json!({ "vendorId": uuid::Uuid::nil(), "items": [], "note": "x".repeat(3000) });
    let res = api.post("/orders", student.token(), &big).await;
    res.assert_problem(413);
    let big_login = json!({ "email": "student@a.edu", "password": "p".repeat(1000) });
    let res = api.post("/auth/login", None, &big_login).await;
    res.assert_problem(413);
}

#[actix_web::test]
async fn load_is_shed_with_503_and_retry_after() {
    let db = TestDb::new().await;
    let mut config = config_for(&db.url, None);
    config.edge.max_in_flight = 2;
    let ctx = ctx_with(config);
    let api = Api::new(ctx.clone()).await;

    // Two requests in flight (held here, as a slow handler would hold them).
    let held = ctx.in_flight.clone().acquire_many_owned(2).await.unwrap();
    let res = api.get("/campuses", None).await;
    res.assert_problem(503);
    assert_eq!(res.header("retry-after"), Some("1"));
    // Probes still answer: an overloaded instance is alive.
    assert_eq!(api.get("/health/live", None).await.status, 200);
    drop(held);
    assert_eq!(api.get("/campuses", None).await.status, 200);
}

#[actix_web::test]
async fn a_hanging_postgres_cannot_hang_a_request_past_the_deadline() {
    let db = TestDb::new().await;
    let (proxy, via) = ChaosProxy::in_front_of(&db.url).await;
    let mut config = config_for(&via, None);
    // The pool would wait 30 s; the request deadline is what must answer.
    config.database.connect_timeout = Duration::from_secs(30);
    config.edge.request_timeout = Duration::from_millis(300);
    let api = Api::new(ctx_with(config)).await;
    assert_eq!(api.get("/campuses", None).await.status, 200);

    proxy.hang();
    let res = api.get("/campuses", None).await;
    res.assert_problem(503);
    assert!(
        res.body["detail"]
            .as_str()
            .unwrap()
            .contains("took too long"),
        "{}",
        res.text()
    );
    assert_eq!(res.header("retry-after"), Some("1"));
    proxy.restore();
    let back = crate::support::eventually(Duration::from_secs(20), || async {
        api.get("/campuses", None).await.status == 200
    })
    .await;
    assert!(back, "recovers without a restart");
}

/// Sends a POST with a chunked body (no Content-Length) over a raw connection and returns
/// the status code.
async fn post_chunked(addr: SocketAddr, path: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(4096) {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(chunk);
        frame.extend_from_slice(b"\r\n");
        // The server may answer and close before the whole body is sent: that is the point.
        if stream.write_all(&frame).await.is_err() {
            break;
        }
    }
    // Both may fail once the server has answered and closed; the status was read by then.
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[actix_web::test]
async fn the_auth_body_limit_counts_the_bytes_of_chunked_bodies() {
    let db = TestDb::new().await;
    let config = config_for(&db.url, None);
    let limit = config.edge.auth_body_limit;
    let server = crate::support::TestServer::start(Ctx::new(config).unwrap());
    // Inside the JSON limit, beyond the auth limit, and declaring no length.
    let padding = "p".repeat(limit + 1024);
    for (path, body) in [
        (
            "/auth/login",
            json!({ "email": "a@a.edu", "password": padding }),
        ),
        (
            "/auth/register",
            json!({ "email": "a@a.edu", "password": padding, "displayName": "A" }),
        ),
        ("/auth/refresh", json!({ "refreshToken": padding })),
    ] {
        let body = serde_json::to_vec(&body).unwrap();
        assert_eq!(post_chunked(server.addr, path, &body).await, 413, "{path}");
    }
    // A small chunked body still reaches the handler.
    let small = serde_json::to_vec(&json!({ "refreshToken": "nope" })).unwrap();
    assert_eq!(
        post_chunked(server.addr, "/auth/refresh", &small).await,
        401
    );
    server.shutdown.trigger();
    server.task.await.unwrap().unwrap();
}
