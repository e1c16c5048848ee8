//! `LISTEN` on a dedicated, non-pooled connection (a LISTEN on a pooled connection would go
//! back to the pool with it), turned into wake-ups on a [`tokio::sync::Notify`]. The
//! connection is re-opened with the shared reconnect backoff (`resilience::backoff::Reconnect`)
//! whenever it dies, and checked with a `SELECT 1` every
//! [`HEALTH_EVERY`] because a black-holed connection never ends its notification stream.
//!
//! After every (re)connect the listener wakes its owner once: notifications sent while it
//! was not listening are lost, and the owner's claim query finds that work anyway.

use std::sync::Arc;
use std::time::Duration;

use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use futures_util::StreamExt;
use tokio::sync::Notify;

use crate::config::Secret;
use crate::resilience::backoff::Reconnect;
use crate::shutdown::Shutdown;

/// How often the listening connection proves it is alive.
pub const HEALTH_EVERY: Duration = Duration::from_secs(30);
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What a listener reports.
#[derive(Debug, Clone, Copy)]
pub enum Notification<'a> {
    /// (Re)connected and listening: notifications sent meanwhile were lost.
    Connected,
    /// A notification.
    Message {
        /// Its channel.
        channel: &'a str,
        /// Its payload.
        payload: &'a str,
    },
}

/// Listens on `channel` until shutdown, calling `wake.notify_one()` for every notification
/// (and once per connect). `channel` must be a plain lowercase identifier.
pub async fn wake_on_notify(
    url: Secret<String>,
    channel: &'static str,
    wake: Arc<Notify>,
    shutdown: Shutdown,
) {
    on_notify(url, &[channel], move |_| wake.notify_one(), shutdown).await;
}

/// Listens on `channels` until shutdown, handing every notification (and every connect) to
/// `on`, which must not block. Channel names must be plain lowercase identifiers.
pub async fn on_notify<F>(url: Secret<String>, channels: &[&'static str], on: F, shutdown: Shutdown)
where
    F: Fn(Notification<'_>) + Send + Sync,
{
    debug_assert!(
        channels
            .iter()
            .all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')),
        "channel names are interpolated into LISTEN"
    );
    let mut backoff = Reconnect::default();
    while !shutdown.is_triggered() {
        let (connected, error) = tokio::select! {
            o = listen_once(&url, channels, &on) => o,
            () = shutdown.cancelled() => return,
        };
        if connected {
            // It worked for a while: the next reconnect starts with the shortest wait.
            backoff.reset();
        }
        tracing::warn!(channels = ?channels, error = %error, retry_in_ms = backoff.peek().as_millis(), "LISTEN connection lost");
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

/// One connection's life: connect, LISTEN, forward notifications until it fails. Returns
/// whether it got to listen, and why it ended.
async fn listen_once<F>(url: &Secret<String>, channels: &[&'static str], on: &F) -> (bool, String)
where
    F: Fn(Notification<'_>) + Send + Sync,
{
    let mut connected = false;
    let Err(error) = listen_until_lost(url, channels, on, &mut connected).await;
    (connected, error)
}

async fn listen_until_lost<F>(
    url: &Secret<String>,
    channels: &[&'static str],
    on: &F,
    connected: &mut bool,
) -> Result<std::convert::Infallible, String>
where
    F: Fn(Notification<'_>) + Send + Sync,
{
    let mut conn = tokio::time::timeout(CHECK_TIMEOUT, super::connect::establish(url.expose()))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let listen: Vec<String> = channels.iter().map(|c| format!("LISTEN {c}")).collect();
    conn.batch_execute(&listen.join("; "))
        .await
        .map_err(|e| e.to_string())?;
    tracing::debug!(channels = ?channels, "listening");
    *connected = true;
    on(Notification::Connected);
    loop {
        {
            let mut stream = std::pin::pin!(conn.notifications_stream());
            let health = tokio::time::sleep(HEALTH_EVERY);
            tokio::pin!(health);
            loop {
                tokio::select! {
                    n = stream.next() => match n {
                        Some(Ok(n)) => on(Notification::Message { channel: &n.channel, payload: &n.payload }),
                        Some(Err(e)) => return Err(e.to_string()),
                        None => return Err("notification stream ended".to_owned()),
                    },
                    () = &mut health => break,
                }
            }
        }
        // Notifications arriving meanwhile wait in the connection's channel.
        tokio::time::timeout(
            CHECK_TIMEOUT,
            diesel::sql_query("SELECT 1").execute(&mut conn),
        )
        .await
        .map_err(|_| "health check timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    }
}
