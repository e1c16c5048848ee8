//! `ApiError`: the only type that knows HTTP status codes. Every error leaves as an RFC 9457
//! `application/problem+json` body; a 500 says "internal error" and the request id, nothing
//! more (the cause is logged once, here). Also the JSON/Path/Query extractor error handlers,
//! so bad input is a 400/413/415 problem, never text/plain.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, error, web};
use serde::Serialize;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

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
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable explanation (never a secret or an internal cause for 5xx).
    pub detail: String,
    /// Field errors for validation failures.
    pub errors: Vec<FieldError>,
    /// Seconds a client should wait (429, 503).
    pub retry_after: Option<u64>,
    /// Short machine-readable code, rendered as the problem `type` suffix.
    pub code: &'static str,
}

/// The problem+json body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ProblemBody {
    /// URI reference identifying the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the problem type (the status reason).
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
    /// A problem with a status, code and detail.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
            code,
        }
    }

    /// 400 with field errors.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "validation",
            "the request has invalid fields",
        );
        e.errors = errors;
        e
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    /// 503 with Retry-After.
    pub fn unavailable(detail: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail);
        e.retry_after = Some(retry_after);
        e
    }

    /// 500: the cause is logged here, once; the body only says "internal error".
    pub fn internal(cause: &anyhow::Error) -> Self {
        tracing::error!(error = format!("{cause:#}"), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let body = ProblemBody {
            kind: format!("https://itsur.dev/problems/{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            errors: self.errors.clone(),
        };
        let mut res = HttpResponse::build(self.status);
        res.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
        if let Some(secs) = self.retry_after {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
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
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("body of {length} bytes exceeds the limit of {limit} bytes"),
        ),
        J::Overflow { limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("body exceeds the limit of {limit} bytes"),
        ),
        J::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
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
        J::Serialize(_) | J::Payload(_) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "the body could not be read",
        ),
        _ => ApiError::new(StatusCode::BAD_REQUEST, "bad-request", err.to_string()),
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
pub fn path_error_handler(err: error::PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::not_found(format!("no such resource ({err})")).into()
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

/// The default service: unknown routes are 404 problems (not actix's empty 404).
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
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
            S::Domain(D::Forbidden { reason }) => {
                Self::new(StatusCode::FORBIDDEN, "forbidden", reason)
            }
            S::Domain(D::Conflict { reason }) => {
                Self::new(StatusCode::CONFLICT, "conflict", reason)
            }
            S::Domain(D::Invalid { field_errors }) => Self::validation(
                field_errors
                    .into_iter()
                    .map(|(field, message)| FieldError { field, message })
                    .collect(),
            ),
            S::Unauthenticated(why) => Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", why),
            S::PreconditionFailed(why) => {
                Self::new(StatusCode::PRECONDITION_FAILED, "precondition-failed", why)
            }
            S::Unavailable {
                retry_after,
                reason,
            } => Self::unavailable(reason, retry_after),
            S::Internal(cause) => Self::internal(&cause),
        }
    }
}
