//! Catalog: campuses (public list), a campus's vendors and a vendor's menu (visible to the
//! campus's users), and menu-item writes by the vendor's staff or the campus admin.

use uuid::Uuid;

use super::Result;
use crate::app::Ctx;
use crate::domain::{self, Actor, DomainError, MenuItemId, VendorId, access};
use crate::store::{audit, campuses, menu_items, vendors};

use crate::store::campuses::CampusRow;

/// A campus as the use cases answer it (store rows stay below `service`).
#[derive(Debug, Clone)]
pub struct Campus {
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
}

impl From<CampusRow> for Campus {
    fn from(c: CampusRow) -> Self {
        Self {
            id: c.id,
            name: c.name,
            slug: c.slug,
            email_domains: c.email_domains,
            time_zone: c.time_zone,
        }
    }
}
use crate::store::menu_items::MenuItemRow;
use crate::store::vendors::VendorRow;

/// A vendor as the use cases answer it (store rows stay below `service`).
#[derive(Debug, Clone)]
pub struct Vendor {
    /// Id.
    pub id: Uuid,
    /// Campus.
    pub campus_id: Uuid,
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Taking orders.
    pub is_open: bool,
}

impl From<VendorRow> for Vendor {
    fn from(v: VendorRow) -> Self {
        Self {
            id: v.id.into_inner(),
            campus_id: v.campus_id.into_inner(),
            name: v.name,
            description: v.description,
            is_open: v.is_open,
        }
    }
}

/// A menu item as the use cases answer it.
#[derive(Debug, Clone)]
pub struct MenuItem {
    /// Id.
    pub id: Uuid,
    /// Vendor.
    pub vendor_id: Uuid,
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
    /// Last change.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<MenuItemRow> for MenuItem {
    fn from(m: MenuItemRow) -> Self {
        Self {
            id: m.id.into_inner(),
            vendor_id: m.vendor_id.into_inner(),
            name: m.name,
            description: m.description,
            price_cents: m.price_cents,
            stock: m.stock,
            available: m.available,
            updated_at: m.updated_at,
        }
    }
}

/// Every campus (public: the sign-up screen lists them).
pub async fn list_campuses(ctx: &Ctx) -> Result<Vec<Campus>> {
    let mut conn = ctx.db.read_conn().await?;
    let rows = campuses::list(&mut conn).await?;
    Ok(rows.into_iter().map(Campus::from).collect())
}

/// Vendors of a campus the actor belongs to (another campus answers 404).
pub async fn list_vendors(ctx: &Ctx, actor: &Actor, campus_id: Uuid) -> Result<Vec<Vendor>> {
    if !access::can_read_campus(actor, campus_id.into()) {
        return Err(DomainError::NotFound { what: "campus" }.into());
    }
    let mut conn = ctx.db.read_conn().await?;
    campuses::find(&mut conn, campus_id)
        .await?
        .ok_or(DomainError::NotFound { what: "campus" })?;
    let rows = vendors::list_by_campus(&mut conn, campus_id.into()).await?;
    Ok(rows.into_iter().map(Vendor::from).collect())
}

async fn visible_vendor(
    conn: &mut diesel_async::AsyncPgConnection,
    actor: &Actor,
    vendor_id: VendorId,
) -> Result<VendorRow> {
    Ok(vendors::find(conn, vendor_id)
        .await?
        .filter(|v| access::can_read_campus(actor, v.campus_id))
        .ok_or(DomainError::NotFound { what: "vendor" })?)
}

/// A vendor's menu.
pub async fn get_menu(
    ctx: &Ctx,
    actor: &Actor,
    vendor_id: Uuid,
) -> Result<(Vendor, Vec<MenuItem>)> {
    let mut conn = ctx.db.read_conn().await?;
    let vendor = visible_vendor(&mut conn, actor, vendor_id.into()).await?;
    let items = menu_items::list_by_vendor(&mut conn, vendor.id).await?;
    Ok((
        vendor.into(),
        items.into_iter().map(MenuItem::from).collect(),
    ))
}

/// Opens or closes a vendor for orders (its staff, its campus admin, a platform admin);
/// audited. Setting the state it already has is a no-op that still answers the vendor.
pub async fn set_vendor_open(
    ctx: &Ctx,
    actor: &Actor,
    vendor_id: Uuid,
    is_open: bool,
) -> Result<Vendor> {
    let mut conn = ctx.db.conn().await?;
    let vendor = visible_vendor(&mut conn, actor, vendor_id.into()).await?;
    access::can_manage_menu(actor, vendor.id, vendor.campus_id)?;
    if vendor.is_open == is_open {
        return Ok(vendor.into());
    }
    let row = vendors::set_open(&mut conn, vendor.id, is_open)
        .await?
        .ok_or(DomainError::NotFound { what: "vendor" })?;
    audit::insert(
        &mut conn,
        &audit::NewAuditRow {
            campus_id: Some(vendor.campus_id.into_inner()),
            actor_id: Some(actor.user_id.into_inner()),
            action: if is_open {
                "vendor.opened"
            } else {
                "vendor.closed"
            }
            .to_owned(),
            target_type: "vendor".to_owned(),
            target_id: vendor_id.to_string(),
            detail: serde_json::json!({ "isOpen": is_open }),
            request_id: None,
        },
    )
    .await?;
    Ok(row.into())
}

