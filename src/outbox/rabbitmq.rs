//! The RabbitMQ sink: every event on a durable topic exchange (`AMQP_EXCHANGE`), routing key =
//! event type (`order.created`, …), persistent (delivery mode 2), JSON body = the same
//! envelope the webhook posts. The outbox id rides in the `message_id` property and the
//! `x-itsur-event-id` header, so consumers drop the duplicates at-least-once delivery brings.
//!
//! Publisher confirms: a batch is published on a confirm-mode channel and an event counts as
//! delivered for this sink only once the broker acked it (persisted to the queues it was
//! routed to). A nack spends the event's attempt (backoff, dead after the last); a lost
//! connection, a refused connect or a confirm that does not come within `AMQP_TIMEOUT_MS`
//! leaves the events pending without spending attempts (the broker is down, not the events)
//! and counts against the `amqp` circuit breaker, whose open state skips the broker
//! entirely, so the other sinks keep their pace.
//!
//! Topology declared on connect (idempotent): the exchange, its dead-letter exchange
//! `<exchange>.dlx` (topic, durable) for consumers' queues (`x-dead-letter-exchange`) and the
//! durable queue `<exchange>.dead` bound to it with `#`, so rejected messages are kept.
//!
//! Env vars (through `config::AmqpSettings`): `AMQP_URL`, `AMQP_EXCHANGE`, `AMQP_TIMEOUT_MS`.

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use super::broker::{Broker, LinkState, Outcome};
use crate::config::AmqpSettings;
use crate::domain::event::EventEnvelope;

/// Name of the RabbitMQ sink's circuit breaker (and its metrics label and `sinks_done` entry).
pub const AMQP_BREAKER: &str = "amqp";
/// Header carrying the outbox id (also in the `message_id` property).
pub const EVENT_ID_HEADER: &str = "x-itsur-event-id";

/// An open connection with its confirm-mode channel.
pub struct Link {
    conn: Connection,
    channel: Channel,
}

/// Publishes to RabbitMQ with publisher confirms (driven by `broker::BrokerSink`).
pub struct RabbitMq {
    settings: AmqpSettings,
}

impl RabbitMq {
    /// The broker for `settings`.
    pub fn new(settings: AmqpSettings) -> Self {
        Self { settings }
    }
}

impl Broker for RabbitMq {
    type Link = Link;
    const NAME: &'static str = AMQP_BREAKER;
    const LABEL: &'static str = "rabbitmq";
    const ACKS: &'static str = "confirms";

    fn connect_timeout(&self) -> Duration {
        self.settings.timeout
    }

    fn publish_deadline(&self) -> Duration {
        self.settings.timeout
    }

    /// Connects, declares the topology and turns on publisher confirms.
    async fn connect(&self) -> Result<Link, String> {
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from("itsur outbox-relay"));
        let conn = Connection::connect(self.settings.url.expose(), props)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| format!("channel: {e}"))?;
        declare_topology(&channel, &self.settings.exchange)
            .await
            .map_err(|e| format!("declare: {e}"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| format!("confirm.select: {e}"))?;
        Ok(Link { conn, channel })
    }

    fn state(link: &Link) -> LinkState {
        if link.conn.status().connected() && link.channel.status().connected() {
            LinkState::Ready
        } else {
            LinkState::Reconnect
        }
    }

    /// Publishes `events` on the confirm-mode channel and awaits every confirm.
    async fn publish(&self, link: &Link, events: &[&EventEnvelope]) -> Vec<Outcome> {
        let channel = &link.channel;
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let body = match serde_json::to_vec(event) {
                Ok(body) => body,
                Err(e) => {
                    pending.push(Err(Outcome::Rejected(e.to_string())));
                    continue;
                }
            };
            let sent = channel
                .basic_publish(
                    ShortString::from(self.settings.exchange.as_str()),
                    ShortString::from(event.event.as_str()),
                    BasicPublishOptions::default(),
                    &body,
                    properties(event),
                )
                .await;
            match sent {
                Ok(confirm) => pending.push(Ok(confirm)),
                Err(e) => {
                    // The channel or connection is gone: nothing after this can be sent.
                    pending.push(Err(Outcome::Lost(format!("publish: {e}"))));
                    break;
                }
            }
        }
        let mut out = Vec::with_capacity(events.len());
        let mut lost = None;
        for p in pending {
            let outcome = match p {
                Err(o) => o,
                Ok(confirm) => match confirm.await {
                    Ok(Confirmation::Ack(_)) => Outcome::Acked,
                    Ok(Confirmation::Nack(_)) => {
                        Outcome::Rejected("the broker nacked the message".to_owned())
                    }
                    Ok(Confirmation::NotRequested) => {
                        Outcome::Lost("publisher confirms are off on this channel".to_owned())
                    }
                    Err(e) => Outcome::Lost(format!("confirm: {e}")),
                },
            };
            if let Outcome::Lost(m) = &outcome {
                lost.get_or_insert_with(|| m.clone());
            }
            out.push(outcome);
        }
        // Events after a broken publish were never sent.
        let reason = lost.unwrap_or_else(|| "not sent".to_owned());
        out.resize_with(events.len(), || Outcome::Lost(reason.clone()));
        out
    }

    /// A lost message or a missed confirm deadline means the channel cannot be trusted:
    /// connect again for the next batch.
    fn keep_link(outcomes: Option<&[Outcome]>) -> bool {
        outcomes.is_some_and(|o| !o.iter().any(|o| matches!(o, Outcome::Lost(_))))
    }
}

/// Message properties: persistent JSON with the outbox id as message id and header.
fn properties(event: &EventEnvelope) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from(EVENT_ID_HEADER),
        AMQPValue::LongLongInt(event.id),
    );
    headers.insert(
        ShortString::from("x-itsur-aggregate-version"),
        AMQPValue::LongLongInt(i64::from(event.version)),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(event.id.to_string()))
        .with_type(ShortString::from(event.event.as_str()))
        .with_app_id(ShortString::from("itsur"))
        .with_timestamp(u64::try_from(event.created_at.timestamp()).unwrap_or_default())
        .with_headers(headers)
}

/// The exchange, its dead-letter exchange and the queue that keeps dead letters.
async fn declare_topology(channel: &Channel, exchange: &str) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            ShortString::from(exchange),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    let dlx = format!("{exchange}.dlx");
    channel
        .exchange_declare(
            ShortString::from(dlx.as_str()),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    let dead = format!("{exchange}.dead");
    channel
        .queue_declare(
            ShortString::from(dead.as_str()),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            ShortString::from(dead.as_str()),
            ShortString::from(dlx.as_str()),
            ShortString::from("#"),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}
