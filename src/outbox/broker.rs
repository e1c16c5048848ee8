//! What the broker sinks (`rabbitmq`, `nats`) share: one connection kept between batches,
//! the circuit breaker around connect and publish, a deadline on the broker's acks, and the
//! bookkeeping from per-message outcomes to per-event sink results. A broker says how to
//! connect, whether its connection is usable, how to publish a batch and await its acks, and
//! when to drop the connection after a batch.
//!
//! The rules both follow (issue 15): an event counts as delivered for the sink only once the
//! broker acked it; a message the broker refuses spends the event's attempt
//! (`SinkError::Failed`); a broker that is away, a lost connection or acks that miss their
//! deadline leave the events pending without spending attempts (`SinkError::Unavailable`)
//! and count against the sink's breaker, whose open state skips the broker entirely so the
//! other sinks keep their pace.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use diesel_async::AsyncPgConnection;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::Mutex;

use super::sinks::{Sink, SinkError};
use crate::domain::event::EventEnvelope;
use crate::resilience::CircuitBreaker;

/// What became of one event at the broker.
pub(super) enum Outcome {
    /// Acked (stored or confirmed) by the broker.
    Acked,
    /// The broker refused this message: spends its attempt.
    Rejected(String),
    /// The broker did not answer for it: the event waits, no attempt spent.
    Lost(String),
}

/// Whether a kept connection can take a batch.
pub(super) enum LinkState {
    /// Publish on it.
    Ready,
    /// Drop it and connect again.
    Reconnect,
    /// Leave it (its client reconnects by itself) and report the broker unavailable.
    Wait(&'static str),
}

/// One message broker, as the shared sink drives it.
pub(super) trait Broker: Send + Sync + 'static {
    /// An open connection (and whatever is derived from it: channel, JetStream context).
    type Link: Send + Sync;
    /// The sink's name: breaker name, metrics label and `sinks_done` entry.
    const NAME: &'static str;
    /// How errors name the broker (`rabbitmq`, `nats`).
    const LABEL: &'static str;
    /// What the publish deadline waits for, as errors say it (`confirms`, `acks`).
    const ACKS: &'static str;

    /// Deadline of one connect.
    fn connect_timeout(&self) -> Duration;
    /// Deadline of one batch's publish and acks.
    fn publish_deadline(&self) -> Duration;
    /// Connects and declares what the broker needs.
    fn connect(&self) -> impl Future<Output = Result<Self::Link, String>> + Send;
    /// Whether `link` can take a batch.
    fn state(link: &Self::Link) -> LinkState;
    /// Publishes `events` and awaits their acks; one outcome per event, in order.
    fn publish<'a>(
        &'a self,
        link: &'a Self::Link,
        events: &'a [&'a EventEnvelope],
    ) -> impl Future<Output = Vec<Outcome>> + Send + 'a;
    /// Whether to keep the connection after a batch; `None`: the acks missed the deadline.
    fn keep_link(outcomes: Option<&[Outcome]>) -> bool;
}

/// An outbox sink publishing to a [`Broker`] with acks, behind its circuit breaker.
pub(super) struct BrokerSink<B: Broker> {
    broker: B,
    breaker: Arc<CircuitBreaker>,
    link: Mutex<Option<B::Link>>,
}

impl<B: Broker> BrokerSink<B> {
    /// A sink for `broker`; it connects on its first batch.
    pub(super) fn new(broker: B, breaker: Arc<CircuitBreaker>) -> Self {
        Self {
            broker,
            breaker,
            link: Mutex::new(None),
        }
    }

    async fn deliver_batch(&self, events: &[&EventEnvelope]) -> Vec<Result<(), SinkError>> {
        let label = B::LABEL;
        let unavailable = |m: String| vec![Err(SinkError::Unavailable(m)); events.len()];
        let permit = match self.breaker.acquire().await {
            Ok(p) => p,
            Err(r) => {
                return unavailable(format!(
                    "{} circuit breaker open; next trial in {:?}",
                    B::NAME,
                    r.retry_after
                ));
            }
        };
        let mut link = self.link.lock().await;
        match link.as_ref().map(B::state) {
            Some(LinkState::Ready) => {}
            Some(LinkState::Wait(why)) => {
                self.breaker.record(permit, false).await;
                return unavailable(format!("{label} {why}"));
            }
            None | Some(LinkState::Reconnect) => {
                *link = None;
                let timeout = self.broker.connect_timeout();
                match tokio::time::timeout(timeout, self.broker.connect()).await {
                    Ok(Ok(l)) => *link = Some(l),
                    Ok(Err(e)) => {
                        self.breaker.record(permit, false).await;
                        return unavailable(format!("{label} {e}"));
                    }
                    Err(_) => {
                        self.breaker.record(permit, false).await;
                        return unavailable(format!("{label} connect timed out"));
                    }
                }
            }
        }
        let Some(l) = link.as_ref() else {
            self.breaker.record(permit, false).await;
            return unavailable(format!("{label} not connected"));
        };
        let deadline = self.broker.publish_deadline();
        let Ok(outcomes) = tokio::time::timeout(deadline, self.broker.publish(l, events)).await
        else {
            // Some may have been stored: they will be sent again (consumers de-duplicate by
            // outbox id).
            if !B::keep_link(None) {
                *link = None;
            }
            self.breaker.record(permit, false).await;
            return unavailable(format!("{label} {} timed out", B::ACKS));
        };
        if !B::keep_link(Some(&outcomes)) {
            *link = None;
        }
        let lost = outcomes.iter().any(|o| matches!(o, Outcome::Lost(_)));
        self.breaker.record(permit, !lost).await;
        outcomes
            .into_iter()
            .map(|o| match o {
                Outcome::Acked => Ok(()),
                Outcome::Rejected(m) => Err(SinkError::Failed(format!("{label}: {m}"))),
                Outcome::Lost(m) => Err(SinkError::Unavailable(format!("{label}: {m}"))),
            })
            .collect()
    }
}

impl<B: Broker> Sink for BrokerSink<B> {
    fn name(&self) -> &'static str {
        B::NAME
    }

    fn deliver<'a>(
        &'a self,
        _tx: &'a mut AsyncPgConnection,
        events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Vec<Result<(), SinkError>>> {
        self.deliver_batch(events).boxed()
    }
}
