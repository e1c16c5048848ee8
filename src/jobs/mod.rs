//! Role `worker`: runs background jobs claimed from Postgres.
//!
//! A handler implements [`Handler`]: it gets a [`JobCx`] (payload, progress, cancellation)
//! and returns an [`Output`] or a [`JobError`] — `Retryable` (backs off 5 s, 25 s, 125 s, …
//! until the attempts run out, then dead) or `Permanent` (dead at once). Handlers must be
//! idempotent: a job can run twice when a worker dies after finishing the work but before
//! recording it.
//!
//! L3: depends on `service`, `store`, `domain`, `app`; never on `http` or `outbox`.

pub mod cron;
pub mod flow_cron;
pub mod handlers;
pub mod registry;
pub mod runner;
pub mod timer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::app::Ctx;
use crate::domain::event::{Event, EventRouting, JobUpdate, NewEvent};
use diesel_async::AsyncConnection;

use crate::store::jobs::JobRow;

/// How a handler failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Transient: try again after the backoff (network, lock timeout, provider 5xx/429,
    /// open circuit breaker).
    #[error("retryable: {0}")]
    Retryable(String),
    /// Will never succeed (bad payload, missing data): the job is dead at once.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The handler stopped because it was asked to.
    #[error("cancelled")]
    Cancelled,
}

impl From<crate::service::Error> for JobError {
    fn from(e: crate::service::Error) -> Self {
        use crate::service::Error as S;
        match e {
            S::Unavailable { reason, .. } => Self::Retryable(reason.to_owned()),
            S::Internal(e) => Self::Retryable(format!("{e:#}")),
            other => Self::Permanent(other.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for JobError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Retryable(e.to_string())
    }
}

impl From<diesel::result::Error> for JobError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Retryable(e.to_string())
    }
}

/// What a job produced.
#[derive(Debug, Default)]
pub struct Output {
    /// JSON summary shown in `GET /jobs/{id}` (`result`).
    pub summary: serde_json::Value,
    /// Downloadable body for `GET /jobs/{id}/result`: (media type, bytes).
    pub body: Option<(String, Vec<u8>)>,
}

/// A job handler.
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt.
    fn run<'a>(&'a self, cx: &'a JobCx) -> BoxFuture<'a, Result<Output, JobError>>;
}

/// Why a running job is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `DELETE /jobs/{id}`: end it as cancelled.
    CancelRequested,
    /// The worker is shutting down: hand it back.
    Shutdown,
    /// The lease was lost (rescued elsewhere): abandon it.
    LeaseLost,
}

/// The context of one running attempt.
pub struct JobCx {
    /// Shared handles (pools, config).
    pub ctx: Ctx,
    /// The claimed job.
    pub job: JobRow,
    /// This worker.
    pub worker_id: Uuid,
    pub(crate) stop: CancellationToken,
    pub(crate) stop_reason: Arc<std::sync::Mutex<Option<StopReason>>>,
    last_progress: Mutex<Option<Instant>>,
}

/// The outbox event of a job's progress, routed to its owner (and its campus's admins).
/// The version orders events across attempts: `attempt × 1000 + step`, where step is the
/// percentage (the job's end, written by the engine in SQL as `job.status_changed`, uses
/// 999).
pub(crate) fn progress_event(
    job: &JobRow,
    pct: i32,
    message: &str,
) -> serde_json::Result<crate::store::outbox::NewOutboxEventRow> {
    let event = Event::JobProgress(JobUpdate {
        job_id: job.id,
        kind: job.kind.clone(),
        status: "progress".to_owned(),
        progress: pct.min(100),
        message: Some(message.to_owned()),
        attempt: job.attempt,
    });
    crate::store::outbox::NewOutboxEventRow::from_event(&NewEvent {
        event,
        aggregate_id: job.id,
        version: job.attempt.saturating_mul(1000).saturating_add(pct),
        routing: EventRouting {
            campus_id: job.campus_id.map(Into::into),
            vendor_id: None,
            user_id: job.owner_id.map(Into::into),
        },
    })
}

/// Progress is persisted at most this often (the last update of a job always is).
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

impl JobCx {
    pub(crate) fn new(ctx: Ctx, job: JobRow, worker_id: Uuid) -> Self {
        Self {
            ctx,
            job,
            worker_id,
            stop: CancellationToken::new(),
            stop_reason: Arc::new(std::sync::Mutex::new(None)),
            last_progress: Mutex::new(None),
        }
    }

    /// The payload as `T`; a payload that does not parse is a permanent failure.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, JobError> {
        serde_json::from_value(self.job.payload.clone())
            .map_err(|e| JobError::Permanent(format!("bad payload: {e}")))
    }

    /// True once the job should stop (cancel requested, shutdown, lease lost).
    pub fn is_cancelled(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// `Err(Cancelled)` once the job should stop: `cx.check()?` between units of work.
    pub fn check(&self) -> Result<(), JobError> {
        if self.is_cancelled() {
            Err(JobError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// A token for blocking code (`spawn_blocking`) to poll.
    pub fn cancel_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Records progress (0..=100) and a message; throttled to one write per 500 ms.
    pub async fn progress(&self, pct: u8, message: &str) {
        let mut last = self.last_progress.lock().await;
        let due = pct >= 100 || last.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
        if !due {
            return;
        }
        *last = Some(Instant::now());
        let Ok(mut conn) = self.ctx.db.conn().await else {
            return; // progress is advisory; the job goes on
        };
        let pct = i16::from(pct.min(100));
        let job = &self.job;
        let worker = self.worker_id;
        let event = match progress_event(job, i32::from(pct), message) {
            Ok(event) => event,
            Err(e) => {
                tracing::debug!(job.id = %job.id, error = %e, "progress not recorded");
                return;
            }
        };
        // The progress and its `job.progress` event commit together; the relay routes the
        // event to the job's owner over WebSockets.
        let written = conn
            .transaction(async |conn| -> diesel::QueryResult<bool> {
                let held = crate::store::jobs::set_progress(
                    conn,
                    job.id,
                    worker,
                    job.attempt,
                    pct,
                    Some(message),
                )
                .await?;
                if held {
                    crate::store::outbox::insert_event(conn, &event).await?;
                }
                Ok(held)
            })
            .await;
        match written {
            Ok(true) => self.ctx.relay_waker.wake(),
            Ok(false) => {}
            Err(e) => tracing::debug!(job.id = %self.job.id, error = %e, "progress not recorded"),
        }
    }

    pub(crate) fn request_stop(&self, reason: StopReason) {
        if let Ok(mut r) = self.stop_reason.lock() {
            r.get_or_insert(reason);
        }
        self.stop.cancel();
    }

    pub(crate) fn stop_reason(&self) -> Option<StopReason> {
        self.stop_reason.lock().ok().and_then(|r| *r)
    }
}
