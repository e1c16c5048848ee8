//! `/auth/web/*`: sign-in for the browser apps (`/board/`, `/console/`). The same accounts
//! and sessions as `/auth/*`, but the tokens travel in HttpOnly cookies (see
//! [`crate::http::cookie`]) and the body carries only the user and the session's CSRF token.

use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{LoginRequest, UserResponse};
use crate::app::Ctx;
use crate::http::cookie::{self, REFRESH_COOKIE};
use crate::http::dto::{Data, data};
use crate::http::error::{ApiError, ProblemBody};
use crate::http::extract::{Authed, JsonBody};
use crate::service::credentials::SESSION_TTL;
use crate::service::{self, auth};

/// A browser session: who is signed in, and the token to send in `X-CSRF-Token` on writes.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebSessionResponse {
    /// The user.
    pub user: UserResponse,
    /// Send it back in `X-CSRF-Token` on every POST/PUT/PATCH/DELETE made with the cookie.
    pub csrf_token: String,
}

fn user_dto(me: auth::Me) -> UserResponse {
    UserResponse {
        id: me.id.into_inner(),
        email: me.email,
        display_name: me.display_name,
        role: me.role.as_str().to_owned(),
        campus_id: me.campus_id.map(|c| c.into_inner()),
        vendor_id: me.vendor_id.map(|v| v.into_inner()),
        session_id: me.session_id.into_inner(),
    }
}

fn session_ttl_secs() -> i64 {
    i64::try_from(SESSION_TTL.as_secs()).unwrap_or(i64::MAX)
}

/// The response of a login or refresh: cookies set, user and CSRF token in the body.
fn signed_in(
    ctx: &Ctx,
    req: &HttpRequest,
    mut res: HttpResponseBuilder,
    (me, tokens): (auth::Me, auth::Tokens),
) -> Result<HttpResponse, ApiError> {
    let csrf_token = cookie::csrf_token(ctx, me.session_id.into_inner())?;
    for c in cookie::session_cookies(
        req,
        tokens.access_token,
        tokens.refresh_token,
        session_ttl_secs(),
    ) {
        res.cookie(c);
    }
    Ok(res.json(data(WebSessionResponse {
        user: user_dto(me),
        csrf_token,
    })))
}

fn signed_out(req: &HttpRequest, mut res: HttpResponseBuilder) -> HttpResponse {
    for c in cookie::cleared_cookies(req) {
        res.cookie(c);
    }
    res.finish()
}

fn user_agent(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Sign in a browser: sets the HttpOnly session cookies (no token in the body).
#[utoipa::path(post, path = "/auth/web/login", operation_id = "web_login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = inline(Data<WebSessionResponse>),
        headers(("Set-Cookie" = String, description = "itsur_access and itsur_refresh: HttpOnly, SameSite=Strict, Secure over TLS"))),
        (status = 401, body = ProblemBody), (status = 403, body = ProblemBody, description = "Origin missing or not this server")))]
pub async fn login(
    ctx: web::Data<Ctx>,
    req: HttpRequest,
    body: JsonBody<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    cookie::check_origin(&req)?;
    let body = body.into_inner();
    let out = auth::login(&ctx, &body.email, body.password, user_agent(&req)).await?;
    signed_in(&ctx, &req, HttpResponse::Ok(), out)
}

/// Rotate the browser's tokens with the refresh cookie (single use, like `/auth/refresh`).
#[utoipa::path(post, path = "/auth/web/refresh", operation_id = "web_refresh", tag = "auth",
    responses((status = 200, body = inline(Data<WebSessionResponse>)),
        (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn refresh(ctx: web::Data<Ctx>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    cookie::check_origin(&req)?;
    let Some(token) = req.cookie(REFRESH_COOKIE).map(|c| c.value().to_owned()) else {
        return Err(service::Error::Unauthenticated("no session cookie").into());
    };
    match auth::refresh(&ctx, &token).await {
        Ok(out) => signed_in(&ctx, &req, HttpResponse::Ok(), out),
        Err(e) => {
            // A dead refresh token: clear the cookies with the 401 so the page shows sign-in.
            let err = ApiError::from(e);
            let mut res = actix_web::ResponseError::error_response(&err);
            for c in cookie::cleared_cookies(&req) {
                // Cookies built here always serialise to a valid header value.
                let _ = res.add_cookie(&c);
            }
            Ok(res)
        }
    }
}

/// The browser's session: the user and the CSRF token (after a page load).
#[utoipa::path(get, path = "/auth/web/session", tag = "auth", security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = inline(Data<WebSessionResponse>)), (status = 401, body = ProblemBody)))]
pub async fn session(ctx: web::Data<Ctx>, Authed(actor): Authed) -> Result<HttpResponse, ApiError> {
    let csrf_token = cookie::csrf_token(&ctx, actor.session_id.into_inner())?;
    let me = auth::me(&ctx, &actor).await?;
    Ok(HttpResponse::Ok().json(data(WebSessionResponse {
        user: user_dto(me),
        csrf_token,
    })))
}

/// Sign out: revokes the session (on every instance, like `/auth/logout`) and clears the
/// cookies. Needs `X-CSRF-Token`.
#[utoipa::path(post, path = "/auth/web/logout", operation_id = "web_logout", tag = "auth", security(("cookie" = [])),
    params(("X-CSRF-Token" = String, Header, description = "The session's CSRF token")),
    responses((status = 204), (status = 401, body = ProblemBody), (status = 403, body = ProblemBody)))]
pub async fn logout(
    ctx: web::Data<Ctx>,
    req: HttpRequest,
    Authed(actor): Authed,
) -> Result<HttpResponse, ApiError> {
    auth::logout(&ctx, &actor).await?;
    Ok(signed_out(&req, HttpResponse::NoContent()))
}

/// Rate classes of this module's routes (`http::edge::rate_limit`): the cookie login is
/// limited like the bearer one.
pub const RATE_CLASSES: super::RateClasses = &[(
    actix_web::http::Method::POST,
    "/auth/web/login",
    &[super::RateClass::Auth, super::RateClass::Login],
)];

/// Body classes of this module's routes (`http::edge::admission`): the cookie login's body
/// holds credentials only, like the bearer one's.
pub const BODY_CLASSES: super::BodyClasses = &[(
    actix_web::http::Method::POST,
    "/auth/web/login",
    super::BodyClass::Credentials,
)];

/// Registers the routes of this module.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/auth/web/login", web::post().to(login))
        .route("/auth/web/refresh", web::post().to(refresh))
        .route("/auth/web/session", web::get().to(session))
        .route("/auth/web/logout", web::post().to(logout));
}
