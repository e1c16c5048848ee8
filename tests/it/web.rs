//! The browser apps' server side: embedded pages and assets (CSP, caching, gzip, hashed
//! URLs), cookie sign-in next to the bearer API (HttpOnly cookies, CSRF token + Origin on
//! cookie writes, refresh rotation, logout revoking the session), and `PUT /vendors/{id}/open`.
//! The pages themselves are driven in a real browser by tests/browser (`make test`).

use actix_web::test::TestRequest;
use serde_json::{Value, json};

use crate::support::TestApp;
use crate::support::fixtures::{Api, PASSWORD, Resp, World};

const HOST: &str = "board.test";
const ORIGIN: &str = "http://board.test";

async fn setup() -> (TestApp, World, Api) {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    (t, world, api)
}

/// The `name=value` of every Set-Cookie, and the full header lines.
fn set_cookies(res: &Resp) -> Vec<String> {
    res.headers
        .iter()
        .filter(|(n, _)| n == "set-cookie")
        .map(|(_, v)| v.clone())
        .collect()
}

fn cookie_value(res: &Resp, name: &str) -> Option<String> {
    set_cookies(res).iter().find_map(|line| {
        let first = line.split(';').next()?;
        let (n, v) = first.split_once('=')?;
        (n == name).then(|| v.to_owned())
    })
}

/// A browser's view: the cookies it holds and the CSRF token the page keeps.
struct Browser {
    access: String,
    refresh: String,
    csrf: String,
}

impl Browser {
    fn cookie_header(&self) -> String {
        format!(
            "itsur_access={}; itsur_refresh={}",
            self.access, self.refresh
        )
    }

    fn req(&self, req: TestRequest) -> TestRequest {
        req.insert_header(("Host", HOST))
            .insert_header(("Cookie", self.cookie_header()))
    }
}

