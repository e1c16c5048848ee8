//! Push notifications through FCM HTTP v1 and OneSignal REST, each behind its own circuit
//! breaker (`push_fcm`, `push_onesignal`) and a per-call timeout.
//!
//! Request shapes follow the providers' public documentation:
//! - FCM: `POST {FCM_BASE_URL}/v1/projects/{FCM_PROJECT_ID}/messages:send`,
//!   `Authorization: Bearer {FCM_ACCESS_TOKEN}`, body
//!   `{"message": {"token", "notification": {"title", "body"}, "data": {..strings..}}}`.
//!   A static access token is taken from configuration; minting it from a service account
//!   (OAuth 2) is left to the deployment.
//! - OneSignal: `POST {ONESIGNAL_BASE_URL}/notifications`, `Authorization: Key
//!   {ONESIGNAL_API_KEY}`, body `{"app_id", "include_subscription_ids": [token],
//!   "headings": {"en"}, "contents": {"en"}, "data"}`.
//!
//! Outcomes ([`PushOutcome`]) come from the documented error codes: the device token is dead
//! → [`PushOutcome::DropToken`]; throttling or a provider fault → [`PushOutcome::Retry`]
//! (honouring `Retry-After`); bad credentials or a malformed message →
//! [`PushOutcome::Permanent`]. The breaker counts provider faults, throttling, timeouts and
//! credential errors as failures; a dead token is a healthy provider answering. An open
//! breaker answers `Retry` at once, without a network call, so jobs back off instead of
//! failing.
//!
//! Device tokens and credentials are never logged.
//!
//! L1: depends on `resilience`, `config` and `telemetry`. Env vars (through `config`):
//! `FCM_BASE_URL`, `FCM_PROJECT_ID`, `FCM_ACCESS_TOKEN`, `ONESIGNAL_BASE_URL`,
//! `ONESIGNAL_APP_ID`, `ONESIGNAL_API_KEY`, `PUSH_TIMEOUT_MS`.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::config::PushConfig;
use crate::resilience::{Breakers, CircuitBreaker};
use crate::telemetry::PUSH_SEND_TOTAL;

/// Name of the FCM breaker (Redis key part, metric label, `/health` entry).
pub const BREAKER_FCM: &str = "push_fcm";
/// Name of the OneSignal breaker.
pub const BREAKER_ONESIGNAL: &str = "push_onesignal";
/// Longest `Retry-After` honoured; a provider asking for more is retried by the schedule.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Where a device token comes from (the `devices.platform` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    /// Firebase Cloud Messaging registration token.
    Fcm,
    /// OneSignal subscription (formerly player) id.
    OneSignal,
    /// Apple Push Notification service (not sent directly yet).
    Apns,
    /// Web Push (not sent directly yet).
    WebPush,
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fcm" => Ok(Self::Fcm),
            "onesignal" => Ok(Self::OneSignal),
            "apns" => Ok(Self::Apns),
            "webpush" => Ok(Self::WebPush),
            other => Err(format!("unknown push platform `{other}`")),
        }
    }
}

/// One device to notify.
#[derive(Clone, Debug)]
pub struct PushTarget {
    /// The provider the token belongs to.
    pub platform: Platform,
    /// The provider's token for the device (secret-ish: never logged).
    pub token: String,
}

/// What to show.
#[derive(Clone, Debug, Default)]
pub struct PushMessage {
    /// Notification title.
    pub title: String,
    /// Notification text.
    pub body: String,
    /// Key/value payload for the app (FCM requires string values).
    pub data: BTreeMap<String, String>,
}

/// How a send ended, for the job that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// The provider accepted the message.
    Delivered,
    /// The device token is dead (uninstalled app, unsubscribed, not a valid token): delete
    /// the device; retrying can never succeed.
    DropToken,
    /// Try again later: throttled, provider fault, timeout, or the breaker is open.
    Retry {
        /// The provider's `Retry-After` (or the breaker's cool-down), when known.
        after: Option<Duration>,
        /// Why, for the job's last error (no token, no credentials).
        reason: String,
    },
    /// Retrying will not help (bad credentials, malformed message, provider not
    /// configured, unsupported platform).
    Permanent(String),
}

impl PushOutcome {
    fn label(&self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::DropToken => "drop_token",
            Self::Retry { .. } => "retry",
            Self::Permanent(_) => "permanent",
        }
    }

    fn retry(after: Option<Duration>, reason: impl Into<String>) -> Self {
        Self::Retry {
            after,
            reason: reason.into(),
        }
    }
}

/// What the breaker should learn from an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    /// The provider works (even if it refused this token).
    Ok,
    /// Provider fault, throttling, timeout or rejected credentials.
    Failing,
}

