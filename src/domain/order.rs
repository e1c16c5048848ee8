//! The order state machine: `placed → accepted → preparing → ready → picked_up`, and
//! `cancelled` from `placed` (the student or the vendor side) or `accepted` (vendor side
//! only), which restores stock. Everything else is a conflict (409).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::access::{OrderScope, is_vendor_side};
use super::error::DomainError;
use super::user::{Actor, Role};

/// State of an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Placed by the student, not yet seen by the vendor.
    Placed,
    /// The vendor took it.
    Accepted,
    /// Being prepared.
    Preparing,
    /// Ready for pickup (push notification time).
    Ready,
    /// Handed over: final.
    PickedUp,
    /// Cancelled: final; stock was restored.
    Cancelled,
}

impl OrderStatus {
    /// Every state.
    pub const ALL: [Self; 6] = [
        Self::Placed,
        Self::Accepted,
        Self::Preparing,
        Self::Ready,
        Self::PickedUp,
        Self::Cancelled,
    ];

    /// The stored and serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::Accepted => "accepted",
            Self::Preparing => "preparing",
            Self::Ready => "ready",
            Self::PickedUp => "picked_up",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown status name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown order status")]
pub struct UnknownStatus;

impl FromStr for OrderStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or(UnknownStatus)
    }
}

/// Checks that `actor` may move an order (whose tenant keys are `order`) from `from` to `to`.
/// The caller has already checked the actor can see the order.
pub fn transition(
    from: OrderStatus,
    to: OrderStatus,
    actor: &Actor,
    order: &OrderScope,
) -> Result<OrderStatus, DomainError> {
    use OrderStatus as S;
    let vendor_side = is_vendor_side(actor, order);
    let owner = actor.role == Role::Student && actor.user_id == order.user_id;
    let legal = matches!(
        (from, to),
        (S::Placed, S::Accepted)
            | (S::Accepted, S::Preparing)
            | (S::Preparing, S::Ready)
            | (S::Ready, S::PickedUp)
            | (S::Placed | S::Accepted, S::Cancelled)
    );
    if !legal {
        return Err(DomainError::conflict(format!(
            "an order cannot go from {from} to {to}"
        )));
    }
    let allowed = match (from, to) {
        (S::Placed, S::Cancelled) => vendor_side || owner,
        _ => vendor_side,
    };
    if !allowed {
        return Err(if owner {
            DomainError::conflict(format!(
                "a student can only cancel a placed order, not move it from {from} to {to}"
            ))
        } else {
            DomainError::forbidden("only the vendor side moves orders along")
        });
    }
    Ok(to)
}

/// True when entering `to` gives the ordered units back to stock.
pub fn restores_stock(to: OrderStatus) -> bool {
    to == OrderStatus::Cancelled
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::{CampusId, SessionId, UserId, VendorId};

    fn setup() -> (Actor, Actor, OrderScope) {
        let campus = CampusId::new();
        let vendor = VendorId::new();
        let student = Actor {
            user_id: UserId::new(),
            session_id: SessionId::new(),
            role: Role::Student,
            campus_id: Some(campus),
            vendor_id: None,
        };
        let staff = Actor {
            user_id: UserId::new(),
            session_id: SessionId::new(),
            role: Role::VendorStaff,
            campus_id: Some(campus),
            vendor_id: Some(vendor),
        };
        let scope = OrderScope {
            user_id: student.user_id,
            vendor_id: vendor,
            campus_id: campus,
        };
        (student, staff, scope)
    }

    #[test]
    fn every_pair_of_states_is_decided() {
        use OrderStatus as S;
        let (student, staff, scope) = setup();
        let legal_for_staff = [
            (S::Placed, S::Accepted),
            (S::Accepted, S::Preparing),
            (S::Preparing, S::Ready),
            (S::Ready, S::PickedUp),
            (S::Placed, S::Cancelled),
            (S::Accepted, S::Cancelled),
        ];
        for from in S::ALL {
            for to in S::ALL {
                let staff_ok = transition(from, to, &staff, &scope).is_ok();
                assert_eq!(
                    staff_ok,
                    legal_for_staff.contains(&(from, to)),
                    "{from}->{to}"
                );
                let student_ok = transition(from, to, &student, &scope).is_ok();
                assert_eq!(
                    student_ok,
                    (from, to) == (S::Placed, S::Cancelled),
                    "student {from}->{to}"
                );
                if !staff_ok {
                    assert!(matches!(
                        transition(from, to, &staff, &scope),
                        Err(DomainError::Conflict { .. })
                    ));
                }
            }
        }
    }

    #[test]
    fn student_cannot_advance_and_strangers_are_forbidden() {
        let (student, _, scope) = setup();
        assert!(matches!(
            transition(OrderStatus::Placed, OrderStatus::Accepted, &student, &scope),
            Err(DomainError::Conflict { .. })
        ));
        let other_staff = Actor {
            vendor_id: Some(VendorId::new()),
            ..setup().1
        };
        assert!(matches!(
            transition(
                OrderStatus::Placed,
                OrderStatus::Accepted,
                &other_staff,
                &scope
            ),
            Err(DomainError::Forbidden { .. })
        ));
        assert!(restores_stock(OrderStatus::Cancelled));
        assert!(!restores_stock(OrderStatus::Ready));
        assert_eq!(
            "picked_up".parse::<OrderStatus>(),
            Ok(OrderStatus::PickedUp)
        );
        assert!("shipped".parse::<OrderStatus>().is_err());
    }
}
