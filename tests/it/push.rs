//! Push providers against a local server answering like FCM and OneSignal, and the circuit
//! breaker around them (shared through Redis between two "processes").

use std::collections::BTreeMap;
use std::time::Duration;

use itsur::clients::push::{
    BREAKER_FCM, Platform, PushClient, PushMessage, PushOutcome, PushTarget,
};
use itsur::config::{BreakerConfig, PushConfig, Secret};
use itsur::domain::job::JobState;
use itsur::kv::Kv;
use itsur::resilience::Breakers;
use itsur::resilience::breaker::State;

use crate::support::fake_push::{
    Answer, FakeProvider, fcm_error, fcm_invalid_token, fcm_ok, onesignal_invalid, onesignal_ok,
};
use crate::support::{TestRedis, eventually};

const FCM_TOKEN: &str = "fcm-access-token-not-for-logs";
const ONESIGNAL_KEY: &str = "os-rest-key-not-for-logs";

fn push_config(base: &str) -> PushConfig {
    PushConfig {
        fcm_base_url: base.to_owned(),
        fcm_project_id: Some("itsur-test".to_owned()),
        fcm_access_token: Some(Secret::new(FCM_TOKEN.to_owned())),
        onesignal_base_url: base.to_owned(),
        onesignal_app_id: Some("app-123".to_owned()),
        onesignal_api_key: Some(Secret::new(ONESIGNAL_KEY.to_owned())),
        timeout: Duration::from_millis(500),
    }
}

/// A breaker policy that never opens (for the classification tests).
fn lenient() -> BreakerConfig {
    BreakerConfig {
        min_calls: 1000,
        ..BreakerConfig::default()
    }
}

fn kv(redis: &TestRedis) -> Kv {
    Kv::new(&redis.url, None, &redis.prefix, 4).unwrap()
}

fn message() -> PushMessage {
    PushMessage {
        title: "Order ready".to_owned(),
        body: "Your burrito is ready at Cafeteria Central".to_owned(),
        data: BTreeMap::from([("orderId".to_owned(), "0190-abc".to_owned())]),
    }
}

fn fcm_device() -> PushTarget {
    PushTarget {
        platform: Platform::Fcm,
        token: "device-token-1".to_owned(),
    }
}

fn onesignal_device() -> PushTarget {
    PushTarget {
        platform: Platform::OneSignal,
        token: "sub-1".to_owned(),
    }
}

#[actix_web::test]
async fn fcm_request_shape_and_documented_outcomes() {
    let redis = TestRedis::new();
    let fake = FakeProvider::start(fcm_ok());
    let breakers = Breakers::new(Some(kv(&redis)), lenient());
    let client = PushClient::new(&push_config(&fake.base), &breakers);

    assert_eq!(
        client.send(&fcm_device(), &message()).await,
        PushOutcome::Delivered
    );
    let got = &fake.received()[0];
    assert_eq!(got.path, "/v1/projects/itsur-test/messages:send");
    assert_eq!(
        got.authorization.as_deref(),
        Some(&*format!("Bearer {FCM_TOKEN}"))
    );
    let m = &got.body["message"];
    assert_eq!(m["token"], "device-token-1");
    assert_eq!(m["notification"]["title"], "Order ready");
    assert_eq!(
        m["notification"]["body"],
        "Your burrito is ready at Cafeteria Central"
    );
    assert_eq!(m["data"]["orderId"], "0190-abc");

    fake.always(fcm_error(404, "NOT_FOUND", "UNREGISTERED", None));
    assert_eq!(
        client.send(&fcm_device(), &message()).await,
        PushOutcome::DropToken
    );

    fake.always(fcm_invalid_token());
    assert_eq!(
        client.send(&fcm_device(), &message()).await,
        PushOutcome::DropToken
    );

    fake.always(fcm_error(
        429,
        "RESOURCE_EXHAUSTED",
        "QUOTA_EXCEEDED",
        Some(17),
    ));
    match client.send(&fcm_device(), &message()).await {
        PushOutcome::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(17))),
        other => panic!("429 must be retried: {other:?}"),
    }

    fake.always(fcm_error(503, "UNAVAILABLE", "UNAVAILABLE", None));
    assert!(matches!(
        client.send(&fcm_device(), &message()).await,
        PushOutcome::Retry { after: None, .. }
    ));

    fake.always(fcm_error(500, "INTERNAL", "INTERNAL", Some(3)));
    assert!(matches!(
        client.send(&fcm_device(), &message()).await,
        PushOutcome::Retry { after: Some(d), .. } if d == Duration::from_secs(3)
    ));

    fake.always(fcm_error(
        401,
        "UNAUTHENTICATED",
        "THIRD_PARTY_AUTH_ERROR",
        None,
    ));
    match client.send(&fcm_device(), &message()).await {
        PushOutcome::Permanent(why) => {
            assert!(why.contains("FCM_ACCESS_TOKEN"), "{why}");
            assert!(
                !why.contains(FCM_TOKEN),
                "the reason never carries the credential"
            );
        }
        other => panic!("401 is a configuration error: {other:?}"),
    }

    // A provider slower than PUSH_TIMEOUT_MS is a retry, never a hang.
    fake.always(Answer::Slow(Duration::from_secs(3)));
    match client.send(&fcm_device(), &message()).await {
        PushOutcome::Retry { reason, .. } => assert!(reason.contains("timed out"), "{reason}"),
        other => panic!("a timeout is retried: {other:?}"),
    }
}

