//! End-to-end tests: the real `itsur` binary, started as a process per role.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed setup step should panic with its cause"
)]

#[path = "../it/support/mod.rs"]
#[expect(dead_code, reason = "shared with the it binary, which uses all of it")]
mod support;

mod brokers;
mod flows;
mod jobs;
mod login_memory;
mod proc;
mod realtime;
mod roles;
mod secrets;
