//! Real brokers for the sink tests: the machine's RabbitMQ (`TEST_AMQP_URL`, default
//! guest@127.0.0.1:5672) and a private `nats-server -js` per test on a free port with its own
//! store directory (so a test can restart it without touching the shared server). Helpers
//! bind a queue / open a JetStream consumer and collect what arrived, keyed by outbox id.
//! When a broker is absent and cannot be started, [`rabbitmq`] / [`NatsServer::start`]
//! print one `SKIP:` line saying why and return None.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::process::{Child, Command};

/// A name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

/// The shared RabbitMQ's URL, or None (with a SKIP line) when nothing answers there.
#[expect(
    clippy::disallowed_methods,
    reason = "test settings come from the environment"
)]
pub async fn rabbitmq(test: &str) -> Option<String> {
    let url = std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    match tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await
    {
        Ok(Ok(conn)) => {
            // Best effort: the probe connection is not needed any more.
            let _ = conn.close(200, ShortString::from("probe")).await;
            Some(url)
        }
        Ok(Err(e)) => {
            eprintln!("SKIP: {test}: no RabbitMQ at TEST_AMQP_URL/127.0.0.1:5672 ({e})");
            None
        }
        Err(_) => {
            eprintln!("SKIP: {test}: RabbitMQ at TEST_AMQP_URL/127.0.0.1:5672 did not answer");
            None
        }
    }
}

/// "host:port" of an amqp:// URL.
pub fn amqp_host(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    rest.split('/').next().unwrap().to_owned()
}

/// `url` with its host:port replaced (to go through a ChaosProxy).
pub fn amqp_via(url: &str, addr: &str) -> String {
    url.replacen(&amqp_host(url), addr, 1)
}

/// A durable queue bound to `exchange` for every routing key, with its channel.
pub async fn bind_queue(url: &str, exchange: &str, queue: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        ShortString::from(exchange),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    // Rejected messages go to the sink's dead-letter exchange, as README's example does.
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(format!("{exchange}.dlx").into()),
    );
    ch.queue_declare(
        ShortString::from(queue),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .unwrap();
    ch.queue_bind(
        ShortString::from(queue),
        ShortString::from(exchange),
        ShortString::from("order.#"),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    (conn, ch)
}

/// Deletes a test's exchanges and queues (best effort: names are unique anyway).
pub async fn delete_topology(ch: &Channel, exchange: &str, queue: &str) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    for q in [queue.to_owned(), format!("{exchange}.dead")] {
        let _ = ch
            .queue_delete(ShortString::from(q.as_str()), QueueDeleteOptions::default())
            .await;
    }
    for x in [exchange.to_owned(), format!("{exchange}.dlx")] {
        let _ = ch
            .exchange_delete(
                ShortString::from(x.as_str()),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

/// What a consumer saw: outbox id → times received.
pub type Seen = BTreeMap<i64, u32>;

/// Consumes `queue` until `want` distinct outbox ids arrived or `quiet` passes without a
/// message; checks each message's routing key, persistence and id header on the way.
pub async fn consume_queue(ch: &Channel, queue: &str, want: usize, quiet: Duration) -> Seen {
    ch.basic_qos(500, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            ShortString::from(queue),
            ShortString::from(unique("t").as_str()),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut seen = Seen::new();
    while seen.len() < want {
        let Ok(Some(delivery)) = tokio::time::timeout(quiet, consumer.next()).await else {
            break;
        };
        let d = delivery.unwrap();
        assert_eq!(
            d.routing_key.as_str(),
            "order.created",
            "routing key = event type"
        );
        assert_eq!(*d.properties.delivery_mode(), Some(2), "persistent");
        let header = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-itsur-event-id").cloned());
        let Some(AMQPValue::LongLongInt(id)) = header else {
            panic!("no x-itsur-event-id header: {:?}", d.properties.headers());
        };
        let body: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
        assert_eq!(body["id"], id, "header and body carry the same outbox id");
        *seen.entry(id).or_default() += 1;
    }
    seen
}

/// A private `nats-server -js` on a free port with its own store directory.
pub struct NatsServer {
    /// nats://127.0.0.1:<port>
    pub url: String,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    bin: PathBuf,
}

impl NatsServer {
    /// Starts one, or None (with a SKIP line) when no nats-server binary is installed.
    pub async fn start(test: &str) -> Option<Self> {
        let Some(bin) = [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists()) else {
            eprintln!("SKIP: {test}: no nats-server binary (Debian package nats-server)");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(unique("itsur-nats-"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            dir,
            child: None,
            bin,
        };
        server.spawn().await;
        Some(server)
    }

    async fn spawn(&mut self) {
        let child = Command::new(&self.bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        let up = crate::support::eventually(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(&addr).await.is_ok()
        })
        .await;
        assert!(up, "private nats-server came up on {addr}");
    }

    /// Kills the server (SIGKILL: a crash) and starts it again on the same port and store.
    pub async fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
        self.spawn().await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // kill_on_drop stops the server; the store is a temp dir of this test alone.
        drop(self.child.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads every message of `stream` through a fresh pull consumer until `want` distinct
/// outbox ids arrived or `quiet` passes; checks `Nats-Msg-Id` = the id header = body id.
pub async fn consume_stream(url: &str, stream: &str, want: usize, quiet: Duration) -> Seen {
    use async_nats::jetstream::{self, consumer};
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    let consumer: consumer::PullConsumer = js
        .create_consumer_on_stream(
            consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                ..consumer::pull::Config::default()
            },
            stream,
        )
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut seen = Seen::new();
    while seen.len() < want {
        let Ok(Some(m)) = tokio::time::timeout(quiet, messages.next()).await else {
            break;
        };
        let m = m.unwrap();
        let headers = m.headers.clone().expect("headers");
        let msg_id: i64 = headers
            .get("Nats-Msg-Id")
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        let header_id: i64 = headers
            .get("X-Itsur-Event-Id")
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!((msg_id, body["id"].as_i64()), (header_id, Some(header_id)));
        assert!(
            m.subject.as_str().ends_with(".order.created"),
            "{}",
            m.subject
        );
        *seen.entry(msg_id).or_default() += 1;
    }
    seen
}

/// Messages stored in `stream` (JetStream's own count, after its de-duplication).
pub async fn stream_messages(url: &str, stream: &str) -> u64 {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(stream).await.unwrap();
    s.info().await.unwrap().state.messages
}
