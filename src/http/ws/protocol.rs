//! The WebSocket protocol of `GET /ws` (documented in docs/ARCHITECTURE.md and README): the
//! JSON messages each way and the close codes. Every server message is a text frame holding
//! one JSON object with a `type`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::event::EventEnvelope;

/// Sub-protocol the server selects when the client offers it (`Sec-WebSocket-Protocol`).
/// A browser passing its token as a sub-protocol offers `itsur.v1, bearer.<token>`; the
/// server answers `itsur.v1` and never echoes the token.
pub const SUBPROTOCOL: &str = "itsur.v1";
/// Prefix of the sub-protocol entry that carries the access token.
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";

/// Close: the client could not keep up with its events; reconnect and resume.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close: nothing (not even a pong) arrived within the idle timeout.
pub const CLOSE_IDLE: u16 = 4000;
/// Close: the session was revoked or expired; log in again.
pub const CLOSE_SESSION_ENDED: u16 = 4001;
/// Close (RFC 6455 1012, service restart): the server is stopping; reconnect and resume.
pub const CLOSE_RESTARTING: u16 = 1012;

/// What the server says.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMessage<'a> {
    /// First message of every connection.
    #[serde(rename_all = "camelCase")]
    Hello {
        /// Always [`SUBPROTOCOL`].
        protocol: &'static str,
        /// Id of this connection (for support and logs).
        connection_id: Uuid,
        /// The caller's role.
        role: &'a str,
        /// What the connection receives: `user`, `vendor`, `campus` or `all`.
        subscription: &'static str,
        /// The highest event id the caller may see right now: a fresh client loads its
        /// state over HTTP, then resumes after this id if it reconnects before any event.
        last_event_id: i64,
        /// Seconds between server pings.
        ping_secs: u64,
        /// Seconds of silence after which the server closes the connection.
        idle_timeout_secs: u64,
    },
    /// An outbox event.
    Event(EventFrame<'a>),
    /// End of a replay started by `resume`; live events follow.
    #[serde(rename_all = "camelCase")]
    Resumed {
        /// The cursor the client sent.
        after: i64,
        /// Events replayed (duplicates of what this connection already sent are skipped).
        replayed: usize,
        /// False when events may be missing: the cursor is older than the retention window
        /// or the backlog exceeded the replay limit. Reload state over HTTP.
        complete: bool,
        /// Highest event id sent on this connection so far.
        last_event_id: i64,
    },
    /// Answer to a client `ping`; every event queued before it was sent first.
    Pong,
    /// A client message the server could not act on; the connection stays open.
    Error {
        /// Machine-readable code (`bad_message`, `replay_unavailable`).
        code: &'static str,
        /// Explanation.
        message: String,
    },
}

/// `{"type":"event","id":…,"event":…,"version":…,"aggregate":{…},"createdAt":…,"data":{…}}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventFrame<'a> {
    /// Outbox id: the resume cursor and dedup key.
    pub id: i64,
    /// Event name.
    pub event: &'a str,
    /// Aggregate version: drop an update older than the state you hold.
    pub version: i32,
    /// The aggregate the version belongs to.
    pub aggregate: Aggregate<'a>,
    /// When it happened.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Event body.
    pub data: &'a serde_json::Value,
}

/// Type and id of an aggregate.
#[derive(Debug, Serialize)]
pub struct Aggregate<'a> {
    /// `order`, …
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// Its id.
    pub id: Uuid,
}

impl<'a> From<&'a EventEnvelope> for EventFrame<'a> {
    fn from(e: &'a EventEnvelope) -> Self {
        Self {
            id: e.id,
            event: &e.event,
            version: e.version,
            aggregate: Aggregate {
                kind: &e.aggregate_type,
                id: e.aggregate_id,
            },
            created_at: e.created_at,
            data: &e.data,
        }
    }
}

impl ServerMessage<'_> {
    /// The text frame.
    pub fn to_json(&self) -> String {
        // Serialising these shapes cannot fail (string keys, no maps with non-string keys).
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"unserialisable message"}"#.to_owned()
        })
    }
}

/// What the client says.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum ClientMessage {
    /// Replay what I missed after this event id, then continue live.
    Resume {
        /// The last event id the client saw (0: everything still retained).
        after: i64,
    },
    /// Application-level keepalive (browsers cannot send ping frames); answered by `pong`
    /// after every event already queued for the connection.
    Ping,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse_strictly() {
        assert_eq!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"resume","after":42}"#).unwrap(),
            ClientMessage::Resume { after: 42 }
        );
        assert_eq!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"ping"}"#).unwrap(),
            ClientMessage::Ping
        );
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"resume"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"subscribe"}"#).is_err());
    }

    #[test]
    fn event_frames_carry_id_event_version_and_data() {
        let e = EventEnvelope {
            id: 7,
            event: "order.status_changed".to_owned(),
            aggregate_type: "order".to_owned(),
            aggregate_id: Uuid::nil(),
            version: 3,
            created_at: chrono::DateTime::UNIX_EPOCH,
            data: serde_json::json!({"to": "ready"}),
            routing: Default::default(),
        };
        let v: serde_json::Value =
            serde_json::from_str(&ServerMessage::Event(EventFrame::from(&e)).to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "event", "id": 7, "event": "order.status_changed", "version": 3,
                "aggregate": {"type": "order", "id": Uuid::nil()},
                "createdAt": "1970-01-01T00:00:00Z", "data": {"to": "ready"}
            })
        );
    }
}
