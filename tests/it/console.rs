//! The operator console's API (`/admin/console/*`): tenant scoping (a campus admin sees and
//! changes only its campus; another campus's job is 404; students and staff get 403), keyset
//! pages without duplicates or gaps, filters and payload search, bounded counts, bulk retry /
//! cancel / delete by selection and by filter (batch by batch, audited), queues, the
//! overview, cron schedules, and keyset pages of the audit trail and the outbox.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use itsur::app::Ctx;
use itsur::domain::job::kind;
use itsur::store::jobs::{self as store, NewJob};
use itsur::store::schema::{audit_log, jobs};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::TestApp;
use crate::support::fixtures::{Api, World};

fn job(kind: &str, queue: &str, campus: Option<Uuid>, payload: Value) -> NewJob {
    NewJob {
        id: Uuid::now_v7(),
        kind: kind.to_owned(),
        queue: queue.to_owned(),
        priority: 1,
        payload,
        unique_key: None,
        run_at: Utc::now(),
        max_attempts: 3,
        timeout_secs: 60,
        owner_id: None,
        campus_id: campus,
    }
}

/// Enqueues a job and puts it in `state` (as a worker would have left it: a finished job
/// moves to `jobs_history`).
async fn add(ctx: &Ctx, j: NewJob, state: &str) -> Uuid {
    let mut conn = ctx.db.conn().await.unwrap();
    let (row, _) = store::enqueue(&mut conn, &j).await.unwrap();
    match state {
        "queued" => {}
        "running" => {
            diesel::update(jobs::table.find(row.id))
                .set((jobs::state.eq("running"), jobs::attempt.eq(1)))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        _ => {
            diesel::sql_query(
                "WITH m AS (DELETE FROM jobs WHERE id = $1 RETURNING *) \
                 INSERT INTO jobs_history SELECT id, kind, queue, priority, $2, payload, \
                     unique_key, run_at, CASE WHEN $2 = 'dead' THEN 3 ELSE 1 END, max_attempts, \
                     timeout_secs, worker_id, lease_expires_at, progress, progress_message, \
                     cancel_requested, CASE WHEN $2 = 'dead' THEN 'boom: out of attempts' END, \
                     result, result_content_type, result_body, owner_id, campus_id, created_at, \
                     started_at, now(), now(), flow_step_id FROM m",
            )
            .bind::<diesel::sql_types::Uuid, _>(row.id)
            .bind::<diesel::sql_types::Text, _>(state)
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }
    row.id
}

async fn state_of(ctx: &Ctx, id: Uuid) -> Option<String> {
    let mut conn = ctx.db.conn().await.unwrap();
    store::find(&mut conn, id)
        .await
        .unwrap()
        .map(|r| r.state.as_str().to_owned())
}

fn ids(v: &Value) -> Vec<Uuid> {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[actix_web::test]
async fn campus_admins_see_and_change_only_their_campus() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let (a, b) = (Some(world.a.campus.id), Some(world.b.campus.id));
    let ja = add(
        &t.ctx,
        job(kind::NOOP, "default", a, json!({"n": 1})),
        "dead",
    )
    .await;
    let jb = add(
        &t.ctx,
        job(kind::NOOP, "default", b, json!({"n": 2})),
        "dead",
    )
    .await;
    let sys = add(
        &t.ctx,
        job(kind::MAINTENANCE, "default", None, json!({})),
        "queued",
    )
    .await;

    let admin_a = api.login(&world.a.admin.email).await;
    let root = api.login(&world.platform_admin.email).await;
    let student = api.login(&world.a.student.email).await;
    let staff = api.login(&world.a.staff.email).await;

    let res = api.get("/admin/console/jobs", admin_a.token()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(ids(&res.body), vec![ja]);
    let res = api.get("/admin/console/jobs", root.token()).await;
    assert_eq!(ids(&res.body), vec![sys, jb, ja]);

    // Another campus's job does not exist for campus A's admin.
    api.get(&format!("/admin/console/jobs/{jb}"), admin_a.token())
        .await
        .assert_problem(404);
    let res = api
        .get(&format!("/admin/console/jobs/{ja}"), admin_a.token())
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.data()["payload"], json!({"n": 1}));
    assert_eq!(res.data()["lastError"], "boom: out of attempts");

    // Selecting another campus's job changes nothing.
    let res = api
        .post(
            "/admin/console/jobs/bulk",
            admin_a.token(),
            &json!({"action": "retry", "ids": [jb]}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.data()["affected"], 0);
    assert_eq!(state_of(&t.ctx, jb).await.as_deref(), Some("dead"));

    // Overview, queues and audit are campus-scoped; cron is platform-wide.
    let res = api.get("/admin/console/queues", admin_a.token()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(
        res.data()
            .as_array()
            .unwrap()
            .iter()
            .all(|q| q["ready"] == 0),
        "the system job is not campus A's: {}",
        res.text()
    );
    api.get("/admin/console/cron", admin_a.token())
        .await
        .assert_problem(403);

    for path in [
        "/admin/console/overview",
        "/admin/console/jobs",
        "/admin/console/jobs/count",
        "/admin/console/queues",
        "/admin/console/audit",
        "/admin/console/outbox",
    ] {
        api.get(path, student.token()).await.assert_problem(403);
        api.get(path, staff.token()).await.assert_problem(403);
        api.get(path, None).await.assert_problem(401);
    }
    api.post(
        "/admin/console/jobs/bulk",
        staff.token(),
        &json!({"action": "delete", "ids": [ja]}),
    )
    .await
    .assert_problem(403);
    assert_eq!(state_of(&t.ctx, ja).await.as_deref(), Some("dead"));
}

#[actix_web::test]
async fn job_pages_are_keyset_without_gaps_or_duplicates_and_filters_apply() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let root = api.login(&world.platform_admin.email).await;
    let mut all = Vec::new();
    for i in 0..7 {
        let queue = if i % 2 == 0 { "default" } else { "reports" };
        let payload = json!({ "customer": format!("Ana {i}"), "note": if i == 3 { "100%_sure" } else { "x" } });
        all.push(add(&t.ctx, job(kind::NOOP, queue, None, payload), "completed").await);
    }
    all.reverse(); // newest first

    let mut seen = Vec::new();
    let mut path = "/admin/console/jobs?limit=3".to_owned();
    loop {
        let res = api.get(&path, root.token()).await;
        assert_eq!(res.status, 200, "{}", res.text());
        seen.extend(ids(&res.body));
        match res.body["page"]["next"].as_str() {
            Some(next) => path = format!("/admin/console/jobs?limit=3&before={next}"),
            None => break,
        }
    }
    assert_eq!(seen, all);

    let res = api
        .get(
            "/admin/console/jobs?queue=reports&state=completed",
            root.token(),
        )
        .await;
    assert_eq!(ids(&res.body).len(), 3, "{}", res.text());
    // Search is literal: % and _ are not wildcards.
    let res = api
        .get("/admin/console/jobs?q=100%25_SURE", root.token())
        .await;
    assert_eq!(ids(&res.body), vec![all[3]], "{}", res.text());
    let res = api.get("/admin/console/jobs?q=1_0", root.token()).await;
    assert!(ids(&res.body).is_empty(), "{}", res.text());
    let res = api.get("/admin/console/jobs?q=ana", root.token()).await;
    assert_eq!(ids(&res.body).len(), 7);

    let res = api
        .get("/admin/console/jobs/count?queue=default", root.token())
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.data()["count"], 4);
    assert_eq!(res.data()["exact"], true);

    for bad in [
        "/admin/console/jobs?state=bogus",
        "/admin/console/jobs?limit=0",
        "/admin/console/jobs?limit=201",
        "/admin/console/jobs?before=not-a-uuid",
        "/admin/console/jobs?unknown=1",
        "/admin/console/jobs/count?state=done",
        "/admin/console/audit?before=x",
        "/admin/console/outbox?state=gone",
    ] {
        let res = api.get(bad, root.token()).await;
        assert_eq!(res.status, 400, "{bad}: {}", res.text());
        res.assert_is_problem();
    }
}

#[actix_web::test]
async fn bulk_retry_by_filter_goes_batch_by_batch_and_is_audited() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let admin = api.login(&world.a.admin.email).await;
    let a = Some(world.a.campus.id);
    let mut dead = Vec::new();
    for i in 0..5 {
        dead.push(
            add(
                &t.ctx,
                job(kind::NOOP, "default", a, json!({ "i": i })),
                "dead",
            )
            .await,
        );
    }
    let done = add(
        &t.ctx,
        job(kind::NOOP, "default", a, json!({})),
        "completed",
    )
    .await;
    let other = add(
        &t.ctx,
        job(kind::NOOP, "default", Some(world.b.campus.id), json!({})),
        "dead",
    )
    .await;

    let res = api
        .get("/admin/console/jobs/count?state=dead", admin.token())
        .await;
    assert_eq!(res.data()["count"], 5, "{}", res.text());

    let res = api
        .post(
            "/admin/console/jobs/bulk",
            admin.token(),
            &json!({"action": "retry", "filter": {"state": "dead"}}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.data()["affected"], 5);
    assert_eq!(res.data()["done"], true);
    for id in &dead {
        assert_eq!(state_of(&t.ctx, *id).await.as_deref(), Some("queued"));
    }
    assert_eq!(state_of(&t.ctx, done).await.as_deref(), Some("completed"));
    assert_eq!(state_of(&t.ctx, other).await.as_deref(), Some("dead"));

    let mut conn = t.ctx.db.conn().await.unwrap();
    let (action, detail): (String, Value) = audit_log::table
        .filter(audit_log::action.like("jobs.bulk_%"))
        .select((audit_log::action, audit_log::detail))
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(action, "jobs.bulk_retry");
    assert_eq!(detail["affected"], 5);

    // Cancel the selected (now queued) ones, then delete everything finished.
    let res = api
        .post(
            "/admin/console/jobs/bulk",
            admin.token(),
            &json!({"action": "cancel", "ids": &dead[..2]}),
        )
        .await;
    assert_eq!(res.data()["affected"], 2, "{}", res.text());
    assert_eq!(
        state_of(&t.ctx, dead[0]).await.as_deref(),
        Some("cancelled")
    );
    let res = api
        .post(
            "/admin/console/jobs/bulk",
            admin.token(),
            &json!({"action": "delete", "filter": {"state": "cancelled"}}),
        )
        .await;
    assert_eq!(res.data()["affected"], 2, "{}", res.text());
    assert_eq!(state_of(&t.ctx, dead[0]).await, None);

    // The audit page shows the three bulk actions, newest first, in keyset pages.
    let res = api.get("/admin/console/audit?limit=2", admin.token()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let actions: Vec<&str> = res.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["jobs.bulk_delete", "jobs.bulk_cancel"]);
    let next = res.body["page"]["next"].as_str().unwrap().to_owned();
    let res = api
        .get(
            &format!("/admin/console/audit?limit=2&before={next}"),
            admin.token(),
        )
        .await;
    assert_eq!(
        res.body["data"][0]["action"],
        "jobs.bulk_retry",
        "{}",
        res.text()
    );

    for bad in [
        json!({"action": "retry"}),
        json!({"action": "retry", "ids": []}),
        json!({"action": "explode", "ids": [dead[0]]}),
        json!({"action": "retry", "ids": [dead[0]], "filter": {}}),
    ] {
        let res = api
            .post("/admin/console/jobs/bulk", admin.token(), &bad)
            .await;
        assert_eq!(res.status, 400, "{bad}: {}", res.text());
    }
}

#[actix_web::test]
async fn overview_queues_and_cron_report_the_hot_set() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let root = api.login(&world.platform_admin.email).await;
    for _ in 0..3 {
        add(
            &t.ctx,
            job(kind::NOOP, "reports", None, json!({})),
            "queued",
        )
        .await;
    }
    add(
        &t.ctx,
        job(kind::NOOP, "reports", None, json!({})),
        "running",
    )
    .await;
    let a = Some(world.a.campus.id);
    add(
        &t.ctx,
        job(kind::NOOP, "default", a, json!({})),
        "completed",
    )
    .await;
    add(&t.ctx, job(kind::NOOP, "default", a, json!({})), "dead").await;

    let res = api.get("/admin/console/overview", root.token()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let o = res.data();
    let reports = o["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "reports")
        .unwrap();
    assert_eq!(
        (reports["ready"].as_i64(), reports["running"].as_i64()),
        (Some(3), Some(1))
    );
    // The per-minute counters are the engine's (written by its completer): jobs put in place
    // by hand are not in them. A campus admin's figures come from its campus's history.
    assert!(o["throughput"].is_array(), "{}", res.text());
    let admin = api.login(&world.a.admin.email).await;
    let res = api.get("/admin/console/overview", admin.token()).await;
    let points = res.data()["throughput"].as_array().unwrap().clone();
    let sum = |k: &str| points.iter().map(|p| p[k].as_i64().unwrap()).sum::<i64>();
    assert_eq!((sum("completed"), sum("dead")), (1, 1), "{}", res.text());
    assert!(points.iter().all(|p| p["failed"].is_null()));
    let res = api.get("/admin/console/overview", root.token()).await;
    let o = res.data();
    assert_eq!(o["outbox"]["dead"], 0);
    assert!(
        o["breakers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["name"] == "webhook")
    );
    assert_eq!(o["socketsOpen"], 0);

    // Pause and resume: platform admins only, audited, reflected in the queue list.
    api.post(
        "/admin/console/queues/reports/pause",
        admin.token(),
        &json!({}),
    )
    .await
    .assert_problem(403);
    let res = api
        .post(
            "/admin/console/queues/reports/pause",
            root.token(),
            &json!({}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        (
            res.data()["paused"].as_bool(),
            res.data()["changed"].as_bool()
        ),
        (Some(true), Some(true))
    );
    let again = api
        .post(
            "/admin/console/queues/reports/pause",
            root.token(),
            &json!({}),
        )
        .await;
    assert_eq!(again.data()["changed"], false);
    let paused = |body: &Value| {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == "reports")
            .map(|q| q["paused"].as_bool().unwrap())
    };
    let res = api.get("/admin/console/queues", root.token()).await;
    assert_eq!(paused(&res.body), Some(true), "{}", res.text());
    let res = api
        .post(
            "/admin/console/queues/reports/resume",
            root.token(),
            &json!({}),
        )
        .await;
    assert_eq!(res.data()["changed"], true, "{}", res.text());
    let res = api.get("/admin/console/queues", root.token()).await;
    assert_eq!(paused(&res.body), Some(false));
    let res = api
        .get("/admin/console/audit?action=queue.paused", root.token())
        .await;
    assert_eq!(res.body["data"][0]["targetId"], "reports", "{}", res.text());

    let res = api.get("/admin/console/cron", root.token()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let m = &res.data()[0];
    assert_eq!(m["name"], "maintenance");
    let next: chrono::DateTime<Utc> = m["nextRunAt"].as_str().unwrap().parse().unwrap();
    assert!(next > Utc::now());

    let res = api
        .get("/admin/console/outbox?state=pending", root.token())
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(res.body["page"]["next"].is_null());
}

/// Issue 14: "sockets open" counts the fleet. Two `serve` instances share a database and a
/// Redis prefix, with one socket each: instance A's overview says 2 once B has reported (every
/// 5 s), and 1 again once B has shut down (it removes its entry on the way out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_counts_the_sockets_of_every_instance() {
    use crate::support::ws::WsClient;
    use crate::support::{TestDb, TestRedis, TestServer, ctx_for, eventually};
    use std::time::Duration;

    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let a_ctx = ctx_for(&db.url, Some(&redis));
    let b_ctx = ctx_for(&db.url, Some(&redis));
    let world = World::create(&a_ctx).await;
    let a = TestServer::start(a_ctx.clone());
    let b = TestServer::start(b_ctx.clone());
    let api = Api::new(a_ctx.clone()).await;
    let root = api.login(&world.platform_admin.email).await;
    let student = api.login(&world.a.student.email).await;
    let _on_a = WsClient::connect(a.addr, &student.access).await;
    let _on_b = WsClient::connect(b.addr, &student.access).await;
    let sockets = || async {
        let res = api.get("/admin/console/overview", root.token()).await;
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.data()["socketsScope"], "fleet", "{}", res.text());
        res.data()["socketsOpen"].as_i64().unwrap()
    };
    assert!(
        eventually(Duration::from_secs(20), || async { sockets().await == 2 }).await,
        "B's socket was never counted: {}",
        sockets().await
    );
    b.shutdown.trigger();
    assert!(
        eventually(Duration::from_secs(20), || async { sockets().await == 1 }).await,
        "B's entry outlived it: {}",
        sockets().await
    );
    drop(a);
}
