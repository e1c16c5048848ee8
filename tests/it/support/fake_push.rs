//! `FakeProvider`: a local HTTP server (actix-web on 127.0.0.1:0) that answers like FCM HTTP
//! v1 or OneSignal REST, as their documentation describes, and records what it received.
//! The test decides the next answers; nothing here sleeps except the "slow provider" answer,
//! which simulates a provider that does not answer in time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

/// One answer of the fake provider.
#[derive(Clone, Debug)]
pub enum Answer {
    /// Status, JSON body and an optional `Retry-After` (seconds).
    Json(u16, Value, Option<u64>),
    /// Waits this long before answering 200 (a provider slower than the client's timeout).
    Slow(Duration),
}

/// A request the provider received.
#[derive(Clone, Debug)]
pub struct Received {
    /// Request path.
    pub path: String,
    /// `Authorization` header.
    pub authorization: Option<String>,
    /// JSON body.
    pub body: Value,
}

#[derive(Default)]
struct State {
    queued: VecDeque<Answer>,
    default: Option<Answer>,
    received: Vec<Received>,
}

/// A running fake provider.
pub struct FakeProvider {
    /// `http://127.0.0.1:port`.
    pub base: String,
    state: Arc<Mutex<State>>,
    handle: actix_web::dev::ServerHandle,
}

impl FakeProvider {
    /// Starts a provider answering `default` to every request until told otherwise.
    pub fn start(default: Answer) -> Self {
        let state = Arc::new(Mutex::new(State {
            default: Some(default),
            ..State::default()
        }));
        let shared = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(shared.clone()))
                .default_service(web::to(answer))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .bind("127.0.0.1:0")
        .unwrap();
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            base: format!("http://{addr}"),
            state,
            handle,
        }
    }

    /// Answers `a` to every request from now on.
    pub fn always(&self, a: Answer) {
        let mut s = self.state.lock().unwrap();
        s.queued.clear();
        s.default = Some(a);
    }

    /// Requests received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// How many requests arrived.
    pub fn hits(&self) -> usize {
        self.state.lock().unwrap().received.len()
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        // Stopping is best effort: the test runtime ends with the test anyway.
        let stop = self.handle.stop(false);
        drop(stop);
    }
}

async fn answer(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Arc<Mutex<State>>>,
) -> HttpResponse {
    let a = {
        let mut s = state.lock().unwrap();
        s.received.push(Received {
            path: req.path().to_owned(),
            authorization: req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
        s.queued.pop_front().or_else(|| s.default.clone()).unwrap()
    };
    match a {
        Answer::Json(status, body, retry_after) => {
            let mut res =
                HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
            if let Some(secs) = retry_after {
                res.insert_header(("Retry-After", secs.to_string()));
            }
            res.json(body)
        }
        Answer::Slow(d) => {
            tokio::time::sleep(d).await;
            HttpResponse::Ok().json(json!({}))
        }
    }
}

/// FCM: message accepted.
pub fn fcm_ok() -> Answer {
    Answer::Json(
        200,
        json!({ "name": "projects/p/messages/0:1500415314455276%31bd1c9631bd1c96" }),
        None,
    )
}

/// FCM: an error with the documented envelope and `FcmError` detail.
pub fn fcm_error(
    status: u16,
    grpc_status: &str,
    error_code: &str,
    retry_after: Option<u64>,
) -> Answer {
    Answer::Json(
        status,
        json!({ "error": {
            "code": status,
            "message": "fake provider error",
            "status": grpc_status,
            "details": [{
                "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": error_code
            }]
        }}),
        retry_after,
    )
}

/// FCM: 400 INVALID_ARGUMENT naming the token.
pub fn fcm_invalid_token() -> Answer {
    Answer::Json(
        400,
        json!({ "error": {
            "code": 400,
            "message": "The registration token is not a valid FCM registration token",
            "status": "INVALID_ARGUMENT",
            "details": [
                { "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT" },
                { "@type": "type.googleapis.com/google.rpc.BadRequest",
                  "fieldViolations": [{ "field": "message.token", "description": "Invalid registration token" }] }
            ]
        }}),
        None,
    )
}

/// OneSignal: notification created.
pub fn onesignal_ok() -> Answer {
    Answer::Json(
        200,
        json!({ "id": "b98881cc-1e94-4366-bbd9-db8f3429292b", "external_id": null }),
        None,
    )
}

/// OneSignal: 200 naming invalid ids under `key` (`invalid_player_ids` or
/// `invalid_subscription_ids`).
pub fn onesignal_invalid(key: &str, ids: &[&str]) -> Answer {
    Answer::Json(200, json!({ "id": "", "errors": { key: ids } }), None)
}
