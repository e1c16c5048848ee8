//! Edge protection of the API, as actix middleware (wrapped in this order, outermost first,
//! inside `middleware::request_context`):
//!
//! 1. [`security_headers`]: `X-Content-Type-Options`, `X-Frame-Options`, `Referrer-Policy`,
//!    a CSP for JSON, `Cache-Control: no-store` on authenticated and `/auth` responses, and
//!    `Strict-Transport-Security` when `HSTS_MAX_AGE_SECS` > 0. Applied to errors too.
//! 2. [`cors`]: origins from `CORS_ORIGINS`; preflights answered here (before limits and
//!    authentication); never `*` with credentials (refused by config validation).
//! 3. [`admission`]: load shedding (`MAX_IN_FLIGHT` permits per process → 503 +
//!    `Retry-After`), the smaller body limit of the routes whose module declares them
//!    credential routes (`http::routes::body_class`; 413), and the per-request deadline
//!    (`REQUEST_TIMEOUT_MS` → 503: a hanging dependency never hangs a client).
//! 4. [`rate_limit`]: the buckets `ip`, `user`, and the `auth`, `login` and `orders` classes
//!    the route modules declare (`http::routes::rate_classes`) (see `config::RateLimits`),
//!    decided by `resilience::RateLimiter`; 429 problem with
//!    `Retry-After`, and `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset` on
//!    every limited response.
//!
//! Health and metrics routes are exempt from shedding, deadlines and limits (probes must
//! answer under load). The client IP is the socket peer, or the right-most untrusted address
//! of `X-Forwarded-For` when the peer is in `TRUSTED_PROXIES`; IPv6 clients are limited per
//! /64 (one host usually owns the whole /64).

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, ResponseError, web};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::error::{ApiError, Code};
use super::routes::{BodyClass, RateClass};
use crate::app::Ctx;
use crate::config::{Cidr, Quota};
use crate::resilience::rate_limit::Decision;
use crate::service::credentials;
use crate::telemetry::{HTTP_REQUESTS_SHED_TOTAL, RATE_LIMIT_REJECTIONS_TOTAL};

/// `RateLimit-Limit`: the quota of the most constrained bucket of this request.
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`: requests left in that bucket's window.
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`: seconds until a slot of that bucket frees up.
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The Content-Security-Policy of a JSON API: nothing may load, frame or submit.
pub const CSP: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
/// Headers a browser script may send cross-origin.
const CORS_ALLOW_HEADERS: &str =
    "authorization, content-type, idempotency-key, if-match, x-request-id";
/// Methods the API uses.
const CORS_ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";
/// Response headers a browser script may read cross-origin.
const CORS_EXPOSE_HEADERS: &str = "etag, location, retry-after, idempotent-replayed, x-request-id, ratelimit-limit, ratelimit-remaining, ratelimit-reset";

/// Seconds a shed request is told to wait.
const SHED_RETRY_AFTER_SECS: u64 = 1;

fn ctx_of(req: &ServiceRequest) -> Option<web::Data<Ctx>> {
    req.app_data::<web::Data<Ctx>>().cloned()
}

/// Probes and scrapes: never shed, limited or cut short.
fn is_exempt(path: &str) -> bool {
    path == "/metrics" || path == "/health" || path.starts_with("/health/")
}

/// Answers `req` with `err` as a problem+json response.
fn reject(req: ServiceRequest, err: &ApiError) -> ServiceResponse<BoxBody> {
    req.into_response(err.error_response())
}

/// Runs the inner service with a boxed body (so every path of a middleware has one type).
///
/// An `HttpRequest` must not be cloned before the inner call: routing needs it unshared
/// (`match_info_mut`). So an inner error stays an error; actix renders it with
/// `ApiError::error_response`, which carries the static security headers itself.
async fn call_boxed(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// Security headers on every response (errors included).
pub async fn security_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let private = req.headers().contains_key(header::AUTHORIZATION)
        || req.cookie(super::cookie::ACCESS_COOKIE).is_some()
        || req.path().starts_with("/auth/")
        || req.path() == "/me"
        || req.path().starts_with("/me/");
    let hsts = ctx_of(&req).and_then(|c| c.config.edge.hsts_max_age);
    let mut res = call_boxed(req, next).await?;
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    if private && !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if let Some(max_age) = hsts
        && let Ok(v) =
            HeaderValue::from_str(&format!("max-age={}; includeSubDomains", max_age.as_secs()))
    {
        h.insert(header::STRICT_TRANSPORT_SECURITY, v);
    }
    Ok(res)
}

