//! Accounts and sessions: register, login, refresh (rotating, reuse revokes the session),
//! logout, session listing and revocation, and [`authenticate`], which every authenticated
//! request runs: JWT signature and expiry first, then the session's liveness — Redis cache
//! first, Postgres as the truth — so a revocation takes effect at once on every instance and
//! a Redis flush logs nobody out.
//!
//! Cache protocol (keys from `kv::keys::session`): a live session caches the actor for
//! [`SESSION_CACHE_TTL`] with `SET NX`; a revocation writes a `revoked` tombstone with a
//! plain `SET` (overwriting any positive entry). Because positive writes are `NX`, a request
//! that read Postgres just before the revocation committed cannot resurrect the session in
//! the cache after the tombstone lands.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::credentials::{self, SESSION_TTL};
use super::{Error, Result};
use crate::app::Ctx;
use crate::domain::{self, Actor, CampusId, DomainError, Role, SessionId, UserId, VendorId};
use crate::store::{campuses, sessions, users};

/// How long a positive session check is cached in Redis.
pub const SESSION_CACHE_TTL: Duration = Duration::from_secs(60);
/// How long a revocation tombstone stays (longer than any positive entry).
const TOMBSTONE_TTL: Duration = Duration::from_secs(600);
const REVOKED: &str = "revoked";

/// Tokens handed out at login, registration and refresh.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// Short-lived HS256 JWT.
    pub access_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Opaque, single-use refresh token.
    pub refresh_token: String,
    /// The session these tokens belong to.
    pub session_id: SessionId,
}

/// A user as shown to themselves.
#[derive(Debug, Clone, Serialize)]
pub struct Me {
    /// User id.
    pub id: UserId,
    /// Lowercased e-mail.
    pub email: String,
    /// Display name.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Campus, when the role has one.
    pub campus_id: Option<CampusId>,
    /// Vendor, for vendor staff.
    pub vendor_id: Option<VendorId>,
    /// The session making this request.
    pub session_id: SessionId,
}

/// A live session as listed to its owner.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Session id.
    pub id: SessionId,
    /// When it was opened.
    pub created_at: DateTime<Utc>,
    /// Last login or refresh.
    pub last_used_at: DateTime<Utc>,
    /// When it expires unless refreshed.
    pub expires_at: DateTime<Utc>,
    /// User agent at login, if sent.
    pub user_agent: Option<String>,
    /// True for the session making the request.
    pub current: bool,
}

/// The cached form of a live session.
#[derive(Serialize, Deserialize)]
struct CachedActor {
    user_id: Uuid,
    role: String,
    campus_id: Option<Uuid>,
    vendor_id: Option<Uuid>,
}

fn jwt_secret(ctx: &Ctx) -> Result<&crate::config::Secret<String>> {
    ctx.config
        .jwt_secret
        .as_ref()
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("JWT_SECRET not configured for this role")))
}

/// Resolves a bearer token to the actor making the request.
pub async fn authenticate(ctx: &Ctx, token: &str) -> Result<Actor> {
    let claims = credentials::verify_access_token(jwt_secret(ctx)?, token)
        .ok_or(Error::Unauthenticated("invalid or expired access token"))?;
    let session_id = SessionId::from(claims.sid);
    if let Some(cached) = cache_get(ctx, session_id).await {
        return match cached {
            Some(c) if c.user_id == claims.sub => actor_from_cache(session_id, c),
            _ => Err(Error::Unauthenticated("session revoked")),
        };
    }
    let mut conn = ctx.db.conn().await?;
    let Some((session, user)) = sessions::find_live_with_user(&mut conn, claims.sid).await? else {
        return Err(Error::Unauthenticated("session revoked or expired"));
    };
    drop(conn);
    if user.id != claims.sub {
        return Err(Error::Unauthenticated("token does not match its session"));
    }
    let cached = CachedActor {
        user_id: user.id,
        role: user.role.clone(),
        campus_id: user.campus_id,
        vendor_id: user.vendor_id,
    };
    cache_put(ctx, session.id, &cached).await;
    actor_from_cache(session_id, cached)
}

