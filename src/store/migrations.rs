//! Embedded migrations, run without libpq through diesel-async's `AsyncConnectionWrapper`
//! on a blocking thread (the connection itself, TLS included, comes from [`super::connect`]), serialised across processes by a Postgres advisory lock so two
//! `itsur migrate` at once apply each migration exactly once.
//!
//! Only `itsur migrate` (and `itsur all`, the one-machine mode) calls [`run`]; other roles
//! only ask [`pending_count`] so readiness stays false until the schema is current.

use std::collections::HashSet;

use anyhow::Context as _;
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Text};
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

/// Every migration under `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Advisory lock key held while migrating ("itsur-mg" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x6974_7375_722d_6d67;

type SyncPg = AsyncConnectionWrapper<AsyncPgConnection>;

/// What `itsur migrate --status` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Versions already applied, oldest first.
    pub applied: Vec<String>,
    /// Embedded migrations not yet applied (name = version_description), oldest first.
    pub pending: Vec<String>,
}

/// Connects on the async side; the blocking thread wraps the connection with
/// `SyncPg::from`, which drives it through the current runtime's handle.
async fn connect(url: &str) -> anyhow::Result<AsyncPgConnection> {
    super::connect::establish(url)
        .await
        .context("connecting to postgres")
}

/// Applies every pending migration under the advisory lock; returns the versions applied by
/// this call (empty when another process got there first). Runs on a blocking thread.
pub async fn run(url: String) -> anyhow::Result<Vec<String>> {
    let conn = connect(&url).await?;
    tokio::task::spawn_blocking(move || {
        let mut conn = SyncPg::from(conn);
        use diesel::RunQueryDsl;
        diesel::sql_query("SELECT pg_advisory_lock($1)")
            .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
            .execute(&mut conn)
            .context("taking the migration lock")?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.iter().map(ToString::to_string).collect::<Vec<_>>())
            .map_err(|e| anyhow::anyhow!("{e}"));
        // The lock also ends with the session; unlocking early just lets a waiter go sooner.
        let _ = diesel::sql_query("SELECT pg_advisory_unlock($1)")
            .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
            .execute(&mut conn);
        applied.context("applying migrations")
    })
    .await
    .context("migration thread panicked")?
}

/// Lists applied and pending migrations. Runs on a blocking thread.
pub async fn status(url: String) -> anyhow::Result<MigrationStatus> {
    let conn = connect(&url).await?;
    tokio::task::spawn_blocking(move || {
        let mut conn = SyncPg::from(conn);
        let mut applied: Vec<String> = conn
            .applied_migrations()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .iter()
            .map(ToString::to_string)
            .collect();
        applied.sort();
        let pending = conn
            .pending_migrations(MIGRATIONS)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .iter()
            .map(|m| m.name().to_string())
            .collect();
        Ok(MigrationStatus { applied, pending })
    })
    .await
    .context("migration thread panicked")?
}

#[derive(QueryableByName)]
struct VersionRow {
    #[diesel(sql_type = Text)]
    version: String,
}

#[derive(QueryableByName)]
struct ExistsRow {
    #[diesel(sql_type = Bool)]
    exists: bool,
}

/// Versions of the embedded migrations.
fn embedded_versions() -> Vec<String> {
    use diesel::migration::MigrationSource;
    MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map(|ms| ms.iter().map(|m| m.name().version().to_string()).collect())
        .unwrap_or_default()
}

/// How many embedded migrations the database has not applied yet (readiness check).
pub async fn pending_count(conn: &mut AsyncPgConnection) -> diesel::QueryResult<usize> {
    use diesel_async::RunQueryDsl;
    let exists =
        diesel::sql_query("SELECT to_regclass('__diesel_schema_migrations') IS NOT NULL AS exists")
            .get_result::<ExistsRow>(conn)
            .await?
            .exists;
    let embedded = embedded_versions();
    if !exists {
        return Ok(embedded.len());
    }
    let applied: HashSet<String> =
        diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
            .load::<VersionRow>(conn)
            .await?
            .into_iter()
            .map(|r| r.version)
            .collect();
    Ok(embedded.iter().filter(|v| !applied.contains(*v)).count())
}
