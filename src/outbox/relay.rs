//! The relay loop: wake on `NOTIFY` (or the poll interval), claim a batch of due events with
//! `FOR UPDATE SKIP LOCKED` inside a transaction, hand them to every sink, mark the outcome,
//! commit. Several relays run safely side by side: each claims rows the others do not hold,
//! and a relay that dies releases its rows with its connection.
//!
//! Failure handling is per sink and per event (`outbox_events.sinks_done` records which sinks
//! took an event; a retry runs only the others):
//! - a sink that is *unavailable* (Redis down) leaves the event pending without spending an
//!   attempt, retried after a short pause (1 s doubling to 10 s) — nothing is lost while
//!   Redis is away, and nothing dies of it;
//! - a *failed* delivery spends an attempt and backs off 5 s·5ⁿ (`resilience::backoff`);
//!   after `OUTBOX_MAX_ATTEMPTS` the event is dead (kept; listed and retried by admins).
//!
//! Shutdown finishes the batch in hand, then stops. Beside the loop, the `outbox_pending` /
//! `outbox_lag_seconds` / `outbox_dead` gauges are refreshed every 5 s. Published events are
//! pruned after `OUTBOX_RETENTION_HOURS` by the worker's `maintenance` cron job (issue #4).
//!
//! L3: depends on `store`, `kv`, `resilience`, `service::events`, `app`; never on `http` or
//! `jobs`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use diesel_async::AsyncConnection;
use tokio::sync::Notify;

use super::sinks::{Sink, SinkError, default_sinks};
use crate::app::Ctx;
use crate::domain::event::EventEnvelope;
use crate::resilience::backoff::Reconnect;
use crate::service::events;
use crate::shutdown::Shutdown;
use crate::store::{StoreError, listen, outbox};

/// Counter: events a sink took, by `sink`.
pub const OUTBOX_PUBLISHED_TOTAL: &str = "outbox_published_total";
/// Counter: deliveries a sink did not make, by `sink` and `reason` (`failed` | `unavailable`).
pub const OUTBOX_FAILED_TOTAL: &str = "outbox_failed_total";
/// Counter: events marked dead after their last attempt.
pub const OUTBOX_DEAD_TOTAL: &str = "outbox_dead_total";
/// Gauge: unpublished live events.
pub const OUTBOX_PENDING: &str = "outbox_pending";
/// Gauge: age of the oldest unpublished live event, in seconds.
pub const OUTBOX_LAG_SECONDS: &str = "outbox_lag_seconds";
/// Gauge: dead events waiting for an admin.
pub const OUTBOX_DEAD: &str = "outbox_dead";

/// How long a claim transaction may sit idle (waiting on a sink) before Postgres ends it:
/// bounds the takeover after a relay host vanishes without closing its socket.
const CLAIM_IDLE_LIMIT: Duration = Duration::from_secs(30);
/// Gauges refresh period.
const STATS_EVERY: Duration = Duration::from_secs(5);

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Events claimed.
    pub claimed: usize,
    /// Taken by every sink and marked published.
    pub published: usize,
    /// Left pending (backing off, or waiting for an unavailable sink).
    pub retrying: usize,
    /// Marked dead after the last attempt.
    pub dead: usize,
}

impl std::ops::AddAssign for BatchReport {
    fn add_assign(&mut self, o: Self) {
        self.claimed += o.claimed;
        self.published += o.published;
        self.retrying += o.retrying;
        self.dead += o.dead;
    }
}

/// Backoff after the `attempts`-th failed delivery: the shared schedule of
/// `resilience::backoff` (5 s, 25 s, 125 s, … capped at an hour, ±20 % jitter).
pub fn backoff(attempts: i32) -> Duration {
    crate::resilience::backoff::delay(u32::try_from(attempts).unwrap_or(1).max(1))
}

/// Pause before retrying events whose sink was unavailable, after `streak` consecutive
/// batches that met an unavailable sink: 1 s doubling to 10 s.
fn unavailable_pause(streak: u32) -> Duration {
    Duration::from_secs(1u64 << streak.min(4)).min(Duration::from_secs(10))
}

/// One relay: its sinks and settings.
pub struct Relay {
    ctx: Ctx,
    sinks: Vec<Box<dyn Sink>>,
    sink_names: Vec<String>,
    unavailable_streak: u32,
}

impl Relay {
    /// A relay with the default sinks of `ctx` (Redis or the hub, plus the webhook).
    pub fn new(ctx: Ctx) -> Self {
        let sinks = default_sinks(&ctx);
        Self::with_sinks(ctx, sinks)
    }

    /// A relay with the given sinks (tests, and roles adding the job-enqueue sink).
    pub fn with_sinks(ctx: Ctx, sinks: Vec<Box<dyn Sink>>) -> Self {
        let sink_names = sinks.iter().map(|s| s.name().to_owned()).collect();
        Self {
            ctx,
            sinks,
            sink_names,
            unavailable_streak: 0,
        }
    }

