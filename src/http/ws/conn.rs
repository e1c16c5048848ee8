//! One WebSocket connection: `hello`, then live events from its hub subscriber, `resume`
//! replays (via `service::events`), server pings and the idle timeout, and the close codes
//! of `protocol`.
//!
//! Ordering and duplicates: the connection remembers the ids it sent ([`SentIds`]); an event
//! arriving twice (replayed and live, or re-published by a relay that died before marking
//! it) is sent once. Live events that arrive while a replay runs wait in the subscriber's
//! bounded queue and are de-duplicated after it. A lower id that shows up late (its
//! transaction committed after a higher one) is still sent: only ids actually sent are
//! dropped, never "everything at or below the highest".

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::protocol::{
    CLOSE_IDLE, CLOSE_RESTARTING, CLOSE_SESSION_ENDED, CLOSE_SLOW_CONSUMER, ClientMessage,
    EventFrame, SUBPROTOCOL, ServerMessage,
};
use crate::app::Ctx;
use crate::domain::Actor;
use crate::domain::event::{Subscription, Tenant};
use crate::realtime::hub::{LiveEvent, Subscriber};
use crate::service::events::{self, ReplayRequest};

/// Counter: closed connections by `reason`.
pub const WS_DISCONNECTS_TOTAL: &str = "ws_disconnects_total";
/// Counter: events sent to clients, by `via` (`live` | `replay`).
pub const WS_EVENTS_SENT_TOTAL: &str = "ws_events_sent_total";

/// Events per replay query.
const REPLAY_PAGE: i64 = 500;
/// Events one resume replays at most; beyond it the client is told to reload.
const REPLAY_MAX: usize = 10_000;
/// How long a close frame may wait behind a backed-up socket.
const CLOSE_WAIT: Duration = Duration::from_secs(10);
/// Client frames are small JSON commands.
const MAX_CLIENT_FRAME: usize = 4096;
/// Ids remembered for de-duplication: duplicates arrive within about one relay batch (a
/// relay that died re-publishes at most `OUTBOX_BATCH_SIZE`) or one send queue (the resume
/// seam); at most 4 KiB per connection.
const SENT_WINDOW: usize = 512;

/// The ids a connection has sent: the highest, and a window of recent ones.
#[derive(Debug)]
pub struct SentIds {
    max: i64,
    recent: VecDeque<i64>,
}

impl SentIds {
    /// Nothing sent yet; ids up to `floor` count as "before this connection" for the resume
    /// cursor but are not treated as sent.
    pub fn new(floor: i64) -> Self {
        Self {
            max: floor,
            recent: VecDeque::new(),
        }
    }

    /// Records `id`; false when it was sent already (a duplicate to drop).
    pub fn first_time(&mut self, id: i64) -> bool {
        if id <= self.max && self.recent.contains(&id) {
            return false;
        }
        if self.recent.len() == SENT_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(id);
        self.max = self.max.max(id);
        true
    }

    /// The cursor to catch up from: the highest id sent (or the floor).
    pub fn cursor(&self) -> i64 {
        self.max
    }
}

/// Why a connection ends.
enum End {
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// The client closed: answer with a close frame carrying its status code (RFC 6455
    /// §5.5.1: "the endpoint typically echos the status code it received").
    Echo(Option<CloseReason>),
    /// The peer is gone (reset, stream ended): nothing more to say.
    Gone,
}

/// A narrowing of a connection's stream to one aggregate (`?topics=flow-run:<id>`).
#[derive(Debug, Clone)]
pub struct Topic {
    /// Aggregate type of its events.
    pub aggregate_type: &'static str,
    /// Aggregate id.
    pub id: Uuid,
}

/// A running connection.
pub struct Conn {
    topics: Vec<Topic>,
    ctx: Ctx,
    actor: Actor,
    id: Uuid,
    session: Session,
    subscriber: Subscriber,
    overflowed: CancellationToken,
    sent: SentIds,
}

fn subscription_name(s: Subscription) -> &'static str {
    match s.tenant {
        Tenant::Own => "user",
        Tenant::Vendor(_) => "vendor",
        Tenant::Campus(_) => "campus",
        Tenant::All => "all",
    }
}

