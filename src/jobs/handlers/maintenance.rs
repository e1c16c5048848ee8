//! `maintenance` (cron): prunes finished jobs, published outbox events, ended sessions and
//! expired idempotency keys after their retention windows, in small batches so it never
//! holds long locks.

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::jobs::{Handler, JobCx, JobError, Output};
use crate::store;

/// The `maintenance` handler.
pub struct Maintenance;

const BATCH: i64 = 5_000;

/// One kind of leftover to prune.
enum Prune {
    Jobs(DateTime<Utc>),
    Events(DateTime<Utc>),
    Sessions(DateTime<Utc>),
    IdempotencyKeys,
}

async fn prune_batch(conn: &mut AsyncPgConnection, what: &Prune) -> diesel::QueryResult<usize> {
    match what {
        Prune::Jobs(before) => store::jobs::delete_finished_before(conn, *before, BATCH).await,
        Prune::Events(before) => store::outbox::delete_published_before(conn, *before, BATCH).await,
        Prune::Sessions(before) => store::sessions::delete_ended_before(conn, *before, BATCH).await,
        Prune::IdempotencyKeys => store::idempotency::delete_expired(conn, BATCH).await,
    }
}

/// Deletes in batches until a batch comes back short.
async fn drain(cx: &JobCx, what: Prune) -> Result<usize, JobError> {
    let mut total = 0;
    loop {
        cx.check()?;
        let mut conn = cx.ctx.db.conn().await?;
        let n = prune_batch(&mut conn, &what).await?;
        total += n;
        if i64::try_from(n).unwrap_or(0) < BATCH {
            return Ok(total);
        }
    }
}

impl Handler for Maintenance {
    fn run<'a>(&'a self, cx: &'a JobCx) -> BoxFuture<'a, Result<Output, JobError>> {
        async move {
            let cfg = &cx.ctx.config;
            let now = Utc::now();
            let jobs_before = now - cfg.job_retention;
            let events_before = now - cfg.outbox_retention;
            let sessions_before = now - chrono::Duration::days(7);
            let jobs = drain(cx, Prune::Jobs(jobs_before)).await?;
            cx.progress(25, "finished jobs pruned").await;
            let events = drain(cx, Prune::Events(events_before)).await?;
            cx.progress(50, "published events pruned").await;
            let sessions = drain(cx, Prune::Sessions(sessions_before)).await?;
            cx.progress(75, "ended sessions pruned").await;
            let keys = drain(cx, Prune::IdempotencyKeys).await?;
            tracing::info!(jobs, events, sessions, keys, "maintenance pruned");
            Ok(Output {
                summary: serde_json::json!({
                    "jobs": jobs, "outboxEvents": events, "sessions": sessions, "idempotencyKeys": keys
                }),
                body: None,
            })
        }
        .boxed()
    }
}
