//! `/campuses`, `/campuses/{id}/vendors`, `/vendors/{id}/menu`, menu-item writes.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::Ctx;
use crate::http::dto::{Data, data};
use crate::http::error::{ApiError, ProblemBody};
use crate::http::extract::{Authed, JsonBody};
use crate::service::catalog;

/// A campus.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CampusResponse {
    /// Campus id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// URL-friendly name.
    pub slug: String,
    /// E-mail domains whose owners may register here.
    pub email_domains: Vec<String>,
    /// IANA time zone.
    pub time_zone: String,
}

/// A vendor.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VendorResponse {
    /// Vendor id.
    pub id: Uuid,
    /// Campus.
    pub campus_id: Uuid,
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Taking orders now.
    pub is_open: bool,
}

/// A menu item.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MenuItemResponse {
    /// Item id.
    pub id: Uuid,
    /// Vendor.
    pub vendor_id: Uuid,
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Price in cents.
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub price_cents: i64,
    /// Units left.
    pub stock: i32,
    /// Orderable now.
    pub available: bool,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A vendor with its menu.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MenuResponse {
    /// The vendor.
    pub vendor: VendorResponse,
    /// Its items.
    pub items: Vec<MenuItemResponse>,
}

fn vendor_dto(v: catalog::Vendor) -> VendorResponse {
    VendorResponse {
        id: v.id,
        campus_id: v.campus_id,
        name: v.name,
        description: v.description,
        is_open: v.is_open,
    }
}

fn item_dto(m: catalog::MenuItem) -> MenuItemResponse {
    MenuItemResponse {
        id: m.id,
        vendor_id: m.vendor_id,
        name: m.name,
        description: m.description,
        price_cents: m.price_cents,
        stock: m.stock,
        available: m.available,
        updated_at: m.updated_at,
    }
}

/// Every campus (public).
#[utoipa::path(get, path = "/campuses", tag = "catalog",
    responses((status = 200, body = inline(Data<Vec<CampusResponse>>))))]
pub async fn list_campuses(ctx: web::Data<Ctx>) -> Result<HttpResponse, ApiError> {
    let rows = catalog::list_campuses(&ctx).await?;
    let dto: Vec<CampusResponse> = rows
        .into_iter()
        .map(|c| CampusResponse {
            id: c.id,
            name: c.name,
            slug: c.slug,
            email_domains: c.email_domains,
            time_zone: c.time_zone,
        })
        .collect();
    Ok(HttpResponse::Ok().json(data(dto)))
}

/// Vendors of the caller's campus.
#[utoipa::path(get, path = "/campuses/{id}/vendors", tag = "catalog", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Campus id")),
    responses((status = 200, body = inline(Data<Vec<VendorResponse>>)), (status = 401, body = ProblemBody), (status = 404, body = ProblemBody)))]
pub async fn list_vendors(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let rows = catalog::list_vendors(&ctx, &actor, id.into_inner()).await?;
    Ok(HttpResponse::Ok().json(data(rows.into_iter().map(vendor_dto).collect::<Vec<_>>())))
}

/// A vendor's menu.
#[utoipa::path(get, path = "/vendors/{id}/menu", tag = "catalog", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Vendor id")),
    responses((status = 200, body = inline(Data<MenuResponse>)), (status = 401, body = ProblemBody), (status = 404, body = ProblemBody)))]
pub async fn get_menu(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let (vendor, items) = catalog::get_menu(&ctx, &actor, id.into_inner()).await?;
    Ok(HttpResponse::Ok().json(data(MenuResponse {
        vendor: vendor_dto(vendor),
        items: items.into_iter().map(item_dto).collect(),
    })))
}

/// A new menu item.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateMenuItemRequest {
    /// 1 to 200 characters (not only spaces).
    #[schema(min_length = 1, max_length = 200, pattern = r"[^\t\n\x0b\f\r ]")]
    pub name: String,
    /// Optional description.
    pub description: Option<String>,
    /// Price in cents, 0 to 10,000,000.
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub price_cents: i64,
    /// Units in stock, 0 to 1,000,000.
    #[schema(minimum = 0, maximum = 1_000_000)]
    pub stock: i32,
    /// Orderable now (default true).
    pub available: Option<bool>,
}

