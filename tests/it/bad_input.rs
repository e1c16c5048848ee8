//! Bad input never yields a 5xx: every write endpoint gets malformed, truncated, wrong-typed,
//! unknown-field, out-of-range, wrong-content-type, oversize and empty bodies, and must answer
//! a 4xx `application/problem+json` every time. Also malformed path ids and query strings.

use std::time::Duration;

use actix_web::http::Method;
use actix_web::test::TestRequest;
use serde_json::{Value, json};

use crate::support::fixtures::{Api, Http, Resp, World, order_body};
use crate::support::{TestApp, TestServer};

/// A write endpoint and a body it would accept.
struct Target {
    name: &'static str,
    method: Method,
    path: String,
    token: Option<String>,
    valid: Value,
    /// Every field is optional (a PATCH): `{}` and nulls are valid, not errors.
    all_optional: bool,
    /// Bodies that are well-formed JSON of the right shape but out of range for this
    /// endpoint (all must be 4xx; most are 400 with field errors).
    out_of_range: Vec<Value>,
}

/// What a case sends.
enum Body {
    /// Raw bytes with `Content-Type: application/json`.
    Json(Vec<u8>),
    /// Raw bytes with another (or no) content type.
    Typed(Option<&'static str>, Vec<u8>),
}

/// One bad request and the status it must get (None = any 4xx).
struct Case {
    what: String,
    body: Body,
    status: Option<u16>,
}

fn json_case(what: impl Into<String>, bytes: impl Into<Vec<u8>>, status: Option<u16>) -> Case {
    Case {
        what: what.into(),
        body: Body::Json(bytes.into()),
        status,
    }
}

/// Replaces one top-level field of an object.
fn with(valid: &Value, field: &str, value: Value) -> Value {
    let mut v = valid.clone();
    v[field] = value;
    v
}

/// The cases every JSON endpoint gets. `valid` holds only required fields unless
/// `all_optional`.
fn generic_cases(valid: &Value, all_optional: bool) -> Vec<Case> {
    let text = valid.to_string();
    let mut cases = vec![
        json_case("truncated", &text.as_bytes()[..text.len() / 2], Some(400)),
        json_case("only an opening brace", "{", Some(400)),
        json_case("not JSON", "this is not json", Some(400)),
        json_case("trailing garbage", format!("{text} xyz"), Some(400)),
        json_case(
            "trailing comma",
            format!("{}, }}", &text[..text.len() - 1]),
            Some(400),
        ),
        json_case("single quotes", text.replace('"', "'"), Some(400)),
        json_case("array", "[]", Some(400)),
        json_case("null", "null", Some(400)),
        json_case("number", "42", Some(400)),
        json_case("string", "\"hello\"", Some(400)),
        json_case("empty body", "", Some(400)),
        json_case(
            "invalid UTF-8",
            vec![b'{', b'"', 0xff, 0xfe, b'"', b'}'],
            Some(400),
        ),
        json_case(
            "nesting 10k deep",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            Some(400),
        ),
        json_case(
            "unknown field",
            with(valid, "isAdmin", json!(true)).to_string(),
            Some(400),
        ),
        json_case(
            "1 MiB body",
            with(valid, "padding", json!("x".repeat(1024 * 1024))).to_string(),
            Some(413),
        ),
        Case {
            what: "text/plain".to_owned(),
            body: Body::Typed(Some("text/plain"), text.clone().into_bytes()),
            status: Some(415),
        },
        Case {
            what: "form-encoded".to_owned(),
            body: Body::Typed(Some("application/x-www-form-urlencoded"), b"a=b".to_vec()),
            status: Some(415),
        },
        Case {
            what: "no content type".to_owned(),
            body: Body::Typed(None, text.into_bytes()),
            status: Some(415),
        },
    ];
    if !all_optional {
        cases.push(json_case("empty object", "{}", Some(400)));
    }
    // Every field: null, and a value of each wrong type.
    if let Some(fields) = valid.as_object() {
        for (field, value) in fields {
            let wrong: Vec<Value> = match value {
                Value::String(_) => vec![json!(12345), json!(true), json!(["x"]), json!({})],
                Value::Number(_) => vec![json!("12"), json!(true), json!([1]), json!({})],
                Value::Array(_) => vec![json!("x"), json!(1), json!({})],
                Value::Bool(_) => vec![json!("yes"), json!(1)],
                _ => vec![json!(1)],
            };
            // An explicit null of a required field is an error; of an optional one, absence.
            let nulls = if all_optional {
                vec![]
            } else {
                vec![json!(null)]
            };
            for w in wrong.into_iter().chain(nulls) {
                cases.push(json_case(
                    format!("{field} = {w}"),
                    with(valid, field, w).to_string(),
                    Some(400),
                ));
            }
        }
    }
    cases
}

fn request(target: &Target, case: &Case) -> TestRequest {
    let mut req = TestRequest::default()
        .method(target.method.clone())
        .uri(&target.path);
    if let Some(t) = &target.token {
        req = req.insert_header(("Authorization", format!("Bearer {t}")));
    }
    match &case.body {
        Body::Json(bytes) => req
            .insert_header(("Content-Type", "application/json"))
            .set_payload(bytes.clone()),
        Body::Typed(Some(ct), bytes) => req
            .insert_header(("Content-Type", *ct))
            .set_payload(bytes.clone()),
        Body::Typed(None, bytes) => req.set_payload(bytes.clone()),
    }
}

fn check(res: &Resp, what: &str, status: Option<u16>, failures: &mut Vec<String>) {
    let ok_status = match status {
        Some(s) => res.status == s,
        None => (400..500).contains(&res.status),
    };
    let problem = res.header("content-type") == Some("application/problem+json")
        && res.body["status"].as_u64() == Some(u64::from(res.status));
    if !ok_status || !problem {
        let body: String = res.text().chars().take(300).collect();
        failures.push(format!(
            "{what}: got {} ({:?}), want {} problem+json: {body}",
            res.status,
            res.header("content-type"),
            status.map_or("4xx".to_owned(), |s| s.to_string()),
        ));
    }
}

#[actix_web::test]
async fn every_write_endpoint_answers_bad_bodies_with_a_4xx_problem() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let (a, item) = (&world.a, world.a.items[0].id);
    let student = api.login(&a.student.email).await;
    let staff = api.login(&a.staff.email).await;
    let order = api
        .post(
            "/orders",
            student.token(),
            &order_body(a.vendor.id, item, 1),
        )
        .await
        .id();
    let order_valid = order_body(a.vendor.id, item, 1);
    let line = |q: Value| json!({ "vendorId": a.vendor.id, "items": [{ "menuItemId": item, "quantity": q }] });
    let menu_valid = json!({ "name": "Thing", "priceCents": 100, "stock": 1 });

