//! The audit trail, read by campus admins (their campus) and platform admins (everything).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Page, PageRequest, Result};
use crate::app::Ctx;
use crate::domain::{Actor, DomainError, Role};
use crate::store::audit;

pub use crate::store::audit::AuditRow;

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
) -> Result<Page<AuditRow>> {
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
    Ok(Page::new(rows, total, page))
}
