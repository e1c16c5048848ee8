//! Outbox events, owned by the domain: every event type with its typed payload ([`Event`]),
//! the routing keys every event carries, the envelope it travels in ([`EventEnvelope`]:
//! outbox id, aggregate version, tenancy) and who receives which event ([`Subscription`]) —
//! the same rule for live WebSocket delivery and for replay from the outbox table.
//!
//! Producers build an [`Event`] (never `json!`), the store writes it with
//! `store::outbox::NewOutboxEventRow::from_event`, and consumers (the push sink, the
//! gateway's topics) read it back with [`EventEnvelope::typed`]. One exception: the job
//! engine builds `job.status_changed` inside its SQL (`store::jobs`, `jsonb_build_object`);
//! its shape is [`JobUpdate`], and a test reads such a row back into it.
//!
//! Adding an event type: a variant of [`EventType`] and of [`Event`] (with its payload
//! struct) here; the producer builds it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ids::{CampusId, UserId, VendorId};
use super::order::OrderStatus;
use super::user::{Actor, Role};

/// Kinds of outbox events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// A student placed an order.
    OrderCreated,
    /// An order moved to another state.
    OrderStatusChanged,
    /// A running job reported progress.
    JobProgress,
    /// A job ended (completed, failed, cancelled) or went back to the queue for a retry.
    JobStatusChanged,
    /// A step of a flow run changed state.
    FlowStepStatusChanged,
    /// A flow run changed state.
    FlowRunStatusChanged,
    /// A vendor was closed for orders (the flows' end-of-day node).
    VendorClosed,
}

impl EventType {
    /// Every event type.
    pub const ALL: [Self; 7] = [
        Self::OrderCreated,
        Self::OrderStatusChanged,
        Self::JobProgress,
        Self::JobStatusChanged,
        Self::FlowStepStatusChanged,
        Self::FlowRunStatusChanged,
        Self::VendorClosed,
    ];

    /// The stored and published name (dotted lowercase).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderCreated => "order.created",
            Self::OrderStatusChanged => "order.status_changed",
            Self::JobProgress => "job.progress",
            Self::JobStatusChanged => "job.status_changed",
            Self::FlowStepStatusChanged => "flow_step.status_changed",
            Self::FlowRunStatusChanged => "flow_run.status_changed",
            Self::VendorClosed => "vendor.closed",
        }
    }

    /// The type named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The kind of aggregate events of this type are about.
    pub fn aggregate(self) -> AggregateType {
        match self {
            Self::OrderCreated | Self::OrderStatusChanged => AggregateType::Order,
            Self::JobProgress | Self::JobStatusChanged => AggregateType::Job,
            // Step events are versioned by their run's event counter, so clients order a
            // run's step and run events together.
            Self::FlowStepStatusChanged | Self::FlowRunStatusChanged => AggregateType::FlowRun,
            Self::VendorClosed => AggregateType::Vendor,
        }
    }
}

/// What an event is about (`aggregate_type` of `outbox_events`, `aggregate.kind` on the
/// WebSocket, the `flow-run:<id>` topic).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AggregateType {
    /// An order.
    Order,
    /// A job.
    Job,
    /// A flow run.
    FlowRun,
    /// A vendor.
    Vendor,
}

impl AggregateType {
    /// The stored and published name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Job => "job",
            Self::FlowRun => "flow_run",
            Self::Vendor => "vendor",
        }
    }
}

/// A line of an order, as `order.created` carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderLine {
    /// Menu item.
    pub menu_item_id: Uuid,
    /// Name at the time of ordering.
    pub name: String,
    /// Unit price at the time of ordering, in cents.
    pub unit_price_cents: i64,
    /// Quantity.
    pub quantity: i32,
}

