//! `/orders`: place, list, get, transition.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::Ctx;
use crate::domain::OrderStatus;
use crate::http::dto::{Data, List, data};
use crate::http::error::{ApiError, FieldError, ProblemBody};
use crate::http::extract::{Authed, IdempotencyKey, IfMatch, JsonBody, PageParams, ReqId, etag};
use crate::service::orders::{self, OrderView, Placed};

/// One line of a new order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderLineRequest {
    /// Menu item of the vendor.
    pub menu_item_id: Uuid,
    /// 1 to 100.
    #[schema(minimum = 1, maximum = 100)]
    pub quantity: i32,
}

/// A new order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlaceOrderRequest {
    /// Vendor all items belong to.
    pub vendor_id: Uuid,
    /// 1 to 50 distinct items.
    #[schema(min_items = 1, max_items = 50)]
    pub items: Vec<OrderLineRequest>,
    /// Up to 500 characters for the vendor.
    #[schema(max_length = 500)]
    pub note: Option<String>,
}

/// A status change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransitionRequest {
    /// Target state: accepted, preparing, ready, picked_up or cancelled.
    #[schema(schema_with = crate::http::dto::order_status_schema)]
    pub to: String,
}

/// Filters of the order list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderFilter {
    /// Only orders in this state.
    #[param(schema_with = crate::http::dto::order_status_schema)]
    pub status: Option<String>,
}

fn parse_status(field: &str, value: &str) -> Result<OrderStatus, ApiError> {
    value.parse().map_err(|_| {
        ApiError::validation(vec![FieldError {
            field: field.to_owned(),
            message: "must be one of placed, accepted, preparing, ready, picked_up, cancelled"
                .to_owned(),
        }])
    })
}

/// Place an order (students). `Idempotency-Key` makes retries safe for 24 h.
#[utoipa::path(post, path = "/orders", tag = "orders", security(("bearer" = [])), request_body = PlaceOrderRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for 24 h")),
    responses((status = 201, body = inline(Data<OrderView>)), (status = 400, body = ProblemBody), (status = 401, body = ProblemBody),
        (status = 403, body = ProblemBody), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody)))]
pub async fn place_order(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    key: IdempotencyKey,
    ReqId(request_id): ReqId,
    body: JsonBody<PlaceOrderRequest>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let input = orders::PlaceOrder {
        vendor_id: b.vendor_id,
        items: b
            .items
            .into_iter()
            .map(|l| orders::OrderLine {
                menu_item_id: l.menu_item_id,
                quantity: l.quantity,
            })
            .collect(),
        note: b.note,
    };
    let placed = orders::place_order(&ctx, &actor, input, key.0, request_id).await?;
    let (order, replayed) = match placed {
        Placed::New(o) => (o, false),
        Placed::Replayed(o) => (o, true),
    };
    let mut res = HttpResponse::Created();
    res.insert_header(etag(order.version))
        .insert_header(("Location", format!("/orders/{}", order.id)));
    if replayed {
        res.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(res.json(data(order)))
}

/// Orders the caller may see (students: theirs; vendor staff: their vendor's; campus admins:
/// their campus's), newest first.
#[utoipa::path(get, path = "/orders", tag = "orders", security(("bearer" = [])), params(OrderFilter, PageParams),
    responses((status = 200, body = inline(List<OrderView>)), (status = 400, body = ProblemBody), (status = 401, body = ProblemBody)))]
pub async fn list_orders(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    filter: web::Query<OrderFilter>,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, ApiError> {
    let page = page.into_inner().validate()?;
    let status = filter
        .status
        .as_deref()
        .map(|s| parse_status("status", s))
        .transpose()?;
    let out = orders::list_orders(&ctx, &actor, status, page).await?;
    Ok(HttpResponse::Ok().json(List::from_page(out, |o| o)))
}

/// One order; its `ETag` is the version to send in `If-Match`.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Order id")),
    responses((status = 200, body = inline(Data<OrderView>)), (status = 401, body = ProblemBody), (status = 404, body = ProblemBody)))]
pub async fn get_order(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let order = orders::get_order(&ctx, &actor, id.into_inner()).await?;
    Ok(HttpResponse::Ok()
        .insert_header(etag(order.version))
        .json(data(order)))
}

/// Move an order along placed → accepted → preparing → ready → picked_up, or cancel it.
#[utoipa::path(post, path = "/orders/{id}/transitions", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Order id"), ("If-Match" = Option<String>, Header, nullable = false, description = "Version the client last saw (`\"3\"`, `W/\"3\"`, `3`, or `*`)", pattern = r#"^[\t ]*(\*|(W/)?"*\+?0*[1-9][0-9]{0,8}"*)[\t ]*$"#)),
    request_body = TransitionRequest,
    responses((status = 200, body = inline(Data<OrderView>)), (status = 400, body = ProblemBody), (status = 401, body = ProblemBody),
        (status = 403, body = ProblemBody), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody), (status = 412, body = ProblemBody)))]
pub async fn transition_order(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
    if_match: IfMatch,
    ReqId(request_id): ReqId,
    body: JsonBody<TransitionRequest>,
) -> Result<HttpResponse, ApiError> {
    let to = parse_status("to", &body.to)?;
    let order =
        orders::transition_order(&ctx, &actor, id.into_inner(), to, if_match.0, request_id).await?;
    Ok(HttpResponse::Ok()
        .insert_header(etag(order.version))
        .json(data(order)))
}

/// Rate classes of this module's routes (`http::edge::rate_limit`).
pub const RATE_CLASSES: super::RateClasses = &[(
    actix_web::http::Method::POST,
    "/orders",
    &[super::RateClass::Orders],
)];

/// Registers the routes of this module.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/orders", web::post().to(place_order))
        .route("/orders", web::get().to(list_orders))
        .route("/orders/{id}", web::get().to(get_order))
        .route("/orders/{id}/transitions", web::post().to(transition_order));
}
