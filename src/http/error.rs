//! `ApiError`: the only type that knows HTTP status codes. Every error leaves as an RFC 9457
//! `application/problem+json` body; a 500 says "internal error" and the request id, nothing
//! more (the cause is logged once, here). Also the JSON/Path/Query extractor error handlers,
//! so bad input is a 400/413/415 problem, never text/plain.

use std::fmt;

use actix_web::dev::ResourceDef;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, error, web};
use serde::Serialize;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Where the problem types are documented: a problem's `type` is this base plus its code.
pub const PROBLEM_TYPE_BASE: &str = "https://itsur.dev/problems/";

/// Declares [`Code`]: one row per problem type, `Variant = "code", STATUS, "Title";` with the
/// row's doc comment as its documentation (what the OpenAPI document lists), in the spirit
/// of meilisearch's `make_error_codes!`. Adding a problem type is adding a row here.
macro_rules! error_codes {
    ($( $(#[doc = $doc:literal])+ $variant:ident = $code:literal, $status:ident, $title:literal; )+) => {
        /// Every problem type the API answers with. The only place a status code is chosen:
        /// an [`ApiError`] is built from a code, and its status, title and `type` URI follow.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Code {
            $( $(#[doc = $doc])+ $variant, )+
        }

        impl Code {
            /// Every code, in table order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The machine-readable code: the suffix of the problem `type` URI.
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $code,)+ }
            }

            /// The HTTP status this problem is answered with.
            pub const fn status(self) -> StatusCode {
                match self { $(Self::$variant => StatusCode::$status,)+ }
            }

            /// Short summary of the problem type (the problem `title`).
            pub const fn title(self) -> &'static str {
                match self { $(Self::$variant => $title,)+ }
            }

            /// When the problem happens and what a client can do about it.
            pub const fn description(self) -> &'static str {
                match self { $(Self::$variant => concat!($($doc),+).trim_ascii(),)+ }
            }
        }
    };
}

error_codes! {
    /// A field of the body, query string, path or a header is invalid; `errors` names each
    /// field (`items[0].quantity`) and what is wrong with it.
    Validation = "validation", BAD_REQUEST, "Invalid request";
    /// The request could not be read (a broken body, a missing part).
    BadRequest = "bad-request", BAD_REQUEST, "Bad request";
    /// `GET /ws` without a WebSocket upgrade.
    WebsocketRequired = "websocket-required", BAD_REQUEST, "WebSocket upgrade required";
    /// No valid access token: missing, expired, revoked, or wrong credentials at login.
    Unauthenticated = "unauthenticated", UNAUTHORIZED, "Authentication required";
    /// The actor may not do this (role, tenant or state rules).
    Forbidden = "forbidden", FORBIDDEN, "Forbidden";
    /// A cross-origin browser request that CORS does not allow.
    CorsOrigin = "cors-origin", FORBIDDEN, "Origin not allowed";
    /// A cookie-authenticated write without an `Origin` header.
    OriginRequired = "origin-required", FORBIDDEN, "Origin header required";
    /// A cookie-authenticated write from another origin.
    CrossOrigin = "cross-origin", FORBIDDEN, "Cross-origin request";
    /// A cookie-authenticated write without `X-CSRF-Token` (see `/auth/web/session`).
    CsrfRequired = "csrf-required", FORBIDDEN, "CSRF token required";
    /// A cookie-authenticated write whose `X-CSRF-Token` is not the session's.
    CsrfMismatch = "csrf-mismatch", FORBIDDEN, "CSRF token mismatch";
    /// No such resource, or one outside the actor's tenant, or no such route.
    NotFound = "not-found", NOT_FOUND, "Not found";
    /// The path exists but not with this method; `Allow` lists the methods it has.
    MethodNotAllowed = "method-not-allowed", METHOD_NOT_ALLOWED, "Method not allowed";
    /// The request conflicts with the resource's state (a duplicate, a reused
    /// `Idempotency-Key` with another body, a transition from the wrong status).
    Conflict = "conflict", CONFLICT, "Conflict";
    /// `If-Match` names a version that is no longer current: read again and retry.
    PreconditionFailed = "precondition-failed", PRECONDITION_FAILED, "Precondition failed";
    /// The body is larger than this route accepts (or a CSV import has too many rows).
    PayloadTooLarge = "payload-too-large", PAYLOAD_TOO_LARGE, "Payload too large";
    /// The body's `Content-Type` is not the one this route reads.
    UnsupportedMediaType = "unsupported-media-type", UNSUPPORTED_MEDIA_TYPE, "Unsupported media type";
    /// Too many requests from this client, user or route class; wait `Retry-After` seconds.
    RateLimited = "rate-limited", TOO_MANY_REQUESTS, "Too many requests";
    /// Too many open WebSocket connections for this user; close one first.
    TooManyConnections = "too-many-connections", TOO_MANY_REQUESTS, "Too many connections";
    /// The server cannot answer now (busy, past its deadline, a dependency down); retry
    /// after `Retry-After` seconds.
    Unavailable = "unavailable", SERVICE_UNAVAILABLE, "Service unavailable";
    /// A bug or an unexpected failure; the body carries only the request id's context, the
    /// cause is in the server log.
    Internal = "internal", INTERNAL_SERVER_ERROR, "Internal error";
}

