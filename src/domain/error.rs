//! `DomainError`: what a business rule can say. Out-of-tenant access is `NotFound`, never
//! `Forbidden`, so ids of other tenants leak nothing.

/// A business rule refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// No such thing, or not visible to the actor.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for.
        what: &'static str,
    },
    /// Visible, but the actor's role may not do this.
    #[error("forbidden: {reason}")]
    Forbidden {
        /// Why.
        reason: String,
    },
    /// The current state does not allow it (stock, transition, duplicate, reused key).
    #[error("conflict: {reason}")]
    Conflict {
        /// Why.
        reason: String,
    },
    /// Input fields are invalid: (field, message) pairs.
    #[error("invalid input")]
    Invalid {
        /// Each invalid field with its message.
        field_errors: Vec<(String, String)>,
    },
}

impl DomainError {
    /// A forbidden error with a reason.
    pub fn forbidden(reason: &str) -> Self {
        Self::Forbidden {
            reason: reason.to_owned(),
        }
    }

    /// A conflict error with a reason.
    pub fn conflict(reason: impl Into<String>) -> Self {
        Self::Conflict {
            reason: reason.into(),
        }
    }
}
