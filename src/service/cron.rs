//! The cron schedules: what recurs, when, in which time zone. Shared by the worker, which
//! enqueues each tick (`jobs::cron`), and the console, which shows each schedule's next run
//! and the outcome of its last tick.
//!
//! L2: pure data and arithmetic (croner, chrono-tz); no I/O.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;

use crate::domain::job::kind;

/// A recurring job.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Unique name (part of the tick's unique key).
    pub name: &'static str,
    /// Standard cron expression, e.g. `*/10 * * * *`.
    pub expression: &'static str,
    /// Time zone the expression is read in.
    pub time_zone: Tz,
    /// Job kind to enqueue.
    pub kind: &'static str,
}

/// The built-in schedules.
pub fn schedules() -> Vec<Schedule> {
    vec![Schedule {
        name: "maintenance",
        expression: "*/10 * * * *",
        time_zone: chrono_tz::UTC,
        kind: kind::MAINTENANCE,
    }]
}

/// The first tick of `schedule` strictly after `after`.
pub fn next_tick(schedule: &Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let cron = Cron::new(schedule.expression).parse().ok()?;
    let local = after.with_timezone(&schedule.time_zone);
    cron.find_next_occurrence(&local, false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The last tick of `schedule` at or before `at` (croner only searches forwards: walk
/// forwards from ever earlier starts, at most a few thousand steps).
pub fn previous_tick(schedule: &Schedule, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let cron = Cron::new(schedule.expression).parse().ok()?;
    for span in [
        chrono::Duration::hours(1),
        chrono::Duration::days(1),
        chrono::Duration::days(32),
        chrono::Duration::days(366),
    ] {
        let mut t = (at - span).with_timezone(&schedule.time_zone);
        let mut last = None;
        for _ in 0..10_000 {
            match cron.find_next_occurrence(&t, true) {
                Ok(n) if n.with_timezone(&Utc) <= at => {
                    last = Some(n.with_timezone(&Utc));
                    t = n + chrono::Duration::seconds(1);
                }
                _ => break,
            }
        }
        if last.is_some() {
            return last;
        }
    }
    None
}

/// The unique key of one tick's job: N workers enqueue one job per tick.
pub fn tick_key(schedule: &Schedule, tick: DateTime<Utc>) -> String {
    format!("cron:{}:{}", schedule.name, tick.to_rfc3339())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_tick_is_at_or_before() {
        let every = &schedules()[0];
        let at = "2026-11-23T00:15:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            previous_tick(every, at).unwrap().to_rfc3339(),
            "2026-11-23T00:10:00+00:00"
        );
        let on = "2026-11-23T00:20:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(previous_tick(every, on).unwrap(), on);
    }
}
