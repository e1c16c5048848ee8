//! `/admin/*`: the audit trail and the outbox (dead events: list and retry).

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::Ctx;
use crate::http::dto::{Data, List, data};
use crate::http::error::FieldError;
use crate::http::error::{ApiError, ProblemBody};
use crate::http::extract::{Authed, PageParams, ReqId};
use crate::service::audit;
use crate::service::events::{self, OutboxState};

/// Filters of the audit list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only entries by this user.
    pub actor_id: Option<Uuid>,
    /// Only this action, e.g. `order.placed`.
    pub action: Option<String>,
    /// Not before (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Before (RFC 3339).
    pub to: Option<DateTime<Utc>>,
}

/// One audit entry.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Entry id.
    pub id: i64,
    /// Campus.
    pub campus_id: Option<Uuid>,
    /// Who acted.
    pub actor_id: Option<Uuid>,
    /// What they did.
    pub action: String,
    /// Kind of thing acted on.
    pub target_type: String,
    /// Its id.
    pub target_id: String,
    /// Extra detail.
    pub detail: serde_json::Value,
    /// Request that did it.
    pub request_id: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// The audit trail of the caller's campus (platform admins: all), newest first.
#[utoipa::path(get, path = "/admin/audit", tag = "admin", security(("bearer" = [])), params(AuditParams, PageParams),
    responses((status = 200, body = inline(List<AuditEntry>)), (status = 400, body = ProblemBody), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn list_audit(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    params: web::Query<AuditParams>,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, ApiError> {
    let page = page.into_inner().validate()?;
    let p = params.into_inner();
    let filter = audit::AuditFilter {
        actor_id: p.actor_id,
        action: p.action,
        from: p.from,
        to: p.to,
    };
    let out = audit::list_audit(&ctx, &actor, filter, page).await?;
    Ok(HttpResponse::Ok().json(List::from_page(out, AuditEntry::from)))
}

impl From<audit::AuditEntry> for AuditEntry {
    fn from(r: audit::AuditEntry) -> Self {
        Self {
            id: r.id,
            campus_id: r.campus_id,
            actor_id: r.actor_id,
            action: r.action,
            target_type: r.target_type,
            target_id: r.target_id,
            detail: r.detail,
            request_id: r.request_id,
            created_at: r.created_at,
        }
    }
}

/// Filter of the outbox list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutboxParams {
    /// `dead` (default: given up after the last attempt) or `pending` (waiting or backing off).
    #[param(schema_with = crate::http::dto::outbox_state_schema)]
    pub state: Option<String>,
}

/// An outbox event as admins see it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboxEvent {
    /// Outbox id (the WebSocket event id).
    pub id: i64,
    /// Event name, e.g. `order.status_changed`.
    pub event_type: String,
    /// Aggregate kind.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: Uuid,
    /// Aggregate version after the change.
    pub aggregate_version: i32,
    /// Routing: campus.
    pub campus_id: Option<Uuid>,
    /// Routing: vendor.
    pub vendor_id: Option<Uuid>,
    /// Routing: user.
    pub user_id: Option<Uuid>,
    /// Event body.
    pub payload: serde_json::Value,
    /// Written.
    pub created_at: DateTime<Utc>,
    /// Taken by every sink (null until then).
    pub published_at: Option<DateTime<Utc>>,
    /// Failed deliveries so far.
    pub attempts: i32,
    /// Next delivery attempt.
    pub next_attempt_at: DateTime<Utc>,
    /// Last failure.
    pub last_error: Option<String>,
    /// Given up (null unless dead).
    pub dead_at: Option<DateTime<Utc>>,
    /// Sinks that already took it (a retry runs only the others).
    pub sinks_done: Vec<String>,
}

impl From<events::OutboxEvent> for OutboxEvent {
    fn from(r: events::OutboxEvent) -> Self {
        Self {
            id: r.id,
            event_type: r.event_type,
            aggregate_type: r.aggregate_type,
            aggregate_id: r.aggregate_id,
            aggregate_version: r.aggregate_version,
            campus_id: r.campus_id,
            vendor_id: r.vendor_id,
            user_id: r.user_id,
            payload: r.payload,
            created_at: r.created_at,
            published_at: r.published_at,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at,
            last_error: r.last_error,
            dead_at: r.dead_at,
            sinks_done: r.sinks_done,
        }
    }
}

/// Outbox events of the caller's campus (platform admins: all) in a state, newest first.
#[utoipa::path(get, path = "/admin/outbox", tag = "admin", security(("bearer" = [])), params(OutboxParams, PageParams),
    responses((status = 200, body = inline(List<OutboxEvent>)), (status = 400, body = ProblemBody), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn list_outbox(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    params: web::Query<OutboxParams>,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, ApiError> {
    let page = page.into_inner().validate()?;
    let state = match params.state.as_deref() {
        None | Some("dead") => OutboxState::Dead,
        Some("pending") => OutboxState::Pending,
        Some(_) => {
            return Err(ApiError::validation(vec![FieldError {
                field: "state".to_owned(),
                message: "must be dead or pending".to_owned(),
            }]));
        }
    };
    let out = events::list_outbox(&ctx, &actor, state, page).await?;
    Ok(HttpResponse::Ok().json(List::from_page(out, OutboxEvent::from)))
}

/// Retry a dead event: attempts reset, due now; sinks that already took it are not re-run.
#[utoipa::path(post, path = "/admin/outbox/{id}/retry", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Outbox event id")),
    responses((status = 200, body = inline(Data<OutboxEvent>)), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody),
        (status = 404, body = ProblemBody), (status = 409, body = ProblemBody)))]
pub async fn retry_dead_event(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<i64>,
    ReqId(request_id): ReqId,
) -> Result<HttpResponse, ApiError> {
    let row = events::retry_dead_event(&ctx, &actor, id.into_inner(), request_id).await?;
    Ok(HttpResponse::Ok().json(data(OutboxEvent::from(row))))
}

/// Registers the routes of this module.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/audit", web::get().to(list_audit))
        .route("/admin/outbox", web::get().to(list_outbox))
        .route("/admin/outbox/{id}/retry", web::post().to(retry_dead_event));
}
