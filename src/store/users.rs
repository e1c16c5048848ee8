//! `users` rows and queries.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::users;

/// A user row. `password_hash` never leaves the service layer.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct UserRow {
    /// Id.
    pub id: Uuid,
    /// Campus (None for platform admins).
    pub campus_id: Option<Uuid>,
    /// Vendor (vendor staff).
    pub vendor_id: Option<Uuid>,
    /// Lowercase e-mail.
    pub email: String,
    /// Display name.
    pub display_name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Role name (`domain::Role::as_str`).
    pub role: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
}

/// A new user.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = users)]
pub struct NewUserRow {
    /// Id.
    pub id: Uuid,
    /// Campus.
    pub campus_id: Option<Uuid>,
    /// Vendor.
    pub vendor_id: Option<Uuid>,
    /// Lowercase e-mail.
    pub email: String,
    /// Display name.
    pub display_name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Role name.
    pub role: String,
}

/// Inserts a user.
pub async fn insert(conn: &mut AsyncPgConnection, row: &NewUserRow) -> QueryResult<UserRow> {
    diesel::insert_into(users::table)
        .values(row)
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await
}

/// A user by id (NotFound is an error).
pub async fn get(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<UserRow> {
    users::table
        .find(id)
        .select(UserRow::as_select())
        .first(conn)
        .await
}

/// A user by lowercase e-mail.
pub async fn find_by_email(
    conn: &mut AsyncPgConnection,
    email: &str,
) -> QueryResult<Option<UserRow>> {
    users::table
        .filter(users::email.eq(email))
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Inserts users whose e-mail is not taken; returns the e-mails actually inserted.
pub async fn insert_many_new(
    conn: &mut AsyncPgConnection,
    rows: &[NewUserRow],
) -> QueryResult<Vec<String>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    diesel::insert_into(users::table)
        .values(rows)
        .on_conflict(users::email)
        .do_nothing()
        .returning(users::email)
        .get_results(conn)
        .await
}

/// Which of `emails` already have an account.
pub async fn existing_emails(
    conn: &mut AsyncPgConnection,
    emails: &[String],
) -> QueryResult<Vec<String>> {
    users::table
        .filter(users::email.eq_any(emails))
        .select(users::email)
        .load(conn)
        .await
}
