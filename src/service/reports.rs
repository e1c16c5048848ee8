//! Sales reports: a vendor's orders over a period, aggregated by day and item, rendered as
//! CSV or JSON. The period is read in slices (progress after each) from the read pool, and
//! rendering runs on the blocking pool, so a large report never stalls the async runtime.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Result;
use crate::app::Ctx;
use crate::domain::DomainError;
use crate::store::orders::{self, SalesRow};

/// Longest period one report may cover.
pub const MAX_PERIOD_DAYS: i64 = 366;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `text/csv`: one row per day and item.
    Csv,
    /// `application/json`: totals, by item, by day.
    Json,
}

/// A report request (also the job payload).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SalesReportSpec {
    /// Vendor.
    pub vendor_id: Uuid,
    /// Start (inclusive).
    pub from: DateTime<Utc>,
    /// End (exclusive).
    pub to: DateTime<Utc>,
    /// Output format.
    pub format: Format,
}

impl SalesReportSpec {
    /// Checks the period.
    pub fn validate(&self) -> Result<()> {
        let mut errors = Vec::new();
        if self.to <= self.from {
            errors.push(("to".to_owned(), "must be after from".to_owned()));
        } else if (self.to - self.from).num_days() > MAX_PERIOD_DAYS {
            errors.push((
                "to".to_owned(),
                format!("the period may span at most {MAX_PERIOD_DAYS} days"),
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(DomainError::Invalid {
                field_errors: errors,
            }
            .into())
        }
    }

    /// Up to `n` consecutive slices covering the period.
    pub fn slices(&self, n: i32) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let span = self.to - self.from;
        let step = span / n.max(1);
        let step = if step <= chrono::Duration::zero() {
            span
        } else {
            step
        };
        let mut out = Vec::new();
        let mut start = self.from;
        while start < self.to {
            let end = (start + step).min(self.to);
            out.push((start, end));
            start = end;
        }
        out
    }
}

/// One (day, item) cell of a sales report, as the job reads it (store rows stay below
/// `service`).
#[derive(Debug, Clone)]
pub struct SalesLine {
    /// The campus's local day.
    pub day: chrono::NaiveDate,
    /// Menu item.
    pub menu_item_id: Uuid,
    /// Item name as ordered.
    pub name: String,
    /// Units sold.
    pub quantity: i64,
    /// Revenue in cents.
    pub revenue_cents: i64,
    /// Orders containing the item.
    pub orders: i64,
}

impl From<SalesRow> for SalesLine {
    fn from(r: SalesRow) -> Self {
        Self {
            day: r.day,
            menu_item_id: r.menu_item_id,
            name: r.name,
            quantity: r.quantity,
            revenue_cents: r.revenue_cents,
            orders: r.orders,
        }
    }
}

/// Reads one slice of the period.
pub async fn read_slice(
    ctx: &Ctx,
    vendor_id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<SalesLine>> {
    let mut conn = ctx.db.read_conn().await?;
    let rows = orders::sales_by_day_item(&mut conn, vendor_id.into(), from, to).await?;
    Ok(rows.into_iter().map(SalesLine::from).collect())
}

#[derive(Serialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
struct ItemTotal {
    menu_item_id: Uuid,
    name: String,
    quantity: i64,
    revenue_cents: i64,
}

#[derive(Serialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
struct DayTotal {
    day: chrono::NaiveDate,
    quantity: i64,
    revenue_cents: i64,
}

/// The rendered report and its summary.
#[derive(Debug)]
pub struct Rendered {
    /// Media type of `body`.
    pub content_type: &'static str,
    /// The report file.
    pub body: Vec<u8>,
    /// Totals for `GET /jobs/{id}`.
    pub summary: serde_json::Value,
}

/// A text cell that a spreadsheet will not run as a formula (OWASP's CSV injection advice):
/// a cell starting with `=`, `+`, `-`, `@`, tab or carriage return gets a leading `'`.
/// Item names are written by vendor staff and opened by others in spreadsheets.
pub fn csv_safe(cell: &str) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell.to_owned()
    }
}