impl Code {
    /// The problem `type` URI, which is also where the problem is documented.
    pub fn type_uri(self) -> String {
        format!("{PROBLEM_TYPE_BASE}{}", self.as_str())
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One invalid field of a request.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON path of the field (`items[0].quantity`), or `body` for the whole document.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// An RFC 9457 problem, ready to be rendered.
#[derive(Debug)]
pub struct ApiError {
    /// The problem type; it decides the HTTP status and title.
    pub code: Code,
    /// Human-readable explanation (never a secret or an internal cause for 5xx).
    pub detail: String,
    /// Field errors for validation failures.
    pub errors: Vec<FieldError>,
    /// Seconds a client should wait (429, 503).
    pub retry_after: Option<u64>,
    /// Methods the path does have (405 `Allow`).
    pub allow: Option<String>,
}

/// The problem+json body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ProblemBody {
    /// URI reference identifying the problem type (`https://itsur.dev/problems/<code>`,
    /// codes in `ProblemCode`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// Explanation specific to this occurrence.
    pub detail: String,
    /// Field errors, for validation problems.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl ApiError {
    /// A problem of type `code` with a detail.
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
            allow: None,
        }
    }

    /// The HTTP status of the problem (from its code).
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// 400 with field errors.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let mut e = Self::new(Code::Validation, "the request has invalid fields");
        e.errors = errors;
        e
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(Code::NotFound, detail)
    }

    /// A problem that asks the client to wait `retry_after` seconds (429, 503).
    pub fn retry_after(code: Code, detail: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(code, detail);
        e.retry_after = Some(retry_after);
        e
    }

    /// 503 with Retry-After.
    pub fn unavailable(detail: impl Into<String>, retry_after: u64) -> Self {
        Self::retry_after(Code::Unavailable, detail, retry_after)
    }

    /// 500: the cause is logged here, once; the body only says "internal error".
    pub fn internal(cause: &anyhow::Error) -> Self {
        tracing::error!(error = format!("{cause:#}"), "internal error");
        Self::new(Code::Internal, "internal error")
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status().as_u16(),
            self.code,
            self.detail
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status();
        let body = ProblemBody {
            kind: self.code.type_uri(),
            title: self.code.title().to_owned(),
            status: status.as_u16(),
            detail: self.detail.clone(),
            errors: self.errors.clone(),
        };
        let mut res = HttpResponse::build(status);
        res.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
        if let Some(secs) = self.retry_after {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if let Some(allow) = &self.allow {
            res.insert_header((header::ALLOW, allow.clone()));
        }
        // Problems can leave without passing `http::edge::security_headers` (an error past
        // the request deadline), so they carry the static ones themselves.
        res.insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .insert_header((header::X_FRAME_OPTIONS, "DENY"))
            .insert_header((header::REFERRER_POLICY, "no-referrer"))
            .insert_header((header::CONTENT_SECURITY_POLICY, super::edge::CSP));
        res.body(serde_json::to_vec(&body).unwrap_or_default())
    }
}

