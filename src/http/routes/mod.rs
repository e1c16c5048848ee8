//! Route handlers, one module per resource family: extract → one service call → DTO. Each
//! module that needs more than the per-IP and per-user rate limits declares its routes' rate
//! classes next to its `routes` ([`RateClasses`]); `http::edge::rate_limit` looks them up
//! with [`rate_classes`]. Likewise a module whose routes take another body limit than the
//! JSON extractor's declares their body class ([`BodyClasses`]); `http::edge::admission`
//! looks it up with [`body_class`].

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

/// The body limit a route has instead of the JSON extractor's `JSON_BODY_LIMIT_BYTES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyClass {
    /// A JSON body of credentials only: the smaller `AUTH_BODY_LIMIT_BYTES`, enforced before
    /// the handler runs (on the declared length, then on the bytes read).
    Credentials,
}

/// A module's body classes: (method, exact path, class).
pub type BodyClasses = &'static [(Method, &'static str, BodyClass)];

/// The body class of a request, from the tables the route modules declare (none for most
/// routes).
pub fn body_class(method: &Method, path: &str) -> Option<BodyClass> {
    [auth::BODY_CLASSES, web_auth::BODY_CLASSES]
        .into_iter()
        .flatten()
        .find(|(m, p, _)| m == method && *p == path)
        .map(|(_, _, class)| *class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_routes_declare_their_body_class() {
        for path in [
            "/auth/login",
            "/auth/register",
            "/auth/refresh",
            "/auth/web/login",
        ] {
            assert_eq!(
                body_class(&Method::POST, path),
                Some(BodyClass::Credentials),
                "{path}"
            );
            assert_eq!(body_class(&Method::GET, path), None, "{path}");
        }
        for path in [
            "/auth/logout",
            "/auth/web/refresh",
            "/orders",
            "/auth/login/",
        ] {
            assert_eq!(body_class(&Method::POST, path), None, "{path}");
        }
    }
}