fn actor_from_cache(session_id: SessionId, c: CachedActor) -> Result<Actor> {
    let role: Role = c
        .role
        .parse()
        .map_err(|_| Error::Internal(anyhow::anyhow!("unknown role in session cache")))?;
    Ok(Actor {
        user_id: UserId::from(c.user_id),
        session_id,
        role,
        campus_id: c.campus_id.map(CampusId::from),
        vendor_id: c.vendor_id.map(VendorId::from),
    })
}

/// `Some(Some(actor))` live, `Some(None)` revoked, `None` unknown (miss or Redis down).
async fn cache_get(ctx: &Ctx, session_id: SessionId) -> Option<Option<CachedActor>> {
    let kv = ctx.kv.as_ref()?;
    let mut conn = kv.conn().await.ok()?;
    let value: Option<String> = redis::cmd("GET")
        .arg(kv.keys.session(&session_id.to_string()))
        .query_async(&mut *conn)
        .await
        .ok()?;
    match value.as_deref() {
        None => None,
        Some(REVOKED) => Some(None),
        Some(json) => serde_json::from_str(json).ok().map(Some),
    }
}

async fn cache_put(ctx: &Ctx, session_id: Uuid, actor: &CachedActor) {
    let Some(kv) = &ctx.kv else { return };
    let Ok(json) = serde_json::to_string(actor) else {
        return;
    };
    if let Ok(mut conn) = kv.conn().await {
        // NX: never overwrite a revocation tombstone. A failure only costs a cache miss.
        let _: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(kv.keys.session(&session_id.to_string()))
            .arg(json)
            .arg("NX")
            .arg("EX")
            .arg(SESSION_CACHE_TTL.as_secs())
            .query_async(&mut *conn)
            .await;
    }
}

/// Marks sessions revoked in the cache of every instance (tombstones); false when Redis is
/// configured but could not be written. Without Redis nothing is cached: true.
async fn cache_revoke(ctx: &Ctx, session_ids: &[Uuid]) -> bool {
    let Some(kv) = &ctx.kv else { return true };
    let Ok(mut conn) = kv.conn().await else {
        tracing::warn!("could not reach redis to write session revocations");
        return false;
    };
    let mut pipe = redis::pipe();
    for id in session_ids {
        pipe.cmd("SET")
            .arg(kv.keys.session(&id.to_string()))
            .arg(REVOKED)
            .arg("EX")
            .arg(TOMBSTONE_TTL.as_secs())
            .ignore();
    }
    match pipe.query_async::<()>(&mut *conn).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "could not write session revocations to redis");
            false
        }
    }
}

/// Input of [`register`].
#[derive(Debug, Clone)]
pub struct Registration {
    /// E-mail; its domain picks the campus.
    pub email: String,
    /// Plain password (8..=128 characters).
    pub password: String,
    /// Display name.
    pub display_name: String,
    /// User agent, remembered on the session.
    pub user_agent: Option<String>,
}

