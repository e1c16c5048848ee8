//! `devices` rows and queries (push tokens).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::devices;

/// A device row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = devices)]
pub struct DeviceRow {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Push platform.
    pub platform: String,
    /// Provider token.
    pub token: String,
    /// First registered.
    pub created_at: DateTime<Utc>,
    /// Last registered.
    pub last_seen_at: DateTime<Utc>,
}

/// A device to register.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = devices)]
pub struct NewDeviceRow {
    /// Id used when the token is new.
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Push platform.
    pub platform: String,
    /// Provider token.
    pub token: String,
}

/// Registers a token; the same (user, token) again refreshes `last_seen_at` and keeps its id.
pub async fn upsert(conn: &mut AsyncPgConnection, row: &NewDeviceRow) -> QueryResult<DeviceRow> {
    diesel::insert_into(devices::table)
        .values(row)
        .on_conflict((devices::user_id, devices::token))
        .do_update()
        .set((
            devices::last_seen_at.eq(diesel::dsl::now),
            devices::platform.eq(&row.platform),
        ))
        .returning(DeviceRow::as_returning())
        .get_result(conn)
        .await
}

/// Deletes a device of `user_id`; false when it has none with that id.
pub async fn delete_for_user(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
) -> QueryResult<bool> {
    let n = diesel::delete(devices::table.find(id).filter(devices::user_id.eq(user_id)))
        .execute(conn)
        .await?;
    Ok(n > 0)
}

/// A user's devices, oldest first.
pub async fn list_for_user(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
) -> QueryResult<Vec<DeviceRow>> {
    devices::table
        .filter(devices::user_id.eq(user_id))
        .order(devices::created_at.asc())
        .select(DeviceRow::as_select())
        .load(conn)
        .await
}

/// Forgets a token the provider declared dead.
pub async fn delete_by_token(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    token: &str,
) -> QueryResult<bool> {
    let n = diesel::delete(
        devices::table
            .filter(devices::user_id.eq(user_id))
            .filter(devices::token.eq(token)),
    )
    .execute(conn)
    .await?;
    Ok(n > 0)
}
