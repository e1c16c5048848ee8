//! Demo data for a newcomer's first run: one campus, two vendors with menus, and a student,
//! a vendor staff member and a campus admin whose credentials `itsur seed --demo` prints.
//! Also seeds the two shipped flows into the demo campus.
//! Idempotent: a second run finds the campus and changes nothing.

use diesel_async::AsyncConnection;
use uuid::Uuid;

use super::Result;
use crate::app::Ctx;
use crate::domain::{MenuItemId, Role, VendorId};
use crate::store::{campuses, menu_items, users, vendors};

/// Slug of the demo campus.
pub const DEMO_CAMPUS_SLUG: &str = "itsur-demo";

/// A demo login.
#[derive(Debug, Clone)]
pub struct DemoAccount {
    /// Role of the account.
    pub role: Role,
    /// E-mail to log in with.
    pub email: &'static str,
    /// Password to log in with (demo only).
    pub password: &'static str,
}

/// The demo logins (fixed, documented in the README).
pub const DEMO_ACCOUNTS: [DemoAccount; 3] = [
    DemoAccount {
        role: Role::Student,
        email: "student@itsur.edu",
        password: "student-demo-pass",
    },
    DemoAccount {
        role: Role::VendorStaff,
        email: "staff@itsur.edu",
        password: "staff-demo-pass",
    },
    DemoAccount {
        role: Role::CampusAdmin,
        email: "admin@itsur.edu",
        password: "admin-demo-pass",
    },
];

/// (item name, price in cents, stock)
type DemoItem = (&'static str, i64, i32);

const MENUS: [(&str, &str, &[DemoItem]); 2] = [
    (
        "Cafeteria Central",
        "Hot meals and coffee",
        &[
            ("Chilaquiles", 8500, 200),
            ("Enchiladas suizas", 9500, 150),
            ("Cafe de olla", 2500, 500),
            ("Agua de horchata", 2000, 300),
        ],
    ),
    (
        "Tacos El Patio",
        "Tacos between classes",
        &[
            ("Taco al pastor", 1800, 1000),
            ("Taco de suadero", 1800, 800),
            ("Quesadilla", 3500, 300),
        ],
    ),
];

/// Loads the demo campus unless it exists; returns true when it created it.
pub async fn seed_demo(ctx: &Ctx) -> Result<bool> {
    let mut hashes = Vec::new();
    for account in &DEMO_ACCOUNTS {
        hashes.push(ctx.hasher.hash(account.password.to_owned()).await?);
    }
    let mut conn = ctx.db.conn().await?;
    let created = conn
        .transaction(async |conn| -> Result<bool> {
            if campuses::find_by_slug(conn, DEMO_CAMPUS_SLUG)
                .await?
                .is_some()
            {
                return Ok(false);
            }
            let campus = campuses::insert(
                conn,
                &campuses::NewCampusRow {
                    id: Uuid::now_v7(),
                    name: "ITSUR Demo Campus".to_owned(),
                    slug: DEMO_CAMPUS_SLUG.to_owned(),
                    email_domains: vec!["itsur.edu".to_owned()],
                    time_zone: "America/Mexico_City".to_owned(),
                },
            )
            .await?;
            let mut first_vendor = None;
            for (name, description, items) in MENUS {
                let vendor = vendors::insert(
                    conn,
                    &vendors::NewVendorRow {
                        id: VendorId::new(),
                        campus_id: campus.id.into(),
                        name: name.to_owned(),
                        description: Some(description.to_owned()),
                        is_open: true,
                    },
                )
                .await?;
                first_vendor.get_or_insert(vendor.id.into_inner());
                for (item, price, stock) in items {
                    menu_items::insert(
                        conn,
                        &menu_items::NewMenuItemRow {
                            id: MenuItemId::new(),
                            vendor_id: vendor.id,
                            name: (*item).to_owned(),
                            description: None,
                            price_cents: *price,
                            stock: *stock,
                            available: true,
                        },
                    )
                    .await?;
                }
            }
            for (account, hash) in DEMO_ACCOUNTS.iter().zip(hashes) {
                users::insert(
                    conn,
                    &users::NewUserRow {
                        id: Uuid::now_v7(),
                        campus_id: Some(campus.id),
                        vendor_id: (account.role == Role::VendorStaff)
                            .then_some(first_vendor)
                            .flatten(),
                        email: account.email.to_owned(),
                        display_name: format!("Demo {}", account.role.as_str()),
                        password_hash: hash,
                        role: account.role.as_str().to_owned(),
                    },
                )
                .await?;
            }
            Ok(true)
        })
        .await?;
    // The flows ITSUR Eats ships (`campus.end_of_day`, `order.unaccepted`), seeded into the
    // demo campus; idempotent like the rest.
    if let Some(campus) = campuses::find_by_slug(&mut conn, DEMO_CAMPUS_SLUG).await? {
        super::flow_schedules::seed_campus_flows(ctx, campus.id).await?;
    }
    Ok(created)
}
