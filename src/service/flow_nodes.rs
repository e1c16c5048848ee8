//! The business side of the flow nodes of ITSUR Eats' own flows (`campus.end_of_day`,
//! `order.unaccepted`) and the e-mail node: closing a campus's vendors, summing the day's
//! reports, cancelling orders nobody accepted, and sending e-mail over SMTP. The job
//! handlers in `jobs::handlers` only deserialise and call these.

use chrono::{Duration, NaiveTime, TimeZone, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::nodes::{
    CancelUnacceptedInput, CancelUnacceptedOutput, CancelledOrder, CloseVendorsInput,
    CloseVendorsOutput, DailySummaryInput, DailySummaryOutput, SendEmailInput, SendEmailOutput,
};
use super::reports::{Format, SalesReportSpec};
use super::{Error, Result};
use crate::app::Ctx;
use crate::domain::event::{Event, EventRouting, NewEvent, VendorClosed};
use crate::domain::{Actor, DomainError, OrderStatus, Role};
use crate::store::outbox::NewOutboxEventRow;
use crate::store::schema::{orders, users, vendors};

/// Closes every open vendor of the campus (an event to each vendor's board) and lists one
/// sales report per vendor for the campus's local day.
pub async fn close_vendors(ctx: &Ctx, input: &CloseVendorsInput) -> Result<CloseVendorsOutput> {
    let mut conn = ctx.db.conn().await?;
    let campus = crate::store::campuses::find(&mut conn, input.campus_id)
        .await?
        .ok_or(DomainError::NotFound { what: "campus" })?;
    let zone: chrono_tz::Tz = campus.time_zone.parse().unwrap_or(chrono_tz::UTC);
    let now_local = Utc::now().with_timezone(&zone);
    let day = now_local.date_naive();
    let start = zone
        .from_local_datetime(&day.and_time(NaiveTime::MIN))
        .earliest()
        .map_or_else(
            || Utc::now() - Duration::hours(24),
            |t| t.with_timezone(&Utc),
        );
    let end = start + Duration::hours(24);
    let campus_id = input.campus_id;
    let (closed, all): (Vec<Uuid>, Vec<Uuid>) = conn
        .transaction(async |conn| -> Result<(Vec<Uuid>, Vec<Uuid>)> {
            let closed: Vec<Uuid> = diesel::update(
                vendors::table
                    .filter(vendors::campus_id.eq(campus_id))
                    .filter(vendors::is_open.eq(true)),
            )
            .set(vendors::is_open.eq(false))
            .returning(vendors::id)
            .get_results(conn)
            .await?;
            let events = closed
                .iter()
                .map(|v| {
                    NewOutboxEventRow::from_event(&NewEvent {
                        event: Event::VendorClosed(VendorClosed {
                            vendor_id: *v,
                            campus_id,
                            is_open: false,
                            reason: "end of day".to_owned(),
                        }),
                        aggregate_id: *v,
                        version: 0,
                        routing: EventRouting {
                            campus_id: Some(campus_id.into()),
                            vendor_id: Some((*v).into()),
                            user_id: None,
                        },
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::from)?;
            crate::store::outbox::insert_events(conn, &events).await?;
            let all: Vec<Uuid> = vendors::table
                .filter(vendors::campus_id.eq(campus_id))
                .order(vendors::name.asc())
                .select(vendors::id)
                .load(conn)
                .await?;
            Ok((closed, all))
        })
        .await?;
    if !closed.is_empty() {
        ctx.relay_waker.wake();
    }
    Ok(CloseVendorsOutput {
        closed,
        reports: all
            .into_iter()
            .map(|vendor_id| SalesReportSpec {
                vendor_id,
                from: start,
                to: end,
                format: Format::Json,
            })
            .collect(),
        day: day.to_string(),
    })
}

/// Sums per-vendor report summaries (the `sales_report` summary shape) into one.
pub fn daily_summary(input: &DailySummaryInput) -> DailySummaryOutput {
    let mut orders = 0_i64;
    let mut revenue = 0_i64;
    let mut lines = Vec::new();
    for r in &input.reports {
        let q = r["quantity"].as_i64().unwrap_or(0);
        let cents = r["revenueCents"].as_i64().unwrap_or(0);
        orders += q;
        revenue += cents;
        lines.push(format!(
            "- vendor {}: {q} items, {}.{:02}",
            r["vendorId"].as_str().unwrap_or("?"),
            cents / 100,
            cents % 100
        ));
    }
    let day = input.day.clone().unwrap_or_else(|| "today".to_owned());
    DailySummaryOutput {
        orders,
        revenue_cents: revenue,
        vendors: input.reports.len(),
        subject: format!("ITSUR Eats: end of day {day}"),
        text: format!(
            "End of day {day}\n\nVendors closed and reported: {}\nItems sold: {orders}\nRevenue: {}.{:02}\n\n{}\n",
            input.reports.len(),
            revenue / 100,
            revenue % 100,
            lines.join("\n")
        ),
    }
}

/// The actor the `order.unaccepted` flow cancels as: a platform admin without a session.
fn system_actor() -> Actor {
    Actor {
        user_id: Uuid::nil().into(),
        session_id: Uuid::nil().into(),
        role: Role::PlatformAdmin,
        campus_id: None,
        vendor_id: None,
    }
}

/// Cancels the campus's orders still `placed` `older_than_secs` after creation (at most 500
/// per run), each through the order service (stock restored, event to student and vendor).
pub async fn cancel_unaccepted(
    ctx: &Ctx,
    input: &CancelUnacceptedInput,
) -> Result<CancelUnacceptedOutput> {
    let cutoff = Utc::now() - Duration::seconds(input.older_than_secs.max(0));
    let stale: Vec<(Uuid, Uuid)> = {
        let mut conn = ctx.db.conn().await?;
        orders::table
            .filter(orders::campus_id.eq(input.campus_id))
            .filter(orders::status.eq("placed"))
            .filter(orders::created_at.lt(cutoff))
            .order(orders::created_at.asc())
            .limit(500)
            .select((orders::id, orders::user_id))
            .load(&mut conn)
            .await?
    };
    let actor = system_actor();
    let mut out = Vec::new();
    for (order_id, user_id) in stale {
        match super::orders::transition_order(
            ctx,
            &actor,
            order_id,
            OrderStatus::Cancelled,
            None,
            None,
        )
        .await
        {
            Ok(_) => out.push(CancelledOrder {
                order_id,
                user_id,
                message: "Your order was not accepted in time and has been cancelled; nothing was charged.".to_owned(),
            }),
            // Accepted (or cancelled) meanwhile: not ours to cancel any more.
            Err(Error::Domain(DomainError::Conflict { .. }) | Error::PreconditionFailed(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(CancelUnacceptedOutput { orders: out })
}

/// How sending an e-mail failed.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    /// Will not work by retrying (no server configured, bad address, 5xx).
    #[error("{0}")]
    Permanent(String),
    /// Try again (connection, timeout, 4xx).
    #[error("{0}")]
    Transient(String),
}

impl From<Error> for EmailError {
    fn from(e: Error) -> Self {
        match e {
            Error::Domain(d) => Self::Permanent(d.to_string()),
            other => Self::Transient(other.to_string()),
        }
    }
}

/// Sends one plain-text e-mail to every recipient (one message each, so addresses are not
/// disclosed to each other). The Message-ID is derived from `key` (job id and recipient),
/// so a retried job resends with the same ids and receiving servers can drop duplicates.
/// Errors never contain an address.
pub async fn send_email(
    ctx: &Ctx,
    input: &SendEmailInput,
    key: Uuid,
) -> std::result::Result<SendEmailOutput, EmailError> {
    use lettre::message::{Mailbox, header::ContentType};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let smtp = &ctx.config.smtp;
    let Some(url) = &smtp.url else {
        return Err(EmailError::Permanent("SMTP_URL is not set".to_owned()));
    };
    let from: Mailbox = smtp
        .from
        .parse()
        .map_err(|_| EmailError::Permanent("SMTP_FROM is not an address".to_owned()))?;
    let addresses: Vec<(Uuid, String)> = {
        let mut conn = ctx.db.conn().await.map_err(Error::from)?;
        let mut q = users::table.into_boxed();
        let ids = input.to.user_ids.clone();
        q = match input.to.campus_admins_of {
            Some(c) => q.filter(
                users::id
                    .eq_any(ids)
                    .or(users::campus_id.eq(c).and(users::role.eq("campus_admin"))),
            ),
            None => q.filter(users::id.eq_any(ids)),
        };
        q.order(users::id.asc())
            .select((users::id, users::email))
            .load(&mut conn)
            .await
            .map_err(Error::from)?
    };
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose())
        .map_err(|_| EmailError::Permanent("SMTP_URL cannot be used".to_owned()))?
        .timeout(Some(smtp.timeout))
        .build();
    let message_id = format!("<{key}@itsur>");
    let mut sent = 0;
    for (user, address) in &addresses {
        let Ok(to) = address.parse::<Mailbox>() else {
            tracing::warn!(user.id = %user, "user has an address that is not valid: skipped");
            continue;
        };
        let msg = Message::builder()
            .from(from.clone())
            .to(to)
            .subject(input.subject.clone())
            .message_id(Some(format!("<{key}.{user}@itsur>")))
            .header(ContentType::TEXT_PLAIN)
            .body(input.text.clone())
            .map_err(|e| EmailError::Permanent(format!("message cannot be built: {e}")))?;
        match transport.send(msg).await {
            Ok(_) => sent += 1,
            Err(e) => {
                let code = e.status().map(|c| c.to_string()).unwrap_or_default();
                let why = if code.is_empty() {
                    "the SMTP server could not be reached or the conversation failed".to_owned()
                } else {
                    format!("the SMTP server answered {code}")
                };
                return Err(if e.is_permanent() {
                    EmailError::Permanent(format!("{why} ({sent} sent before)"))
                } else {
                    EmailError::Transient(format!("{why} ({sent} sent before)"))
                });
            }
        }
    }
    Ok(SendEmailOutput { sent, message_id })
}
