//! The pure business model: entities, invariants, state machines and tenant scoping.
//!
//! L0: depends on std, serde, uuid, chrono and thiserror only — no I/O crates (`make
//! check-layers` enforces it), so everything here is tested without a database.
