//! Accounts and sessions: register, login, refresh rotation and reuse detection, logout,
//! session listing and revocation, the per-user session limit, hostile tokens, revocation
//! seen by a second instance at once, and sessions surviving the loss of Redis.

use std::time::{SystemTime, UNIX_EPOCH};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use itsur::app::Ctx;
use itsur::service::credentials::Claims;
use itsur::store::schema::sessions;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use uuid::Uuid;

use crate::support::config_for;
use crate::support::fixtures::{Api, PASSWORD, World};
use crate::support::{TestApp, TestDb, TestRedis, ctx_for};

/// A fresh database, Redis prefix, fixtures and the in-process app.
async fn setup() -> (TestApp, World, Api) {
    let t = TestApp::new().await;
    let world = World::create(&t.ctx).await;
    let api = Api::new(t.ctx.clone()).await;
    (t, world, api)
}

/// Why a session was revoked (None while live).
async fn revoked_reason(ctx: &Ctx, session_id: Uuid) -> Option<String> {
    let mut conn = ctx.db.conn().await.unwrap();
    sessions::table
        .find(session_id)
        .select(sessions::revoked_reason)
        .first::<Option<String>>(&mut conn)
        .await
        .unwrap()
}

/// Deletes every key under the test's prefix: to the app this is a `FLUSHALL`, without
/// wiping the Redis other tests share. Returns how many keys were deleted.
async fn flush_prefix(redis: &TestRedis) -> usize {
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{}:*", redis.prefix))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            let n: usize = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .unwrap();
            deleted += n;
        }
        if next == 0 {
            return deleted;
        }
        cursor = next;
    }
}

/// The cached entry of a session, as the app spells its key.
async fn cached_session(ctx: &Ctx, session_id: Uuid) -> Option<String> {
    let kv = ctx.kv.as_ref().unwrap();
    let mut conn = kv.conn().await.unwrap();
    redis::cmd("GET")
        .arg(kv.keys.session(&session_id.to_string()))
        .query_async(&mut *conn)
        .await
        .unwrap()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(ctx: &Ctx, alg: Algorithm, claims: &Claims) -> String {
    let secret = ctx.config.jwt_secret.as_ref().unwrap().expose();
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Unpadded base64url, for building an unsigned token by hand.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            let idx = usize::try_from((n >> (18 - 6 * i)) & 63).unwrap();
            out.push(char::from(ALPHABET[idx]));
        }
    }
    out
}

#[actix_web::test]
async fn register_picks_the_campus_by_email_domain() {
    let (_t, world, api) = setup().await;
    let body = |email: &str| json!({ "email": email, "password": "long-enough-pw", "displayName": "New One" });

    let res = api
        .post("/auth/register", None, &body("  New@A.EDU "))
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let user = &res.data()["user"];
    assert_eq!(user["email"], "new@a.edu");
    assert_eq!(user["role"], "student");
    assert_eq!(user["campusId"], world.a.campus.id.to_string());
    assert_eq!(res.data()["tokenType"], "Bearer");
    let token = res.data()["accessToken"].as_str().unwrap().to_owned();
    let me = api.get("/me", Some(&token)).await;
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.data()["email"], "new@a.edu");

    let res = api
        .post("/auth/register", None, &body("someone@b.edu"))
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(
        res.data()["user"]["campusId"],
        world.b.campus.id.to_string()
    );

    // No campus accepts the domain: a validation problem on the e-mail field.
    let res = api
        .post("/auth/register", None, &body("x@unknown.edu"))
        .await;
    res.assert_problem(400);
    assert_eq!(res.field_errors(), ["email"]);

    // The same address again, in any case, is a conflict; fixture users count too.
    for dup in ["new@a.edu", "NEW@a.edu", "student@a.edu"] {
        api.post("/auth/register", None, &body(dup))
            .await
            .assert_problem(409);
    }

    // The registered password logs in.
    let res = api
        .post(
            "/auth/login",
            None,
            &json!({ "email": "new@a.edu", "password": "long-enough-pw" }),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
}

#[actix_web::test]
async fn concurrent_registrations_of_one_address_create_one_account() {
    let (_t, _world, api) = setup().await;
    let body =
        json!({ "email": "race@a.edu", "password": "long-enough-pw", "displayName": "Racer" });
    let results =
        futures_util::future::join_all((0..6).map(|_| api.post("/auth/register", None, &body)))
            .await;
    let created = results.iter().filter(|r| r.status == 201).count();
    assert_eq!(created, 1, "{results:#?}");
    for r in results.iter().filter(|r| r.status != 201) {
        r.assert_problem(409);
    }
}

