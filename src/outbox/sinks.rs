//! Where the relay hands events: the [`Sink`] trait and the sinks of this role.
//!
//! - [`RedisPublish`]: `PUBLISH` on the deployment's events channel, for every gateway.
//! - [`HubPublish`]: the in-process hub, doing the same job when no Redis is configured
//!   (`itsur all` on one machine).
//! - [`Webhook`]: an optional signed POST per event (`WEBHOOK_URL`, `WEBHOOK_SECRET`), behind
//!   the `webhook` circuit breaker of `resilience`.
//! - `rabbitmq::RabbitMq` / `nats::Nats`: the broker sinks (`AMQP_URL`, `NATS_URL`), driven
//!   by `broker::BrokerSink` (connection, acks, bookkeeping), each behind its own circuit breaker
//!   (`amqp`, `nats`).
//! - [`EnqueuePush`]: `order.status_changed` to `ready` → a `send_push` job for the student,
//!   written in the claim transaction (so it commits with the mark-published) under the
//!   unique key `push:order-ready:<event id>` (so an event delivered twice makes one job).
//!
//! A sink receives the claim transaction's connection, so a sink can write in the same
//! transaction as the mark-published. Such a sink wraps each event's writes in a nested
//! transaction (`conn.transaction`, a SAVEPOINT): a failed statement otherwise aborts the
//! whole claim transaction.
//!
//! Env vars (through `config::OutboxSettings`): `WEBHOOK_URL`, `WEBHOOK_SECRET`,
//! `WEBHOOK_TIMEOUT_MS`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use diesel_async::AsyncPgConnection;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::broker::BrokerSink;
use crate::app::Ctx;
use crate::config::WebhookSettings;
use crate::domain::OrderStatus;
use crate::domain::event::{Event, EventEnvelope};
use crate::kv::Kv;
use crate::realtime::hub::{Hub, LiveEvent};
use crate::resilience::CircuitBreaker;

/// Why a sink did not take an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The sink's backend is down (Redis unreachable, circuit open, call skipped after an
    /// earlier transport failure): the event waits without spending an attempt.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// This delivery failed: it counts as an attempt (backoff, then dead after the last).
    #[error("failed: {0}")]
    Failed(String),
}

/// A destination for outbox events.
pub trait Sink: Send + Sync {
    /// Stable name: metrics label and the entry in `outbox_events.sinks_done`.
    fn name(&self) -> &'static str;

    /// Delivers `events` (oldest first); returns one result per event, in order. `tx` is
    /// the relay's claim transaction (see the module docs before writing through it).
    fn deliver<'a>(
        &'a self,
        tx: &'a mut AsyncPgConnection,
        events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Vec<Result<(), SinkError>>>;
}

/// The sinks a relay on `ctx` runs: Redis (or the in-process hub without Redis), the push
/// enqueue, then the webhook, RabbitMQ and NATS when configured.
pub fn default_sinks(ctx: &Ctx) -> Vec<Box<dyn Sink>> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    match &ctx.kv {
        Some(kv) => sinks.push(Box::new(RedisPublish { kv: kv.clone() })),
        None => sinks.push(Box::new(HubPublish {
            hub: ctx.hub.clone(),
        })),
    }
    sinks.push(Box::new(EnqueuePush));
    if let Some(webhook) = &ctx.config.outbox.webhook {
        match Webhook::new(webhook, ctx.breakers.get(WEBHOOK_BREAKER)) {
            Ok(sink) => sinks.push(Box::new(sink)),
            Err(e) => {
                tracing::error!(error = %e, "webhook sink disabled: cannot build its HTTP client")
            }
        }
    }
    if let Some(amqp) = &ctx.config.outbox.amqp {
        sinks.push(Box::new(BrokerSink::new(
            super::rabbitmq::RabbitMq::new(amqp.clone()),
            ctx.breakers.get(super::rabbitmq::AMQP_BREAKER),
        )));
    }
    if let Some(nats) = &ctx.config.outbox.nats {
        sinks.push(Box::new(BrokerSink::new(
            super::nats::Nats::new(nats.clone()),
            ctx.breakers.get(super::nats::NATS_BREAKER),
        )));
    }
    sinks
}

