//! Outbox events as the realtime side sees them: the envelope built from a row, the
//! tenant-scoped replay behind WebSocket `resume`, the admin view of dead events (list,
//! retry). Waking the relay after a commit is `app::relay_waker` (`ctx.relay_waker`).
//!
//! L2: depends on `store::outbox`, `domain::event` (the envelope), `domain` and `app::Ctx`.

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;

use super::{Page, PageRequest, Result};
use crate::app::Ctx;
use crate::domain::event::EventEnvelope;
use crate::domain::event::{EventRouting, Subscription, Tenant};
use crate::domain::{Actor, DomainError, Role};
use crate::store::{audit, outbox, sessions};

use crate::store::outbox::OutboxEventRow;

/// Which outbox events an admin list shows (the use case's own type: store types stay below
/// `service`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxState {
    /// Given up after the last attempt.
    Dead,
    /// Waiting for (or backing off between) delivery attempts.
    Pending,
}

impl From<OutboxState> for outbox::State {
    fn from(state: OutboxState) -> Self {
        match state {
            OutboxState::Dead => Self::Dead,
            OutboxState::Pending => Self::Pending,
        }
    }
}

/// An outbox event as admins see it (store rows stay below `service`).
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    /// Monotonic id (also the WebSocket event id).
    pub id: i64,
    /// `order`, …
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: uuid::Uuid,
    /// The aggregate's version after the change.
    pub aggregate_version: i32,
    /// `order.created`, …
    pub event_type: String,
    /// Event body.
    pub payload: serde_json::Value,
    /// Routing: campus.
    pub campus_id: Option<uuid::Uuid>,
    /// Routing: vendor.
    pub vendor_id: Option<uuid::Uuid>,
    /// Routing: user.
    pub user_id: Option<uuid::Uuid>,
    /// Written (start of the writing transaction).
    pub created_at: DateTime<Utc>,
    /// When the last sink took it (None until then).
    pub published_at: Option<DateTime<Utc>>,
    /// Failed delivery attempts so far.
    pub attempts: i32,
    /// Not claimed before this time (backoff).
    pub next_attempt_at: DateTime<Utc>,
    /// Last failure, for admins.
    pub last_error: Option<String>,
    /// Given up after the last attempt; kept until an admin retries it.
    pub dead_at: Option<DateTime<Utc>>,
    /// Sinks that already took the event; a retry re-runs only the others.
    pub sinks_done: Vec<String>,
}

impl From<OutboxEventRow> for OutboxEvent {
    fn from(r: OutboxEventRow) -> Self {
        Self {
            id: r.id,
            aggregate_type: r.aggregate_type,
            aggregate_id: r.aggregate_id,
            aggregate_version: r.aggregate_version,
            event_type: r.event_type,
            payload: r.payload,
            campus_id: r.campus_id,
            vendor_id: r.vendor_id,
            user_id: r.user_id,
            created_at: r.created_at,
            published_at: r.published_at,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at,
            last_error: r.last_error,
            dead_at: r.dead_at,
            sinks_done: r.sinks_done,
        }
    }
}

/// How far below a resume cursor the replay looks for events that committed (or were
/// published) after a higher id: concurrent transactions take ids in one order and commit in
/// another, and several relays publish batches in parallel.
pub const LATE_LOOKBACK_IDS: i64 = 10_000;

/// The envelope of an outbox row, as published and as sent to clients.
pub fn envelope(row: &OutboxEventRow) -> EventEnvelope {
    EventEnvelope {
        id: row.id,
        event: row.event_type.clone(),
        aggregate_type: row.aggregate_type.clone(),
        aggregate_id: row.aggregate_id,
        version: row.aggregate_version,
        created_at: row.created_at,
        data: row.payload.clone(),
        routing: EventRouting {
            campus_id: row.campus_id.map(Into::into),
            vendor_id: row.vendor_id.map(Into::into),
            user_id: row.user_id.map(Into::into),
        },
    }
}

fn scope_of(actor: &Actor) -> Option<outbox::Scope> {
    Subscription::for_actor(actor).map(|s| {
        let user = s.user.into_inner();
        match s.tenant {
            Tenant::Own => outbox::Scope::User(user),
            Tenant::Vendor(v) => outbox::Scope::UserOrVendor(user, v.into_inner()),
            Tenant::Campus(c) => outbox::Scope::UserOrCampus(user, c.into_inner()),
            Tenant::All => outbox::Scope::All,
        }
    })
}

/// The highest event id the actor may see (0 when none): where a fresh client's stream
/// starts, sent in the WebSocket `hello`.
pub async fn latest_event_id(ctx: &Ctx, actor: &Actor) -> Result<i64> {
    let Some(scope) = scope_of(actor) else {
        return Ok(0);
    };
    let mut conn = ctx.db.conn().await?;
    Ok(outbox::max_id(&mut conn, scope).await?)
}

/// What a resume asks for.
#[derive(Debug, Clone, Copy)]
pub struct ReplayRequest {
    /// The client's cursor: the last event id it saw.
    pub after: i64,
    /// Also look below `after` for events published after it (the first page of a resume).
    pub include_late: bool,
    /// Page size.
    pub limit: i64,
}

/// One page of a replay.
#[derive(Debug, Clone)]
pub struct ReplayPage {
    /// Events the actor may see, oldest first: the late ones below the cursor, then the
    /// ones after it.
    pub events: Vec<EventEnvelope>,
    /// Cursor for the next page (the highest id above `after` in this page).
    pub next_after: i64,
    /// True when the page was full: ask again from `next_after`.
    pub more: bool,
    /// False when the cursor's own event is gone (pruned past the retention window): the
    /// client may have missed events that no longer exist and should reload its state.
    pub cursor_known: bool,
}