#[actix_web::test]
async fn login_me_and_wrong_passwords() {
    let (_t, world, api) = setup().await;

    let s = api.login("student@a.edu").await;
    let me = api.get("/me", s.token()).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.data()["id"], world.a.student.id.to_string());
    assert_eq!(me.data()["role"], "student");
    assert_eq!(me.data()["sessionId"], s.session_id.to_string());
    assert_eq!(me.data()["campusId"], world.a.campus.id.to_string());
    assert!(me.body["data"].get("passwordHash").is_none());

    let staff = api.login("staff@a.edu").await;
    let me = api.get("/me", staff.token()).await;
    assert_eq!(me.data()["vendorId"], world.a.vendor.id.to_string());

    // E-mail is case-insensitive.
    let res = api
        .post(
            "/auth/login",
            None,
            &json!({ "email": "Student@A.edu", "password": PASSWORD }),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());

    // A wrong password and an unknown account look the same.
    let wrong = api
        .post(
            "/auth/login",
            None,
            &json!({ "email": "student@a.edu", "password": "not-the-password" }),
        )
        .await;
    wrong.assert_problem(401);
    let unknown = api
        .post(
            "/auth/login",
            None,
            &json!({ "email": "nobody@a.edu", "password": PASSWORD }),
        )
        .await;
    unknown.assert_problem(401);
    assert_eq!(wrong.body["detail"], unknown.body["detail"]);

    api.get("/me", None).await.assert_problem(401);
    let res = api
        .send(
            actix_web::test::TestRequest::get()
                .uri("/me")
                .insert_header(("Authorization", format!("Basic {}", s.access))),
        )
        .await;
    res.assert_problem(401);
}

#[actix_web::test]
async fn refresh_rotates_and_reuse_of_an_old_token_revokes_the_session() {
    let (t, _world, api) = setup().await;
    let s = api.login("student@a.edu").await;

    let res = api
        .post("/auth/refresh", None, &json!({ "refreshToken": s.refresh }))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let access2 = res.data()["accessToken"].as_str().unwrap().to_owned();
    let refresh2 = res.data()["refreshToken"].as_str().unwrap().to_owned();
    assert_ne!(refresh2, s.refresh);
    assert_eq!(res.data()["user"]["sessionId"], s.session_id.to_string());
    assert_eq!(api.get("/me", Some(&access2)).await.status, 200);

    // The new refresh token rotates again.
    let res = api
        .post("/auth/refresh", None, &json!({ "refreshToken": refresh2 }))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let access3 = res.data()["accessToken"].as_str().unwrap().to_owned();
    let refresh3 = res.data()["refreshToken"].as_str().unwrap().to_owned();
    // Used once, so the instance caches the session as live.
    assert_eq!(api.get("/me", Some(&access3)).await.status, 200);

    // The first refresh token again, after the grace window: stolen or replayed. The whole
    // session goes.
    age_rotations(&t.ctx, s.session_id).await;
    api.post("/auth/refresh", None, &json!({ "refreshToken": s.refresh }))
        .await
        .assert_problem(401);
    api.get("/me", Some(&access3)).await.assert_problem(401);
    api.post("/auth/refresh", None, &json!({ "refreshToken": refresh3 }))
        .await
        .assert_problem(401);
    assert_eq!(
        revoked_reason(&t.ctx, s.session_id).await.as_deref(),
        Some("refresh_token_reuse")
    );

    // Garbage is 401 too, not 400 or 500.
    for bad in ["", "nope", "0190f1f2-0000-7000-8000-000000000000.short"] {
        api.post("/auth/refresh", None, &json!({ "refreshToken": bad }))
            .await
            .assert_problem(401);
    }
}