/// Payload of `order.created`: the whole order as placed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    /// Order id.
    pub id: Uuid,
    /// Campus.
    pub campus_id: Uuid,
    /// Vendor.
    pub vendor_id: Uuid,
    /// Student who ordered.
    pub user_id: Uuid,
    /// State (`placed`).
    pub status: String,
    /// Sum of the lines, in cents.
    pub total_cents: i64,
    /// Note for the vendor.
    pub note: Option<String>,
    /// Version (1).
    pub version: i32,
    /// Lines.
    pub items: Vec<OrderLine>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Payload of `order.status_changed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderStatusChanged {
    /// Order id.
    pub order_id: Uuid,
    /// Vendor.
    pub vendor_id: Uuid,
    /// Campus.
    pub campus_id: Uuid,
    /// Student who ordered.
    pub user_id: Uuid,
    /// State before.
    pub from: OrderStatus,
    /// State now.
    pub to: OrderStatus,
    /// The order's version after the change.
    pub version: i32,
}

/// Payload of `job.progress` and `job.status_changed`. `job.status_changed` is built in SQL
/// by the job engine (`store::jobs`) with exactly these keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobUpdate {
    /// Job id.
    pub job_id: Uuid,
    /// Job kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// `progress`, or the public state after the change (`completed`, `failed`,
    /// `cancelled`, `queued` for a retry).
    pub status: String,
    /// Percentage, 0–100 (100 at the end).
    pub progress: i32,
    /// The handler's progress message, or the error of a failed attempt.
    pub message: Option<String>,
    /// The attempt (from 1).
    pub attempt: i32,
}

/// Payload of `flow_step.status_changed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowStepStatusChanged {
    /// The run.
    pub run_id: Uuid,
    /// The flow.
    pub flow_id: Uuid,
    /// The step's id in the definition.
    pub step: String,
    /// Its new state.
    pub status: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Fan-out instances (None for a plain step).
    pub items: Option<i32>,
}

/// Payload of `flow_run.status_changed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowRunStatusChanged {
    /// The run.
    pub run_id: Uuid,
    /// The flow.
    pub flow_id: Uuid,
    /// The flow's name.
    pub flow: String,
    /// The flow version the run follows.
    pub version: i32,
    /// The run's new state.
    pub status: String,
    /// Steps not finished yet (absent when a cancel ended the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_remaining: Option<i32>,
    /// Steps that failed (absent when a cancel ended the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_failed: Option<i32>,
}

/// Payload of `vendor.closed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VendorClosed {
    /// The vendor.
    pub vendor_id: Uuid,
    /// Its campus.
    pub campus_id: Uuid,
    /// Always false.
    pub is_open: bool,
    /// Why (`end of day`).
    pub reason: String,
}

/// An event with its typed payload.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// `order.created`.
    OrderCreated(OrderCreated),
    /// `order.status_changed`.
    OrderStatusChanged(OrderStatusChanged),
    /// `job.progress`.
    JobProgress(JobUpdate),
    /// `job.status_changed`.
    JobStatusChanged(JobUpdate),
    /// `flow_step.status_changed`.
    FlowStepStatusChanged(FlowStepStatusChanged),
    /// `flow_run.status_changed`.
    FlowRunStatusChanged(FlowRunStatusChanged),
    /// `vendor.closed`.
    VendorClosed(VendorClosed),
}

impl Event {
    /// Its type.
    pub fn event_type(&self) -> EventType {
        match self {
            Self::OrderCreated(_) => EventType::OrderCreated,
            Self::OrderStatusChanged(_) => EventType::OrderStatusChanged,
            Self::JobProgress(_) => EventType::JobProgress,
            Self::JobStatusChanged(_) => EventType::JobStatusChanged,
            Self::FlowStepStatusChanged(_) => EventType::FlowStepStatusChanged,
            Self::FlowRunStatusChanged(_) => EventType::FlowRunStatusChanged,
            Self::VendorClosed(_) => EventType::VendorClosed,
        }
    }

    /// The payload as stored in `outbox_events.payload` and sent as the frame's `data`.
    pub fn payload(&self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            Self::OrderCreated(p) => serde_json::to_value(p),
            Self::OrderStatusChanged(p) => serde_json::to_value(p),
            Self::JobProgress(p) | Self::JobStatusChanged(p) => serde_json::to_value(p),
            Self::FlowStepStatusChanged(p) => serde_json::to_value(p),
            Self::FlowRunStatusChanged(p) => serde_json::to_value(p),
            Self::VendorClosed(p) => serde_json::to_value(p),
        }
    }

    /// Reads a stored payload of type `event_type` back into its struct.
    pub fn from_payload(
        event_type: EventType,
        data: &serde_json::Value,
    ) -> Result<Self, serde_json::Error> {
        Ok(match event_type {
            EventType::OrderCreated => Self::OrderCreated(OrderCreated::deserialize(data)?),
            EventType::OrderStatusChanged => {
                Self::OrderStatusChanged(OrderStatusChanged::deserialize(data)?)
            }
            EventType::JobProgress => Self::JobProgress(JobUpdate::deserialize(data)?),
            EventType::JobStatusChanged => Self::JobStatusChanged(JobUpdate::deserialize(data)?),
            EventType::FlowStepStatusChanged => {
                Self::FlowStepStatusChanged(FlowStepStatusChanged::deserialize(data)?)
            }
            EventType::FlowRunStatusChanged => {
                Self::FlowRunStatusChanged(FlowRunStatusChanged::deserialize(data)?)
            }
            EventType::VendorClosed => Self::VendorClosed(VendorClosed::deserialize(data)?),
        })
    }
}

