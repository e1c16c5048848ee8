//! Flow schedules: every worker calls [`fire_due`] about once a second. Due schedule rows are
//! claimed with `FOR UPDATE SKIP LOCKED`, each starts ONE run with the unique key
//! `schedule:<flow>:<index>:<tick>` and moves to its next tick in the same transaction, so N
//! workers start one run per tick. Ticks are computed in the schedule's time zone (default:
//! the campus's `time_zone`) by croner, so "21:00" stays 21:00 local across DST changes.
//! Ticks missed while no worker ran are not replayed: the schedule fires once for the
//! oldest missed tick and moves past `now`.
//!
//! Also here: the two flows ITSUR Eats ships and seeds per campus.

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use serde_json::json;
use uuid::Uuid;

use super::Result;
use crate::app::Ctx;
use crate::domain::flow::Definition;
use crate::store::flows as store;

/// Schedules handled per transaction.
const BATCH: i64 = 50;

/// Fires every schedule due at `now`; returns how many runs it started.
pub async fn fire_due(ctx: &Ctx, now: DateTime<Utc>) -> Result<usize> {
    let mut conn = ctx.db.conn().await?;
    let started = conn
        .transaction(async |conn| -> Result<usize> {
            let due = store::claim_due_schedules(conn, now, BATCH).await?;
            let mut started = 0;
            for s in due {
                let zone: chrono_tz::Tz = s.time_zone.parse().unwrap_or(chrono_tz::UTC);
                let next = super::flows::next_tick(&s.cron, zone, now.max(s.next_run_at))
                    .unwrap_or(now + chrono::Duration::days(365));
                store::set_next_run(conn, s.flow_id, s.idx, next).await?;
                let Some(flow) = store::find_flow(conn, s.flow_id).await? else {
                    continue;
                };
                let key = format!(
                    "schedule:{}:{}:{}",
                    s.flow_id,
                    s.idx,
                    s.next_run_at.to_rfc3339()
                );
                let run = super::flows::start_run_in(
                    conn,
                    &ctx.flow_definitions,
                    &flow,
                    s.input.clone(),
                    None,
                    "schedule",
                    Some(key),
                )
                .await?;
                if run.is_some() {
                    started += 1;
                    tracing::info!(flow.id = %flow.id, flow.name = %flow.name, tick = %s.next_run_at, "scheduled flow run started");
                }
            }
            Ok(started)
        })
        .await?;
    if started > 0 {
        ctx.relay_waker.wake();
        super::flow_engine::notify_workers(ctx).await;
    }
    Ok(started)
}

/// `campus.end_of_day`: at closing time (21:00 in the campus's zone) close every open
/// vendor, a sales report per vendor (fan-out), one summary (fan-in), e-mailed to the
/// campus admins.
pub fn end_of_day(campus: Uuid) -> serde_json::Value {
    json!({
        "steps": [
            {"id": "close", "node": "close_vendors", "input": {"campusId": {"$ref": "run.campusId"}}},
            {"id": "report", "node": "sales_report", "dependsOn": ["close"],
             "forEach": "steps.close.output.reports", "input": {"$ref": "item"}, "onFailure": "continue"},
            {"id": "summary", "node": "daily_summary", "dependsOn": ["report"],
             "input": {"campusId": {"$ref": "run.campusId"}, "day": {"$ref": "steps.close.output.day"},
                       "reports": {"$ref": "steps.report.output"}}},
            {"id": "email", "node": "send_email", "dependsOn": ["summary"], "maxAttempts": 5,
             "input": {"to": {"campusAdminsOf": campus},
                       "subject": {"$ref": "steps.summary.output.subject"},
                       "text": {"$ref": "steps.summary.output.text"}}}
        ],
        "schedules": [{"cron": "0 21 * * *"}]
    })
}

/// `order.unaccepted`: every minute, orders still `placed` 10 minutes after creation are
/// cancelled (stock restored) and each student notified by push and e-mail.
pub fn order_unaccepted() -> serde_json::Value {
    json!({
        "steps": [
            {"id": "cancel", "node": "cancel_unaccepted_orders",
             "input": {"campusId": {"$ref": "run.campusId"}, "olderThanSecs": 600}},
            {"id": "push", "node": "send_push", "dependsOn": ["cancel"], "onFailure": "ignore",
             "forEach": "steps.cancel.output.orders",
             "input": {"userId": {"$ref": "item.userId"}, "title": "Order cancelled",
                       "body": {"$ref": "item.message"}, "data": {"orderId": {"$ref": "item.orderId"}}}},
            {"id": "email", "node": "send_email", "dependsOn": ["cancel"], "onFailure": "ignore",
             "forEach": "steps.cancel.output.orders",
             "input": {"to": {"userIds": [{"$ref": "item.userId"}]}, "subject": "Your order was cancelled",
                       "text": {"$ref": "item.message"}}}
        ],
        "schedules": [{"cron": "* * * * *"}]
    })
}

/// Seeds both flows into a campus unless a flow of that name exists there; returns how many
/// were created.
pub async fn seed_campus_flows(ctx: &Ctx, campus: Uuid) -> Result<usize> {
    let mut conn = ctx.db.conn().await?;
    conn.transaction(async |conn| -> Result<usize> {
        let mut created = 0;
        for (name, description, def) in [
            (
                "campus.end_of_day",
                "Closes the vendors at 21:00 local time, reports each, e-mails the summary to the campus admins",
                end_of_day(campus),
            ),
            (
                "order.unaccepted",
                "Cancels orders still placed 10 minutes after creation and tells the student",
                order_unaccepted(),
            ),
        ] {
            if store::find_flow_by_name(conn, campus, name).await?.is_some() {
                continue;
            }
            let def: Definition = super::flows::validate_definition(&def).map_err(|e| {
                anyhow::anyhow!("shipped flow {name} is invalid: {e:?}")
            })?;
            super::flows::save_new_flow(conn, campus, name, description, &def, None).await?;
            created += 1;
        }
        Ok(created)
    })
    .await
}
