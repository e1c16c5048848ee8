//! `outbox_events`: events written in the same transaction as the change they describe.
//! The relay (issue #5) claims and publishes them.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::outbox_events;

/// An outbox event row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = outbox_events)]
pub struct OutboxEventRow {
    /// Monotonic id (also the WebSocket event id).
    pub id: i64,
    /// `order`, …
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: Uuid,
    /// The aggregate's version after the change.
    pub aggregate_version: i32,
    /// `order.created`, …
    pub event_type: String,
    /// Event body.
    pub payload: serde_json::Value,
    /// Routing: campus.
    pub campus_id: Option<Uuid>,
    /// Routing: vendor.
    pub vendor_id: Option<Uuid>,
    /// Routing: user.
    pub user_id: Option<Uuid>,
    /// Written.
    pub created_at: DateTime<Utc>,
    /// Published (None until then).
    pub published_at: Option<DateTime<Utc>>,
    /// Delivery attempts.
    pub attempts: i32,
    /// Not before.
    pub next_attempt_at: DateTime<Utc>,
    /// Last failure.
    pub last_error: Option<String>,
    /// Given up.
    pub dead_at: Option<DateTime<Utc>>,
}

/// A new event.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = outbox_events)]
pub struct NewOutboxEventRow {
    /// `order`, …
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: Uuid,
    /// The aggregate's version after the change.
    pub aggregate_version: i32,
    /// `order.created`, …
    pub event_type: String,
    /// Event body.
    pub payload: serde_json::Value,
    /// Routing: campus.
    pub campus_id: Option<Uuid>,
    /// Routing: vendor.
    pub vendor_id: Option<Uuid>,
    /// Routing: user.
    pub user_id: Option<Uuid>,
}

/// Writes an event in the caller's transaction.
pub async fn insert_event(
    conn: &mut AsyncPgConnection,
    row: &NewOutboxEventRow,
) -> QueryResult<i64> {
    diesel::insert_into(outbox_events::table)
        .values(row)
        .returning(outbox_events::id)
        .get_result(conn)
        .await
}

/// Events of one aggregate, oldest first.
pub async fn list_for_aggregate(
    conn: &mut AsyncPgConnection,
    aggregate_type: &str,
    aggregate_id: Uuid,
) -> QueryResult<Vec<OutboxEventRow>> {
    outbox_events::table
        .filter(outbox_events::aggregate_type.eq(aggregate_type))
        .filter(outbox_events::aggregate_id.eq(aggregate_id))
        .order(outbox_events::id.asc())
        .select(OutboxEventRow::as_select())
        .load(conn)
        .await
}

/// Deletes up to `batch` events published before `before` (the resume window has passed).
pub async fn delete_published_before(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    batch: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM outbox_events WHERE id IN (SELECT id FROM outbox_events \
         WHERE published_at < $1 LIMIT $2)",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(before)
    .bind::<diesel::sql_types::BigInt, _>(batch)
    .execute(conn)
    .await
}
