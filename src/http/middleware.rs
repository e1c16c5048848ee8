//! Request-scoped middleware: the request id (taken from `X-Request-Id` when sane, else a
//! new UUIDv7; echoed on the response; a tracing span carries it so every log line of the
//! request has it) and the HTTP metrics (`http_requests_total`,
//! `http_request_duration_seconds`, labelled by route pattern, never by raw path).

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, ResponseError, web};
use tracing::Instrument;

use crate::telemetry::{HTTP_REQUEST_DURATION_SECONDS, HTTP_REQUESTS_TOTAL};

/// Header carrying the request id in and out.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the current request, available to handlers as request extension.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// An incoming id is reused only when it is short printable ASCII (it ends up in logs).
fn sane_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| s.to_owned())
}

/// Assigns the request id, opens the request span, records metrics.
pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(sane_request_id)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().to_string();
    let span =
        tracing::info_span!("request", request_id = %id, method = %method, path = %req.path());
    let path = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());

    let result = next.call(req).instrument(span.clone()).await;
    let elapsed = started.elapsed().as_secs_f64();
    let status = match &result {
        Ok(res) => res.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    metrics::counter!(HTTP_REQUESTS_TOTAL, "method" => method.clone(), "path" => path.clone(), "status" => status.to_string()).increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "method" => method, "path" => path)
        .record(elapsed);
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(status, elapsed_ms = elapsed * 1000.0, "request failed");
        } else {
            tracing::debug!(status, elapsed_ms = elapsed * 1000.0, "request done");
        }
    });
    let mut res = result?;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    Ok(res)
}

/// Refuses a U+0000 anywhere in the path or the query string with a 400 naming the query
/// parameter (or `path`): Postgres text cannot hold it, and every handler would otherwise
/// pass it on (issue 17 item 6). JSON bodies are checked by `extract::JsonBody`.
pub async fn reject_nul(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    if let Some(field) = nul_in_uri(req.path(), req.query_string()) {
        let err = super::extract::nul_error(field);
        return Ok(req.into_response(err.error_response()));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// The field holding a NUL: `path`, or the name of the query parameter.
fn nul_in_uri(path: &str, query: &str) -> Option<String> {
    // The path is still percent-encoded here; a NUL can only arrive as `%00`.
    if path.contains("%00") {
        return Some("path".to_owned());
    }
    if !query.contains("%00") {
        return None;
    }
    let pairs = web::Query::<Vec<(String, String)>>::from_query(query).ok()?;
    pairs
        .into_inner()
        .into_iter()
        .find(|(k, v)| k.contains('\0') || v.contains('\0'))
        .map(|(k, _)| k.replace('\0', "\\u0000"))
}

#[cfg(test)]
mod tests {
    use super::nul_in_uri;

    #[test]
    fn a_nul_in_the_uri_names_its_parameter() {
        assert_eq!(nul_in_uri("/jobs", "type=report&limit=5"), None);
        assert_eq!(
            nul_in_uri("/jobs", "type=re%00port").as_deref(),
            Some("type")
        );
        assert_eq!(
            nul_in_uri("/jobs", "a=1&t%00=x").as_deref(),
            Some("t\\u0000")
        );
        assert_eq!(nul_in_uri("/flows/a%00b", "").as_deref(), Some("path"));
    }
}
