//! `outbox_events`: events written in the same transaction as the change they describe, then
//! claimed and published by the relay (`outbox::relay`), replayed to reconnecting WebSocket
//! clients (`service::events`) and listed for admins.
//!
//! The relay's claim ([`claim_batch`]) is `FOR UPDATE SKIP LOCKED` and must run inside a
//! transaction that stays open until the batch is marked ([`mark_published`],
//! [`retry_later`], [`mark_dead`]): the row locks are what keeps a second relay off the same
//! events, and a relay that dies mid-batch releases them with its connection.

use chrono::{DateTime, Utc};
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Int4, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::outbox_events;
use crate::domain::event::NewEvent;

/// The `LISTEN`/`NOTIFY` channel that wakes relays (per database, so per test database too).
pub const RELAY_CHANNEL: &str = "itsur_outbox";

/// An outbox event row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = outbox_events)]
pub struct OutboxEventRow {
    /// Monotonic id (also the WebSocket event id).
    pub id: i64,
    /// `order`, …
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: Uuid,
    /// The aggregate's version after the change.
    pub aggregate_version: i32,
    /// `order.created`, …
    pub event_type: String,
    /// Event body.
    pub payload: serde_json::Value,
    /// Routing: campus.
    pub campus_id: Option<Uuid>,
    /// Routing: vendor.
    pub vendor_id: Option<Uuid>,
    /// Routing: user.
    pub user_id: Option<Uuid>,
    /// Written (start of the writing transaction).
    pub created_at: DateTime<Utc>,
    /// When the last sink took it (None until then).
    pub published_at: Option<DateTime<Utc>>,
    /// Failed delivery attempts so far (a sink that is merely unavailable does not count).
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

/// A new event.
#[derive(Debug, Clone, Insertable)]
// None binds NULL (these columns default to NULL anyway) rather than DEFAULT, which
// keeps the INSERT the same statement every time: diesel prepares it once per connection.
#[diesel(table_name = outbox_events, treat_none_as_default_value = false)]
pub struct NewOutboxEventRow {
    /// `order`, …
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: Uuid,
    /// The aggregate's version after the change.
    pub aggregate_version: i32,
    /// `order.created`, …
    pub event_type: String,
    /// Event body.
    pub payload: serde_json::Value,
    /// Routing: campus.
    pub campus_id: Option<Uuid>,
    /// Routing: vendor.
    pub vendor_id: Option<Uuid>,
    /// Routing: user.
    pub user_id: Option<Uuid>,
}

impl NewOutboxEventRow {
    /// The row of a typed event (`domain::event`): its name, aggregate kind and payload
    /// follow from the event.
    pub fn from_event(e: &NewEvent) -> serde_json::Result<Self> {
        let t = e.event.event_type();
        Ok(Self {
            aggregate_type: t.aggregate().as_str().to_owned(),
            aggregate_id: e.aggregate_id,
            aggregate_version: e.version,
            event_type: t.as_str().to_owned(),
            payload: e.event.payload()?,
            campus_id: e.routing.campus_id.map(|c| c.into_inner()),
            vendor_id: e.routing.vendor_id.map(|v| v.into_inner()),
            user_id: e.routing.user_id.map(|u| u.into_inner()),
        })
    }
}

/// Which events a reader may see, by routing key (`domain::event::Subscription` in store
/// terms): the reader's own user's events, plus a tenant's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `user_id` = this user.
    User(Uuid),
    /// `user_id` = this user, or `vendor_id` = this vendor.
    UserOrVendor(Uuid, Uuid),
    /// `user_id` = this user, or `campus_id` = this campus.
    UserOrCampus(Uuid, Uuid),
    /// Everything.
    All,
}

type Boxed<'a> = outbox_events::BoxedQuery<'a, diesel::pg::Pg>;

fn scoped<'a>(scope: Scope) -> Boxed<'a> {
    let q = outbox_events::table.into_boxed();
    match scope {
        Scope::User(u) => q.filter(outbox_events::user_id.eq(u)),
        Scope::UserOrVendor(u, v) => q.filter(
            outbox_events::user_id
                .eq(u)
                .or(outbox_events::vendor_id.eq(v)),
        ),
        Scope::UserOrCampus(u, c) => q.filter(
            outbox_events::user_id
                .eq(u)
                .or(outbox_events::campus_id.eq(c)),
        ),
        Scope::All => q,
    }
}

