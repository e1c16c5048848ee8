//! `GET /ws`: the realtime gateway of `serve` (protocol in [`protocol`], one connection in
//! [`conn`], the instance's Redis subscription in [`gateway`]).
//!
//! The upgrade authenticates with the access token — `Authorization: Bearer`, a
//! `bearer.<token>` entry of `Sec-WebSocket-Protocol` (browsers cannot set headers), the
//! browser apps' HttpOnly session cookie (then the `Origin` must be this server: no
//! cross-site WebSocket hijacking), or `?token=` — and is admitted by the hub's per-IP and per-user caps (429 beyond them).
//! Settings: `WS_*` (see `config::WsArgs`).

pub mod conn;
pub mod gateway;
pub mod protocol;

use std::net::{IpAddr, Ipv4Addr};

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use self::protocol::{BEARER_PROTOCOL_PREFIX, SUBPROTOCOL};
use crate::app::Ctx;
use crate::domain::event::{AggregateType, Subscription};
use crate::http::error::{ApiError, Code};
use crate::http::extract::bearer_token;
use crate::http::{cookie, edge};
use crate::realtime::hub::{Admission, Rejected};
use crate::service;

/// Query parameters of the upgrade.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    /// Access token, for clients that can set neither a header nor a sub-protocol.
    pub token: Option<String>,
    /// Resume cursor: replay the events after this id before any live event.
    pub after: Option<i64>,
    /// Narrow the stream to these topics, comma-separated: `flow-run:<id>` (a flow run's
    /// `flow_run.*` and `flow_step.*` events). Tenancy still applies; a topic the caller may
    /// not see answers 404.
    pub topics: Option<String>,
}

/// Parses and checks `?topics=`: each must be a `flow-run:<id>` the actor may read.
async fn topics_of(
    ctx: &Ctx,
    actor: &crate::domain::Actor,
    raw: Option<&str>,
) -> Result<Vec<conn::Topic>, ApiError> {
    let mut out = Vec::new();
    for t in raw
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let id = t
            .strip_prefix("flow-run:")
            .and_then(|id| id.parse::<uuid::Uuid>().ok())
            .ok_or_else(|| {
                ApiError::validation(vec![crate::http::error::FieldError {
                    field: "topics".to_owned(),
                    message: format!("unknown topic `{t}`: expected flow-run:<id>"),
                }])
            })?;
        service::flows::get_run(ctx, actor, id).await?;
        out.push(conn::Topic {
            aggregate_type: AggregateType::FlowRun.as_str(),
            id,
        });
    }
    Ok(out)
}

/// Where the token of an upgrade came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenSource {
    HeaderOrProtocol,
    Cookie,
    Query,
}

/// The access token of an upgrade: header, then sub-protocol, then cookie, then query.
fn token_of(req: &HttpRequest, query: &WsQuery) -> Option<(String, TokenSource)> {
    bearer_token(req)
        .or_else(|| {
            req.headers()
                .get_all("sec-websocket-protocol")
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .find_map(|p| p.strip_prefix(BEARER_PROTOCOL_PREFIX))
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
        })
        .map(|t| (t, TokenSource::HeaderOrProtocol))
        .or_else(|| cookie::access_cookie(req).map(|t| (t, TokenSource::Cookie)))
        .or_else(|| {
            query
                .token
                .clone()
                .filter(|t| !t.is_empty())
                .map(|t| (t, TokenSource::Query))
        })
}

/// The address the per-IP cap counts: the edge layer's rule (the peer, or the right-most
/// untrusted `X-Forwarded-For` hop when the peer is a trusted proxy).
fn client_ip(ctx: &Ctx, req: &HttpRequest) -> IpAddr {
    edge::client_ip(
        req.peer_addr().map(|a| a.ip()),
        req.headers(),
        &ctx.config.edge.trusted_proxies,
    )
    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// Upgrades to a WebSocket carrying the caller's events (see `protocol`).
pub async fn connect(
    ctx: web::Data<Ctx>,
    req: HttpRequest,
    query: web::Query<WsQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (token, source) = token_of(&req, &query)
        .ok_or_else(|| ApiError::from(service::Error::Unauthenticated("missing access token")))?;
    if source == TokenSource::Cookie {
        // Browsers attach cookies to cross-site WebSocket handshakes too: only this origin.
        cookie::check_origin(&req)?;
    }
    let actor = service::auth::authenticate(&ctx, &token).await?;
    let topics = topics_of(&ctx, &actor, query.topics.as_deref()).await?;
    let subscription = Subscription::for_actor(&actor)
        .ok_or_else(|| ApiError::new(Code::Forbidden, "this account has no tenant to follow"))?;
    let subscriber = ctx
        .hub
        .subscribe(Admission {
            subscription,
            ip: client_ip(&ctx, &req),
        })
        .map_err(|r| match r {
            Rejected::TooManyForIp | Rejected::TooManyForUser => {
                ApiError::retry_after(Code::TooManyConnections, r.to_string(), 5)
            }
            Rejected::ShuttingDown => ApiError::unavailable(r.to_string(), 1),
        })?;
    let (res, session, stream) = actix_ws::handle_with_protocols(&req, body, &[SUBPROTOCOL])
        .map_err(|_| {
            ApiError::new(
                Code::WebsocketRequired,
                "GET /ws expects a WebSocket upgrade",
            )
        })?;
    actix_web::rt::spawn(conn::run(
        ctx.get_ref().clone(),
        actor,
        subscription,
        subscriber,
        session,
        stream,
        query.after,
        topics,
    ));
    Ok(res)
}

/// Registers `GET /ws`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(connect));
}
