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