/// Registers a student on the campus whose allowed e-mail domain matches, and logs them in.
pub async fn register(ctx: &Ctx, input: Registration) -> Result<(Me, Tokens)> {
    let email = domain::validate::email(&input.email);
    let mut errors = Vec::new();
    if let Err(e) = &email {
        errors.push(("email".to_owned(), e.clone()));
    }
    if let Err(e) = domain::validate::password(&input.password) {
        errors.push(("password".to_owned(), e));
    }
    if let Err(e) = domain::validate::name(&input.display_name) {
        errors.push(("displayName".to_owned(), e));
    }
    let email = match email {
        Ok(email) if errors.is_empty() => email,
        _ => {
            return Err(DomainError::Invalid {
                field_errors: errors,
            }
            .into());
        }
    };
    let email_domain = email
        .rsplit_once('@')
        .map(|(_, d)| d.to_owned())
        .unwrap_or_default();
    let hash = ctx.hasher.hash(input.password).await?;
    let mut conn = ctx.db.conn().await?;
    let campus = campuses::find_by_email_domain(&mut conn, &email_domain)
        .await?
        .ok_or_else(|| DomainError::Invalid {
            field_errors: vec![(
                "email".to_owned(),
                "no campus accepts this e-mail domain".to_owned(),
            )],
        })?;
    let secret = credentials::new_refresh_secret();
    let session_id = Uuid::now_v7();
    let display_name = input.display_name.trim().to_owned();
    let user_agent = input.user_agent;
    let (user, session) = conn
        .transaction(async |conn| -> Result<_> {
            if users::find_by_email(conn, &email).await?.is_some() {
                return Err(DomainError::Conflict {
                    reason: "an account with this e-mail already exists".to_owned(),
                }
                .into());
            }
            let user = users::insert(
                conn,
                &users::NewUserRow {
                    id: Uuid::now_v7(),
                    campus_id: Some(campus.id),
                    vendor_id: None,
                    email: email.clone(),
                    display_name: display_name.clone(),
                    password_hash: hash,
                    role: Role::Student.as_str().to_owned(),
                },
            )
            .await?;
            let session = open_session(conn, session_id, user.id, &secret, user_agent).await?;
            crate::store::audit::insert(
                conn,
                &audit_row(
                    Some(campus.id),
                    Some(user.id),
                    "user.registered",
                    "user",
                    user.id,
                ),
            )
            .await?;
            Ok((user, session))
        })
        .await?;
    let tokens = tokens_for(ctx, user.id, session.id, &secret)?;
    Ok((me_from(&user, session.id)?, tokens))
}

fn audit_row(
    campus_id: Option<Uuid>,
    actor_id: Option<Uuid>,
    action: &str,
    target_type: &str,
    target_id: Uuid,
) -> crate::store::audit::NewAuditRow {
    crate::store::audit::NewAuditRow {
        campus_id,
        actor_id,
        action: action.to_owned(),
        target_type: target_type.to_owned(),
        target_id: target_id.to_string(),
        detail: serde_json::json!({}),
        request_id: None,
    }
}

async fn open_session(
    conn: &mut diesel_async::AsyncPgConnection,
    session_id: Uuid,
    user_id: Uuid,
    secret: &str,
    user_agent: Option<String>,
) -> diesel::QueryResult<sessions::SessionRow> {
    let now = Utc::now();
    sessions::insert(
        conn,
        &sessions::NewSessionRow {
            id: session_id,
            user_id,
            refresh_token_hash: credentials::hash_refresh_secret(secret),
            refresh_generation: 0,
            created_at: now,
            last_used_at: now,
            expires_at: now + SESSION_TTL,
            user_agent: user_agent.map(|ua| ua.chars().take(300).collect()),
        },
    )
    .await
}

fn tokens_for(ctx: &Ctx, user_id: Uuid, session_id: Uuid, secret: &str) -> Result<Tokens> {
    let (access_token, expires_in) =
        credentials::issue_access_token(jwt_secret(ctx)?, user_id, session_id)?;
    Ok(Tokens {
        access_token,
        expires_in,
        refresh_token: credentials::refresh_token(session_id, secret),
        session_id: SessionId::from(session_id),
    })
}

fn me_from(user: &users::UserRow, session_id: Uuid) -> Result<Me> {
    Ok(Me {
        id: UserId::from(user.id),
        email: user.email.clone(),
        display_name: user.display_name.clone(),
        role: user
            .role
            .parse()
            .map_err(|_| Error::Internal(anyhow::anyhow!("unknown role in users row")))?,
        campus_id: user.campus_id.map(CampusId::from),
        vendor_id: user.vendor_id.map(VendorId::from),
        session_id: SessionId::from(session_id),
    })
}