/// An event to write to the outbox in the caller's transaction: the typed event, the
/// aggregate it is about and who may receive it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// The event.
    pub event: Event,
    /// The aggregate's id (its kind follows from the event type).
    pub aggregate_id: Uuid,
    /// The aggregate's version after the change: consumers drop stale updates with it.
    pub version: i32,
    /// Who may receive it.
    pub routing: EventRouting,
}

/// Why an envelope's payload could not be read as its typed event.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The event name is not one of [`EventType`] (a newer producer).
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// The payload does not have the type's shape.
    #[error("malformed {event} payload: {source}")]
    Malformed {
        /// The event name.
        event: &'static str,
        /// What serde said.
        source: serde_json::Error,
    },
}

/// An outbox event on its way to consumers: the JSON published on the Redis events channel
/// and by the brokers, what the hub hands to subscribers and what replays return.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventEnvelope {
    /// The outbox id: the client's resume cursor and dedup key.
    pub id: i64,
    /// Event name, e.g. `order.status_changed` (an [`EventType`]; kept as text so an event
    /// of a newer producer is still forwarded).
    pub event: String,
    /// Aggregate kind, e.g. `order`.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: Uuid,
    /// The aggregate's version after the change: consumers drop stale updates with it.
    pub version: i32,
    /// When the change was written.
    pub created_at: DateTime<Utc>,
    /// The event body (the typed payload, as JSON: forwarded to clients unchanged).
    pub data: serde_json::Value,
    /// Who may receive it.
    pub routing: EventRouting,
}

impl EventEnvelope {
    /// The event with its typed payload.
    pub fn typed(&self) -> Result<Event, PayloadError> {
        let t = EventType::parse(&self.event)
            .ok_or_else(|| PayloadError::UnknownType(self.event.clone()))?;
        Event::from_payload(t, &self.data).map_err(|source| PayloadError::Malformed {
            event: t.as_str(),
            source,
        })
    }
}

/// The tenant keys an event is routed by (columns `campus_id`, `vendor_id`, `user_id` of
/// `outbox_events`). A missing key means the event is not about such a tenant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRouting {
    /// Campus the event belongs to.
    pub campus_id: Option<CampusId>,
    /// Vendor the event belongs to.
    pub vendor_id: Option<VendorId>,
    /// User (student) the event belongs to.
    pub user_id: Option<UserId>,
}

/// The tenant part of a [`Subscription`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tenant {
    /// Nothing beyond the actor's own events (students).
    Own,
    /// Events whose `vendor_id` is this vendor (vendor staff).
    Vendor(VendorId),
    /// Events whose `campus_id` is this campus (campus admins).
    Campus(CampusId),
    /// Every event (platform admins).
    All,
}

/// Which events an actor receives: the live form of `domain::access`. Everyone gets the
/// events addressed to their own user (their orders, their jobs); vendor staff also get
/// their vendor's, a campus admin their campus's, a platform admin everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subscription {
    /// The actor's own user.
    pub user: UserId,
    /// What the actor's role adds.
    pub tenant: Tenant,
}

impl Subscription {
    /// The subscription of an actor; None when the actor's row lacks its tenant (a vendor
    /// staff member without a vendor), which then receives nothing.
    pub fn for_actor(actor: &Actor) -> Option<Self> {
        let tenant = match actor.role {
            Role::Student => Tenant::Own,
            Role::VendorStaff => Tenant::Vendor(actor.vendor_id?),
            Role::CampusAdmin => Tenant::Campus(actor.campus_id?),
            Role::PlatformAdmin => Tenant::All,
        };
        Some(Self {
            user: actor.user_id,
            tenant,
        })
    }

    /// True when an event with these routing keys reaches this subscription.
    pub fn matches(&self, routing: &EventRouting) -> bool {
        routing.user_id == Some(self.user)
            || match self.tenant {
                Tenant::Own => false,
                Tenant::Vendor(v) => routing.vendor_id == Some(v),
                Tenant::Campus(c) => routing.campus_id == Some(c),
                Tenant::All => true,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::SessionId;

    fn actor(role: Role, campus: Option<CampusId>, vendor: Option<VendorId>) -> Actor {
        Actor {
            user_id: UserId::new(),
            session_id: SessionId::new(),
            role,
            campus_id: campus,
            vendor_id: vendor,
        }
    }

    #[test]
    fn every_event_type_has_one_name_and_aggregate() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            let (aggregate, _) = t.as_str().split_once('.').unwrap();
            let expected = match aggregate {
                "flow_step" => "flow_run",
                a => a,
            };
            assert_eq!(t.aggregate().as_str(), expected, "{t:?}");
        }
        assert_eq!(EventType::parse("order.eaten"), None);
    }

