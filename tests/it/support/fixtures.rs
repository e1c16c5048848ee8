//! Fixtures for the API tests: two campuses (A accepts `a.edu`, B accepts `b.edu`), each with
//! two vendors and their menus and a user of every role, plus one platform admin. Everything
//! is inserted straight through the store layer (no HTTP, no audit rows), and every fixture
//! user shares one argon2 hash computed once per test process.
//!
//! Also the small HTTP helpers the API tests share: [`Api`] (the production app factory under
//! `actix_web::test::init_service`), [`Http`] (reqwest against a [`TestServer`]), the response
//! summary [`Resp`], and `login` on both, which goes through `POST /auth/login`.

use std::rc::Rc;
use std::time::Duration;

use actix_web::test;
use futures_util::future::LocalBoxFuture;
use itsur::app::Ctx;
use itsur::domain::{MenuItemId, VendorId};
use itsur::store::campuses::{self, CampusRow, NewCampusRow};
use itsur::store::menu_items::{self, MenuItemRow, NewMenuItemRow};
use itsur::store::users::{self, NewUserRow, UserRow};
use itsur::store::vendors::{self, NewVendorRow, VendorRow};
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::TestServer;

/// The password of every fixture user.
pub const PASSWORD: &str = "fixture-password-1";

/// One argon2 hash of [`PASSWORD`] per test process: hashing is slow on purpose.
static PASSWORD_HASH: OnceCell<String> = OnceCell::const_new();

/// The shared hash of [`PASSWORD`].
pub async fn password_hash() -> String {
    PASSWORD_HASH
        .get_or_init(|| async {
            itsur::service::credentials::hash_password(PASSWORD.to_owned())
                .await
                .unwrap()
        })
        .await
        .clone()
}

/// One campus with everything in it.
pub struct Tenant {
    /// The campus.
    pub campus: CampusRow,
    /// Its main vendor (the one the matrix and most tests use).
    pub vendor: VendorRow,
    /// A second vendor on the same campus.
    pub other_vendor: VendorRow,
    /// Items of `vendor`: generous stock so tests never run out by accident.
    pub items: Vec<MenuItemRow>,
    /// Items of `other_vendor`.
    pub other_items: Vec<MenuItemRow>,
    /// A student.
    pub student: UserRow,
    /// Another student of the same campus.
    pub student2: UserRow,
    /// Staff of `vendor`.
    pub staff: UserRow,
    /// Staff of `other_vendor`.
    pub other_staff: UserRow,
    /// The campus admin.
    pub admin: UserRow,
}

/// Two tenants and a platform admin.
pub struct World {
    /// Campus A (`a.edu`).
    pub a: Tenant,
    /// Campus B (`b.edu`).
    pub b: Tenant,
    /// Sees every campus.
    pub platform_admin: UserRow,
}

impl World {
    /// Inserts both campuses and the platform admin.
    pub async fn create(ctx: &Ctx) -> Self {
        let a = Tenant::create(ctx, "a").await;
        let b = Tenant::create(ctx, "b").await;
        let platform_admin =
            add_user(ctx, "root@platform.example", "platform_admin", None, None).await;
        Self {
            a,
            b,
            platform_admin,
        }
    }
}

impl Tenant {
    /// Campus `<tag>` accepting `<tag>.edu`, its vendors, items and users.
    pub async fn create(ctx: &Ctx, tag: &str) -> Self {
        let campus = add_campus(ctx, tag, &format!("{tag}.edu")).await;
        let vendor = add_vendor(ctx, campus.id, &format!("Vendor {tag}")).await;
        let other_vendor = add_vendor(ctx, campus.id, &format!("Other vendor {tag}")).await;
        let items = vec![
            add_item(ctx, vendor.id, &format!("Burrito {tag}"), 5000, 1000).await,
            add_item(ctx, vendor.id, &format!("Agua {tag}"), 1500, 1000).await,
        ];
        let other_items =
            vec![add_item(ctx, other_vendor.id, &format!("Taco {tag}"), 1800, 1000).await];
        let c = Some(campus.id);
        let student = add_user(ctx, &format!("student@{tag}.edu"), "student", c, None).await;
        let student2 = add_user(ctx, &format!("student2@{tag}.edu"), "student", c, None).await;
        let staff = add_user(
            ctx,
            &format!("staff@{tag}.edu"),
            "vendor_staff",
            c,
            Some(vendor.id.into()),
        )
        .await;
        let other_staff = add_user(
            ctx,
            &format!("staff2@{tag}.edu"),
            "vendor_staff",
            c,
            Some(other_vendor.id.into()),
        )
        .await;
        let admin = add_user(ctx, &format!("admin@{tag}.edu"), "campus_admin", c, None).await;
        Self {
            campus,
            vendor,
            other_vendor,
            items,
            other_items,
            student,
            student2,
            staff,
            other_staff,
            admin,
        }
    }
}

