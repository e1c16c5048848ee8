//! Outbox event types (dotted lowercase names, as stored and published).

/// Kinds of outbox events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// A student placed an order.
    OrderCreated,
    /// An order moved to another state.
    OrderStatusChanged,
}

impl EventType {
    /// The stored and published name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderCreated => "order.created",
            Self::OrderStatusChanged => "order.status_changed",
        }
    }
}
