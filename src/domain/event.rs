//! Outbox events: their dotted lowercase names, the routing keys every event carries, and
//! who receives which event ([`Subscription`]) — the same rule for live WebSocket delivery
//! and for replay from the outbox table.

use serde::{Deserialize, Serialize};

use super::ids::{CampusId, UserId, VendorId};
use super::user::{Actor, Role};

/// Kinds of outbox events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// A student placed an order.
    OrderCreated,
    /// An order moved to another state.
    OrderStatusChanged,
}

impl EventType {
    /// The stored and published name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderCreated => "order.created",
            Self::OrderStatusChanged => "order.status_changed",
        }
    }
}

/// The tenant keys an event is routed by (columns `campus_id`, `vendor_id`, `user_id` of
/// `outbox_events`). A missing key means the event is not about such a tenant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRouting {
    /// Campus the event belongs to.
    pub campus_id: Option<CampusId>,
    /// Vendor the event belongs to.
    pub vendor_id: Option<VendorId>,
    /// User (student) the event belongs to.
    pub user_id: Option<UserId>,
}

/// The tenant part of a [`Subscription`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tenant {
    /// Nothing beyond the actor's own events (students).
    Own,
    /// Events whose `vendor_id` is this vendor (vendor staff).
    Vendor(VendorId),
    /// Events whose `campus_id` is this campus (campus admins).
    Campus(CampusId),
    /// Every event (platform admins).
    All,
}

/// Which events an actor receives: the live form of `domain::access`. Everyone gets the
/// events addressed to their own user (their orders, their jobs); vendor staff also get
/// their vendor's, a campus admin their campus's, a platform admin everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subscription {
    /// The actor's own user.
    pub user: UserId,
    /// What the actor's role adds.
    pub tenant: Tenant,
}

impl Subscription {
    /// The subscription of an actor; None when the actor's row lacks its tenant (a vendor
    /// staff member without a vendor), which then receives nothing.
    pub fn for_actor(actor: &Actor) -> Option<Self> {
        let tenant = match actor.role {
            Role::Student => Tenant::Own,
            Role::VendorStaff => Tenant::Vendor(actor.vendor_id?),
            Role::CampusAdmin => Tenant::Campus(actor.campus_id?),
            Role::PlatformAdmin => Tenant::All,
        };
        Some(Self {
            user: actor.user_id,
            tenant,
        })
    }

    /// True when an event with these routing keys reaches this subscription.
    pub fn matches(&self, routing: &EventRouting) -> bool {
        routing.user_id == Some(self.user)
            || match self.tenant {
                Tenant::Own => false,
                Tenant::Vendor(v) => routing.vendor_id == Some(v),
                Tenant::Campus(c) => routing.campus_id == Some(c),
                Tenant::All => true,
            }
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
    fn subscriptions_follow_tenancy() {
        let (campus, vendor) = (CampusId::new(), VendorId::new());
        let student = actor(Role::Student, Some(campus), None);
        let event = EventRouting {
            campus_id: Some(campus),
            vendor_id: Some(vendor),
            user_id: Some(student.user_id),
        };
        let sees = |a: &Actor| Subscription::for_actor(a).is_some_and(|s| s.matches(&event));
        assert!(sees(&student));
        assert!(!sees(&actor(Role::Student, Some(campus), None)));
        assert!(sees(&actor(Role::VendorStaff, Some(campus), Some(vendor))));
        assert!(!sees(&actor(
            Role::VendorStaff,
            Some(campus),
            Some(VendorId::new())
        )));
        assert!(sees(&actor(Role::CampusAdmin, Some(campus), None)));
        assert!(!sees(&actor(
            Role::CampusAdmin,
            Some(CampusId::new()),
            None
        )));
        assert!(sees(&actor(Role::PlatformAdmin, None, None)));
        // A staff row without its vendor receives nothing rather than everything.
        assert_eq!(
            Subscription::for_actor(&actor(Role::VendorStaff, Some(campus), None)),
            None
        );
        // An event without routing keys reaches only platform admins.
        let bare = EventRouting::default();
        assert!(!Subscription::for_actor(&student).unwrap().matches(&bare));
        assert!(
            Subscription::for_actor(&actor(Role::PlatformAdmin, None, None))
                .unwrap()
                .matches(&bare)
        );
        // Everyone receives what is addressed to them (a campus admin's own report job).
        let admin = actor(Role::CampusAdmin, Some(campus), None);
        let own = EventRouting {
            user_id: Some(admin.user_id),
            ..EventRouting::default()
        };
        assert!(Subscription::for_actor(&admin).unwrap().matches(&own));
    }
}
