//! Bulk user import from CSV: every row validated (e-mail of the campus's domains, role,
//! vendor of the campus, password rules, duplicates in the file and in the database), the
//! good rows imported, the bad ones reported with their line number.
//!
//! CSV columns (header row required): `email, display_name, role, password[, vendor_id]`;
//! `role` is `student`, `vendor_staff` (needs `vendor_id`) or `campus_admin`.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{Role, validate};
use crate::store::campuses::CampusRow;
use crate::store::users::NewUserRow;

/// Largest upload accepted.
pub const MAX_CSV_BYTES: usize = 5 * 1024 * 1024;
/// Most rows one import may hold.
pub const MAX_ROWS: usize = 20_000;
/// At most this many row errors are reported.
pub const MAX_REPORTED_ERRORS: usize = 100;

/// The job payload. The file itself (passwords in clear) is in `import_uploads`, never in
/// the job row, which is kept for days after the job ends.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportSpec {
    /// Campus the users join.
    pub campus_id: Uuid,
    /// Data rows of the file, counted at upload.
    pub rows: u64,
}

/// Data rows of a CSV file (records after the header), counted up to `MAX_ROWS + 1`: enough
/// to refuse an oversized file without reading all of it.
pub fn count_rows(csv_text: &str) -> usize {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(csv_text.as_bytes());
    let mut record = csv::ByteRecord::new();
    let mut n = 0;
    // An unreadable row still counts: validation reports it with its line later.
    while n <= MAX_ROWS && !matches!(reader.read_byte_record(&mut record), Ok(false)) {
        n += 1;
        if reader.is_done() {
            break;
        }
    }
    n
}

/// One rejected row.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RowError {
    /// 1-based line in the file (the header is line 1).
    pub line: u64,
    /// The row's e-mail, when readable.
    pub email: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// A row that passed validation (password still in clear: hash it, then drop it).
#[derive(Debug, Clone)]
pub struct ValidRow {
    /// Line in the file.
    pub line: u64,
    /// Lowercased e-mail.
    pub email: String,
    /// Display name.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Vendor, for vendor staff.
    pub vendor_id: Option<Uuid>,
    /// Password in clear.
    pub password: String,
}

#[derive(Deserialize)]
struct CsvRow {
    email: String,
    display_name: String,
    role: String,
    password: String,
    #[serde(default)]
    vendor_id: Option<String>,
}

/// Columns every import needs in its header row.
pub const REQUIRED_COLUMNS: [&str; 4] = ["email", "display_name", "role", "password"];

/// Checks that the header row names every required column, so that a file which is not an
/// import CSV is refused at upload (400) instead of failing row by row in the job.
pub fn check_header(csv_text: &str) -> Result<(), String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(csv_text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| format!("unreadable header row: {e}"))?;
    let missing: Vec<&str> = REQUIRED_COLUMNS
        .into_iter()
        .filter(|c| !headers.iter().any(|h| h == *c))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the header row lacks {} (columns: email,display_name,role,password[,vendor_id])",
            missing.join(", ")
        ))
    }
}

