//! A WebSocket client for the gateway tests (tokio-tungstenite over plain TCP), and helpers
//! that wait with a deadline, never a fixed sleep.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for one expected message.
pub const WAIT: Duration = Duration::from_secs(20);

/// One connected client.
pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The server's `hello`.
    pub hello: Value,
}

/// What reading produced.
#[derive(Debug)]
#[expect(
    dead_code,
    reason = "the texts are read through Debug in failure messages"
)]
pub enum Read {
    /// A JSON text message.
    Json(Value),
    /// The server closed with this code and reason.
    Closed(u16, String),
    /// The connection ended without a close frame.
    Ended(String),
    /// Nothing within the deadline.
    Timeout,
}

/// `ws://addr/ws?query` with `Authorization: Bearer token`.
pub fn request(
    addr: SocketAddr,
    query: &str,
    token: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("ws://{addr}/ws{query}")
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

impl WsClient {
    /// Connects with a bearer header and reads the `hello`.
    pub async fn connect(addr: SocketAddr, token: &str) -> Self {
        Self::connect_request(request(addr, "", Some(token))).await
    }

    /// Connects with a prepared request and reads the `hello`.
    pub async fn connect_request(
        req: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Self {
        let (stream, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("websocket handshake");
        Self::after_handshake(stream).await
    }

    /// Wraps an upgraded stream and reads the `hello`.
    pub async fn after_handshake(stream: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        let mut client = Self {
            stream,
            hello: Value::Null,
        };
        match client.read(WAIT).await {
            Read::Json(v) if v["type"] == "hello" => client.hello = v,
            other => panic!("expected hello, got {other:?}"),
        }
        client
    }

    /// The next JSON message, close or end (ping/pong frames are skipped; tungstenite answers
    /// pings by itself while reading).
    pub async fn read(&mut self, wait: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next()).await;
            match next {
                Err(_) => return Read::Timeout,
                Ok(None) => return Read::Ended("stream ended".to_owned()),
                Ok(Some(Err(e))) => return Read::Ended(e.to_string()),
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Read::Json(serde_json::from_str(&t).expect("server sends JSON"));
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    let (code, reason) = frame
                        .map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    return Read::Closed(code, reason);
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// The next JSON message; panics on anything else.
    pub async fn json(&mut self) -> Value {
        match self.read(WAIT).await {
            Read::Json(v) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// The next `event` message (other messages are returned as a panic).
    pub async fn event(&mut self) -> Value {
        let v = self.json().await;
        assert_eq!(v["type"], "event", "{v}");
        v
    }

    /// Reads `n` events.
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.event().await);
        }
        out
    }

    /// Reads messages until one of `type` arrives; returns the events seen before it.
    pub async fn events_until(&mut self, kind: &str) -> (Vec<Value>, Value) {
        let mut seen = Vec::new();
        loop {
            let v = self.json().await;
            if v["type"] == kind {
                return (seen, v);
            }
            assert_eq!(v["type"], "event", "unexpected {v}");
            seen.push(v);
        }
    }

    /// Sends a JSON message.
    pub async fn send(&mut self, v: &Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// Sends `resume` and returns (the events replayed, the `resumed` message).
    pub async fn resume(&mut self, after: i64) -> (Vec<Value>, Value) {
        self.send(&json!({ "type": "resume", "after": after }))
            .await;
        self.events_until("resumed").await
    }

    /// A round trip through the connection: everything the server queued for this client
    /// before answering comes first (returned), then `pong`.
    pub async fn sync(&mut self) -> Vec<Value> {
        self.send(&json!({ "type": "ping" })).await;
        self.events_until("pong").await.0
    }

    /// Reads until the server closes; returns the close code (None when the connection just
    /// ended or nothing came within the deadline).
    pub async fn close_code(&mut self, wait: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await {
                Read::Json(_) => {}
                Read::Closed(code, _) => return Some(code),
                Read::Ended(_) | Read::Timeout => return None,
            }
        }
    }

    /// Reads until the server closes: the bytes of the messages before the close frame,
    /// and its code (None when the connection ended without one or the deadline passed).
    pub async fn bytes_until_close(&mut self, wait: Duration) -> (usize, Option<u16>) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut bytes = 0;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) | Ok(None | Some(Err(_))) => return (bytes, None),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return (bytes, Some(frame.map_or(1005, |f| u16::from(f.code))));
                }
                Ok(Some(Ok(m))) => bytes += m.len(),
            }
        }
    }

    /// Sends a close frame and reads until the server's answer: its close code, or None
    /// when the connection ended without one (or nothing came within `wait`).
    pub async fn close_and_await_echo(&mut self, code: u16, wait: Duration) -> Option<u16> {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as Code;
        self.stream
            .send(Message::Close(Some(CloseFrame {
                code: Code::from(code),
                reason: "client done".into(),
            })))
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) | Ok(None | Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Some(frame.map_or(1005, |f| u16::from(f.code)));
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Closes from the client side.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

/// Tries an upgrade; `Err(status)` when the server answered with an HTTP error instead.
pub async fn try_connect(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Result<WsClient, u16> {
    match tokio_tungstenite::connect_async(req).await {
        Ok((stream, _)) => Ok(WsClient::after_handshake(stream).await),
        Err(WsError::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// The ids of events, in order.
pub fn ids(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["id"].as_i64().unwrap()).collect()
}

/// Waits until `n` subscribers listen on the events channel of `prefix` (the gateways'
/// subscriptions are up).
pub async fn wait_subscribed(redis_url: &str, prefix: &str, n: i64) {
    let client = redis::Client::open(redis_url).unwrap();
    let channel = format!("{prefix}:events");
    let ok = super::eventually(WAIT, || {
        let client = client.clone();
        let channel = channel.clone();
        async move {
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                return false;
            };
            let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            counts.first().is_some_and(|(_, c)| *c >= n)
        }
    })
    .await;
    assert!(ok, "{n} gateway(s) subscribed to {channel}");
}
