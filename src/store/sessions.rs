//! `sessions` rows and queries: the source of truth for whether a token still works.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::{refresh_token_history, sessions, users};
use super::users::UserRow;

/// A session row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = sessions)]
pub struct SessionRow {
    /// Id (carried in the access token's `sid`).
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Hex SHA-256 of the current refresh secret.
    pub refresh_token_hash: String,
    /// Rotations so far.
    pub refresh_generation: i32,
    /// Opened.
    pub created_at: DateTime<Utc>,
    /// Last login or refresh.
    pub last_used_at: DateTime<Utc>,
    /// Expiry unless refreshed.
    pub expires_at: DateTime<Utc>,
    /// Set once revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why it was revoked.
    pub revoked_reason: Option<String>,
    /// User agent at login.
    pub user_agent: Option<String>,
}

/// A new session.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = sessions)]
pub struct NewSessionRow {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Hex SHA-256 of the first refresh secret.
    pub refresh_token_hash: String,
    /// 0.
    pub refresh_generation: i32,
    /// Now.
    pub created_at: DateTime<Utc>,
    /// Now.
    pub last_used_at: DateTime<Utc>,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// User agent.
    pub user_agent: Option<String>,
}

/// Inserts a session.
pub async fn insert(conn: &mut AsyncPgConnection, row: &NewSessionRow) -> QueryResult<SessionRow> {
    diesel::insert_into(sessions::table)
        .values(row)
        .returning(SessionRow::as_returning())
        .get_result(conn)
        .await
}

/// A live (not revoked, not expired) session with its user.
pub async fn find_live_with_user(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<(SessionRow, UserRow)>> {
    sessions::table
        .inner_join(users::table)
        .filter(sessions::id.eq(id))
        .filter(sessions::revoked_at.is_null())
        .filter(sessions::expires_at.gt(diesel::dsl::now))
        .select((SessionRow::as_select(), UserRow::as_select()))
        .first(conn)
        .await
        .optional()
}

/// Same as [`find_live_with_user`], locking the rows (`FOR UPDATE`) so two refreshes of one
/// session serialise.
pub async fn lock_live_with_user(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<(SessionRow, UserRow)>> {
    sessions::table
        .inner_join(users::table)
        .filter(sessions::id.eq(id))
        .filter(sessions::revoked_at.is_null())
        .filter(sessions::expires_at.gt(diesel::dsl::now))
        .select((SessionRow::as_select(), UserRow::as_select()))
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Rotates the refresh secret and extends the session, remembering the superseded secret's
/// hash in `refresh_token_history` (what tells a replayed secret from a made-up one).
pub async fn rotate_refresh(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    old_hash: &str,
    new_hash: &str,
    expires_at: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::insert_into(refresh_token_history::table)
        .values((
            refresh_token_history::token_hash.eq(old_hash),
            refresh_token_history::session_id.eq(id),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    diesel::update(sessions::table.find(id))
        .set((
            sessions::refresh_token_hash.eq(new_hash),
            sessions::refresh_generation.eq(sessions::refresh_generation + 1),
            sessions::last_used_at.eq(diesel::dsl::now),
            sessions::expires_at.eq(expires_at),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// When the secret with this hash was rotated away from in session `id` (None: it was
/// never issued for that session).
pub async fn find_superseded_at(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    token_hash: &str,
) -> QueryResult<Option<DateTime<Utc>>> {
    refresh_token_history::table
        .filter(refresh_token_history::token_hash.eq(token_hash))
        .filter(refresh_token_history::session_id.eq(id))
        .select(refresh_token_history::superseded_at)
        .first(conn)
        .await
        .optional()
}

/// Revokes a session (no-op when already revoked).
pub async fn revoke(conn: &mut AsyncPgConnection, id: Uuid, reason: &str) -> QueryResult<()> {
    diesel::update(
        sessions::table
            .find(id)
            .filter(sessions::revoked_at.is_null()),
    )
    .set((
        sessions::revoked_at.eq(diesel::dsl::now),
        sessions::revoked_reason.eq(reason),
    ))
    .execute(conn)
    .await
    .map(drop)
}

/// Revokes a live session of `user_id`; false when there is none with that id.
pub async fn revoke_for_user(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
    reason: &str,
) -> QueryResult<bool> {
    let n = diesel::update(
        sessions::table
            .find(id)
            .filter(sessions::user_id.eq(user_id))
            .filter(sessions::revoked_at.is_null()),
    )
    .set((
        sessions::revoked_at.eq(diesel::dsl::now),
        sessions::revoked_reason.eq(reason),
    ))
    .execute(conn)
    .await?;
    Ok(n > 0)
}

/// A user's live sessions, newest first.
pub async fn list_live_for_user(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
) -> QueryResult<Vec<SessionRow>> {
    sessions::table
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::revoked_at.is_null())
        .filter(sessions::expires_at.gt(diesel::dsl::now))
        .order(sessions::created_at.desc())
        .select(SessionRow::as_select())
        .load(conn)
        .await
}

/// Revokes the user's oldest live sessions beyond the newest `keep`; returns their ids.
/// Expired sessions neither count towards `keep` nor get revoked: they no longer work anyway,
/// and counting them would evict a live session to make room next to a dead one.
pub async fn revoke_oldest_beyond(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    keep: i64,
) -> QueryResult<Vec<Uuid>> {
    let keep_ids: Vec<Uuid> = sessions::table
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::revoked_at.is_null())
        .filter(sessions::expires_at.gt(diesel::dsl::now))
        .order((sessions::created_at.desc(), sessions::id.desc()))
        .limit(keep)
        .select(sessions::id)
        .load(conn)
        .await?;
    diesel::update(
        sessions::table
            .filter(sessions::user_id.eq(user_id))
            .filter(sessions::revoked_at.is_null())
            .filter(sessions::expires_at.gt(diesel::dsl::now))
            .filter(sessions::id.ne_all(keep_ids)),
    )
    .set((
        sessions::revoked_at.eq(diesel::dsl::now),
        sessions::revoked_reason.eq("session_limit"),
    ))
    .returning(sessions::id)
    .get_results(conn)
    .await
}

/// Deletes up to `batch` sessions that expired or were revoked before `before`.
pub async fn delete_ended_before(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    batch: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions \
         WHERE expires_at < $1 OR revoked_at < $1 LIMIT $2)",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(before)
    .bind::<diesel::sql_types::BigInt, _>(batch)
    .execute(conn)
    .await
}