/// Logs in with e-mail and password; opens a session and revokes the oldest ones beyond
/// `max_sessions`.
pub async fn login(
    ctx: &Ctx,
    email: &str,
    password: String,
    user_agent: Option<String>,
) -> Result<(Me, Tokens)> {
    let email = email.trim().to_lowercase();
    let mut conn = ctx.db.conn().await?;
    let user = users::find_by_email(&mut conn, &email).await?;
    drop(conn);
    let ok = ctx
        .hasher
        .verify(password, user.as_ref().map(|u| u.password_hash.clone()))
        .await?;
    let user = match user {
        Some(user) if ok => user,
        _ => return Err(Error::Unauthenticated("wrong e-mail or password")),
    };
    let secret = credentials::new_refresh_secret();
    let session_id = Uuid::now_v7();
    let max = i64::from(ctx.config.max_sessions_per_user);
    let mut conn = ctx.db.conn().await?;
    let (session, evicted) = conn
        .transaction(async |conn| -> Result<_> {
            let session = open_session(conn, session_id, user.id, &secret, user_agent).await?;
            let evicted = sessions::revoke_oldest_beyond(conn, user.id, max).await?;
            crate::store::audit::insert(
                conn,
                &audit_row(
                    user.campus_id,
                    Some(user.id),
                    "session.opened",
                    "session",
                    session.id,
                ),
            )
            .await?;
            Ok((session, evicted))
        })
        .await?;
    drop(conn);
    // Best effort: an evicted session's cached entry expires within SESSION_CACHE_TTL.
    if !evicted.is_empty() {
        cache_revoke(ctx, &evicted).await;
    }
    let tokens = tokens_for(ctx, user.id, session.id, &secret)?;
    Ok((me_from(&user, session.id)?, tokens))
}

/// How long after a rotation the secret it replaced is answered with a plain 401 instead of
/// revoking the session: two tabs (or a retried request) refreshing the same current token
/// at once must not log the user out. A replay later than this is treated as theft.
pub const REFRESH_REUSE_GRACE: Duration = Duration::from_secs(10);

/// What a presented refresh secret turned out to be.
enum RefreshOutcome {
    /// The session's current secret: rotated.
    Rotated(users::UserRow),
    /// Session revoked, expired or unknown.
    Dead,
    /// Not a secret this session ever issued (a guess built from a known session id):
    /// refused, nothing changes.
    Unknown,
    /// The secret this session replaced moments ago (a concurrent refresh): refused,
    /// the session lives.
    JustRotated,
    /// A secret this session replaced earlier: someone replayed it, so the session is
    /// revoked.
    Reused,
}

/// Trades a refresh token for a new pair (single use). Only a secret that was really
/// issued for the session and since rotated away counts as reuse and revokes the session
/// (after [`REFRESH_REUSE_GRACE`]); a secret the session never issued is a plain 401 that
/// changes nothing, since anyone can read a session id out of a JWT.
pub async fn refresh(ctx: &Ctx, refresh_token: &str) -> Result<(Me, Tokens)> {
    let (sid, presented) = credentials::parse_refresh_token(refresh_token)
        .ok_or(Error::Unauthenticated("malformed refresh token"))?;
    let presented_hash = credentials::hash_refresh_secret(presented);
    let new_secret = credentials::new_refresh_secret();
    let new_hash = credentials::hash_refresh_secret(&new_secret);
    let mut conn = ctx.db.conn().await?;
    let outcome = conn
        .transaction(async |conn| -> Result<_> {
            let Some((session, user)) = sessions::lock_live_with_user(conn, sid).await? else {
                return Ok(RefreshOutcome::Dead);
            };
            if constant_time_eq(&session.refresh_token_hash, &presented_hash) {
                sessions::rotate_refresh(
                    conn,
                    sid,
                    &presented_hash,
                    &new_hash,
                    Utc::now() + SESSION_TTL,
                )
                .await?;
                return Ok(RefreshOutcome::Rotated(user));
            }
            let Some(superseded_at) =
                sessions::find_superseded_at(conn, sid, &presented_hash).await?
            else {
                return Ok(RefreshOutcome::Unknown);
            };
            if Utc::now() - superseded_at
                < chrono::Duration::from_std(REFRESH_REUSE_GRACE).unwrap_or_default()
            {
                return Ok(RefreshOutcome::JustRotated);
            }
            sessions::revoke(conn, sid, "refresh_token_reuse").await?;
            crate::store::audit::insert(
                conn,
                &audit_row(
                    user.campus_id,
                    Some(user.id),
                    "session.reuse_revoked",
                    "session",
                    sid,
                ),
            )
            .await?;
            Ok(RefreshOutcome::Reused)
        })
        .await?;
    drop(conn);
    match outcome {
        RefreshOutcome::Rotated(user) => {
            let tokens = tokens_for(ctx, user.id, sid, &new_secret)?;
            Ok((me_from(&user, sid)?, tokens))
        }
        RefreshOutcome::Dead | RefreshOutcome::Unknown => {
            Err(Error::Unauthenticated("invalid or expired refresh token"))
        }
        RefreshOutcome::JustRotated => Err(Error::Unauthenticated(
            "refresh token already used by a concurrent refresh",
        )),
        RefreshOutcome::Reused => {
            // Best effort, as for evictions: Postgres already refuses the session.
            cache_revoke(ctx, &[sid]).await;
            Err(Error::Unauthenticated(
                "refresh token reuse: session revoked",
            ))
        }
    }
}

