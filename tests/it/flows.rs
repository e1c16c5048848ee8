//! Flows on a real Postgres with in-process workers: definitions (400 with JSON paths,
//! versions, cross-tenant 404), the node catalog, and runs — a diamond passing outputs down,
//! a fan-out of 100 with its fan-in, every failure policy ending, retry of only the failed
//! steps, an edit that leaves a running run alone, cancel during a fan-out, and schedules
//! firing once per tick in a non-UTC zone.
//!
//! Nothing sleeps to synchronise: every wait polls `GET /flow-runs/{id}` with a deadline that
//! only guards against hangs.

use std::time::Duration;

use actix_web::test::TestRequest;
use itsur::app::Ctx;
use itsur::jobs::registry::Registry;
use itsur::jobs::runner::{self, WorkerOptions};
use itsur::shutdown::Shutdown;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::fixtures::{Api, Resp, World};
use crate::support::{TestApp, eventually};

const DEADLINE: Duration = Duration::from_secs(60);

struct Worker {
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    fn start(ctx: &Ctx, concurrency: usize) -> Self {
        let shutdown = Shutdown::new();
        let options = WorkerOptions {
            queues: vec!["default".to_owned()],
            concurrency,
            lease: Duration::from_secs(3),
            poll_interval: Duration::from_millis(100),
            poll_only: false,
            drain_timeout: Duration::from_secs(5),
            cron: false,
            prefetch: 8,
            adaptive: false,
        };
        let task = tokio::spawn(runner::run(
            ctx.clone(),
            shutdown.clone(),
            options,
            Registry::standard(),
        ));
        Self { shutdown, task }
    }

