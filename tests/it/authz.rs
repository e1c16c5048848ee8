//! The authorization matrix: every role of both tenants (and nobody) against every endpoint
//! that touches campus A's resources. Another tenant's resource answers 404 (its existence
//! is not revealed); the same tenant with the wrong role answers 403; no token answers 401,
//! except the public campus list.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::TestApp;
use crate::support::fixtures::{Api, Session, World, order_body};

/// Column headers: the requests of the matrix, all aimed at campus A.
const ENDPOINTS: [&str; 12] = [
    "GET /campuses",
    "GET /campuses/{A}/vendors",
    "GET /vendors/{vA}/menu",
    "POST /vendors/{vA}/menu-items",
    "PATCH /menu-items/{itemA}",
    "POST /orders {vA}",
    "GET /orders",
    "GET /orders/{orderA}",
    "POST transitions {to:accepted}",
    "POST transitions {to:cancelled}",
    "GET /admin/audit",
    "GET /me",
];

/// Expected status per role (rows) and endpoint (columns, in [`ENDPOINTS`] order).
///
/// Two decisions of the code that this table pins down, both leaking nothing:
/// - `POST /orders` checks the role ("only students place orders") before it looks at the
///   vendor, so non-students get 403 even for another campus's vendor. The answer does not
///   depend on the vendor id at all (see `role_gate_reveals_nothing`).
/// - A student moving their own order forward (`accepted`) gets 409, not 403: the state
///   machine says a student may only cancel a placed order (`domain::order::transition`).
#[rustfmt::skip]
const EXPECTED: [(&str, [u16; 12]); 10] = [
    //                        [0]  [1]  [2]  [3]  [4]  [5]  [6]  [7]  [8]  [9]  [10] [11]
    ("anonymous",              [200, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401]),
    ("student A",              [200, 200, 200, 403, 403, 201, 200, 200, 409, 200, 403, 200]),
    ("other student A",        [200, 200, 200, 403, 403, 201, 200, 404, 404, 404, 403, 200]),
    ("vendor_staff A",         [200, 200, 200, 201, 200, 403, 200, 200, 200, 200, 403, 200]),
    ("other vendor's staff A", [200, 200, 200, 403, 403, 403, 200, 404, 404, 404, 403, 200]),
    ("campus_admin A",         [200, 200, 200, 201, 200, 403, 200, 200, 200, 200, 200, 200]),
    ("platform_admin",         [200, 200, 200, 201, 200, 403, 200, 200, 200, 200, 200, 200]),
    ("student B",              [200, 404, 404, 404, 404, 404, 200, 404, 404, 404, 403, 200]),
    ("vendor_staff B",         [200, 404, 404, 404, 404, 403, 200, 404, 404, 404, 403, 200]),
    ("campus_admin B",         [200, 404, 404, 404, 404, 403, 200, 404, 404, 404, 200, 200]),
];