/// Compares two hex digests without an early exit (no timing hint about the stored hash).
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0_u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Revokes the caller's current session.
pub async fn logout(ctx: &Ctx, actor: &Actor) -> Result<()> {
    revoke_session(ctx, actor, actor.session_id).await
}

/// Revokes one of the caller's sessions (another user's session answers 404).
///
/// The tombstone goes to Redis BEFORE Postgres commits: if Redis is configured but
/// unreachable, the logout fails with 503 and changes nothing, instead of succeeding while
/// other instances keep a cached "live" entry for up to [`SESSION_CACHE_TTL`].
pub async fn revoke_session(ctx: &Ctx, actor: &Actor, session_id: SessionId) -> Result<()> {
    let sid = session_id.into_inner();
    let user_id = actor.user_id.into_inner();
    let mut conn = ctx.db.conn().await?;
    let owned = sessions::find_live_with_user(&mut conn, sid)
        .await?
        .is_some_and(|(s, _)| s.user_id == user_id);
    if !owned {
        return Err(DomainError::NotFound { what: "session" }.into());
    }
    if !cache_revoke(ctx, &[sid]).await {
        return Err(Error::Unavailable {
            retry_after: 1,
            reason: "session cache unreachable: not logged out, retry",
        });
    }
    conn.transaction(async |conn| -> Result<_> {
        if !sessions::revoke_for_user(conn, user_id, sid, "logout").await? {
            return Err(DomainError::NotFound { what: "session" }.into());
        }
        crate::store::audit::insert(
            conn,
            &audit_row(
                actor.campus_id.map(CampusId::into_inner),
                Some(user_id),
                "session.revoked",
                "session",
                sid,
            ),
        )
        .await?;
        Ok(())
    })
    .await
}

/// The caller's profile.
pub async fn me(ctx: &Ctx, actor: &Actor) -> Result<Me> {
    let mut conn = ctx.db.read_conn().await?;
    let user = users::get(&mut conn, actor.user_id.into_inner()).await?;
    me_from(&user, actor.session_id.into_inner())
}

/// The caller's live sessions, newest first.
pub async fn list_sessions(ctx: &Ctx, actor: &Actor) -> Result<Vec<SessionInfo>> {
    let mut conn = ctx.db.conn().await?;
    let rows = sessions::list_live_for_user(&mut conn, actor.user_id.into_inner()).await?;
    Ok(rows
        .into_iter()
        .map(|s| SessionInfo {
            id: SessionId::from(s.id),
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            expires_at: s.expires_at,
            user_agent: s.user_agent,
            current: s.id == actor.session_id.into_inner(),
        })
        .collect())
}
