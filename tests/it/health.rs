//! Health, readiness, metrics and the HTTP basics every route shares.

use std::time::Duration;

use actix_web::test;
use serde_json::Value;

use crate::support::chaos::ChaosProxy;
use crate::support::{TestApp, TestDb, TestServer, client, ctx_for, eventually};

#[actix_web::test]
async fn ready_live_and_metrics_in_process() {
    let t = TestApp::new().await;
    let app = test::init_service(itsur::http::app(t.ctx.clone())).await;

    let res = test::call_service(
        &app,
        test::TestRequest::get().uri("/health/live").to_request(),
    )
    .await;
    assert_eq!(res.status(), 200);

    let res = test::call_service(
        &app,
        test::TestRequest::get().uri("/health/ready").to_request(),
    )
    .await;
    assert_eq!(res.status(), 200);
    let body: Value = test::read_body_json(res).await;
    assert_eq!(body["status"], "ready");

    let res = test::call_service(&app, test::TestRequest::get().uri("/health").to_request()).await;
    assert_eq!(res.status(), 200);
    let body: Value = test::read_body_json(res).await;
    let names: Vec<&str> = body["report"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["postgres", "migrations", "redis"]);
    assert!(
        body["report"]["components"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "up")
    );

    let res = test::call_service(&app, test::TestRequest::get().uri("/metrics").to_request()).await;
    assert_eq!(res.status(), 200);
    let text = String::from_utf8(test::read_body(res).await.to_vec()).unwrap();
    assert!(
        text.contains(r#"http_requests_total{method="GET",path="/health/ready",status="200"}"#),
        "{text}"
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("pool_connections"), "{text}");
}

#[actix_web::test]
async fn unknown_route_is_a_problem_and_request_id_round_trips() {
    let t = TestApp::new().await;
    let app = test::init_service(itsur::http::app(t.ctx.clone())).await;

    let req = test::TestRequest::get()
        .uri("/no/such/route")
        .insert_header(("X-Request-Id", "req-42"))
        .to_request();
    let res = test::call_service(&app, req).await;
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers().get("x-request-id").unwrap(), "req-42");
    assert_eq!(
        res.headers().get("content-type").unwrap(),
        "application/problem+json"
    );
    let body: Value = test::read_body_json(res).await;
    assert_eq!(body["status"], 404);
    assert!(body["detail"].as_str().unwrap().contains("/no/such/route"));

    // A missing or unsafe id is replaced by a fresh one.
    let req = test::TestRequest::get()
        .uri("/health/live")
        .insert_header(("X-Request-Id", "bad id\twith spaces"))
        .to_request();
    let res = test::call_service(&app, req).await;
    let id = res
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(id, "bad id\twith spaces");
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
}

#[actix_web::test]
async fn readiness_is_false_while_migrations_are_pending() {
    let db = TestDb::empty().await;
    let ctx = ctx_for(&db.url, None);
    let app = test::init_service(itsur::http::app(ctx.clone())).await;
    ctx.readiness.refresh_now(&ctx).await;

    let res = test::call_service(&app, test::TestRequest::get().uri("/health").to_request()).await;
    assert_eq!(res.status(), 503);
    let body: Value = test::read_body_json(res).await;
    let migrations = body["report"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "migrations")
        .unwrap()
        .clone();
    assert_eq!(migrations["status"], "down");
    assert!(migrations["detail"].as_str().unwrap().contains("pending"));
    // Without Redis configured, Redis is reported disabled, not down.
    assert!(
        body["report"]["components"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "redis" && c["status"] == "disabled")
    );

    itsur::store::migrations::run(db.url.clone()).await.unwrap();
    let ready = eventually(Duration::from_secs(10), || async {
        let res = test::call_service(
            &app,
            test::TestRequest::get().uri("/health/ready").to_request(),
        )
        .await;
        res.status() == 200
    })
    .await;
    assert!(ready, "ready once migrated, without a restart");
}

#[actix_web::test]
async fn readiness_follows_postgres_outages_without_restart() {
    let db = TestDb::new().await;
    let (proxy, via_proxy) = ChaosProxy::in_front_of(&db.url).await;
    let ctx = ctx_for(&via_proxy, None);
    let server = TestServer::start(ctx);
    let http = client(Duration::from_secs(2));
    let status = |path: &'static str| {
        let http = http.clone();
        let url = server.url(path);
        async move {
            http.get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };

    assert!(
        eventually(Duration::from_secs(10), || async {
            status("/health/ready").await == 200
        })
        .await
    );

    // Connections reset and refused: readiness turns false, liveness stays true.
    proxy.cut();
    assert!(
        eventually(Duration::from_secs(10), || async {
            status("/health/ready").await == 503
        })
        .await
    );
    assert_eq!(status("/health/live").await, 200);

    // Back without restarting serve.
    proxy.restore();
    assert!(
        eventually(Duration::from_secs(15), || async {
            status("/health/ready").await == 200
        })
        .await
    );

    // A hanging Postgres (accepts, never answers): every probe still answers (the client
    // gives up after 2 s, which counts as 0 here), and readiness turns false.
    proxy.hang();
    let mut saw_unready = false;
    for _ in 0..80 {
        let s = status("/health/ready").await;
        assert_ne!(s, 0, "readiness probe hung");
        if s == 503 {
            saw_unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_unready, "readiness turned false while postgres hangs");
    proxy.restore();
    assert!(
        eventually(Duration::from_secs(15), || async {
            status("/health/ready").await == 200
        })
        .await
    );

    server.shutdown.trigger();
    server.task.await.unwrap().unwrap();
}
