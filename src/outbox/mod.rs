//! Role `outbox-relay`: publishes committed outbox events to their sinks (Redis pub/sub or
//! the in-process hub for the realtime gateway, an optional signed webhook, RabbitMQ and NATS
//! JetStream).
//!
//! L3: depends on `store`, `kv`, `service`, `domain`, `app`; never on `http` or `jobs`.
//! Env vars (through `config::OutboxSettings`): `OUTBOX_BATCH_SIZE`,
//! `OUTBOX_POLL_INTERVAL_MS`, `OUTBOX_POLL_ONLY`, `OUTBOX_MAX_ATTEMPTS`, `WEBHOOK_*`, `AMQP_*`,
//! `NATS_*`.

pub mod broker;
pub mod nats;
pub mod rabbitmq;
pub mod relay;
pub mod sinks;
