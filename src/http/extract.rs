//! Extractors that carry permissions and request metadata into handlers: [`Authed`] (the
//! actor behind a bearer token), [`IdempotencyKey`], [`IfMatch`], [`ReqId`] and
//! [`PageParams`].

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use futures_util::future::LocalBoxFuture;
use serde::Deserialize;

use super::cookie;
use super::error::{ApiError, FieldError};
use super::middleware::RequestId;
use crate::app::Ctx;
use crate::domain::Actor;
use crate::service::{self, PageRequest};

/// A JSON body whose deserialisation errors name the field (`items[0].quantity`).
///
/// The body is first read as a `serde_json::Value` by actix's `Json` extractor, so content
/// type, size limit and syntax errors go through `error::json_error_handler` (415, 413, 400);
/// then `serde_path_to_error` maps it onto `T`, keeping the path of the first bad field.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let value = web::Json::<serde_json::Value>::from_request(req, payload);
        Box::pin(async move {
            let web::Json(mut value) = value.await?;
            // Postgres text cannot hold U+0000: refuse it here, for every body, with the
            // field's path, instead of a 500 from the store (issue 17 item 6).
            if let Some(field) = nul_path(&value) {
                return Err(nul_error(field).into());
            }
            integral_floats_to_integers(&mut value);
            serde_path_to_error::deserialize::<_, T>(value)
                .map(Self)
                .map_err(|e| {
                    let path = e.path().to_string();
                    let field = if path == "." { "body".to_owned() } else { path };
                    let mut api = ApiError::validation(vec![FieldError {
                        field,
                        message: e.into_inner().to_string(),
                    }]);
                    api.detail = "the JSON body does not match the expected shape".to_owned();
                    api.into()
                })
        })
    }
}

/// Rewrites numbers such as `190.0` as `190`: JSON (RFC 8259) and JSON Schema do not tell
/// them apart, so an `integer` field must take either; serde would refuse the float form.
/// Numbers with a fraction, or beyond ±2^53 (where floats stop being exact), stay as they
/// are and fail typed deserialisation as before.
pub fn integral_floats_to_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() <= EXACT
            {
                // Exact: |f| <= 2^53 and integral, so the conversion loses nothing.
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::as_conversions,
                    reason = "integral and within ±2^53, checked above"
                )]
                let i = f as i64;
                *value = Value::from(i);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

/// The 400 for a NUL character in `field`.
pub fn nul_error(field: String) -> ApiError {
    let mut api = ApiError::validation(vec![FieldError {
        field,
        message: "must not contain a NUL character (U+0000)".to_owned(),
    }]);
    api.detail = "the request contains a NUL character".to_owned();
    api
}

/// The path (`items[0].note`, as `serde_path_to_error` writes it; `body` for the document
/// itself) of the first string or key in `value` that contains U+0000.
pub fn nul_path(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    fn walk(value: &Value, path: &mut String) -> bool {
        match value {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            Value::Object(fields) => fields.iter().any(|(key, item)| {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key.replace('\0', "\\u0000"));
                let found = key.contains('\0') || walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }
    let mut path = String::new();
    walk(value, &mut path).then(|| {
        if path.is_empty() {
            "body".to_owned()
        } else {
            path
        }
    })
}

/// A JSON body that may be left out: no body at all (`Content-Length: 0` or none, not
/// chunked) is `None`; a body that is there goes through [`JsonBody`] and its errors.
/// (`Option<JsonBody<T>>` would swallow a bad body as `None`.)
#[derive(Debug)]
pub struct OptionalJsonBody<T>(pub Option<T>);

impl<T: serde::de::DeserializeOwned + 'static> FromRequest for OptionalJsonBody<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        use actix_web::http::header;
        let headers = req.headers();
        let empty = match headers.get(header::CONTENT_LENGTH) {
            Some(len) => len.as_bytes() == b"0",
            None => !headers.contains_key(header::TRANSFER_ENCODING),
        };
        if empty {
            return Box::pin(async { Ok(Self(None)) });
        }
        let body = JsonBody::<T>::from_request(req, payload);
        Box::pin(async move { Ok(Self(Some(body.await?.0))) })
    }
}