/// Moves a session's rotations out of the reuse grace window, as if a minute had passed.
async fn age_rotations(ctx: &Ctx, session_id: Uuid) {
    let mut conn = ctx.db.conn().await.unwrap();
    let n = diesel::sql_query(
        "UPDATE refresh_token_history SET superseded_at = superseded_at - interval '1 minute' \
         WHERE session_id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(session_id)
    .execute(&mut conn)
    .await
    .unwrap();
    assert!(n > 0, "the session has rotated at least once");
}

#[actix_web::test]
async fn a_made_up_secret_for_a_known_session_id_revokes_nothing() {
    let (t, _world, api) = setup().await;
    let s = api.login("student@a.edu").await;
    // Session ids are in every access token and in the audit log: anyone may know one.
    for forged in [
        format!("{}.{}", s.session_id, "0".repeat(64)),
        format!("{}.{}", s.session_id, "ab".repeat(32)),
    ] {
        let res = api
            .post("/auth/refresh", None, &json!({ "refreshToken": forged }))
            .await;
        res.assert_problem(401);
        assert!(!res.text().contains("revoked"), "{}", res.text());
    }
    assert_eq!(revoked_reason(&t.ctx, s.session_id).await, None);
    assert_eq!(api.get("/me", s.token()).await.status, 200);
    let res = api
        .post("/auth/refresh", None, &json!({ "refreshToken": s.refresh }))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
}

#[actix_web::test]
async fn two_refreshes_of_the_current_token_at_once_keep_the_session() {
    let (t, _world, api) = setup().await;
    let s = api.login("student@a.edu").await;
    let body = json!({ "refreshToken": s.refresh });
    // Two tabs refresh with the same token at once: the row lock serialises them, so one
    // rotates and the other finds the secret it just replaced.
    let (first, second) = tokio::join!(
        api.post("/auth/refresh", None, &body),
        api.post("/auth/refresh", None, &body)
    );
    let (won, lost) = if first.status == 200 {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(won.status, 200, "{}", won.text());
    lost.assert_problem(401);
    assert_eq!(revoked_reason(&t.ctx, s.session_id).await, None);
    let refresh2 = won.data()["refreshToken"].as_str().unwrap().to_owned();
    let res = api
        .post("/auth/refresh", None, &json!({ "refreshToken": refresh2 }))
        .await;
    assert_eq!(
        res.status,
        200,
        "the winner's token still works: {}",
        res.text()
    );
}

#[actix_web::test]
async fn logout_rejects_the_token_and_its_refresh_token() {
    let (t, _world, api) = setup().await;
    let s = api.login("student@a.edu").await;
    assert_eq!(api.get("/me", s.token()).await.status, 200);

    let res = api.post("/auth/logout", s.token(), &json!({})).await;
    assert_eq!(res.status, 204, "{}", res.text());
    api.get("/me", s.token()).await.assert_problem(401);
    api.post("/auth/logout", s.token(), &json!({}))
        .await
        .assert_problem(401);
    api.post("/auth/refresh", None, &json!({ "refreshToken": s.refresh }))
        .await
        .assert_problem(401);
    assert_eq!(
        revoked_reason(&t.ctx, s.session_id).await.as_deref(),
        Some("logout")
    );
}

#[actix_web::test]
async fn sessions_are_listed_and_revoked_by_their_owner_only() {
    let (_t, _world, api) = setup().await;
    let s1 = api.login("student@a.edu").await;
    let s2 = api.login("student@a.edu").await;
    let other = api.login("student2@a.edu").await;

    let res = api.get("/me/sessions", s2.token()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let list = res.data().as_array().unwrap();
    let ids: Vec<&str> = list.iter().map(|s| s["id"].as_str().unwrap()).collect();
    // Newest first.
    assert_eq!(ids, [s2.session_id.to_string(), s1.session_id.to_string()]);
    assert_eq!(list[0]["current"], true);
    assert_eq!(list[1]["current"], false);

    // Someone else's session, a random id and a malformed id: 404, and nothing changes.
    let path = format!("/me/sessions/{}", other.session_id);
    api.delete(&path, s2.token()).await.assert_problem(404);
    assert_eq!(api.get("/me", other.token()).await.status, 200);
    api.delete(&format!("/me/sessions/{}", Uuid::now_v7()), s2.token())
        .await
        .assert_problem(404);
    api.delete("/me/sessions/not-a-uuid", s2.token())
        .await
        .assert_problem(404);

    // The owner revokes the other device's session.
    assert_eq!(api.get("/me", s1.token()).await.status, 200);
    let path = format!("/me/sessions/{}", s1.session_id);
    let res = api.delete(&path, s2.token()).await;
    assert_eq!(res.status, 204, "{}", res.text());
    api.get("/me", s1.token()).await.assert_problem(401);
    assert_eq!(api.get("/me", s2.token()).await.status, 200);
    api.delete(&path, s2.token()).await.assert_problem(404);
    let res = api.get("/me/sessions", s2.token()).await;
    assert_eq!(res.data().as_array().unwrap().len(), 1);
}

#[actix_web::test]
async fn logging_in_beyond_the_session_limit_revokes_the_oldest() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let mut config = config_for(&db.url, Some(&redis));
    config.max_sessions_per_user = 2;
    let ctx = Ctx::new(config).unwrap();
    World::create(&ctx).await;
    let api = Api::new(ctx.clone()).await;

    let s1 = api.login("student@a.edu").await;
    let s2 = api.login("student@a.edu").await;
    // Both in use, so this instance has them cached as live.
    assert_eq!(api.get("/me", s1.token()).await.status, 200);
    assert_eq!(api.get("/me", s2.token()).await.status, 200);

    let s3 = api.login("student@a.edu").await;
    api.get("/me", s1.token()).await.assert_problem(401);
    assert_eq!(api.get("/me", s2.token()).await.status, 200);
    assert_eq!(api.get("/me", s3.token()).await.status, 200);
    assert_eq!(
        revoked_reason(&ctx, s1.session_id).await.as_deref(),
        Some("session_limit")
    );

    let res = api.get("/me/sessions", s3.token()).await;
    let ids: Vec<String> = res
        .data()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, [s3.session_id.to_string(), s2.session_id.to_string()]);

    // Another user's sessions are not touched.
    let other = api.login("student2@a.edu").await;
    let _s4 = api.login("student@a.edu").await;
    assert_eq!(api.get("/me", other.token()).await.status, 200);
    api.get("/me", s2.token()).await.assert_problem(401);
}

#[actix_web::test]
async fn tampered_expired_and_unsigned_tokens_are_rejected() {
    let (t, world, api) = setup().await;
    let s = api.login("student@a.edu").await;
    let now = now_secs();

    // Control: a token we sign ourselves for the live session is accepted, so the failures
    // below are about what each one changes.
    let good = sign(
        &t.ctx,
        Algorithm::HS256,
        &Claims {
            sub: s.user_id,
            sid: s.session_id,
            iat: now,
            exp: now + 300,
        },
    );
    assert_eq!(api.get("/me", Some(&good)).await.status, 200);

    let expired = sign(
        &t.ctx,
        Algorithm::HS256,
        &Claims {
            sub: s.user_id,
            sid: s.session_id,
            iat: now - 3600,
            exp: now - 120,
        },
    );

    // Another algorithm with the same key.
    let hs512 = sign(
        &t.ctx,
        Algorithm::HS512,
        &Claims {
            sub: s.user_id,
            sid: s.session_id,
            iat: now,
            exp: now + 300,
        },
    );

    // A live session but another user in `sub`.
    let wrong_sub = sign(
        &t.ctx,
        Algorithm::HS256,
        &Claims {
            sub: world.a.student2.id,
            sid: s.session_id,
            iat: now,
            exp: now + 300,
        },
    );

    // Signed with another key.
    let foreign = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &Claims {
            sub: s.user_id,
            sid: s.session_id,
            iat: now,
            exp: now + 300,
        },
        &EncodingKey::from_secret(b"some-other-secret-that-is-long-enough-000"),
    )
    .unwrap();

    // `alg: none`, no signature.
    let claims = json!({ "sub": s.user_id, "sid": s.session_id, "iat": now, "exp": now + 300 });
    let unsigned = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    );

    // The real token with one payload character changed, and with the signature cut.
    let parts: Vec<&str> = s.access.split('.').collect();
    let mut payload = parts[1].to_owned();
    let last = payload.pop().unwrap();
    payload.push(if last == 'A' { 'B' } else { 'A' });
    let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
    let stripped = format!("{}.{}.", parts[0], parts[1]);

    for (name, token) in [
        ("expired", expired.as_str()),
        ("hs512", &hs512),
        ("wrong sub", &wrong_sub),
        ("foreign key", &foreign),
        ("alg none", &unsigned),
        ("tampered", &tampered),
        ("no signature", &stripped),
        ("garbage", "not.a.jwt"),
        ("empty parts", ".."),
    ] {
        let res = api.get("/me", Some(token)).await;
        assert_eq!(res.status, 401, "{name}: {}", res.text());
        res.assert_is_problem();
    }

    // Once the session is cached as live, a token naming another user is still refused.
    assert_eq!(api.get("/me", s.token()).await.status, 200);
    api.get("/me", Some(&wrong_sub)).await.assert_problem(401);
}

