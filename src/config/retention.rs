//! How long finished work is kept before maintenance prunes it (every role; whichever runs
//! maintenance uses them).
//!
//! Env vars: `JOB_RETENTION_HOURS`, `OUTBOX_RETENTION_HOURS` (also the WebSocket resume
//! window).

use clap::Args;

/// Retention settings of every long-running role.
#[derive(Args, Clone, Debug)]
pub struct RetentionArgs {
    /// Hours finished (completed or cancelled) jobs are kept before maintenance prunes them.
    #[arg(long, env = "JOB_RETENTION_HOURS", default_value_t = 168)]
    pub job_retention_hours: u32,

    /// Hours published outbox events are kept (the WebSocket resume window).
    #[arg(long, env = "OUTBOX_RETENTION_HOURS", default_value_t = 24)]
    pub outbox_retention_hours: u32,
}