impl<T> JsonBody<T> {
    /// The deserialised body.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for JsonBody<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The authenticated actor: a valid access token whose session is still live, from
/// `Authorization: Bearer` or, without that header, the browser's session cookie (whose
/// writes must pass the CSRF and Origin checks of [`cookie::check_write`]).
#[derive(Debug, Clone)]
pub struct Authed(pub Actor);

/// The bearer token of a request: `Authorization: Bearer …`.
pub fn bearer_token(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

impl FromRequest for Authed {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let ctx = req.app_data::<web::Data<Ctx>>().cloned();
        // The bearer header wins; the browser cookie is read only without one (and its
        // writes are CSRF-checked below), so cookies never change a bearer request.
        let (token, from_cookie) = match bearer_token(req) {
            Some(t) => (Some(t), false),
            None => (cookie::access_cookie(req), true),
        };
        let req = req.clone();
        Box::pin(async move {
            let ctx = ctx.ok_or_else(|| ApiError::internal(&anyhow::anyhow!("no Ctx in app")))?;
            let token = token.ok_or_else(|| {
                ApiError::from(service::Error::Unauthenticated("missing bearer token"))
            })?;
            let actor = service::auth::authenticate(&ctx, &token).await?;
            if from_cookie {
                cookie::check_write(&ctx, &req, &actor)?;
            }
            Ok(Self(actor))
        })
    }
}

/// The request id assigned by the middleware (for audit rows).
#[derive(Debug, Clone)]
pub struct ReqId(pub Option<String>);

impl FromRequest for ReqId {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Ok(Self(
            req.extensions().get::<RequestId>().map(|r| r.0.clone()),
        )))
    }
}

fn bad_header(name: &str, message: &str) -> ApiError {
    ApiError::validation(vec![FieldError {
        field: name.to_owned(),
        message: message.to_owned(),
    }])
}

/// `Idempotency-Key`: 1..=255 visible ASCII characters, optional.
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub Option<String>);

impl FromRequest for IdempotencyKey {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(value) = req.headers().get("idempotency-key") else {
            return ready(Ok(Self(None)));
        };
        let parsed = value
            .to_str()
            .ok()
            .filter(|v| !v.is_empty() && v.len() <= 255 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(|v| Self(Some(v.to_owned())))
            .ok_or_else(|| {
                bad_header(
                    "Idempotency-Key",
                    "must be 1 to 255 visible ASCII characters",
                )
            });
        ready(parsed)
    }
}

/// `If-Match`: the order version the client last saw (`"3"`, `W/"3"` or `3`); `*` = any.
#[derive(Debug, Clone, Copy)]
pub struct IfMatch(pub Option<i32>);

impl FromRequest for IfMatch {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(value) = req.headers().get("if-match") else {
            return ready(Ok(Self(None)));
        };
        let parsed = value.to_str().ok().and_then(|v| {
            let v = v.trim();
            if v == "*" {
                return Some(None);
            }
            let v = v.strip_prefix("W/").unwrap_or(v).trim_matches('"');
            v.parse::<i32>().ok().filter(|n| *n > 0).map(Some)
        });
        ready(
            parsed
                .map(Self)
                .ok_or_else(|| bad_header("If-Match", "must be an order version such as \"3\"")),
        )
    }
}

/// The ETag of a versioned resource.
pub fn etag(version: i32) -> (&'static str, String) {
    ("ETag", format!("\"{version}\""))
}

/// `limit` (1..=100, default 20) and `offset` (0..=100000) query parameters.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Rows to skip, 0 to 100000 (default 0).
    #[param(minimum = 0, maximum = 100_000)]
    pub offset: Option<i64>,
}

impl PageParams {
    /// Validates into a [`PageRequest`].
    pub fn validate(self) -> Result<PageRequest, ApiError> {
        let limit = self.limit.unwrap_or(20);
        let offset = self.offset.unwrap_or(0);
        let mut errors = Vec::new();
        if !(1..=100).contains(&limit) {
            errors.push(FieldError {
                field: "limit".to_owned(),
                message: "must be between 1 and 100".to_owned(),
            });
        }
        if !(0..=100_000).contains(&offset) {
            errors.push(FieldError {
                field: "offset".to_owned(),
                message: "must be between 0 and 100000".to_owned(),
            });
        }
        if errors.is_empty() {
            Ok(PageRequest { limit, offset })
        } else {
            Err(ApiError::validation(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::nul_path;

    #[test]
    fn integral_floats_become_integers_and_nothing_else_changes() {
        let mut v = json!({"a": 190.0, "b": [1.5, -2.0, 1e20], "c": "3.0", "d": 7});
        super::integral_floats_to_integers(&mut v);
        assert_eq!(
            v,
            json!({"a": 190, "b": [1.5, -2, 1e20], "c": "3.0", "d": 7})
        );
        assert!(v["a"].is_i64());
        assert!(v["b"][2].is_f64());
    }

    #[test]
    fn nul_path_names_the_field_like_serde_path_to_error() {
        assert_eq!(nul_path(&json!({"a": "ok", "b": [1, "x"]})), None);
        assert_eq!(nul_path(&json!("a\u{0}b")).as_deref(), Some("body"));
        assert_eq!(
            nul_path(&json!({"email": "a\u{0}@b"})).as_deref(),
            Some("email")
        );
        assert_eq!(
            nul_path(&json!({"items": [{"note": "ok"}, {"note": "x\u{0}"}]})).as_deref(),
            Some("items[1].note")
        );
        assert_eq!(
            nul_path(&json!([[1], ["\u{0}"]])).as_deref(),
            Some("[1][0]")
        );
        assert_eq!(
            nul_path(&json!({"a": {"k\u{0}": 1}})).as_deref(),
            Some("a.k\\u0000")
        );
    }
}
