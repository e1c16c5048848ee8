//! `/auth/*` and `/me*`: accounts, sessions, devices.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::Ctx;
use crate::http::dto::{Data, data};
use crate::http::error::{ApiError, ProblemBody};
use crate::http::extract::{Authed, JsonBody};
use crate::service::{auth, devices};

/// Registration form.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterRequest {
    /// E-mail; its domain decides the campus.
    #[schema(
        max_length = 254,
        pattern = r"^[\t\n\x0b\f\r ]*[^\t\n\x0b\f\r @]+@[^\t\n\x0b\f\r @.][^\t\n\x0b\f\r @]*\.[^\t\n\x0b\f\r @]*[^\t\n\x0b\f\r @.][\t\n\x0b\f\r ]*$"
    )]
    pub email: String,
    /// 8 to 128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    /// Shown to vendors on orders (1 to 200 characters, not only spaces).
    #[schema(min_length = 1, max_length = 200, pattern = r"[^\t\n\x0b\f\r ]")]
    pub display_name: String,
}

/// Login form.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoginRequest {
    /// E-mail.
    pub email: String,
    /// Password.
    pub password: String,
}

/// Refresh form.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token from the last login or refresh (single use).
    pub refresh_token: String,
}

/// A user as shown to themselves.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserResponse {
    /// User id.
    pub id: Uuid,
    /// E-mail.
    pub email: String,
    /// Display name.
    pub display_name: String,
    /// `student`, `vendor_staff`, `campus_admin` or `platform_admin`.
    pub role: String,
    /// Campus.
    pub campus_id: Option<Uuid>,
    /// Vendor (vendor staff).
    pub vendor_id: Option<Uuid>,
    /// The session of this request.
    pub session_id: Uuid,
}

/// Tokens and the user they belong to.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionResponse {
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Short-lived JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Single-use token for `POST /auth/refresh`.
    pub refresh_token: String,
    /// The user.
    pub user: UserResponse,
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

fn session_dto((me, tokens): (auth::Me, auth::Tokens)) -> Data<SessionResponse> {
    data(SessionResponse {
        token_type: "Bearer",
        access_token: tokens.access_token,
        expires_in: tokens.expires_in,
        refresh_token: tokens.refresh_token,
        user: user_dto(me),
    })
}

fn user_agent(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Register a student account (the e-mail domain picks the campus) and log in.
#[utoipa::path(post, path = "/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 201, body = inline(Data<SessionResponse>)), (status = 400, body = ProblemBody), (status = 409, body = ProblemBody)))]
pub async fn register(
    ctx: web::Data<Ctx>,
    req: HttpRequest,
    body: JsonBody<RegisterRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let out = auth::register(
        &ctx,
        auth::Registration {
            email: body.email,
            password: body.password,
            display_name: body.display_name,
            user_agent: user_agent(&req),
        },
    )
    .await?;
    Ok(HttpResponse::Created().json(session_dto(out)))
}

/// Log in with e-mail and password.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = inline(Data<SessionResponse>)), (status = 401, body = ProblemBody)))]
pub async fn login(
    ctx: web::Data<Ctx>,
    req: HttpRequest,
    body: JsonBody<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let out = auth::login(&ctx, &body.email, body.password, user_agent(&req)).await?;
    Ok(HttpResponse::Ok().json(session_dto(out)))
}

/// Trade a refresh token for new tokens; reusing an old refresh token revokes the session.
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = inline(Data<SessionResponse>)), (status = 401, body = ProblemBody)))]
pub async fn refresh(
    ctx: web::Data<Ctx>,
    body: JsonBody<RefreshRequest>,
) -> Result<HttpResponse, ApiError> {
    let out = auth::refresh(&ctx, &body.refresh_token).await?;
    Ok(HttpResponse::Ok().json(session_dto(out)))
}

/// Log out: revoke the current session on every instance at once.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = ProblemBody)))]
pub async fn logout(ctx: web::Data<Ctx>, Authed(actor): Authed) -> Result<HttpResponse, ApiError> {
    auth::logout(&ctx, &actor).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The caller.
#[utoipa::path(get, path = "/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = inline(Data<UserResponse>)), (status = 401, body = ProblemBody)))]
pub async fn me(ctx: web::Data<Ctx>, Authed(actor): Authed) -> Result<HttpResponse, ApiError> {
    let me = auth::me(&ctx, &actor).await?;
    Ok(HttpResponse::Ok().json(data(user_dto(me))))
}

/// A live session.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfoResponse {
    /// Session id.
    pub id: Uuid,
    /// Opened at.
    pub created_at: DateTime<Utc>,
    /// Last login or refresh.
    pub last_used_at: DateTime<Utc>,
    /// Expires unless refreshed.
    pub expires_at: DateTime<Utc>,
    /// User agent at login.
    pub user_agent: Option<String>,
    /// The session making this request.
    pub current: bool,
}