#[actix_web::test]
async fn revocation_on_one_instance_is_seen_by_another_at_once() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    // Two processes' worth of state: separate pools and caches, one database and prefix.
    let ctx_a = ctx_for(&db.url, Some(&redis));
    let ctx_b = ctx_for(&db.url, Some(&redis));
    World::create(&ctx_a).await;
    let a = Api::new(ctx_a.clone()).await;
    let b = Api::new(ctx_b.clone()).await;

    // Logout on A.
    let s = a.login("student@a.edu").await;
    assert_eq!(b.get("/me", s.token()).await.status, 200);
    assert!(
        cached_session(&ctx_b, s.session_id).await.is_some(),
        "B cached the live session"
    );
    assert_eq!(
        a.post("/auth/logout", s.token(), &json!({})).await.status,
        204
    );
    b.get("/me", s.token()).await.assert_problem(401);
    a.get("/me", s.token()).await.assert_problem(401);

    // A session revoked from another device on A.
    let s1 = a.login("student@a.edu").await;
    let s2 = a.login("student@a.edu").await;
    assert_eq!(b.get("/me", s1.token()).await.status, 200);
    let res = a
        .delete(&format!("/me/sessions/{}", s1.session_id), s2.token())
        .await;
    assert_eq!(res.status, 204);
    b.get("/me", s1.token()).await.assert_problem(401);

    // Refresh-token reuse detected on A.
    let s3 = a.login("student@a.edu").await;
    let res = a
        .post(
            "/auth/refresh",
            None,
            &json!({ "refreshToken": s3.refresh }),
        )
        .await;
    let access = res.data()["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(b.get("/me", Some(&access)).await.status, 200);
    age_rotations(&ctx_a, s3.session_id).await;
    a.post(
        "/auth/refresh",
        None,
        &json!({ "refreshToken": s3.refresh }),
    )
    .await
    .assert_problem(401);
    b.get("/me", Some(&access)).await.assert_problem(401);

    // The session limit evicting on A.
    let mut config = config_for(&db.url, Some(&redis));
    config.max_sessions_per_user = 1;
    let a1 = Api::new(Ctx::new(config).unwrap()).await;
    let old = a1.login("staff@a.edu").await;
    assert_eq!(b.get("/me", old.token()).await.status, 200);
    let _new = a1.login("staff@a.edu").await;
    b.get("/me", old.token()).await.assert_problem(401);
}

