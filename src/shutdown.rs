//! Process lifetime: one [`Shutdown`] per process, cancelled by SIGTERM/SIGINT (or by a
//! test), that every loop watches and whose task tracker lets `main` wait for them all.
//!
//! It also speaks systemd's notify protocol (`Type=notify` units): READY=1 once a role
//! serves, STOPPING=1 when the drain starts, WATCHDOG=1 every half `WatchdogSec`. Without
//! `NOTIFY_SOCKET` (not under systemd) every notification is a no-op.
//!
//! Leaf utility: depends on nothing in the crate.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cancellation plus task tracking shared by every loop of a process.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A fresh, un-cancelled shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels on the first SIGTERM or SIGINT; a second signal is left to the default action
    /// only after the drain has started (the listener task ends after the first).
    pub fn install_signal_handlers(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let token = self.token.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
                _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
                () = token.cancelled() => {}
            }
            token.cancel();
            notify(sd_notify::NotifyState::Stopping);
        });
        Ok(())
    }

    /// Tells systemd the role is ready, and starts the watchdog pings it asked for.
    pub fn notify_ready(&self) {
        notify(sd_notify::NotifyState::Ready);
        if let Some(usec) = watchdog_usec() {
            let every = Duration::from_micros(usec / 2);
            let token = self.token.clone();
            self.tracker.spawn(async move {
                loop {
                    notify(sd_notify::NotifyState::Watchdog);
                    tokio::select! {
                        () = tokio::time::sleep(every) => {}
                        () = token.cancelled() => return,
                    }
                }
            });
        }
    }

    /// Starts the shutdown.
    pub fn trigger(&self) {
        if !self.token.is_cancelled() {
            self.token.cancel();
            notify(sd_notify::NotifyState::Stopping);
        }
    }

    /// True once shutdown has started.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when shutdown starts.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// The underlying token, for APIs that take one.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Spawns a task the process will wait for on exit.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// Waits (at most `timeout`) for every spawned task; returns false when some were
    /// still running at the deadline.
    pub async fn wait_tasks(&self, timeout: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Sleeps for `dur` unless shutdown starts first; returns false when interrupted.
    pub async fn sleep(&self, dur: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(dur) => true,
            () = self.token.cancelled() => false,
        }
    }
}

fn notify(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// `WATCHDOG_USEC` when systemd asked this process for watchdog pings. Like
/// `sd_watchdog_enabled(3)`, a missing `WATCHDOG_PID` means "this process".
#[expect(
    clippy::disallowed_methods,
    reason = "systemd protocol variables, not configuration"
)]
fn watchdog_usec() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let for_us = match std::env::var("WATCHDOG_PID") {
        Ok(pid) => pid.parse::<u32>().ok() == Some(std::process::id()),
        Err(_) => true,
    };
    (for_us && usec > 0).then_some(usec)
}
