//! The worker. Three loops share one set of in-flight jobs:
//!
//! - the **claim loop** takes due jobs in batches (one prepared statement on its own
//!   connection) into a bounded local buffer — the free slots plus a prefetch — and starts a
//!   task in each free slot. A slot's task runs buffered jobs one after the other: when its
//!   job ends it takes the next one from the buffer itself, so a freed slot never waits for
//!   the claim loop or for a claim in flight. Buffered jobs are leased like running ones
//!   (state `running` in the database), so a killed worker's buffer is rescued by the lease
//!   like its running jobs;
//! - the **completer** records outcomes in batches: whatever ended while the previous batch
//!   was being written goes in the next one (at most [`MAX_BATCH`]), as one statement for the
//!   ends and one for the retries and hand-backs, fenced by worker id and attempt so a late
//!   outcome of a rescued job changes nothing;
//! - the **heartbeat** extends the leases of everything in flight and applies cancel
//!   requests, on its own connection. Beside it, the **maintenance** loop rescues jobs of dead
//!   workers and refreshes the cluster-wide gauges — on one elected worker of the cluster
//!   only — and another loop vacuums the hot table after every 10,000 jobs this worker ended
//!   (autovacuum may be off or behind).
//!
//! Two wake-ups drive the claim loop: `wake` (work may be due: a NOTIFY, a rescue) makes it
//! claim; `room` (a slot freed, outcomes recorded, the buffer ran low) makes it start
//! buffered jobs, and claim only while the last claim came back full. So an idle worker's
//! claim connection is free when a NOTIFY arrives: it claims at once. On shutdown the worker
//! stops claiming, hands buffered jobs back at once, lets running jobs finish within the
//! drain budget and hands the rest back.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use tokio::sync::{Notify, Semaphore, mpsc};
use uuid::Uuid;

use super::registry::Registry;
use super::{JobCx, JobError, Output, StopReason};
use crate::app::Ctx;
use crate::resilience::backoff::Reconnect;
use crate::shutdown::Shutdown;
use crate::store::jobs::{self as store, End, EndState, Requeue, Terminal, WorkerRow};

/// Most outcomes written by one completer statement.
pub const MAX_BATCH: usize = 2000;
/// Most jobs one claim statement takes.
const MAX_CLAIM: usize = 1000;
/// Jobs ended by this worker between two vacuums of the hot table.
const VACUUM_EVERY_JOBS: u64 = 10_000;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Queues to claim from.
    pub queues: Vec<String>,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Jobs claimed ahead of free slots into the local buffer, so a saturated worker never
    /// idles waiting for a claim round trip.
    pub prefetch: usize,
    /// The buffer's depth adapts between the concurrency and `prefetch` (see [`Depth`]);
    /// false keeps it at `prefetch` (an operator set `JOB_PREFETCH`).
    pub adaptive: bool,
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

/// The prefetch when none is configured: as deep as one claim goes (1,000). The buffer only
/// grows that deep while slots go idle waiting for claims (see [`Depth`]).
pub fn default_prefetch(_concurrency: usize) -> usize {
    MAX_CLAIM
}

/// How deep the local buffer runs, between the concurrency and the prefetch: it doubles when
/// slots sat free with the buffer empty while more work was due (the previous claim came back
/// full), so a fast stream of short jobs is claimed in big batches (one statement, one
/// commit for hundreds of jobs), and halves when a buffered job waited more than a second
/// before it started, so a worker of slow jobs does not hoard what idle peers could run.
#[derive(Debug)]
struct Depth {
    now: usize,
    min: usize,
    max: usize,
}

impl Depth {
    fn new(options: &WorkerOptions) -> Self {
        let min = if options.adaptive {
            options.concurrency.min(options.prefetch).max(1)
        } else {
            options.prefetch.max(1)
        };
        Self {
            now: min,
            min,
            max: options.prefetch.max(1),
        }
    }

    fn grow(&mut self) {
        self.now = self.now.saturating_mul(2).min(self.max);
    }

    fn shrink(&mut self) {
        self.now = (self.now / 2).max(self.min);
    }

    /// Jobs this worker may hold now: running, buffered, and ended but not yet recorded.
    fn max_held(&self, concurrency: usize) -> usize {
        concurrency.saturating_add(self.now).saturating_mul(2)
    }
}

impl WorkerOptions {
    /// From the command line; the drain budget is most of the shutdown budget, leaving time to
    /// hand unfinished jobs back.
    pub fn from_args(args: &crate::config::JobArgs, shutdown_timeout: Duration) -> Self {
        let concurrency = usize::try_from(args.concurrency).unwrap_or(8);
        Self {
            queues: args.queues.clone(),
            concurrency,
            prefetch: match usize::try_from(args.prefetch).unwrap_or(0) {
                0 => default_prefetch(concurrency),
                n => n,
            },
            adaptive: args.prefetch == 0,
            lease: Duration::from_secs(args.lease_secs),
            poll_interval: Duration::from_millis(args.poll_interval_ms),
            poll_only: args.poll_only,
            drain_timeout: shutdown_timeout.mul_f64(0.8),
            cron: !args.no_cron,
        }
    }

    /// Jobs in flight at most: buffered, running, and ended but not yet recorded.
    fn max_in_flight(&self) -> usize {
        self.concurrency
            .saturating_add(self.prefetch)
            .saturating_mul(2)
    }
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            queues: vec!["default".to_owned()],
            concurrency: 8,
            prefetch: default_prefetch(8),
            adaptive: true,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            poll_only: false,
            drain_timeout: Duration::from_secs(25),
            cron: true,
        }
    }
}