/// The caller's live sessions.
#[utoipa::path(get, path = "/me/sessions", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = inline(Data<Vec<SessionInfoResponse>>)), (status = 401, body = ProblemBody)))]
pub async fn list_sessions(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
) -> Result<HttpResponse, ApiError> {
    let sessions = auth::list_sessions(&ctx, &actor).await?;
    let dto: Vec<SessionInfoResponse> = sessions
        .into_iter()
        .map(|s| SessionInfoResponse {
            id: s.id.into_inner(),
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            expires_at: s.expires_at,
            user_agent: s.user_agent,
            current: s.current,
        })
        .collect();
    Ok(HttpResponse::Ok().json(data(dto)))
}

/// Revoke one of the caller's sessions.
#[utoipa::path(delete, path = "/me/sessions/{id}", tag = "auth", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Session id")),
    responses((status = 204), (status = 401, body = ProblemBody), (status = 404, body = ProblemBody)))]
pub async fn revoke_session(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    auth::revoke_session(&ctx, &actor, id.into_inner().into()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A push token registration.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceRequest {
    /// `fcm`, `apns`, `onesignal` or `webpush`.
    #[schema(schema_with = crate::http::dto::platform_schema)]
    pub platform: String,
    /// The provider's device token (1 to 4096 bytes, not only spaces).
    #[schema(min_length = 1, max_length = 4096, pattern = r"[^\t\n\x0b\f\r ]")]
    pub token: String,
}

/// A registered device.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceResponse {
    /// Device id.
    pub id: Uuid,
    /// Platform.
    pub platform: String,
    /// Registered at.
    pub created_at: DateTime<Utc>,
}

/// Register a push token for the caller.
#[utoipa::path(post, path = "/me/devices", tag = "auth", security(("bearer" = [])), request_body = DeviceRequest,
    responses((status = 201, body = inline(Data<DeviceResponse>)), (status = 400, body = ProblemBody), (status = 401, body = ProblemBody)))]
pub async fn register_device(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    body: JsonBody<DeviceRequest>,
) -> Result<HttpResponse, ApiError> {
    let d = devices::register_device(&ctx, &actor, &body.platform, &body.token).await?;
    Ok(HttpResponse::Created().json(data(DeviceResponse {
        id: d.id,
        platform: d.platform,
        created_at: d.created_at,
    })))
}

/// Forget one of the caller's devices.
#[utoipa::path(delete, path = "/me/devices/{id}", tag = "auth", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Device id")),
    responses((status = 204), (status = 401, body = ProblemBody), (status = 404, body = ProblemBody)))]
pub async fn delete_device(
    ctx: web::Data<Ctx>,
    Authed(actor): Authed,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    devices::delete_device(&ctx, &actor, id.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Rate classes of this module's routes (`http::edge::rate_limit`).
pub const RATE_CLASSES: super::RateClasses = &[
    (
        actix_web::http::Method::POST,
        "/auth/login",
        &[super::RateClass::Auth, super::RateClass::Login],
    ),
    (
        actix_web::http::Method::POST,
        "/auth/register",
        &[super::RateClass::Auth],
    ),
];

/// Body classes of this module's routes (`http::edge::admission`): credentials only.
pub const BODY_CLASSES: super::BodyClasses = &[
    (
        actix_web::http::Method::POST,
        "/auth/login",
        super::BodyClass::Credentials,
    ),
    (
        actix_web::http::Method::POST,
        "/auth/register",
        super::BodyClass::Credentials,
    ),
    (
        actix_web::http::Method::POST,
        "/auth/refresh",
        super::BodyClass::Credentials,
    ),
];

/// Registers the routes of this module.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/auth/register", web::post().to(register))
        .route("/auth/login", web::post().to(login))
        .route("/auth/refresh", web::post().to(refresh))
        .route("/auth/logout", web::post().to(logout))
        .route("/me", web::get().to(me))
        .route("/me/sessions", web::get().to(list_sessions))
        .route("/me/sessions/{id}", web::delete().to(revoke_session))
        .route("/me/devices", web::post().to(register_device))
        .route("/me/devices/{id}", web::delete().to(delete_device));
}
