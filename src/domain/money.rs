//! Money in integer cents with checked arithmetic; no floats anywhere.

use serde::{Deserialize, Serialize};

/// An amount in cents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cents(pub i64);

impl Cents {
    /// Zero.
    pub const ZERO: Self = Self(0);

    /// `self + other`, None on overflow.
    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.0.checked_add(other.0).map(Self)
    }

    /// `self × n`, None on overflow.
    pub fn checked_mul(self, n: i64) -> Option<Self> {
        self.0.checked_mul(n).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(Cents(250).checked_mul(3), Some(Cents(750)));
        assert_eq!(Cents(1).checked_add(Cents(2)), Some(Cents(3)));
        assert_eq!(Cents(i64::MAX).checked_add(Cents(1)), None);
        assert_eq!(Cents(i64::MAX).checked_mul(2), None);
    }
}