/// The jobs this worker holds (buffered, running, or ended and not yet recorded), by id:
/// the heartbeat extends all their leases.
type InFlight = Arc<std::sync::Mutex<HashMap<Uuid, Arc<JobCx>>>>;

/// What a job's attempt came to, as the completer records it.
enum Outcome {
    /// The handler's result.
    Ran(Result<Output, JobError>),
    /// Not run to the end: the worker is stopping; another worker takes it.
    HandBack,
}

/// One job's outcome on its way to the completer.
struct Done {
    cx: Arc<JobCx>,
    outcome: Outcome,
}

/// What the completer does with an outcome: the finish path's state machine.
enum Record {
    /// Moves to history.
    End {
        state: EndState,
        error: Option<String>,
        message: Option<String>,
    },
    /// Back to the queue: a retry after its backoff, or a hand-back.
    Requeue {
        hand_back: bool,
        run_at: chrono::DateTime<Utc>,
        error: Option<String>,
    },
    /// Nothing to write (a cancelled attempt whose lease was lost: the rescuer owns it).
    Skip,
}

impl Record {
    fn of(cx: &JobCx, outcome: &Outcome) -> Self {
        match outcome {
            Outcome::HandBack => Self::Requeue {
                hand_back: true,
                run_at: Utc::now(),
                error: None,
            },
            Outcome::Ran(Ok(_)) => Self::End {
                state: EndState::Completed,
                error: None,
                message: None,
            },
            Outcome::Ran(Err(e @ JobError::Cancelled)) => match cx.stop_reason() {
                Some(StopReason::LeaseLost) => Self::Skip,
                Some(StopReason::Shutdown) => Self::Requeue {
                    hand_back: true,
                    run_at: Utc::now(),
                    error: None,
                },
                _ => Self::End {
                    state: EndState::Cancelled,
                    error: None,
                    message: Some(e.to_string()),
                },
            },
            // Interrupted by the shutdown: not the job's failure.
            Outcome::Ran(Err(_)) if cx.stop_reason() == Some(StopReason::Shutdown) => {
                Self::Requeue {
                    hand_back: true,
                    run_at: Utc::now(),
                    error: None,
                }
            }
            Outcome::Ran(Err(JobError::Permanent(reason))) => Self::End {
                state: EndState::Dead,
                error: Some(reason.clone()),
                message: Some(format!("permanent: {reason}")),
            },
            Outcome::Ran(Err(JobError::Retryable(reason))) => {
                if cx.job.attempt >= cx.job.max_attempts {
                    Self::End {
                        state: EndState::Dead,
                        error: Some(format!(
                            "{reason} (attempt {} of {})",
                            cx.job.attempt, cx.job.max_attempts
                        )),
                        message: Some(format!("retryable: {reason}")),
                    }
                } else {
                    // The shared schedule (5 s · 5ⁿ, capped), jittered upwards only by up to
                    // 20 %: jobs that failed together come back spread out, never early.
                    let attempt = u32::try_from(cx.job.attempt).unwrap_or(1);
                    let delay = crate::resilience::backoff::schedule(attempt)
                        .mul_f64(1.0 + 0.2 * rand::random::<f64>());
                    Self::Requeue {
                        hand_back: false,
                        run_at: Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
                        error: Some(reason.clone()),
                    }
                }
            }
        }
    }
}

/// A claimed job not started yet.
struct Buffered {
    cx: Arc<JobCx>,
    handler: Option<Arc<dyn super::Handler>>,
    claimed_at: Instant,
    /// When it entered `in_flight` (from then on every heartbeat extends its lease).
    held_since: Instant,
}

/// Claimed jobs not started yet, oldest first. The claim loop fills it; a job's task takes
/// the next job from it the moment its own ends, so a freed slot never waits for the claim
/// loop, nor for a claim in flight on the claim connection.
#[derive(Default)]
struct Buffer {
    jobs: std::sync::Mutex<BufferState>,
    /// The claim loop wants to hear (on `Worker::room`) when the buffer falls to this many
    /// jobs: it claims the next batch while slots still have work.
    low: AtomicUsize,
    /// A job waited more than a second in the buffer before it started: the depth halves.
    waited_long: AtomicBool,
    /// A slot looked for its next job and found the buffer empty: if more work was due,
    /// the depth doubles.
    starved: AtomicBool,
}

#[derive(Default)]
struct BufferState {
    jobs: VecDeque<Buffered>,
    /// Shutdown: no job starts any more; what is left is handed back.
    closed: bool,
}

impl Buffer {
    fn len(&self) -> usize {
        self.jobs.lock().map_or(0, |b| b.jobs.len())
    }

    fn push(&self, jobs: impl IntoIterator<Item = Buffered>) {
        if let Ok(mut b) = self.jobs.lock() {
            b.jobs.extend(jobs);
        }
    }

    /// The oldest buffered job, unless the buffer is empty or closed; wakes the claim loop
    /// (`room`) when the buffer ran low.
    fn pop(&self, room: &Notify) -> Option<Buffered> {
        let (next, left) = {
            let mut b = self.jobs.lock().ok()?;
            if b.closed {
                return None;
            }
            let Some(next) = b.jobs.pop_front() else {
                self.starved.store(true, Ordering::Relaxed);
                return None;
            };
            (next, b.jobs.len())
        };
        if next.claimed_at.elapsed() > Duration::from_secs(1) {
            self.waited_long.store(true, Ordering::Relaxed);
        }
        if left <= self.low.load(Ordering::Relaxed) {
            room.notify_one();
        }
        Some(next)
    }

    /// Closes the buffer (no job starts any more) and returns what it held.
    fn close(&self) -> Vec<Buffered> {
        self.jobs.lock().map_or_else(
            |_| Vec::new(),
            |mut b| {
                b.closed = true;
                b.jobs.drain(..).collect()
            },
        )
    }
}