    async fn stop(mut self) {
        self.shutdown.trigger();
        let _ = tokio::time::timeout(DEADLINE, &mut self.task).await;
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

async fn put(api: &Api, path: &str, token: &str, body: &Value) -> Resp {
    api.send(
        TestRequest::put()
            .uri(path)
            .insert_header(("Authorization", format!("Bearer {token}")))
            .set_json(body),
    )
    .await
}

async fn create(api: &Api, token: &str, name: &str, definition: Value) -> Uuid {
    let res = api
        .post(
            "/flows",
            Some(token),
            &json!({"name": name, "definition": definition}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    res.id()
}

async fn start(api: &Api, token: &str, flow: Uuid, input: Value) -> Uuid {
    let res = api
        .post(
            &format!("/flows/{flow}/runs"),
            Some(token),
            &json!({"input": input}),
        )
        .await;
    assert_eq!(res.status, 202, "{}", res.text());
    res.id()
}

async fn run(api: &Api, token: &str, id: Uuid) -> Value {
    let res = api.get(&format!("/flow-runs/{id}"), Some(token)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    res.data().clone()
}

/// Polls the run until `done` holds; returns it.
async fn wait_run(
    api: &Api,
    token: &str,
    id: Uuid,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = std::time::Instant::now();
    loop {
        let last = run(api, token, id).await;
        if done(&last) {
            return last;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "run {id} never got {what}: {last:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ended(r: &Value) -> bool {
    r["status"] != "running"
}

fn step<'a>(r: &'a Value, id: &str) -> &'a Value {
    r["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == id))
        .unwrap_or(&Value::Null)
}

fn noop(id: &str, deps: &[&str], input: Value) -> Value {
    json!({"id": id, "node": "noop", "dependsOn": deps, "input": input, "maxAttempts": 1})
}

#[actix_web::test]
async fn bad_definitions_answer_400_with_json_paths() {
    let t = TestApp::new().await;
    let w = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let admin = api.login(&w.a.admin.email).await;
    let tok = Some(admin.access.as_str());

    let cycle = json!({"steps": [noop("a", &["b"], json!({})), noop("b", &["a"], json!({}))]});
    let res = api
        .post("/flows", tok, &json!({"name": "c", "definition": cycle}))
        .await;
    res.assert_problem(400);
    assert_eq!(
        res.field_errors(),
        ["definition.steps[0].dependsOn"],
        "{}",
        res.text()
    );
    assert!(res.text().contains("cycle: a → b → a"), "{}", res.text());

    let bad = json!({"steps": [
        {"id": "a", "node": "no_such_node"},
        {"id": "b", "node": "noop", "input": {"sleepMs": "soon", "nope": 1}},
        {"id": "c", "node": "sales_report", "dependsOn": ["b"],
         "input": {"vendorId": {"$ref": "steps.a.output.id"}, "format": "pdf"}},
        {"id": "d", "node": "noop", "dependsOn": ["ghost"]}
    ], "schedules": [{"cron": "61 * * * *", "timeZone": "Mars/Olympus"}]});
    let res = api
        .post(
            "/flows",
            tok,
            &json!({"name": "Bad Name", "definition": bad}),
        )
        .await;
    res.assert_problem(400);
    let fields = res.field_errors();
    for path in ["name", "definition.steps[3].dependsOn[0]"] {
        assert!(fields.contains(&path.to_owned()), "{path} in {fields:?}");
    }
    // Graph errors are reported first; once the graph is sound the inputs are checked.
    let bad = json!({"steps": [
        {"id": "a", "node": "no_such_node"},
        {"id": "b", "node": "noop", "input": {"sleepMs": "soon", "nope": 1}},
        {"id": "c", "node": "sales_report", "dependsOn": ["b"],
         "input": {"vendorId": {"$ref": "steps.a.output.id"}, "format": "pdf"}},
        {"id": "e", "node": "send_email", "input": {"to": {}, "subject": "s", "text": "t", "cc": "x"}}
    ], "schedules": [{"cron": "61 * * * *", "timeZone": "Mars/Olympus"}]});
    let res = api
        .post("/flows", tok, &json!({"name": "bad", "definition": bad}))
        .await;
    res.assert_problem(400);
    let fields = res.field_errors();
    for path in [
        "definition.steps[0].node",
        "definition.steps[1].input.sleepMs",
        "definition.steps[2].input.vendorId.$ref",
        "definition.steps[2].input.format",
        "definition.steps[2].input.from",
        "definition.steps[3].input.cc",
        "definition.schedules[0].cron",
        "definition.schedules[0].timeZone",
    ] {
        assert!(fields.contains(&path.to_owned()), "{path} in {fields:?}");
    }
    // A malformed shape names its path too.
    let res = api
        .post(
            "/flows",
            tok,
            &json!({"name": "x", "definition": {"steps": [{"id": "a", "node": 7}]}}),
        )
        .await;
    res.assert_problem(400);
    assert_eq!(
        res.field_errors(),
        ["definition.steps[0].node"],
        "{}",
        res.text()
    );
}

#[actix_web::test]
async fn the_node_catalog_is_the_workers_registry_with_generated_schemas() {
    let t = TestApp::new().await;
    let w = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let admin = api.login(&w.a.admin.email).await;
    let res = api.get("/flows/nodes", Some(&admin.access)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let nodes = res.data().as_array().unwrap().clone();
    let mut kinds: Vec<String> = nodes
        .iter()
        .map(|n| n["kind"].as_str().unwrap().to_owned())
        .collect();
    kinds.sort();
    let mut registered = Registry::standard().kinds();
    registered.sort();
    assert_eq!(kinds, registered);
    let report = nodes.iter().find(|n| n["kind"] == "sales_report").unwrap();
    assert_eq!(report["inputSchema"]["type"], "object");
    assert!(report["inputSchema"]["properties"]["vendorId"].is_object());
    assert!(report["description"].as_str().unwrap().len() > 10);
    let email = nodes.iter().find(|n| n["kind"] == "send_email").unwrap();
    assert!(email["outputSchema"]["properties"]["sent"].is_object());
}

#[actix_web::test]
async fn flows_and_runs_of_another_campus_answer_404() {
    let t = TestApp::new().await;
    let w = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let a = api.login(&w.a.admin.email).await;
    let b = api.login(&w.b.admin.email).await;
    let student = api.login(&w.a.student.email).await;
    let flow = create(
        &api,
        &a.access,
        "one",
        json!({"steps": [noop("a", &[], json!({}))]}),
    )
    .await;
    let run = start(&api, &a.access, flow, json!({})).await;

    for path in [
        format!("/flows/{flow}"),
        format!("/flows/{flow}/versions"),
        format!("/flow-runs/{run}"),
    ] {
        api.get(&path, Some(&b.access)).await.assert_problem(404);
    }
    api.post(&format!("/flows/{flow}/runs"), Some(&b.access), &json!({}))
        .await
        .assert_problem(404);
    put(
        &api,
        &format!("/flows/{flow}"),
        &b.access,
        &json!({"definition": {"steps": [noop("a", &[], json!({}))]}}),
    )
    .await
    .assert_problem(404);
    api.delete(&format!("/flows/{flow}"), Some(&b.access))
        .await
        .assert_problem(404);
    api.delete(&format!("/flow-runs/{run}"), Some(&b.access))
        .await
        .assert_problem(404);
    // Campus B's list does not show A's run; a student of A sees neither the flow nor the
    // run they did not start.
    let list = api.get("/flow-runs", Some(&b.access)).await;
    assert_eq!(list.data().as_array().unwrap().len(), 0);
    api.get(&format!("/flows/{flow}"), Some(&student.access))
        .await
        .assert_problem(403);
    api.get(&format!("/flow-runs/{run}"), Some(&student.access))
        .await
        .assert_problem(404);
    assert_eq!(
        api.get("/flow-runs", Some(&student.access))
            .await
            .data()
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // A's admin sees both.
    let list = api
        .get(&format!("/flow-runs?flow={flow}"), Some(&a.access))
        .await;
    assert_eq!(list.data().as_array().unwrap().len(), 1);
    api.get("/flow-runs?status=bogus", Some(&a.access))
        .await
        .assert_problem(400);
}

#[actix_web::test]
async fn a_diamond_completes_with_outputs_passed_down() {
    let t = TestApp::new().await;
    let w = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let admin = api.login(&w.a.admin.email).await;
    let tok = admin.access.as_str();
    let flow = create(&api, tok, "diamond", json!({"steps": [
        noop("a", &[], json!({"echo": {"n": {"$ref": "input.n"}}})),
        noop("b", &["a"], json!({"echo": {"fromA": {"$ref": "steps.a.output.echo.n"}, "side": "b"}})),
        noop("c", &["a"], json!({"echo": {"fromA": {"$ref": "steps.a.output.echo.n"}, "side": "c"}})),
        noop("d", &["b", "c"], json!({"echo": [{"$ref": "steps.b.output.echo"}, {"$ref": "steps.c.output.echo"}, {"$ref": "run.id"}]}))
    ]})).await;
    let worker = Worker::start(&t.ctx, 4);
    let id = start(&api, tok, flow, json!({"n": 42})).await;
    let r = wait_run(&api, tok, id, "an end", ended).await;
    worker.stop().await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    assert_eq!(r["version"], 1);
    assert_eq!(
        step(&r, "d")["output"]["echo"],
        json!([{"fromA": 42, "side": "b"}, {"fromA": 42, "side": "c"}, id.to_string()])
    );
    for s in ["a", "b", "c", "d"] {
        assert_eq!(step(&r, s)["status"], "succeeded", "{r:#}");
        assert_eq!(step(&r, s)["attempts"], 1);
        assert!(step(&r, s)["startedAt"].is_string() && step(&r, s)["finishedAt"].is_string());
    }
    // d started only after both b and c had finished.
    assert!(step(&r, "d")["startedAt"].as_str() >= step(&r, "b")["finishedAt"].as_str());
    assert!(step(&r, "d")["startedAt"].as_str() >= step(&r, "c")["finishedAt"].as_str());
    // Every transition was an outbox event of the run, ordered by version.
    let events = run_events(&t.ctx, id).await;
    let last = events.last().unwrap();
    assert_eq!(last.0, "flow_run.status_changed");
    assert_eq!(last.1["status"], "succeeded");
    let versions: Vec<i32> = events.iter().map(|e| e.2).collect();
    let mut sorted = versions.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        versions.len(),
        sorted.len(),
        "versions are unique: {versions:?}"
    );
    assert!(
        events
            .iter()
            .filter(|e| e.0 == "flow_step.status_changed" && e.1["status"] == "succeeded")
            .count()
            == 4
    );
}

async fn run_events(ctx: &Ctx, run: Uuid) -> Vec<(String, Value, i32)> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use itsur::store::schema::outbox_events::dsl as o;
    let mut conn = ctx.db.conn().await.unwrap();
    o::outbox_events
        .filter(o::aggregate_id.eq(run))
        .order(o::id.asc())
        .select((o::event_type, o::payload, o::aggregate_version))
        .load(&mut conn)
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_fan_out_of_100_fans_in_to_one_step() {
    let t = TestApp::new().await;
    let w = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let admin = api.login(&w.a.admin.email).await;
    let tok = admin.access.as_str();
    let flow = create(&api, tok, "fan", json!({"steps": [
        noop("list", &[], json!({"echo": {"$ref": "input.items"}})),
        {"id": "each", "node": "noop", "dependsOn": ["list"], "forEach": "steps.list.output.echo",
         "input": {"echo": {"$ref": "item"}}},
        noop("sum", &["each"], json!({"echo": {"$ref": "steps.each.output"}}))
    ]})).await;
    let items: Vec<Value> = (0..100).map(|i| json!({"i": i})).collect();
    let worker = Worker::start(&t.ctx, 16);
    let id = start(&api, tok, flow, json!({"items": items})).await;
    let r = wait_run(&api, tok, id, "an end", ended).await;
    worker.stop().await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let each = step(&r, "each");
    assert_eq!(each["itemsTotal"], 100);
    assert_eq!(each["instances"].as_array().unwrap().len(), 100);
    let fan_in = step(&r, "sum")["output"]["echo"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(fan_in.len(), 100);
    for (i, out) in fan_in.iter().enumerate() {
        assert_eq!(out["echo"]["i"], i, "outputs in item order");
    }
}

#[actix_web::test]
async fn every_failure_policy_reaches_a_terminal_state() {
    let t = TestApp::new().await;
    let w = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let admin = api.login(&w.a.admin.email).await;
    let tok = admin.access.as_str();
    let worker = Worker::start(&t.ctx, 4);
    let mut outcomes = Vec::new();
    for policy in ["fail", "continue", "ignore"] {
        let flow = create(&api, tok, &format!("policy-{policy}"), json!({"steps": [
            {"id": "bad", "node": "noop", "input": {"fail": true}, "onFailure": policy, "maxAttempts": 1},
            noop("side", &[], json!({})),
            noop("after", &["bad"], json!({"echo": {"saw": {"$ref": "steps.bad.status"}, "error": {"$ref": "steps.bad.error"}}})),
            noop("last", &["after", "side"], json!({}))
        ]})).await;
        let id = start(&api, tok, flow, json!({})).await;
        outcomes.push((policy, wait_run(&api, tok, id, "an end", ended).await));
    }
    // A bad forEach (not a list) fails its step at once, and the run still ends.
    let flow = create(
        &api,
        tok,
        "not-a-list",
        json!({"steps": [
            noop("a", &[], json!({"echo": "text"})),
            {"id": "each", "node": "noop", "dependsOn": ["a"], "forEach": "steps.a.output.echo"}
        ]}),
    )
    .await;
    let id = start(&api, tok, flow, json!({})).await;
    let bad_list = wait_run(&api, tok, id, "an end", ended).await;
    worker.stop().await;

    let (_, fail) = &outcomes[0];
    assert_eq!(fail["status"], "failed", "{fail:#}");
    assert_eq!(step(fail, "bad")["status"], "failed");
    assert!(
        step(fail, "bad")["error"]
            .as_str()
            .unwrap()
            .contains("asked to fail")
    );
    assert_eq!(
        step(fail, "side")["status"],
        "succeeded",
        "independent branches finish"
    );
    assert_eq!(step(fail, "after")["status"], "skipped");
    assert_eq!(step(fail, "last")["status"], "skipped");

    let (_, cont) = &outcomes[1];
    assert_eq!(cont["status"], "failed", "{cont:#}");
    assert_eq!(step(cont, "after")["status"], "succeeded");
    assert_eq!(step(cont, "after")["output"]["echo"]["saw"], "failed");
    assert!(
        step(cont, "after")["output"]["echo"]["error"]
            .as_str()
            .unwrap()
            .contains("asked to fail")
    );
    assert_eq!(step(cont, "last")["status"], "succeeded");

    let (_, ignore) = &outcomes[2];
    assert_eq!(ignore["status"], "succeeded", "{ignore:#}");
    assert_eq!(step(ignore, "bad")["status"], "failed");
    assert_eq!(step(ignore, "last")["status"], "succeeded");

    assert_eq!(bad_list["status"], "failed");
    assert!(
        step(&bad_list, "each")["error"]
            .as_str()
            .unwrap()
            .contains("not a list"),
        "{bad_list:#}"
    );
}

#[actix_web::test]
async fn retry_runs_only_the_failed_steps_and_their_dependents() {
    let t = TestApp::new().await;
    let w = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let admin = api.login(&w.a.admin.email).await;
    let tok = admin.access.as_str();
    // `flaky` fails while the run's input says so; `ok` leaves an audit row per run; one of
    // three fan-out instances fails.
    let flow = create(&api, tok, "retry", json!({"steps": [
        {"id": "ok", "node": "noop", "input": {"audit": true}, "maxAttempts": 1},
        {"id": "flaky", "node": "noop", "dependsOn": ["ok"], "input": {"fail": {"$ref": "input.fail"}}, "maxAttempts": 1},
        noop("after", &["flaky"], json!({})),
        {"id": "each", "node": "noop", "dependsOn": ["ok"], "forEach": "input.items",
         "input": {"fail": {"$ref": "item.fail"}}, "maxAttempts": 1, "onFailure": "continue"}
    ]})).await;
    let worker = Worker::start(&t.ctx, 4);
    let items = json!([{"fail": false}, {"fail": true}, {"fail": false}]);
    let id = start(
        &api,
        tok,
        flow,
        json!({"fail": true, "items": items.clone()}),
    )
    .await;
    let r = wait_run(&api, tok, id, "an end", ended).await;
    assert_eq!(r["status"], "failed", "{r:#}");
    assert_eq!(step(&r, "after")["status"], "skipped");
    assert_eq!(step(&r, "each")["status"], "failed");
    let ok_job = step(&r, "ok")["jobId"].clone();
    let ok_instances: Vec<Value> = step(&r, "each")["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] == "succeeded")
        .map(|i| i["jobId"].clone())
        .collect();
    assert_eq!(ok_instances.len(), 2);

    let failed_instance = step(&r, "each")["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["status"] == "failed")
        .unwrap()["jobId"]
        .clone();

    // An operator fixes the data `flaky` reads (the run's input), then retries. Failed steps
    // resolve their input again; a fan-out instance keeps the input it was given.
    {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use itsur::store::schema::flow_runs::dsl as r;
        let mut conn = t.ctx.db.conn().await.unwrap();
        diesel::update(r::flow_runs.find(id))
            .set(r::input.eq(json!({"fail": false, "items": items})))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let res = api
        .post(&format!("/flow-runs/{id}/retry"), Some(tok), &json!({}))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let r2 = wait_run(&api, tok, id, "an end", ended).await;
    worker.stop().await;
    assert_eq!(
        step(&r2, "ok")["jobId"],
        ok_job,
        "a succeeded step does not run again"
    );
    assert_eq!(noop_audits(&t.ctx).await, 1, "`ok` ran once");
    assert_eq!(step(&r2, "flaky")["status"], "succeeded", "{r2:#}");
    assert_eq!(step(&r2, "after")["status"], "succeeded");
    let instances = step(&r2, "each")["instances"].as_array().unwrap().clone();
    let kept: Vec<&Value> = instances
        .iter()
        .filter(|i| ok_instances.contains(&i["jobId"]))
        .collect();
    assert_eq!(
        kept.len(),
        2,
        "the succeeded instances kept their jobs: {instances:#?}"
    );
    let rerun = instances.iter().find(|i| i["index"] == 1).unwrap();
    assert_ne!(
        rerun["jobId"], failed_instance,
        "the failed instance ran again"
    );
    assert_eq!(rerun["status"], "failed", "with the input it was given");
    assert_eq!(
        r2["status"], "failed",
        "`each` failed again (policy continue)"
    );
    // Only a failed run can be retried.
    let ok_flow = create(
        &api,
        tok,
        "fine",
        json!({"steps": [noop("a", &[], json!({}))]}),
    )
    .await;
    let worker = Worker::start(&t.ctx, 2);
    let fine = start(&api, tok, ok_flow, json!({})).await;
    wait_run(&api, tok, fine, "an end", ended).await;
    worker.stop().await;
    api.post(&format!("/flow-runs/{fine}/retry"), Some(tok), &json!({}))
        .await
        .assert_problem(409);
}

async fn noop_audits(ctx: &Ctx) -> i64 {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use itsur::store::schema::audit_log::dsl as a;
    let mut conn = ctx.db.conn().await.unwrap();
    a::audit_log
        .filter(a::action.eq("job.noop"))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap()
}

#[actix_web::test]
async fn an_edit_does_not_change_a_running_run() {
    let t = TestApp::new().await;
    let w = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let admin = api.login(&w.a.admin.email).await;
    let tok = admin.access.as_str();
    let v1 = json!({"steps": [noop("a", &[], json!({"echo": "v1"})), noop("b", &["a"], json!({"echo": "v1"}))]});
    let flow = create(&api, tok, "edited", v1).await;
    // No worker yet: the run is waiting on step a when the flow changes.
    let id = start(&api, tok, flow, json!({})).await;
    let v2 = json!({"steps": [noop("x", &[], json!({"echo": "v2"}))]});
    let res = put(
        &api,
        &format!("/flows/{flow}"),
        tok,
        &json!({"definition": v2}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.data()["version"], 2);
    let versions = api.get(&format!("/flows/{flow}/versions"), Some(tok)).await;
    assert_eq!(versions.data().as_array().unwrap().len(), 2);
    let worker = Worker::start(&t.ctx, 2);
    let r = wait_run(&api, tok, id, "an end", ended).await;
    let id2 = start(&api, tok, flow, json!({})).await;
    let r2 = wait_run(&api, tok, id2, "an end", ended).await;
    worker.stop().await;
    assert_eq!(r["version"], 1);
    assert_eq!(step(&r, "b")["output"]["echo"], "v1");
    assert_eq!(r2["version"], 2);
    assert_eq!(step(&r2, "x")["output"]["echo"], "v2");
}

#[actix_web::test]
async fn cancelling_during_a_fan_out_ends_the_run_and_its_steps() {
    let t = TestApp::new().await;
    let w = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let admin = api.login(&w.a.admin.email).await;
    let tok = admin.access.as_str();
    let flow = create(
        &api,
        tok,
        "slow-fan",
        json!({"steps": [
            {"id": "each", "node": "noop", "forEach": "input.items", "input": {"sleepMs": 600000}},
            noop("after", &["each"], json!({}))
        ]}),
    )
    .await;
    let items: Vec<Value> = (0..20).map(|i| json!(i)).collect();
    let worker = Worker::start(&t.ctx, 4);
    let id = start(&api, tok, flow, json!({"items": items})).await;
    // Some instances run (how many depends on the worker's concurrency and prefetch).
    wait_run(&api, tok, id, "running instances", |r| {
        step(r, "each")["instances"]
            .as_array()
            .is_some_and(|i| i.iter().any(|i| i["status"] == "running"))
    })
    .await;
    let res = api.delete(&format!("/flow-runs/{id}"), Some(tok)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.data()["status"], "cancelled");
    // The running jobs stop and nothing stays running; the run stays cancelled.
    let r = wait_run(&api, tok, id, "no running instance", |r| {
        step(r, "each")["instances"]
            .as_array()
            .is_some_and(|i| i.iter().all(|i| i["status"] == "cancelled"))
    })
    .await;
    assert_eq!(r["status"], "cancelled");
    assert_eq!(step(&r, "after")["status"], "cancelled");
    let jobs_open = eventually(DEADLINE, || async {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use itsur::store::schema::jobs::dsl as j;
        let mut conn = t.ctx.db.conn().await.unwrap();
        let n: i64 = j::jobs
            .filter(j::state.eq_any(["queued", "running"]))
            .count()
            .get_result(&mut conn)
            .await
            .unwrap();
        n == 0
    })
    .await;
    assert!(jobs_open, "every job of the run ended");
    worker.stop().await;
    api.delete(&format!("/flow-runs/{id}"), Some(tok))
        .await
        .assert_problem(409);
}

#[test]
fn cron_fires_at_local_time_across_a_dst_change() {
    use chrono::{DateTime, Utc};
    let zone: chrono_tz::Tz = "America/New_York".parse().unwrap();
    // 09:30 New York every day, across the 2026-03-08 spring-forward (EST → EDT).
    let mut t: DateTime<Utc> = "2026-03-06T00:00:00Z".parse().unwrap();
    let mut ticks = Vec::new();
    for _ in 0..4 {
        t = itsur::service::flows::next_tick("30 9 * * *", zone, t).unwrap();
        ticks.push(t.to_rfc3339());
    }
    assert_eq!(
        ticks,
        [
            "2026-03-06T14:30:00+00:00",
            "2026-03-07T14:30:00+00:00",
            "2026-03-08T13:30:00+00:00",
            "2026-03-09T13:30:00+00:00",
        ]
    );
    // 02:30 does not exist on the spring-forward day; it never fires twice on fall-back.
    let mut t: DateTime<Utc> = "2026-10-31T12:00:00Z".parse().unwrap();
    let mut fall = Vec::new();
    for _ in 0..3 {
        t = itsur::service::flows::next_tick("30 1 * * *", zone, t).unwrap();
        fall.push(t.to_rfc3339());
    }
    assert_eq!(fall[0], "2026-11-01T05:30:00+00:00");
    assert_eq!(
        fall.iter().filter(|x| x.starts_with("2026-11-01")).count(),
        1,
        "{fall:?}"
    );
}

#[actix_web::test]
async fn schedules_start_one_run_per_tick_however_many_workers_fire() {
    let t = TestApp::new().await;
    let w = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let admin = api.login(&w.a.admin.email).await;
    let tok = admin.access.as_str();
    let flow = create(&api, tok, "cron", json!({
        "steps": [noop("a", &[], json!({"echo": {"$ref": "input.who"}}))],
        "schedules": [{"cron": "0 21 * * *", "timeZone": "America/Mexico_City", "input": {"who": "cron"}}]
    })).await;
    // Make the tick due now, then fire from 4 schedulers at once.
    let due = {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use itsur::store::schema::flow_schedules::dsl as s;
        let mut conn = t.ctx.db.conn().await.unwrap();
        let next: chrono::DateTime<chrono::Utc> = s::flow_schedules
            .filter(s::flow_id.eq(flow))
            .select(s::next_run_at)
            .first(&mut conn)
            .await
            .unwrap();
        // 21:00 in Mexico City (UTC-6, no DST since 2022) is 03:00 UTC.
        assert_eq!(next.format("%H:%M").to_string(), "03:00");
        let due = chrono::Utc::now() - chrono::Duration::seconds(1);
        diesel::update(s::flow_schedules.filter(s::flow_id.eq(flow)))
            .set(s::next_run_at.eq(due))
            .execute(&mut conn)
            .await
            .unwrap();
        due
    };
    let fired = futures_util::future::join_all((0..4).map(|_| {
        let ctx = t.ctx.clone();
        async move {
            itsur::service::flow_schedules::fire_due(&ctx, chrono::Utc::now())
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(fired.iter().sum::<usize>(), 1, "{fired:?}");
    let runs = api.get(&format!("/flow-runs?flow={flow}"), Some(tok)).await;
    let list = runs.data().as_array().unwrap().clone();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["trigger"], "schedule");
    assert_eq!(list[0]["input"]["who"], "cron");
    // The schedule moved to the next local 21:00, after the tick it fired.
    let again = itsur::service::flow_schedules::fire_due(&t.ctx, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(again, 0);
    let _ = due;
    let worker = Worker::start(&t.ctx, 2);
    let id: Uuid = list[0]["id"].as_str().unwrap().parse().unwrap();
    let r = wait_run(&api, tok, id, "an end", ended).await;
    worker.stop().await;
    assert_eq!(step(&r, "a")["output"]["echo"], "cron");
}

/// A context whose `send_email` node talks to `smtp`.
async fn app_with_smtp(
    smtp: &crate::support::smtp::SmtpServer,
) -> (Ctx, crate::support::TestDb, crate::support::TestRedis) {
    app_with_smtp_url(&smtp.url).await
}

/// A context whose `send_email` node uses `SMTP_URL=url`.
async fn app_with_smtp_url(url: &str) -> (Ctx, crate::support::TestDb, crate::support::TestRedis) {
    let db = crate::support::TestDb::new().await;
    let redis = crate::support::TestRedis::new();
    let mut config = crate::support::config_for(&db.url, Some(&redis));
    config.smtp.url = Some(itsur::config::Secret::new(url.to_owned()));
    let ctx = Ctx::new(config).unwrap();
    ctx.readiness.refresh_now(&ctx).await;
    (ctx, db, redis)
}

async fn flow_named(api: &Api, token: &str, name: &str) -> Uuid {
    let list = api.get("/flows?limit=100", Some(token)).await;
    let f = list
        .data()
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .cloned();
    f.unwrap_or_else(|| panic!("flow {name} seeded: {}", list.text()))["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[actix_web::test]
async fn end_of_day_closes_vendors_reports_each_and_emails_the_admins() {
    let smtp = crate::support::smtp::SmtpServer::start().await;
    let (ctx, _db, _redis) = app_with_smtp(&smtp).await;
    let w = World::create(&ctx).await;
    let api = Api::new(ctx.clone()).await;
    let admin = api.login(&w.a.admin.email).await;
    let tok = admin.access.as_str();
    let seeded = itsur::service::flow_schedules::seed_campus_flows(&ctx, w.a.campus.id)
        .await
        .unwrap();
    assert_eq!(seeded, 2);
    assert_eq!(
        itsur::service::flow_schedules::seed_campus_flows(&ctx, w.a.campus.id)
            .await
            .unwrap(),
        0
    );
    let flow = flow_named(&api, tok, "campus.end_of_day").await;
    let worker = Worker::start(&ctx, 4);
    let id = start(&api, tok, flow, json!({})).await;
    let r = wait_run(&api, tok, id, "an end", ended).await;
    worker.stop().await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    assert_eq!(
        step(&r, "close")["output"]["closed"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(step(&r, "report")["itemsTotal"], 2, "one report per vendor");
    assert_eq!(step(&r, "summary")["output"]["vendors"], 2);
    assert_eq!(step(&r, "email")["output"]["sent"], 1);
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(mails[0].to, std::slice::from_ref(&w.a.admin.email));
    assert_eq!(mails[0].from, "no-reply@itsur.invalid");
    assert!(!mails[0].tls);
    assert!(
        mails[0]
            .header("Subject")
            .is_some_and(|s| s.starts_with("ITSUR Eats: end of day")),
        "{}",
        mails[0].data
    );
    assert_eq!(mails[0].header("To"), Some(w.a.admin.email.clone()));
    assert!(
        mails[0]
            .header("From")
            .is_some_and(|f| f.ends_with("<no-reply@itsur.invalid>")),
        "{}",
        mails[0].data
    );
    // Every vendor of campus A is closed; campus B's are not.
    let open = |campus: Uuid| {
        let ctx = ctx.clone();
        async move {
            use diesel::prelude::*;
            use diesel_async::RunQueryDsl;
            use itsur::store::schema::vendors::dsl as v;
            let mut conn = ctx.db.conn().await.unwrap();
            v::vendors
                .filter(v::campus_id.eq(campus).and(v::is_open.eq(true)))
                .count()
                .get_result::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };
    assert_eq!(open(w.a.campus.id).await, 0);
    assert_eq!(open(w.b.campus.id).await, 2);
}

#[actix_web::test]
async fn an_order_left_placed_is_cancelled_and_its_student_emailed() {
    let smtp = crate::support::smtp::SmtpServer::start().await;
    let (ctx, _db, _redis) = app_with_smtp(&smtp).await;
    let w = World::create(&ctx).await;
    let api = Api::new(ctx.clone()).await;
    let admin = api.login(&w.a.admin.email).await;
    let student = api.login(&w.a.student.email).await;
    let item = &w.a.items[0];
    let before = crate::support::fixtures::stock_of(&ctx, item.id).await;
    let res = api
        .post(
            "/orders",
            Some(&student.access),
            &crate::support::fixtures::order_body(w.a.vendor.id, item.id, 2),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let order = res.id();
    let fresh = api
        .post(
            "/orders",
            Some(&student.access),
            &crate::support::fixtures::order_body(w.a.vendor.id, item.id, 1),
        )
        .await
        .id();
    {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use itsur::store::schema::orders::dsl as o;
        let mut conn = ctx.db.conn().await.unwrap();
        diesel::update(o::orders.find(order))
            .set(o::created_at.eq(chrono::Utc::now() - chrono::Duration::minutes(11)))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    itsur::service::flow_schedules::seed_campus_flows(&ctx, w.a.campus.id)
        .await
        .unwrap();
    let flow = flow_named(&api, &admin.access, "order.unaccepted").await;
    let worker = Worker::start(&ctx, 4);
    let id = start(&api, &admin.access, flow, json!({})).await;
    let r = wait_run(&api, &admin.access, id, "an end", ended).await;
    worker.stop().await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let cancelled = step(&r, "cancel")["output"]["orders"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0]["orderId"], order.to_string());
    let o = api
        .get(&format!("/orders/{order}"), Some(&student.access))
        .await;
    assert_eq!(o.data()["status"], "cancelled");
    let o = api
        .get(&format!("/orders/{fresh}"), Some(&student.access))
        .await;
    assert_eq!(o.data()["status"], "placed", "a young order is left alone");
    assert_eq!(
        crate::support::fixtures::stock_of(&ctx, item.id).await,
        before - 1,
        "stock of the cancelled order restored"
    );
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(mails[0].to, std::slice::from_ref(&w.a.student.email));
}

#[actix_web::test]
async fn a_refused_email_fails_its_step_without_leaking_the_address() {
    let smtp = crate::support::smtp::SmtpServer::start().await;
    smtp.refuse_recipients();
    let r = email_once(&smtp.url, 3).await;
    assert_eq!(r["status"], "failed");
    let err = step(&r, "mail")["error"].as_str().unwrap().to_owned();
    assert!(err.contains("550"), "{err}");
    assert!(!err.contains('@'), "{err}");
    assert_eq!(
        step(&r, "mail")["attempts"],
        1,
        "a 5xx is permanent: no retry"
    );
}

/// Runs a one-step `send_email` flow (to campus A's student, at most `max_attempts`)
/// against `url`; returns the ended run.
async fn email_once(url: &str, max_attempts: u32) -> Value {
    let (ctx, _db, _redis) = app_with_smtp_url(url).await;
    let w = World::create(&ctx).await;
    let api = Api::new(ctx.clone()).await;
    let admin = api.login(&w.a.admin.email).await;
    let tok = admin.access.as_str();
    let flow = create(
        &api,
        tok,
        "mail",
        json!({"steps": [
            {"id": "mail", "node": "send_email", "maxAttempts": max_attempts,
             "input": {"to": {"userIds": [w.a.student.id]}, "subject": "hi", "text": "there"}}
        ]}),
    )
    .await;
    let worker = Worker::start(&ctx, 2);
    let id = start(&api, tok, flow, json!({})).await;
    let r = wait_run(&api, tok, id, "an end", ended).await;
    worker.stop().await;
    r
}

/// TLS is verified, never skipped: a server whose certificate comes from a CA this process
/// does not trust, or a server without STARTTLS when the URL requires it, gets nothing and
/// the step fails. (Success over STARTTLS and implicit TLS, with the test CA trusted through
/// `SSL_CERT_FILE`, is e2e `flows::email_goes_over_starttls_and_implicit_tls_with_its_headers`:
/// the trust store is read from the environment, which a test can only set for a child.)
#[actix_web::test]
async fn email_is_never_sent_to_an_untrusted_server_or_in_the_clear() {
    use crate::support::smtp::{SmtpServer, TlsMode};
    let pki = match crate::support::tls::Pki::new() {
        Ok(p) => p,
        Err(reason) => {
            crate::support::tls::skip("flows::email_is_never_sent_to_an_untrusted_server", &reason);
            return;
        }
    };
    for mode in [TlsMode::Implicit, TlsMode::StartTls] {
        let smtp = SmtpServer::start_tls(&pki, mode).await;
        let r = email_once(&smtp.url, 1).await;
        assert_eq!(r["status"], "failed", "{mode:?}: {r:#}");
        assert!(smtp.mails().is_empty(), "{mode:?}");
    }
    let plain = SmtpServer::start().await;
    let r = email_once(&format!("{}?tls=required", plain.url), 1).await;
    assert_eq!(r["status"], "failed", "{r:#}");
    let err = step(&r, "mail")["error"].as_str().unwrap().to_owned();
    assert!(!err.contains('@'), "{err}");
    assert!(plain.mails().is_empty(), "nothing went in the clear");
}

#[actix_web::test]
async fn ws_clients_follow_a_run_through_its_topic_under_tenancy() {
    use crate::support::ws::{WsClient, request, try_connect};
    let t = TestApp::new().await;
    let w = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let admin = api.login(&w.a.admin.email).await;
    let other = api.login(&w.b.admin.email).await;
    let tok = admin.access.as_str();
    let flow = create(
        &api,
        tok,
        "watched",
        json!({"steps": [
            noop("a", &[], json!({})), noop("b", &["a"], json!({}))
        ]}),
    )
    .await;
    let worker = Worker::start(&t.ctx, 2);
    let id = start(&api, tok, flow, json!({})).await;
    let noise = start(&api, tok, flow, json!({})).await;
    wait_run(&api, tok, id, "an end", ended).await;
    wait_run(&api, tok, noise, "an end", ended).await;
    worker.stop().await;
    let server = crate::support::TestServer::start(t.ctx.clone());
    // Resume from 0 with the topic: exactly this run's events, in order, ending with its end.
    let mut ws = WsClient::connect_request(request(
        server.addr,
        &format!("?topics=flow-run:{id}&after=0"),
        Some(tok),
    ))
    .await;
    let (events, resumed) = ws.events_until("resumed").await;
    assert_eq!(resumed["complete"], true, "{resumed}");
    assert!(events.iter().all(|e| e["aggregate"]["type"] == "flow_run" && e["aggregate"]["id"] == id.to_string()), "{events:#?}");
    let last = events.last().unwrap();
    assert_eq!(last["event"], "flow_run.status_changed");
    assert_eq!(last["data"]["status"], "succeeded");
    let steps: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "flow_step.status_changed")
        .collect();
    assert_eq!(steps.len(), 4, "a and b queued then succeeded: {steps:#?}");
    // Another campus's admin cannot subscribe to it; a malformed topic is a 400.
    let refused = try_connect(request(
        server.addr,
        &format!("?topics=flow-run:{id}"),
        Some(&other.access),
    ))
    .await;
    assert_eq!(refused.err(), Some(404));
    let refused = try_connect(request(server.addr, "?topics=order:1", Some(tok))).await;
    assert_eq!(refused.err(), Some(400));
    server.shutdown.trigger();
}
