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
