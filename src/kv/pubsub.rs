//! Redis pub/sub of outbox events: the relay [`publish`]es on the deployment's events
//! channel (`kv::keys::events_channel`, prefixed because pub/sub ignores the database
//! number), and each gateway instance holds ONE [`EventFeed`] on a dedicated connection
//! (SUBSCRIBE cannot share a pooled one).

use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};

use super::{Kv, KvUnavailable};
use crate::domain::event::EventEnvelope;

/// Publishes `events` in one pipelined round trip. An error means Redis is unavailable; some
/// of the events may still have been published (delivery is at-least-once).
pub async fn publish(kv: &Kv, events: &[&EventEnvelope]) -> Result<(), KvUnavailable> {
    if events.is_empty() {
        return Ok(());
    }
    let channel = kv.keys.events_channel();
    let mut pipe = redis::pipe();
    for event in events {
        let json = serde_json::to_string(event).map_err(|e| KvUnavailable(e.to_string()))?;
        pipe.cmd("PUBLISH").arg(&channel).arg(json).ignore();
    }
    let mut conn = kv.conn().await?;
    pipe.query_async::<()>(&mut *conn)
        .await
        .map_err(|e| KvUnavailable(e.to_string()))
}

/// A live subscription to the events channel.
pub struct EventFeed {
    sink: PubSubSink,
    stream: PubSubStream,
}

/// What the feed produced.
#[derive(Debug)]
pub enum FeedItem {
    /// An event.
    Event(EventEnvelope),
    /// A message that is not an event envelope (logged and skipped by the caller).
    Malformed(String),
}

impl EventFeed {
    /// Opens a dedicated connection and subscribes to the events channel, within `timeout`.
    pub async fn open(kv: &Kv, timeout: Duration) -> Result<Self, KvUnavailable> {
        let attempt = async {
            let mut pubsub = kv.client().get_async_pubsub().await?;
            pubsub.subscribe(kv.keys.events_channel()).await?;
            Ok::<_, redis::RedisError>(pubsub.split())
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok((sink, stream))) => Ok(Self { sink, stream }),
            Ok(Err(e)) => Err(KvUnavailable(e.to_string())),
            Err(_) => Err(KvUnavailable(format!("no answer within {timeout:?}"))),
        }
    }

    /// The next message; None when the connection is gone.
    pub async fn next(&mut self) -> Option<FeedItem> {
        let msg = self.stream.next().await?;
        let item = match msg.get_payload::<String>() {
            Ok(json) => match serde_json::from_str::<EventEnvelope>(&json) {
                Ok(event) => FeedItem::Event(event),
                Err(e) => FeedItem::Malformed(e.to_string()),
            },
            Err(e) => FeedItem::Malformed(e.to_string()),
        };
        Some(item)
    }

    /// Round-trips a PING on the subscription connection: a black-holed connection delivers
    /// nothing and never ends by itself, so the owner checks it periodically.
    pub async fn ping(&mut self, timeout: Duration) -> Result<(), KvUnavailable> {
        match tokio::time::timeout(timeout, self.sink.ping::<redis::Value>()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(KvUnavailable(e.to_string())),
            Err(_) => Err(KvUnavailable(format!("no PONG within {timeout:?}"))),
        }
    }
}
