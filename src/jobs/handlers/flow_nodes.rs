//! Job kinds written for flows: `send_email`, `close_vendors`, `daily_summary`,
//! `cancel_unaccepted_orders`. Each deserialises its input (`service::nodes`), calls its
//! service function and returns its output as the job's summary — what the next steps of a
//! flow reference.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::jobs::{Handler, JobCx, JobError, Output};
use crate::service::flow_nodes::{self, EmailError};
use crate::service::nodes::{
    CancelUnacceptedInput, CloseVendorsInput, DailySummaryInput, SendEmailInput,
};

fn output(v: &impl Serialize) -> Result<Output, JobError> {
    Ok(Output {
        summary: serde_json::to_value(v)
            .map_err(|e| JobError::Permanent(format!("output not serialisable: {e}")))?,
        body: None,
    })
}

/// `send_email`.
pub struct SendEmail;

impl Handler for SendEmail {
    fn run<'a>(&'a self, cx: &'a JobCx) -> BoxFuture<'a, Result<Output, JobError>> {
        async move {
            let input: SendEmailInput = cx.payload()?;
            match flow_nodes::send_email(&cx.ctx, &input, cx.job.id).await {
                Ok(out) => output(&out),
                Err(EmailError::Permanent(e)) => Err(JobError::Permanent(e)),
                Err(EmailError::Transient(e)) => Err(JobError::Retryable(e)),
            }
        }
        .boxed()
    }
}

/// `close_vendors`.
pub struct CloseVendors;

impl Handler for CloseVendors {
    fn run<'a>(&'a self, cx: &'a JobCx) -> BoxFuture<'a, Result<Output, JobError>> {
        async move {
            let input: CloseVendorsInput = cx.payload()?;
            output(&flow_nodes::close_vendors(&cx.ctx, &input).await?)
        }
        .boxed()
    }
}

/// `daily_summary`.
pub struct DailySummary;

impl Handler for DailySummary {
    fn run<'a>(&'a self, cx: &'a JobCx) -> BoxFuture<'a, Result<Output, JobError>> {
        async move {
            let input: DailySummaryInput = cx.payload()?;
            output(&flow_nodes::daily_summary(&input))
        }
        .boxed()
    }
}

/// `cancel_unaccepted_orders`.
pub struct CancelUnacceptedOrders;

impl Handler for CancelUnacceptedOrders {
    fn run<'a>(&'a self, cx: &'a JobCx) -> BoxFuture<'a, Result<Output, JobError>> {
        async move {
            let input: CancelUnacceptedInput = cx.payload()?;
            output(&flow_nodes::cancel_unaccepted(&cx.ctx, &input).await?)
        }
        .boxed()
    }
}
