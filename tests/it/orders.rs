//! Orders end to end: stock under a burst of concurrent orders, idempotent retries (also
//! concurrent), the state machine (every illegal transition, stock restored on cancel,
//! versioned events), optimistic concurrency with `If-Match`, list filters and pagination,
//! push devices, and the campus-scoped audit trail.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix_web::test::TestRequest;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures_util::StreamExt;
use futures_util::future::join_all;
use itsur::app::Ctx;
use itsur::domain::OrderStatus;
use itsur::store::schema::{idempotency_keys, order_items, orders, outbox_events};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::config_for;
use crate::support::fixtures::{
    Api, Http, Resp, Session, World, add_item, add_user, order_body, stock_of,
};
use crate::support::{TestApp, TestDb, TestRedis, TestServer};

async fn setup() -> (TestApp, World, Api) {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    (t, world, api)
}

/// A context with a pool big enough for real concurrency and a patient pool checkout (the
/// burst tests are about correctness, not about how fast a loaded machine hands out
/// connections).
fn concurrent_ctx(db: &TestDb, redis: &TestRedis) -> Ctx {
    let mut config = config_for(&db.url, Some(redis));
    config.database.pool_size = 20;
    config.database.connect_timeout = Duration::from_secs(30);
    Ctx::new(config).unwrap()
}

/// `(aggregate_id, aggregate_version)` of every `order.created` event.
async fn created_events(ctx: &Ctx) -> Vec<(Uuid, i32)> {
    let mut conn = ctx.db.conn().await.unwrap();
    outbox_events::table
        .filter(outbox_events::event_type.eq("order.created"))
        .select((
            outbox_events::aggregate_id,
            outbox_events::aggregate_version,
        ))
        .load(&mut conn)
        .await
        .unwrap()
}

async fn order_count(ctx: &Ctx) -> i64 {
    let mut conn = ctx.db.conn().await.unwrap();
    orders::table.count().get_result(&mut conn).await.unwrap()
}

/// `(event_type, aggregate_version, payload)` of one order's events, oldest first.
async fn order_events(ctx: &Ctx, order_id: Uuid) -> Vec<(String, i32, Value)> {
    let mut conn = ctx.db.conn().await.unwrap();
    itsur::store::outbox::list_for_aggregate(&mut conn, "order", order_id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.event_type, e.aggregate_version, e.payload))
        .collect()
}

async fn place(
    api: &Api,
    s: &Session,
    vendor: impl Into<Uuid>,
    item: impl Into<Uuid>,
    quantity: i32,
) -> Uuid {
    let res = api
        .post("/orders", s.token(), &order_body(vendor, item, quantity))
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    res.id()
}

async fn transition(api: &Api, s: &Session, order: Uuid, to: &str) -> Resp {
    api.post(
        &format!("/orders/{order}/transitions"),
        s.token(),
        &json!({ "to": to }),
    )
    .await
}

fn transition_with(s: &Session, order: Uuid, to: &str, if_match: &str) -> TestRequest {
    TestRequest::post()
        .uri(&format!("/orders/{order}/transitions"))
        .insert_header(("Authorization", format!("Bearer {}", s.access)))
        .insert_header(("If-Match", if_match.to_owned()))
        .set_json(json!({ "to": to }))
}

