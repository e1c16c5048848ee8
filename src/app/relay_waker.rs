//! [`RelayWaker`]: wakes the outbox relays after a transaction that wrote events has
//! committed. Every role that writes events (`serve`, `worker`, `all`) starts its task from
//! `cli::boot::start_relay_waker`.
//!
//! L2: depends on `store::outbox`, `app::Ctx` and `shutdown`.
//!
//! ## Waking the relay
//! `NOTIFY` inside the order transaction takes Postgres's database-wide notify lock during
//! commit, which serialises every committing order (measured in docs/ARCHITECTURE.md). So the
//! outbox insert fires nothing; after commit the service calls [`RelayWaker::wake`], and one
//! task per process ([`RelayWaker::run`]) sends `pg_notify` on a pooled connection, coalescing
//! a burst of commits into one notification per round trip. A wake-up lost to a crash between
//! commit and notify costs at most the relay's poll interval.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::Ctx;
use crate::shutdown::Shutdown;
use crate::store::outbox;

/// Wakes the relays after commits that wrote outbox events. Cloning shares the signal.
#[derive(Clone, Default)]
pub struct RelayWaker {
    pending: Arc<Notify>,
}

impl RelayWaker {
    /// Asks for one `pg_notify` soon; many calls before it is sent coalesce into one. Call it
    /// after the transaction that wrote events has committed.
    pub fn wake(&self) {
        self.pending.notify_one();
    }

    /// Sends the coalesced notifications until shutdown (one task per process that writes
    /// events: `serve` and `all`). A failure is logged and dropped: the relays' polling
    /// fallback picks the events up.
    pub async fn run(ctx: Ctx, shutdown: Shutdown) {
        loop {
            tokio::select! {
                () = ctx.relay_waker.pending.notified() => {}
                () = shutdown.cancelled() => return,
            }
            let sent = tokio::time::timeout(Duration::from_secs(2), async {
                let mut conn = ctx.db.conn().await.map_err(|e| e.to_string())?;
                outbox::notify_relay(&mut conn)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "relay wake-up not sent; relays poll"),
                Err(_) => tracing::debug!("relay wake-up timed out; relays poll"),
            }
        }
    }
}
