//! TLS to Postgres (`sslmode`, `sslrootcert`) and Redis (`rediss://`, `REDIS_CA_FILE`)
//! against real servers started by the test with a throw-away CA (see `support::tls`). The
//! Postgres refuses plaintext TCP, so every success here went over TLS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use itsur::config::Secret;
use itsur::domain::event::EventEnvelope;
use itsur::kv::pubsub::{self, EventFeed, FeedItem};
use itsur::kv::{self, Kv};
use itsur::shutdown::Shutdown;
use itsur::store::connect::establish;
use itsur::store::{Db, listen, migrations, pool};
use tokio::sync::Notify;

use crate::support::tls::{Pki, TlsPostgres, TlsRedis, skip};

#[derive(QueryableByName)]
struct Ssl {
    #[diesel(sql_type = Bool)]
    ssl: bool,
}

/// What pg_stat_ssl says about this very connection.
async fn ssl_in_use(conn: &mut AsyncPgConnection) -> bool {
    diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .get_result::<Ssl>(conn)
        .await
        .unwrap()
        .ssl
}

fn pg_or_skip(test: &str) -> Option<(Pki, TlsPostgres)> {
    let started = Pki::new().and_then(|pki| TlsPostgres::start(&pki).map(|pg| (pki, pg)));
    match started {
        Ok(both) => Some(both),
        Err(reason) => {
            skip(test, &reason);
            None
        }
    }
}

