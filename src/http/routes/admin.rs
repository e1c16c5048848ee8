//! `/admin/*`: the audit trail.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::Ctx;
use crate::http::dto::List;
use crate::http::error::{ApiError, ProblemBody};
use crate::http::extract::{Authed, PageParams};
use crate::service::audit;

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
    Ok(
        HttpResponse::Ok().json(List::from_page(out, |r| AuditEntry {
            id: r.id,
            campus_id: r.campus_id,
            actor_id: r.actor_id,
            action: r.action,
            target_type: r.target_type,
            target_id: r.target_id,
            detail: r.detail,
            request_id: r.request_id,
            created_at: r.created_at,
        })),
    )
}

/// Registers the routes of this module.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/audit", web::get().to(list_audit));
}