/// CORS from `CORS_ORIGINS`: preflights answered here; allowed origins get the
/// `Access-Control-*` headers on their responses; other origins get none (the browser then
/// refuses to hand the response to the script).
pub async fn cors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let Some(ctx) = ctx_of(&req) else {
        return call_boxed(req, next).await;
    };
    let cfg = &ctx.config.edge.cors;
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (Some(origin), false) = (origin, cfg.origins.is_empty()) else {
        return call_boxed(req, next).await;
    };
    let wildcard = cfg.origins.iter().any(|o| o == "*");
    let allowed = wildcard || cfg.origins.contains(&origin);
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight && !allowed {
        let err = ApiError::new(Code::CorsOrigin, "this origin may not call the API");
        return Ok(reject(req, &err));
    }
    let allow_origin = if wildcard && !cfg.allow_credentials {
        HeaderValue::from_static("*")
    } else {
        HeaderValue::from_str(&origin).unwrap_or_else(|_| HeaderValue::from_static("null"))
    };
    let decorate = |h: &mut HeaderMap| {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin.clone());
        if cfg.allow_credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    };
    if preflight {
        let mut res = actix_web::HttpResponse::NoContent();
        res.insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, CORS_ALLOW_METHODS))
            .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, CORS_ALLOW_HEADERS))
            .insert_header((
                header::ACCESS_CONTROL_MAX_AGE,
                cfg.max_age.as_secs().to_string(),
            ));
        let mut res = req.into_response(res.finish());
        decorate(res.headers_mut());
        res.headers_mut().append(
            header::VARY,
            HeaderValue::from_static(
                "Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        return Ok(res);
    }
    let mut res = call_boxed(req, next).await?;
    if allowed {
        decorate(res.headers_mut());
        res.headers_mut().insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(CORS_EXPOSE_HEADERS),
        );
    }
    Ok(res)
}

/// The body limit of a route that declares a body class (`http::routes::body_class`): the
/// credential routes get the smaller `AUTH_BODY_LIMIT_BYTES`, checked here on the declared
/// length and then on the bytes actually read (a chunked body declares none). Every other
/// route has the JSON extractor's `JSON_BODY_LIMIT_BYTES`, enforced when its handler reads the
/// body, so routes that ignore their body (logout) never answer 413.
fn body_limit(ctx: &Ctx, method: &Method, path: &str) -> Option<usize> {
    match super::routes::body_class(method, path)? {
        BodyClass::Credentials => Some(ctx.config.edge.auth_body_limit),
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        Code::PayloadTooLarge,
        format!("body exceeds the limit of {limit} bytes"),
    )
}

/// Load shedding, declared body size and the request deadline.
pub async fn admission(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let Some(ctx) = ctx_of(&req) else {
        return call_boxed(req, next).await;
    };
    if is_exempt(req.path()) {
        return call_boxed(req, next).await;
    }
    // Held until the response head is ready; dropping it frees the slot.
    let Ok(_permit) = ctx.in_flight.clone().try_acquire_owned() else {
        metrics::counter!(HTTP_REQUESTS_SHED_TOTAL, "reason" => "in_flight").increment(1);
        let err = ApiError::unavailable(
            "server busy: too many requests in flight",
            SHED_RETRY_AFTER_SECS,
        );
        return Ok(reject(req, &err));
    };
    let body_limit = body_limit(&ctx, req.method(), req.path());
    if let Some(limit) = body_limit
        && declared_length(req.headers())
            .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
    {
        return Ok(reject(req, &too_large(limit)));
    }
    let deadline = ctx.config.edge.request_timeout;
    // Reading the body counts towards the deadline: a client trickling it stays bounded.
    let work = async move {
        let req = match body_limit {
            Some(limit) => match buffer_body(req, limit).await {
                Ok(req) => req,
                Err(req) => return Ok(reject(req, &too_large(limit))),
            },
            None => req,
        };
        call_boxed(req, next).await
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(res) => res,
        Err(_) => {
            metrics::counter!(HTTP_REQUESTS_SHED_TOTAL, "reason" => "deadline").increment(1);
            tracing::warn!(
                deadline_ms = deadline.as_millis(),
                "request deadline exceeded"
            );
            // The request went with the dropped future, so this leaves as an error that actix
            // renders (problem+json, Retry-After, security headers; no CORS or request id).
            Err(
                ApiError::unavailable("the request took too long; retry", SHED_RETRY_AFTER_SECS)
                    .into(),
            )
        }
    }
}