/// Places a fresh order of campus A (student A at vendor A); each mutating cell gets its own.
async fn fresh_order(api: &Api, student_a: &Session, world: &World) -> Uuid {
    let res = api
        .post(
            "/orders",
            student_a.token(),
            &order_body(world.a.vendor.id, world.a.items[0].id, 1),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    res.id()
}

fn render(rows: &[(&str, Vec<u16>)]) -> String {
    let width = EXPECTED.iter().map(|(r, _)| r.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (i, e) in ENDPOINTS.iter().enumerate() {
        out.push_str(&format!("  [{i:2}] {e}\n"));
    }
    out.push_str(&format!("{:width$} ", ""));
    for i in 0..ENDPOINTS.len() {
        out.push_str(&format!(" [{i:2}]     "));
    }
    out.push('\n');
    for ((role, expected), (_, actual)) in EXPECTED.iter().zip(rows) {
        out.push_str(&format!("{role:width$} "));
        for (e, a) in expected.iter().zip(actual) {
            if e == a {
                out.push_str(&format!(" {a}      "));
            } else {
                out.push_str(&format!(" {a}!={e} "));
            }
        }
        out.push('\n');
    }
    out
}

#[actix_web::test]
async fn every_role_against_every_endpoint() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let (a, b) = (&world.a, &world.b);

    let student_a = api.login(&a.student.email).await;
    let sessions: Vec<Option<Session>> = vec![
        None,
        Some(student_a.clone()),
        Some(api.login(&a.student2.email).await),
        Some(api.login(&a.staff.email).await),
        Some(api.login(&a.other_staff.email).await),
        Some(api.login(&a.admin.email).await),
        Some(api.login(&world.platform_admin.email).await),
        Some(api.login(&b.student.email).await),
        Some(api.login(&b.staff.email).await),
        Some(api.login(&b.admin.email).await),
    ];
    assert_eq!(sessions.len(), EXPECTED.len());

    let new_item = json!({ "name": "Matrix special", "priceCents": 1234, "stock": 5 });
    let patch = json!({ "priceCents": 5100 });
    let order = order_body(a.vendor.id, a.items[0].id, 1);
    let mut actual: Vec<(&str, Vec<u16>)> = Vec::new();
    for ((role, _), session) in EXPECTED.iter().zip(&sessions) {
        let token = session.as_ref().and_then(Session::token);
        let mut row = Vec::new();
        row.push(api.get("/campuses", token).await.status);
        row.push(
            api.get(&format!("/campuses/{}/vendors", a.campus.id), token)
                .await
                .status,
        );
        row.push(
            api.get(&format!("/vendors/{}/menu", a.vendor.id), token)
                .await
                .status,
        );
        row.push(
            api.post(
                &format!("/vendors/{}/menu-items", a.vendor.id),
                token,
                &new_item,
            )
            .await
            .status,
        );
        row.push(
            api.patch(&format!("/menu-items/{}", a.items[0].id), token, &patch)
                .await
                .status,
        );
        row.push(api.post("/orders", token, &order).await.status);
        row.push(api.get("/orders", token).await.status);
        let id = fresh_order(&api, &student_a, &world).await;
        row.push(api.get(&format!("/orders/{id}"), token).await.status);
        for to in ["accepted", "cancelled"] {
            let id = fresh_order(&api, &student_a, &world).await;
            let body: Value = json!({ "to": to });
            row.push(
                api.post(&format!("/orders/{id}/transitions"), token, &body)
                    .await
                    .status,
            );
        }
        row.push(api.get("/admin/audit", token).await.status);
        row.push(api.get("/me", token).await.status);
        actual.push((role, row));
    }

    let mismatches = EXPECTED
        .iter()
        .zip(&actual)
        .filter(|((_, e), (_, a))| e.as_slice() != a.as_slice())
        .count();
    assert_eq!(
        mismatches,
        0,
        "authorization matrix (actual!=expected):\n{}",
        render(&actual)
    );
}

#[actix_web::test]
async fn role_gate_reveals_nothing_and_denials_are_problems() {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    let staff_b = api.login(&world.b.staff.email).await;
    let student_b = api.login(&world.b.student.email).await;

    // Non-students get the same 403 for campus A's vendor, their own vendor and no vendor.
    for vendor in [world.a.vendor.id, world.b.vendor.id, Uuid::now_v7().into()] {
        let item = world.a.items[0].id;
        let res = api
            .post("/orders", staff_b.token(), &order_body(vendor, item, 1))
            .await;
        res.assert_problem(403);
    }

    // A student sees another campus's vendor exactly like one that does not exist.
    let other = api
        .get(
            &format!("/vendors/{}/menu", world.a.vendor.id),
            student_b.token(),
        )
        .await;
    let missing = api
        .get(
            &format!("/vendors/{}/menu", Uuid::now_v7()),
            student_b.token(),
        )
        .await;
    other.assert_problem(404);
    missing.assert_problem(404);
    assert_eq!(other.body["detail"], missing.body["detail"]);

    // Campus B's vendor list and menu hold only campus B's things.
    let res = api
        .get(
            &format!("/campuses/{}/vendors", world.b.campus.id),
            student_b.token(),
        )
        .await;
    assert_eq!(res.status, 200);
    let vendors = res.data().as_array().unwrap();
    assert_eq!(vendors.len(), 2);
    assert!(
        vendors
            .iter()
            .all(|v| v["campusId"] == world.b.campus.id.to_string())
    );

    // The public campus list shows both campuses and their domains.
    let res = api.get("/campuses", None).await;
    let domains: Vec<&str> = res
        .data()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["emailDomains"][0].as_str().unwrap())
        .collect();
    assert_eq!(domains, ["a.edu", "b.edu"]);

    // Every denial above and in the matrix is a problem document.
    api.get("/me", None).await.assert_problem(401);
    api.get("/admin/audit", student_b.token())
        .await
        .assert_problem(403);
}