    #[test]
    fn typed_payloads_round_trip_through_their_stored_json() {
        let id = Uuid::nil();
        let events = [
            Event::OrderStatusChanged(OrderStatusChanged {
                order_id: id,
                vendor_id: id,
                campus_id: id,
                user_id: id,
                from: OrderStatus::Preparing,
                to: OrderStatus::Ready,
                version: 4,
            }),
            Event::JobProgress(JobUpdate {
                job_id: id,
                kind: "noop".to_owned(),
                status: "progress".to_owned(),
                progress: 50,
                message: None,
                attempt: 1,
            }),
            Event::FlowRunStatusChanged(FlowRunStatusChanged {
                run_id: id,
                flow_id: id,
                flow: "f".to_owned(),
                version: 1,
                status: "cancelled".to_owned(),
                steps_remaining: None,
                steps_failed: None,
            }),
        ];
        for e in events {
            let json = e.payload().unwrap();
            assert_eq!(Event::from_payload(e.event_type(), &json).unwrap(), e);
        }
        // The wire names stay what clients read.
        let changed = Event::OrderStatusChanged(OrderStatusChanged {
            order_id: id,
            vendor_id: id,
            campus_id: id,
            user_id: id,
            from: OrderStatus::Preparing,
            to: OrderStatus::PickedUp,
            version: 4,
        });
        let json = changed.payload().unwrap();
        assert_eq!(json["to"], "picked_up");
        assert_eq!(json["orderId"], id.to_string());
        let envelope = EventEnvelope {
            id: 1,
            event: "order.status_changed".to_owned(),
            aggregate_type: "order".to_owned(),
            aggregate_id: id,
            version: 4,
            created_at: Utc::now(),
            data: json,
            routing: EventRouting::default(),
        };
        assert_eq!(envelope.typed().unwrap(), changed);
        let unknown = EventEnvelope {
            event: "order.eaten".to_owned(),
            ..envelope.clone()
        };
        assert!(matches!(unknown.typed(), Err(PayloadError::UnknownType(_))));
        let malformed = EventEnvelope {
            data: serde_json::json!({ "to": "ready" }),
            ..envelope
        };
        assert!(matches!(
            malformed.typed(),
            Err(PayloadError::Malformed { .. })
        ));
    }

    #[test]
    fn subscriptions_follow_tenancy() {
        let (campus, vendor) = (CampusId::new(), VendorId::new());
        let student = actor(Role::Student, Some(campus), None);
        let event = EventRouting {
            campus_id: Some(campus),
            vendor_id: Some(vendor),
            user_id: Some(student.user_id),
        };
        let sees = |a: &Actor| Subscription::for_actor(a).is_some_and(|s| s.matches(&event));
        assert!(sees(&student));
        assert!(!sees(&actor(Role::Student, Some(campus), None)));
        assert!(sees(&actor(Role::VendorStaff, Some(campus), Some(vendor))));
        assert!(!sees(&actor(
            Role::VendorStaff,
            Some(campus),
            Some(VendorId::new())
        )));
        assert!(sees(&actor(Role::CampusAdmin, Some(campus), None)));
        assert!(!sees(&actor(
            Role::CampusAdmin,
            Some(CampusId::new()),
            None
        )));
        assert!(sees(&actor(Role::PlatformAdmin, None, None)));
        // A staff row without its vendor receives nothing rather than everything.
        assert_eq!(
            Subscription::for_actor(&actor(Role::VendorStaff, Some(campus), None)),
            None
        );
        // An event without routing keys reaches only platform admins.
        let bare = EventRouting::default();
        assert!(!Subscription::for_actor(&student).unwrap().matches(&bare));
        assert!(
            Subscription::for_actor(&actor(Role::PlatformAdmin, None, None))
                .unwrap()
                .matches(&bare)
        );
        // Everyone receives what is addressed to them (a campus admin's own report job).
        let admin = actor(Role::CampusAdmin, Some(campus), None);
        let own = EventRouting {
            user_id: Some(admin.user_id),
            ..EventRouting::default()
        };
        assert!(Subscription::for_actor(&admin).unwrap().matches(&own));
    }
}
