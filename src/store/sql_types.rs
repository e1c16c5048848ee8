//! The domain's ids and state enums as diesel values, so rows and store functions carry
//! `OrderId` and `OrderStatus` rather than `Uuid` and `String` (issue 16, step 6).
//!
//! Here rather than as derives in `domain`, which stays free of diesel; the types are this
//! crate's, so the orphan rule allows it. An id is a `uuid` column; a state enum is a `text`
//! column holding its `as_str` name, and a name the enum does not know is a deserialization
//! error of the query (the use case answers 500 and logs it), never a silent default.
//!
//! Only public diesel API: writing delegates to the `Uuid` / `&str` bind of the inner value
//! (same SQL type and the same static query id, so hot statements stay prepared), reading
//! is `FromSql` plus the single-column `Queryable`. Depends on `domain` only.

use diesel::deserialize::{self, FromSql, Queryable};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::sql_types::{Nullable, Text, Uuid as SqlUuid};

use crate::domain::job::JobState;
use crate::domain::{CampusId, MenuItemId, OrderId, OrderStatus, SessionId, UserId, VendorId};

/// Implements, for each id newtype, binding as `uuid` (by value and by reference, nullable
/// too) and reading from `uuid`.
macro_rules! sql_id {
    ($($id:ty),* $(,)?) => {$(
        impl AsExpression<SqlUuid> for $id {
            type Expression = <uuid::Uuid as AsExpression<SqlUuid>>::Expression;
            fn as_expression(self) -> Self::Expression {
                AsExpression::<SqlUuid>::as_expression(self.into_inner())
            }
        }

        impl AsExpression<SqlUuid> for &$id {
            type Expression = <uuid::Uuid as AsExpression<SqlUuid>>::Expression;
            fn as_expression(self) -> Self::Expression {
                AsExpression::<SqlUuid>::as_expression(self.into_inner())
            }
        }

        impl AsExpression<Nullable<SqlUuid>> for $id {
            type Expression = <uuid::Uuid as AsExpression<Nullable<SqlUuid>>>::Expression;
            fn as_expression(self) -> Self::Expression {
                AsExpression::<Nullable<SqlUuid>>::as_expression(self.into_inner())
            }
        }

        impl AsExpression<Nullable<SqlUuid>> for &$id {
            type Expression = <uuid::Uuid as AsExpression<Nullable<SqlUuid>>>::Expression;
            fn as_expression(self) -> Self::Expression {
                AsExpression::<Nullable<SqlUuid>>::as_expression(self.into_inner())
            }
        }

        impl FromSql<SqlUuid, Pg> for $id {
            fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
                <uuid::Uuid as FromSql<SqlUuid, Pg>>::from_sql(bytes).map(Self::from)
            }
        }

        impl Queryable<SqlUuid, Pg> for $id {
            type Row = Self;
            fn build(row: Self) -> deserialize::Result<Self> {
                Ok(row)
            }
        }
    )*};
}

sql_id!(CampusId, VendorId, MenuItemId, UserId, SessionId, OrderId);

/// Implements, for each state enum (`as_str` + `FromStr`), binding as `text` and reading
/// from `text`, where an unknown name is an error.
macro_rules! sql_text_enum {
    ($($enum:ty => $what:literal),* $(,)?) => {$(
        impl AsExpression<Text> for $enum {
            type Expression = <&'static str as AsExpression<Text>>::Expression;
            fn as_expression(self) -> Self::Expression {
                AsExpression::<Text>::as_expression(self.as_str())
            }
        }

        impl AsExpression<Text> for &$enum {
            type Expression = <&'static str as AsExpression<Text>>::Expression;
            fn as_expression(self) -> Self::Expression {
                AsExpression::<Text>::as_expression(self.as_str())
            }
        }

        impl FromSql<Text, Pg> for $enum {
            fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
                let name = std::str::from_utf8(bytes.as_bytes())?;
                name.parse()
                    .map_err(|_| format!(concat!("unknown ", $what, " {:?} in a row"), name).into())
            }
        }

        impl Queryable<Text, Pg> for $enum {
            type Row = Self;
            fn build(row: Self) -> deserialize::Result<Self> {
                Ok(row)
            }
        }
    )*};
}

sql_text_enum!(OrderStatus => "order status", JobState => "job state");