/// Runs a connection until it ends. `resume_after` (the `?after=` query parameter) replays
/// before any live event is sent.
#[expect(
    clippy::too_many_arguments,
    reason = "a connection's parts, handed over once by the upgrade"
)]
pub async fn run(
    ctx: Ctx,
    actor: Actor,
    subscription: Subscription,
    subscriber: Subscriber,
    session: Session,
    stream: MessageStream,
    resume_after: Option<i64>,
    topics: Vec<Topic>,
) {
    let id = Uuid::now_v7();
    let overflowed = subscriber.overflowed();
    let mut conn = Conn {
        topics,
        ctx,
        actor,
        id,
        session,
        subscriber,
        overflowed,
        sent: SentIds::new(0),
    };
    let span = tracing::info_span!("ws", connection.id = %id, user.id = %conn.actor.user_id);
    let end = tracing::Instrument::instrument(
        conn.serve(subscription, stream, resume_after),
        span.clone(),
    )
    .await;
    let reason = match &end {
        End::Close(code, _) => match *code {
            CLOSE_SLOW_CONSUMER => "slow_consumer",
            CLOSE_IDLE => "idle",
            CLOSE_SESSION_ENDED => "session_ended",
            CLOSE_RESTARTING => "shutdown",
            _ => "protocol",
        },
        End::Echo(_) | End::Gone => "client",
    };
    metrics::counter!(WS_DISCONNECTS_TOTAL, "reason" => reason).increment(1);
    span.in_scope(|| tracing::debug!(reason, "websocket closed"));
    let Conn {
        session,
        subscriber,
        ..
    } = conn;
    // Free the queue before possibly waiting on a backed-up socket.
    drop(subscriber);
    let reason = match end {
        End::Close(code, text) => Some(CloseReason {
            code: CloseCode::from(code),
            description: Some(text.to_owned()),
        }),
        // The code only, not the client's text (it is the client's to read, not ours to
        // repeat); a close without a code is answered without one.
        End::Echo(reason) => reason.map(|r| CloseReason {
            code: echoed_close_code(r.code),
            description: None,
        }),
        End::Gone => return,
    };
    // A client that reads nothing cannot take a close frame either; give up after a while
    // (the connection's buffers are bounded, and dropping the session ends it).
    let _ = tokio::time::timeout(CLOSE_WAIT, session.close(reason)).await;
}

