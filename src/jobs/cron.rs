//! Cron schedules (standard 5-field syntax, evaluated in a time zone). Every worker runs
//! them; each tick is enqueued with the unique key `cron:<name>:<tick>`, so however many
//! workers run, one job exists per tick.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::app::Ctx;
use crate::domain::job::Priority;
use crate::shutdown::Shutdown;
use crate::store::jobs::{self as store, NewJob};

pub use crate::service::cron::{Schedule, next_tick, schedules};

/// The job of one tick (unique per schedule and tick).
pub fn tick_job(schedule: &Schedule, tick: DateTime<Utc>) -> NewJob {
    NewJob {
        id: Uuid::now_v7(),
        kind: schedule.kind.to_owned(),
        queue: "default".to_owned(),
        priority: Priority::Low.as_i16(),
        payload: serde_json::json!({ "schedule": schedule.name, "tick": tick }),
        unique_key: Some(crate::service::cron::tick_key(schedule, tick)),
        run_at: tick,
        max_attempts: 3,
        timeout_secs: 600,
        owner_id: None,
        campus_id: None,
    }
}

/// Enqueues each schedule's ticks as they come due, until shutdown.
pub async fn run(ctx: Ctx, stop: Shutdown) {
    let schedules = schedules();
    let mut next: Vec<Option<DateTime<Utc>>> =
        schedules.iter().map(|s| next_tick(s, Utc::now())).collect();
    loop {
        let Some(due) = next.iter().flatten().min().copied() else {
            return;
        };
        let wait = (due - Utc::now()).to_std().unwrap_or_default();
        if !stop.sleep(wait).await {
            return;
        }
        for (schedule, slot) in schedules.iter().zip(next.iter_mut()) {
            let Some(tick) = *slot else { continue };
            if tick > Utc::now() {
                continue;
            }
            let enqueued = match ctx.db.conn().await {
                Ok(mut conn) => {
                    let job = tick_job(schedule, tick);
                    let enqueued = store::enqueue(&mut conn, &job)
                        .await
                        .map_err(|e| e.to_string());
                    if matches!(enqueued, Ok((_, true))) {
                        // Autocommitted above: the wake-up goes after it.
                        let _ = store::notify_workers(&mut conn, &job.queue).await; // workers poll
                    }
                    enqueued
                }
                Err(e) => Err(e.to_string()),
            };
            match enqueued {
                Ok((_, true)) => {
                    tracing::info!(schedule = schedule.name, %tick, "cron tick enqueued")
                }
                Ok((_, false)) => {} // another worker enqueued this tick
                Err(e) => {
                    tracing::warn!(schedule = schedule.name, error = %e, "cron tick not enqueued")
                }
            }
            *slot = next_tick(schedule, tick);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::job::kind;

    #[test]
    fn ticks_follow_the_expression_in_its_time_zone() {
        let s = Schedule {
            name: "t",
            expression: "30 9 * * *",
            time_zone: chrono_tz::America::Mexico_City,
            kind: kind::NOOP,
        };
        let after = "2026-11-23T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
        // 09:30 in Mexico City (UTC-6) is 15:30 UTC.
        assert_eq!(
            next_tick(&s, after).unwrap().to_rfc3339(),
            "2026-11-23T15:30:00+00:00"
        );
        let every = &schedules()[0];
        let t = next_tick(every, after).unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-23T00:10:00+00:00");
        assert_eq!(
            tick_job(every, t).unique_key.unwrap(),
            "cron:maintenance:2026-11-23T00:10:00+00:00"
        );
    }
}
