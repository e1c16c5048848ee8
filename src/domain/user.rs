//! Roles and the actor: who is asking, with the tenant they belong to.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ids::{CampusId, SessionId, UserId, VendorId};

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Orders food on their campus.
    Student,
    /// Runs one vendor's order board and menu.
    VendorStaff,
    /// Manages one campus.
    CampusAdmin,
    /// Operates the platform: every campus.
    PlatformAdmin,
}

impl Role {
    /// Every role.
    pub const ALL: [Self; 4] = [
        Self::Student,
        Self::VendorStaff,
        Self::CampusAdmin,
        Self::PlatformAdmin,
    ];

    /// The stored and serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Student => "student",
            Self::VendorStaff => "vendor_staff",
            Self::CampusAdmin => "campus_admin",
            Self::PlatformAdmin => "platform_admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown role name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role")]
pub struct UnknownRole;

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or(UnknownRole)
    }
}

/// Who is making a request: the user, their session and their tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// The user.
    pub user_id: UserId,
    /// The session the request came through.
    pub session_id: SessionId,
    /// The user's role.
    pub role: Role,
    /// Their campus (all roles but platform admin).
    pub campus_id: Option<CampusId>,
    /// Their vendor (vendor staff only).
    pub vendor_id: Option<VendorId>,
}