    /// Names of the sinks, in delivery order.
    pub fn sink_names(&self) -> &[String] {
        &self.sink_names
    }

    /// Publishes batches until no due event is left (tests and tools drive the relay with
    /// this instead of waiting for the loop).
    pub async fn drain(&mut self) -> Result<BatchReport, StoreError> {
        let mut total = BatchReport::default();
        loop {
            let report = self.publish_batch().await?;
            total += report;
            if report.claimed == 0 {
                return Ok(total);
            }
        }
    }

    /// Claims one batch, delivers it to every sink and marks the outcome, all in one
    /// transaction.
    pub async fn publish_batch(&mut self) -> Result<BatchReport, StoreError> {
        let settings = self.ctx.config.outbox.clone();
        let pause = unavailable_pause(self.unavailable_streak);
        let mut conn = self.ctx.db.conn().await?;
        let sinks = &self.sinks;
        let sink_names = &self.sink_names;
        let (report, met_unavailable) = conn
            .transaction(async |tx| -> Result<(BatchReport, bool), StoreError> {
                outbox::limit_claim_idle(tx, CLAIM_IDLE_LIMIT).await?;
                let rows = outbox::claim_batch(tx, settings.batch_size).await?;
                if rows.is_empty() {
                    return Ok((BatchReport::default(), false));
                }
                let outcomes = deliver(tx, sinks, &rows).await;
                settle(tx, &rows, outcomes, sink_names, &settings, pause).await
            })
            .await?;
        self.unavailable_streak = if met_unavailable {
            self.unavailable_streak.saturating_add(1)
        } else {
            0
        };
        Ok(report)
    }
}

/// Why an event was not taken by every sink: whether it counts as a failed attempt (some
/// sink failed, not merely unavailable) and what each failing sink said.
#[derive(Debug, Clone)]
struct Failure {
    counts: bool,
    message: String,
}

/// Per claimed event: the sinks that took it (earlier rounds included) and its failure.
struct Outcomes {
    done: Vec<Vec<String>>,
    failure: Vec<Option<Failure>>,
}

impl Outcomes {
    fn record(&mut self, i: usize, sink: &'static str, result: Result<(), SinkError>) {
        match result {
            Ok(()) => {
                self.done[i].push(sink.to_owned());
                metrics::counter!(OUTBOX_PUBLISHED_TOTAL, "sink" => sink).increment(1);
            }
            Err(e) => {
                let (counts, reason) = match &e {
                    SinkError::Failed(_) => (true, "failed"),
                    SinkError::Unavailable(_) => (false, "unavailable"),
                };
                metrics::counter!(OUTBOX_FAILED_TOTAL, "sink" => sink, "reason" => reason)
                    .increment(1);
                let message = format!("{sink}: {e}");
                let failure = match self.failure[i].take() {
                    Some(earlier) => Failure {
                        counts: counts || earlier.counts,
                        message: format!("{}; {message}", earlier.message),
                    },
                    None => Failure { counts, message },
                };
                self.failure[i] = Some(failure);
            }
        }
    }
}

/// Hands the claimed events to every sink that has not taken them yet (a retried event skips
/// the sinks in its `sinks_done`), in the claim transaction.
async fn deliver(
    tx: &mut diesel_async::AsyncPgConnection,
    sinks: &[Box<dyn Sink>],
    rows: &[outbox::OutboxEventRow],
) -> Outcomes {
    let envelopes: Vec<EventEnvelope> = rows.iter().map(events::envelope).collect();
    let mut outcomes = Outcomes {
        done: rows.iter().map(|r| r.sinks_done.clone()).collect(),
        failure: vec![None; rows.len()],
    };
    for sink in sinks {
        let name = sink.name();
        let todo: Vec<usize> = (0..rows.len())
            .filter(|&i| !outcomes.done[i].iter().any(|d| d == name))
            .collect();
        if todo.is_empty() {
            continue;
        }
        let batch: Vec<&EventEnvelope> = todo.iter().map(|&i| &envelopes[i]).collect();
        let results = sink.deliver(tx, &batch).await;
        for (k, &i) in todo.iter().enumerate() {
            let result = results.get(k).cloned().unwrap_or_else(|| {
                Err(SinkError::Failed("the sink returned no result".to_owned()))
            });
            outcomes.record(i, name, result);
        }
    }
    outcomes
}

