//! Orders: place (ONE transaction: idempotency key, lock items in id order, check and
//! decrement stock, insert order + items + `order.created` outbox event + audit row), list,
//! get, and transitions along the state machine of `domain::order` with optimistic
//! concurrency on the order `version` (`If-Match`).
//!
//! Idempotency lives in the same transaction as the order: the key row is inserted with
//! `ON CONFLICT DO NOTHING`, so a concurrent retry blocks on the first attempt's row lock and
//! then replays its committed response; if the first attempt rolled back (e.g. out of stock),
//! the retry runs for real. Only successful responses are stored, for 24 h.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{Error, Page, PageRequest, Result};
use crate::app::Ctx;
use crate::domain::event::{Event, EventRouting, NewEvent, OrderCreated, OrderStatusChanged};
use crate::domain::order::ItemTerms;
use crate::domain::{
    self, Actor, DomainError, MenuItemId, OrderId, OrderStatus, Role, VendorId, access,
};
use crate::store::{audit, idempotency, menu_items, orders, outbox, vendors};

/// How long an idempotency key replays its first response.
pub const IDEMPOTENCY_TTL: chrono::Duration = chrono::Duration::hours(24);

/// One line of a new order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderLine {
    /// Menu item to order.
    pub menu_item_id: Uuid,
    /// How many (1..=100).
    pub quantity: i32,
}

/// Input of [`place_order`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaceOrder {
    /// Vendor all items belong to.
    pub vendor_id: Uuid,
    /// Lines (1..=50, distinct items).
    pub items: Vec<OrderLine>,
    /// Free text for the vendor (<= 500 chars).
    pub note: Option<String>,
}

/// One line of an order as shown.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderItemView {
    /// Menu item.
    pub menu_item_id: Uuid,
    /// Name at the time of ordering.
    pub name: String,
    /// Unit price at the time of ordering, in cents.
    pub unit_price_cents: i64,
    /// Quantity.
    pub quantity: i32,
}

/// An order as shown to anyone allowed to see it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    /// Order id (UUIDv7).
    pub id: Uuid,
    /// Campus.
    pub campus_id: Uuid,
    /// Vendor.
    pub vendor_id: Uuid,
    /// Student who ordered.
    pub user_id: Uuid,
    /// Current state.
    #[schema(value_type = String)]
    pub status: OrderStatus,
    /// Sum of the lines, in cents.
    pub total_cents: i64,
    /// Note for the vendor.
    pub note: Option<String>,
    /// Bumped by every transition; send it back in `If-Match`.
    pub version: i32,
    /// Lines.
    pub items: Vec<OrderItemView>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// What [`place_order`] produced: a new order, or the replay of an earlier identical request.
#[derive(Debug)]
pub enum Placed {
    /// Created now.
    New(OrderView),
    /// The first response to this idempotency key, replayed.
    Replayed(OrderView),
}

/// The outbox row of an event about `view`'s order, routed to its campus, vendor and
/// student, at the order's version.
fn order_event(view: &OrderView, event: Event) -> Result<outbox::NewOutboxEventRow> {
    let new = NewEvent {
        event,
        aggregate_id: view.id,
        version: view.version,
        routing: EventRouting {
            campus_id: Some(view.campus_id.into()),
            vendor_id: Some(view.vendor_id.into()),
            user_id: Some(view.user_id.into()),
        },
    };
    Ok(outbox::NewOutboxEventRow::from_event(&new).map_err(anyhow::Error::from)?)
}

/// `order.created` carries the order as placed.
fn created_event(view: &OrderView) -> OrderCreated {
    OrderCreated {
        id: view.id,
        campus_id: view.campus_id,
        vendor_id: view.vendor_id,
        user_id: view.user_id,
        status: view.status.as_str().to_owned(),
        total_cents: view.total_cents,
        note: view.note.clone(),
        version: view.version,
        items: view
            .items
            .iter()
            .map(|i| domain::event::OrderLine {
                menu_item_id: i.menu_item_id,
                name: i.name.clone(),
                unit_price_cents: i.unit_price_cents,
                quantity: i.quantity,
            })
            .collect(),
        created_at: view.created_at,
        updated_at: view.updated_at,
    }
}

