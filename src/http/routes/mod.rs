//! Route handlers, one module per resource family: extract → one service call → DTO.

pub mod admin;
pub mod auth;
pub mod catalog;
pub mod console;
pub mod flows;
pub mod jobs;
pub mod orders;
pub mod web_auth;