async fn web_login(api: &Api, email: &str) -> (Resp, Browser) {
    let res = api
        .send(
            TestRequest::post()
                .uri("/auth/web/login")
                .insert_header(("Host", HOST))
                .insert_header(("Origin", ORIGIN))
                .set_json(json!({ "email": email, "password": PASSWORD })),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let b = Browser {
        access: cookie_value(&res, "itsur_access").unwrap(),
        refresh: cookie_value(&res, "itsur_refresh").unwrap(),
        csrf: res.data()["csrfToken"].as_str().unwrap().to_owned(),
    };
    (res, b)
}

fn open_body(open: bool) -> Value {
    json!({ "isOpen": open })
}

#[actix_rt::test]
async fn pages_and_assets_are_embedded_hashed_compressed_and_locked_down() {
    let (_t, _w, api) = setup().await;

    let redirect = api.get("/board", None).await;
    assert_eq!(redirect.status, 308);
    assert_eq!(redirect.header("location"), Some("/board/"));

    for path in ["/board/", "/console/", "/console/jobs/123"] {
        let page = api.get(path, None).await;
        assert_eq!(page.status, 200, "{path}");
        assert_eq!(page.header("cache-control"), Some("no-cache"), "{path}");
        let csp = page.header("content-security-policy").unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(page.text().contains(itsur::http::assets::static_prefix()));
    }

    let prefix = itsur::http::assets::static_prefix();
    let js = format!("{prefix}/board/board.js");
    let plain = api.get(&js, None).await;
    assert_eq!(plain.status, 200);
    assert_eq!(
        plain.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert!(
        plain
            .header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(plain.header("content-encoding").is_none());
    assert!(plain.text().contains("itsur.v1"));

    let gz = api
        .send(
            TestRequest::get()
                .uri(&js)
                .insert_header(("Accept-Encoding", "gzip, br")),
        )
        .await;
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(gz.header("vary"), Some("Accept-Encoding"));
    assert!(gz.raw.len() < plain.raw.len());
    let mut unzipped = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&gz.raw[..]),
        &mut unzipped,
    )
    .unwrap();
    assert_eq!(unzipped.as_bytes(), &plain.raw[..]);

    // Another hash (a stale page) never gets today's bytes under an immutable header.
    api.get("/static/000000000000/board/board.js", None)
        .await
        .assert_problem(404);
    api.get(&format!("{prefix}/board/nope.js"), None)
        .await
        .assert_problem(404);
    api.get(&format!("{prefix}/board/index.html"), None)
        .await
        .assert_problem(404);
}

#[actix_rt::test]
async fn cookie_sign_in_keeps_tokens_away_from_script_and_checks_csrf_and_origin() {
    let (_t, w, api) = setup().await;
    let email = w.a.staff.email.clone();
    let (res, browser) = web_login(&api, &email).await;
    // No token in the body: only the user and the CSRF token.
    assert!(res.data().get("accessToken").is_none(), "{}", res.text());
    assert!(res.data().get("refreshToken").is_none(), "{}", res.text());
    assert_eq!(res.data()["user"]["email"], email.as_str());
    for line in set_cookies(&res) {
        assert!(line.contains("HttpOnly"), "{line}");
        assert!(line.contains("SameSite=Strict"), "{line}");
        // Plain HTTP in this test: not Secure (the browser would drop it on http://).
        assert!(!line.contains("Secure"), "{line}");
    }
    assert!(
        set_cookies(&res)
            .iter()
            .any(|l| l.starts_with("itsur_refresh=") && l.contains("Path=/auth/web"))
    );

    // Login without or with a foreign Origin: refused (login CSRF).
    for origin in [None, Some("https://evil.example")] {
        let mut req = TestRequest::post()
            .uri("/auth/web/login")
            .insert_header(("Host", HOST))
            .set_json(json!({ "email": email, "password": PASSWORD }));
        if let Some(o) = origin {
            req = req.insert_header(("Origin", o));
        }
        api.send(req).await.assert_problem(403);
    }

    // Reads with the cookie work and are private.
    let session = api
        .send(browser.req(TestRequest::get().uri("/auth/web/session")))
        .await;
    assert_eq!(session.status, 200, "{}", session.text());
    assert_eq!(session.data()["csrfToken"], browser.csrf.as_str());
    assert_eq!(session.header("cache-control"), Some("no-store"));
    let orders = api
        .send(browser.req(TestRequest::get().uri("/orders")))
        .await;
    assert_eq!(orders.status, 200, "{}", orders.text());

    // Writes need the CSRF token AND this origin.
    let path = format!("/vendors/{}/open", w.a.vendor.id);
    let no_csrf = browser.req(
        TestRequest::put()
            .uri(&path)
            .insert_header(("Origin", ORIGIN))
            .set_json(open_body(false)),
    );
    api.send(no_csrf).await.assert_problem(403);
    let wrong_csrf = browser.req(
        TestRequest::put()
            .uri(&path)
            .insert_header(("Origin", ORIGIN))
            .insert_header(("X-CSRF-Token", "0".repeat(64)))
            .set_json(open_body(false)),
    );
    api.send(wrong_csrf).await.assert_problem(403);
    let foreign = browser.req(
        TestRequest::put()
            .uri(&path)
            .insert_header(("Origin", "https://evil.example"))
            .insert_header(("X-CSRF-Token", browser.csrf.as_str()))
            .set_json(open_body(false)),
    );
    api.send(foreign).await.assert_problem(403);
    let ok = browser.req(
        TestRequest::put()
            .uri(&path)
            .insert_header(("Origin", ORIGIN))
            .insert_header(("X-CSRF-Token", browser.csrf.as_str()))
            .set_json(open_body(false)),
    );
    let ok = api.send(ok).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.data()["isOpen"], false);

    // Another session's CSRF token does not fit this session.
    let (_, other) = web_login(&api, &email).await;
    let crossed = browser.req(
        TestRequest::put()
            .uri(&path)
            .insert_header(("Origin", ORIGIN))
            .insert_header(("X-CSRF-Token", other.csrf.as_str()))
            .set_json(open_body(true)),
    );
    api.send(crossed).await.assert_problem(403);
}

#[actix_rt::test]
async fn the_bearer_api_ignores_cookies_and_needs_no_csrf() {
    let (_t, w, api) = setup().await;
    let bearer = api.login(&w.a.staff.email).await;
    let (_, browser) = web_login(&api, &w.a.other_staff.email).await;
    // Bearer + someone else's cookie: the bearer decides, no CSRF asked.
    let res = api
        .send(
            browser.req(
                TestRequest::put()
                    .uri(&format!("/vendors/{}/open", w.a.vendor.id))
                    .insert_header(("Authorization", format!("Bearer {}", bearer.access)))
                    .set_json(open_body(false)),
            ),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    // A bad bearer token is not rescued by a good cookie.
    let res = api
        .send(
            browser.req(
                TestRequest::get()
                    .uri("/me")
                    .insert_header(("Authorization", "Bearer not-a-token")),
            ),
        )
        .await;
    res.assert_problem(401);
}

#[actix_rt::test]
async fn refresh_rotates_cookies_and_logout_revokes_the_session() {
    let (_t, w, api) = setup().await;
    let (_, browser) = web_login(&api, &w.a.staff.email).await;

    let refreshed = api
        .send(
            browser.req(
                TestRequest::post()
                    .uri("/auth/web/refresh")
                    .insert_header(("Origin", ORIGIN)),
            ),
        )
        .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text());
    let new_refresh = cookie_value(&refreshed, "itsur_refresh").unwrap();
    assert_ne!(new_refresh, browser.refresh);
    let browser = Browser {
        access: cookie_value(&refreshed, "itsur_access").unwrap(),
        refresh: new_refresh,
        csrf: refreshed.data()["csrfToken"].as_str().unwrap().to_owned(),
    };

    // Logout without the CSRF token is refused and changes nothing.
    api.send(
        browser.req(
            TestRequest::post()
                .uri("/auth/web/logout")
                .insert_header(("Origin", ORIGIN)),
        ),
    )
    .await
    .assert_problem(403);
    let out = api
        .send(
            browser.req(
                TestRequest::post()
                    .uri("/auth/web/logout")
                    .insert_header(("Origin", ORIGIN))
                    .insert_header(("X-CSRF-Token", browser.csrf.as_str())),
            ),
        )
        .await;
    assert_eq!(out.status, 204, "{}", out.text());
    assert!(
        set_cookies(&out).iter().all(|l| l.contains("Max-Age=0")),
        "{:?}",
        set_cookies(&out)
    );
    // The old cookies (kept by a thief) no longer work, neither for reads nor refresh.
    api.send(browser.req(TestRequest::get().uri("/auth/web/session")))
        .await
        .assert_problem(401);
    let again = api
        .send(
            browser.req(
                TestRequest::post()
                    .uri("/auth/web/refresh")
                    .insert_header(("Origin", ORIGIN)),
            ),
        )
        .await;
    again.assert_problem(401);
    assert!(
        set_cookies(&again)
            .iter()
            .any(|l| l.starts_with("itsur_refresh=;"))
    );
}

