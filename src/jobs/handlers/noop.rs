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
                    () = crate::jobs::timer::sleep(Duration::from_millis(p.sleep_ms)) => {}
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