/// The client's address: the socket peer, unless the peer is a trusted proxy, in which case
/// the right-most address of `X-Forwarded-For` that is not itself a trusted proxy (entries
/// to its left are client-controlled and could be forged).
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[Cidr]) -> Option<IpAddr> {
    let peer = peer.map(canonical)?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let hops: Vec<&str> = headers
        .get_all(HeaderName::from_static("x-forwarded-for"))
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            // Garbage was written by someone we do not trust: the last good hop is the
            // best we know.
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    Some(client)
}

/// An X-Forwarded-For element: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    hop.parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| canonical(s.ip()))
}

/// IPv4-mapped IPv6 addresses are their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// The rate-limit subject of an address: IPv4 as is, IPv6 by its /64.
pub fn ip_subject(ip: Option<IpAddr>) -> String {
    match ip {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        None => "unknown".to_owned(),
    }
}

/// A short, non-reversible tag of an e-mail for rate-limit keys (keys never hold e-mails).
fn email_tag(email: &str) -> String {
    let digest = Sha256::digest(email.trim().to_lowercase().as_bytes());
    hex::encode(&digest[..8])
}

/// Reads the body of a login request (bounded by the route's limit) to find the e-mail,
/// then puts the bytes back for the handler.
/// Reads the whole body into memory, at most `limit` bytes, and puts it back for the
/// handler; `Err` (the request, body dropped) when it is longer. A body that breaks off is
/// handed on as read so far: the handler answers 400 for it.
async fn buffer_body(req: ServiceRequest, limit: usize) -> Result<ServiceRequest, ServiceRequest> {
    let (http_req, mut payload) = req.into_parts();
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else { break };
        if body.len() + chunk.len() > limit {
            return Err(ServiceRequest::from_parts(http_req, Payload::None));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(ServiceRequest::from_parts(
        http_req,
        Payload::from(body.freeze()),
    ))
}

async fn login_email(
    req: ServiceRequest,
    limit: usize,
) -> Result<(ServiceRequest, Option<String>), ServiceRequest> {
    let (http_req, mut payload) = req.into_parts();
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else {
            // The handler will see the same broken stream and answer 400.
            return Ok((ServiceRequest::from_parts(http_req, Payload::None), None));
        };
        if body.len() + chunk.len() > limit {
            return Err(ServiceRequest::from_parts(http_req, Payload::None));
        }
        body.extend_from_slice(&chunk);
    }
    let body = body.freeze();
    let email = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("email").and_then(|e| e.as_str()).map(email_tag));
    Ok((
        ServiceRequest::from_parts(http_req, Payload::from(body)),
        email,
    ))
}

fn seconds_ceil(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 { s + 1 } else { s }
}

fn set_rate_headers(h: &mut HeaderMap, d: &Decision) {
    h.insert(RATELIMIT_LIMIT, HeaderValue::from(d.limit));
    h.insert(RATELIMIT_REMAINING, HeaderValue::from(d.remaining));
    h.insert(RATELIMIT_RESET, HeaderValue::from(seconds_ceil(d.reset)));
}

/// The bucket decisions of one request, and which one the headers report.
fn most_constrained<'a>(a: Option<&'a Decision>, b: &'a Decision) -> &'a Decision {
    match a {
        Some(a)
            if (a.remaining, std::cmp::Reverse(a.reset))
                <= (b.remaining, std::cmp::Reverse(b.reset)) =>
        {
            a
        }
        _ => b,
    }
}