/// Replays, from the outbox table, the events the actor may see after `req.after`
/// (tenant-scoped like `domain::access`). Unpublished events are included: the live stream
/// may deliver them again, and consumers drop duplicates by id.
pub async fn replay_after(ctx: &Ctx, actor: &Actor, req: ReplayRequest) -> Result<ReplayPage> {
    let empty = ReplayPage {
        events: Vec::new(),
        next_after: req.after,
        more: false,
        cursor_known: true,
    };
    let Some(scope) = scope_of(actor) else {
        return Ok(empty);
    };
    // The primary, not the replica: an event the relay published before this connection
    // subscribed must be visible here, and a lagging replica may not have it yet.
    let mut conn = ctx.db.conn().await?;
    let mut events = Vec::new();
    let mut cursor_known = true;
    if req.include_late && req.after > 0 {
        match outbox::find(&mut conn, req.after).await? {
            Some(cursor) => {
                let late = outbox::list_late(
                    &mut conn,
                    scope,
                    req.after,
                    cursor.published_at,
                    LATE_LOOKBACK_IDS,
                    req.limit,
                )
                .await?;
                events.extend(late.iter().map(envelope));
            }
            None => cursor_known = false,
        }
    }
    let rows = outbox::list_after(&mut conn, scope, req.after, req.limit).await?;
    let more = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= req.limit;
    let next_after = rows.last().map_or(req.after, |r| r.id);
    events.extend(rows.iter().map(envelope));
    Ok(ReplayPage {
        events,
        next_after,
        more,
        cursor_known,
    })
}

/// True while the actor's session is live (not revoked, not expired): a WebSocket outlives
/// its access token, so the gateway re-checks periodically.
pub async fn session_is_live(ctx: &Ctx, actor: &Actor) -> Result<bool> {
    // The primary: a replica lagging behind a fresh login must not end a live socket.
    let mut conn = ctx.db.conn().await?;
    let live = sessions::find_live_with_user(&mut conn, actor.session_id.into_inner()).await?;
    Ok(live.is_some_and(|(_, user)| user.id == actor.user_id.into_inner()))
}

fn admin_campus(actor: &Actor) -> Result<Option<uuid::Uuid>> {
    match actor.role {
        Role::PlatformAdmin => Ok(None),
        Role::CampusAdmin => Ok(Some(
            actor
                .campus_id
                .ok_or_else(|| anyhow::anyhow!("campus admin without campus"))?
                .into_inner(),
        )),
        Role::Student | Role::VendorStaff => Err(DomainError::Forbidden {
            reason: "only administrators see the outbox".to_owned(),
        }
        .into()),
    }
}

/// Outbox events in `state` that the admin may see (campus admins: their campus), newest
/// first.
pub async fn list_outbox(
    ctx: &Ctx,
    actor: &Actor,
    state: OutboxState,
    page: PageRequest,
) -> Result<Page<OutboxEvent>> {
    let campus = admin_campus(actor)?;
    let mut conn = ctx.db.read_conn().await?;
    let (rows, total) =
        outbox::list_by_state(&mut conn, state.into(), campus, page.limit, page.offset).await?;
    let events = rows.into_iter().map(OutboxEvent::from).collect();
    Ok(Page::new(events, total, page))
}

/// Brings a dead event back for another round of delivery (attempts reset; sinks that
/// already took it are not run again). 404 outside the admin's campus, 409 when not dead.
pub async fn retry_dead_event(
    ctx: &Ctx,
    actor: &Actor,
    id: i64,
    request_id: Option<String>,
) -> Result<OutboxEvent> {
    let campus = admin_campus(actor)?;
    let mut conn = ctx.db.conn().await?;
    let row = conn
        .transaction(async |conn| -> Result<OutboxEventRow> {
            let row = outbox::lock(conn, id)
                .await?
                .filter(|r| campus.is_none() || r.campus_id == campus)
                .ok_or(DomainError::NotFound {
                    what: "outbox event",
                })?;
            if row.dead_at.is_none() {
                return Err(DomainError::Conflict {
                    reason: "the event is not dead".to_owned(),
                }
                .into());
            }
            let revived = outbox::revive(conn, id).await?;
            audit::insert(
                conn,
                &audit::NewAuditRow {
                    campus_id: row.campus_id,
                    actor_id: Some(actor.user_id.into_inner()),
                    action: "outbox.retried".to_owned(),
                    target_type: "outbox_event".to_owned(),
                    target_id: id.to_string(),
                    detail: serde_json::json!({
                        "event": row.event_type,
                        "attempts": row.attempts,
                        "lastError": row.last_error,
                    }),
                    request_id: request_id.clone(),
                },
            )
            .await?;
            Ok(revived)
        })
        .await?;
    ctx.relay_waker.wake();
    Ok(row.into())
}

/// Age of the oldest unpublished event, for `outbox_lag_seconds` (0 when none).
pub fn lag_seconds(oldest: Option<DateTime<Utc>>, now: DateTime<Utc>) -> f64 {
    oldest.map_or(0.0, |t| {
        let ms = (now - t).num_milliseconds().max(0);
        // Milliseconds of lag fit f64 exactly for any realistic age.
        #[expect(
            clippy::as_conversions,
            clippy::cast_precision_loss,
            reason = "a gauge value"
        )]
        let secs = ms as f64 / 1000.0;
        secs
    })
}