/// Maps serde's message for a JSON body to field errors (`path: message`).
fn json_field_error(err: &serde_json::Error) -> FieldError {
    FieldError {
        field: "body".to_owned(),
        message: format!("{err}"),
    }
}

/// Turns JSON extractor failures into problems: 413 oversize, 415 wrong content type, 400
/// otherwise with the serde message as a field error.
pub fn json_error_handler(err: error::JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    use error::JsonPayloadError as J;
    let api = match &err {
        J::OverflowKnownLength { length, limit } => ApiError::new(
            Code::PayloadTooLarge,
            format!("body of {length} bytes exceeds the limit of {limit} bytes"),
        ),
        J::Overflow { limit } => ApiError::new(
            Code::PayloadTooLarge,
            format!("body exceeds the limit of {limit} bytes"),
        ),
        J::ContentType => ApiError::new(
            Code::UnsupportedMediaType,
            "expected Content-Type: application/json",
        ),
        J::Deserialize(e) => {
            let mut api = ApiError::validation(vec![json_field_error(e)]);
            api.detail = if e.is_data() {
                "the JSON body does not match the expected shape".to_owned()
            } else {
                "the body is not valid JSON".to_owned()
            };
            api
        }
        J::Serialize(_) | J::Payload(_) => {
            ApiError::new(Code::BadRequest, "the body could not be read")
        }
        _ => ApiError::new(Code::BadRequest, err.to_string()),
    };
    api.into()
}

/// Turns query-string failures into 400 problems.
pub fn query_error_handler(err: error::QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::validation(vec![FieldError {
        field: "query".to_owned(),
        message: err.to_string(),
    }])
    .into()
}

/// Turns path failures (a malformed id) into 404: an id that cannot exist names nothing.
/// Unless a more specific documented path is what was meant (`PUT /flows/nodes` reaching
/// `PUT /flows/{id}`): then the method is what is wrong, a 405.
pub fn path_error_handler(err: error::PathError, req: &HttpRequest) -> actix_web::Error {
    if let Some(e) = method_not_allowed(req) {
        return e.into();
    }
    ApiError::not_found(format!("no such resource ({err})")).into()
}

/// A 405 with `Allow`, when the request's path is documented without its method.
fn method_not_allowed(req: &HttpRequest) -> Option<ApiError> {
    let allow = req
        .app_data::<web::Data<KnownRoutes>>()?
        .allow(req.path())?;
    if allow.split(", ").any(|m| m == req.method().as_str()) {
        return None;
    }
    let mut e = ApiError::new(
        Code::MethodNotAllowed,
        format!(
            "{} {} is not allowed; allowed: {allow}",
            req.method(),
            req.path()
        ),
    );
    e.allow = Some(allow);
    Some(e)
}

/// Registers the extractor error handlers and the JSON body limit
/// (`JSON_BODY_LIMIT_BYTES`; `http::edge` also refuses a larger declared `Content-Length`
/// per route before the handler runs).
pub fn extractor_config(json_limit: usize) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(
            web::JsonConfig::default()
                .limit(json_limit)
                .error_handler(json_error_handler),
        )
        .app_data(web::QueryConfig::default().error_handler(query_error_handler))
        .app_data(web::PathConfig::default().error_handler(path_error_handler));
    }
}

/// The documented paths and the methods each answers, so that a known path asked with
/// another method is a 405 with `Allow` (RFC 9110 §15.5.6), not a 404. Built from the
/// OpenAPI document by `http::app` (`openapi::known_routes`).
pub struct KnownRoutes(Vec<(ResourceDef, String)>);

