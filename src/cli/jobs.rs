//! `itsur jobs enqueue | stats | retry | cancel`: the job queue from an operator's shell.
//! Every subcommand is one or two service calls on the primary (`DATABASE_URL`).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use uuid::Uuid;

use super::boot;
use crate::app::Ctx;
use crate::config::{CommonArgs, Config};
use crate::domain::job::Priority;
use crate::service::jobs as service;

/// Settings of `itsur jobs`.
#[derive(Args, Debug)]
pub struct JobsArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Subcommand, Debug)]
enum JobsCommand {
    /// Enqueues COUNT jobs of KIND in one statement and wakes the workers.
    Enqueue {
        /// Job kind (e.g. `noop`).
        kind: String,
        /// JSON payload of every job.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// How many jobs.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        count: u64,
        /// Queue.
        #[arg(long, default_value = "default")]
        queue: String,
        /// high, normal or low.
        #[arg(long, default_value = "normal", value_parser = ["high", "normal", "low"])]
        priority: String,
    },
    /// Counts jobs by state and lists the queues (depth, running, paused, oldest wait).
    Stats {
        /// One JSON object: `queued`, `running`, `completed`, `dead`, `cancelled`, `queues`.
        #[arg(long)]
        json: bool,
    },
    /// Puts dead jobs back in the queue with fresh attempts.
    Retry {
        /// Retry the dead jobs (required: the only selection there is).
        #[arg(long, required = true)]
        dead: bool,
        /// Only dead jobs of this kind.
        #[arg(long)]
        kind: Option<String>,
    },
    /// Cancels jobs: queued ones at once, running ones are told to stop.
    Cancel {
        /// Job ids.
        #[arg(required = true, num_args = 1..)]
        ids: Vec<Uuid>,
    },
}

#[expect(clippy::print_stdout, reason = "the figures are the command's output")]
pub fn main(args: JobsArgs) -> ExitCode {
    let config = match Config::from_args(&args.common, None) {
        Ok(c) => c,
        Err(e) => return super::config_exit(&e),
    };
    boot::init_logging(&args.common);
    boot::block_on("jobs", async move {
        let ctx = Ctx::new(config)?;
        let fail = |e: crate::service::Error| anyhow::anyhow!("{e}");
        match args.command {
            JobsCommand::Enqueue {
                kind,
                payload,
                count,
                queue,
                priority,
            } => {
                let payload: serde_json::Value = serde_json::from_str(&payload)
                    .map_err(|e| anyhow::anyhow!("--payload is not JSON: {e}"))?;
                let priority = match priority.as_str() {
                    "high" => Priority::High,
                    "low" => Priority::Low,
                    _ => Priority::Normal,
                };
                let count = usize::try_from(count)?;
                let started = std::time::Instant::now();
                let n = service::enqueue_bulk(&ctx, &kind, payload, &queue, priority, count)
                    .await
                    .map_err(fail)?;
                let secs = started.elapsed().as_secs_f64();
                #[expect(clippy::as_conversions, clippy::cast_precision_loss, reason = "a rate")]
                let rate = n as f64 / secs.max(1e-9);
                println!("enqueued {n} {kind} jobs on {queue} in {secs:.3} s ({rate:.0} jobs/s)");
            }
            JobsCommand::Stats { json } => {
                let stats = service::job_stats(&ctx).await.map_err(fail)?;
                if json {
                    println!("{}", serde_json::to_string(&stats)?);
                } else {
                    println!(
                        "queued {}  running {}  completed {}  dead {}  cancelled {}",
                        stats.queued, stats.running, stats.completed, stats.dead, stats.cancelled
                    );
                    println!(
                        "{:<24} {:>8} {:>10} {:>10} {:>12}",
                        "queue", "paused", "queued", "running", "oldest (s)"
                    );
                    for q in &stats.queues {
                        println!(
                            "{:<24} {:>8} {:>10} {:>10} {:>12.1}",
                            q.queue, q.paused, q.queued, q.running, q.oldest_queued_secs
                        );
                    }
                }
            }
            JobsCommand::Retry { dead: _, kind } => {
                let n = service::retry_dead_jobs(&ctx, kind.as_deref())
                    .await
                    .map_err(fail)?;
                println!("{n} dead jobs queued again");
            }
            JobsCommand::Cancel { ids } => {
                let results = service::cancel_jobs(&ctx, &ids).await.map_err(fail)?;
                let mut missing = false;
                for (id, r) in results {
                    missing |= r == service::CancelResult::NotFound;
                    println!("{id} {}", serde_json::to_value(r)?.as_str().unwrap_or("?"));
                }
                if missing {
                    anyhow::bail!("some jobs were not found");
                }
            }
        }
        Ok(())
    })
}