fn view(order: orders::OrderRow, items: Vec<orders::OrderItemRow>) -> OrderView {
    OrderView {
        id: order.id.into_inner(),
        campus_id: order.campus_id.into_inner(),
        vendor_id: order.vendor_id.into_inner(),
        user_id: order.user_id.into_inner(),
        status: order.status,
        total_cents: order.total_cents,
        note: order.note,
        version: order.version,
        items: items
            .into_iter()
            .map(|i| OrderItemView {
                menu_item_id: i.menu_item_id.into_inner(),
                name: i.name,
                unit_price_cents: i.unit_price_cents,
                quantity: i.quantity,
            })
            .collect(),
        created_at: order.created_at,
        updated_at: order.updated_at,
    }
}

fn validate(input: &PlaceOrder) -> Result<()> {
    let mut errors = Vec::new();
    if input.items.is_empty() || input.items.len() > 50 {
        errors.push(("items".to_owned(), "must have 1 to 50 lines".to_owned()));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, line) in input.items.iter().enumerate() {
        if let Err(e) = domain::validate::quantity(line.quantity) {
            errors.push((format!("items[{i}].quantity"), e));
        }
        if !seen.insert(line.menu_item_id) {
            errors.push((format!("items[{i}].menuItemId"), "appears twice".to_owned()));
        }
    }
    if let Some(note) = &input.note
        && let Err(e) = domain::validate::note(note)
    {
        errors.push(("note".to_owned(), e));
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

fn request_hash(input: &PlaceOrder) -> String {
    // Canonical: serde_json of the typed input (field order fixed by the struct).
    let json = serde_json::to_vec(input).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}

/// Places an order for a student.
pub async fn place_order(
    ctx: &Ctx,
    actor: &Actor,
    input: PlaceOrder,
    idempotency_key: Option<String>,
    request_id: Option<String>,
) -> Result<Placed> {
    let placed = place_order_tx(ctx, actor, input, idempotency_key, request_id).await;
    // Labelled as the Grafana panel reads it (`sum by (result)`); refusals count too.
    let result = match &placed {
        Ok(Placed::New(_)) => "created",
        Ok(Placed::Replayed(_)) => "replayed",
        Err(Error::Domain(_)) => "rejected",
        Err(_) => "failed",
    };
    metrics::counter!(ORDER_CREATION_TOTAL, "result" => result).increment(1);
    if matches!(placed, Ok(Placed::New(_))) {
        // After commit, never inside the transaction: see service::events, "Waking the relay".
        ctx.relay_waker.wake();
    }
    placed
}

/// Counter of order placements by `result` (created, replayed, rejected, failed).
pub const ORDER_CREATION_TOTAL: &str = "order_creation_total";

async fn place_order_tx(
    ctx: &Ctx,
    actor: &Actor,
    input: PlaceOrder,
    idempotency_key: Option<String>,
    request_id: Option<String>,
) -> Result<Placed> {
    if actor.role != Role::Student {
        return Err(DomainError::Forbidden {
            reason: "only students place orders".to_owned(),
        }
        .into());
    }
    validate(&input)?;
    let hash = request_hash(&input);
    let user_id = actor.user_id.into_inner();
    let mut conn = ctx.db.conn().await?;
    let placed = conn
        .transaction(async |conn| -> Result<Placed> {
            if let Some(key) = &idempotency_key
                && let Some(replay) = claim_key(conn, user_id, key, &hash).await?
            {
                return Ok(Placed::Replayed(replay));
            }
            let order = insert_order(conn, actor, &input, request_id.clone()).await?;
            if let Some(key) = &idempotency_key {
                let body = serde_json::to_value(&order).map_err(anyhow::Error::from)?;
                idempotency::complete(conn, user_id, key, 201, &body).await?;
            }
            Ok(Placed::New(order))
        })
        .await?;
    Ok(placed)
}

/// Claims an idempotency key inside the order transaction. `Some(view)` = replay.
async fn claim_key(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    key: &str,
    hash: &str,
) -> Result<Option<OrderView>> {
    idempotency::delete_expired_key(conn, user_id, key).await?;
    let expires_at = Utc::now() + IDEMPOTENCY_TTL;
    if idempotency::insert_pending(conn, user_id, key, hash, expires_at).await? {
        return Ok(None);
    }
    // Another request holds (or held) the key; its row is committed by now (the insert
    // above waited for it), so it is complete.
    let existing = idempotency::find(conn, user_id, key)
        .await?
        .ok_or_else(|| anyhow::anyhow!("idempotency row vanished"))?;
    if existing.request_hash != hash {
        return Err(DomainError::Conflict {
            reason: "Idempotency-Key was already used with a different request body".to_owned(),
        }
        .into());
    }
    match existing.response_body {
        Some(body) => Ok(Some(
            serde_json::from_value(body).map_err(anyhow::Error::from)?,
        )),
        None => Err(DomainError::Conflict {
            reason: "a request with this Idempotency-Key is still in progress".to_owned(),
        }
        .into()),
    }
}

async fn insert_order(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    input: &PlaceOrder,
    request_id: Option<String>,
) -> Result<OrderView> {
    let vendor = open_vendor(conn, actor, input.vendor_id).await?;
    let (total, lines) = reserve_items(conn, vendor.id, input).await?;
    let order_id = OrderId::new();
    let now = Utc::now();
    let (order, items) = orders::insert(
        conn,
        &orders::NewOrderRow {
            id: order_id,
            campus_id: vendor.campus_id,
            vendor_id: vendor.id,
            user_id: actor.user_id,
            status: OrderStatus::Placed,
            total_cents: total.0,
            note: input.note.clone(),
            version: 1,
            created_at: now,
            updated_at: now,
        },
        &lines
            .iter()
            .map(|(item, qty)| orders::NewOrderItemRow {
                order_id,
                menu_item_id: item.id,
                name: item.name.clone(),
                unit_price_cents: item.price_cents,
                quantity: *qty,
            })
            .collect::<Vec<_>>(),
    )
    .await?;
    let view = view(order, items);
    record_placed(conn, actor, &view, request_id).await?;
    Ok(view)
}

/// The vendor an order goes to: visible to the actor (404 otherwise) and open (409).
async fn open_vendor(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    vendor_id: Uuid,
) -> Result<vendors::VendorRow> {
    let vendor = vendors::find(conn, vendor_id.into())
        .await?
        .filter(|v| access::can_read_campus(actor, v.campus_id))
        .ok_or(DomainError::NotFound { what: "vendor" })?;
    if !vendor.is_open {
        return Err(DomainError::Conflict {
            reason: "the vendor is closed".to_owned(),
        }
        .into());
    }
    Ok(vendor)
}

/// Locks the requested items, prices the order by the domain's rules
/// (`domain::order::price_order`) and takes the stock: the total and the (item, quantity)
/// lines in request order.
async fn reserve_items(
    conn: &mut AsyncPgConnection,
    vendor_id: VendorId,
    input: &PlaceOrder,
) -> Result<(domain::Cents, Vec<(menu_items::MenuItemRow, i32)>)> {
    let ids: Vec<MenuItemId> = input.items.iter().map(|l| l.menu_item_id.into()).collect();
    // Locked in id order (the store sorts) so concurrent orders never deadlock.
    let locked = menu_items::lock_for_order(conn, vendor_id, &ids).await?;
    let by_id: BTreeMap<MenuItemId, &menu_items::MenuItemRow> =
        locked.iter().map(|m| (m.id, m)).collect();
    let requested: Vec<(Option<&menu_items::MenuItemRow>, i32)> = input
        .items
        .iter()
        .map(|l| (by_id.get(&l.menu_item_id.into()).copied(), l.quantity))
        .collect();
    let terms: Vec<(Option<ItemTerms<'_>>, i32)> = requested
        .iter()
        .map(|(item, qty)| {
            let terms = item.map(|m| ItemTerms {
                name: &m.name,
                price: domain::Cents(m.price_cents),
                stock: m.stock,
                available: m.available,
            });
            (terms, *qty)
        })
        .collect();
    let total = domain::order::price_order(&terms)?;
    // Every line has its item now (an unknown one failed the pricing).
    let lines: Vec<(menu_items::MenuItemRow, i32)> = requested
        .iter()
        .filter_map(|(item, qty)| item.map(|m| (m.clone(), *qty)))
        .collect();
    let taken: Vec<(MenuItemId, i32)> = lines.iter().map(|(item, qty)| (item.id, -qty)).collect();
    menu_items::change_stock(conn, &taken).await?;
    Ok((total, lines))
}

/// Writes what follows from a placed order in its transaction: the `order.created` event and
/// the audit row.
async fn record_placed(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    view: &OrderView,
    request_id: Option<String>,
) -> Result<()> {
    let created = Event::OrderCreated(created_event(view));
    outbox::insert_event(conn, &order_event(view, created)?).await?;
    audit::insert(
        conn,
        &audit::NewAuditRow {
            campus_id: Some(view.campus_id),
            actor_id: Some(actor.user_id.into_inner()),
            action: "order.placed".to_owned(),
            target_type: "order".to_owned(),
            target_id: view.id.to_string(),
            detail: serde_json::json!({ "totalCents": view.total_cents, "lines": view.items.len() }),
            request_id,
        },
    )
    .await?;
    Ok(())
}

/// Orders the actor may see: a student's own, a vendor's board, a campus, or everything.
pub async fn list_orders(
    ctx: &Ctx,
    actor: &Actor,
    status: Option<OrderStatus>,
    page: PageRequest,
) -> Result<Page<OrderView>> {
    let scope = match actor.role {
        Role::Student => orders::Scope::User(actor.user_id),
        Role::VendorStaff => orders::Scope::Vendor(
            actor
                .vendor_id
                .ok_or_else(|| anyhow::anyhow!("vendor staff without vendor"))?,
        ),
        Role::CampusAdmin => orders::Scope::Campus(
            actor
                .campus_id
                .ok_or_else(|| anyhow::anyhow!("campus admin without campus"))?,
        ),
        Role::PlatformAdmin => orders::Scope::All,
    };
    let mut conn = ctx.db.read_conn().await?;
    let (rows, total) = orders::list(&mut conn, &scope, status, page.limit, page.offset).await?;
    let ids: Vec<OrderId> = rows.iter().map(|o| o.id).collect();
    let mut items = orders::items_for_orders(&mut conn, &ids).await?;
    let data = rows
        .into_iter()
        .map(|o| {
            let its = items.remove(&o.id).unwrap_or_default();
            view(o, its)
        })
        .collect();
    Ok(Page::new(data, total, page))
}

/// One order, if the actor may see it (404 otherwise, also for other tenants).
pub async fn get_order(ctx: &Ctx, actor: &Actor, order_id: Uuid) -> Result<OrderView> {
    let order_id = OrderId::from(order_id);
    let mut conn = ctx.db.read_conn().await?;
    let order = orders::find(&mut conn, order_id)
        .await?
        .filter(|o| access::can_read_order(actor, &order_scope(o)))
        .ok_or(DomainError::NotFound { what: "order" })?;
    let items = orders::items_for_order(&mut conn, order_id).await?;
    Ok(view(order, items))
}

fn order_scope(o: &orders::OrderRow) -> access::OrderScope {
    access::OrderScope {
        user_id: o.user_id,
        vendor_id: o.vendor_id,
        campus_id: o.campus_id,
    }
}

/// Moves an order to `to`; `if_match` (the version the client saw) must still be current.
pub async fn transition_order(
    ctx: &Ctx,
    actor: &Actor,
    order_id: Uuid,
    to: OrderStatus,
    if_match: Option<i32>,
    request_id: Option<String>,
) -> Result<OrderView> {
    let order_id = OrderId::from(order_id);
    let mut conn = ctx.db.conn().await?;
    let view = conn
        .transaction(async |conn| -> Result<OrderView> {
            let order = orders::lock(conn, order_id)
                .await?
                .filter(|o| access::can_read_order(actor, &order_scope(o)))
                .ok_or(DomainError::NotFound { what: "order" })?;
            if let Some(expected) = if_match
                && expected != order.version
            {
                return Err(Error::PreconditionFailed(format!(
                    "order is at version {}, not {expected}",
                    order.version
                )));
            }
            let from = order.status;
            let scope = order_scope(&order);
            domain::order::transition(from, to, actor, &scope)?;
            let items = orders::items_for_order(conn, order_id).await?;
            if domain::order::restores_stock(to) {
                let returned: Vec<(MenuItemId, i32)> = items
                    .iter()
                    .map(|item| (item.menu_item_id, item.quantity))
                    .collect();
                menu_items::change_stock(conn, &returned).await?;
            }
            let updated = orders::update_status(conn, order_id, order.version, to)
                .await?
                .ok_or_else(|| {
                    Error::PreconditionFailed("order changed concurrently".to_owned())
                })?;
            let view = view(updated, items);
            let changed = Event::OrderStatusChanged(OrderStatusChanged {
                order_id: order_id.into_inner(),
                vendor_id: view.vendor_id,
                campus_id: view.campus_id,
                user_id: view.user_id,
                from,
                to,
                version: view.version,
            });
            outbox::insert_event(conn, &order_event(&view, changed)?).await?;
            audit::insert(
                conn,
                &audit::NewAuditRow {
                    campus_id: Some(view.campus_id),
                    actor_id: Some(actor.user_id.into_inner()),
                    action: format!("order.{}", to.as_str()),
                    target_type: "order".to_owned(),
                    target_id: order_id.to_string(),
                    detail: serde_json::json!({ "from": from.as_str(), "version": view.version }),
                    request_id: request_id.clone(),
                },
            )
            .await?;
            Ok(view)
        })
        .await?;
    ctx.relay_waker.wake();
    Ok(view)
}
