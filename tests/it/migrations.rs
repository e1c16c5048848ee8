//! Migrations: embedded, idempotent, reversible.

use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::MigrationHarness;

use crate::support::TestDb;

#[tokio::test(flavor = "multi_thread")]
async fn status_then_run_then_idempotent() {
    let db = TestDb::empty().await;
    let before = itsur::store::migrations::status(db.url.clone())
        .await
        .unwrap();
    assert!(before.applied.is_empty());
    assert!(!before.pending.is_empty());

    let applied = itsur::store::migrations::run(db.url.clone()).await.unwrap();
    assert_eq!(applied.len(), before.pending.len());
    let again = itsur::store::migrations::run(db.url.clone()).await.unwrap();
    assert!(again.is_empty(), "second run applies nothing");

    let after = itsur::store::migrations::status(db.url.clone())
        .await
        .unwrap();
    assert!(after.pending.is_empty());
    assert_eq!(after.applied.len(), applied.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_migration_reverts_and_reapplies() {
    let db = TestDb::empty().await;
    itsur::store::migrations::run(db.url.clone()).await.unwrap();
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn =
            <AsyncConnectionWrapper<AsyncPgConnection> as diesel::Connection>::establish(&url)
                .unwrap();
        conn.revert_all_migrations(itsur::store::migrations::MIGRATIONS)
            .unwrap();
        assert!(conn.applied_migrations().unwrap().is_empty());
        conn.run_pending_migrations(itsur::store::migrations::MIGRATIONS)
            .unwrap();
    })
    .await
    .unwrap();
    assert!(
        itsur::store::migrations::status(db.url.clone())
            .await
            .unwrap()
            .pending
            .is_empty()
    );
}

/// `src/store/schema.rs` is hand-written (diesel_cli needs libpq); this keeps it honest:
/// every table and column it declares exists in the migrated database with the same
/// nullability, and no migrated column is missing from it.
#[tokio::test(flavor = "multi_thread")]
async fn schema_rs_matches_the_migrated_database() {
    use diesel::QueryableByName;
    use diesel::sql_types::Text;
    use diesel_async::{AsyncConnection, RunQueryDsl};

    #[derive(QueryableByName)]
    struct Col {
        #[diesel(sql_type = Text)]
        table_name: String,
        #[diesel(sql_type = Text)]
        column_name: String,
        #[diesel(sql_type = Text)]
        is_nullable: String,
    }

    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/store/schema.rs"))
            .unwrap();
    let mut declared = std::collections::BTreeSet::new();
    let mut table = None;
    for line in source.lines().map(str::trim) {
        if let Some(rest) = line.strip_suffix('{')
            && let Some((name, _)) = rest.split_once(" (")
            && !name.contains(' ')
        {
            table = Some(name.to_owned());
        } else if line == "}" {
            table = None;
        } else if let (Some(t), Some((col, ty))) = (&table, line.split_once(" -> ")) {
            let nullable = ty.starts_with("Nullable<");
            declared.insert((t.clone(), col.to_owned(), nullable));
        }
    }
    assert!(declared.len() > 50, "parsed the schema file: {declared:?}");

    let db = TestDb::new().await;
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    let cols: Vec<Col> = diesel::sql_query(
        "SELECT table_name::text, column_name::text, is_nullable::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name <> '__diesel_schema_migrations'",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let actual: std::collections::BTreeSet<_> = cols
        .into_iter()
        .map(|c| (c.table_name, c.column_name, c.is_nullable == "YES"))
        .collect();
    let missing: Vec<_> = actual.difference(&declared).collect();
    let extra: Vec<_> = declared.difference(&actual).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "not in schema.rs: {missing:?}\nnot in the database: {extra:?}"
    );
}
