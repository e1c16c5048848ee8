//! The pure business model: entities, invariants, state machines and tenant scoping.
//!
//! L0: depends on std, serde (and serde_json, a data crate), uuid, chrono and thiserror only — no I/O crates (`make
//! check-layers` enforces it), so everything here is tested without a database.

pub mod access;
pub mod error;
pub mod event;
pub mod flow;
pub mod ids;
pub mod job;
pub mod money;
pub mod order;
pub mod user;
pub mod validate;

pub use self::error::DomainError;
pub use self::event::EventType;
pub use self::ids::{CampusId, MenuItemId, OrderId, SessionId, UserId, VendorId};
pub use self::money::Cents;
pub use self::order::OrderStatus;
pub use self::user::{Actor, Role};
