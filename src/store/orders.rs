//! `orders` and `order_items` rows and queries.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::{order_items, orders};
use crate::domain::{CampusId, MenuItemId, OrderId, OrderStatus, UserId, VendorId};

/// An order row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = orders)]
pub struct OrderRow {
    /// Id.
    pub id: OrderId,
    /// Campus.
    pub campus_id: CampusId,
    /// Vendor.
    pub vendor_id: VendorId,
    /// Student.
    pub user_id: UserId,
    /// Status (stored as its `as_str` name; an unknown name fails the query).
    pub status: OrderStatus,
    /// Total in cents.
    pub total_cents: i64,
    /// Note.
    pub note: Option<String>,
    /// Optimistic-concurrency version.
    pub version: i32,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
}

/// A new order.
#[derive(Debug, Clone, Insertable)]
// None binds NULL (these columns default to NULL anyway) rather than DEFAULT, which
// keeps the INSERT the same statement every time: diesel prepares it once per connection.
#[diesel(table_name = orders, treat_none_as_default_value = false)]
pub struct NewOrderRow {
    /// Id.
    pub id: OrderId,
    /// Campus.
    pub campus_id: CampusId,
    /// Vendor.
    pub vendor_id: VendorId,
    /// Student.
    pub user_id: UserId,
    /// Status.
    pub status: OrderStatus,
    /// Total in cents.
    pub total_cents: i64,
    /// Note.
    pub note: Option<String>,
    /// 1.
    pub version: i32,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
}

/// An order line row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = order_items)]
pub struct OrderItemRow {
    /// Order.
    pub order_id: OrderId,
    /// Menu item.
    pub menu_item_id: MenuItemId,
    /// Name snapshot.
    pub name: String,
    /// Unit price snapshot.
    pub unit_price_cents: i64,
    /// Quantity.
    pub quantity: i32,
}

/// A new order line.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = order_items)]
pub struct NewOrderItemRow {
    /// Order.
    pub order_id: OrderId,
    /// Menu item.
    pub menu_item_id: MenuItemId,
    /// Name snapshot.
    pub name: String,
    /// Unit price snapshot.
    pub unit_price_cents: i64,
    /// Quantity.
    pub quantity: i32,
}

/// Which orders a list covers.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    /// One student's.
    User(UserId),
    /// One vendor's board.
    Vendor(VendorId),
    /// One campus's.
    Campus(CampusId),
    /// Everything (platform admin).
    All,
}

/// Inserts an order and its lines.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    order: &NewOrderRow,
    items: &[NewOrderItemRow],
) -> QueryResult<(OrderRow, Vec<OrderItemRow>)> {
    let row = diesel::insert_into(orders::table)
        .values(order)
        .returning(OrderRow::as_returning())
        .get_result(conn)
        .await?;
    let mut lines: Vec<OrderItemRow> = InsertLines {
        order_id: row.id.into_inner(),
        item_ids: items.iter().map(|i| i.menu_item_id.into_inner()).collect(),
        names: items.iter().map(|i| i.name.clone()).collect(),
        prices: items.iter().map(|i| i.unit_price_cents).collect(),
        quantities: items.iter().map(|i| i.quantity).collect(),
    }
    .load(conn)
    .await?;
    // Sorted like `items_for_order`.
    lines.sort_by_key(|l| l.menu_item_id);
    Ok((row, lines))
}

/// An order's lines in one INSERT over `unnest`, returning them (no read back). A fixed
/// query type: diesel keeps it prepared per connection, where a multi-row `insert_into` is
/// prepared anew each time (a second round trip).
#[derive(diesel::query_builder::QueryId)]
struct InsertLines {
    order_id: Uuid,
    item_ids: Vec<Uuid>,
    names: Vec<String>,
    prices: Vec<i64>,
    quantities: Vec<i32>,
}

impl diesel::query_builder::Query for InsertLines {
    type SqlType = (
        diesel::sql_types::Uuid,
        diesel::sql_types::Uuid,
        diesel::sql_types::Text,
        diesel::sql_types::BigInt,
        diesel::sql_types::Integer,
    );
}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for InsertLines {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> QueryResult<()> {
        use diesel::sql_types::{Array, BigInt, Integer, Text, Uuid as SqlUuid};
        out.push_sql(
            "INSERT INTO order_items (order_id, menu_item_id, name, unit_price_cents, quantity) \
             SELECT ",
        );
        out.push_bind_param::<SqlUuid, _>(&self.order_id)?;
        out.push_sql(", l.* FROM unnest(");
        out.push_bind_param::<Array<SqlUuid>, _>(&self.item_ids)?;
        out.push_sql("::uuid[], ");
        out.push_bind_param::<Array<Text>, _>(&self.names)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<BigInt>, _>(&self.prices)?;
        out.push_sql("::int8[], ");
        out.push_bind_param::<Array<Integer>, _>(&self.quantities)?;
        out.push_sql(
            "::int4[]) AS l \
             RETURNING order_id, menu_item_id, name, unit_price_cents, quantity",
        );
        Ok(())
    }
}