#[actix_web::test]
async fn onesignal_request_shape_and_documented_outcomes() {
    let redis = TestRedis::new();
    let fake = FakeProvider::start(onesignal_ok());
    let breakers = Breakers::new(Some(kv(&redis)), lenient());
    let client = PushClient::new(&push_config(&fake.base), &breakers);

    assert_eq!(
        client.send(&onesignal_device(), &message()).await,
        PushOutcome::Delivered
    );
    let got = &fake.received()[0];
    assert_eq!(got.path, "/notifications");
    assert_eq!(
        got.authorization.as_deref(),
        Some(&*format!("Key {ONESIGNAL_KEY}"))
    );
    assert_eq!(got.body["app_id"], "app-123");
    assert_eq!(
        got.body["include_subscription_ids"],
        serde_json::json!(["sub-1"])
    );
    assert_eq!(got.body["headings"]["en"], "Order ready");
    assert_eq!(
        got.body["contents"]["en"],
        "Your burrito is ready at Cafeteria Central"
    );
    assert_eq!(got.body["data"]["orderId"], "0190-abc");

    for key in ["invalid_player_ids", "invalid_subscription_ids"] {
        fake.always(onesignal_invalid(key, &["sub-1"]));
        assert_eq!(
            client.send(&onesignal_device(), &message()).await,
            PushOutcome::DropToken,
            "{key}"
        );
    }
    fake.always(Answer::Json(
        429,
        serde_json::json!({"errors": ["Rate limit exceeded"]}),
        Some(9),
    ));
    assert!(matches!(
        client.send(&onesignal_device(), &message()).await,
        PushOutcome::Retry { after: Some(d), .. } if d == Duration::from_secs(9)
    ));
    fake.always(Answer::Json(502, serde_json::json!({}), None));
    assert!(matches!(
        client.send(&onesignal_device(), &message()).await,
        PushOutcome::Retry { .. }
    ));
}

#[actix_web::test]
async fn unconfigured_providers_and_platforms_are_permanent() {
    let breakers = Breakers::new(None, lenient());
    let client = PushClient::new(&PushConfig::default(), &breakers);
    for device in [fcm_device(), onesignal_device()] {
        assert!(matches!(
            client.send(&device, &message()).await,
            PushOutcome::Permanent(_)
        ));
    }
    let apns = PushTarget {
        platform: Platform::Apns,
        token: "t".to_owned(),
    };
    assert!(matches!(
        client.send(&apns, &message()).await,
        PushOutcome::Permanent(_)
    ));
}

fn tripping() -> BreakerConfig {
    BreakerConfig {
        failure_ratio: 0.5,
        min_calls: 5,
        window: Duration::from_secs(60),
        consecutive_failures: None,
        cooldown: Duration::from_millis(400),
    }
}

