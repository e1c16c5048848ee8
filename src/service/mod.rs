//! Use cases shared by every role. Each opens at most one transaction (through
//! `store::Db::tx`) and returns [`Error`], which `http` maps to status codes.
//!
//! L2: depends on `domain`, `store`, `kv`, `app::Ctx` and the leaf utilities.

pub mod health;
