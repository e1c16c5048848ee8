//! One module per job kind.

pub mod bulk_import;
pub mod flow_nodes;
pub mod maintenance;
pub mod noop;
pub mod sales_report;
pub mod send_push;
