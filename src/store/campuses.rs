//! `campuses` rows and queries.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::campuses;

/// A campus row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = campuses)]
pub struct CampusRow {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Unique URL name.
    pub slug: String,
    /// E-mail domains whose owners register here.
    pub email_domains: Vec<String>,
    /// IANA time zone.
    pub time_zone: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
}

/// A new campus.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = campuses)]
pub struct NewCampusRow {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Unique URL name.
    pub slug: String,
    /// Lowercase e-mail domains.
    pub email_domains: Vec<String>,
    /// IANA time zone.
    pub time_zone: String,
}

/// Inserts a campus.
pub async fn insert(conn: &mut AsyncPgConnection, row: &NewCampusRow) -> QueryResult<CampusRow> {
    diesel::insert_into(campuses::table)
        .values(row)
        .returning(CampusRow::as_returning())
        .get_result(conn)
        .await
}

/// Every campus, by name.
pub async fn list(conn: &mut AsyncPgConnection) -> QueryResult<Vec<CampusRow>> {
    campuses::table
        .order(campuses::name.asc())
        .select(CampusRow::as_select())
        .load(conn)
        .await
}

/// A campus by id.
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<CampusRow>> {
    campuses::table
        .find(id)
        .select(CampusRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A campus by slug.
pub async fn find_by_slug(
    conn: &mut AsyncPgConnection,
    slug: &str,
) -> QueryResult<Option<CampusRow>> {
    campuses::table
        .filter(campuses::slug.eq(slug))
        .select(CampusRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The campus accepting e-mail addresses at `domain` (lowercase).
pub async fn find_by_email_domain(
    conn: &mut AsyncPgConnection,
    domain: &str,
) -> QueryResult<Option<CampusRow>> {
    use diesel::dsl::sql;
    use diesel::sql_types::{Array, Bool, Text};
    campuses::table
        .filter(sql::<Bool>("email_domains @> ").bind::<Array<Text>, _>(vec![domain.to_owned()]))
        .order(campuses::created_at.asc())
        .select(CampusRow::as_select())
        .first(conn)
        .await
        .optional()
}