/// Shared state of one worker's loops.
struct Worker {
    ctx: Ctx,
    options: WorkerOptions,
    row: WorkerRow,
    /// This worker's row of the per-minute counters (workers never share a row lock).
    shard: i16,
    in_flight: InFlight,
    /// Work may be due: a NOTIFY, a (re)connected listener, a rescue. The claim loop claims.
    wake: Arc<Notify>,
    /// Room for more jobs: a slot freed, outcomes recorded, the buffer ran low. The claim
    /// loop starts buffered jobs, and claims if the last claim left due work behind.
    room: Arc<Notify>,
    slots: Arc<Semaphore>,
    buffer: Buffer,
    /// When the last heartbeat that extended the leases took its snapshot of `in_flight`.
    renewed: std::sync::Mutex<Option<Instant>>,
    /// Jobs ended by this worker since it last vacuumed the hot table.
    ended: AtomicU64,
    /// Metric handles by job kind.
    metrics: MetricsByKind,
}

/// Runs the worker until shutdown.
pub async fn run(ctx: Ctx, shutdown: Shutdown, options: WorkerOptions, registry: Registry) {
    let row = WorkerRow {
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
    tracing::info!(worker.id = %row.id, queues = ?options.queues, concurrency = options.concurrency, prefetch = options.prefetch, "worker started");
    let w = Arc::new(Worker {
        ctx: ctx.clone(),
        slots: Arc::new(Semaphore::new(options.concurrency)),
        options,
        shard: rand::random_range(1..=64),
        row,
        in_flight: Arc::default(),
        wake: Arc::new(Notify::new()),
        room: Arc::new(Notify::new()),
        buffer: Buffer::default(),
        renewed: std::sync::Mutex::new(None),
        ended: AtomicU64::new(0),
        metrics: MetricsByKind::default(),
    });
    // Background loops stop with this token, after the claim loop has drained.
    let loops = Shutdown::new();
    let completer_stop = Shutdown::new();
    let (done_tx, done_rx) = mpsc::channel::<Done>(w.options.max_in_flight().max(1));

    if !w.options.poll_only {
        tokio::spawn(listen(w.clone(), loops.clone()));
    }
    let heartbeat = tokio::spawn(heartbeat_loop(w.clone(), loops.clone()));
    tokio::spawn(vacuum_loop(w.clone(), loops.clone()));
    tokio::spawn(maintenance_loop(w.clone(), loops.clone()));
    let completer = tokio::spawn(completer(w.clone(), done_rx, completer_stop.clone()));
    if w.options.cron {
        tokio::spawn(super::cron::run(ctx.clone(), loops.clone()));
    }

    let tasks = tokio_util::task::TaskTracker::new();
    claim_loop(&w, &shutdown, &registry, &done_tx, &tasks).await;

    // Buffered jobs never started: back to the queue at once.
    let buffer = w.buffer.close();
    if !buffer.is_empty() {
        tracing::info!(count = buffer.len(), "handing buffered jobs back");
    }
    for Buffered { cx, .. } in buffer {
        let _ = done_tx
            .send(Done {
                cx,
                outcome: Outcome::HandBack,
            })
            .await; // the completer outlives this send: it only stops below
    }
    // Drain: running jobs get the budget to finish, then are told to stop and handed back.
    tasks.close();
    let drained = tokio::time::timeout(w.options.drain_timeout, tasks.wait())
        .await
        .is_ok();
    if !drained {
        let running: Vec<Arc<JobCx>> = w
            .in_flight
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        tracing::warn!(
            count = running.len(),
            "drain budget spent: handing running jobs back"
        );
        for cx in &running {
            cx.request_stop(StopReason::Shutdown);
        }
        if tokio::time::timeout(Duration::from_secs(3), tasks.wait())
            .await
            .is_err()
        {
            // Handlers that ignore cancellation: hand their jobs back from here; their late
            // writes are fenced out by the attempt number.
            for cx in running {
                let _ = done_tx.try_send(Done {
                    cx,
                    outcome: Outcome::HandBack,
                }); // a full channel: the lease returns the job instead
            }
        }
    }
    drop(done_tx);
    completer_stop.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(5), completer).await;
    loops.trigger();
    let _ = heartbeat.await;
    if let Ok(mut conn) = ctx.db.conn().await {
        let _ = store::delete_worker(&mut conn, w.row.id).await;
    }
    tracing::info!(worker.id = %w.row.id, "worker stopped");
}

