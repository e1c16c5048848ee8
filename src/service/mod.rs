//! Use cases shared by every role. Each opens at most one transaction and returns [`Error`],
//! which `http` maps to status codes.
//!
//! L2: depends on `domain`, `store`, `kv`, `app::Ctx` and the leaf utilities.
//!
//! Transactions are opened with diesel-async's `AsyncConnection::transaction` on a pooled
//! connection (`ctx.db.conn()`), not through a `Db::tx` wrapper: diesel-async 0.9 bounds its
//! callback with a sealed trait that a wrapper cannot name.

pub mod audit;
pub mod auth;
pub mod catalog;
pub mod console;
pub mod credentials;
pub mod cron;
pub mod devices;
pub mod events;
pub mod flow_engine;
pub mod flow_nodes;
pub mod flow_schedules;
pub mod flows;
pub mod imports;
pub mod job_hooks;
pub mod jobs;
pub mod nodes;
pub mod orders;
pub mod reports;
pub mod seed;

use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::domain::DomainError;
use crate::store::StoreError;

/// Seconds a client is told to wait when Postgres is unavailable.
pub const RETRY_AFTER_SECS: u64 = 2;

/// What a use case can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A business rule said no (not found, forbidden, conflict, invalid input).
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// No valid credentials (missing, expired, tampered or revoked token; wrong password).
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// The request's precondition (`If-Match` version) no longer holds.
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// A dependency (Postgres) is unreachable or saturated; try again later.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Seconds to wait before retrying.
        retry_after: u64,
        /// What was unavailable (safe to show).
        reason: &'static str,
    },
    /// Anything else: a bug or an unexpected database state. Logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Result of a use case.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<credentials::HashError> for Error {
    fn from(e: credentials::HashError) -> Self {
        match e {
            credentials::HashError::Saturated(_) => Self::Unavailable {
                retry_after: HASHER_RETRY_AFTER_SECS,
                reason: "too many sign-ins at once; retry shortly",
            },
            credentials::HashError::Failed(e) => Self::Internal(e),
        }
    }
}

/// Seconds a client is told to wait when every password hasher stayed busy.
pub const HASHER_RETRY_AFTER_SECS: u64 = 2;

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => Self::Unavailable {
                retry_after: RETRY_AFTER_SECS,
                reason: "database unavailable",
            },
            StoreError::Query(e) => e.into(),
        }
    }
}

impl From<DieselError> for Error {
    /// Maps by kind, never by message text (STYLE rule 9).
    fn from(e: DieselError) -> Self {
        match e {
            DieselError::NotFound => Self::Domain(DomainError::NotFound { what: "resource" }),
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
                Self::Domain(DomainError::Conflict {
                    reason: "already exists".to_owned(),
                })
            }
            DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _)
            | DieselError::BrokenTransactionManager => Self::Unavailable {
                retry_after: RETRY_AFTER_SECS,
                reason: "database connection lost",
            },
            DieselError::DatabaseError(
                DatabaseErrorKind::SerializationFailure | DatabaseErrorKind::Unknown,
                ref info,
            ) if is_retryable_sqlstate(info.message()) => Self::Unavailable {
                retry_after: 1,
                reason: "database busy",
            },
            other => Self::Internal(anyhow::Error::new(other)),
        }
    }
}

/// Statement timeouts and deadlocks are load, not bugs: answer 503 so clients retry.
/// diesel exposes no SQLSTATE for them, so this is the one place that reads the message.
fn is_retryable_sqlstate(message: &str) -> bool {
    message.contains("canceling statement due to statement timeout")
        || message.contains("deadlock detected")
        || message.contains("could not serialize access")
}

/// `limit`/`offset` of a list request, already validated.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    /// Page size (1..=100).
    pub limit: i64,
    /// Rows to skip.
    pub offset: i64,
}

/// One page of a list, with the total count.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Page<T> {
    /// The rows.
    pub data: Vec<T>,
    /// Rows matching the filter, all pages.
    pub total: i64,
    /// The request's page size.
    pub limit: i64,
    /// The request's offset.
    pub offset: i64,
}

impl<T> Page<T> {
    /// Wraps a page of rows.
    pub fn new(data: Vec<T>, total: i64, page: PageRequest) -> Self {
        Self {
            data,
            total,
            limit: page.limit,
            offset: page.offset,
        }
    }

    /// True when more rows follow this page.
    pub fn has_more(&self) -> bool {
        self.offset
            .saturating_add(i64::try_from(self.data.len()).unwrap_or(i64::MAX))
            < self.total
    }
}
