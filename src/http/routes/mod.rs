//! Route handlers, one module per resource family: extract → one service call → DTO. Each
//! module that needs more than the per-IP and per-user rate limits declares its routes' rate
//! classes next to its `routes` ([`RateClasses`]); `http::edge::rate_limit` looks them up
//! with [`rate_classes`].

use actix_web::http::Method;

pub mod admin;
pub mod auth;
pub mod catalog;
pub mod console;
pub mod flows;
pub mod jobs;
pub mod orders;
pub mod web_auth;

/// A rate-limit bucket a route adds to the per-IP and per-user ones (`RATE_LIMIT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateClass {
    /// Credential endpoints, per client address (`RATE_LIMIT_AUTH`).
    Auth,
    /// Sign-ins, per address and e-mail read from the body (`RATE_LIMIT_LOGIN`).
    Login,
    /// Placing orders, per user (per address without a valid token) (`RATE_LIMIT_ORDERS`).
    Orders,
}

/// A module's rate classes: (method, exact path, classes in the order they are checked).
pub type RateClasses = &'static [(Method, &'static str, &'static [RateClass])];

/// The rate classes of a request, from the tables the route modules declare (none for most
/// routes).
pub fn rate_classes(method: &Method, path: &str) -> &'static [RateClass] {
    [
        auth::RATE_CLASSES,
        web_auth::RATE_CLASSES,
        orders::RATE_CLASSES,
    ]
    .into_iter()
    .flatten()
    .find(|(m, p, _)| m == method && *p == path)
    .map_or(&[], |(_, _, classes)| *classes)
}