/// Enqueues the push notification of an order that became ready.
pub struct EnqueuePush;

impl EnqueuePush {
    /// The `send_push` job for `event`, if the event calls for one.
    pub fn job_for(event: &EventEnvelope) -> Option<crate::store::jobs::NewJob> {
        // Other events, and a payload that is not the typed one, call for no push.
        let Ok(Event::OrderStatusChanged(changed)) = event.typed() else {
            return None;
        };
        if changed.to != OrderStatus::Ready {
            return None;
        }
        let user = changed.user_id;
        let order = event.aggregate_id;
        let short = order.simple().to_string();
        let short = short
            .get(short.len().saturating_sub(6)..)
            .unwrap_or_default();
        Some(crate::store::jobs::NewJob {
            id: uuid::Uuid::now_v7(),
            kind: crate::domain::job::kind::SEND_PUSH.to_owned(),
            queue: "default".to_owned(),
            priority: crate::domain::job::Priority::High.as_i16(),
            payload: serde_json::json!({
                "userId": user,
                "title": "Your order is ready",
                "body": format!("Order …{short} is ready for pickup"),
                "data": { "orderId": order.to_string(), "event": event.event },
            }),
            unique_key: Some(format!("push:order-ready:{}", event.id)),
            run_at: chrono::Utc::now(),
            max_attempts: 8,
            timeout_secs: 60,
            owner_id: Some(user),
            campus_id: Some(changed.campus_id),
        })
    }
}

impl Sink for EnqueuePush {
    fn name(&self) -> &'static str {
        "enqueue_push"
    }

    fn deliver<'a>(
        &'a self,
        tx: &'a mut AsyncPgConnection,
        events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Vec<Result<(), SinkError>>> {
        async move {
            use diesel_async::AsyncConnection;
            let mut out = Vec::with_capacity(events.len());
            for event in events {
                let Some(job) = Self::job_for(event) else {
                    out.push(Ok(()));
                    continue;
                };
                let enqueued = tx
                    .transaction(async |conn| {
                        let enqueued = crate::store::jobs::enqueue(conn, &job).await?;
                        // Delivered when the relay's claim transaction commits (no business
                        // transaction waits on the notify lock here).
                        crate::store::jobs::notify_workers(conn, &job.queue).await?;
                        Ok::<_, diesel::result::Error>(enqueued)
                    })
                    .await;
                out.push(
                    enqueued
                        .map(drop)
                        .map_err(|e| SinkError::Failed(format!("enqueue send_push: {e}"))),
                );
            }
            out
        }
        .boxed()
    }
}

/// `PUBLISH` to the deployment's events channel (pipelined per batch).
pub struct RedisPublish {
    kv: Kv,
}

impl RedisPublish {
    /// A sink publishing through `kv`.
    pub fn new(kv: Kv) -> Self {
        Self { kv }
    }
}

impl Sink for RedisPublish {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn deliver<'a>(
        &'a self,
        _tx: &'a mut AsyncPgConnection,
        events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Vec<Result<(), SinkError>>> {
        async move {
            let outcome = crate::kv::pubsub::publish(&self.kv, events)
                .await
                .map_err(|e| SinkError::Unavailable(e.to_string()));
            vec![outcome; events.len()]
        }
        .boxed()
    }
}

/// The in-process hub (no Redis): this process's sockets receive the events directly.
pub struct HubPublish {
    hub: Hub,
}

impl HubPublish {
    /// A sink dispatching into `hub`.
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }
}

impl Sink for HubPublish {
    fn name(&self) -> &'static str {
        "hub"
    }

    fn deliver<'a>(
        &'a self,
        _tx: &'a mut AsyncPgConnection,
        events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Vec<Result<(), SinkError>>> {
        for event in events {
            self.hub
                .dispatch(Arc::new(LiveEvent::from((*event).clone())));
        }
        std::future::ready(vec![Ok(()); events.len()]).boxed()
    }
}

