//! Role `outbox-relay`: publishes committed outbox events to their sinks.
//!
//! L3: depends on `store`, `kv`, `domain`, `app`; never on `http` or `jobs`.

pub mod relay;
