//! `menu_items` rows and queries, including the row locks and stock changes of ordering.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::menu_items;
use crate::domain::{MenuItemId, VendorId};

/// A menu item row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = menu_items)]
pub struct MenuItemRow {
    /// Id.
    pub id: MenuItemId,
    /// Vendor.
    pub vendor_id: VendorId,
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Price in cents.
    pub price_cents: i64,
    /// Units left.
    pub stock: i32,
    /// Orderable.
    pub available: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
}

/// A new menu item.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = menu_items)]
pub struct NewMenuItemRow {
    /// Id.
    pub id: MenuItemId,
    /// Vendor.
    pub vendor_id: VendorId,
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Price in cents.
    pub price_cents: i64,
    /// Units in stock.
    pub stock: i32,
    /// Orderable.
    pub available: bool,
}

/// Changes to a menu item; None leaves a column as it is.
#[derive(Debug, Clone, Default, AsChangeset)]
#[diesel(table_name = menu_items)]
pub struct MenuItemChanges {
    /// New name.
    pub name: Option<String>,
    /// New description (Some(None) clears it).
    pub description: Option<Option<String>>,
    /// New price.
    pub price_cents: Option<i64>,
    /// New stock.
    pub stock: Option<i32>,
    /// New availability.
    pub available: Option<bool>,
}

/// Inserts a menu item.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    row: &NewMenuItemRow,
) -> QueryResult<MenuItemRow> {
    diesel::insert_into(menu_items::table)
        .values(row)
        .returning(MenuItemRow::as_returning())
        .get_result(conn)
        .await
}

/// A menu item by id.
pub async fn find(
    conn: &mut AsyncPgConnection,
    id: MenuItemId,
) -> QueryResult<Option<MenuItemRow>> {
    menu_items::table
        .find(id)
        .select(MenuItemRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A vendor's menu, by name.
pub async fn list_by_vendor(
    conn: &mut AsyncPgConnection,
    vendor_id: VendorId,
) -> QueryResult<Vec<MenuItemRow>> {
    menu_items::table
        .filter(menu_items::vendor_id.eq(vendor_id))
        .order((menu_items::name.asc(), menu_items::id.asc()))
        .select(MenuItemRow::as_select())
        .load(conn)
        .await
}

/// Applies changes (an empty change set just returns the row).
pub async fn update(
    conn: &mut AsyncPgConnection,
    id: MenuItemId,
    changes: &MenuItemChanges,
) -> QueryResult<MenuItemRow> {
    let empty = changes.name.is_none()
        && changes.description.is_none()
        && changes.price_cents.is_none()
        && changes.stock.is_none()
        && changes.available.is_none();
    if empty {
        return menu_items::table
            .find(id)
            .select(MenuItemRow::as_select())
            .first(conn)
            .await;
    }
    diesel::update(menu_items::table.find(id))
        .set(changes)
        .returning(MenuItemRow::as_returning())
        .get_result(conn)
        .await
}

/// Locks the vendor's items among `ids` (`FOR UPDATE`), always in id order so two orders
/// touching the same items never deadlock. Items of other vendors are not returned.
pub async fn lock_for_order(
    conn: &mut AsyncPgConnection,
    vendor_id: VendorId,
    ids: &[MenuItemId],
) -> QueryResult<Vec<MenuItemRow>> {
    // Plain uuids: `eq_any` binds them as one array (`= ANY($2)`), one prepared statement.
    let ids: Vec<Uuid> = ids.iter().map(|id| id.into_inner()).collect();
    menu_items::table
        .filter(menu_items::vendor_id.eq(vendor_id))
        .filter(menu_items::id.eq_any(ids))
        .order(menu_items::id.asc())
        .select(MenuItemRow::as_select())
        .for_update()
        .load(conn)
        .await
}

/// Changes the stock of several items in ONE statement (an order's lines; one round trip
/// instead of one per line): `changes` are (item, delta), negative to take units, positive to
/// give them back (cancellation). Repeated ids add up. The `stock >= 0` CHECK makes
/// overselling impossible even if a caller forgot to lock.
pub async fn change_stock(
    conn: &mut AsyncPgConnection,
    changes: &[(MenuItemId, i32)],
) -> QueryResult<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let (ids, deltas): (Vec<Uuid>, Vec<i32>) = changes
        .iter()
        .map(|&(id, delta)| (id.into_inner(), delta))
        .unzip();
    ChangeStock { ids, deltas }.execute(conn).await.map(drop)
}

/// The statement of [`change_stock`]. Hand-written SQL through `sql_query` is never kept
/// prepared by diesel (two round trips each time: prepare, then execute); a fixed query
/// type with a static id is prepared once per connection.
#[derive(diesel::query_builder::QueryId)]
struct ChangeStock {
    ids: Vec<Uuid>,
    deltas: Vec<i32>,
}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for ChangeStock {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> QueryResult<()> {
        use diesel::sql_types::{Array, Integer, Uuid as SqlUuid};
        out.push_sql(
            "UPDATE menu_items SET stock = stock + d.delta \
             FROM (SELECT id, sum(delta)::int4 AS delta FROM unnest(",
        );
        out.push_bind_param::<Array<SqlUuid>, _>(&self.ids)?;
        out.push_sql("::uuid[], ");
        out.push_bind_param::<Array<Integer>, _>(&self.deltas)?;
        out.push_sql(
            "::int4[]) AS c(id, delta) GROUP BY id) AS d \
             WHERE menu_items.id = d.id",
        );
        Ok(())
    }
}