async fn connect_err(url: &str) -> String {
    match establish(url).await {
        Ok(_) => panic!("connected, but should not have"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sslmode_follows_libpq() {
    let Some((pki, pg)) = pg_or_skip("tls::postgres_sslmode_follows_libpq") else {
        return;
    };
    let ca = pki.ca().display().to_string();
    let other_ca = pki.other_ca().display().to_string();

    // verify-full by the name on the certificate: chain and host name check out.
    let url = pg.url(
        "localhost",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let mut conn = establish(&url).await.unwrap();
    assert!(ssl_in_use(&mut conn).await);

    // The server refuses plaintext, so `disable` cannot get in.
    let err = connect_err(&pg.url("localhost", "postgres", "sslmode=disable")).await;
    assert!(err.contains("no encryption"), "{err}");

    // The certificate names localhost only: verify-full by IP fails, verify-ca does not look
    // at the name.
    let by_ip = |mode: &str, root: &str| {
        pg.url(
            "127.0.0.1",
            "postgres",
            &format!("sslmode={mode}&sslrootcert={root}"),
        )
    };
    let err = connect_err(&by_ip("verify-full", &ca)).await;
    assert!(err.contains("not valid for name"), "{err}");
    let mut conn = establish(&by_ip("verify-ca", &ca)).await.unwrap();
    assert!(ssl_in_use(&mut conn).await);

    // verify-ca still checks the chain.
    let err = connect_err(&by_ip("verify-ca", &other_ca)).await;
    assert!(err.contains("UnknownIssuer"), "{err}");

    // require without a root: encrypted, certificate not checked.
    let mut conn = establish(&pg.url("127.0.0.1", "postgres", "sslmode=require"))
        .await
        .unwrap();
    assert!(ssl_in_use(&mut conn).await);
    // ...but with a root file it is verify-ca, as in libpq.
    let err = connect_err(&by_ip("require", &other_ca)).await;
    assert!(err.contains("UnknownIssuer"), "{err}");

    // No sslmode = prefer: TLS since the server offers it.
    let mut conn = establish(&pg.url("127.0.0.1", "postgres", "application_name=tls_test"))
        .await
        .unwrap();
    assert!(ssl_in_use(&mut conn).await);
    // libpq checks the chain whenever a root file is given, prefer included.
    let err = connect_err(&by_ip("prefer", &other_ca)).await;
    assert!(err.contains("UnknownIssuer"), "{err}");
    let mut conn = establish(&by_ip("prefer", &ca)).await.unwrap();
    assert!(ssl_in_use(&mut conn).await);

    // verify-full without sslrootcert uses the system store, which does not know our CA.
    let err = connect_err(&pg.url("localhost", "postgres", "sslmode=verify-full")).await;
    assert!(
        err.contains("UnknownIssuer") || err.contains("no system root certificates"),
        "{err}"
    );
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pool_migrations_and_listen_over_tls() {
    let Some((pki, pg)) = pg_or_skip("tls::postgres_pool_migrations_and_listen_over_tls") else {
        return;
    };
    let url = pg.url(
        "localhost",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={}", pki.ca().display()),
    );

    // Start-up wait and migrations (AsyncConnectionWrapper on a blocking thread).
    assert!(
        pool::wait_for_postgres(
            &Secret::new(url.clone()),
            Duration::from_secs(5),
            std::future::pending()
        )
        .await
    );
    let applied = migrations::run(url.clone()).await.unwrap();
    assert!(!applied.is_empty());
    let status = migrations::status(url.clone()).await.unwrap();
    assert!(status.pending.is_empty(), "{:?}", status.pending);

    // The pool (custom_setup) connects over TLS and sees the migrated schema.
    let db = Db::new(&crate::support::config_for_urls(&url, None, "itsur_t_tls"));
    {
        let mut conn = db.conn().await.unwrap();
        assert!(ssl_in_use(&mut conn).await);
        let n = diesel::sql_query("SELECT count(*) AS n FROM campuses")
            .get_result::<Count>(&mut conn)
            .await
            .unwrap()
            .n;
        assert_eq!(n, 0);
    }

    // LISTEN on a dedicated TLS connection: notifications arrive (the connection driver is
    // kept, see store::connect).
    let shutdown = Shutdown::new();
    let wake = Arc::new(Notify::new());
    shutdown.spawn(listen::wake_on_notify(
        Secret::new(url.clone()),
        "tls_test",
        Arc::clone(&wake),
        shutdown.clone(),
    ));
    // The listener wakes once when it has connected and issued LISTEN.
    tokio::time::timeout(Duration::from_secs(10), wake.notified())
        .await
        .expect("LISTEN connection over TLS");
    let notified = wake.notified();
    db.conn()
        .await
        .unwrap()
        .batch_execute("NOTIFY tls_test, 'hello'")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), notified)
        .await
        .expect("a NOTIFY reaches the TLS listener");
    shutdown.trigger();
}

fn redis_or_skip(test: &str) -> Option<(Pki, TlsRedis)> {
    let started = Pki::new().and_then(|pki| TlsRedis::start(&pki).map(|r| (pki, r)));
    match started {
        Ok(both) => Some(both),
        Err(reason) => {
            skip(test, &reason);
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tls_with_ca_file() {
    let Some((pki, mut server)) = redis_or_skip("tls::redis_tls_with_ca_file") else {
        return;
    };
    let url = server.url();
    let prefix = format!("itsur_t_{:08x}", rand::random::<u32>());
    let ca = pki.ca();
    let kv = Kv::new(&url, Some(&ca), &prefix, 2).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = kv.ping().await {
        server.assert_running();
        assert!(Instant::now() < deadline, "TLS redis never answered: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SET/GET through the pool.
    {
        let mut conn = kv.conn().await.unwrap();
        let key = format!("{prefix}:tls");
        redis::cmd("SET")
            .arg(&key)
            .arg("over tls")
            .query_async::<()>(&mut *conn)
            .await
            .unwrap();
        let got: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut *conn)
            .await
            .unwrap();
        assert_eq!(got, "over tls");
    }

    // Pub/sub: the gateway's dedicated SUBSCRIBE connection uses the same TLS client.
    let mut feed = EventFeed::open(&kv, Duration::from_secs(5)).await.unwrap();
    let event: EventEnvelope = serde_json::from_value(serde_json::json!({
        "id": 42,
        "event": "order.created",
        "aggregateType": "order",
        "aggregateId": uuid::Uuid::now_v7(),
        "version": 1,
        "createdAt": "2025-01-01T00:00:00Z",
        "data": {},
        "routing": {"campusId": null, "vendorId": null, "userId": null},
    }))
    .unwrap();
    pubsub::publish(&kv, &[&event]).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), feed.next()).await {
        Ok(Some(FeedItem::Event(got))) => assert_eq!(got.id, 42),
        other => panic!("no event over TLS pub/sub: {other:?}"),
    }

    // Without the private CA (system store) or with the wrong one, the handshake is refused
    // and the error says why.
    for ca_file in [None, Some(pki.other_ca())] {
        let client = kv::open_client(&url, ca_file.as_deref()).unwrap();
        let err = match client.get_multiplexed_async_connection().await {
            Ok(_) => panic!("connected without trusting the server's CA"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("UnknownIssuer"), "{err}");
    }
}

/// Issue 17 item 15: the Redis pool is bb8-redis's manager (the design card's crate), and the
/// tree holds one bb8, shared with diesel-async (two would mean two pool implementations and
/// a redis crate built with its own bb8 support). `redis_tls_with_ca_file` above shows that
/// the pool still honours `rediss://` + `REDIS_CA_FILE` through that manager.
#[test]
fn the_redis_pool_is_bb8_redis_and_the_tree_has_one_bb8() {
    // Compile-time: the pool type is bb8 over bb8-redis's manager.
    let _same: fn(kv::RedisPool) -> bb8::Pool<bb8_redis::RedisConnectionManager> = |p| p;

    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    let versions = |name: &str| -> Vec<String> {
        lock.split("[[package]]")
            .filter(|p| p.lines().any(|l| l == format!("name = \"{name}\"")))
            .filter_map(|p| {
                p.lines()
                    .find_map(|l| l.strip_prefix("version = "))
                    .map(str::to_owned)
            })
            .collect()
    };
    assert_eq!(
        versions("bb8").len(),
        1,
        "bb8 versions in Cargo.lock: {:?}",
        versions("bb8")
    );
    assert_eq!(versions("bb8-redis").len(), 1, "bb8-redis in Cargo.lock");
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let redis_line = manifest
        .lines()
        .find(|l| l.starts_with("redis = "))
        .expect("redis in Cargo.toml");
    assert!(
        !redis_line.contains("\"bb8\""),
        "the redis crate's own bb8 support is still enabled: {redis_line}"
    );
}