/// Name of the webhook's circuit breaker (Redis key part, metric label, `/health` entry).
pub const WEBHOOK_BREAKER: &str = "webhook";

/// Signed webhook POSTs, one per event, a few at a time.
pub struct Webhook {
    client: reqwest::Client,
    url: String,
    secret: Vec<u8>,
    breaker: Arc<CircuitBreaker>,
}

/// Webhook calls in flight at once within a batch.
const WEBHOOK_CONCURRENCY: usize = 8;

/// The signature header of webhook calls.
pub const SIGNATURE_HEADER: &str = "X-Itsur-Signature";

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: the receiver recomputes it with
/// the shared secret and rejects stale timestamps (replays).
pub fn signature(secret: &[u8], unix_seconds: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={unix_seconds},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

impl Webhook {
    /// A webhook sink from its settings, each call behind `breaker`.
    pub fn new(settings: &WebhookSettings, breaker: Arc<CircuitBreaker>) -> reqwest::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(2)))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            url: settings.url.expose().clone(),
            secret: settings.secret.expose().as_bytes().to_vec(),
            breaker,
        })
    }

    async fn call(&self, event: &EventEnvelope, broken: &AtomicBool) -> Result<(), SinkError> {
        if broken.load(Ordering::Relaxed) {
            return Err(SinkError::Unavailable(
                "skipped: the webhook failed earlier in this batch".to_owned(),
            ));
        }
        // An open breaker (shared by every relay through Redis) skips the call without
        // spending the event's attempt: the endpoint is down, not this event.
        let permit = self.breaker.acquire().await.map_err(|r| {
            SinkError::Unavailable(format!(
                "webhook circuit breaker open; next trial in {:?}",
                r.retry_after
            ))
        })?;
        let body = match serde_json::to_vec(event) {
            Ok(body) => body,
            Err(e) => {
                self.breaker.record(permit, true).await;
                return Err(SinkError::Failed(e.to_string()));
            }
        };
        let signed = signature(&self.secret, chrono::Utc::now().timestamp(), &body);
        let sent = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signed)
            .header("X-Itsur-Event-Id", event.id.to_string())
            .header("X-Itsur-Event", event.event.as_str())
            .body(body)
            .send()
            .await;
        match sent {
            Ok(res) if res.status().is_success() => {
                self.breaker.record(permit, true).await;
                Ok(())
            }
            Ok(res) => {
                let status = res.status();
                // A 4xx other than 408/429 is an answer from a healthy endpoint about this
                // event; 5xx, 408 and 429 say the endpoint is struggling.
                let healthy = status.is_client_error()
                    && status != reqwest::StatusCode::REQUEST_TIMEOUT
                    && status != reqwest::StatusCode::TOO_MANY_REQUESTS;
                self.breaker.record(permit, healthy).await;
                Err(SinkError::Failed(format!("webhook answered {status}")))
            }
            Err(e) => {
                self.breaker.record(permit, false).await;
                // Timeouts and refused connections hit every event alike: spend this event's
                // attempt, skip the rest of the batch without spending theirs.
                broken.store(true, Ordering::Relaxed);
                Err(SinkError::Failed(format!(
                    "webhook unreachable: {}",
                    e.without_url()
                )))
            }
        }
    }
}

impl Sink for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn deliver<'a>(
        &'a self,
        _tx: &'a mut AsyncPgConnection,
        events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Vec<Result<(), SinkError>>> {
        async move {
            let broken = AtomicBool::new(false);
            let broken = &broken;
            let calls: Vec<_> = events.iter().map(|e| self.call(e, broken)).collect();
            futures_util::stream::iter(calls)
                .buffered(WEBHOOK_CONCURRENCY)
                .collect()
                .await
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Reference value: printf '1700000000.{"id":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            signature(b"secret", 1_700_000_000, br#"{"id":1}"#),
            "t=1700000000,v1=3dd1b9aef568d75f6790a84bd2e5dfa1f44409eef3cbdbd3f10b837376100c11"
        );
    }
}
