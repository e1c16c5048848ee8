//! `noop`: does nothing, optionally after sleeping and optionally leaving an audit row —
//! the job the benchmarks and the exactly-once tests count.

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::jobs::{Handler, JobCx, JobError, Output};

/// The `noop` handler.
pub struct Noop;

type Payload = crate::service::nodes::NoopInput;

impl Handler for Noop {
    fn run<'a>(&'a self, cx: &'a JobCx) -> BoxFuture<'a, Result<Output, JobError>> {
        async move {
            let p: Payload = cx.payload()?;
            if p.sleep_ms > 0 {
                tokio::select! {
                    () = sleep(Duration::from_millis(p.sleep_ms)) => {}
                    () = cx.stop.cancelled() => return Err(JobError::Cancelled),
                }
            }
            if p.fail_attempts.contains(&cx.job.attempt) {
                return Err(JobError::Retryable(format!(
                    "asked to fail attempt {}",
                    cx.job.attempt
                )));
            }
            if p.fail {
                return Err(JobError::Permanent("asked to fail".to_owned()));
            }
            if p.audit {
                let mut conn = cx.ctx.db.conn().await?;
                crate::store::audit::insert(
                    &mut conn,
                    &crate::store::audit::NewAuditRow {
                        campus_id: cx.job.campus_id,
                        actor_id: None,
                        action: "job.noop".to_owned(),
                        target_type: "job".to_owned(),
                        target_id: cx.job.id.to_string(),
                        detail: serde_json::json!({ "worker": cx.worker_id, "attempt": cx.job.attempt }),
                        request_id: None,
                    },
                )
                .await?;
            }
            Ok(Output {
                summary: serde_json::json!({ "ok": true, "echo": p.echo }),
                body: None,
            })
        }
        .boxed()
    }
}

/// Sleeps `d`: at least `d`, and not a millisecond more. The runtime's timer rounds every
/// deadline up to its next millisecond tick, so `tokio::time::sleep` of 5 ms begun just after
/// a tick (as a job started when another one's sleep ended is) takes 6 ms: the 5 ms job of
/// `make bench jobs` would be a 6 ms job, and its ceiling 5,333 jobs/s instead of 6,400. The
/// runtime's timer sleeps to within a millisecond of the deadline; the rest is slept on a
/// blocking thread (the kernel's high-resolution timer).
async fn sleep(d: Duration) {
    let deadline = tokio::time::Instant::now() + d;
    if let Some(coarse) = deadline.checked_sub(Duration::from_millis(1)) {
        tokio::time::sleep_until(coarse).await;
    }
    let rest = deadline.saturating_duration_since(tokio::time::Instant::now());
    if !rest.is_zero() {
        #[expect(
            clippy::disallowed_methods,
            reason = "on a blocking thread, and less than a millisecond"
        )]
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await; // a failed spawn only means the runtime is shutting down
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    /// Never shorter than asked (the precision is `make bench`'s to show).
    #[tokio::test]
    async fn sleep_lasts_at_least_as_long_as_asked() {
        for ms in [0, 1, 2, 5] {
            let d = Duration::from_millis(ms);
            let started = Instant::now();
            super::sleep(d).await;
            assert!(started.elapsed() >= d, "{ms} ms");
        }
    }
}