/// Writes an event in the caller's transaction. It fires no `NOTIFY`: that would take
/// Postgres's database-wide notify lock during the order's commit (see
/// docs/ARCHITECTURE.md, "Waking the relay"); the service wakes the relay after commit.
pub async fn insert_event(
    conn: &mut AsyncPgConnection,
    row: &NewOutboxEventRow,
) -> QueryResult<i64> {
    diesel::insert_into(outbox_events::table)
        .values(row)
        .returning(outbox_events::id)
        .get_result(conn)
        .await
}

/// Inserts many events in one statement over arrays, ids in the order of `rows` (a flow
/// advancement writes one per step change). Arrays, not a VALUES list: the statement has 8
/// parameters whatever the batch, so thousands of events neither hit Postgres's bind-parameter
/// limit nor cost a parse and bind per value (issue 13).
pub async fn insert_events(
    conn: &mut AsyncPgConnection,
    rows: &[NewOutboxEventRow],
) -> QueryResult<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    diesel::sql_query(
        "INSERT INTO outbox_events (aggregate_type, aggregate_id, aggregate_version, \
             event_type, payload, campus_id, vendor_id, user_id) \
         SELECT * FROM unnest($1::text[], $2::uuid[], $3::int4[], $4::text[], $5::jsonb[], \
             $6::uuid[], $7::uuid[], $8::uuid[])",
    )
    .bind::<Array<Text>, _>(
        rows.iter()
            .map(|r| r.aggregate_type.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<SqlUuid>, _>(rows.iter().map(|r| r.aggregate_id).collect::<Vec<_>>())
    .bind::<Array<Int4>, _>(rows.iter().map(|r| r.aggregate_version).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(
        rows.iter()
            .map(|r| r.event_type.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Jsonb>, _>(rows.iter().map(|r| &r.payload).collect::<Vec<_>>())
    .bind::<Array<Nullable<SqlUuid>>, _>(rows.iter().map(|r| r.campus_id).collect::<Vec<_>>())
    .bind::<Array<Nullable<SqlUuid>>, _>(rows.iter().map(|r| r.vendor_id).collect::<Vec<_>>())
    .bind::<Array<Nullable<SqlUuid>>, _>(rows.iter().map(|r| r.user_id).collect::<Vec<_>>())
    .execute(conn)
    .await
}

/// Sends the relay wake-up (`pg_notify`). Run it outside any business transaction.
pub async fn notify_relay(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    diesel::select(
        sql::<Text>("pg_notify(")
            .bind::<Text, _>(RELAY_CHANNEL)
            .sql(", '')::text"),
    )
    .execute(conn)
    .await
    .map(|_| ())
}

/// Events of one aggregate, oldest first.
pub async fn list_for_aggregate(
    conn: &mut AsyncPgConnection,
    aggregate_type: &str,
    aggregate_id: Uuid,
) -> QueryResult<Vec<OutboxEventRow>> {
    outbox_events::table
        .filter(outbox_events::aggregate_type.eq(aggregate_type))
        .filter(outbox_events::aggregate_id.eq(aggregate_id))
        .order(outbox_events::id.asc())
        .select(OutboxEventRow::as_select())
        .load(conn)
        .await
}

/// One event by id.
pub async fn find(conn: &mut AsyncPgConnection, id: i64) -> QueryResult<Option<OutboxEventRow>> {
    outbox_events::table
        .find(id)
        .select(OutboxEventRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Claims up to `limit` due, unpublished, live events (`FOR UPDATE SKIP LOCKED`), in the
/// order of the pending index `(next_attempt_at, id)`. The caller's transaction must stay
/// open until the rows are marked: committing earlier would hand them to another relay.
pub async fn claim_batch(
    conn: &mut AsyncPgConnection,
    limit: i64,
) -> QueryResult<Vec<OutboxEventRow>> {
    outbox_events::table
        .filter(outbox_events::published_at.is_null())
        .filter(outbox_events::dead_at.is_null())
        .filter(outbox_events::next_attempt_at.le(diesel::dsl::now))
        .order((
            outbox_events::next_attempt_at.asc(),
            outbox_events::id.asc(),
        ))
        .limit(limit)
        .select(OutboxEventRow::as_select())
        .for_update()
        .skip_locked()
        .load(conn)
        .await
}

/// Bounds how long the caller's claim transaction may sit idle between statements: a relay
/// that vanishes without closing its socket (host crash, partition) then loses its row
/// locks after `limit` instead of after the OS's TCP keepalive (hours).
pub async fn limit_claim_idle(
    conn: &mut AsyncPgConnection,
    limit: std::time::Duration,
) -> QueryResult<()> {
    diesel::sql_query(format!(
        "SET LOCAL idle_in_transaction_session_timeout = {}",
        limit.as_millis()
    ))
    .execute(conn)
    .await
    .map(|_| ())
}

/// Marks claimed events published by every sink in `sinks`. `published_at` is the wall
/// clock of this statement (not the transaction start), so it orders publications across
/// relays closely enough for the resume look-back of `list_late`.
pub async fn mark_published(
    conn: &mut AsyncPgConnection,
    ids: &[i64],
    sinks: &[String],
) -> QueryResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    diesel::update(outbox_events::table.filter(outbox_events::id.eq_any(ids)))
        .set((
            outbox_events::published_at.eq(sql::<Nullable<Timestamptz>>("clock_timestamp()")),
            outbox_events::sinks_done.eq(sinks),
        ))
        .execute(conn)
        .await
}

/// Leaves a claimed event pending until `next_attempt_at`, recording the sinks that took it
/// and the failure. `attempts` is the new count (unchanged when the sink was merely
/// unavailable).
pub async fn retry_later(
    conn: &mut AsyncPgConnection,
    id: i64,
    sinks_done: &[String],
    attempts: i32,
    next_attempt_at: DateTime<Utc>,
    error: &str,
) -> QueryResult<usize> {
    diesel::update(outbox_events::table.find(id))
        .set((
            outbox_events::sinks_done.eq(sinks_done),
            outbox_events::attempts.eq(attempts),
            outbox_events::next_attempt_at.eq(next_attempt_at),
            outbox_events::last_error.eq(error),
        ))
        .execute(conn)
        .await
}

/// Gives up on a claimed event after its last attempt: it stays (dead) for an admin.
pub async fn mark_dead(
    conn: &mut AsyncPgConnection,
    id: i64,
    sinks_done: &[String],
    attempts: i32,
    error: &str,
) -> QueryResult<usize> {
    diesel::update(outbox_events::table.find(id))
        .set((
            outbox_events::sinks_done.eq(sinks_done),
            outbox_events::attempts.eq(attempts),
            outbox_events::last_error.eq(error),
            outbox_events::dead_at.eq(sql::<Nullable<Timestamptz>>("clock_timestamp()")),
        ))
        .execute(conn)
        .await
}

/// Locks one event (`FOR UPDATE`) for an admin action.
pub async fn lock(conn: &mut AsyncPgConnection, id: i64) -> QueryResult<Option<OutboxEventRow>> {
    outbox_events::table
        .find(id)
        .select(OutboxEventRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Brings a dead event back: pending, due now, with a fresh attempt budget. The sinks that
/// already took it are not run again.
pub async fn revive(conn: &mut AsyncPgConnection, id: i64) -> QueryResult<OutboxEventRow> {
    diesel::update(outbox_events::table.find(id))
        .set((
            outbox_events::dead_at.eq(None::<DateTime<Utc>>),
            outbox_events::attempts.eq(0),
            outbox_events::next_attempt_at.eq(diesel::dsl::now),
        ))
        .returning(OutboxEventRow::as_returning())
        .get_result(conn)
        .await
}

/// Events in `scope` with `id > after`, oldest first (WebSocket resume).
pub async fn list_after(
    conn: &mut AsyncPgConnection,
    scope: Scope,
    after: i64,
    limit: i64,
) -> QueryResult<Vec<OutboxEventRow>> {
    scoped(scope)
        .filter(outbox_events::id.gt(after))
        .order(outbox_events::id.asc())
        .limit(limit)
        .select(OutboxEventRow::as_select())
        .load(conn)
        .await
}

/// Events in `scope` with an id in `(before - lookback, before)` that were published after
/// `published_after` or are not published yet: the events a client holding cursor `before`
/// may have missed because they committed (or were published) after a higher id. With
/// `published_after = None` only the unpublished ones qualify.
pub async fn list_late(
    conn: &mut AsyncPgConnection,
    scope: Scope,
    before: i64,
    published_after: Option<DateTime<Utc>>,
    lookback: i64,
    limit: i64,
) -> QueryResult<Vec<OutboxEventRow>> {
    scoped(scope)
        .filter(outbox_events::id.lt(before))
        .filter(outbox_events::id.gt(before.saturating_sub(lookback)))
        .filter(
            outbox_events::published_at
                .is_null()
                .or(outbox_events::published_at.gt(published_after)),
        )
        .order(outbox_events::id.asc())
        .limit(limit)
        .select(OutboxEventRow::as_select())
        .load(conn)
        .await
}

/// The highest event id in `scope` (0 when there is none): where a fresh client's stream
/// starts.
pub async fn max_id(conn: &mut AsyncPgConnection, scope: Scope) -> QueryResult<i64> {
    scoped(scope)
        .select(diesel::dsl::max(outbox_events::id))
        .first::<Option<i64>>(conn)
        .await
        .map(|m| m.unwrap_or(0))
}

/// Which events an admin list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Given up after the last attempt.
    Dead,
    /// Waiting for (or backing off between) delivery attempts.
    Pending,
}

/// Events in `state` (optionally of one campus), newest first, with the total count.
pub async fn list_by_state(
    conn: &mut AsyncPgConnection,
    state: State,
    campus_id: Option<Uuid>,
    limit: i64,
    offset: i64,
) -> QueryResult<(Vec<OutboxEventRow>, i64)> {
    let filtered = || {
        let q = match campus_id {
            Some(c) => outbox_events::table
                .into_boxed()
                .filter(outbox_events::campus_id.eq(c)),
            None => outbox_events::table.into_boxed(),
        };
        match state {
            State::Dead => q.filter(outbox_events::dead_at.is_not_null()),
            State::Pending => q
                .filter(outbox_events::published_at.is_null())
                .filter(outbox_events::dead_at.is_null()),
        }
    };
    let total = filtered().count().get_result(conn).await?;
    let rows = filtered()
        .order(outbox_events::id.desc())
        .limit(limit)
        .offset(offset)
        .select(OutboxEventRow::as_select())
        .load(conn)
        .await?;
    Ok((rows, total))
}

/// Unpublished live events: how many, and when the oldest was written.
#[derive(Debug, Clone, Copy, QueryableByName)]
pub struct PendingStats {
    /// Unpublished, not dead.
    #[diesel(sql_type = BigInt)]
    pub pending: i64,
    /// Dead (kept for an admin).
    #[diesel(sql_type = BigInt)]
    pub dead: i64,
    /// `created_at` of the oldest unpublished live event.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub oldest: Option<DateTime<Utc>>,
}

/// Counts for the `outbox_pending` / `outbox_lag_seconds` / `outbox_dead` gauges; each
/// part is answered by a partial index.
pub async fn pending_stats(conn: &mut AsyncPgConnection) -> QueryResult<PendingStats> {
    diesel::sql_query(
        "SELECT \
           (SELECT count(*) FROM outbox_events WHERE published_at IS NULL AND dead_at IS NULL) AS pending, \
           (SELECT count(*) FROM outbox_events WHERE dead_at IS NOT NULL) AS dead, \
           (SELECT min(created_at) FROM outbox_events WHERE published_at IS NULL AND dead_at IS NULL) AS oldest",
    )
    .get_result(conn)
    .await
}

/// Deletes up to `batch` events published before `before` (the resume window has passed).
pub async fn delete_published_before(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    batch: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM outbox_events WHERE id IN (SELECT id FROM outbox_events \
         WHERE published_at < $1 LIMIT $2)",
    )
    .bind::<Timestamptz, _>(before)
    .bind::<BigInt, _>(batch)
    .execute(conn)
    .await
}
