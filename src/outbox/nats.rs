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

use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};

use super::broker::{Broker, LinkState, Outcome};
use crate::config::NatsSettings;
use crate::domain::event::EventEnvelope;

/// Name of the NATS sink's circuit breaker (and its metrics label and `sinks_done` entry).
pub const NATS_BREAKER: &str = "nats";
/// Header carrying the outbox id besides `Nats-Msg-Id`.
pub const EVENT_ID_HEADER: &str = "X-Itsur-Event-Id";
/// JetStream's de-duplication window of the stream this sink creates.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// A connected client and its JetStream context.
pub struct Link {
    client: async_nats::Client,
    js: jetstream::Context,
}

/// Publishes to NATS JetStream with acks (driven by `broker::BrokerSink`).
pub struct Nats {
    settings: NatsSettings,
}

impl Nats {
    /// The broker for `settings`.
    pub fn new(settings: NatsSettings) -> Self {
        Self { settings }
    }
}

/// Sorts a publish error: the server's verdict on one message, or the server being away.
fn classify(e: jetstream::context::PublishError) -> Outcome {
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded
        | PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence => Outcome::Rejected(e.to_string()),
        PublishErrorKind::StreamNotFound
        | PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending
        | PublishErrorKind::Other => Outcome::Lost(e.to_string()),
    }
}

impl Broker for Nats {
    type Link = Link;
    const NAME: &'static str = NATS_BREAKER;
    const LABEL: &'static str = "nats";
    const ACKS: &'static str = "acks";

    fn connect_timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// Acks have their own deadline (the context's timeout); this one bounds the rest.
    fn publish_deadline(&self) -> Duration {
        self.settings.timeout.saturating_mul(2)
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

    /// The client reconnects by itself; while it is away, do not queue a batch into it.
    fn state(link: &Link) -> LinkState {
        if link.client.connection_state() == State::Disconnected {
            LinkState::Wait("disconnected (reconnecting)")
        } else {
            LinkState::Ready
        }
    }

    /// Publishes `events` (all sent, then every ack awaited).
    async fn publish(&self, link: &Link, events: &[&EventEnvelope]) -> Vec<Outcome> {
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
            pending.push(
                link.js
                    .send_publish(subject, message)
                    .await
                    .map_err(classify),
            );
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

    /// Keeps the connection unless nothing got through (then reconnect, and re-check the
    /// stream, next time); a missed ack deadline keeps it: the client reconnects by itself.
    fn keep_link(outcomes: Option<&[Outcome]>) -> bool {
        outcomes.is_none_or(|o| {
            !o.iter().any(|o| matches!(o, Outcome::Lost(_)))
                || o.iter().any(|o| matches!(o, Outcome::Acked))
        })
    }
}