    let targets = vec![
        Target {
            name: "register",
            method: Method::POST,
            path: "/auth/register".to_owned(),
            token: None,
            valid: json!({ "email": "fresh@a.edu", "password": "long-enough-pw", "displayName": "Fresh" }),
            all_optional: false,
            out_of_range: vec![
                json!({ "email": "fresh@a.edu", "password": "short", "displayName": "Fresh" }),
                json!({ "email": "fresh@a.edu", "password": "p".repeat(129), "displayName": "Fresh" }),
                json!({ "email": "not-an-email", "password": "long-enough-pw", "displayName": "Fresh" }),
                json!({ "email": format!("{}@a.edu", "e".repeat(300)), "password": "long-enough-pw", "displayName": "Fresh" }),
                json!({ "email": "fresh@a.edu", "password": "long-enough-pw", "displayName": "   " }),
                json!({ "email": "fresh@a.edu", "password": "long-enough-pw", "displayName": "n".repeat(201) }),
            ],
        },
        Target {
            name: "login",
            method: Method::POST,
            path: "/auth/login".to_owned(),
            token: None,
            valid: json!({ "email": "student@a.edu", "password": "whatever-it-is" }),
            all_optional: false,
            out_of_range: vec![
                json!({ "email": "", "password": "" }),
                json!({ "email": "e".repeat(5000), "password": "p".repeat(5000) }),
            ],
        },
        Target {
            name: "refresh",
            method: Method::POST,
            path: "/auth/refresh".to_owned(),
            token: None,
            valid: json!({ "refreshToken": student.refresh }),
            all_optional: false,
            out_of_range: vec![
                json!({ "refreshToken": "" }),
                json!({ "refreshToken": "x".repeat(5000) }),
            ],
        },
        Target {
            name: "create menu item",
            method: Method::POST,
            path: format!("/vendors/{}/menu-items", a.vendor.id),
            token: Some(staff.access.clone()),
            valid: menu_valid.clone(),
            all_optional: false,
            out_of_range: vec![
                with(&menu_valid, "priceCents", json!(-1)),
                with(&menu_valid, "priceCents", json!(10_000_001)),
                with(&menu_valid, "priceCents", json!(1e20)),
                with(&menu_valid, "priceCents", json!(1.5)),
                with(&menu_valid, "priceCents", json!(u64::MAX)),
                with(&menu_valid, "stock", json!(-1)),
                with(&menu_valid, "stock", json!(1_000_001)),
                with(&menu_valid, "stock", json!(2_147_483_648_i64)),
                with(&menu_valid, "stock", json!(1e20)),
                with(&menu_valid, "name", json!("")),
                with(&menu_valid, "name", json!("n".repeat(201))),
                with(&menu_valid, "available", json!("yes")),
            ],
        },
        Target {
            name: "update menu item",
            method: Method::PATCH,
            path: format!("/menu-items/{item}"),
            token: Some(staff.access.clone()),
            valid: json!({ "priceCents": 100 }),
            all_optional: true,
            out_of_range: vec![
                json!({ "priceCents": -5 }),
                json!({ "priceCents": 1e20 }),
                json!({ "stock": -1 }),
                json!({ "stock": 1e20 }),
                json!({ "name": "   " }),
                json!({ "available": "yes" }),
                json!({ "description": 5 }),
            ],
        },
        Target {
            name: "place order",
            method: Method::POST,
            path: "/orders".to_owned(),
            token: Some(student.access.clone()),
            valid: order_valid.clone(),
            all_optional: false,
            out_of_range: vec![
                line(json!(0)),
                line(json!(101)),
                line(json!(-1)),
                line(json!(1e20)),
                line(json!(1.5)),
                line(json!("1")),
                with(&order_valid, "items", json!([])),
                with(
                    &order_valid,
                    "items",
                    json!(
                        (0..51)
                            .map(|_| json!({ "menuItemId": uuid::Uuid::now_v7(), "quantity": 1 }))
                            .collect::<Vec<_>>()
                    ),
                ),
                with(
                    &order_valid,
                    "items",
                    json!([{ "menuItemId": item, "quantity": 1 }, { "menuItemId": item, "quantity": 2 }]),
                ),
                with(&order_valid, "items", json!([{ "menuItemId": item }])),
                with(
                    &order_valid,
                    "items",
                    json!([{ "menuItemId": item, "quantity": 1, "price": 0 }]),
                ),
                with(
                    &order_valid,
                    "items",
                    json!([{ "menuItemId": "nope", "quantity": 1 }]),
                ),
                with(&order_valid, "vendorId", json!("not-a-uuid")),
                with(&order_valid, "note", json!("n".repeat(501))),
            ],
        },
        Target {
            name: "transition",
            method: Method::POST,
            path: format!("/orders/{order}/transitions"),
            token: Some(staff.access.clone()),
            valid: json!({ "to": "accepted" }),
            all_optional: false,
            out_of_range: vec![
                json!({ "to": "shipped" }),
                json!({ "to": "" }),
                json!({ "to": "ACCEPTED" }),
            ],
        },
        Target {
            name: "register device",
            method: Method::POST,
            path: "/me/devices".to_owned(),
            token: Some(student.access.clone()),
            valid: json!({ "platform": "fcm", "token": "device-token" }),
            all_optional: false,
            out_of_range: vec![
                json!({ "platform": "pager", "token": "device-token" }),
                json!({ "platform": "fcm", "token": "" }),
                json!({ "platform": "fcm", "token": "t".repeat(4097) }),
            ],
        },
    ];