/// Renders the rows (CPU work: call it on the blocking pool).
pub fn render(spec: &SalesReportSpec, rows: &[SalesLine]) -> anyhow::Result<Rendered> {
    let mut by_item: BTreeMap<Uuid, ItemTotal> = BTreeMap::new();
    let mut by_day: BTreeMap<chrono::NaiveDate, DayTotal> = BTreeMap::new();
    // The period is read in slices, so one day and item can arrive as several rows (one per
    // slice the day spans); the CSV has one row per day and item. An order falls in exactly
    // one slice, so summing the per-slice order counts is exact.
    let mut by_day_item: BTreeMap<(chrono::NaiveDate, Uuid), SalesLine> = BTreeMap::new();
    for r in rows {
        by_day_item
            .entry((r.day, r.menu_item_id))
            .and_modify(|line| {
                line.quantity += r.quantity;
                line.revenue_cents += r.revenue_cents;
                line.orders += r.orders;
            })
            .or_insert_with(|| r.clone());
        let item = by_item.entry(r.menu_item_id).or_insert_with(|| ItemTotal {
            menu_item_id: r.menu_item_id,
            name: r.name.clone(),
            ..ItemTotal::default()
        });
        item.quantity += r.quantity;
        item.revenue_cents += r.revenue_cents;
        let day = by_day.entry(r.day).or_insert_with(|| DayTotal {
            day: r.day,
            ..DayTotal::default()
        });
        day.quantity += r.quantity;
        day.revenue_cents += r.revenue_cents;
    }
    let quantity: i64 = by_item.values().map(|i| i.quantity).sum();
    let revenue: i64 = by_item.values().map(|i| i.revenue_cents).sum();
    let summary = serde_json::json!({
        "vendorId": spec.vendor_id, "from": spec.from, "to": spec.to,
        "items": by_item.len(), "days": by_day.len(),
        "quantity": quantity, "revenueCents": revenue,
    });
    let (content_type, body) = match spec.format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record([
                "day",
                "menu_item_id",
                "item",
                "quantity",
                "revenue_cents",
                "orders",
            ])?;
            for r in by_day_item.values() {
                w.write_record([
                    r.day.to_string(),
                    r.menu_item_id.to_string(),
                    csv_safe(&r.name),
                    r.quantity.to_string(),
                    r.revenue_cents.to_string(),
                    r.orders.to_string(),
                ])?;
            }
            (
                "text/csv; charset=utf-8",
                w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?,
            )
        }
        Format::Json => (
            "application/json",
            serde_json::to_vec(&serde_json::json!({
                "summary": summary,
                "byItem": by_item.values().collect::<Vec<_>>(),
                "byDay": by_day.values().collect::<Vec<_>>(),
            }))?,
        ),
    };
    Ok(Rendered {
        content_type,
        body,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_defused_in_csv_reports() {
        for bad in ["=1+1", "+SUM(A1)", "-2+3", "@cmd", "\tx", "\rx"] {
            assert_eq!(csv_safe(bad), format!("'{bad}"));
        }
        assert_eq!(csv_safe("Taco al pastor"), "Taco al pastor");
        let spec = SalesReportSpec {
            vendor_id: Uuid::nil(),
            from: Utc::now() - chrono::Duration::days(1),
            to: Utc::now(),
            format: Format::Csv,
        };
        let row = SalesLine {
            day: chrono::NaiveDate::from_ymd_opt(2026, 12, 5).unwrap_or_default(),
            menu_item_id: Uuid::nil(),
            name: "=HYPERLINK(\"http://evil\")".to_owned(),
            quantity: 1,
            revenue_cents: 100,
            orders: 1,
        };
        let out = render(&spec, &[row]).expect("renders");
        let text = String::from_utf8(out.body).expect("utf-8");
        assert!(
            text.contains("\"'=HYPERLINK(\"\"http://evil\"\")\""),
            "{text}"
        );
    }
}
