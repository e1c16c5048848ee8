//! Browser sessions: the same sessions as the bearer API, carried in cookies page script
//! cannot read, with CSRF protection on every cookie-authenticated write.
//!
//! - `itsur_access` holds the access token (`HttpOnly`, `SameSite=Strict`, `Path=/`,
//!   `Secure` when the request came over TLS); `itsur_refresh` holds
//!   the refresh token and is sent only to `/auth/web/` (`Path=/auth/web`). Both are set by
//!   `POST /auth/web/login` and `/auth/web/refresh` and cleared by `/auth/web/logout`.
//! - A request with an `Authorization` header is a bearer request: the cookies are ignored,
//!   so the bearer API behaves exactly as before.
//! - A cookie-authenticated request with an unsafe method (anything but GET/HEAD/OPTIONS)
//!   must carry `X-CSRF-Token` equal to [`csrf_token`] of its session (an HMAC of the session
//!   id under `JWT_SECRET`, handed to the page in the login/session response body: bound to
//!   the session, so a planted cookie cannot fix it) AND an `Origin` equal to this server's
//!   origin. `SameSite=Strict` is a third layer, not the only one. Logins and refreshes check
//!   the Origin too (login CSRF).

use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, SameSite, time};
use actix_web::http::Method;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::error::{ApiError, Code};
use crate::app::Ctx;
use crate::domain::Actor;

/// Cookie holding the access token.
pub const ACCESS_COOKIE: &str = "itsur_access";
/// Cookie holding the refresh token (sent to `/auth/web/` only).
pub const REFRESH_COOKIE: &str = "itsur_refresh";
/// Path of the refresh cookie.
pub const REFRESH_PATH: &str = "/auth/web";
/// Header carrying the CSRF token on cookie-authenticated writes.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The CSRF token of a session: HMAC-SHA256(JWT_SECRET, "csrf:" + session id), hex.
pub fn csrf_token(ctx: &Ctx, session_id: uuid::Uuid) -> Result<String, ApiError> {
    let secret = ctx.config.jwt_secret.as_ref().ok_or_else(|| {
        ApiError::internal(&anyhow::anyhow!("JWT_SECRET not configured for this role"))
    })?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .map_err(|e| ApiError::internal(&anyhow::anyhow!("hmac key: {e}")))?;
    mac.update(b"csrf:");
    mac.update(session_id.as_bytes());
    Ok(hex::encode(mac.finalize().into_bytes()))
}

fn forbidden(code: Code, detail: &'static str) -> ApiError {
    ApiError::new(code, detail)
}

/// True when the method cannot change state.
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// This server's origin as the browser sees it (`scheme://host[:port]`).
fn own_origin(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

/// The request's `Origin` must be this server's (browsers send it on every POST, PUT,
/// PATCH, DELETE and WebSocket handshake). A missing Origin is refused too.
pub fn check_origin(req: &HttpRequest) -> Result<(), ApiError> {
    let origin = req
        .headers()
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            forbidden(
                Code::OriginRequired,
                "a browser request needs an Origin header",
            )
        })?;
    if origin.eq_ignore_ascii_case(&own_origin(req)) {
        Ok(())
    } else {
        Err(forbidden(
            Code::CrossOrigin,
            "the request comes from another origin",
        ))
    }
}

/// The access token of the cookie, when the request has no `Authorization` header.
pub fn access_cookie(req: &HttpRequest) -> Option<String> {
    if req.headers().contains_key("authorization") {
        return None;
    }
    req.cookie(ACCESS_COOKIE)
        .map(|c| c.value().to_owned())
        .filter(|v| !v.is_empty())
}

/// Checks a cookie-authenticated request for `actor`: writes need the session's CSRF token
/// and this origin.
pub fn check_write(ctx: &Ctx, req: &HttpRequest, actor: &Actor) -> Result<(), ApiError> {
    if is_safe(req.method()) {
        return Ok(());
    }
    check_origin(req)?;
    let sent = req
        .headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| forbidden(Code::CsrfRequired, "missing X-CSRF-Token header"))?;
    let expected = csrf_token(ctx, actor.session_id.into_inner())?;
    if constant_time_eq(sent.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(forbidden(
            Code::CsrfMismatch,
            "X-CSRF-Token does not match the session",
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether cookies must be `Secure`: the request came over TLS, directly or as the proxy
/// says (`X-Forwarded-Proto: https`, which packaging/nginx sets). Plain-HTTP development
/// (`make run`) gets cookies a browser keeps on `http://`.
fn secure(req: &HttpRequest) -> bool {
    req.connection_info().scheme() == "https"
}

fn build(
    name: &'static str,
    value: String,
    path: &'static str,
    max_age_secs: i64,
    secure: bool,
) -> Cookie<'static> {
    Cookie::build(name, value)
        .path(path)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .max_age(time::Duration::seconds(max_age_secs))
        .finish()
}

/// The two cookies of a fresh token pair. The access cookie lives as long as the refresh
/// token so an expired access token answers 401 (and the page refreshes) instead of the
/// browser silently dropping it.
pub fn session_cookies(
    req: &HttpRequest,
    access_token: String,
    refresh_token: String,
    session_ttl_secs: i64,
) -> [Cookie<'static>; 2] {
    let secure = secure(req);
    [
        build(ACCESS_COOKIE, access_token, "/", session_ttl_secs, secure),
        build(
            REFRESH_COOKIE,
            refresh_token,
            REFRESH_PATH,
            session_ttl_secs,
            secure,
        ),
    ]
}

/// Cookies that delete both.
pub fn cleared_cookies(req: &HttpRequest) -> [Cookie<'static>; 2] {
    let secure = secure(req);
    [
        build(ACCESS_COOKIE, String::new(), "/", 0, secure),
        build(REFRESH_COOKIE, String::new(), REFRESH_PATH, 0, secure),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