    let mut failures = Vec::new();
    let mut sent = 0;
    for target in &targets {
        let mut cases = generic_cases(&target.valid, target.all_optional);
        for (i, body) in target.out_of_range.iter().enumerate() {
            cases.push(json_case(
                format!("out of range #{i}: {}", truncate(&body.to_string())),
                body.to_string(),
                None,
            ));
        }
        for case in &cases {
            let res = api.send(request(target, case)).await;
            sent += 1;
            check(
                &res,
                &format!("{} {}: {}", target.name, target.path, case.what),
                case.status,
                &mut failures,
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {sent} bad requests were not answered right:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // None of it changed anything: the order is still placed and nothing new was created.
    let res = api.get(&format!("/orders/{order}"), staff.token()).await;
    assert_eq!(res.data()["status"], "placed");
    assert_eq!(res.data()["version"], 1);
    let res = api.get("/orders", student.token()).await;
    assert_eq!(res.body["pagination"]["total"], 1);
    let res = api
        .get(&format!("/vendors/{}/menu", a.vendor.id), student.token())
        .await;
    let items = res.data()["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "no menu item was created");
    let patched = items.iter().find(|i| i["id"] == item.to_string()).unwrap();
    assert_eq!(patched["priceCents"], a.items[0].price_cents);
}

fn truncate(s: &str) -> String {
    if s.len() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s.to_owned()
    }
}

#[actix_web::test]
async fn logout_ignores_its_body_and_needs_a_token() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let mut failures = Vec::new();
    let target = Target {
        name: "logout",
        method: Method::POST,
        path: "/auth/logout".to_owned(),
        token: None,
        valid: json!({}),
        all_optional: false,
        out_of_range: Vec::new(),
    };
    // Without a token every body is a 401 problem.
    for case in generic_cases(&json!({ "x": 1 }), false) {
        let res = api.send(request(&target, &case)).await;
        check(
            &res,
            &format!("logout: {}", case.what),
            Some(401),
            &mut failures,
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // With one, logout has no body to validate: whatever is sent, it logs out.
    let s = api.login(&world.a.student.email).await;
    let target = Target {
        token: Some(s.access.clone()),
        ..target
    };
    let case = json_case("garbage", "{{{", None);
    let res = api.send(request(&target, &case)).await;
    assert_eq!(res.status, 204, "{}", res.text());
    api.get("/me", s.token()).await.assert_problem(401);
}

#[actix_web::test]
async fn malformed_path_ids_are_404_and_bad_query_strings_are_400() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let student = api.login(&world.a.student.email).await;
    let staff = api.login(&world.a.staff.email).await;
    let admin = api.login(&world.a.admin.email).await;

    let mut failures = Vec::new();
    for (method, path, token, body) in [
        (Method::GET, "/orders/not-a-uuid", &student, None),
        (Method::GET, "/orders/123", &student, None),
        (
            Method::GET,
            "/orders/00000000-0000-0000-0000-00000000000g",
            &student,
            None,
        ),
        (
            Method::POST,
            "/orders/not-a-uuid/transitions",
            &staff,
            Some(json!({ "to": "accepted" })),
        ),
        (Method::GET, "/campuses/not-a-uuid/vendors", &student, None),
        (Method::GET, "/vendors/not-a-uuid/menu", &student, None),
        (
            Method::POST,
            "/vendors/not-a-uuid/menu-items",
            &staff,
            Some(json!({ "name": "x", "priceCents": 1, "stock": 1 })),
        ),
        (
            Method::PATCH,
            "/menu-items/not-a-uuid",
            &staff,
            Some(json!({ "stock": 1 })),
        ),
        (Method::DELETE, "/me/sessions/not-a-uuid", &student, None),
        (Method::DELETE, "/me/devices/not-a-uuid", &student, None),
    ] {
        let mut req = TestRequest::default()
            .method(method.clone())
            .uri(path)
            .insert_header(("Authorization", format!("Bearer {}", token.access)));
        if let Some(b) = &body {
            req = req.set_json(b);
        }
        let res = api.send(req).await;
        check(&res, &format!("{method} {path}"), Some(404), &mut failures);
    }

    for (path, token) in [
        ("/orders?limit=0", &student),
        ("/orders?limit=abc", &student),
        ("/orders?limit=101", &student),
        ("/orders?limit=-5", &student),
        ("/orders?limit=1e3", &student),
        ("/orders?limit=99999999999999999999", &student),
        ("/orders?offset=abc", &student),
        ("/orders?offset=-1", &student),
        ("/orders?offset=100001", &student),
        ("/orders?status=", &student),
        ("/orders?status=PLACED", &student),
        ("/orders?limit=%ZZ", &student),
        ("/admin/audit?limit=abc", &admin),
        ("/admin/audit?limit=0", &admin),
        ("/admin/audit?offset=-1", &admin),
        ("/admin/audit?actorId=123", &admin),
        ("/admin/audit?from=2024-13-45", &admin),
        ("/admin/audit?to=now", &admin),
    ] {
        let res = api.get(path, token.token()).await;
        check(&res, &format!("GET {path}"), Some(400), &mut failures);
    }

    // Methods a route does not have, and unknown routes.
    for (method, path) in [
        (Method::GET, "/auth/login"),
        (Method::DELETE, "/orders"),
        (
            Method::PUT,
            "/menu-items/0190f1f2-0000-7000-8000-000000000000",
        ),
        (Method::GET, "/nope"),
    ] {
        let req = TestRequest::default()
            .method(method.clone())
            .uri(path)
            .insert_header(("Authorization", format!("Bearer {}", student.access)));
        let res = api.send(req).await;
        check(&res, &format!("{method} {path}"), None, &mut failures);
    }

    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_listener_answers_oversize_and_mistyped_bodies_with_problems() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let server = TestServer::start(t.ctx.clone());
    let http = Http::new(&server);
    let student = http.login(&world.a.student.email).await;
    let client = crate::support::client(Duration::from_secs(30));

    let big =
        json!({ "vendorId": world.a.vendor.id, "items": [], "note": "x".repeat(1024 * 1024) });
    let res = client
        .post(server.url("/orders"))
        .bearer_auth(&student.access)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );

    let res = client
        .post(server.url("/orders"))
        .bearer_auth(&student.access)
        .header("Content-Type", "text/plain")
        .body(order_body(world.a.vendor.id, world.a.items[0].id, 1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );

    server.shutdown.trigger();
    server.task.await.unwrap().unwrap();
}

#[actix_web::test]
async fn shape_errors_name_the_field_that_is_wrong() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let student = api.login(&world.a.student.email).await;
    let vendor = world.a.vendor.id;
    let cases = [
        (
            json!({"vendorId": vendor, "items": [{"menuItemId": vendor, "quantity": "two"}]}),
            "items[0].quantity",
        ),
        (
            json!({"vendorId": vendor, "items": [{"menuItemId": vendor, "quantity": 1e20}]}),
            "items[0].quantity",
        ),
        (json!({"vendorId": "nope", "items": []}), "vendorId"),
        (
            json!({"vendorId": vendor, "items": [{"menuItemId": vendor, "quantity": 1, "extra": 1}]}),
            "items[0].extra",
        ),
        (json!({"items": []}), "body"),
    ];
    for (body, field) in cases {
        let res = api.post("/orders", student.token(), &body).await;
        res.assert_problem(400);
        assert_eq!(res.field_errors(), [field], "{body}: {}", res.text());
    }
}

/// Issue 17 item 6: a NUL character (U+0000) in any JSON string, query parameter or path
/// reached Postgres, which cannot store it, and answered 500. Now a 400 naming the field,
/// for login and register too, before anything touches the database.
#[actix_web::test]
async fn nul_characters_are_a_400_naming_the_field() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let a = &world.a;
    let student = api.login(&a.student.email).await;
    let item = a.items[0].id;

    let cases = [
        (
            "/auth/login",
            None,
            json!({ "email": format!("{}\u{0}", a.student.email), "password": "whatever-it-is" }),
            "email",
        ),
        (
            "/auth/register",
            None,
            json!({ "email": "nul@a.edu", "password": "long-enough-pw", "displayName": "Nul\u{0}Name" }),
            "displayName",
        ),
        (
            "/auth/web/login",
            None,
            json!({ "email": "x@a.edu", "password": "pass\u{0}word" }),
            "password",
        ),
        (
            "/orders",
            student.token(),
            json!({ "vendorId": a.vendor.id, "items": [{ "menuItemId": item, "quantity": 1 }], "note": "no\u{0}onions" }),
            "note",
        ),
    ];
    for (path, token, body, field) in cases {
        let res = api.post(path, token, &body).await;
        res.assert_problem(400);
        assert_eq!(res.field_errors(), [field], "{path}: {}", res.text());
    }
    // Nothing was stored on the way.
    let orders = api.get("/orders", student.token()).await;
    assert_eq!(orders.status, 200, "{}", orders.text());
    assert_eq!(
        orders.data().as_array().map(Vec::len),
        Some(0),
        "{}",
        orders.text()
    );

    // A query parameter and a path segment.
    let res = api.get("/jobs?type=sales%00report", student.token()).await;
    res.assert_problem(400);
    assert_eq!(res.field_errors(), ["type"], "{}", res.text());
    let res = api.get("/campuses/a%00b/vendors", student.token()).await;
    res.assert_problem(400);
    assert_eq!(res.field_errors(), ["path"], "{}", res.text());

    // A CSV import (not JSON) names the line.
    let admin = api.login(&a.admin.email).await;
    let csv = "email,display_name,role,password\nx@a.edu,X\u{0},student,long-enough-pw\n";
    let res = api
        .send(
            TestRequest::post()
                .uri("/admin/users/import")
                .insert_header(("Authorization", format!("Bearer {}", admin.access)))
                .insert_header(("Content-Type", "text/csv"))
                .set_payload(csv),
        )
        .await;
    res.assert_problem(400);
    assert_eq!(res.field_errors(), ["body (line 2)"], "{}", res.text());
}