/// Parses and validates the file (pure: no I/O). `vendors` are the campus's vendor ids.
pub fn validate_rows(
    campus: &CampusRow,
    vendors: &HashSet<Uuid>,
    csv_text: &str,
) -> (Vec<ValidRow>, Vec<RowError>, u64) {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(csv_text.as_bytes());
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut total = 0_u64;
    for record in reader.deserialize::<CsvRow>() {
        total += 1;
        let line = total + 1;
        let row = match record {
            Ok(r) => r,
            Err(e) => {
                bad.push(RowError {
                    line,
                    email: None,
                    message: format!("unreadable row: {e}"),
                });
                continue;
            }
        };
        let mut problems = Vec::new();
        let email = match validate::email(&row.email) {
            Ok(e) => {
                let domain = e.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
                if !campus.email_domains.iter().any(|d| d == domain) {
                    problems.push(format!(
                        "e-mail domain {domain} does not belong to this campus"
                    ));
                }
                Some(e)
            }
            Err(m) => {
                problems.push(format!("email {m}"));
                None
            }
        };
        if let Err(m) = validate::name(&row.display_name) {
            problems.push(format!("display_name {m}"));
        }
        if let Err(m) = validate::password(&row.password) {
            problems.push(format!("password {m}"));
        }
        let role = match row.role.parse::<Role>() {
            Ok(r @ (Role::Student | Role::VendorStaff | Role::CampusAdmin)) => Some(r),
            _ => {
                problems.push("role must be student, vendor_staff or campus_admin".to_owned());
                None
            }
        };
        let vendor_id = row
            .vendor_id
            .as_deref()
            .filter(|v| !v.is_empty())
            .map(str::parse::<Uuid>);
        let vendor_id = match (role, vendor_id) {
            (Some(Role::VendorStaff), Some(Ok(v))) if vendors.contains(&v) => Some(v),
            (Some(Role::VendorStaff), _) => {
                problems
                    .push("vendor_staff needs the vendor_id of a vendor of this campus".to_owned());
                None
            }
            (_, Some(_)) => {
                problems.push("only vendor_staff rows take a vendor_id".to_owned());
                None
            }
            _ => None,
        };
        if let Some(e) = &email
            && let Some(first) = seen.insert(e.clone(), line)
        {
            problems.push(format!("duplicate of line {first}"));
        }
        match (problems.is_empty(), email, role) {
            (true, Some(email), Some(role)) => good.push(ValidRow {
                line,
                email,
                display_name: row.display_name.trim().to_owned(),
                role,
                vendor_id,
                password: row.password,
            }),
            (_, email, _) => bad.push(RowError {
                line,
                email,
                message: problems.join("; "),
            }),
        }
    }
    (good, bad, total)
}

/// The row to insert for a validated row and its password hash.
pub fn new_user(campus_id: Uuid, row: &ValidRow, password_hash: String) -> NewUserRow {
    NewUserRow {
        id: Uuid::now_v7(),
        campus_id: Some(campus_id),
        vendor_id: row.vendor_id,
        email: row.email.clone(),
        display_name: row.display_name.clone(),
        password_hash,
        role: row.role.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_counted_up_to_one_past_the_limit() {
        assert_eq!(count_rows("email,display_name,role,password\n"), 0);
        assert_eq!(count_rows("h\na\nb\n\"unterminated"), 3);
        let big = format!("h\n{}", "x\n".repeat(MAX_ROWS + 50));
        assert_eq!(count_rows(&big), MAX_ROWS + 1);
        let exact = format!("h\n{}", "x\n".repeat(MAX_ROWS));
        assert_eq!(count_rows(&exact), MAX_ROWS);
    }

    fn campus() -> CampusRow {
        CampusRow {
            id: Uuid::now_v7(),
            name: "C".to_owned(),
            slug: "c".to_owned(),
            email_domains: vec!["c.edu".to_owned()],
            time_zone: "UTC".to_owned(),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn rows_are_validated_with_line_numbers() {
        let vendor = Uuid::now_v7();
        let csv = format!(
            "email,display_name,role,password,vendor_id\n\
             ana@c.edu,Ana,student,password1,\n\
             bob@x.edu,Bob,student,password1,\n\
             ANA@c.edu,Ana again,student,password1,\n\
             cy@c.edu,Cy,vendor_staff,password1,{vendor}\n\
             di@c.edu,Di,vendor_staff,password1,\n\
             ed@c.edu,Ed,platform_admin,short,\n"
        );
        let (good, bad, total) = validate_rows(&campus(), &HashSet::from([vendor]), &csv);
        assert_eq!(total, 6);
        assert_eq!(good.iter().map(|r| r.line).collect::<Vec<_>>(), [2, 5]);
        assert_eq!(bad.iter().map(|r| r.line).collect::<Vec<_>>(), [3, 4, 6, 7]);
        assert!(bad[1].message.contains("duplicate of line 2"));
        assert!(bad[3].message.contains("role") && bad[3].message.contains("password"));
    }
}
