//! `audit_log`: who did what, written in the same transaction as the change.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::audit_log;

/// An audit row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = audit_log)]
pub struct AuditRow {
    /// Id.
    pub id: i64,
    /// Campus.
    pub campus_id: Option<Uuid>,
    /// Who.
    pub actor_id: Option<Uuid>,
    /// What (`order.placed`, …).
    pub action: String,
    /// Kind of target.
    pub target_type: String,
    /// Target id.
    pub target_id: String,
    /// Detail (never secrets).
    pub detail: serde_json::Value,
    /// Request id.
    pub request_id: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A new audit row.
#[derive(Debug, Clone, Insertable)]
// None binds NULL (these columns default to NULL anyway) rather than DEFAULT, which
// keeps the INSERT the same statement every time: diesel prepares it once per connection.
#[diesel(table_name = audit_log, treat_none_as_default_value = false)]
pub struct NewAuditRow {
    /// Campus.
    pub campus_id: Option<Uuid>,
    /// Who.
    pub actor_id: Option<Uuid>,
    /// What.
    pub action: String,
    /// Kind of target.
    pub target_type: String,
    /// Target id.
    pub target_id: String,
    /// Detail.
    pub detail: serde_json::Value,
    /// Request id.
    pub request_id: Option<String>,
}

/// Filters of [`list`].
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Campus scope (None = all).
    pub campus_id: Option<Uuid>,
    /// Actor.
    pub actor_id: Option<Uuid>,
    /// Action.
    pub action: Option<String>,
    /// Not before.
    pub from: Option<DateTime<Utc>>,
    /// Before.
    pub to: Option<DateTime<Utc>>,
}

/// Writes an audit row in the caller's transaction.
pub async fn insert(conn: &mut AsyncPgConnection, row: &NewAuditRow) -> QueryResult<()> {
    diesel::insert_into(audit_log::table)
        .values(row)
        .execute(conn)
        .await
        .map(drop)
}

fn filtered(q: &AuditQuery) -> audit_log::BoxedQuery<'_, diesel::pg::Pg> {
    let mut b = audit_log::table.into_boxed();
    if let Some(c) = q.campus_id {
        b = b.filter(audit_log::campus_id.eq(c));
    }
    if let Some(a) = q.actor_id {
        b = b.filter(audit_log::actor_id.eq(a));
    }
    if let Some(a) = &q.action {
        b = b.filter(audit_log::action.eq(a));
    }
    if let Some(f) = q.from {
        b = b.filter(audit_log::created_at.ge(f));
    }
    if let Some(t) = q.to {
        b = b.filter(audit_log::created_at.lt(t));
    }
    b
}

/// A page of entries, newest first, with the total count.
pub async fn list(
    conn: &mut AsyncPgConnection,
    q: &AuditQuery,
    limit: i64,
    offset: i64,
) -> QueryResult<(Vec<AuditRow>, i64)> {
    let rows = filtered(q)
        .order(audit_log::id.desc())
        .limit(limit)
        .offset(offset)
        .select(AuditRow::as_select())
        .load(conn)
        .await?;
    let total = filtered(q).count().get_result(conn).await?;
    Ok((rows, total))
}