impl KnownRoutes {
    /// From `(path template, methods)` pairs; templates use `{name}` parameters.
    pub fn new<'a>(routes: impl IntoIterator<Item = (&'a str, Vec<&'static str>)>) -> Self {
        Self(
            routes
                .into_iter()
                .map(|(path, methods)| (ResourceDef::new(path), methods.join(", ")))
                .collect(),
        )
    }

    /// The `Allow` value for `path`, when some documented route has that path. The most
    /// specific templates win (`/jobs/workers` over `/jobs/{id}`), as they do in the router.
    pub fn allow(&self, path: &str) -> Option<String> {
        let matching: Vec<&(ResourceDef, String)> = self
            .0
            .iter()
            .filter(|(def, _)| def.is_match(path))
            .collect();
        let params = |def: &ResourceDef| def.pattern().map_or(0, |p| p.matches('{').count());
        let fewest = matching.iter().map(|(def, _)| params(def)).min()?;
        let mut methods: Vec<&str> = matching
            .iter()
            .filter(|(def, _)| params(def) == fewest)
            .flat_map(|(_, allow)| allow.split(", "))
            .collect();
        methods.sort_unstable();
        methods.dedup();
        (!methods.is_empty()).then(|| methods.join(", "))
    }
}

/// The default service: a known path with another method is a 405 problem with `Allow`;
/// anything else is a 404 problem (not actix's empty 404).
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if let Some(e) = method_not_allowed(&req) {
        return Err(e);
    }
    Err(ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

impl From<crate::service::Error> for ApiError {
    fn from(e: crate::service::Error) -> Self {
        use crate::domain::DomainError as D;
        use crate::service::Error as S;
        match e {
            S::Domain(D::NotFound { what }) => Self::not_found(format!("{what} not found")),
            S::Domain(D::Forbidden { reason }) => Self::new(Code::Forbidden, reason),
            S::Domain(D::Conflict { reason }) => Self::new(Code::Conflict, reason),
            S::Domain(D::Invalid { field_errors }) => Self::validation(
                field_errors
                    .into_iter()
                    .map(|(field, message)| FieldError { field, message })
                    .collect(),
            ),
            S::Unauthenticated(why) => Self::new(Code::Unauthenticated, why),
            S::PreconditionFailed(why) => Self::new(Code::PreconditionFailed, why),
            S::Unavailable {
                retry_after,
                reason,
            } => Self::unavailable(reason, retry_after),
            S::Internal(cause) => Self::internal(&cause),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_code_is_unique_and_an_error_status() {
        let mut seen = HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.as_str()), "{code} is listed twice");
            let status = code.status();
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{code} maps to {status}"
            );
            assert!(!code.title().is_empty(), "{code} has no title");
            assert!(!code.description().is_empty(), "{code} has no description");
            assert!(
                code.as_str()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-'),
                "{code} is not kebab-case (it ends a URI)"
            );
        }
    }

    #[test]
    fn a_problem_carries_its_codes_status_title_and_type() {
        let res = ApiError::new(Code::Conflict, "taken").error_response();
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert_eq!(
            res.headers().get(header::CONTENT_TYPE).unwrap(),
            PROBLEM_JSON
        );
        assert_eq!(
            Code::Conflict.type_uri(),
            "https://itsur.dev/problems/conflict"
        );
    }

    #[test]
    fn known_routes_answer_allow_for_their_paths_only() {
        let known = KnownRoutes::new([
            ("/orders", vec!["GET", "POST"]),
            ("/orders/{id}", vec!["GET"]),
            ("/orders/{id}/status", vec!["POST"]),
        ]);
        assert_eq!(known.allow("/orders").as_deref(), Some("GET, POST"));
        assert_eq!(known.allow("/orders/abc").as_deref(), Some("GET"));
        assert_eq!(known.allow("/orders/abc/status").as_deref(), Some("POST"));
        assert_eq!(known.allow("/nothing"), None);
        let known = KnownRoutes::new([
            ("/jobs/{id}", vec!["GET", "DELETE"]),
            ("/jobs/workers", vec!["GET"]),
        ]);
        assert_eq!(known.allow("/jobs/workers").as_deref(), Some("GET"));
        assert_eq!(known.allow("/jobs/abc").as_deref(), Some("DELETE, GET"));
    }
}
