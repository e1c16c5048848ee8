//! Role `worker`: runs background jobs claimed from Postgres.
//!
//! L3: depends on `service`, `store`, `domain`, `app`; never on `http` or `outbox`.

pub mod runner;