fn ids(res: &Resp) -> Vec<Uuid> {
    res.data()
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {}", res.text()))
        .iter()
        .map(|o| o["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

// (a) ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_orders_for_ten_units_sell_exactly_ten() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let ctx = concurrent_ctx(&db, &redis);
    let world = World::create(&ctx).await;
    let item = add_item(&ctx, world.a.vendor.id, "Last ten", 700, 10).await;
    let mut emails = Vec::new();
    for i in 0..100 {
        let email = format!("buyer{i}@a.edu");
        add_user(&ctx, &email, "student", Some(world.a.campus.id), None).await;
        emails.push(email);
    }
    let server = TestServer::start(ctx.clone());
    let http = Http::new(&server);
    let sessions: Vec<Session> = futures_util::stream::iter(emails)
        .map(|email| {
            let http = http.clone();
            async move { http.login(&email).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;

    // Everyone presses "order" at once.
    let start = Arc::new(tokio::sync::Barrier::new(sessions.len()));
    let body = order_body(world.a.vendor.id, item.id, 1);
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|s| {
            let (http, start, body) = (http.clone(), Arc::clone(&start), body.clone());
            tokio::spawn(async move {
                start.wait().await;
                http.post("/orders", s.token(), &body).await
            })
        })
        .collect();
    let results: Vec<Resp> = join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    let mut by_status: HashMap<u16, usize> = HashMap::new();
    for r in &results {
        *by_status.entry(r.status).or_default() += 1;
    }
    assert_eq!(
        by_status,
        HashMap::from([(201, 10), (409, 90)]),
        "statuses; first odd one: {:?}",
        results
            .iter()
            .find(|r| r.status != 201 && r.status != 409)
            .map(Resp::text)
    );
    for r in results.iter().filter(|r| r.status == 409) {
        r.assert_problem(409);
        assert!(
            r.body["detail"].as_str().unwrap().contains("stock"),
            "{}",
            r.text()
        );
    }
    let created: HashSet<Uuid> = results
        .iter()
        .filter(|r| r.status == 201)
        .map(Resp::id)
        .collect();
    assert_eq!(created.len(), 10);

    assert_eq!(stock_of(&ctx, item.id).await, 0);
    assert_eq!(order_count(&ctx).await, 10);
    let mut conn = ctx.db.conn().await.unwrap();
    let sold: Vec<i32> = order_items::table
        .filter(order_items::menu_item_id.eq(item.id))
        .select(order_items::quantity)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(sold.iter().sum::<i32>(), 10);
    drop(conn);
    // One event per order, no more, no fewer, each for an order that exists.
    let events = created_events(&ctx).await;
    assert_eq!(events.len(), 10);
    let event_orders: HashSet<Uuid> = events.iter().map(|(id, _)| *id).collect();
    assert_eq!(event_orders, created);
    assert!(events.iter().all(|(_, v)| *v == 1));

    server.shutdown.trigger();
    server.task.await.unwrap().unwrap();
}

#[actix_web::test]
async fn placing_an_order_checks_the_menu_and_snapshots_prices() {
    let (t, world, api) = setup().await;
    let a = &world.a;
    let (burrito, agua) = (&a.items[0], &a.items[1]);
    let student = api.login(&a.student.email).await;
    let staff = api.login(&a.staff.email).await;

    let body = json!({
        "vendorId": a.vendor.id,
        "items": [
            { "menuItemId": burrito.id, "quantity": 2 },
            { "menuItemId": agua.id, "quantity": 3 },
        ],
        "note": "sin cebolla",
    });
    let res = api.post("/orders", student.token(), &body).await;
    assert_eq!(res.status, 201, "{}", res.text());
    let order = res.id();
    assert_eq!(
        res.header("location"),
        Some(format!("/orders/{order}").as_str())
    );
    let d = res.data();
    assert_eq!(d["status"], "placed");
    assert_eq!(d["version"], 1);
    assert_eq!(d["note"], "sin cebolla");
    assert_eq!(d["userId"], a.student.id.to_string());
    assert_eq!(d["campusId"], a.campus.id.to_string());
    assert_eq!(
        d["totalCents"],
        2 * burrito.price_cents + 3 * agua.price_cents
    );
    assert_eq!(d["items"].as_array().unwrap().len(), 2);
    let events = order_events(&t.ctx, order).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].2["totalCents"], d["totalCents"]);

    // A price change later does not rewrite the order.
    let res = api
        .patch(
            &format!("/menu-items/{}", burrito.id),
            staff.token(),
            &json!({ "priceCents": 9999, "description": "new recipe" }),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.data()["priceCents"], 9999);
    assert_eq!(res.data()["description"], "new recipe");
    let res = api.get(&format!("/orders/{order}"), student.token()).await;
    assert_eq!(
        res.data()["totalCents"],
        2 * burrito.price_cents + 3 * agua.price_cents
    );
    // PATCH null clears a description; absent fields stay.
    let res = api
        .patch(
            &format!("/menu-items/{}", burrito.id),
            staff.token(),
            &json!({ "description": null }),
        )
        .await;
    assert_eq!(res.data()["description"], Value::Null);
    assert_eq!(res.data()["priceCents"], 9999);

    // An item of another vendor of the same campus is a field error.
    let res = api
        .post(
            "/orders",
            student.token(),
            &order_body(a.vendor.id, a.other_items[0].id, 1),
        )
        .await;
    res.assert_problem(400);
    assert_eq!(res.field_errors(), ["items[0].menuItemId"]);

    // An unavailable item and a closed vendor are conflicts, and take no stock.
    let res = api
        .patch(
            &format!("/menu-items/{}", agua.id),
            staff.token(),
            &json!({ "available": false }),
        )
        .await;
    assert_eq!(res.data()["available"], false);
    let stock = stock_of(&t.ctx, agua.id).await;
    api.post(
        "/orders",
        student.token(),
        &order_body(a.vendor.id, agua.id, 1),
    )
    .await
    .assert_problem(409);
    assert_eq!(stock_of(&t.ctx, agua.id).await, stock);
    let closed = itsur::store::vendors::insert(
        &mut t.ctx.db.conn().await.unwrap(),
        &itsur::store::vendors::NewVendorRow {
            id: Uuid::now_v7().into(),
            campus_id: a.campus.id.into(),
            name: "Closed".to_owned(),
            description: None,
            is_open: false,
        },
    )
    .await
    .unwrap();
    let item = add_item(&t.ctx, closed.id, "Cold soup", 100, 5).await;
    api.post(
        "/orders",
        student.token(),
        &order_body(closed.id, item.id, 1),
    )
    .await
    .assert_problem(409);
    assert_eq!(stock_of(&t.ctx, item.id).await, 5);

    // A new menu item is available unless told otherwise, and orderable at once.
    let res = api
        .post(
            &format!("/vendors/{}/menu-items", a.vendor.id),
            staff.token(),
            &json!({ "name": "  Horchata  ", "priceCents": 0, "stock": 1 }),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(res.data()["available"], true);
    assert_eq!(res.data()["name"], "Horchata");
    let free = res.id();
    let res = api
        .post(
            "/orders",
            student.token(),
            &order_body(a.vendor.id, free, 1),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(res.data()["totalCents"], 0);
}

// (b) ------------------------------------------------------------------------------------

#[actix_web::test]
async fn a_retried_post_with_the_same_idempotency_key_replays_the_first_response() {
    let (t, world, api) = setup().await;
    let (vendor, item) = (world.a.vendor.id, world.a.items[0].id);
    let s = api.login(&world.a.student.email).await;
    let keyed = |session: &Session, key: &str, body: &Value| {
        TestRequest::post()
            .uri("/orders")
            .insert_header(("Authorization", format!("Bearer {}", session.access)))
            .insert_header(("Idempotency-Key", key.to_owned()))
            .set_json(body)
    };
    let body = order_body(vendor, item, 2);
    let before = stock_of(&t.ctx, item).await;

    let first = api.send(keyed(&s, "retry-1", &body)).await;
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(first.header("idempotent-replayed"), None);
    let second = api.send(keyed(&s, "retry-1", &body)).await;
    assert_eq!(second.status, 201, "{}", second.text());
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("etag"), first.header("etag"));
    assert_eq!(second.header("location"), first.header("location"));
    assert_eq!(order_count(&t.ctx).await, 1);
    assert_eq!(stock_of(&t.ctx, item).await, before - 2);
    assert_eq!(created_events(&t.ctx).await.len(), 1);

    // The same key with another body is a conflict, and changes nothing.
    let other_body = order_body(vendor, item, 3);
    api.send(keyed(&s, "retry-1", &other_body))
        .await
        .assert_problem(409);
    assert_eq!(order_count(&t.ctx).await, 1);
    assert_eq!(stock_of(&t.ctx, item).await, before - 2);

    // Keys belong to a user: another student's "retry-1" is their own order.
    let s2 = api.login(&world.a.student2.email).await;
    let theirs = api.send(keyed(&s2, "retry-1", &body)).await;
    assert_eq!(theirs.status, 201, "{}", theirs.text());
    assert_eq!(theirs.header("idempotent-replayed"), None);
    assert_ne!(theirs.id(), first.id());

    // Without a key, a retry is a second order.
    api.post("/orders", s.token(), &body).await;
    api.post("/orders", s.token(), &body).await;
    assert_eq!(order_count(&t.ctx).await, 4);

    // A failed attempt is not remembered: after a restock the same key places the order.
    let scarce = add_item(&t.ctx, vendor, "Scarce", 100, 1).await;
    let scarce_body = order_body(vendor, scarce.id, 2);
    api.send(keyed(&s, "retry-2", &scarce_body))
        .await
        .assert_problem(409);
    let staff = api.login(&world.a.staff.email).await;
    let res = api
        .patch(
            &format!("/menu-items/{}", scarce.id),
            staff.token(),
            &json!({ "stock": 5 }),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let res = api.send(keyed(&s, "retry-2", &scarce_body)).await;
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(res.header("idempotent-replayed"), None);
    assert_eq!(stock_of(&t.ctx, scarce.id).await, 3);

    // After 24 h a key is forgotten: the same key then places a new order, even with another
    // body. (Expiry simulated by moving the stored key's deadline into the past.)
    let mut conn = t.ctx.db.conn().await.unwrap();
    diesel::update(idempotency_keys::table.filter(idempotency_keys::key.eq("retry-1")))
        .set(idempotency_keys::expires_at.eq(chrono::Utc::now() - chrono::Duration::minutes(1)))
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let res = api.send(keyed(&s, "retry-1", &other_body)).await;
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(res.header("idempotent-replayed"), None);
    assert_ne!(res.id(), first.id());
    let again = api.send(keyed(&s, "retry-1", &other_body)).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.id(), res.id());

    // A malformed key is a 400, not a silently ignored header.
    for bad in ["", &"k".repeat(256), "with space"] {
        api.send(keyed(&s, bad, &body)).await.assert_problem(400);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_posts_with_one_idempotency_key_create_one_order() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let ctx = concurrent_ctx(&db, &redis);
    let world = World::create(&ctx).await;
    let item = world.a.items[0].id;
    let before = stock_of(&ctx, item).await;
    let server = TestServer::start(ctx.clone());
    let http = Http::new(&server);
    let s = http.login(&world.a.student.email).await;

    let start = Arc::new(tokio::sync::Barrier::new(20));
    let body = order_body(world.a.vendor.id, item, 1);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (http, start, body, token) = (
                http.clone(),
                Arc::clone(&start),
                body.clone(),
                s.access.clone(),
            );
            tokio::spawn(async move {
                start.wait().await;
                http.send(
                    reqwest::Method::POST,
                    "/orders",
                    Some(&token),
                    &[("Idempotency-Key", "burst-1")],
                    Some(&body),
                )
                .await
            })
        })
        .collect();
    let results: Vec<Resp> = join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    for r in &results {
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let ids: HashSet<Uuid> = results.iter().map(Resp::id).collect();
    assert_eq!(ids.len(), 1, "every response names the same order");
    let fresh = results
        .iter()
        .filter(|r| r.header("idempotent-replayed").is_none())
        .count();
    assert_eq!(fresh, 1, "one request placed it, the others replayed it");
    assert_eq!(order_count(&ctx).await, 1);
    assert_eq!(created_events(&ctx).await.len(), 1);
    assert_eq!(stock_of(&ctx, item).await, before - 1);

    server.shutdown.trigger();
    server.task.await.unwrap().unwrap();
}

// (c) ------------------------------------------------------------------------------------

const LEGAL: [(OrderStatus, OrderStatus); 6] = [
    (OrderStatus::Placed, OrderStatus::Accepted),
    (OrderStatus::Accepted, OrderStatus::Preparing),
    (OrderStatus::Preparing, OrderStatus::Ready),
    (OrderStatus::Ready, OrderStatus::PickedUp),
    (OrderStatus::Placed, OrderStatus::Cancelled),
    (OrderStatus::Accepted, OrderStatus::Cancelled),
];

/// The vendor-side steps from `placed` to `state`.
fn path_to(state: OrderStatus) -> &'static [&'static str] {
    match state {
        OrderStatus::Placed => &[],
        OrderStatus::Accepted => &["accepted"],
        OrderStatus::Preparing => &["accepted", "preparing"],
        OrderStatus::Ready => &["accepted", "preparing", "ready"],
        OrderStatus::PickedUp => &["accepted", "preparing", "ready", "picked_up"],
        OrderStatus::Cancelled => &["cancelled"],
    }
}

#[actix_web::test]
async fn every_illegal_transition_is_a_conflict_that_changes_nothing() {
    let (t, world, api) = setup().await;
    let (vendor, item) = (world.a.vendor.id, world.a.items[0].id);
    let student = api.login(&world.a.student.email).await;
    let staff = api.login(&world.a.staff.email).await;

    let mut checked = 0;
    for from in OrderStatus::ALL {
        let order = place(&api, &student, vendor, item, 1).await;
        for step in path_to(from) {
            let res = transition(&api, &staff, order, step).await;
            assert_eq!(res.status, 200, "to {step}: {}", res.text());
        }
        let stock = stock_of(&t.ctx, item).await;
        let events = order_events(&t.ctx, order).await.len();
        let version = api
            .get(&format!("/orders/{order}"), staff.token())
            .await
            .data()["version"]
            .clone();
        for to in OrderStatus::ALL {
            if LEGAL.contains(&(from, to)) {
                continue;
            }
            let res = transition(&api, &staff, order, to.as_str()).await;
            assert_eq!(res.status, 409, "{from} -> {to}: {}", res.text());
            res.assert_is_problem();
            checked += 1;
        }
        let now = api.get(&format!("/orders/{order}"), staff.token()).await;
        assert_eq!(now.data()["status"], from.as_str());
        assert_eq!(now.data()["version"], version);
        assert_eq!(stock_of(&t.ctx, item).await, stock, "from {from}");
        assert_eq!(order_events(&t.ctx, order).await.len(), events);
    }
    assert_eq!(checked, 30);

    // Not a state at all: a validation problem, not a conflict.
    let order = place(&api, &student, vendor, item, 1).await;
    let res = transition(&api, &staff, order, "shipped").await;
    res.assert_problem(400);
    assert_eq!(res.field_errors(), ["to"]);
}

/// A status the code does not know (written by a newer release, or by hand) fails the read
/// with a 500, and a transition with it changes nothing: the store never guesses a state.
#[actix_web::test]
async fn an_unknown_status_in_the_database_is_an_error_not_a_default() {
    let (t, world, api) = setup().await;
    let student = api.login(&world.a.student.email).await;
    let staff = api.login(&world.a.staff.email).await;
    let order = place(&api, &student, world.a.vendor.id, world.a.items[0].id, 1).await;
    let mut conn = t.ctx.db.conn().await.unwrap();
    diesel::sql_query("ALTER TABLE orders DROP CONSTRAINT orders_status_check")
        .execute(&mut conn)
        .await
        .unwrap();
    diesel::update(orders::table.find(order))
        .set(orders::status.eq("shipped"))
        .execute(&mut conn)
        .await
        .unwrap();

    api.get(&format!("/orders/{order}"), staff.token())
        .await
        .assert_problem(500);
    api.get("/orders", staff.token()).await.assert_problem(500);
    transition(&api, &staff, order, "accepted")
        .await
        .assert_problem(500);
    let status: String = orders::table
        .find(order)
        .select(orders::status)
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(status, "shipped");
}

#[actix_web::test]
async fn transitions_write_versioned_events() {
    let (t, world, api) = setup().await;
    let student = api.login(&world.a.student.email).await;
    let staff = api.login(&world.a.staff.email).await;
    let order = place(&api, &student, world.a.vendor.id, world.a.items[0].id, 1).await;
    for (i, to) in ["accepted", "preparing", "ready", "picked_up"]
        .into_iter()
        .enumerate()
    {
        let res = transition(&api, &staff, order, to).await;
        assert_eq!(res.status, 200, "{}", res.text());
        let version = i32::try_from(i).unwrap() + 2;
        assert_eq!(res.data()["version"], version);
        assert_eq!(res.data()["status"], to);
        assert_eq!(res.header("etag"), Some(format!("\"{version}\"").as_str()));
    }
    let events = order_events(&t.ctx, order).await;
    let shape: Vec<(&str, i32)> = events.iter().map(|(e, v, _)| (e.as_str(), *v)).collect();
    assert_eq!(
        shape,
        [
            ("order.created", 1),
            ("order.status_changed", 2),
            ("order.status_changed", 3),
            ("order.status_changed", 4),
            ("order.status_changed", 5),
        ]
    );
    let mut from = "placed";
    for ((_, version, payload), to) in
        events[1..]
            .iter()
            .zip(["accepted", "preparing", "ready", "picked_up"])
    {
        assert_eq!(payload["version"], *version);
        assert_eq!(payload["from"], from);
        assert_eq!(payload["to"], to);
        assert_eq!(payload["orderId"], order.to_string());
        from = to;
    }
}

#[actix_web::test]
async fn cancelling_restores_stock_once_and_students_cancel_only_placed_orders() {
    let (t, world, api) = setup().await;
    let vendor = world.a.vendor.id;
    let item = add_item(&t.ctx, vendor, "Counted", 250, 10).await.id;
    let student = api.login(&world.a.student.email).await;
    let other_student = api.login(&world.a.student2.email).await;
    let staff = api.login(&world.a.staff.email).await;

    // The student cancels a placed order: stock comes back, once.
    let o1 = place(&api, &student, vendor, item, 3).await;
    assert_eq!(stock_of(&t.ctx, item).await, 7);
    let res = transition(&api, &student, o1, "cancelled").await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.data()["status"], "cancelled");
    assert_eq!(stock_of(&t.ctx, item).await, 10);
    transition(&api, &student, o1, "cancelled")
        .await
        .assert_problem(409);
    transition(&api, &staff, o1, "cancelled")
        .await
        .assert_problem(409);
    assert_eq!(stock_of(&t.ctx, item).await, 10);

    // Once accepted, only the vendor side may cancel; that restores stock too.
    let o2 = place(&api, &student, vendor, item, 4).await;
    assert_eq!(transition(&api, &staff, o2, "accepted").await.status, 200);
    transition(&api, &student, o2, "cancelled")
        .await
        .assert_problem(409);
    assert_eq!(stock_of(&t.ctx, item).await, 6);
    assert_eq!(transition(&api, &staff, o2, "cancelled").await.status, 200);
    assert_eq!(stock_of(&t.ctx, item).await, 10);

    // Preparing is past the point of cancelling.
    let o3 = place(&api, &student, vendor, item, 2).await;
    assert_eq!(transition(&api, &staff, o3, "accepted").await.status, 200);
    assert_eq!(transition(&api, &staff, o3, "preparing").await.status, 200);
    transition(&api, &staff, o3, "cancelled")
        .await
        .assert_problem(409);
    assert_eq!(stock_of(&t.ctx, item).await, 8);

    // A student never moves an order forward, and cannot touch someone else's.
    let o4 = place(&api, &student, vendor, item, 1).await;
    transition(&api, &student, o4, "accepted")
        .await
        .assert_problem(409);
    transition(&api, &other_student, o4, "cancelled")
        .await
        .assert_problem(404);
    assert_eq!(stock_of(&t.ctx, item).await, 7);

    // A cancellation of an order that emptied the shelf makes the item orderable again.
    let o5 = place(&api, &student, vendor, item, 7).await;
    assert_eq!(stock_of(&t.ctx, item).await, 0);
    api.post(
        "/orders",
        other_student.token(),
        &order_body(vendor, item, 1),
    )
    .await
    .assert_problem(409);
    assert_eq!(
        transition(&api, &student, o5, "cancelled").await.status,
        200
    );
    place(&api, &other_student, vendor, item, 1).await;
}

// (d) ------------------------------------------------------------------------------------

#[actix_web::test]
async fn if_match_guards_against_stale_versions() {
    let (_t, world, api) = setup().await;
    let student = api.login(&world.a.student.email).await;
    let staff = api.login(&world.a.staff.email).await;
    let order = place(&api, &student, world.a.vendor.id, world.a.items[0].id, 1).await;

    let res = api.get(&format!("/orders/{order}"), staff.token()).await;
    assert_eq!(res.header("etag"), Some("\"1\""));
    assert_eq!(res.data()["version"], 1);

    let res = api
        .send(transition_with(&staff, order, "accepted", "\"1\""))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("etag"), Some("\"2\""));

    // A stale version: 412, nothing changes.
    let res = api
        .send(transition_with(&staff, order, "preparing", "\"1\""))
        .await;
    res.assert_problem(412);
    let now = api.get(&format!("/orders/{order}"), staff.token()).await;
    assert_eq!(now.data()["status"], "accepted");
    assert_eq!(now.header("etag"), Some("\"2\""));
    // A version from the future is just as wrong.
    api.send(transition_with(&staff, order, "preparing", "\"7\""))
        .await
        .assert_problem(412);

    // Weak and bare forms of the current version, and `*`, are accepted.
    let res = api
        .send(transition_with(&staff, order, "preparing", "W/\"2\""))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let res = api.send(transition_with(&staff, order, "ready", "3")).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let res = api
        .send(transition_with(&staff, order, "picked_up", "*"))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("etag"), Some("\"5\""));

    // Not a version at all.
    let order = place(&api, &student, world.a.vendor.id, world.a.items[0].id, 1).await;
    for bad in ["abc", "\"0\"", "-1", ""] {
        api.send(transition_with(&staff, order, "accepted", bad))
            .await
            .assert_problem(400);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transitions_with_the_same_if_match_have_one_winner() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let ctx = concurrent_ctx(&db, &redis);
    let world = World::create(&ctx).await;
    let item = world.a.items[0].id;
    let server = TestServer::start(ctx.clone());
    let http = Http::new(&server);
    let student = http.login(&world.a.student.email).await;
    let staff = http.login(&world.a.staff.email).await;
    let admin = http.login(&world.a.admin.email).await;

    for round in 0..3 {
        let stock = stock_of(&ctx, item).await;
        let res = http
            .post(
                "/orders",
                student.token(),
                &order_body(world.a.vendor.id, item, 2),
            )
            .await;
        assert_eq!(res.status, 201, "{}", res.text());
        assert_eq!(res.header("etag"), Some("\"1\""));
        let order = res.id();

        // Staff and admin race: some accept, some cancel, all from version 1.
        let start = Arc::new(tokio::sync::Barrier::new(10));
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let who = if i % 2 == 0 { &staff } else { &admin };
                let to = if i % 3 == 0 { "cancelled" } else { "accepted" };
                let (http, start, token) = (http.clone(), Arc::clone(&start), who.access.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    let res = http
                        .send(
                            reqwest::Method::POST,
                            &format!("/orders/{order}/transitions"),
                            Some(&token),
                            &[("If-Match", "\"1\"")],
                            Some(&json!({ "to": to })),
                        )
                        .await;
                    (to, res)
                })
            })
            .collect();
        let results: Vec<(&str, Resp)> = join_all(tasks)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();

        let winners: Vec<&(&str, Resp)> = results.iter().filter(|(_, r)| r.status == 200).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:#?}");
        for (_, r) in results.iter().filter(|(_, r)| r.status != 200) {
            assert!(
                r.status == 412 || r.status == 409,
                "round {round}: {}",
                r.text()
            );
            r.assert_is_problem();
        }
        let (to, won) = winners[0];
        assert_eq!(won.header("etag"), Some("\"2\""));

        let res = http
            .send(
                reqwest::Method::GET,
                &format!("/orders/{order}"),
                staff.token(),
                &[],
                None,
            )
            .await;
        assert_eq!(res.data()["status"], *to);
        assert_eq!(res.data()["version"], 2);
        assert_eq!(res.header("etag"), Some("\"2\""));
        let events = order_events(&ctx, order).await;
        assert_eq!(
            events.len(),
            2,
            "one order.created, one order.status_changed"
        );
        let expected_stock = if *to == "cancelled" { stock } else { stock - 2 };
        assert_eq!(stock_of(&ctx, item).await, expected_stock);
    }

    server.shutdown.trigger();
    server.task.await.unwrap().unwrap();
}

