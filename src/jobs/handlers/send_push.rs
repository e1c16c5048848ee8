//! `send_push`: notifies every device of a user through its provider (FCM, OneSignal), each
//! call behind the provider's circuit breaker. Dead tokens are deleted; throttling, provider
//! faults and an open breaker make the job back off (Retryable), not fail.
//!
//! A retry re-sends to every device of the user, so a device that got the message before a
//! later device's provider failed may get it twice: push is at-least-once, like every event
//! here.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::clients::push::{PushMessage, PushOutcome, PushTarget};
use crate::jobs::{Handler, JobCx, JobError, Output};
use crate::store;

/// The `send_push` handler.
pub struct SendPush;

pub use crate::service::nodes::SendPushPayload;

impl Handler for SendPush {
    fn run<'a>(&'a self, cx: &'a JobCx) -> BoxFuture<'a, Result<Output, JobError>> {
        async move {
            let p: SendPushPayload = cx.payload()?;
            let devices = {
                let mut conn = cx.ctx.db.conn().await?;
                store::devices::list_for_user(&mut conn, p.user_id).await?
            };
            let message = PushMessage {
                title: p.title.clone(),
                body: p.body.clone(),
                data: p.data.clone(),
            };
            let (mut delivered, mut dropped, mut permanent) = (0_u32, 0_u32, Vec::new());
            let mut retry: Option<String> = None;
            for device in &devices {
                cx.check()?;
                let Ok(platform) = device.platform.parse() else {
                    permanent.push(format!("unknown platform {}", device.platform));
                    continue;
                };
                let target = PushTarget {
                    platform,
                    token: device.token.clone(),
                };
                match cx.ctx.clients.push.send(&target, &message).await {
                    PushOutcome::Delivered => delivered += 1,
                    PushOutcome::DropToken => {
                        let mut conn = cx.ctx.db.conn().await?;
                        store::devices::delete_by_token(&mut conn, p.user_id, &device.token)
                            .await?;
                        dropped += 1;
                    }
                    PushOutcome::Retry { reason, .. } => {
                        retry.get_or_insert(reason);
                    }
                    PushOutcome::Permanent(reason) => permanent.push(reason),
                }
            }
            if let Some(reason) = retry {
                return Err(JobError::Retryable(format!(
                    "{reason} ({delivered} delivered before it)"
                )));
            }
            if delivered == 0 && dropped == 0 && !permanent.is_empty() {
                return Err(JobError::Permanent(permanent.join("; ")));
            }
            Ok(Output {
                summary: serde_json::json!({
                    "devices": devices.len(), "delivered": delivered,
                    "droppedTokens": dropped, "failed": permanent,
                }),
                body: None,
            })
        }
        .boxed()
    }
}