#[actix_web::test]
async fn losing_every_redis_key_logs_nobody_out_and_revives_nobody() {
    let (t, _world, api) = setup().await;
    let live = api.login("student@a.edu").await;
    let gone = api.login("student2@a.edu").await;
    assert_eq!(api.get("/me", live.token()).await.status, 200);
    assert_eq!(api.get("/me", gone.token()).await.status, 200);
    assert_eq!(
        api.post("/auth/logout", gone.token(), &json!({}))
            .await
            .status,
        204
    );
    assert!(cached_session(&t.ctx, live.session_id).await.is_some());
    assert_eq!(
        cached_session(&t.ctx, gone.session_id).await.as_deref(),
        Some("revoked")
    );

    // FLUSHALL as far as this deployment can tell.
    assert!(flush_prefix(&t._redis).await >= 2);
    assert!(cached_session(&t.ctx, live.session_id).await.is_none());

    // Postgres is the truth: the live session still works, the revoked one stays revoked.
    assert_eq!(api.get("/me", live.token()).await.status, 200);
    api.get("/me", gone.token()).await.assert_problem(401);
    let res = api
        .post(
            "/auth/refresh",
            None,
            &json!({ "refreshToken": live.refresh }),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());

    // And the cache is rebuilt.
    assert!(cached_session(&t.ctx, live.session_id).await.is_some());
}

