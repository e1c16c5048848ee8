//! `sales_report`: reads the period in slices (progress after each), renders on the blocking
//! pool, stores the file for `GET /jobs/{id}/result`.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::jobs::{Handler, JobCx, JobError, Output};
use crate::service::reports::{self, SalesReportSpec};

/// The `sales_report` handler.
pub struct SalesReport;

/// Slices the period is read in.
const SLICES: i32 = 20;

impl Handler for SalesReport {
    fn run<'a>(&'a self, cx: &'a JobCx) -> BoxFuture<'a, Result<Output, JobError>> {
        async move {
            let spec: SalesReportSpec = cx.payload()?;
            spec.validate()?;
            let slices = spec.slices(SLICES);
            let total = slices.len().max(1);
            let mut rows = Vec::new();
            for (i, (from, to)) in slices.into_iter().enumerate() {
                cx.check()?;
                rows.extend(reports::read_slice(&cx.ctx, spec.vendor_id, from, to).await?);
                let pct = u8::try_from((i + 1) * 90 / total).unwrap_or(90);
                cx.progress(pct, &format!("read {} of {total} slices", i + 1))
                    .await;
            }
            let rendered = tokio::task::spawn_blocking(move || reports::render(&spec, &rows))
                .await
                .map_err(|e| JobError::Retryable(format!("render task failed: {e}")))?
                .map_err(|e| JobError::Permanent(format!("render failed: {e:#}")))?;
            Ok(Output {
                summary: rendered.summary,
                body: Some((rendered.content_type.to_owned(), rendered.body)),
            })
        }
        .boxed()
    }
}