/// An order by id.
pub async fn find(conn: &mut AsyncPgConnection, id: OrderId) -> QueryResult<Option<OrderRow>> {
    orders::table
        .find(id)
        .select(OrderRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// An order by id, locked (`FOR UPDATE`) for a transition.
pub async fn lock(conn: &mut AsyncPgConnection, id: OrderId) -> QueryResult<Option<OrderRow>> {
    orders::table
        .find(id)
        .select(OrderRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Sets the status and bumps the version, only if the version is still `expected_version`.
pub async fn update_status(
    conn: &mut AsyncPgConnection,
    id: OrderId,
    expected_version: i32,
    status: OrderStatus,
) -> QueryResult<Option<OrderRow>> {
    diesel::update(
        orders::table
            .find(id)
            .filter(orders::version.eq(expected_version)),
    )
    .set((
        orders::status.eq(status),
        orders::version.eq(orders::version + 1),
        orders::updated_at.eq(diesel::dsl::now),
    ))
    .returning(OrderRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// The lines of an order, in menu-item id order (the lock order of cancellations).
pub async fn items_for_order(
    conn: &mut AsyncPgConnection,
    order_id: OrderId,
) -> QueryResult<Vec<OrderItemRow>> {
    order_items::table
        .filter(order_items::order_id.eq(order_id))
        .order(order_items::menu_item_id.asc())
        .select(OrderItemRow::as_select())
        .load(conn)
        .await
}

/// The lines of several orders, grouped by order.
pub async fn items_for_orders(
    conn: &mut AsyncPgConnection,
    order_ids: &[OrderId],
) -> QueryResult<HashMap<OrderId, Vec<OrderItemRow>>> {
    if order_ids.is_empty() {
        return Ok(HashMap::new());
    }
    // Plain uuids: `eq_any` binds them as one array (`= ANY($1)`).
    let order_ids: Vec<Uuid> = order_ids.iter().map(|id| id.into_inner()).collect();
    let rows: Vec<OrderItemRow> = order_items::table
        .filter(order_items::order_id.eq_any(order_ids))
        .order((order_items::order_id, order_items::menu_item_id))
        .select(OrderItemRow::as_select())
        .load(conn)
        .await?;
    let mut out: HashMap<OrderId, Vec<OrderItemRow>> = HashMap::new();
    for r in rows {
        out.entry(r.order_id).or_default().push(r);
    }
    Ok(out)
}

fn scoped(
    scope: Scope,
    status: Option<OrderStatus>,
) -> orders::BoxedQuery<'static, diesel::pg::Pg> {
    let mut q = orders::table.into_boxed();
    q = match scope {
        Scope::User(id) => q.filter(orders::user_id.eq(id)),
        Scope::Vendor(id) => q.filter(orders::vendor_id.eq(id)),
        Scope::Campus(id) => q.filter(orders::campus_id.eq(id)),
        Scope::All => q,
    };
    if let Some(s) = status {
        q = q.filter(orders::status.eq(s));
    }
    q
}

/// A page of orders in scope, newest first, with the total count.
pub async fn list(
    conn: &mut AsyncPgConnection,
    scope: &Scope,
    status: Option<OrderStatus>,
    limit: i64,
    offset: i64,
) -> QueryResult<(Vec<OrderRow>, i64)> {
    let rows = scoped(*scope, status)
        .order((orders::created_at.desc(), orders::id.desc()))
        .limit(limit)
        .offset(offset)
        .select(OrderRow::as_select())
        .load(conn)
        .await?;
    let total = scoped(*scope, status).count().get_result(conn).await?;
    Ok((rows, total))
}

/// One (day, item) cell of a sales report.
#[derive(Debug, Clone, QueryableByName)]
pub struct SalesRow {
    /// UTC day.
    #[diesel(sql_type = diesel::sql_types::Date)]
    pub day: chrono::NaiveDate,
    /// Menu item.
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub menu_item_id: Uuid,
    /// Item name as ordered.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub name: String,
    /// Units sold.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub quantity: i64,
    /// Revenue in cents.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub revenue_cents: i64,
    /// Orders containing the item.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub orders: i64,
}

/// Sales of a vendor in `[from, to)` (cancelled orders excluded), by UTC day and item.
pub async fn sales_by_day_item(
    conn: &mut AsyncPgConnection,
    vendor_id: VendorId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> QueryResult<Vec<SalesRow>> {
    use diesel::sql_types::{Timestamptz, Uuid as SqlUuid};
    diesel::sql_query(
        // The day is the campus's local day (its `time_zone`): an evening sale of a UTC-6
        // campus belongs to that evening, not to the next UTC day.
        "SELECT (o.created_at AT TIME ZONE c.time_zone)::date AS day, oi.menu_item_id, \
                min(oi.name) AS name, sum(oi.quantity)::bigint AS quantity, \
                sum(oi.quantity::bigint * oi.unit_price_cents)::bigint AS revenue_cents, \
                count(DISTINCT o.id)::bigint AS orders \
         FROM orders o JOIN order_items oi ON oi.order_id = o.id \
         JOIN campuses c ON c.id = o.campus_id \
         WHERE o.vendor_id = $1 AND o.created_at >= $2 AND o.created_at < $3 \
           AND o.status <> 'cancelled' \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind::<SqlUuid, _>(vendor_id.into_inner())
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .load(conn)
    .await
}