#[actix_web::test]
async fn sessions_work_without_redis_at_all() {
    let db = TestDb::new().await;
    let ctx = ctx_for(&db.url, None);
    assert!(ctx.kv.is_none());
    World::create(&ctx).await;
    let api = Api::new(ctx.clone()).await;
    // A second instance, also without Redis.
    let other = Api::new(ctx_for(&db.url, None)).await;

    let s = api.login("student@a.edu").await;
    assert_eq!(api.get("/me", s.token()).await.status, 200);
    assert_eq!(other.get("/me", s.token()).await.status, 200);

    let res = api
        .post("/auth/refresh", None, &json!({ "refreshToken": s.refresh }))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let access = res.data()["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(other.get("/me", Some(&access)).await.status, 200);

    assert_eq!(
        api.post("/auth/logout", Some(&access), &json!({}))
            .await
            .status,
        204
    );
    api.get("/me", Some(&access)).await.assert_problem(401);
    other.get("/me", Some(&access)).await.assert_problem(401);
}

#[actix_web::test]
async fn expired_sessions_do_not_count_towards_the_limit() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let mut config = config_for(&db.url, Some(&redis));
    config.max_sessions_per_user = 2;
    let ctx = Ctx::new(config).unwrap();
    World::create(&ctx).await;
    let api = Api::new(ctx.clone()).await;

    // An older session kept alive, and a newer one that expired unused (never revoked).
    let live = api.login("student@a.edu").await;
    let stale = api.login("student@a.edu").await;
    let mut conn = ctx.db.conn().await.unwrap();
    diesel::update(sessions::table.find(stale.session_id))
        .set(sessions::expires_at.eq(chrono::Utc::now() - chrono::Duration::hours(1)))
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    api.get("/me", stale.token()).await.assert_problem(401);

    // Logging in again makes two live sessions, within the limit of two: none is evicted.
    let fresh = api.login("student@a.edu").await;
    assert_eq!(api.get("/me", fresh.token()).await.status, 200);
    let res = api.get("/me", live.token()).await;
    assert_eq!(
        res.status,
        200,
        "a live session was evicted to make room next to an expired one: {}",
        res.text()
    );
    assert_eq!(revoked_reason(&ctx, live.session_id).await, None);
}

#[actix_web::test]
async fn a_logout_that_cannot_reach_redis_fails_instead_of_half_applying() {
    use crate::support::chaos::ChaosProxy;
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    // Instance A reaches Redis through a proxy the test can cut; B reaches it directly.
    let (proxy, via) = ChaosProxy::in_front_of(&redis.url).await;
    let mut config_a = config_for(&db.url, Some(&redis));
    config_a.redis.url = Some(itsur::config::Secret::new(via));
    let ctx_a = Ctx::new(config_a).unwrap();
    let ctx_b = ctx_for(&db.url, Some(&redis));
    World::create(&ctx_a).await;
    let a = Api::new(ctx_a.clone()).await;
    let b = Api::new(ctx_b.clone()).await;

    let s = a.login("student@a.edu").await;
    assert_eq!(
        b.get("/me", s.token()).await.status,
        200,
        "B caches the live session"
    );

    proxy.cut();
    let res = a.post("/auth/logout", s.token(), &json!({})).await;
    res.assert_problem(503);
    assert!(res.header("retry-after").is_some());
    // Nothing changed: the session is still live everywhere, as the 503 told the client.
    assert_eq!(revoked_reason(&ctx_a, s.session_id).await, None);
    assert_eq!(b.get("/me", s.token()).await.status, 200);

    proxy.restore();
    let ok = crate::support::eventually(std::time::Duration::from_secs(10), || async {
        a.post("/auth/logout", s.token(), &json!({})).await.status == 204
    })
    .await;
    assert!(ok, "the retried logout succeeds once Redis is back");
    b.get("/me", s.token()).await.assert_problem(401);
}

/// Issue 17 item 1: `PASSWORD_HASH_CONCURRENCY` and `PASSWORD_HASH_TIMEOUT_MS` bound the
/// hasher every login, registration and import row goes through (before, it always took one
/// per core and 5 s, whatever was configured).
#[actix_web::test]
async fn password_hash_settings_bound_the_hasher() {
    let db = TestDb::new().await;
    let mut config = config_for(&db.url, None);
    config.password_hash = itsur::config::PasswordHashConfig {
        concurrency: 3,
        queue_timeout: std::time::Duration::from_millis(250),
    };
    let ctx = Ctx::new(config).unwrap();
    let shown = format!("{:?}", ctx.hasher);
    assert!(
        shown.contains("available: 3") && shown.contains("250ms"),
        "{shown}"
    );
}