/// Changes to a menu item; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateMenuItemRequest {
    /// New name (1 to 200 characters, not only spaces).
    #[schema(min_length = 1, max_length = 200, pattern = r"[^\t\n\x0b\f\r ]")]
    pub name: Option<String>,
    /// New description (null clears it).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// New price in cents, 0 to 10,000,000.
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub price_cents: Option<i64>,
    /// New stock, 0 to 1,000,000.
    #[schema(minimum = 0, maximum = 1_000_000)]
    pub stock: Option<i32>,
    /// New availability.
    pub available: Option<bool>,
}

/// Distinguishes an absent field (None) from an explicit null (Some(None)).
fn double_option<'de, D>(de: D) -> Result<Option<Option<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<String>::deserialize(de).map(Some)
}

/// Add an item to a vendor's menu (its staff or the campus admin).
#[utoipa::path(post, path = "/vendors/{id}/menu-items", tag = "catalog", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Vendor id")), request_body = CreateMenuItemRequest,
    responses((status = 201, body = inline(Data<MenuItemResponse>)), (status = 400, body = ProblemBody), (status = 403, body = ProblemBody), (status = 404, body = ProblemBody)))]
pub async fn create_menu_item(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
    body: JsonBody<CreateMenuItemRequest>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let row = catalog::create_menu_item(
        &ctx,
        &actor,
        id.into_inner(),
        catalog::NewMenuItem {
            name: b.name,
            description: b.description,
            price_cents: b.price_cents,
            stock: b.stock,
            available: b.available.unwrap_or(true),
        },
    )
    .await?;
    Ok(HttpResponse::Created().json(data(item_dto(row))))
}

/// Change a menu item: price, stock, availability, name, description.
#[utoipa::path(patch, path = "/menu-items/{id}", tag = "catalog", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Menu item id")), request_body = UpdateMenuItemRequest,
    responses((status = 200, body = inline(Data<MenuItemResponse>)), (status = 400, body = ProblemBody), (status = 403, body = ProblemBody), (status = 404, body = ProblemBody)))]
pub async fn update_menu_item(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
    body: JsonBody<UpdateMenuItemRequest>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let row = catalog::update_menu_item(
        &ctx,
        &actor,
        id.into_inner(),
        catalog::MenuItemPatch {
            name: b.name,
            description: b.description,
            price_cents: b.price_cents,
            stock: b.stock,
            available: b.available,
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(data(item_dto(row))))
}

/// Whether a vendor takes orders.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VendorOpenRequest {
    /// True: open for orders; false: closed (new orders answer 409).
    pub is_open: bool,
}

/// Open or close a vendor (its staff, its campus admin or a platform admin).
#[utoipa::path(put, path = "/vendors/{id}/open", tag = "catalog", security(("bearer" = []), ("cookie" = [])),
    params(("id" = Uuid, Path, description = "Vendor id")), request_body = VendorOpenRequest,
    responses((status = 200, body = inline(Data<VendorResponse>)), (status = 400, body = ProblemBody), (status = 401, body = ProblemBody),
        (status = 403, body = ProblemBody), (status = 404, body = ProblemBody)))]
pub async fn set_vendor_open(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
    body: JsonBody<VendorOpenRequest>,
) -> Result<HttpResponse, ApiError> {
    let row = catalog::set_vendor_open(&ctx, &actor, id.into_inner(), body.is_open).await?;
    Ok(HttpResponse::Ok().json(data(vendor_dto(row))))
}

/// Registers the routes of this module.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/campuses", web::get().to(list_campuses))
        .route("/campuses/{id}/vendors", web::get().to(list_vendors))
        .route("/vendors/{id}/menu", web::get().to(get_menu))
        .route("/vendors/{id}/open", web::put().to(set_vendor_open))
        .route("/vendors/{id}/menu-items", web::post().to(create_menu_item))
        .route("/menu-items/{id}", web::patch().to(update_menu_item));
}
