//! `idempotency_keys`: the first response to a (user, key) pair, replayed for 24 h.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::idempotency_keys as ik;

/// A stored key.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = ik)]
pub struct IdempotencyRow {
    /// Owner.
    pub user_id: Uuid,
    /// The client's key.
    pub key: String,
    /// Hash of the request it was first used with.
    pub request_hash: String,
    /// Status of the stored response (None while in progress).
    pub status_code: Option<i32>,
    /// The stored response body.
    pub response_body: Option<serde_json::Value>,
    /// First use.
    pub created_at: DateTime<Utc>,
    /// Replays stop after this.
    pub expires_at: DateTime<Utc>,
}

/// Deletes the key if it has expired, so it can be used afresh.
pub async fn delete_expired_key(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    key: &str,
) -> QueryResult<()> {
    diesel::delete(
        ik::table
            .filter(ik::user_id.eq(user_id))
            .filter(ik::key.eq(key))
            .filter(ik::expires_at.le(diesel::dsl::now)),
    )
    .execute(conn)
    .await
    .map(drop)
}

/// Claims the key for this request; false when it exists (a concurrent claimer's
/// uncommitted row makes this wait until that transaction ends).
pub async fn insert_pending(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    key: &str,
    request_hash: &str,
    expires_at: DateTime<Utc>,
) -> QueryResult<bool> {
    let n = diesel::insert_into(ik::table)
        .values((
            ik::user_id.eq(user_id),
            ik::key.eq(key),
            ik::request_hash.eq(request_hash),
            ik::expires_at.eq(expires_at),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// The stored key.
pub async fn find(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    key: &str,
) -> QueryResult<Option<IdempotencyRow>> {
    ik::table
        .filter(ik::user_id.eq(user_id))
        .filter(ik::key.eq(key))
        .select(IdempotencyRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Stores the response to replay.
pub async fn complete(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    key: &str,
    status_code: i32,
    body: &serde_json::Value,
) -> QueryResult<()> {
    diesel::update(
        ik::table
            .filter(ik::user_id.eq(user_id))
            .filter(ik::key.eq(key)),
    )
    .set((ik::status_code.eq(status_code), ik::response_body.eq(body)))
    .execute(conn)
    .await
    .map(drop)
}

/// Deletes up to `batch` expired keys.
pub async fn delete_expired(conn: &mut AsyncPgConnection, batch: i64) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM idempotency_keys WHERE (user_id, key) IN (SELECT user_id, key \
         FROM idempotency_keys WHERE expires_at <= now() LIMIT $1)",
    )
    .bind::<diesel::sql_types::BigInt, _>(batch)
    .execute(conn)
    .await
}