/// Opens the claim (or completer) connection: a dedicated session whose planner always
/// walks the claim index, whatever the statistics say ([`store::set_worker_session`]).
async fn session(ctx: &Ctx) -> Result<AsyncPgConnection, String> {
    let mut conn = crate::store::connect::establish(ctx.config.database.url.expose())
        .await
        .map_err(|e| e.to_string())?;
    store::set_worker_session(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Claims into the buffer and starts buffered jobs in free slots until shutdown.
///
/// A claim is sent when the buffer runs low and there is room, and either the last claim
/// came back full (more is due) or something says work may be due (a NOTIFY, a rescue, the
/// poll interval). A freed slot alone claims nothing: an idle worker's claim connection is
/// free the moment the next NOTIFY arrives.
async fn claim_loop(
    w: &Arc<Worker>,
    shutdown: &Shutdown,
    registry: &Registry,
    done_tx: &mpsc::Sender<Done>,
    tasks: &tokio_util::task::TaskTracker,
) {
    let mut conn: Option<AsyncPgConnection> = None;
    let mut backoff = Reconnect::new(Duration::from_millis(100), Reconnect::CAP);
    let mut depth = Depth::new(&w.options);
    let mut cursor = store::ClaimCursor::START;
    let mut last_full_scan = Instant::now();
    // The last claim came back full: more work was due than it took.
    let mut more_due = false;
    // Work may be due that no claim has looked for yet (the first claim looks at once).
    let mut signalled = true;
    let mut next_poll = tokio::time::Instant::now() + w.options.poll_interval;
    while !shutdown.is_triggered() {
        if w.buffer.waited_long.swap(false, Ordering::Relaxed) {
            depth.shrink();
        }
        // Deeper when a slot found nothing to run while more was due (the claim came too
        // late). Read when it happens, not here: by the time the claim loop looks, the claim
        // it was waiting for has refilled the buffer (so the depth stayed at the concurrency,
        // and 32 slots of 5 ms jobs idled through every claim: 5,700–5,900 jobs/s of 6,400).
        if w.buffer.starved.swap(false, Ordering::Relaxed) && more_due {
            depth.grow();
        }
        start_free(w, shutdown, done_tx, tasks).await;
        w.buffer.low.store(depth.now / 2, Ordering::Relaxed);
        let max = depth.max_held(w.options.concurrency);
        let held = w.in_flight.lock().map(|r| r.len()).unwrap_or(max);
        let want = max.saturating_sub(held).min(MAX_CLAIM);
        let low = w.buffer.len() <= depth.now / 2;
        if low && want > 0 && (more_due || signalled) {
            signalled = false;
            if conn.is_none() {
                match session(&w.ctx).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in_ms = backoff.peek().as_millis(), "claim connection failed");
                        signalled = true;
                        if !backoff.wait(shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            let started = Instant::now();
            if last_full_scan.elapsed() >= Duration::from_secs(1) {
                cursor = store::ClaimCursor::START;
            }
            if cursor == store::ClaimCursor::START {
                last_full_scan = started;
            }
            let limit = i64::try_from(want).unwrap_or(1);
            let claimed = store::claim_after(
                c,
                &w.options.queues,
                limit,
                w.row.id,
                w.options.lease,
                &cursor,
            )
            .await;
            match claimed {
                Ok(jobs) => {
                    metrics::histogram!("jobs_claim_seconds")
                        .record(started.elapsed().as_secs_f64());
                    backoff.reset();
                    more_due = jobs.len() == want;
                    // A short claim reached the end: the next one starts from the front
                    // again (jobs that sort before the cursor may have arrived).
                    cursor = match (more_due, store::ClaimCursor::last_of(&jobs)) {
                        (true, Some(last)) => last,
                        _ => store::ClaimCursor::START,
                    };
                    buffer_claimed(w, registry, jobs, started);
                }
                Err(e) => {
                    conn = None;
                    signalled = true;
                    tracing::warn!(error = %e, retry_in_ms = backoff.peek().as_millis(), "claiming jobs failed");
                    if !backoff.wait(shutdown).await {
                        break;
                    }
                }
            }
            continue; // start what was claimed, then look again
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = w.wake.notified() => signalled = true,
            () = w.room.notified() => {}
            () = tokio::time::sleep_until(next_poll) => {
                // The fallback when no NOTIFY arrives (jobs that became due by their
                // `run_at`, poll-only workers, a lost notification).
                signalled = true;
                next_poll = tokio::time::Instant::now() + w.options.poll_interval;
            }
        }
    }
}

/// Holds freshly claimed jobs (leased from now on: the heartbeat extends them) in the buffer.
fn buffer_claimed(w: &Worker, registry: &Registry, jobs: Vec<store::JobRow>, claimed_at: Instant) {
    let buffered: Vec<Buffered> = jobs
        .into_iter()
        .map(|job| Buffered {
            handler: registry.get(&job.kind),
            cx: Arc::new(JobCx::new(w.ctx.clone(), job, w.row.id)),
            claimed_at,
            held_since: Instant::now(),
        })
        .collect();
    if let Ok(mut map) = w.in_flight.lock() {
        for b in &buffered {
            map.insert(b.cx.job.id, b.cx.clone());
        }
    }
    w.buffer.push(buffered);
}

/// Starts a task in every free slot that has a buffered job to run.
async fn start_free(
    w: &Arc<Worker>,
    shutdown: &Shutdown,
    done_tx: &mpsc::Sender<Done>,
    tasks: &tokio_util::task::TaskTracker,
) {
    while let Ok(permit) = w.slots.clone().try_acquire_owned() {
        let Some(first) = next_job(w, shutdown, done_tx).await else {
            break;
        };
        let slot = Slot {
            room: w.room.clone(),
            permit: Some(permit),
        };
        tasks.spawn(run_slot(
            w.clone(),
            shutdown.clone(),
            done_tx.clone(),
            slot,
            first,
        ));
    }
}

/// Runs jobs in one slot: `first`, then whatever is buffered, until the buffer is empty or
/// closed. Each job's outcome goes to the completer as the job ends.
async fn run_slot(
    w: Arc<Worker>,
    shutdown: Shutdown,
    done_tx: mpsc::Sender<Done>,
    slot: Slot,
    first: Buffered,
) {
    let mut next = Some(first);
    while let Some(Buffered { cx, handler, .. }) = next {
        let outcome = execute(&cx, handler, &w.metrics.of(&cx.job.kind)).await;
        let _ = done_tx.send(Done { cx, outcome }).await; // closed only after the drain
        next = next_job(&w, &shutdown, &done_tx).await;
    }
    drop(slot);
}

/// The next buffered job to run (None when the buffer is empty, or closed by shutdown).
/// A job cancelled while buffered ends as cancelled without running; a job rescued while
/// buffered (this worker stalled past its lease) is dropped: another worker owns it.
async fn next_job(
    w: &Worker,
    shutdown: &Shutdown,
    done_tx: &mpsc::Sender<Done>,
) -> Option<Buffered> {
    loop {
        if shutdown.is_triggered() {
            return None;
        }
        let b = w.buffer.pop(&w.room)?;
        match b.cx.stop_reason() {
            Some(StopReason::CancelRequested) => {
                let _ = done_tx
                    .send(Done {
                        cx: b.cx,
                        outcome: Outcome::Ran(Err(JobError::Cancelled)),
                    })
                    .await; // the completer lives until after the drain
            }
            Some(StopReason::LeaseLost) => {
                if let Ok(mut map) = w.in_flight.lock() {
                    map.remove(&b.cx.job.id);
                }
                w.room.notify_one();
            }
            Some(StopReason::Shutdown) | None if lease_running_out(w, &b) => {
                // The heartbeat is late (a loaded machine, a starved pool): the lease may
                // expire before the next one, and another worker would run the job too.
                // Hand it back instead (fenced: a no-op if it was rescued already).
                let _ = done_tx
                    .send(Done {
                        cx: b.cx,
                        outcome: Outcome::HandBack,
                    })
                    .await; // the completer lives until after the drain
            }
            Some(StopReason::Shutdown) | None => return Some(b),
        }
    }
}

/// Less than a third of the job's lease (one heartbeat interval) is surely left: counted
/// from when the claim was sent, or from the last heartbeat that covered the job.
fn lease_running_out(w: &Worker, b: &Buffered) -> bool {
    let renewed = w.renewed.lock().ok().and_then(|r| *r);
    let since = match renewed {
        Some(t) if t >= b.held_since => t,
        _ => b.claimed_at,
    };
    since.elapsed() + w.options.lease / 3 > w.options.lease
}

/// A slot, released when its task ends however it ends (a panic included); the claim
/// loop hears of it (it may start a buffered job there, or claim).
struct Slot {
    room: Arc<Notify>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Free the slot before waking the claim loop, so the wake finds it free.
        drop(self.permit.take());
        self.room.notify_one();
    }
}

async fn execute(
    cx: &Arc<JobCx>,
    handler: Option<Arc<dyn super::Handler>>,
    m: &KindMetrics,
) -> Outcome {
    let wait = (Utc::now() - cx.job.run_at).to_std().unwrap_or_default();
    m.wait.record(wait.as_secs_f64());
    let started = Instant::now();
    let span = tracing::info_span!("job", job.id = %cx.job.id, job.kind = %cx.job.kind, job.attempt = cx.job.attempt);
    // `.instrument`, not `span.enter()`: an entered guard held across an await corrupts the
    // subscriber's span stack when the task resumes on another thread (tokio-rs/tracing#3514).
    use futures_util::FutureExt as _;
    use tracing::Instrument;
    let outcome = async {
        let Some(handler) = handler else {
            return Err(JobError::Permanent(format!(
                "no handler for kind {}",
                cx.job.kind
            )));
        };
        let limit = Duration::from_secs(u64::try_from(cx.job.timeout_secs).unwrap_or(300));
        // A panicking handler must not take the worker down: its panic is caught here and
        // fails the attempt (caught in this task, not a task of its own). The handler's
        // state is dropped with it, so nothing observes a broken invariant.
        let run = std::panic::AssertUnwindSafe(handler.run(cx)).catch_unwind();
        match tokio::time::timeout(limit, run).await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string payload".to_owned());
                Err(JobError::Retryable(format!("handler panicked: {why}")))
            }
            // Dropping the handler's future at the deadline stops it.
            Err(_) => Err(JobError::Retryable(format!("timed out after {limit:?}"))),
        }
    }
    .instrument(span)
    .await;
    m.duration.record(started.elapsed().as_secs_f64());
    Outcome::Ran(outcome)
}