// (e) ------------------------------------------------------------------------------------

#[actix_web::test]
async fn lists_filter_paginate_and_stay_in_scope() {
    let (_t, world, api) = setup().await;
    let a = &world.a;
    let student = api.login(&a.student.email).await;
    let student2 = api.login(&a.student2.email).await;
    let staff = api.login(&a.staff.email).await;
    let other_staff = api.login(&a.other_staff.email).await;
    let admin = api.login(&a.admin.email).await;
    let root = api.login(&world.platform_admin.email).await;
    let student_b = api.login(&world.b.student.email).await;
    let staff_b = api.login(&world.b.staff.email).await;

    let mut mine = Vec::new();
    for _ in 0..5 {
        mine.push(place(&api, &student, a.vendor.id, a.items[0].id, 1).await);
    }
    for _ in 0..2 {
        mine.push(place(&api, &student, a.other_vendor.id, a.other_items[0].id, 1).await);
    }
    let theirs = place(&api, &student2, a.vendor.id, a.items[1].id, 1).await;
    for &o in &mine[..2] {
        assert_eq!(transition(&api, &staff, o, "accepted").await.status, 200);
    }

    // A student sees their own orders, newest first.
    let res = api.get("/orders", student.token()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let newest_first: Vec<Uuid> = mine.iter().rev().copied().collect();
    assert_eq!(ids(&res), newest_first);
    assert_eq!(
        res.body["pagination"],
        json!({ "total": 7, "limit": 20, "offset": 0, "hasMore": false })
    );

    // Status filter.
    let res = api.get("/orders?status=accepted", student.token()).await;
    assert_eq!(ids(&res), [mine[1], mine[0]]);
    assert_eq!(res.body["pagination"]["total"], 2);
    assert!(
        res.data()
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["status"] == "accepted")
    );
    let res = api.get("/orders?status=placed", student.token()).await;
    assert_eq!(res.body["pagination"]["total"], 5);
    let res = api.get("/orders?status=ready", student.token()).await;
    assert_eq!(ids(&res), Vec::<Uuid>::new());

    // Pages of three walk the whole list once.
    let mut walked = Vec::new();
    for (offset, len, more) in [(0, 3, true), (3, 3, true), (6, 1, false)] {
        let res = api
            .get(&format!("/orders?limit=3&offset={offset}"), student.token())
            .await;
        assert_eq!(res.data().as_array().unwrap().len(), len);
        assert_eq!(
            res.body["pagination"],
            json!({ "total": 7, "limit": 3, "offset": offset, "hasMore": more })
        );
        walked.extend(ids(&res));
    }
    assert_eq!(walked, newest_first);
    let res = api.get("/orders?limit=3&offset=50", student.token()).await;
    assert_eq!(res.data().as_array().unwrap().len(), 0);
    assert_eq!(res.body["pagination"]["hasMore"], false);
    let res = api
        .get("/orders?status=placed&limit=2&offset=2", student.token())
        .await;
    assert_eq!(ids(&res), [mine[4], mine[3]]);
    assert_eq!(res.body["pagination"]["hasMore"], true);

    // Vendor staff see exactly their vendor's board.
    let res = api.get("/orders", staff.token()).await;
    let board: HashSet<Uuid> = ids(&res).into_iter().collect();
    let expected: HashSet<Uuid> = mine[..5].iter().copied().chain([theirs]).collect();
    assert_eq!(board, expected);
    assert!(
        res.data()
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["vendorId"] == a.vendor.id.to_string())
    );
    let res = api.get("/orders?status=placed", staff.token()).await;
    assert_eq!(res.body["pagination"]["total"], 4);
    let res = api.get("/orders", other_staff.token()).await;
    assert_eq!(
        ids(&res).into_iter().collect::<HashSet<_>>(),
        mine[5..].iter().copied().collect()
    );

    // Campus and platform admins see the campus; campus B sees none of it.
    assert_eq!(
        api.get("/orders", admin.token()).await.body["pagination"]["total"],
        8
    );
    assert_eq!(
        api.get("/orders", root.token()).await.body["pagination"]["total"],
        8
    );
    for s in [&student_b, &staff_b] {
        let res = api.get("/orders", s.token()).await;
        assert_eq!(res.body["pagination"]["total"], 0);
    }

    // Bad filters are 400 problems.
    for q in [
        "status=bogus",
        "limit=0",
        "limit=101",
        "limit=abc",
        "offset=-1",
    ] {
        api.get(&format!("/orders?{q}"), student.token())
            .await
            .assert_problem(400);
    }
}

