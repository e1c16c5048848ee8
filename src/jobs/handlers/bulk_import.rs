//! `bulk_import_users`: reads the uploaded file from `import_uploads` (never from the job
//! payload: it holds passwords), validates every row, imports the good ones in chunks
//! (passwords hashed through the process's bounded hasher, two at a time so the worker's
//! other jobs keep a core), reports {total, imported, failed, errors[≤100]}. The file goes with
//! the job's row in `jobs` when the job ends (see `store::import_uploads`).

use std::collections::HashSet;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};

use crate::jobs::{Handler, JobCx, JobError, Output};
use crate::service::credentials::HashError;
use crate::service::imports::{self, ImportSpec, MAX_REPORTED_ERRORS, RowError};
use crate::store;

/// The `bulk_import_users` handler.
pub struct BulkImportUsers;

const CHUNK: usize = 50;
const HASHERS: usize = 2;

impl Handler for BulkImportUsers {
    fn run<'a>(&'a self, cx: &'a JobCx) -> BoxFuture<'a, Result<Output, JobError>> {
        import(cx).boxed()
    }
}

/// Validates every row of the uploaded file and imports the good ones.
async fn import(cx: &JobCx) -> Result<Output, JobError> {
    let spec: ImportSpec = cx.payload()?;
    let (campus, vendors) = {
        let mut conn = cx.ctx.db.conn().await?;
        let campus = store::campuses::find(&mut conn, spec.campus_id)
            .await?
            .ok_or_else(|| JobError::Permanent("campus no longer exists".to_owned()))?;
        let vendors: HashSet<uuid::Uuid> =
            store::vendors::list_by_campus(&mut conn, campus.id.into())
                .await?
                .into_iter()
                .map(|v| v.id.into_inner())
                .collect();
        (campus, vendors)
    };
    let Some(csv) = ({
        let mut conn = cx.ctx.db.conn().await?;
        store::import_uploads::find_csv(&mut conn, cx.job.id).await?
    }) else {
        return Err(JobError::Permanent(
            "the uploaded file is gone (the job ended before)".to_owned(),
        ));
    };
    let (good, mut errors, total) =
        tokio::task::spawn_blocking(move || imports::validate_rows(&campus, &vendors, &csv))
            .await
            .map_err(|e| JobError::Retryable(e.to_string()))?;
    let mut imported = 0_usize;
    let chunks = good.len().div_ceil(CHUNK).max(1);
    for (i, chunk) in good.chunks(CHUNK).enumerate() {
        cx.check()?;
        let emails: Vec<String> = chunk.iter().map(|r| r.email.clone()).collect();
        let taken: HashSet<String> = {
            let mut conn = cx.ctx.db.conn().await?;
            store::users::existing_emails(&mut conn, &emails)
                .await?
                .into_iter()
                .collect()
        };
        let fresh: Vec<_> = chunk.iter().filter(|r| !taken.contains(&r.email)).collect();
        let passwords: Vec<String> = fresh.iter().map(|r| r.password.clone()).collect();
        let hashed: Vec<_> = futures_util::stream::iter(passwords)
            .map(|p| hash_patiently(cx, p))
            .buffered(HASHERS)
            .collect()
            .await;
        let mut rows = Vec::with_capacity(fresh.len());
        for (row, hash) in fresh.iter().zip(hashed) {
            let hash = hash?;
            rows.push(imports::new_user(spec.campus_id, row, hash));
        }
        let inserted: HashSet<String> = {
            let mut conn = cx.ctx.db.conn().await?;
            store::users::insert_many_new(&mut conn, &rows)
                .await?
                .into_iter()
                .collect()
        };
        imported += inserted.len();
        for r in chunk.iter().filter(|r| !inserted.contains(&r.email)) {
            errors.push(RowError {
                line: r.line,
                email: Some(r.email.clone()),
                message: "an account with this e-mail already exists".to_owned(),
            });
        }
        let pct = u8::try_from((i + 1) * 100 / chunks).unwrap_or(100).min(99);
        cx.progress(pct, &format!("{imported} of {total} rows imported"))
            .await;
    }
    errors.sort_by_key(|e| e.line);
    let failed = errors.len();
    errors.truncate(MAX_REPORTED_ERRORS);
    Ok(Output {
        summary: serde_json::json!({
            "total": total, "imported": imported, "failed": failed, "errors": errors,
        }),
        body: None,
    })
}

/// Hashes through the process's bounded hasher. A job is not a waiting user: when every
/// hasher stays busy past the queue timeout (a login storm), it queues again instead of
/// failing the attempt, stopping only if the job is cancelled or the worker stops.
async fn hash_patiently(cx: &JobCx, password: String) -> Result<String, JobError> {
    loop {
        cx.check()?;
        match cx.ctx.hasher.hash(password.clone()).await {
            Ok(hash) => return Ok(hash),
            Err(HashError::Saturated(_)) => {}
            Err(HashError::Failed(e)) => return Err(JobError::Retryable(format!("{e:#}"))),
        }
    }
}
