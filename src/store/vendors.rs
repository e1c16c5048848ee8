//! `vendors` rows and queries.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::vendors;
use crate::domain::{CampusId, VendorId};

/// A vendor row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = vendors)]
pub struct VendorRow {
    /// Id.
    pub id: VendorId,
    /// Campus.
    pub campus_id: CampusId,
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Taking orders.
    pub is_open: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
}

/// A new vendor.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = vendors)]
pub struct NewVendorRow {
    /// Id.
    pub id: VendorId,
    /// Campus.
    pub campus_id: CampusId,
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Taking orders.
    pub is_open: bool,
}

/// Inserts a vendor.
pub async fn insert(conn: &mut AsyncPgConnection, row: &NewVendorRow) -> QueryResult<VendorRow> {
    diesel::insert_into(vendors::table)
        .values(row)
        .returning(VendorRow::as_returning())
        .get_result(conn)
        .await
}

/// A vendor by id.
pub async fn find(conn: &mut AsyncPgConnection, id: VendorId) -> QueryResult<Option<VendorRow>> {
    vendors::table
        .find(id)
        .select(VendorRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A campus's vendors, by name.
pub async fn list_by_campus(
    conn: &mut AsyncPgConnection,
    campus_id: CampusId,
) -> QueryResult<Vec<VendorRow>> {
    vendors::table
        .filter(vendors::campus_id.eq(campus_id))
        .order(vendors::name.asc())
        .select(VendorRow::as_select())
        .load(conn)
        .await
}

/// Opens or closes a vendor; the updated row, or `None` when it does not exist.
pub async fn set_open(
    conn: &mut AsyncPgConnection,
    id: VendorId,
    is_open: bool,
) -> QueryResult<Option<VendorRow>> {
    diesel::update(vendors::table.find(id))
        .set((
            vendors::is_open.eq(is_open),
            vendors::updated_at.eq(diesel::dsl::now),
        ))
        .returning(VendorRow::as_returning())
        .get_result(conn)
        .await
        .optional()
}