impl Conn {
    async fn serve(
        &mut self,
        subscription: Subscription,
        stream: MessageStream,
        resume_after: Option<i64>,
    ) -> End {
        let mut stream = stream.max_frame_size(MAX_CLIENT_FRAME);
        let last_event_id = match events::latest_event_id(&self.ctx, &self.actor).await {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(error = %e, "no latest event id for hello");
                0
            }
        };
        self.sent = SentIds::new(last_event_id);
        let ws = self.ctx.config.ws;
        let hello = ServerMessage::Hello {
            protocol: SUBPROTOCOL,
            connection_id: self.id,
            role: self.actor.role.as_str(),
            subscription: subscription_name(subscription),
            last_event_id,
            ping_secs: ws.ping_interval.as_secs(),
            idle_timeout_secs: ws.idle_timeout.as_secs(),
        };
        if let Err(end) = self.send_text(hello.to_json()).await {
            return end;
        }
        if let Some(after) = resume_after
            && let Err(end) = self.resume(after).await
        {
            return end;
        }
        let closing = self.ctx.hub.closing();
        let overflowed = self.overflowed.clone();
        let mut gaps = self.subscriber.gap_signal();
        let mut last_heard = Instant::now();
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + ws.ping_interval,
            ws.ping_interval,
        );
        let mut recheck = tokio::time::interval_at(
            tokio::time::Instant::now() + ws.session_recheck,
            ws.session_recheck,
        );
        loop {
            let step = tokio::select! {
                biased;
                () = overflowed.cancelled() => {
                    Err(End::Close(CLOSE_SLOW_CONSUMER, "slow consumer: reconnect and resume"))
                }
                () = closing.cancelled() => {
                    Err(End::Close(CLOSE_RESTARTING, "server restarting: reconnect and resume"))
                }
                frame = stream.next() => {
                    last_heard = Instant::now();
                    self.on_frame(frame).await
                }
                event = self.subscriber.recv() => match event {
                    Some(event) => self.send_event(&event, "live").await,
                    // Dropped from the hub: only an overflow does that (handled above).
                    None => Err(End::Close(CLOSE_SLOW_CONSUMER, "slow consumer: reconnect and resume")),
                },
                () = gaps.changed() => {
                    // The gateway's feed was down: catch up from this connection's cursor.
                    let cursor = self.sent.cursor();
                    self.replay(cursor).await.map(|_| ())
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > ws.idle_timeout {
                        Err(End::Close(CLOSE_IDLE, "idle timeout"))
                    } else {
                        self.send(Out::Ping).await
                    }
                }
                _ = recheck.tick() => match events::session_is_live(&self.ctx, &self.actor).await {
                    Ok(false) => Err(End::Close(CLOSE_SESSION_ENDED, "session ended: log in again")),
                    // Postgres unreachable: keep the connection; the next check decides.
                    Ok(true) | Err(_) => Ok(()),
                },
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn on_frame(
        &mut self,
        frame: Option<Result<Message, actix_ws::ProtocolError>>,
    ) -> Result<(), End> {
        match frame {
            None => Err(End::Gone),
            Some(Ok(Message::Close(reason))) => Err(End::Echo(reason)),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "websocket protocol error");
                Err(End::Close(u16::from(CloseCode::Protocol), "protocol error"))
            }
            Some(Ok(Message::Ping(bytes))) => self.send(Out::Pong(bytes.to_vec())).await,
            Some(Ok(Message::Pong(_) | Message::Nop)) => Ok(()),
            Some(Ok(Message::Binary(_) | Message::Continuation(_))) => Err(End::Close(
                u16::from(CloseCode::Unsupported),
                "text frames only",
            )),
            Some(Ok(Message::Text(text))) => match serde_json::from_str::<ClientMessage>(&text) {
                Ok(ClientMessage::Ping) => {
                    // A barrier: every event already queued for this connection goes first.
                    while let Some(event) = self.subscriber.try_recv() {
                        self.send_event(&event, "live").await?;
                    }
                    self.send_text(ServerMessage::Pong.to_json()).await
                }
                Ok(ClientMessage::Resume { after }) => self.resume(after).await,
                Err(e) => {
                    let msg = ServerMessage::Error {
                        code: "bad_message",
                        message: format!(
                            "expected {{\"type\":\"resume\",\"after\":<id>}} or {{\"type\":\"ping\"}}: {e}"
                        ),
                    };
                    self.send_text(msg.to_json()).await
                }
            },
        }
    }

    /// Replays after `after`, then tells the client where the replay ended.
    async fn resume(&mut self, after: i64) -> Result<(), End> {
        let after = after.max(0);
        match self.replay(after).await? {
            Some((replayed, complete)) => {
                let msg = ServerMessage::Resumed {
                    after,
                    replayed,
                    complete,
                    last_event_id: self.sent.cursor(),
                };
                self.send_text(msg.to_json()).await
            }
            None => {
                let msg = ServerMessage::Error {
                    code: "replay_unavailable",
                    message: "the event history is unavailable right now; send resume again"
                        .to_owned(),
                };
                self.send_text(msg.to_json()).await
            }
        }
    }

    /// Sends the events after `after` the actor may see (and late ones just below it) that
    /// this connection has not sent. `Ok(None)` when the history could not be read.
    async fn replay(&mut self, after: i64) -> Result<Option<(usize, bool)>, End> {
        let mut req = ReplayRequest {
            after,
            include_late: true,
            limit: REPLAY_PAGE,
        };
        let mut replayed = 0;
        let mut complete = true;
        loop {
            let page = match events::replay_after(&self.ctx, &self.actor, req).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, after, "replay failed");
                    return Ok(None);
                }
            };
            if req.include_late {
                complete &= page.cursor_known;
            }
            let (more, next_after) = (page.more, page.next_after);
            for event in page.events {
                if self.sent.first_time(event.id) {
                    self.send_frame(&LiveEvent::from(event), "replay").await?;
                    replayed += 1;
                }
            }
            if !more {
                break;
            }
            if replayed >= REPLAY_MAX {
                complete = false;
                break;
            }
            req = ReplayRequest {
                after: next_after,
                include_late: false,
                limit: REPLAY_PAGE,
            };
        }
        Ok(Some((replayed, complete)))
    }

    async fn send_event(&mut self, event: &Arc<LiveEvent>, via: &'static str) -> Result<(), End> {
        if !self.sent.first_time(event.id) {
            return Ok(());
        }
        self.send_frame(event, via).await
    }

    async fn send_frame(&mut self, event: &LiveEvent, via: &'static str) -> Result<(), End> {
        // Topics narrow the stream; the cursor still moves past what they filter out.
        if !self.topics.is_empty()
            && !self
                .topics
                .iter()
                .any(|t| t.aggregate_type == event.aggregate_type && t.id == event.aggregate_id)
        {
            return Ok(());
        }
        // Encoded once per event, whatever the number of sockets it goes to (perf of the
        // realtime bench had JSON encoding per socket as the top user-space cost).
        let frame = event
            .text_frame
            .get_or_init(|| ServerMessage::Event(EventFrame::from(&event.envelope)).to_json());
        self.send(Out::Text(frame)).await?;
        metrics::counter!(WS_EVENTS_SENT_TOTAL, "via" => via).increment(1);
        Ok(())
    }

    async fn send_text(&mut self, text: String) -> Result<(), End> {
        self.send(Out::Text(text.into())).await
    }

    /// Sends on the session, abandoning the send when the hub declares this connection too
    /// slow (a send blocks while the client's socket is backed up) or the server closes.
    async fn send(&mut self, out: Out) -> Result<(), End> {
        let overflowed = self.overflowed.clone();
        let closing = self.ctx.hub.closing();
        let session = &mut self.session;
        let sending = async move {
            match out {
                Out::Text(text) => session.text(text).await,
                Out::Ping => session.ping(b"").await,
                Out::Pong(bytes) => session.pong(&bytes).await,
            }
        };
        tokio::select! {
            biased;
            () = overflowed.cancelled() => {
                Err(End::Close(CLOSE_SLOW_CONSUMER, "slow consumer: reconnect and resume"))
            }
            () = closing.cancelled() => {
                Err(End::Close(CLOSE_RESTARTING, "server restarting: reconnect and resume"))
            }
            sent = sending => sent.map_err(|_| End::Gone),
        }
    }
}