#[actix_web::test]
async fn breaker_opens_stops_calls_trials_after_cooldown_and_closes_shared_through_redis() {
    let redis = TestRedis::new();
    let fake = FakeProvider::start(fcm_error(503, "UNAVAILABLE", "UNAVAILABLE", None));
    // Two processes: separate pools and registries on one Redis prefix.
    let breakers_a = Breakers::new(Some(kv(&redis)), tripping());
    let breakers_b = Breakers::new(Some(kv(&redis)), tripping());
    let a = PushClient::new(&push_config(&fake.base), &breakers_a);
    let b = PushClient::new(&push_config(&fake.base), &breakers_b);

    // A provider failing 100%: the first min_calls reach it, then the breaker opens.
    for _ in 0..5 {
        assert!(matches!(
            a.send(&fcm_device(), &message()).await,
            PushOutcome::Retry { .. }
        ));
    }
    assert_eq!(fake.hits(), 5);
    assert_eq!(breakers_a.get(BREAKER_FCM).state().await, State::Open);

    // Calls stop, in this process and in the other one, which never saw a failure itself.
    for client in [&a, &b, &a, &b] {
        match client.send(&fcm_device(), &message()).await {
            PushOutcome::Retry { after, reason } => {
                assert!(reason.contains("breaker open"), "{reason}");
                assert!(after.is_some_and(|d| d <= Duration::from_millis(400)));
            }
            other => panic!("open breaker answers Retry: {other:?}"),
        }
    }
    assert_eq!(fake.hits(), 5, "no call reaches the provider while open");
    assert_eq!(breakers_b.get(BREAKER_FCM).state().await, State::Open);
    let statuses = breakers_b.statuses().await;
    assert!(
        statuses
            .iter()
            .any(|s| s.name == BREAKER_FCM && s.state == State::Open),
        "{statuses:?}"
    );

    // After the cool-down one half-open trial goes through; the provider still fails, so
    // the breaker opens again and exactly one more call reached it.
    assert!(
        eventually(Duration::from_secs(10), || async {
            // Refused without a network call until the cool-down is over.
            b.send(&fcm_device(), &message()).await;
            fake.hits() > 5
        })
        .await
    );
    assert_eq!(fake.hits(), 6);
    assert_eq!(breakers_a.get(BREAKER_FCM).state().await, State::Open);

    // The provider recovers: the next trial succeeds and closes the breaker for everyone.
    fake.always(fcm_ok());
    assert!(
        eventually(Duration::from_secs(10), || async {
            a.send(&fcm_device(), &message()).await == PushOutcome::Delivered
        })
        .await
    );
    assert_eq!(breakers_b.get(BREAKER_FCM).state().await, State::Closed);
    let before = fake.hits();
    for client in [&a, &b, &a, &b] {
        assert_eq!(
            client.send(&fcm_device(), &message()).await,
            PushOutcome::Delivered
        );
    }
    assert_eq!(fake.hits(), before + 4);
}

#[actix_web::test]
async fn without_redis_the_breaker_works_in_process() {
    let fake = FakeProvider::start(fcm_error(500, "INTERNAL", "INTERNAL", None));
    let breakers = Breakers::new(None, tripping());
    let client = PushClient::new(&push_config(&fake.base), &breakers);
    for _ in 0..5 {
        client.send(&fcm_device(), &message()).await;
    }
    assert_eq!(breakers.get(BREAKER_FCM).state().await, State::Open);
    assert!(matches!(
        client.send(&fcm_device(), &message()).await,
        PushOutcome::Retry { reason, .. } if reason.contains("breaker open")
    ));
    assert_eq!(fake.hits(), 5);
    fake.always(fcm_ok());
    assert!(
        eventually(Duration::from_secs(10), || async {
            client.send(&fcm_device(), &message()).await == PushOutcome::Delivered
        })
        .await
    );
    assert_eq!(breakers.get(BREAKER_FCM).state().await, State::Closed);
}

#[actix_web::test]
async fn an_open_breaker_shows_in_health_and_metrics_but_never_in_readiness() {
    let db = crate::support::TestDb::new().await;
    let redis = TestRedis::new();
    let fake = FakeProvider::start(fcm_error(503, "UNAVAILABLE", "UNAVAILABLE", None));
    let mut config = crate::support::config_for(&db.url, Some(&redis));
    config.push = push_config(&fake.base);
    config.breaker = BreakerConfig {
        cooldown: Duration::from_secs(60),
        ..tripping()
    };
    let ctx = itsur::app::Ctx::new(config).unwrap();
    let api = crate::support::fixtures::Api::new(ctx.clone()).await;

    let res = api.get("/health", None).await;
    assert_eq!(res.status, 200);
    let breakers = res.body["report"]["breakers"].as_array().unwrap().clone();
    assert!(
        breakers
            .iter()
            .any(|b| b["name"] == "push_fcm" && b["state"] == "closed"),
        "{breakers:?}"
    );
    assert!(breakers.iter().any(|b| b["name"] == "push_onesignal"));

    for _ in 0..5 {
        ctx.clients.push.send(&fcm_device(), &message()).await;
    }
    let shown = eventually(Duration::from_secs(10), || async {
        let res = api.get("/health", None).await;
        res.status == 200
            && res.body["report"]["breakers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["name"] == "push_fcm" && b["state"] == "open")
    })
    .await;
    assert!(shown, "/health lists the open breaker");
    assert_eq!(api.get("/health/ready", None).await.status, 200);
    // The gauge exists (its value is process-global and other tests in this binary move
    // breakers of the same name, so the value itself is checked in the unit tests' terms:
    // State::code).
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains("circuit_breaker_state{name=\"push_fcm\"}"),
        "{metrics}"
    );
}