// (f) ------------------------------------------------------------------------------------

#[actix_web::test]
async fn devices_are_registered_once_and_deleted_by_their_owner() {
    let (_t, world, api) = setup().await;
    let s = api.login(&world.a.student.email).await;
    let other = api.login(&world.a.student2.email).await;

    let res = api
        .post(
            "/me/devices",
            s.token(),
            &json!({ "platform": "fcm", "token": "tok-1" }),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(res.data()["platform"], "fcm");
    let d1 = res.id();
    let again = api
        .post(
            "/me/devices",
            s.token(),
            &json!({ "platform": "fcm", "token": "tok-1" }),
        )
        .await;
    assert_eq!(again.status, 201);
    assert_eq!(again.id(), d1, "the same token twice is one device");

    for (body, field) in [
        (json!({ "platform": "pager", "token": "tok-2" }), "platform"),
        (json!({ "platform": "FCM", "token": "tok-2" }), "platform"),
        (json!({ "platform": "apns", "token": "  " }), "token"),
        (
            json!({ "platform": "apns", "token": "x".repeat(4097) }),
            "token",
        ),
    ] {
        let res = api.post("/me/devices", s.token(), &body).await;
        res.assert_problem(400);
        assert_eq!(res.field_errors(), [field]);
    }
    api.post(
        "/me/devices",
        None,
        &json!({ "platform": "fcm", "token": "t" }),
    )
    .await
    .assert_problem(401);

    // Another user's registration of the same token is their own device.
    let res = api
        .post(
            "/me/devices",
            other.token(),
            &json!({ "platform": "webpush", "token": "tok-1" }),
        )
        .await;
    assert_eq!(res.status, 201);
    let d2 = res.id();
    assert_ne!(d2, d1);

    // Someone else's device, an unknown one and a malformed id: 404.
    api.delete(&format!("/me/devices/{d2}"), s.token())
        .await
        .assert_problem(404);
    api.delete(&format!("/me/devices/{}", Uuid::now_v7()), s.token())
        .await
        .assert_problem(404);
    api.delete("/me/devices/not-a-uuid", s.token())
        .await
        .assert_problem(404);

    assert_eq!(
        api.delete(&format!("/me/devices/{d1}"), s.token())
            .await
            .status,
        204
    );
    api.delete(&format!("/me/devices/{d1}"), s.token())
        .await
        .assert_problem(404);
    // The other user's device survived the attempt.
    assert_eq!(
        api.delete(&format!("/me/devices/{d2}"), other.token())
            .await
            .status,
        204
    );
}

// (g) ------------------------------------------------------------------------------------

/// `GET /admin/audit{query}`, which must succeed.
async fn audit(api: &Api, query: &str, s: &Session) -> Resp {
    let res = api.get(&format!("/admin/audit{query}"), s.token()).await;
    assert_eq!(res.status, 200, "{query}: {}", res.text());
    res
}

#[actix_web::test]
async fn the_audit_trail_is_campus_scoped_and_filterable() {
    let (_t, world, api) = setup().await;
    let (a, b) = (&world.a, &world.b);
    let student = api.login(&a.student.email).await;
    let staff = api.login(&a.staff.email).await;
    let admin = api.login(&a.admin.email).await;
    let root = api.login(&world.platform_admin.email).await;
    let student_b = api.login(&b.student.email).await;
    let admin_b = api.login(&b.admin.email).await;

    let res = api
        .send(
            TestRequest::post()
                .uri("/orders")
                .insert_header(("Authorization", format!("Bearer {}", student.access)))
                .insert_header(("X-Request-Id", "audit-req-1"))
                .set_json(order_body(a.vendor.id, a.items[0].id, 1)),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let order_a = res.id();
    assert_eq!(
        transition(&api, &staff, order_a, "accepted").await.status,
        200
    );
    let res = api
        .post(
            &format!("/vendors/{}/menu-items", a.vendor.id),
            staff.token(),
            &json!({ "name": "Audited", "priceCents": 10, "stock": 1 }),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let order_b = place(&api, &student_b, b.vendor.id, b.items[0].id, 1).await;

    let entries = |res: &Resp| res.data().as_array().unwrap().clone();

    // Campus A's admin: campus A only, newest first.
    let res = audit(&api, "", &admin).await;
    let all = entries(&res);
    assert!(all.iter().all(|e| e["campusId"] == a.campus.id.to_string()));
    let actions: HashSet<&str> = all.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for expected in [
        "session.opened",
        "order.placed",
        "order.accepted",
        "menu_item.created",
    ] {
        assert!(actions.contains(expected), "{expected} in {actions:?}");
    }
    let seq: Vec<i64> = all.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(seq.windows(2).all(|w| w[0] > w[1]), "newest first: {seq:?}");
    assert!(!all.iter().any(|e| e["targetId"] == order_b.to_string()));

    // By action.
    let res = audit(&api, "?action=order.placed", &admin).await;
    let placed = entries(&res);
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0]["targetId"], order_a.to_string());
    assert_eq!(placed[0]["actorId"], a.student.id.to_string());
    assert_eq!(placed[0]["requestId"], "audit-req-1");

    // By actor (and both).
    let staff_id = a.staff.id.to_string();
    let res = audit(&api, &format!("?actorId={staff_id}"), &admin).await;
    let by_staff = entries(&res);
    assert!(by_staff.iter().all(|e| e["actorId"] == staff_id));
    let staff_actions: HashSet<&str> = by_staff
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        staff_actions,
        HashSet::from(["session.opened", "order.accepted", "menu_item.created"])
    );
    let res = audit(
        &api,
        &format!("?actorId={staff_id}&action=order.placed"),
        &admin,
    )
    .await;
    assert_eq!(res.body["pagination"]["total"], 0);

    // Time window and pagination.
    let res = audit(&api, "?from=2999-01-01T00:00:00Z", &admin).await;
    assert_eq!(res.body["pagination"]["total"], 0);
    let res = audit(&api, "?to=2000-01-01T00:00:00Z", &admin).await;
    assert_eq!(res.body["pagination"]["total"], 0);
    let res = audit(
        &api,
        "?from=2000-01-01T00:00:00Z&to=2999-01-01T00:00:00Z",
        &admin,
    )
    .await;
    assert_eq!(res.body["pagination"]["total"], all.len());
    let res = audit(&api, "?limit=1", &admin).await;
    assert_eq!(entries(&res).len(), 1);
    assert_eq!(entries(&res)[0]["id"], all[0]["id"]);
    assert_eq!(res.body["pagination"]["hasMore"], true);
    assert_eq!(res.body["pagination"]["total"], all.len());

    // Campus B's admin sees campus B only; the platform admin sees both.
    let res = audit(&api, "?action=order.placed", &admin_b).await;
    let placed_b = entries(&res);
    assert_eq!(placed_b.len(), 1);
    assert_eq!(placed_b[0]["targetId"], order_b.to_string());
    let res = audit(&api, "", &admin_b).await;
    assert!(
        entries(&res)
            .iter()
            .all(|e| e["campusId"] == b.campus.id.to_string())
    );
    let res = audit(&api, "?action=order.placed", &root).await;
    assert_eq!(res.body["pagination"]["total"], 2);

    // Malformed filters are 400 problems.
    for q in [
        "actorId=not-a-uuid",
        "from=yesterday",
        "limit=abc",
        "limit=0",
    ] {
        api.get(&format!("/admin/audit?{q}"), admin.token())
            .await
            .assert_problem(400);
    }
}