/// The code to answer a client's close frame with: its own when that may be sent on the
/// wire (RFC 6455 §7.4), else 1002 (protocol error: 1005, 1006 and 1015 are reserved for
/// reporting, and unassigned codes below 3000 are not the client's to use).
fn echoed_close_code(code: CloseCode) -> CloseCode {
    match u16::from(code) {
        1000..=1003 | 1007..=1014 | 3000..=4999 => code,
        _ => CloseCode::Protocol,
    }
}

/// A frame to send.
enum Out {
    Text(bytestring::ByteString),
    Ping,
    Pong(Vec<u8>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_ids_drop_only_what_was_sent() {
        let mut sent = SentIds::new(100);
        assert!(sent.first_time(101));
        assert!(sent.first_time(103));
        assert!(!sent.first_time(103));
        // A lower id that committed late is still new.
        assert!(sent.first_time(102));
        assert!(!sent.first_time(101));
        // Below the floor: not sent on this connection, so it goes out.
        assert!(sent.first_time(50));
        assert_eq!(sent.cursor(), 103);
    }

    #[test]
    fn a_client_close_code_is_echoed_when_it_may_be_sent() {
        for code in [1000_u16, 1001, 1003, 1011, 3000, 4008, 4999] {
            assert_eq!(u16::from(echoed_close_code(CloseCode::from(code))), code);
        }
        for code in [999_u16, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert_eq!(
                u16::from(echoed_close_code(CloseCode::from(code))),
                1002,
                "{code}"
            );
        }
    }

    #[test]
    fn sent_ids_window_is_bounded() {
        let mut sent = SentIds::new(0);
        for id in 1..=5000 {
            assert!(sent.first_time(id));
        }
        assert_eq!(sent.recent.len(), SENT_WINDOW);
        assert!(!sent.first_time(5000));
    }
}
