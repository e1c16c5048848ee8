//! The instance's ONE Redis subscription: events published by any relay arrive here and are
//! routed to this instance's sockets through the hub (`realtime::hub`). When Redis drops, the
//! sockets stay open; the loop resubscribes with backoff and then signals a gap, so every
//! connection catches up from its own cursor (events published meanwhile are replayed from
//! the outbox table). Without Redis there is nothing to subscribe to: the relay of the same
//! process (`itsur all`) feeds the hub directly.

use std::sync::Arc;
use std::time::Duration;

use crate::app::Ctx;
use crate::kv::pubsub::{EventFeed, FeedItem};
use crate::resilience::backoff::Reconnect;
use crate::shutdown::Shutdown;

/// Deadline for connecting and subscribing.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the subscription connection proves it is alive, and how long its PONG may
/// take. A Redis that hangs (SIGSTOP, a frozen VM, a black-holed network) neither delivers
/// nor closes the connection: only a PING that misses its deadline tells. Every 15 s with a
/// 5 s deadline missed a 15 s stop entirely, so sockets never caught up from the outbox;
/// now a hang is noticed within 4 s and the subscription renewed.
const PING_EVERY: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause between two subscribe attempts: Redis coming back is picked up within
/// about this long (plus one attempt), so realtime resumes a second or two after Redis.
const RETRY_CAP: Duration = Duration::from_secs(1);

/// Gauge: 1 while this instance's Redis events subscription is up.
pub const WS_FEED_UP: &str = "ws_feed_up";

/// Subscribes to the events channel until shutdown, resubscribing whenever Redis drops.
pub async fn run_subscriber(ctx: Ctx, shutdown: Shutdown) {
    let Some(kv) = ctx.kv.clone() else {
        return;
    };
    let mut backoff = Reconnect::new(Reconnect::FIRST, RETRY_CAP);
    let mut subscribed_before = false;
    loop {
        let opened = tokio::select! {
            o = EventFeed::open(&kv, OPEN_TIMEOUT) => o,
            () = shutdown.cancelled() => return,
        };
        match opened {
            Ok(mut feed) => {
                metrics::gauge!(WS_FEED_UP).set(1.0);
                kv.set_events_feed_up(true);
                backoff.reset();
                if subscribed_before {
                    tracing::info!("redis events subscription restored; connections catch up");
                    ctx.hub.signal_gap();
                }
                subscribed_before = true;
                let lost = pump(&ctx, &mut feed, &shutdown).await;
                metrics::gauge!(WS_FEED_UP).set(0.0);
                kv.set_events_feed_up(false);
                match lost {
                    Some(why) => tracing::warn!(error = %why, "redis events subscription lost"),
                    None => return,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.peek().as_millis(), "cannot subscribe to redis events");
            }
        }
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

/// Routes messages until the feed fails (`Some(why)`) or shutdown (`None`).
async fn pump(ctx: &Ctx, feed: &mut EventFeed, shutdown: &Shutdown) -> Option<String> {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        tokio::select! {
            item = feed.next() => match item {
                Some(FeedItem::Event(event)) => {
                    ctx.hub.dispatch(Arc::new(event.into()));
                }
                Some(FeedItem::Malformed(why)) => {
                    tracing::warn!(error = %why, "ignoring a malformed message on the events channel");
                }
                None => return Some("connection closed".to_owned()),
            },
            _ = ping.tick() => {
                if let Err(e) = feed.ping(PING_TIMEOUT).await {
                    return Some(e.to_string());
                }
            }
            () = shutdown.cancelled() => return None,
        }
    }
}
