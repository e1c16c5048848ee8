//! Dependency outages made with a ChaosProxy: Redis cut (the API keeps serving with local
//! limits, sessions checked in Postgres, shared limits resume by themselves) and Postgres
//! cut (503 + Retry-After, readiness false, recovery without restart, no order lost or
//! duplicated across idempotent retries).

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::test::TestRequest;
use itsur::app::Ctx;
use itsur::config::{Quota, RateLimits, Secret};

use crate::support::chaos::ChaosProxy;
use crate::support::config_for;
use crate::support::fixtures::{Api, Resp, World, order_body, stock_of};
use crate::support::{TestDb, TestRedis, eventually};

async fn zcard(redis: &TestRedis, key: &str) -> u64 {
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("ZCARD")
        .arg(format!("{}:{key}", redis.prefix))
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[actix_web::test]
async fn redis_outage_keeps_the_api_serving_with_local_limits_then_sharing_resumes() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let (proxy, via) = ChaosProxy::in_front_of(&redis.url).await;
    let mut config = config_for(&db.url, Some(&redis));
    config.redis.url = Some(Secret::new(via));
    config.edge.rate_limits = RateLimits {
        ip: Some(Quota::per_minute(20)),
        ..RateLimits::off()
    };
    let ctx = Ctx::new(config).unwrap();
    World::create(&ctx).await;
    let api = Api::new(ctx.clone()).await;
    let student = api.login("student@a.edu").await;
    let from: SocketAddr = "198.51.100.30:1".parse().unwrap();
    let list = || {
        TestRequest::get()
            .uri("/orders")
            .peer_addr(from)
            .insert_header(("Authorization", format!("Bearer {}", student.access)))
    };

    for _ in 0..3 {
        assert_eq!(api.send(list()).await.status, 200);
    }
    assert_eq!(
        zcard(&redis, "rate:ip:198.51.100.30").await,
        3,
        "decided in Redis"
    );

    proxy.cut();
    // The logged-in user stays logged in (session checked in Postgres) and the limiter
    // answers locally, with a fresh per-process window of 20.
    for i in 0..20 {
        let res = api.send(list()).await;
        assert_eq!(
            res.status,
            200,
            "request {i} during the outage: {}",
            res.text()
        );
        assert_eq!(res.header("ratelimit-limit"), Some("20"));
    }
    let res = api.send(list()).await;
    res.assert_problem(429);
    assert!(ctx.limiter.is_degraded());
    assert!(ctx.metrics.render().contains("rate_limit_fallback_total"));

    proxy.restore();
    // Shared limits resume without a restart: new decisions land in Redis again.
    let resumed = eventually(Duration::from_secs(15), || async {
        let res = api.send(list()).await;
        res.status == 200 && zcard(&redis, "rate:ip:198.51.100.30").await > 3
    })
    .await;
    assert!(resumed, "limits are shared again once Redis is back");
    assert!(!ctx.limiter.is_degraded());
    let res = api.send(list()).await;
    let remaining: u64 = res.header("ratelimit-remaining").unwrap().parse().unwrap();
    assert_eq!(remaining, 20 - zcard(&redis, "rate:ip:198.51.100.30").await);
}

#[actix_web::test]
async fn postgres_outage_answers_503_then_recovers_without_losing_or_duplicating_orders() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let (proxy, via) = ChaosProxy::in_front_of(&db.url).await;
    let mut config = config_for(&via, Some(&redis));
    config.database.connect_timeout = Duration::from_millis(500);
    let ctx = Ctx::new(config).unwrap();
    let world = World::create(&ctx).await;
    let api = Api::new(ctx.clone()).await;
    let student = api.login("student@a.edu").await;
    let item = world.a.items[0].id;
    let stock_before = stock_of(&ctx, item).await;
    let place = |key: &'static str| {
        api.send(
            TestRequest::post()
                .uri("/orders")
                .insert_header(("Authorization", format!("Bearer {}", student.access)))
                .insert_header(("Idempotency-Key", key))
                .set_json(order_body(world.a.vendor.id, item, 2)),
        )
    };
    let ready = |expected: u16| {
        let api = api.clone();
        async move {
            eventually(Duration::from_secs(15), || async {
                api.get("/health/ready", None).await.status == expected
            })
            .await
        }
    };

    let before = place("lunch-before").await;
    assert_eq!(before.status, 201, "{}", before.text());

    proxy.cut();
    let res: Resp = place("lunch-during").await;
    res.assert_problem(503);
    let retry: u64 = res.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert!(
        ready(503).await,
        "readiness turns false while Postgres is down"
    );

    proxy.restore();
    assert!(ready(200).await, "readiness recovers without a restart");
    // The client retries with the same key: exactly one order, whatever the number of tries.
    let during = place("lunch-during").await;
    assert_eq!(during.status, 201, "{}", during.text());
    assert_eq!(during.header("idempotent-replayed"), None);
    let again = place("lunch-during").await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.id(), during.id());
    let first_again = place("lunch-before").await;
    assert_eq!(first_again.id(), before.id());

    let list = api.get("/orders?limit=100", student.token()).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.body["pagination"]["total"], 2, "{}", list.text());
    assert_eq!(stock_of(&ctx, item).await, stock_before - 4);
}
