//! Tenant scoping: who may read or change what. Out-of-tenant ⇒ not visible (callers answer
//! 404); same tenant but the wrong role ⇒ `Forbidden` (403).

use super::error::DomainError;
use super::ids::{CampusId, UserId, VendorId};
use super::user::{Actor, Role};

/// The tenant keys of an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderScope {
    /// The student who placed it.
    pub user_id: UserId,
    /// The vendor it was placed with.
    pub vendor_id: VendorId,
    /// The vendor's campus.
    pub campus_id: CampusId,
}

/// True when the actor belongs to the campus (platform admins belong to all).
pub fn can_read_campus(actor: &Actor, campus: CampusId) -> bool {
    actor.role == Role::PlatformAdmin || actor.campus_id == Some(campus)
}

/// True when the actor may see the order: its student, its vendor's staff, its campus's
/// admin, or a platform admin.
pub fn can_read_order(actor: &Actor, order: &OrderScope) -> bool {
    match actor.role {
        Role::Student => actor.user_id == order.user_id,
        Role::VendorStaff => actor.vendor_id == Some(order.vendor_id),
        Role::CampusAdmin => actor.campus_id == Some(order.campus_id),
        Role::PlatformAdmin => true,
    }
}

/// True when the actor works the order from the vendor side (staff of its vendor, admin of
/// its campus, platform admin).
pub fn is_vendor_side(actor: &Actor, order: &OrderScope) -> bool {
    match actor.role {
        Role::Student => false,
        Role::VendorStaff => actor.vendor_id == Some(order.vendor_id),
        Role::CampusAdmin => actor.campus_id == Some(order.campus_id),
        Role::PlatformAdmin => true,
    }
}

/// Whether the actor may edit the menu of `vendor` (on `campus`). Call after checking the
/// vendor is visible at all (`can_read_campus`).
pub fn can_manage_menu(
    actor: &Actor,
    vendor: VendorId,
    campus: CampusId,
) -> Result<(), DomainError> {
    let ok = match actor.role {
        Role::Student => false,
        Role::VendorStaff => actor.vendor_id == Some(vendor),
        Role::CampusAdmin => actor.campus_id == Some(campus),
        Role::PlatformAdmin => true,
    };
    if ok {
        Ok(())
    } else {
        Err(DomainError::forbidden(
            "only the vendor's staff or the campus admin may change this menu",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::SessionId;

    fn actor(role: Role, campus: Option<CampusId>, vendor: Option<VendorId>) -> Actor {
        Actor {
            user_id: UserId::new(),
            session_id: SessionId::new(),
            role,
            campus_id: campus,
            vendor_id: vendor,
        }
    }

    #[test]
    fn order_visibility_follows_tenancy() {
        let (campus, other_campus) = (CampusId::new(), CampusId::new());
        let (vendor, other_vendor) = (VendorId::new(), VendorId::new());
        let student = actor(Role::Student, Some(campus), None);
        let order = OrderScope {
            user_id: student.user_id,
            vendor_id: vendor,
            campus_id: campus,
        };
        assert!(can_read_order(&student, &order));
        assert!(!can_read_order(
            &actor(Role::Student, Some(campus), None),
            &order
        ));
        assert!(can_read_order(
            &actor(Role::VendorStaff, Some(campus), Some(vendor)),
            &order
        ));
        assert!(!can_read_order(
            &actor(Role::VendorStaff, Some(campus), Some(other_vendor)),
            &order
        ));
        assert!(can_read_order(
            &actor(Role::CampusAdmin, Some(campus), None),
            &order
        ));
        assert!(!can_read_order(
            &actor(Role::CampusAdmin, Some(other_campus), None),
            &order
        ));
        assert!(can_read_order(
            &actor(Role::PlatformAdmin, None, None),
            &order
        ));
        assert!(!is_vendor_side(&student, &order));
    }

    #[test]
    fn menu_management() {
        let (campus, vendor) = (CampusId::new(), VendorId::new());
        assert!(
            can_manage_menu(
                &actor(Role::VendorStaff, Some(campus), Some(vendor)),
                vendor,
                campus
            )
            .is_ok()
        );
        assert!(
            can_manage_menu(
                &actor(Role::VendorStaff, Some(campus), Some(VendorId::new())),
                vendor,
                campus
            )
            .is_err()
        );
        assert!(
            can_manage_menu(
                &actor(Role::CampusAdmin, Some(campus), None),
                vendor,
                campus
            )
            .is_ok()
        );
        assert!(
            can_manage_menu(&actor(Role::Student, Some(campus), None), vendor, campus).is_err()
        );
        assert!(can_read_campus(
            &actor(Role::PlatformAdmin, None, None),
            campus
        ));
        assert!(!can_read_campus(
            &actor(Role::Student, Some(CampusId::new()), None),
            campus
        ));
    }
}
