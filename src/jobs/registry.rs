//! Job kind → handler: the one place the worker learns which kinds it can run.

use std::collections::HashMap;
use std::sync::Arc;

use super::Handler;
use super::handlers;
use crate::domain::job::kind;

/// The handlers a worker runs, by kind.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl Registry {
    /// Every production job kind.
    pub fn standard() -> Self {
        Self::default()
            .with(kind::NOOP, handlers::noop::Noop)
            .with(kind::MAINTENANCE, handlers::maintenance::Maintenance)
            .with(kind::SALES_REPORT, handlers::sales_report::SalesReport)
            .with(
                kind::BULK_IMPORT_USERS,
                handlers::bulk_import::BulkImportUsers,
            )
            .with(kind::SEND_PUSH, handlers::send_push::SendPush)
            .with(kind::SEND_EMAIL, handlers::flow_nodes::SendEmail)
            .with(kind::CLOSE_VENDORS, handlers::flow_nodes::CloseVendors)
            .with(kind::DAILY_SUMMARY, handlers::flow_nodes::DailySummary)
            .with(
                kind::CANCEL_UNACCEPTED_ORDERS,
                handlers::flow_nodes::CancelUnacceptedOrders,
            )
    }

    /// Adds (or replaces) the handler of `kind`.
    pub fn with(mut self, kind: &str, handler: impl Handler) -> Self {
        self.handlers.insert(kind.to_owned(), Arc::new(handler));
        self
    }

    /// The kinds it runs (the node catalog `service::nodes::catalog` lists the same).
    pub fn kinds(&self) -> Vec<String> {
        self.handlers.keys().cloned().collect()
    }

    /// The handler of `kind`.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(kind).cloned()
    }
}