#[actix_rt::test]
async fn only_the_vendors_own_staff_or_admins_open_and_close_it() {
    let (_t, w, api) = setup().await;
    let path = format!("/vendors/{}/open", w.a.vendor.id);
    let student = api.login(&w.a.student.email).await;
    let other_staff = api.login(&w.a.other_staff.email).await;
    let foreign_admin = api.login(&w.b.admin.email).await;
    let admin = api.login(&w.a.admin.email).await;
    let put = |token: String, body: Value| {
        TestRequest::put()
            .uri(&path)
            .insert_header(("Authorization", format!("Bearer {token}")))
            .set_json(body)
    };
    api.send(put(student.access.clone(), open_body(false)))
        .await
        .assert_problem(403);
    api.send(put(other_staff.access.clone(), open_body(false)))
        .await
        .assert_problem(403);
    api.send(put(foreign_admin.access.clone(), open_body(false)))
        .await
        .assert_problem(404);
    api.send(put(admin.access.clone(), json!({ "isOpen": "no" })))
        .await
        .assert_problem(400);
    let closed = api.send(put(admin.access.clone(), open_body(false))).await;
    assert_eq!(closed.status, 200, "{}", closed.text());
    assert_eq!(closed.data()["isOpen"], false);
    // A closed vendor takes no orders.
    let order = api
        .post(
            "/orders",
            student.token(),
            &crate::support::fixtures::order_body(w.a.vendor.id, w.a.items[0].id, 1),
        )
        .await;
    assert!(
        order.status == 409 || order.status == 422,
        "{}",
        order.text()
    );
    let menu = api
        .get(&format!("/vendors/{}/menu", w.a.vendor.id), student.token())
        .await;
    assert_eq!(menu.data()["vendor"]["isOpen"], false);
}

#[actix_rt::test]
async fn cookies_are_secure_behind_tls() {
    let (_t, w, api) = setup().await;
    let res = api
        .send(
            TestRequest::post()
                .uri("/auth/web/login")
                .insert_header(("Host", HOST))
                .insert_header(("X-Forwarded-Proto", "https"))
                .insert_header(("Origin", "https://board.test"))
                .set_json(json!({ "email": w.a.staff.email, "password": PASSWORD })),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let lines = set_cookies(&res);
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l.contains("Secure")), "{lines:?}");
}

#[actix_rt::test]
async fn a_cookie_websocket_upgrade_must_come_from_this_origin() {
    let (_t, w, api) = setup().await;
    let (_, browser) = web_login(&api, &w.a.staff.email).await;
    let upgrade = |origin: Option<&str>| {
        let mut req = browser.req(TestRequest::get().uri("/ws"));
        if let Some(o) = origin {
            req = req.insert_header(("Origin", o));
        }
        req
    };
    // Cross-site WebSocket hijacking: the browser would attach the cookie; the server refuses.
    api.send(upgrade(Some("https://evil.example")))
        .await
        .assert_problem(403);
    api.send(upgrade(None)).await.assert_problem(403);
    // Same origin: authenticated (it then fails only because this is no real upgrade).
    let res = api.send(upgrade(Some(ORIGIN))).await;
    res.assert_problem(400);
    assert!(
        res.body["type"]
            .as_str()
            .unwrap()
            .ends_with("/websocket-required"),
        "{}",
        res.text()
    );
}
