//! The audit trail, read by campus admins (their campus) and platform admins (everything).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Page, PageRequest, Result};
use crate::app::Ctx;
use crate::domain::{Actor, DomainError, Role};
use crate::store::audit;

use crate::store::audit::AuditRow;

/// One audit entry as the use cases answer it (store rows stay below `service`).
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// Id.
    pub id: i64,
    /// Campus.
    pub campus_id: Option<Uuid>,
    /// Who.
    pub actor_id: Option<Uuid>,
    /// What (`order.placed`, …).
    pub action: String,
    /// Kind of target.
    pub target_type: String,
    /// Target id.
    pub target_id: String,
    /// Detail (never secrets).
    pub detail: serde_json::Value,
    /// Request id.
    pub request_id: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

impl From<AuditRow> for AuditEntry {
    fn from(r: AuditRow) -> Self {
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

/// Filters of [`list_audit`].
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this actor's entries.
    pub actor_id: Option<Uuid>,
    /// Only this action (e.g. `order.placed`).
    pub action: Option<String>,
    /// Not before.
    pub from: Option<DateTime<Utc>>,
    /// Before.
    pub to: Option<DateTime<Utc>>,
}

/// Audit entries the actor may read, newest first.
pub async fn list_audit(
    ctx: &Ctx,
    actor: &Actor,
    filter: AuditFilter,
    page: PageRequest,
) -> Result<Page<AuditEntry>> {
    let campus = match actor.role {
        Role::CampusAdmin => Some(
            actor
                .campus_id
                .ok_or_else(|| anyhow::anyhow!("campus admin without campus"))?
                .into_inner(),
        ),
        Role::PlatformAdmin => None,
        Role::Student | Role::VendorStaff => {
            return Err(DomainError::Forbidden {
                reason: "only administrators read the audit log".to_owned(),
            }
            .into());
        }
    };
    let mut conn = ctx.db.read_conn().await?;
    let query = audit::AuditQuery {
        campus_id: campus,
        actor_id: filter.actor_id,
        action: filter.action,
        from: filter.from,
        to: filter.to,
    };
    let (rows, total) = audit::list(&mut conn, &query, page.limit, page.offset).await?;
    let entries = rows.into_iter().map(AuditEntry::from).collect();
    Ok(Page::new(entries, total, page))
}
