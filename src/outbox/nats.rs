//! The NATS JetStream sink: every event published to `<NATS_SUBJECT_PREFIX>.<event type>`
//! (`itsur.order.created`, …) with the outbox id as `Nats-Msg-Id`, so JetStream drops a
//! redelivery within the stream's duplicate window (2 minutes) and consumers drop older ones
//! by the same id (also in the `X-Itsur-Event-Id` header). JSON body = the webhook's envelope.
//!
//! A publish counts as delivered for this sink once JetStream acked it (stored; a duplicate's
//! ack counts too). The stream `NATS_STREAM` over `<prefix>.>` is created (file storage) on
//! connect when missing. An unreachable server, a lost connection or acks that do not come
//! within `NATS_TIMEOUT_MS` leave the events pending without spending attempts and count
//! against the `nats` circuit breaker (open: the server is skipped, the other sinks keep
//! their pace); an error JetStream answers for one message (too large) spends its attempt.
//!
//! Env vars (through `config::NatsSettings`): `NATS_URL`, `NATS_SUBJECT_PREFIX`,
//! `NATS_STREAM`, `NATS_TIMEOUT_MS`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use diesel_async::AsyncPgConnection;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::Mutex;

use super::sinks::{Sink, SinkError};
use crate::config::NatsSettings;
use crate::kv::hub::EventEnvelope;
use crate::resilience::CircuitBreaker;

/// Name of the NATS sink's circuit breaker (and its metrics label and `sinks_done` entry).
pub const NATS_BREAKER: &str = "nats";
/// Header carrying the outbox id besides `Nats-Msg-Id`.
pub const EVENT_ID_HEADER: &str = "X-Itsur-Event-Id";
/// JetStream's de-duplication window of the stream this sink creates.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// A connected client and its JetStream context.
struct Link {
    client: async_nats::Client,
    js: jetstream::Context,
}

/// Publishes to NATS JetStream with acks.
pub struct Nats {
    settings: NatsSettings,
    breaker: Arc<CircuitBreaker>,
    link: Mutex<Option<Link>>,
}

/// What became of one event.
enum Outcome {
    Acked,
    /// JetStream refused this message: spends its attempt.
    Rejected(String),
    /// The server did not answer: the event waits.
    Lost(String),
}

impl Nats {
    /// A sink for `settings`; it connects on its first batch.
    pub fn new(settings: NatsSettings, breaker: Arc<CircuitBreaker>) -> Self {
        Self {
            settings,
            breaker,
            link: Mutex::new(None),
        }
    }

    /// Connects (the client then reconnects by itself) and makes sure the stream exists.
    async fn connect(&self) -> Result<Link, String> {
        let client = async_nats::ConnectOptions::new()
            .name("itsur outbox-relay")
            .connection_timeout(self.settings.timeout)
            .request_timeout(Some(self.settings.timeout))
            .connect(self.settings.url.expose().as_str())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(self.settings.timeout)
            .build(client.clone());
        js.get_or_create_stream(stream::Config {
            name: self.settings.stream.clone(),
            subjects: vec![format!("{}.>", self.settings.subject_prefix)],
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..stream::Config::default()
        })
        .await
        .map_err(|e| format!("stream {}: {e}", self.settings.stream))?;
        Ok(Link { client, js })
    }

    /// Publishes `events` (all sent, then every ack awaited); one outcome per event.
    async fn publish(&self, js: &jetstream::Context, events: &[&EventEnvelope]) -> Vec<Outcome> {
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let body = match serde_json::to_vec(event) {
                Ok(body) => body,
                Err(e) => {
                    pending.push(Err(Outcome::Rejected(e.to_string())));
                    continue;
                }
            };
            let id = event.id.to_string();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(EVENT_ID_HEADER, id.as_str());
            let message = PublishMessage::build()
                .payload(body.into())
                .headers(headers)
                .message_id(&id);
            let subject = format!("{}.{}", self.settings.subject_prefix, event.event);
            pending.push(js.send_publish(subject, message).await.map_err(classify));
        }
        let mut out = Vec::with_capacity(events.len());
        for p in pending {
            out.push(match p {
                Err(o) => o,
                Ok(ack) => match ack.await {
                    Ok(_) => Outcome::Acked,
                    Err(e) => classify(e),
                },
            });
        }
        out
    }
}

/// Sorts a publish error: the server's verdict on one message, or the server being away.
fn classify(e: jetstream::context::PublishError) -> Outcome {
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded
        | PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence => Outcome::Rejected(format!("nats: {e}")),
        PublishErrorKind::StreamNotFound
        | PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending
        | PublishErrorKind::Other => Outcome::Lost(format!("nats: {e}")),
    }
}

impl Sink for Nats {
    fn name(&self) -> &'static str {
        NATS_BREAKER
    }

    fn deliver<'a>(
        &'a self,
        _tx: &'a mut AsyncPgConnection,
        events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Vec<Result<(), SinkError>>> {
        async move {
            let unavailable = |m: String| vec![Err(SinkError::Unavailable(m)); events.len()];
            let permit = match self.breaker.acquire().await {
                Ok(p) => p,
                Err(r) => {
                    return unavailable(format!(
                        "nats circuit breaker open; next trial in {:?}",
                        r.retry_after
                    ));
                }
            };
            let mut link = self.link.lock().await;
            if link.is_none() {
                match tokio::time::timeout(self.settings.timeout, self.connect()).await {
                    Ok(Ok(l)) => *link = Some(l),
                    Ok(Err(e)) => {
                        self.breaker.record(permit, false).await;
                        return unavailable(format!("nats {e}"));
                    }
                    Err(_) => {
                        self.breaker.record(permit, false).await;
                        return unavailable("nats connect timed out".to_owned());
                    }
                }
            }
            let Some((client, js)) = link.as_ref().map(|l| (l.client.clone(), l.js.clone())) else {
                self.breaker.record(permit, false).await;
                return unavailable("nats not connected".to_owned());
            };
            // The client reconnects by itself; while it is away, do not queue a batch into it.
            if client.connection_state() == State::Disconnected {
                self.breaker.record(permit, false).await;
                return unavailable("nats disconnected (reconnecting)".to_owned());
            }
            // Acks have their own deadline (the context's timeout); this one bounds the rest.
            let deadline = self.settings.timeout.saturating_mul(2);
            let outcomes = match tokio::time::timeout(deadline, self.publish(&js, events)).await {
                Ok(o) => o,
                Err(_) => {
                    self.breaker.record(permit, false).await;
                    return unavailable("nats acks timed out".to_owned());
                }
            };
            let lost = outcomes.iter().any(|o| matches!(o, Outcome::Lost(_)));
            if lost && outcomes.iter().all(|o| !matches!(o, Outcome::Acked)) {
                // Nothing got through: reconnect (and re-check the stream) next time.
                *link = None;
            }
            self.breaker.record(permit, !lost).await;
            outcomes
                .into_iter()
                .map(|o| match o {
                    Outcome::Acked => Ok(()),
                    Outcome::Rejected(m) => Err(SinkError::Failed(m)),
                    Outcome::Lost(m) => Err(SinkError::Unavailable(m)),
                })
                .collect()
        }
        .boxed()
    }
}