/// One kind's metric handles, looked up once per kind instead of once per job (a labelled
/// `metrics::histogram!` hashes and allocates its key on every call).
struct KindMetrics {
    wait: metrics::Histogram,
    duration: metrics::Histogram,
    completed: metrics::Counter,
    failed: metrics::Counter,
    dead: metrics::Counter,
    cancelled: metrics::Counter,
}

impl KindMetrics {
    fn new(kind: &str) -> Self {
        let k = || ("kind", kind.to_owned());
        Self {
            wait: metrics::histogram!("jobs_wait_seconds", &[k()]),
            duration: metrics::histogram!("jobs_duration_seconds", &[k()]),
            completed: metrics::counter!("jobs_completed_total", &[k()]),
            failed: metrics::counter!("jobs_failed_total", &[k()]),
            dead: metrics::counter!("jobs_dead_total", &[k()]),
            cancelled: metrics::counter!("jobs_cancelled_total", &[k()]),
        }
    }
}

/// The metric handles of every kind this worker has run.
#[derive(Default)]
struct MetricsByKind(std::sync::Mutex<HashMap<String, Arc<KindMetrics>>>);

impl MetricsByKind {
    fn of(&self, kind: &str) -> Arc<KindMetrics> {
        let Ok(mut map) = self.0.lock() else {
            return Arc::new(KindMetrics::new(kind));
        };
        if let Some(m) = map.get(kind) {
            return m.clone();
        }
        let m = Arc::new(KindMetrics::new(kind));
        map.insert(kind.to_owned(), m.clone());
        m
    }
}

