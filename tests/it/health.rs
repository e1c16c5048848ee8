//! Health, readiness, metrics and the HTTP basics every route shares.

use std::time::Duration;

use actix_web::test;
use serde_json::Value;

use crate::support::chaos::ChaosProxy;
use crate::support::{TestApp, TestDb, TestServer, client, config_for, ctx_for, eventually};

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

/// Issue 17 item 10: a read replica that goes away (cut, then hanging) is not a reason to
/// leave the load balancer. Readiness stays 200, reads are served by the primary, and the
/// replica's state shows in `/health` (degraded) and in `db_replica_up`; once it is back,
/// reads return to it without a restart.
#[actix_web::test]
async fn a_down_read_replica_sends_reads_to_the_primary_and_keeps_readiness() {
    let db = TestDb::new().await;
    let (replica, via_replica) = ChaosProxy::in_front_of(&db.url).await;
    let mut config = config_for(&db.url, None);
    config.database.read_url = Some(itsur::config::Secret::new(via_replica));
    let ctx = itsur::app::Ctx::new(config).unwrap();
    let server = TestServer::start(ctx);
    let http = client(Duration::from_secs(5));
    let get = |path: &'static str| {
        let http = http.clone();
        let url = server.url(path);
        async move {
            match http.get(url).send().await {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(_) => (0, String::new()),
            }
        }
    };
    let replica_status = |body: &str| -> String {
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        v["report"]["components"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == "postgres_replica"))
            .map(|c| c["status"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    let gauge = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.split([' ', '{']).next() == Some(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };

    assert!(
        eventually(Duration::from_secs(10), || async {
            let (s, body) = get("/health").await;
            s == 200 && replica_status(&body) == "up"
        })
        .await,
        "replica up at start"
    );
    assert_eq!(get("/campuses").await.0, 200);

    for (outage, cut) in [("cut", true), ("hang", false)] {
        if cut {
            replica.cut();
        } else {
            replica.hang();
        }
        // Reads keep working throughout (a hanging replica costs them at most the replica
        // checkout deadline before they take the primary).
        for _ in 0..5 {
            let (s, body) = get("/campuses").await;
            assert_eq!(
                s, 200,
                "{outage}: a read failed with the replica down: {body}"
            );
        }
        assert!(
            eventually(Duration::from_secs(15), || async {
                let (s, body) = get("/health").await;
                s == 200 && replica_status(&body) == "degraded"
            })
            .await,
            "{outage}: /health shows the replica degraded, and stays 200"
        );
        let (s, body) = get("/health").await;
        assert_eq!(s, 200, "{body}");
        assert!(body.contains("reads go to the primary"), "{body}");
        assert_eq!(
            get("/health/ready").await.0,
            200,
            "{outage}: readiness kept"
        );
        let (_, metrics) = get("/metrics").await;
        assert_eq!(gauge(&metrics, "db_replica_up"), Some(0.0), "{metrics}");
        assert!(
            gauge(&metrics, "db_read_fallback_total").unwrap_or(0.0) >= 1.0,
            "{metrics}"
        );
        assert_eq!(get("/campuses").await.0, 200);

        replica.restore();
        assert!(
            eventually(Duration::from_secs(20), || async {
                let (_, body) = get("/health").await;
                let (_, metrics) = get("/metrics").await;
                replica_status(&body) == "up" && gauge(&metrics, "db_replica_up") == Some(1.0)
            })
            .await,
            "{outage}: the replica is used again once it answers"
        );
    }
}
