//! Realtime delivery inside one process: the hub of WebSocket subscribers and its fan-out
//! ([`hub`]). The gateway (`http::ws`) registers sockets in it; the gateway's Redis
//! subscriber and, without Redis, the relay's in-process sink feed it. Both roles reach it
//! through `app::Ctx::hub`. The events themselves are `domain::event`; their Redis channel
//! is `kv::pubsub`.
//!
//! L1: depends on `domain` and tokio; no Redis, no actix, no Postgres.

pub mod hub;
