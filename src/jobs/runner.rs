//! The worker: claims only as many jobs as it has free slots (priority, then age, `FOR
//! UPDATE SKIP LOCKED`), wakes on `LISTEN itsur_jobs` with a polling fallback (or polls
//! only, for poolers that break LISTEN), heartbeats the leases of its running jobs, rescues
//! jobs of dead workers, runs cron schedules, and on shutdown stops claiming, lets running
//! jobs finish within the drain budget and hands the rest back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel_async::{AsyncConnection, SimpleAsyncConnection};
use futures_util::StreamExt;
use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

use super::registry::Registry;
use super::{JobCx, JobError, Output, StopReason};
use crate::app::Ctx;
use crate::domain::job::retry_delay;
use crate::shutdown::Shutdown;
use crate::store::jobs::{self as store, Finish, WorkerRow};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Queues to claim from.
    pub queues: Vec<String>,
    /// Jobs run at once.
    pub concurrency: usize,
    /// How long a claim lasts without a heartbeat; a dead worker's jobs return within it.
    pub lease: Duration,
    /// Poll interval (the fallback when no NOTIFY arrives; the only wake-up when poll-only).
    pub poll_interval: Duration,
    /// Do not LISTEN (for poolers in transaction mode).
    pub poll_only: bool,
    /// How long running jobs may take to finish on shutdown before they are handed back.
    pub drain_timeout: Duration,
    /// Run the cron schedules.
    pub cron: bool,
}

impl WorkerOptions {
    /// From the command line; the drain budget is most of the shutdown budget, leaving time to
    /// hand unfinished jobs back.
    pub fn from_args(args: &crate::config::JobArgs, shutdown_timeout: Duration) -> Self {
        Self {
            queues: args.queues.clone(),
            concurrency: usize::try_from(args.concurrency).unwrap_or(8),
            lease: Duration::from_secs(args.lease_secs),
            poll_interval: Duration::from_millis(args.poll_interval_ms),
            poll_only: args.poll_only,
            drain_timeout: shutdown_timeout.mul_f64(0.8),
            cron: !args.no_cron,
        }
    }
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            queues: vec!["default".to_owned()],
            concurrency: 8,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            poll_only: false,
            drain_timeout: Duration::from_secs(25),
            cron: true,
        }
    }
}

/// The jobs this worker is running, by id.
type Running = Arc<std::sync::Mutex<HashMap<Uuid, Arc<JobCx>>>>;

/// Runs the worker until shutdown.
pub async fn run(ctx: Ctx, shutdown: Shutdown, options: WorkerOptions, registry: Registry) {
    let worker = WorkerRow {
        id: Uuid::now_v7(),
        host: hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".to_owned()),
        pid: i32::try_from(std::process::id()).unwrap_or(0),
        queues: options.queues.clone(),
        concurrency: i32::try_from(options.concurrency).unwrap_or(i32::MAX),
        running: 0,
        started_at: Utc::now(),
        heartbeat_at: Utc::now(),
    };
    tracing::info!(worker.id = %worker.id, queues = ?options.queues, concurrency = options.concurrency, "worker started");
    let running: Running = Arc::default();
    let wake = Arc::new(Notify::new());
    let slots = Arc::new(Semaphore::new(options.concurrency));
    // Background loops stop with this token, after the claim loop has drained.
    let loops = Shutdown::new();

    if !options.poll_only {
        tokio::spawn(listen(
            ctx.clone(),
            loops.clone(),
            wake.clone(),
            running.clone(),
        ));
    }
    let heartbeat = tokio::spawn(heartbeat_loop(
        ctx.clone(),
        loops.clone(),
        worker.clone(),
        options.lease,
        running.clone(),
        wake.clone(),
    ));
    if options.cron {
        tokio::spawn(super::cron::run(ctx.clone(), loops.clone()));
    }

    let tasks = tokio_util::task::TaskTracker::new();
    claim_loop(
        &ctx, &shutdown, &options, &registry, &worker, &running, &wake, &slots, &tasks,
    )
    .await;

    // Drain: running jobs get the budget to finish, then are told to stop and handed back.
    tasks.close();
    let drained = tokio::time::timeout(options.drain_timeout, tasks.wait())
        .await
        .is_ok();
    if !drained {
        let ids: Vec<Arc<JobCx>> = running
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        tracing::warn!(
            count = ids.len(),
            "drain budget spent: handing running jobs back"
        );
        for cx in &ids {
            cx.request_stop(StopReason::Shutdown);
        }
        if tokio::time::timeout(Duration::from_secs(3), tasks.wait())
            .await
            .is_err()
        {
            // Handlers that ignore cancellation: hand their jobs back from here; their late
            // writes are fenced out by the attempt number.
            for cx in ids {
                let _ = finish(&ctx, &cx, FinishWith::HandBack).await;
            }
        }
    }
    loops.trigger();
    let _ = heartbeat.await;
    if let Ok(mut conn) = ctx.db.conn().await {
        let _ = store::delete_worker(&mut conn, worker.id).await;
    }
    tracing::info!(worker.id = %worker.id, "worker stopped");
}

