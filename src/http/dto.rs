//! Response envelopes shared by every route: `{ "data": … }` for one resource and
//! `{ "data": [...], "pagination": { total, limit, offset, hasMore } }` for lists.

use serde::Serialize;

use crate::service::Page;

/// One resource.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Data<T> {
    /// The resource.
    pub data: T,
}

/// Pagination block of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pagination {
    /// Rows matching the filter, all pages.
    pub total: i64,
    /// Page size.
    pub limit: i64,
    /// Rows skipped.
    pub offset: i64,
    /// True when another page follows.
    pub has_more: bool,
}

/// A page of resources.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct List<T> {
    /// The rows of this page.
    pub data: Vec<T>,
    /// Where this page sits.
    pub pagination: Pagination,
}

impl<T> List<T> {
    /// Converts a service page, mapping each row to its DTO.
    pub fn from_page<U>(page: Page<U>, f: impl FnMut(U) -> T) -> Self {
        let pagination = Pagination {
            total: page.total,
            limit: page.limit,
            offset: page.offset,
            has_more: page.has_more(),
        };
        Self {
            data: page.data.into_iter().map(f).collect(),
            pagination,
        }
    }
}

/// Wraps one resource.
pub fn data<T>(data: T) -> Data<T> {
    Data { data }
}

/// A string schema that admits only `values`: query parameters and fields the server checks
/// against a fixed set are documented as enums, so clients and fuzzers see the same rule
/// the server applies (issue 17 item 9).
pub fn one_of<'a>(values: impl IntoIterator<Item = &'a str>) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(values))
        .build()
}

/// Order statuses (`placed` … `cancelled`).
pub fn order_status_schema() -> utoipa::openapi::Object {
    one_of(crate::domain::OrderStatus::ALL.map(crate::domain::OrderStatus::as_str))
}

/// The job states `GET /jobs?status=` accepts: the public names and their stored synonyms.
pub fn public_job_status_schema() -> utoipa::openapi::Object {
    one_of([
        "queued",
        "started",
        "progress",
        "running",
        "completed",
        "failed",
        "dead",
        "cancelled",
    ])
}

/// The stored job states of the console's filter; empty means no filter.
pub fn job_state_filter_schema() -> utoipa::openapi::Object {
    let states = crate::domain::job::JobState::ALL.map(crate::domain::job::JobState::as_str);
    one_of(std::iter::once("").chain(states))
}

/// Flow run statuses.
pub fn run_status_schema() -> utoipa::openapi::Object {
    one_of(["running", "succeeded", "failed", "cancelled"])
}

/// Outbox states an admin lists.
pub fn outbox_state_schema() -> utoipa::openapi::Object {
    one_of(["dead", "pending"])
}

/// Push platforms a device registers for.
pub fn platform_schema() -> utoipa::openapi::Object {
    one_of(crate::service::devices::PLATFORMS)
}

/// Report formats.
pub fn report_format_schema() -> utoipa::openapi::Object {
    one_of(["csv", "json"])
}