/// The `send_push` job end to end: a worker delivers to the user's FCM device once, and a
/// token FCM calls UNREGISTERED is deleted.
#[tokio::test(flavor = "multi_thread")]
async fn send_push_jobs_deliver_once_and_drop_dead_tokens() {
    use crate::support::config_for;
    use crate::support::fixtures::World;
    use itsur::jobs::registry::Registry;
    use itsur::jobs::runner::{WorkerOptions, run};
    use itsur::store::{devices, jobs};

    let fake = FakeProvider::start(fcm_ok());
    let db = crate::support::TestDb::new().await;
    let redis = TestRedis::new();
    let mut config = config_for(&db.url, Some(&redis));
    config.push = push_config(&fake.base);
    let ctx = itsur::app::Ctx::new(config).unwrap();
    let world = World::create(&ctx).await;
    let user = world.a.student.id;
    let mut conn =
        <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(&db.url)
            .await
            .unwrap();
    let device = |token: &str| devices::NewDeviceRow {
        id: uuid::Uuid::now_v7(),
        user_id: user,
        platform: "fcm".to_owned(),
        token: token.to_owned(),
    };
    devices::upsert(&mut conn, &device("live-token"))
        .await
        .unwrap();
    let job = |key: &str| jobs::NewJob {
        id: uuid::Uuid::now_v7(),
        kind: "send_push".to_owned(),
        queue: "default".to_owned(),
        priority: 0,
        payload: serde_json::json!({ "userId": user, "title": "Order ready", "body": "Pick it up" }),
        unique_key: Some(key.to_owned()),
        run_at: chrono::Utc::now(),
        max_attempts: 3,
        timeout_secs: 30,
        owner_id: None,
        campus_id: None,
    };
    // The same event delivered twice enqueues one job (unique key).
    let (first, inserted) = jobs::enqueue(&mut conn, &job("push:event:1"))
        .await
        .unwrap();
    let (again, dup) = jobs::enqueue(&mut conn, &job("push:event:1"))
        .await
        .unwrap();
    assert!(inserted && !dup);
    assert_eq!(first.id, again.id);

    let shutdown = itsur::shutdown::Shutdown::new();
    let options = WorkerOptions {
        lease: Duration::from_secs(5),
        poll_interval: Duration::from_millis(100),
        cron: false,
        ..WorkerOptions::default()
    };
    let worker = tokio::spawn(run(
        ctx.clone(),
        shutdown.clone(),
        options,
        Registry::standard(),
    ));
    let state = |id: uuid::Uuid| {
        let url = db.url.clone();
        async move {
            let mut c =
                <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(&url)
                    .await
                    .unwrap();
            jobs::find(&mut c, id).await.unwrap().unwrap().state
        }
    };
    let done = eventually(Duration::from_secs(20), || async {
        state(first.id).await == JobState::Completed
    })
    .await;
    assert!(done, "{:?}", jobs::find(&mut conn, first.id).await.unwrap());
    assert_eq!(fake.hits(), 1, "delivered exactly once");
    let sent = &fake.received()[0];
    assert_eq!(sent.body["message"]["token"], "live-token");
    assert_eq!(sent.body["message"]["notification"]["title"], "Order ready");

    // A dead token: FCM answers UNREGISTERED, the device is forgotten, the job completes.
    fake.always(fcm_invalid_token());
    devices::delete_by_token(&mut conn, user, "live-token")
        .await
        .unwrap();
    devices::upsert(&mut conn, &device("dead-token"))
        .await
        .unwrap();
    let (second, _) = jobs::enqueue(&mut conn, &job("push:event:2"))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            state(second.id).await == JobState::Completed
        })
        .await
    );
    assert!(
        devices::list_for_user(&mut conn, user)
            .await
            .unwrap()
            .is_empty()
    );

    shutdown.trigger();
    worker.await.unwrap();
}