/// The rate-limit gate.
pub async fn rate_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let Some(ctx) = ctx_of(&req) else {
        return call_boxed(req, next).await;
    };
    let limits = ctx.config.edge.rate_limits;
    if is_exempt(req.path()) || req.method() == Method::OPTIONS {
        return call_boxed(req, next).await;
    }
    let ip = client_ip(
        req.peer_addr().map(|a| a.ip()),
        req.headers(),
        &ctx.config.edge.trusted_proxies,
    );
    let ip = ip_subject(ip);
    // The user bucket trusts only a correctly signed token (an attacker must not be able to
    // spend someone else's quota); whether its session is still live is the handler's job.
    let user = match (
        &ctx.config.jwt_secret,
        super::extract::bearer_token(req.request())
            .or_else(|| super::cookie::access_cookie(req.request())),
    ) {
        (Some(secret), Some(token)) => {
            credentials::verify_access_token(secret, &token).map(|c| c.sub.to_string())
        }
        _ => None,
    };
    // The buckets of the route's classes, declared by the route modules.
    let classes = super::routes::rate_classes(req.method(), req.path());
    let mut checks: Vec<(&'static str, String, Quota)> = Vec::new();
    if let Some(q) = limits.ip {
        checks.push(("ip", ip.clone(), q));
    }
    if let (Some(q), Some(u)) = (limits.user, &user) {
        checks.push(("user", u.clone(), q));
    }
    let mut req = req;
    for class in classes {
        match class {
            RateClass::Auth => {
                if let Some(q) = limits.auth {
                    checks.push(("auth", ip.clone(), q));
                }
            }
            RateClass::Orders => {
                if let Some(q) = limits.orders {
                    checks.push(("orders", user.clone().unwrap_or_else(|| ip.clone()), q));
                }
            }
            RateClass::Login => {
                let Some(q) = limits.login else { continue };
                let limit = ctx.config.edge.auth_body_limit;
                match login_email(req, limit).await {
                    Ok((r, email)) => {
                        req = r;
                        if let Some(tag) = email {
                            checks.push(("login", format!("{ip}:{tag}"), q));
                        }
                    }
                    Err(r) => return Ok(reject(r, &too_large(limit))),
                }
            }
        }
    }
    if checks.is_empty() {
        return call_boxed(req, next).await;
    }
    let mut shown: Option<Decision> = None;
    for (bucket, subject, quota) in checks {
        let d = ctx.limiter.check(bucket, &subject, quota).await;
        if !d.allowed {
            metrics::counter!(RATE_LIMIT_REJECTIONS_TOTAL, "bucket" => bucket).increment(1);
            tracing::debug!(bucket, "rate limited");
            let retry = seconds_ceil(d.retry_after.unwrap_or(d.reset)).max(1);
            let err = ApiError::retry_after(
                Code::RateLimited,
                format!(
                    "too many requests ({bucket} limit: {} per {}s); retry in {retry}s",
                    d.limit,
                    quota.period.as_secs()
                ),
                retry,
            );
            let mut res = reject(req, &err);
            set_rate_headers(res.headers_mut(), &d);
            return Ok(res);
        }
        shown = Some(*most_constrained(shown.as_ref(), &d));
    }
    let mut res = call_boxed(req, next).await?;
    if let Some(d) = shown {
        set_rate_headers(res.headers_mut(), &d);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                HeaderName::from_static("x-forwarded-for"),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = xff(&["6.6.6.6, 1.2.3.4"]);
        // Untrusted peer: its header is ignored.
        assert_eq!(
            client_ip(Some(ip("9.9.9.9")), &h, &trusted),
            Some(ip("9.9.9.9"))
        );
        // Trusted peer: the right-most untrusted hop (a forged left part is skipped).
        assert_eq!(
            client_ip(Some(ip("10.0.0.5")), &h, &trusted),
            Some(ip("1.2.3.4"))
        );
        // Chains of trusted proxies are walked through; several headers concatenate.
        let h = xff(&["6.6.6.6", "1.2.3.4, 10.1.1.1"]);
        assert_eq!(
            client_ip(Some(ip("10.0.0.5")), &h, &trusted),
            Some(ip("1.2.3.4"))
        );
        // No header: the proxy itself; garbage stops the walk at the last good hop.
        assert_eq!(
            client_ip(Some(ip("10.0.0.5")), &xff(&[]), &trusted),
            Some(ip("10.0.0.5"))
        );
        let h = xff(&["1.2.3.4, nonsense, 10.1.1.1"]);
        assert_eq!(
            client_ip(Some(ip("10.0.0.5")), &h, &trusted),
            Some(ip("10.1.1.1"))
        );
        // Ports and brackets are tolerated; mapped IPv4 is IPv4.
        let h = xff(&["[2001:db8::1]:443"]);
        assert_eq!(
            client_ip(Some(ip("10.0.0.5")), &h, &trusted),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(
            client_ip(Some(ip("::ffff:1.2.3.4")), &xff(&[]), &[]),
            Some(ip("1.2.3.4"))
        );
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        assert_eq!(
            ip_subject(Some(ip("2001:db8:1:2:aaaa::1"))),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            ip_subject(Some(ip("2001:db8:1:2:bbbb::9"))),
            "2001:db8:1:2::/64"
        );
        assert_eq!(ip_subject(Some(ip("1.2.3.4"))), "1.2.3.4");
        assert_eq!(ip_subject(None), "unknown");
    }

    #[test]
    fn email_tags_hide_the_address_and_ignore_case() {
        let t = email_tag("Student@A.edu ");
        assert_eq!(t, email_tag("student@a.edu"));
        assert_eq!(t.len(), 16);
        assert!(!t.contains('@'));
    }
}