/// Inserts a campus accepting e-mail addresses at `domain`.
pub async fn add_campus(ctx: &Ctx, slug: &str, domain: &str) -> CampusRow {
    let mut conn = ctx.db.conn().await.unwrap();
    campuses::insert(
        &mut conn,
        &NewCampusRow {
            id: Uuid::now_v7(),
            name: format!("Campus {slug}"),
            slug: slug.to_owned(),
            email_domains: vec![domain.to_owned()],
            time_zone: "America/Mexico_City".to_owned(),
        },
    )
    .await
    .unwrap()
}

/// Inserts an open vendor.
pub async fn add_vendor(ctx: &Ctx, campus_id: impl Into<Uuid>, name: &str) -> VendorRow {
    let mut conn = ctx.db.conn().await.unwrap();
    vendors::insert(
        &mut conn,
        &NewVendorRow {
            id: VendorId::new(),
            campus_id: campus_id.into().into(),
            name: name.to_owned(),
            description: None,
            is_open: true,
        },
    )
    .await
    .unwrap()
}

/// Inserts an available menu item.
pub async fn add_item(
    ctx: &Ctx,
    vendor_id: impl Into<Uuid>,
    name: &str,
    price_cents: i64,
    stock: i32,
) -> MenuItemRow {
    let mut conn = ctx.db.conn().await.unwrap();
    menu_items::insert(
        &mut conn,
        &NewMenuItemRow {
            id: MenuItemId::new(),
            vendor_id: vendor_id.into().into(),
            name: name.to_owned(),
            description: None,
            price_cents,
            stock,
            available: true,
        },
    )
    .await
    .unwrap()
}

/// Inserts a user whose password is [`PASSWORD`].
pub async fn add_user(
    ctx: &Ctx,
    email: &str,
    role: &str,
    campus_id: Option<Uuid>,
    vendor_id: Option<Uuid>,
) -> UserRow {
    let hash = password_hash().await;
    let mut conn = ctx.db.conn().await.unwrap();
    users::insert(
        &mut conn,
        &NewUserRow {
            id: Uuid::now_v7(),
            campus_id,
            vendor_id,
            email: email.to_owned(),
            display_name: email.split('@').next().unwrap_or(email).to_owned(),
            password_hash: hash,
            role: role.to_owned(),
        },
    )
    .await
    .unwrap()
}

/// The current stock of a menu item, read from Postgres.
pub async fn stock_of(ctx: &Ctx, item_id: impl Into<Uuid>) -> i32 {
    let mut conn = ctx.db.conn().await.unwrap();
    menu_items::find(&mut conn, item_id.into().into())
        .await
        .unwrap()
        .unwrap()
        .stock
}

/// The body of a one-line order.
pub fn order_body(vendor_id: impl Into<Uuid>, item_id: impl Into<Uuid>, quantity: i32) -> Value {
    let (vendor_id, item_id) = (vendor_id.into(), item_id.into());
    json!({ "vendorId": vendor_id, "items": [{ "menuItemId": item_id, "quantity": quantity }] })
}

/// A logged-in session.
#[derive(Clone, Debug)]
pub struct Session {
    /// Bearer token.
    pub access: String,
    /// Single-use refresh token.
    pub refresh: String,
    /// The user.
    pub user_id: Uuid,
    /// The session.
    pub session_id: Uuid,
}

impl Session {
    fn from_login(res: &Resp, email: &str) -> Self {
        assert_eq!(res.status, 200, "login {email}: {}", res.text());
        let d = &res.body["data"];
        Self {
            access: d["accessToken"].as_str().unwrap().to_owned(),
            refresh: d["refreshToken"].as_str().unwrap().to_owned(),
            user_id: d["user"]["id"].as_str().unwrap().parse().unwrap(),
            session_id: d["user"]["sessionId"].as_str().unwrap().parse().unwrap(),
        }
    }

    /// The bearer token, for the `token` argument of the helpers.
    pub fn token(&self) -> Option<&str> {
        Some(&self.access)
    }
}

/// The parts of a response a test looks at.
#[derive(Clone, Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`Null` when empty or not JSON).
    pub body: Value,
    /// The raw body.
    pub raw: Vec<u8>,
}