/// Sends pushes; cheap to clone.
#[derive(Clone)]
pub struct PushClient {
    config: Arc<PushConfig>,
    http: Arc<OnceCell<reqwest::Client>>,
    fcm: Arc<CircuitBreaker>,
    onesignal: Arc<CircuitBreaker>,
}

impl PushClient {
    /// A client using `config`, with its breakers registered in `breakers` (so they show in
    /// `/health` before the first send).
    pub fn new(config: &PushConfig, breakers: &Breakers) -> Self {
        Self {
            config: Arc::new(config.clone()),
            http: Arc::new(OnceCell::new()),
            fcm: breakers.get(BREAKER_FCM),
            onesignal: breakers.get(BREAKER_ONESIGNAL),
        }
    }

    /// Sends `msg` to one device and classifies the answer. Never panics, never hangs past
    /// `PUSH_TIMEOUT_MS`.
    pub async fn send(&self, device: &PushTarget, msg: &PushMessage) -> PushOutcome {
        let (provider, outcome) = match device.platform {
            Platform::Fcm => ("fcm", self.send_fcm(&device.token, msg).await),
            Platform::OneSignal => ("onesignal", self.send_onesignal(&device.token, msg).await),
            Platform::Apns => (
                "apns",
                PushOutcome::Permanent("platform apns is not supported".to_owned()),
            ),
            Platform::WebPush => (
                "webpush",
                PushOutcome::Permanent("platform webpush is not supported".to_owned()),
            ),
        };
        metrics::counter!(PUSH_SEND_TOTAL, "provider" => provider, "outcome" => outcome.label())
            .increment(1);
        tracing::debug!(provider, outcome = outcome.label(), "push sent");
        outcome
    }

    async fn client(&self) -> Result<&reqwest::Client, PushOutcome> {
        let timeout = self.config.timeout;
        self.http
            .get_or_try_init(|| async move {
                reqwest::Client::builder()
                    .timeout(timeout)
                    .connect_timeout(timeout.min(Duration::from_secs(2)))
                    .build()
            })
            .await
            .map_err(|e| PushOutcome::Permanent(format!("cannot build the HTTP client: {e}")))
    }

    async fn send_fcm(&self, token: &str, msg: &PushMessage) -> PushOutcome {
        let (Some(project), Some(access)) = (
            self.config.fcm_project_id.as_deref(),
            self.config.fcm_access_token.as_ref(),
        ) else {
            return PushOutcome::Permanent(
                "FCM is not configured (FCM_PROJECT_ID, FCM_ACCESS_TOKEN)".to_owned(),
            );
        };
        let url = format!(
            "{}/v1/projects/{project}/messages:send",
            self.config.fcm_base_url
        );
        let body = json!({
            "message": {
                "token": token,
                "notification": { "title": msg.title, "body": msg.body },
                "data": msg.data,
            }
        });
        let auth = format!("Bearer {}", access.expose());
        self.call(&self.fcm, "fcm", url, auth, body, |status, retry, body| {
            classify_fcm(status, retry, body)
        })
        .await
    }

    async fn send_onesignal(&self, token: &str, msg: &PushMessage) -> PushOutcome {
        let (Some(app_id), Some(key)) = (
            self.config.onesignal_app_id.as_deref(),
            self.config.onesignal_api_key.as_ref(),
        ) else {
            return PushOutcome::Permanent(
                "OneSignal is not configured (ONESIGNAL_APP_ID, ONESIGNAL_API_KEY)".to_owned(),
            );
        };
        let url = format!("{}/notifications", self.config.onesignal_base_url);
        let body = json!({
            "app_id": app_id,
            "include_subscription_ids": [token],
            "headings": { "en": msg.title },
            "contents": { "en": msg.body },
            "data": msg.data,
        });
        let auth = format!("Key {}", key.expose());
        self.call(
            &self.onesignal,
            "onesignal",
            url,
            auth,
            body,
            |status, retry, body| classify_onesignal(status, retry, body, token),
        )
        .await
    }

    /// One provider call: breaker, request with timeout, classification, breaker record.
    async fn call(
        &self,
        breaker: &CircuitBreaker,
        provider: &'static str,
        url: String,
        authorization: String,
        body: Value,
        classify: impl FnOnce(StatusCode, Option<Duration>, &[u8]) -> (PushOutcome, Health),
    ) -> PushOutcome {
        let http = match self.client().await {
            Ok(c) => c,
            Err(outcome) => return outcome,
        };
        let permit = match breaker.acquire().await {
            Ok(p) => p,
            Err(rejected) => {
                return PushOutcome::retry(
                    Some(rejected.retry_after),
                    format!("{} circuit breaker open", breaker.name()),
                );
            }
        };
        let sent = http
            .post(url)
            .header(reqwest::header::AUTHORIZATION, authorization)
            .json(&body)
            .send()
            .await;
        let (outcome, health) = match sent {
            Ok(res) => {
                let status = res.status();
                let retry_after = parse_retry_after(res.headers());
                match res.bytes().await {
                    Ok(bytes) => classify(status, retry_after, &bytes),
                    Err(e) => (
                        PushOutcome::retry(
                            None,
                            format!("{provider}: reading the answer failed: {}", kind(&e)),
                        ),
                        Health::Failing,
                    ),
                }
            }
            Err(e) => (
                PushOutcome::retry(None, format!("{provider} unreachable: {}", kind(&e))),
                Health::Failing,
            ),
        };
        breaker.record(permit, health == Health::Ok).await;
        outcome
    }
}