/// Records outcomes in batches until stopped (then records what is left).
async fn completer(w: Arc<Worker>, mut rx: mpsc::Receiver<Done>, stop: Shutdown) {
    // Connected and prepared before the first job ends (the first batch of a fresh worker
    // took 13 ms more than the next ones); a failure here is retried at the first batch.
    let mut conn: Option<AsyncPgConnection> = match session(&w.ctx).await {
        Ok(mut c) => match store::prepare_completion(&mut c, w.row.id, w.shard).await {
            Ok(()) => Some(c),
            Err(e) => {
                tracing::debug!(error = %e, "preparing the completer's statements failed");
                None
            }
        },
        Err(_) => None,
    };
    let mut batch: Vec<Done> = Vec::with_capacity(MAX_BATCH);
    loop {
        if batch.is_empty() {
            tokio::select! {
                d = rx.recv() => match d {
                    Some(d) => batch.push(d),
                    None => return,
                },
                () = stop.cancelled() => {
                    // Whatever is already queued is still recorded.
                    while let Ok(d) = rx.try_recv() {
                        batch.push(d);
                    }
                    if batch.is_empty() {
                        return;
                    }
                }
            }
        }
        // Everything that ended while the previous batch was written goes in this one.
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        let mut failures = 0_u32;
        loop {
            let started = Instant::now();
            match record(&w, &mut conn, &batch).await {
                Ok(()) => {
                    // Where the completer's time goes (`make bench` reads these).
                    metrics::histogram!("jobs_record_seconds")
                        .record(started.elapsed().as_secs_f64());
                    #[expect(clippy::as_conversions, reason = "a batch size as f64")]
                    metrics::histogram!("jobs_record_batch_size").record(batch.len() as f64);
                    break;
                }
                Err(e) => {
                    conn = None;
                    failures += 1;
                    let delay = crate::resilience::backoff::schedule(failures)
                        .min(Duration::from_secs(2))
                        .mul_f64(0.05);
                    tracing::warn!(error = %e, count = batch.len(), failures, "recording job outcomes failed");
                    // The jobs stay leased (the heartbeat still extends them) while we retry;
                    // after a few failures give up: the leases expire and the jobs are rescued.
                    if failures >= 5 || stop.is_triggered() && failures >= 2 {
                        forget(&w, &batch);
                        break;
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
        batch.clear();
    }
}

/// Stops holding (heartbeating) the batch's jobs and tells the claim loop there is room.
fn forget(w: &Worker, batch: &[Done]) {
    if let Ok(mut map) = w.in_flight.lock() {
        for d in batch {
            map.remove(&d.cx.job.id);
        }
    }
    w.room.notify_one();
}

/// Writes one batch: the ends (to history) and the requeues, each one statement; in one
/// transaction with the flow hook when a flow step ended.
async fn record(
    w: &Worker,
    conn: &mut Option<AsyncPgConnection>,
    batch: &[Done],
) -> Result<(), String> {
    if conn.is_none() {
        *conn = Some(session(&w.ctx).await?);
    }
    let Some(conn) = conn.as_mut() else {
        return Err("no connection".to_owned());
    };
    let records: Vec<Record> = batch
        .iter()
        .map(|d| Record::of(&d.cx, &d.outcome))
        .collect();
    let mut ends = Vec::new();
    let mut requeues = Vec::new();
    let mut has_step = false;
    for (d, r) in batch.iter().zip(&records) {
        match r {
            Record::End {
                state,
                error,
                message,
            } => {
                has_step |= d.cx.job.flow_step_id.is_some();
                let (result, body) = match &d.outcome {
                    Outcome::Ran(Ok(out)) => (
                        Some(&out.summary),
                        out.body.as_ref().map(|(ct, b)| (ct.as_str(), b.as_slice())),
                    ),
                    _ => (None, None),
                };
                ends.push(End {
                    id: d.cx.job.id,
                    attempt: d.cx.job.attempt,
                    state: *state,
                    result,
                    body,
                    error: error.as_deref(),
                    message: message.as_deref(),
                });
            }
            Record::Requeue {
                hand_back,
                run_at,
                error,
            } => requeues.push(Requeue {
                id: d.cx.job.id,
                attempt: d.cx.job.attempt,
                hand_back: *hand_back,
                run_at: *run_at,
                error: error.as_deref(),
            }),
            Record::Skip => {}
        }
    }
    let (id, shard) = (w.row.id, w.shard);
    let hooks = w.ctx.job_hooks.clone();
    let (ended, requeued): (Vec<Terminal>, Vec<Uuid>) = if has_step {
        conn.transaction(async |conn| -> Result<_, crate::service::Error> {
            let ended = store::end_batch(conn, id, shard, &ends).await?;
            let requeued = store::requeue_batch(conn, id, shard, &requeues).await?;
            hooks.call(conn, &ended).await?;
            Ok((ended, requeued))
        })
        .await
        .map_err(|e| e.to_string())?
    } else {
        let ended = store::end_batch(conn, id, shard, &ends)
            .await
            .map_err(|e| e.to_string())?;
        let requeued = store::requeue_batch(conn, id, shard, &requeues)
            .await
            .map_err(|e| e.to_string())?;
        (ended, requeued)
    };
    let n_ended = u64::try_from(ended.len()).unwrap_or(0);
    w.ended.fetch_add(n_ended, Ordering::Relaxed);
    let held: HashSet<Uuid> = ended
        .iter()
        .map(|t| t.id)
        .chain(requeued.iter().copied())
        .collect();
    let mut events = false;
    let mut handed_back = false;
    // Counted per kind and batch, then added once per kind.
    let mut counts: HashMap<&str, [u64; 4]> = HashMap::new();
    for (d, r) in batch.iter().zip(&records) {
        if !held.contains(&d.cx.job.id) {
            if !matches!(r, Record::Skip) {
                tracing::info!(job.id = %d.cx.job.id, "late outcome ignored: the job was rescued after this worker's lease expired");
            }
            continue;
        }
        let c = counts.entry(d.cx.job.kind.as_str()).or_default();
        match r {
            Record::End { state, .. } => {
                events |= d.cx.job.owner_id.is_some() || d.cx.job.campus_id.is_some();
                match state {
                    EndState::Completed => c[0] += 1,
                    // Failed (this attempt) and dead.
                    EndState::Dead => {
                        c[1] += 1;
                        c[2] += 1;
                    }
                    EndState::Cancelled => c[3] += 1,
                }
            }
            Record::Requeue { hand_back, .. } => {
                if *hand_back {
                    handed_back = true;
                } else {
                    events |= d.cx.job.owner_id.is_some() || d.cx.job.campus_id.is_some();
                    c[1] += 1;
                }
            }
            Record::Skip => {}
        }
        if let Outcome::Ran(Err(e)) = &d.outcome {
            tracing::warn!(job.id = %d.cx.job.id, job.kind = %d.cx.job.kind, error = %e, "job attempt failed");
        }
    }
    for (kind, [completed, failed, dead, cancelled]) in counts {
        let m = w.metrics.of(kind);
        m.completed.increment(completed);
        m.failed.increment(failed);
        m.dead.increment(dead);
        m.cancelled.increment(cancelled);
    }
    if events {
        w.ctx.relay_waker.wake();
    }
    if handed_back {
        // Another worker may take them now (sent after commit: this statement autocommits).
        let _ = store::notify_workers(conn, "*").await; // best effort: workers poll
    }
    forget(w, batch);
    Ok(())
}

/// Autovacuum may be off or behind: every job leaves dead entries in the hot table and its
/// indexes, which claims (from the front of the claim index) and heartbeats walk. The
/// worker that ended enough jobs vacuums the hot table itself, on its own connection; the
/// table is small by design, so this is cheap, and SKIP_LOCKED makes a concurrent vacuum
/// (another worker's) a no-op instead of a wait.
async fn vacuum_loop(w: Arc<Worker>, stop: Shutdown) {
    while stop.sleep(Duration::from_secs(2)).await {
        if w.ended.load(Ordering::Relaxed) < VACUUM_EVERY_JOBS {
            continue;
        }
        w.ended.store(0, Ordering::Relaxed);
        let Ok(mut conn) = w.ctx.db.conn().await else {
            continue;
        };
        let started = Instant::now();
        match conn
            .batch_execute("VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) jobs")
            .await
        {
            Ok(()) => {
                metrics::histogram!("jobs_vacuum_seconds").record(started.elapsed().as_secs_f64());
            }
            Err(e) => tracing::debug!(error = %e, "vacuum of the hot job table failed"),
        }
    }
}

/// Extends leases, applies cancel requests, rescues expired jobs and refreshes gauges.
async fn heartbeat_loop(w: Arc<Worker>, stop: Shutdown) {
    let every = w.options.lease / 3;
    // Its own connection, not a pooled one: handlers that hold or wait for every pooled
    // connection must not stop the leases being extended (another worker would rescue and
    // run their jobs a second time).
    let mut own: Option<AsyncPgConnection> = None;
    loop {
        let taken = Instant::now();
        let snapshot: Vec<Arc<JobCx>> = w
            .in_flight
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        let mut lost = false;
        if let Some(conn) = own_connection(&mut own, &w.ctx, "heartbeat").await {
            let ids: Vec<Uuid> = snapshot.iter().map(|cx| cx.job.id).collect();
            match store::heartbeat(conn, w.row.id, &ids, w.options.lease).await {
                Ok(held) => {
                    if let Ok(mut r) = w.renewed.lock() {
                        *r = Some(taken);
                    }
                    let held: HashMap<Uuid, bool> = held.into_iter().collect();
                    for cx in &snapshot {
                        match held.get(&cx.job.id) {
                            Some(true) => cx.request_stop(StopReason::CancelRequested),
                            Some(false) => {}
                            None => cx.request_stop(StopReason::LeaseLost),
                        }
                    }
                }
                Err(e) => {
                    lost = true;
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
            let count = i32::try_from(snapshot.len()).unwrap_or(i32::MAX);
            if let Err(e) = store::update_worker_heartbeat(conn, &w.row, count).await {
                tracing::warn!(error = %e, "worker heartbeat failed");
            }
        }
        if lost {
            own = None;
        }
        if !stop.sleep(every).await {
            return;
        }
    }
}

/// A loop's own connection (not from the pool), opened when it has none yet or lost it;
/// None while Postgres cannot be reached (the loop tries again next round).
async fn own_connection<'a>(
    own: &'a mut Option<AsyncPgConnection>,
    ctx: &Ctx,
    role: &'static str,
) -> Option<&'a mut AsyncPgConnection> {
    if own.is_none() {
        match crate::store::connect::establish(ctx.config.database.url.expose()).await {
            Ok(c) => *own = Some(c),
            Err(e) => tracing::warn!(error = %e, connection = role, "own connection failed"),
        }
    }
    own.as_mut()
}

/// The cluster's maintenance, every third of a lease: a separate loop, so scans of the hot
/// table (the rescue, the gauges' counts) never delay the lease extension in
/// [`heartbeat_loop`]. Each round does something on one worker only (the one
/// [`store::claim_maintenance_round`] elects): with N workers, the rescue and the gauge
/// scans still run once a round, not N times. On its own connection, like the heartbeat:
/// the elected worker's heartbeat keeps it elected, so if its rounds waited for a pooled
/// connection that its handlers hold, nobody in the cluster would rescue anything.
async fn maintenance_loop(w: Arc<Worker>, stop: Shutdown) {
    let every = w.options.lease / 3;
    let mut gauges = ClusterGauges::default();
    let mut own: Option<AsyncPgConnection> = None;
    loop {
        if let Some(conn) = own_connection(&mut own, &w.ctx, "maintenance").await
            && !maintain(&w, conn, &mut gauges).await
        {
            own = None; // reconnect for the next round
        }
        if !stop.sleep(every).await {
            return;
        }
    }
}

/// One round of [`maintenance_loop`]: if elected, rescue expired jobs and refresh the
/// cluster-wide gauges; if not, withdraw the gauges this worker exported while it was.
/// False when the round failed (the connection may be broken).
async fn maintain(w: &Worker, conn: &mut AsyncPgConnection, gauges: &mut ClusterGauges) -> bool {
    let hooks = w.ctx.job_hooks.clone();
    let (id, lease) = (w.row.id, w.options.lease);
    let round = conn
        .transaction(async |conn| -> Result<_, crate::service::Error> {
            if !store::claim_maintenance_round(conn, id, lease).await? {
                return Ok(None);
            }
            let rescued = store::rescue_expired(conn).await?;
            let dead: Vec<Terminal> = rescued
                .iter()
                .filter_map(store::Rescued::terminal)
                .collect();
            hooks.call(conn, &dead).await?;
            Ok(Some(rescued))
        })
        .await;
    match round {
        Ok(None) => {
            gauges.withdraw();
            return true;
        }
        Ok(Some(rescued)) if !rescued.is_empty() => {
            tracing::warn!(
                count = rescued.len(),
                "rescued jobs whose worker stopped heartbeating"
            );
            let _ = store::notify_workers(conn, "*").await; // others poll anyway
            w.wake.notify_one();
        }
        Ok(Some(_)) => {}
        // Elected or not is unknown: the gauges stay as they are until the next round.
        Err(e) => {
            tracing::warn!(error = %e, "rescue failed");
            return false;
        }
    }
    gauges.refresh(conn, lease).await;
    true
}

/// The cluster-wide job gauges: `jobs_queue_depth` by state, `jobs_queued` and `jobs_running`
/// by queue, `jobs_workers_alive`. Only the elected worker exports them, so `sum()` over the
/// scraped processes is the cluster's figure, as `max()` is. A series this worker set and no
/// longer refreshes goes to 0 — when another worker is elected, or a queue has no job left —
/// because the metrics facade cannot remove a series, and a stale value would be summed (and
/// would hold an autoscaler up).
#[derive(Default)]
struct ClusterGauges {
    /// The labelled series this worker has set: (gauge, label, label value).
    series: HashSet<(&'static str, &'static str, String)>,
    /// It has set `jobs_workers_alive`.
    alive: bool,
}

impl ClusterGauges {
    /// Sets the gauges from the database (the elected worker's round).
    async fn refresh(&mut self, conn: &mut AsyncPgConnection, lease: Duration) {
        if let Ok(depth) = store::count_active_by_state(conn).await {
            self.set("jobs_queue_depth", "state", depth);
        }
        // Per-queue depth for autoscalers (KEDA): one GROUP BY over the hot table.
        if let Ok(queues) = store::list_queues(conn).await {
            let (queued, running) = queues
                .into_iter()
                .map(|q| ((q.queue.clone(), q.queued), (q.queue, q.running)))
                .unzip();
            self.set("jobs_queued", "queue", queued);
            self.set("jobs_running", "queue", running);
        }
        if let Ok(alive) = store::list_live_workers(conn, lease).await {
            #[expect(clippy::as_conversions, reason = "a gauge is an f64; counts fit")]
            metrics::gauge!("jobs_workers_alive").set(alive.len() as f64);
            self.alive = true;
        }
    }

    /// Sets `gauge` for each label value, and to 0 where a value it set before is gone.
    fn set(&mut self, gauge: &'static str, label: &'static str, values: Vec<(String, i64)>) {
        let fresh: HashSet<String> = values.iter().map(|(v, _)| v.clone()).collect();
        self.series.retain(|(g, l, v)| {
            let gone = *g == gauge && !fresh.contains(v);
            if gone {
                metrics::gauge!(gauge, *l => v.clone()).set(0.0);
            }
            !gone
        });
        for (value, n) in values {
            #[expect(clippy::as_conversions, reason = "a gauge is an f64; counts fit")]
            metrics::gauge!(gauge, label => value.clone()).set(n as f64);
            self.series.insert((gauge, label, value));
        }
    }

    /// Another worker exports the gauges now: this one's go to 0.
    fn withdraw(&mut self) {
        for (gauge, label, value) in self.series.drain() {
            metrics::gauge!(gauge, label => value).set(0.0);
        }
        if std::mem::take(&mut self.alive) {
            metrics::gauge!("jobs_workers_alive").set(0.0);
        }
    }
}

/// LISTENs for new jobs and cancel requests through the shared listener (its own
/// connection, health check and reconnect loop); new-job notifications coalesce into one
/// wake-up of the claim loop.
async fn listen(w: Arc<Worker>, stop: Shutdown) {
    let on = {
        let w = w.clone();
        move |n: crate::store::listen::Notification<'_>| match n {
            crate::store::listen::Notification::Message { channel, payload }
                if channel == store::CANCEL_CHANNEL =>
            {
                if let Ok(id) = payload.parse::<Uuid>() {
                    let cx = w.in_flight.lock().ok().and_then(|r| r.get(&id).cloned());
                    if let Some(cx) = cx {
                        cx.request_stop(StopReason::CancelRequested);
                    }
                }
            }
            _ => w.wake.notify_one(),
        }
    };
    crate::store::listen::on_notify(
        w.ctx.config.database.url.clone(),
        &[store::JOBS_CHANNEL, store::CANCEL_CHANNEL],
        on,
        stop,
    )
    .await;
}
