//! Integration tests: one binary, real Postgres and Redis (see `support`).

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed setup step should panic with its cause"
)]

mod support;

mod auth;
mod authz;
mod bad_input;
mod brokers;
mod console;
mod edge;
mod flows;
mod health;
mod jobs;
mod migrations;
mod openapi;
mod orders;
mod outage;
mod outbox;
mod push;
mod tls;
mod web;
mod ws;
