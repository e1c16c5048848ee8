//! The order state machine: `placed → accepted → preparing → ready → picked_up`, and
//! `cancelled` from `placed` (the student or the vendor side) or `accepted` (vendor side
//! only), which restores stock. Everything else is a conflict (409).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::access::{OrderScope, is_vendor_side};
use super::error::DomainError;
use super::money::Cents;
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

/// What the pricing rules need to know about a menu item an order asks for.
#[derive(Debug, Clone, Copy)]
pub struct ItemTerms<'a> {
    /// Its name (for the conflict message).
    pub name: &'a str,
    /// Unit price.
    pub price: Cents,
    /// Units left.
    pub stock: i32,
    /// Orderable now.
    pub available: bool,
}

/// Prices the lines of a new order and checks them against their items: `lines` holds, per
/// requested line in request order, its item's terms (None when the vendor has no such item)
/// and the quantity. An unknown item is a field error naming its line (all of them are
/// reported together); an unavailable item or too little stock is a conflict; a total that
/// does not fit is invalid. Returns the total.
pub fn price_order(lines: &[(Option<ItemTerms<'_>>, i32)]) -> Result<Cents, DomainError> {
    let mut errors = Vec::new();
    let mut total = Cents::ZERO;
    for (i, (terms, quantity)) in lines.iter().enumerate() {
        let Some(item) = terms else {
            errors.push((
                format!("items[{i}].menuItemId"),
                "no such item at this vendor".to_owned(),
            ));
            continue;
        };
        if !item.available {
            return Err(DomainError::Conflict {
                reason: format!("'{}' is not available", item.name),
            });
        }
        if item.stock < *quantity {
            return Err(DomainError::Conflict {
                reason: format!("not enough stock for '{}' ({} left)", item.name, item.stock),
            });
        }
        total = item
            .price
            .checked_mul(i64::from(*quantity))
            .and_then(|c| total.checked_add(c))
            .ok_or_else(|| DomainError::Invalid {
                field_errors: vec![("items".to_owned(), "order total too large".to_owned())],
            })?;
    }
    if errors.is_empty() {
        Ok(total)
    } else {
        Err(DomainError::Invalid {
            field_errors: errors,
        })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn pricing_sums_the_lines_and_applies_the_stock_rules() {
        let item = |stock, available| ItemTerms {
            name: "tea",
            price: Cents(250),
            stock,
            available,
        };
        assert_eq!(
            price_order(&[(Some(item(5, true)), 2), (Some(item(1, true)), 1)]),
            Ok(Cents(750))
        );
        assert!(matches!(
            price_order(&[(None, 1), (Some(item(5, true)), 1), (None, 2)]),
            Err(DomainError::Invalid { field_errors }) if field_errors.len() == 2
                && field_errors[1].0 == "items[2].menuItemId"
        ));
        assert!(matches!(
            price_order(&[(Some(item(1, true)), 2)]),
            Err(DomainError::Conflict { reason }) if reason == "not enough stock for 'tea' (1 left)"
        ));
        assert!(matches!(
            price_order(&[(Some(item(9, false)), 1)]),
            Err(DomainError::Conflict { .. })
        ));
        let dear = ItemTerms {
            price: Cents(i64::MAX),
            ..item(9, true)
        };
        assert!(matches!(
            price_order(&[(Some(dear), 2)]),
            Err(DomainError::Invalid { .. })
        ));
    }
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