impl Resp {
    fn new(status: u16, headers: Vec<(String, String)>, raw: Vec<u8>) -> Self {
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            body,
            raw,
        }
    }

    /// A header's value (first of that name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (for failure messages).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// `body.data`.
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }

    /// `body.data.id` as a UUID.
    pub fn id(&self) -> Uuid {
        self.data()["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no data.id in {}", self.text()))
            .parse()
            .unwrap()
    }

    /// Asserts an RFC 9457 problem with this status.
    #[track_caller]
    pub fn assert_problem(&self, status: u16) {
        assert_eq!(self.status, status, "{}", self.text());
        self.assert_is_problem();
    }

    /// Asserts the body is a problem+json document matching the status line.
    #[track_caller]
    pub fn assert_is_problem(&self) {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "status {}: {}",
            self.status,
            self.text()
        );
        assert_eq!(
            self.body["status"].as_u64(),
            Some(u64::from(self.status)),
            "{}",
            self.text()
        );
        assert!(self.body["type"].is_string(), "{}", self.text());
        assert!(self.body["title"].is_string(), "{}", self.text());
        assert!(self.body["detail"].is_string(), "{}", self.text());
    }

    /// The `field` names of a validation problem.
    pub fn field_errors(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["field"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

type CallFn = dyn Fn(test::TestRequest) -> LocalBoxFuture<'static, Resp>;

/// The production app factory, in process (`actix_web::test::init_service(http::app(ctx))`).
/// Clones share one app.
#[derive(Clone)]
pub struct Api {
    call: Rc<CallFn>,
}

impl Api {
    /// Initialises `itsur::http::app(ctx)`.
    pub async fn new(ctx: Ctx) -> Self {
        let app = Rc::new(test::init_service(itsur::http::app(ctx)).await);
        let call = move |req: test::TestRequest| -> LocalBoxFuture<'static, Resp> {
            let app = Rc::clone(&app);
            Box::pin(async move {
                let res = match test::try_call_service(&*app, req.to_request()).await {
                    Ok(res) => res.map_into_boxed_body(),
                    // An error that escapes every middleware (the request deadline) is
                    // rendered by actix's dispatcher from `error_response()`: do the same.
                    Err(e) => actix_web::dev::ServiceResponse::new(
                        test::TestRequest::default().to_http_request(),
                        e.error_response(),
                    ),
                };
                let status = res.status().as_u16();
                let headers = res
                    .headers()
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.as_str().to_owned(),
                            v.to_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect();
                let raw = test::read_body(res).await.to_vec();
                Resp::new(status, headers, raw)
            })
        };
        Self {
            call: Rc::new(call),
        }
    }

    /// Sends any request.
    pub async fn send(&self, req: test::TestRequest) -> Resp {
        (self.call)(req).await
    }

    fn with_token(req: test::TestRequest, token: Option<&str>) -> test::TestRequest {
        match token {
            Some(t) => req.insert_header(("Authorization", format!("Bearer {t}"))),
            None => req,
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.send(Self::with_token(test::TestRequest::get().uri(path), token))
            .await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str, token: Option<&str>) -> Resp {
        self.send(Self::with_token(
            test::TestRequest::delete().uri(path),
            token,
        ))
        .await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        self.send(Self::with_token(
            test::TestRequest::post().uri(path).set_json(body),
            token,
        ))
        .await
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        self.send(Self::with_token(
            test::TestRequest::patch().uri(path).set_json(body),
            token,
        ))
        .await
    }

    /// Logs `email` in with [`PASSWORD`] through `POST /auth/login`.
    pub async fn login(&self, email: &str) -> Session {
        let res = self
            .post(
                "/auth/login",
                None,
                &json!({ "email": email, "password": PASSWORD }),
            )
            .await;
        Session::from_login(&res, email)
    }
}

/// reqwest against a real listener.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    /// A client for `server` that gives up on a request after 60 s.
    pub fn new(server: &TestServer) -> Self {
        Self::at(&server.url(""))
    }

    /// A client for the server at `base` (`http://host:port`), e.g. a spawned binary.
    pub fn at(base: &str) -> Self {
        Self {
            client: super::client(Duration::from_secs(60)),
            base: base.to_owned(),
        }
    }

    /// Sends a request with an optional bearer token, extra headers and JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Resp {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let raw = res.bytes().await.unwrap().to_vec();
        Resp::new(status, headers, raw)
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        self.send(reqwest::Method::POST, path, token, &[], Some(body))
            .await
    }

    /// Logs `email` in with [`PASSWORD`] through `POST /auth/login`.
    pub async fn login(&self, email: &str) -> Session {
        let res = self
            .post(
                "/auth/login",
                None,
                &json!({ "email": email, "password": PASSWORD }),
            )
            .await;
        Session::from_login(&res, email)
    }
}
