//! The job worker (`worker`, `all`); the retention of finished jobs is in
//! [`super::retention`].
//!
//! Env vars: `JOB_QUEUES`, `WORKER_CONCURRENCY`, `JOB_PREFETCH`, `JOB_LEASE_SECS`, `JOB_POLL_INTERVAL_MS`,
//! `JOB_POLL_ONLY`, `JOB_NO_CRON`.

use clap::Args;

/// Settings of the job worker (`worker` and `all`).
#[derive(Args, Clone, Debug)]
pub struct JobArgs {
    /// Queues to claim jobs from, comma-separated.
    #[arg(
        long,
        env = "JOB_QUEUES",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub queues: Vec<String>,

    /// Jobs run at once by this worker.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,

    /// Jobs claimed ahead of free slots into the worker's local buffer (leased like running
    /// jobs; handed back at once on shutdown). The buffer starts at the concurrency and grows
    /// toward this only while slots idle waiting for claims. 0 = adaptive, up to 1,000 (one
    /// claim); any other value keeps the buffer that deep.
    #[arg(long, env = "JOB_PREFETCH", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub prefetch: u32,

    /// Seconds a claimed job stays leased without a heartbeat; a dead worker's jobs return
    /// to the queue within it.
    #[arg(long, env = "JOB_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub lease_secs: u64,

    /// Polling interval in ms (the fallback when no NOTIFY arrives).
    #[arg(long, env = "JOB_POLL_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub poll_interval_ms: u64,

    /// Never LISTEN, only poll (for connection poolers in transaction mode).
    #[arg(long, env = "JOB_POLL_ONLY", default_value_t = false)]
    pub poll_only: bool,

    /// Do not run the cron schedules in this worker.
    #[arg(long, env = "JOB_NO_CRON", default_value_t = false)]
    pub no_cron: bool,
}