/// Fields of a new menu item.
#[derive(Debug, Clone)]
pub struct NewMenuItem {
    /// Name (1..=200 chars).
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Price in cents.
    pub price_cents: i64,
    /// Units in stock.
    pub stock: i32,
    /// Orderable now.
    pub available: bool,
}

/// A partial update of a menu item; absent fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct MenuItemPatch {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<Option<String>>,
    /// New price in cents.
    pub price_cents: Option<i64>,
    /// New stock.
    pub stock: Option<i32>,
    /// New availability.
    pub available: Option<bool>,
}

fn check_fields(name: Option<&str>, price: Option<i64>, stock: Option<i32>) -> Result<()> {
    let mut errors = Vec::new();
    if let Some(n) = name
        && let Err(e) = domain::validate::name(n)
    {
        errors.push(("name".to_owned(), e));
    }
    if let Some(p) = price
        && let Err(e) = domain::validate::price(p)
    {
        errors.push(("priceCents".to_owned(), e));
    }
    if let Some(s) = stock
        && let Err(e) = domain::validate::stock(s)
    {
        errors.push(("stock".to_owned(), e));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(DomainError::Invalid {
            field_errors: errors,
        }
        .into())
    }
}

/// Adds an item to a vendor's menu (vendor staff of that vendor, or its campus admin).
pub async fn create_menu_item(
    ctx: &Ctx,
    actor: &Actor,
    vendor_id: Uuid,
    input: NewMenuItem,
) -> Result<MenuItem> {
    check_fields(
        Some(&input.name),
        Some(input.price_cents),
        Some(input.stock),
    )?;
    let mut conn = ctx.db.conn().await?;
    let vendor = visible_vendor(&mut conn, actor, vendor_id.into()).await?;
    access::can_manage_menu(actor, vendor.id, vendor.campus_id)?;
    let row = menu_items::insert(
        &mut conn,
        &menu_items::NewMenuItemRow {
            id: MenuItemId::new(),
            vendor_id: vendor.id,
            name: input.name.trim().to_owned(),
            description: input.description,
            price_cents: input.price_cents,
            stock: input.stock,
            available: input.available,
        },
    )
    .await?;
    audit::insert(
        &mut conn,
        &audit::NewAuditRow {
            campus_id: Some(vendor.campus_id.into_inner()),
            actor_id: Some(actor.user_id.into_inner()),
            action: "menu_item.created".to_owned(),
            target_type: "menu_item".to_owned(),
            target_id: row.id.to_string(),
            detail: serde_json::json!({ "priceCents": row.price_cents, "stock": row.stock }),
            request_id: None,
        },
    )
    .await?;
    Ok(row.into())
}

/// Updates a menu item (same permissions as creating one).
pub async fn update_menu_item(
    ctx: &Ctx,
    actor: &Actor,
    item_id: Uuid,
    patch: MenuItemPatch,
) -> Result<MenuItem> {
    check_fields(patch.name.as_deref(), patch.price_cents, patch.stock)?;
    let mut conn = ctx.db.conn().await?;
    let item = menu_items::find(&mut conn, item_id.into())
        .await?
        .ok_or(DomainError::NotFound { what: "menu item" })?;
    let vendor = visible_vendor(&mut conn, actor, item.vendor_id)
        .await
        .map_err(|_| DomainError::NotFound { what: "menu item" })?;
    access::can_manage_menu(actor, vendor.id, vendor.campus_id)?;
    let row = menu_items::update(
        &mut conn,
        item.id,
        &menu_items::MenuItemChanges {
            name: patch.name.map(|n| n.trim().to_owned()),
            description: patch.description,
            price_cents: patch.price_cents,
            stock: patch.stock,
            available: patch.available,
        },
    )
    .await?;
    audit::insert(
        &mut conn,
        &audit::NewAuditRow {
            campus_id: Some(vendor.campus_id.into_inner()),
            actor_id: Some(actor.user_id.into_inner()),
            action: "menu_item.updated".to_owned(),
            target_type: "menu_item".to_owned(),
            target_id: row.id.to_string(),
            detail: serde_json::json!({ "priceCents": row.price_cents, "stock": row.stock, "available": row.available }),
            request_id: None,
        },
    )
    .await?;
    Ok(row.into())
}
