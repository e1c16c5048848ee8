//! itsur — the backend of ITSUR Eats, one binary whose subcommand picks its role.
//!
//! Layers (dependencies point down only; `make check-layers` enforces it):
//!
//! ```text
//! L4  cli                      clap + one thin shell per subcommand
//! L3  http | jobs | outbox     the roles; they never import each other
//! L2  app::Ctx + service       use cases shared by every role
//! L1  store | kv → resilience → clients   adapters (Postgres, Redis, outbound HTTP);
//!     realtime                 the in-process event hub (no I/O)
//! L0  domain                   pure business model, no I/O
//! leaf utilities: config, telemetry, shutdown (usable from every layer but domain)
//! ```
//!
//! See `docs/ARCHITECTURE.md` for the data flows and the decisions behind them.

pub mod app;
pub mod cli;
pub mod clients;
pub mod config;
pub mod domain;
pub mod http;
pub mod jobs;
pub mod kv;
pub mod outbox;
pub mod realtime;
pub mod resilience;
pub mod service;
pub mod shutdown;
pub mod store;
pub mod telemetry;