#[expect(
    clippy::too_many_arguments,
    reason = "the loop's shared state, passed once"
)]
async fn claim_loop(
    ctx: &Ctx,
    shutdown: &Shutdown,
    options: &WorkerOptions,
    registry: &Registry,
    worker: &WorkerRow,
    running: &Running,
    wake: &Arc<Notify>,
    slots: &Arc<Semaphore>,
    tasks: &tokio_util::task::TaskTracker,
) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_triggered() {
        let free = slots.available_permits();
        let mut claimed_all = false;
        if free > 0 {
            let limit = i64::try_from(free.min(100)).unwrap_or(100);
            let claimed = match ctx.db.conn().await {
                Ok(mut conn) => {
                    store::claim(&mut conn, &options.queues, limit, worker.id, options.lease)
                        .await
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            match claimed {
                Ok(jobs) => {
                    backoff = Duration::from_millis(100);
                    claimed_all = i64::try_from(jobs.len()).unwrap_or(0) == limit;
                    for job in jobs {
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            // Cannot happen (we claimed at most `free`); hand it back.
                            let cx = JobCx::new(ctx.clone(), job, worker.id);
                            let _ = finish(ctx, &cx, FinishWith::HandBack).await;
                            continue;
                        };
                        let cx = Arc::new(JobCx::new(ctx.clone(), job, worker.id));
                        if let Ok(mut r) = running.lock() {
                            r.insert(cx.job.id, cx.clone());
                        }
                        let handler = registry.get(&cx.job.kind);
                        let slot = Slot {
                            running: running.clone(),
                            id: cx.job.id,
                            wake: wake.clone(),
                            permit: Some(permit),
                        };
                        let ctx = ctx.clone();
                        tasks.spawn(async move {
                            let _slot = slot;
                            execute(&ctx, &cx, handler).await;
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis(), "claiming jobs failed");
                    if !shutdown.sleep(backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        if claimed_all {
            continue; // there may be more due work: claim again at once
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(options.poll_interval) => {}
            () = shutdown.cancelled() => break,
        }
    }
}

/// A running job's hold on this worker, released when its task ends however it ends: a job
/// left in the running set after a panic would have its lease extended by every heartbeat
/// and never be rescued.
struct Slot {
    running: Running,
    id: Uuid,
    wake: Arc<Notify>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut r) = self.running.lock() {
            r.remove(&self.id);
        }
        // Free the slot before waking the claim loop, so the wake finds it free.
        drop(self.permit.take());
        self.wake.notify_one();
    }
}

enum FinishWith {
    Outcome(Result<Output, JobError>),
    HandBack,
}

async fn execute(ctx: &Ctx, cx: &Arc<JobCx>, handler: Option<Arc<dyn super::Handler>>) {
    let kind = cx.job.kind.clone();
    let wait = (Utc::now() - cx.job.run_at).to_std().unwrap_or_default();
    metrics::histogram!("jobs_wait_seconds", "kind" => kind.clone()).record(wait.as_secs_f64());
    let started = Instant::now();
    let span = tracing::info_span!("job", job.id = %cx.job.id, job.kind = %kind, job.attempt = cx.job.attempt);
    let outcome = {
        use tracing::Instrument;
        async {
            let Some(handler) = handler else {
                return Err(JobError::Permanent(format!("no handler for kind {kind}")));
            };
            let limit = Duration::from_secs(u64::try_from(cx.job.timeout_secs).unwrap_or(300));
            // A panicking handler must not take the worker down: run it as its own task.
            let cx2 = cx.clone();
            let task = tokio::spawn(async move { handler.run(&cx2).await });
            let abort = task.abort_handle();
            match tokio::time::timeout(limit, task).await {
                Ok(Ok(result)) => result,
                Ok(Err(join)) => Err(JobError::Retryable(format!("handler panicked: {join}"))),
                Err(_) => {
                    abort.abort();
                    Err(JobError::Retryable(format!("timed out after {limit:?}")))
                }
            }
        }
        .instrument(span.clone())
        .await
    };
    metrics::histogram!("jobs_duration_seconds", "kind" => kind.clone())
        .record(started.elapsed().as_secs_f64());
    let with = match (&outcome, cx.stop_reason()) {
        (Err(_), Some(StopReason::Shutdown)) => FinishWith::HandBack,
        _ => FinishWith::Outcome(outcome),
    };
    // `.instrument`, not `span.enter()`: an entered guard held across an await corrupts the
    // subscriber's span stack when the task resumes on another thread, and tracing-subscriber
    // then panics ("tried to clone a span that already closed", tokio-rs/tracing#3514).
    use tracing::Instrument;
    async {
        if let Err(e) = finish(ctx, cx, with).await {
            tracing::warn!(error = %e, "could not record the job's outcome; the lease will expire and it will be rescued");
        }
    }
    .instrument(span)
    .await;
}

async fn finish(ctx: &Ctx, cx: &JobCx, with: FinishWith) -> Result<(), String> {
    let kind = cx.job.kind.clone();
    let retry_error;
    let (finish, label) = match &with {
        FinishWith::HandBack => (Finish::HandBack, "handed_back"),
        FinishWith::Outcome(Ok(out)) => (
            Finish::Completed {
                result: out.summary.clone(),
                body: out.body.as_ref().map(|(ct, b)| (ct.as_str(), b.as_slice())),
            },
            "completed",
        ),
        FinishWith::Outcome(Err(JobError::Cancelled)) => match cx.stop_reason() {
            Some(StopReason::LeaseLost) => return Ok(()),
            _ => (Finish::Cancelled, "cancelled"),
        },
        FinishWith::Outcome(Err(JobError::Permanent(e))) => (Finish::Dead { error: e }, "dead"),
        FinishWith::Outcome(Err(JobError::Retryable(e))) => {
            if cx.job.attempt >= cx.job.max_attempts {
                retry_error = format!(
                    "{e} (attempt {} of {})",
                    cx.job.attempt, cx.job.max_attempts
                );
                (
                    Finish::Dead {
                        error: &retry_error,
                    },
                    "dead",
                )
            } else {
                let delay = retry_delay(cx.job.attempt, rand::random::<f64>());
                let run_at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                (Finish::Retry { error: e, run_at }, "failed")
            }
        }
    };
    // The status the owner sees next; a hand-back is invisible to them.
    let status = match label {
        "completed" => Some("completed"),
        "failed" => Some("queued"),
        "dead" => Some("failed"),
        "cancelled" => Some("cancelled"),
        _ => None,
    };
    let error = match &with {
        FinishWith::Outcome(Err(e)) => Some(e.to_string()),
        _ => None,
    };
    let mut conn = ctx.db.conn().await.map_err(|e| e.to_string())?;
    let held = if let Finish::Completed { result, body } = &finish {
        // The hot path: one statement.
        let event = super::job_event(&cx.job, "job.status_changed", 999, "completed", None);
        store::complete(
            &mut conn,
            cx.job.id,
            cx.worker_id,
            cx.job.attempt,
            result,
            *body,
            &event,
        )
        .await
    } else {
        conn.transaction(async |conn| -> diesel::QueryResult<bool> {
            let held = store::finish(conn, cx.job.id, cx.worker_id, cx.job.attempt, finish).await?;
            if held && let Some(status) = status {
                let event =
                    super::job_event(&cx.job, "job.status_changed", 999, status, error.as_deref());
                crate::store::outbox::insert_event(conn, &event).await?;
            }
            Ok(held)
        })
        .await
    }
    .map_err(|e| e.to_string())?;
    if held && status.is_some() {
        ctx.relay_waker.wake();
    }
    if !held {
        tracing::info!(
            "late outcome ignored: the job was rescued after this worker's lease expired"
        );
        return Ok(());
    }
    match label {
        "completed" => metrics::counter!("jobs_completed_total", "kind" => kind).increment(1),
        "failed" => metrics::counter!("jobs_failed_total", "kind" => kind).increment(1),
        "dead" => {
            metrics::counter!("jobs_failed_total", "kind" => kind.clone()).increment(1);
            metrics::counter!("jobs_dead_total", "kind" => kind).increment(1);
        }
        "cancelled" => metrics::counter!("jobs_cancelled_total", "kind" => kind).increment(1),
        _ => {}
    }
    if let FinishWith::Outcome(Err(e)) = &with {
        tracing::warn!(outcome = label, error = %e, "job attempt failed");
    } else {
        tracing::debug!(outcome = label, "job finished");
    }
    Ok(())
}

/// Extends leases, applies cancel requests, rescues expired jobs and refreshes gauges.
async fn heartbeat_loop(
    ctx: Ctx,
    stop: Shutdown,
    worker: WorkerRow,
    lease: Duration,
    running: Running,
    wake: Arc<Notify>,
) {
    let every = lease / 3;
    loop {
        let snapshot: Vec<Arc<JobCx>> = running
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        if let Ok(mut conn) = ctx.db.conn().await {
            let ids: Vec<Uuid> = snapshot.iter().map(|cx| cx.job.id).collect();
            match store::heartbeat(&mut conn, worker.id, &ids, lease).await {
                Ok(held) => {
                    let held: HashMap<Uuid, bool> = held.into_iter().collect();
                    for cx in &snapshot {
                        match held.get(&cx.job.id) {
                            Some(true) => cx.request_stop(StopReason::CancelRequested),
                            Some(false) => {}
                            None => cx.request_stop(StopReason::LeaseLost),
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
            let count = i32::try_from(snapshot.len()).unwrap_or(i32::MAX);
            if let Err(e) = store::update_worker_heartbeat(&mut conn, &worker, count).await {
                tracing::warn!(error = %e, "worker heartbeat failed");
            }
            match store::rescue_expired(&mut conn).await {
                Ok(rescued) if !rescued.is_empty() => {
                    tracing::warn!(
                        count = rescued.len(),
                        "rescued jobs whose worker stopped heartbeating"
                    );
                    wake.notify_one();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "rescue failed"),
            }
            if let Ok(depth) = store::count_active_by_state(&mut conn).await {
                for (state, n) in depth {
                    #[expect(clippy::as_conversions, reason = "a gauge is an f64; counts fit")]
                    metrics::gauge!("jobs_queue_depth", "state" => state).set(n as f64);
                }
            }
            if let Ok(alive) = store::list_live_workers(&mut conn, lease).await {
                #[expect(clippy::as_conversions, reason = "a gauge is an f64; counts fit")]
                metrics::gauge!("jobs_workers_alive").set(alive.len() as f64);
            }
        }
        if !stop.sleep(every).await {
            return;
        }
    }
}

/// LISTENs for new jobs and cancel requests on a dedicated connection (a LISTEN on a pooled
/// connection would go back to the pool with it), reconnecting when it drops.
async fn listen(ctx: Ctx, stop: Shutdown, wake: Arc<Notify>, running: Running) {
    let mut backoff = Duration::from_millis(250);
    while !stop.is_triggered() {
        let connected = async {
            let mut conn = crate::store::connect::establish(ctx.config.database.url.expose())
                .await
                .map_err(|e| e.to_string())?;
            conn.batch_execute(&format!(
                "LISTEN {}; LISTEN {}",
                store::JOBS_CHANNEL,
                store::CANCEL_CHANNEL
            ))
            .await
            .map_err(|e| e.to_string())?;
            Ok::<_, String>(conn)
        }
        .await;
        let mut conn = match connected {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; polling meanwhile");
                if !stop.sleep(backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(250);
        // Anything enqueued while we were not listening is picked up by this wake.
        wake.notify_one();
        let mut stream = std::pin::pin!(conn.notifications_stream());
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                n = stream.next() => match n {
                    Some(Ok(n)) if n.channel == store::CANCEL_CHANNEL => {
                        if let Ok(id) = n.payload.parse::<Uuid>() {
                            let cx = running.lock().ok().and_then(|r| r.get(&id).cloned());
                            if let Some(cx) = cx {
                                cx.request_stop(StopReason::CancelRequested);
                            }
                        }
                    }
                    Some(Ok(_)) => wake.notify_one(),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                        break;
                    }
                    None => break,
                }
            }
        }
    }
}