/// Writes the outcome of each event: published by every sink; back in `pause` when a sink
/// was only unavailable (no attempt spent); else another attempt after the shared backoff,
/// or dead after the last. Returns the report and whether an unavailable sink was met.
async fn settle(
    tx: &mut diesel_async::AsyncPgConnection,
    rows: &[outbox::OutboxEventRow],
    outcomes: Outcomes,
    sink_names: &[String],
    settings: &crate::config::OutboxSettings,
    pause: Duration,
) -> Result<(BatchReport, bool), StoreError> {
    let mut report = BatchReport {
        claimed: rows.len(),
        ..BatchReport::default()
    };
    let published: Vec<i64> = rows
        .iter()
        .zip(&outcomes.failure)
        .filter(|(_, f)| f.is_none())
        .map(|(r, _)| r.id)
        .collect();
    report.published = outbox::mark_published(tx, &published, sink_names).await?;
    let mut met_unavailable = false;
    for ((row, fail), sinks_done) in rows.iter().zip(outcomes.failure).zip(&outcomes.done) {
        let Some(Failure { counts, message }) = fail else {
            continue;
        };
        if !counts {
            met_unavailable = true;
            let until = Utc::now() + pause;
            outbox::retry_later(tx, row.id, sinks_done, row.attempts, until, &message).await?;
            report.retrying += 1;
            continue;
        }
        let attempts = row.attempts.saturating_add(1);
        if attempts >= settings.max_attempts {
            outbox::mark_dead(tx, row.id, sinks_done, attempts, &message).await?;
            metrics::counter!(OUTBOX_DEAD_TOTAL).increment(1);
            tracing::warn!(event.id = row.id, event.kind = %row.event_type, attempts, error = %message, "outbox event dead");
            report.dead += 1;
        } else {
            let delay = backoff(attempts);
            let until =
                Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
            outbox::retry_later(tx, row.id, sinks_done, attempts, until, &message).await?;
            tracing::info!(event.id = row.id, attempts, retry_in_s = delay.as_secs(), error = %message, "outbox delivery failed; retrying");
            report.retrying += 1;
        }
    }
    Ok((report, met_unavailable))
}

/// Runs the relay until shutdown: LISTEN (unless `OUTBOX_POLL_ONLY`) + poll, batches,
/// housekeeping. A batch in hand when shutdown starts is finished first.
pub async fn run(ctx: Ctx, shutdown: Shutdown) {
    let mut relay = Relay::new(ctx.clone());
    let settings = ctx.config.outbox.clone();
    tracing::info!(
        sinks = ?relay.sink_names(),
        batch = settings.batch_size,
        poll_ms = settings.poll_interval.as_millis(),
        listen = !settings.poll_only,
        "outbox relay started"
    );
    if ctx.kv.is_none() {
        tracing::info!(
            "REDIS_URL unset: events go to the in-process hub, so only this process's WebSockets receive them live"
        );
    }
    let wake = Arc::new(Notify::new());
    if !settings.poll_only {
        shutdown.spawn(listen::wake_on_notify(
            ctx.config.database.url.clone(),
            outbox::RELAY_CHANNEL,
            wake.clone(),
            shutdown.clone(),
        ));
    }
    shutdown.spawn(housekeeping(ctx.clone(), shutdown.clone()));
    let mut backoff = Reconnect::default();
    while !shutdown.is_triggered() {
        match relay.publish_batch().await {
            // A full batch: more may be due right now.
            Ok(report)
                if i64::try_from(report.claimed).unwrap_or(i64::MAX) >= settings.batch_size =>
            {
                backoff.reset();
                continue;
            }
            Ok(_) => backoff.reset(),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.peek().as_millis(), "outbox batch failed");
                if !backoff.wait(&shutdown).await {
                    break;
                }
                continue;
            }
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(settings.poll_interval) => {}
            () = shutdown.cancelled() => {}
        }
    }
    tracing::info!("outbox relay stopped");
}

/// Refreshes the gauges every few seconds until shutdown.
async fn housekeeping(ctx: Ctx, shutdown: Shutdown) {
    loop {
        if let Err(e) = record_stats(&ctx).await {
            tracing::debug!(error = %e, "outbox stats not refreshed");
        }
        if !shutdown.sleep(STATS_EVERY).await {
            return;
        }
    }
}

/// Refreshes `outbox_pending`, `outbox_lag_seconds` and `outbox_dead`.
pub async fn record_stats(ctx: &Ctx) -> Result<(), StoreError> {
    let mut conn = ctx.db.conn().await?;
    let stats = outbox::pending_stats(&mut conn).await?;
    // Counts far below 2^53.
    #[expect(
        clippy::as_conversions,
        clippy::cast_precision_loss,
        reason = "gauge values"
    )]
    {
        metrics::gauge!(OUTBOX_PENDING).set(stats.pending as f64);
        metrics::gauge!(OUTBOX_DEAD).set(stats.dead as f64);
    }
    metrics::gauge!(OUTBOX_LAG_SECONDS).set(events::lag_seconds(stats.oldest, Utc::now()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_pause_is_short_and_capped() {
        assert_eq!(unavailable_pause(0), Duration::from_secs(1));
        assert_eq!(unavailable_pause(1), Duration::from_secs(2));
        assert_eq!(unavailable_pause(9), Duration::from_secs(10));
    }
}