/// A transport error in words that carry no URL or header.
fn kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "bad response body"
    } else {
        "request failed"
    }
}

/// `Retry-After` in delay-seconds form (the HTTP-date form falls back to the schedule).
fn parse_retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// FCM HTTP v1 error classification
/// (<https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode>): the `errorCode` of
/// the `google.firebase.fcm.v1.FcmError` detail first, the HTTP status otherwise.
fn classify_fcm(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> (PushOutcome, Health) {
    if status.is_success() {
        return (PushOutcome::Delivered, Health::Ok);
    }
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let err = &v["error"];
    let details = err["details"].as_array().cloned().unwrap_or_default();
    let fcm_code = details
        .iter()
        .find_map(|d| d["errorCode"].as_str())
        .unwrap_or("");
    let grpc_status = err["status"].as_str().unwrap_or("");
    let token_field = details.iter().any(|d| {
        d["fieldViolations"].as_array().is_some_and(|fv| {
            fv.iter()
                .any(|f| f["field"].as_str().is_some_and(|f| f.ends_with("token")))
        })
    }) || err["message"]
        .as_str()
        .is_some_and(|m| m.contains("registration token"));
    let code = if fcm_code.is_empty() {
        grpc_status
    } else {
        fcm_code
    };
    match (status.as_u16(), code) {
        (_, "UNREGISTERED") | (404, _) => (PushOutcome::DropToken, Health::Ok),
        // The token belongs to another Firebase project: it can never work for us.
        (_, "SENDER_ID_MISMATCH") => (PushOutcome::DropToken, Health::Ok),
        (_, "INVALID_ARGUMENT") | (400, _) if token_field => (PushOutcome::DropToken, Health::Ok),
        (_, "QUOTA_EXCEEDED") | (429, _) => (
            PushOutcome::retry(retry_after, "fcm throttled (429 QUOTA_EXCEEDED)"),
            Health::Failing,
        ),
        (_, "UNAVAILABLE" | "INTERNAL") | (500..=599, _) => (
            PushOutcome::retry(
                retry_after,
                format!("fcm unavailable ({} {code})", status.as_u16()),
            ),
            Health::Failing,
        ),
        (_, "THIRD_PARTY_AUTH_ERROR") | (401 | 403, _) => (
            PushOutcome::Permanent(format!(
                "fcm refused our credentials ({} {code}): check FCM_ACCESS_TOKEN and FCM_PROJECT_ID",
                status.as_u16()
            )),
            Health::Failing,
        ),
        _ => (
            PushOutcome::Permanent(format!(
                "fcm rejected the message ({} {code})",
                status.as_u16()
            )),
            Health::Ok,
        ),
    }
}

/// OneSignal classification (<https://documentation.onesignal.com/reference/push-notification>):
/// a 200 can still name our subscription as invalid, which means the device is gone.
fn classify_onesignal(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    token: &str,
) -> (PushOutcome, Health) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = status.as_u16();
    if status.is_success() {
        let errors = &v["errors"];
        let listed = ["invalid_subscription_ids", "invalid_player_ids"]
            .iter()
            .any(|k| {
                errors[*k]
                    .as_array()
                    .is_some_and(|ids| ids.iter().any(|id| id.as_str() == Some(token)))
            });
        let unsubscribed = errors.as_array().is_some_and(|a| {
            a.iter()
                .any(|e| e.as_str().is_some_and(|s| s.contains("not subscribed")))
        });
        if listed || unsubscribed {
            return (PushOutcome::DropToken, Health::Ok);
        }
        return (PushOutcome::Delivered, Health::Ok);
    }
    match code {
        429 => (
            PushOutcome::retry(retry_after, "onesignal throttled (429)"),
            Health::Failing,
        ),
        500..=599 => (
            PushOutcome::retry(retry_after, format!("onesignal unavailable ({code})")),
            Health::Failing,
        ),
        401 | 403 => (
            PushOutcome::Permanent(format!(
                "onesignal refused our credentials ({code}): check ONESIGNAL_API_KEY and ONESIGNAL_APP_ID"
            )),
            Health::Failing,
        ),
        _ => (
            PushOutcome::Permanent(format!("onesignal rejected the message ({code})")),
            Health::Ok,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fcm(status: u16, body: Value) -> (PushOutcome, Health) {
        classify_fcm(
            StatusCode::from_u16(status).unwrap(),
            Some(Duration::from_secs(7)),
            body.to_string().as_bytes(),
        )
    }

    fn fcm_error(status: u16, grpc: &str, code: Option<&str>) -> Value {
        let mut details = vec![];
        if let Some(c) = code {
            details.push(json!({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": c}));
        }
        json!({"error": {"code": status, "message": "x", "status": grpc, "details": details}})
    }

    #[test]
    fn fcm_outcomes_follow_the_documented_codes() {
        assert_eq!(
            fcm(200, json!({"name": "projects/p/messages/1"})).0,
            PushOutcome::Delivered
        );
        assert_eq!(
            fcm(404, fcm_error(404, "NOT_FOUND", Some("UNREGISTERED"))),
            (PushOutcome::DropToken, Health::Ok)
        );
        let bad_token = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "The registration token is not a valid FCM registration token",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"},
                        {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": "message.token"}]}]}});
        assert_eq!(fcm(400, bad_token).0, PushOutcome::DropToken);
        // INVALID_ARGUMENT about something else is our bug: permanent, provider healthy.
        let bad_data = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "Invalid data key",
            "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": "message.data"}]}]}});
        assert!(matches!(
            fcm(400, bad_data),
            (PushOutcome::Permanent(_), Health::Ok)
        ));
        for (status, grpc, code) in [
            (429, "RESOURCE_EXHAUSTED", Some("QUOTA_EXCEEDED")),
            (503, "UNAVAILABLE", Some("UNAVAILABLE")),
            (500, "INTERNAL", Some("INTERNAL")),
            (502, "", None),
        ] {
            let (outcome, health) = fcm(status, fcm_error(status, grpc, code));
            assert_eq!(health, Health::Failing, "{status}");
            assert!(
                matches!(outcome, PushOutcome::Retry { after: Some(d), .. } if d == Duration::from_secs(7)),
                "{status}: {outcome:?}"
            );
        }
        for status in [401, 403] {
            let (outcome, health) = fcm(
                status,
                fcm_error(status, "UNAUTHENTICATED", Some("THIRD_PARTY_AUTH_ERROR")),
            );
            assert!(matches!(outcome, PushOutcome::Permanent(_)));
            assert_eq!(health, Health::Failing);
        }
        assert_eq!(
            fcm(
                403,
                fcm_error(403, "PERMISSION_DENIED", Some("SENDER_ID_MISMATCH"))
            )
            .0,
            PushOutcome::DropToken
        );
    }

    #[test]
    fn onesignal_outcomes_follow_the_documented_answers() {
        let os = |status: u16, body: Value| {
            classify_onesignal(
                StatusCode::from_u16(status).unwrap(),
                None,
                body.to_string().as_bytes(),
                "sub-1",
            )
        };
        assert_eq!(
            os(200, json!({"id": "n1", "external_id": null})).0,
            PushOutcome::Delivered
        );
        assert_eq!(
            os(
                200,
                json!({"id": "n1", "errors": {"invalid_player_ids": ["sub-1"]}})
            )
            .0,
            PushOutcome::DropToken
        );
        assert_eq!(
            os(
                200,
                json!({"id": "", "errors": {"invalid_subscription_ids": ["sub-1"]}})
            )
            .0,
            PushOutcome::DropToken
        );
        assert_eq!(
            os(
                200,
                json!({"id": "", "errors": ["All included players are not subscribed"]})
            )
            .0,
            PushOutcome::DropToken
        );
        // Someone else's id being invalid says nothing about ours.
        assert_eq!(
            os(
                200,
                json!({"id": "n1", "errors": {"invalid_player_ids": ["other"]}})
            )
            .0,
            PushOutcome::Delivered
        );
        assert!(matches!(
            os(429, json!({})),
            (PushOutcome::Retry { .. }, Health::Failing)
        ));
        assert!(matches!(
            os(503, json!({})),
            (PushOutcome::Retry { .. }, Health::Failing)
        ));
        assert!(matches!(
            os(401, json!({})),
            (PushOutcome::Permanent(_), Health::Failing)
        ));
        assert!(matches!(
            os(400, json!({"errors": ["bad"]})),
            (PushOutcome::Permanent(_), Health::Ok)
        ));
    }

    #[test]
    fn platforms_parse_from_the_devices_column() {
        assert_eq!("fcm".parse(), Ok(Platform::Fcm));
        assert_eq!("onesignal".parse(), Ok(Platform::OneSignal));
        assert!("sms".parse::<Platform>().is_err());
    }
}