/// The value of one `/metrics` sample line (`name{labels} value`), if exported.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[actix_web::test]
async fn order_metrics_use_the_dashboards_label_and_count_rejections() {
    let t = TestApp::new().await;
    let w = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let student = api.login(&w.a.student.email).await;
    let staff = api.login(&w.a.staff.email).await;
    // Exported from the start, at zero or more (other tests share the process recorder).
    let before = api.get("/metrics", None).await.text();
    assert!(
        sample(&before, "active_socket_connections").is_some(),
        "{before}"
    );
    let rejected = r#"order_creation_total{result="rejected"}"#;
    let created = r#"order_creation_total{result="created"}"#;
    let (rejected0, created0) = (
        sample(&before, rejected).unwrap(),
        sample(&before, created).unwrap(),
    );
    let item = &w.a.items[0];
    let res = api
        .post(
            "/orders",
            staff.token(),
            &order_body(w.a.vendor.id, item.id, 1),
        )
        .await;
    res.assert_problem(403);
    let res = api
        .post(
            "/orders",
            student.token(),
            &order_body(w.a.vendor.id, item.id, 1),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let after = api.get("/metrics", None).await.text();
    assert!(
        sample(&after, rejected).unwrap() >= rejected0 + 1.0,
        "{after}"
    );
    assert!(
        sample(&after, created).unwrap() >= created0 + 1.0,
        "{after}"
    );
    // The Grafana panel sums by `result`; no series carries the old label.
    assert!(!after.contains("order_creation_total{outcome"), "{after}");
    let panel = include_str!("../../packaging/grafana/dashboards/itsur.json");
    assert!(panel.contains("sum by (result) (rate(order_creation_total"));
}
