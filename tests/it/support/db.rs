//! `TestDb`: a fresh database per test, cloned from a template migrated once per migration
//! set (`CREATE DATABASE … TEMPLATE …`), dropped `WITH (FORCE)` on Drop. Databases left by
//! dead test processes (`itsur_t_<pid>_*`) are swept on first use.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;

use diesel::sql_types::{BigInt, Text};
use diesel::{QueryableByName, sql_query};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use tokio::sync::OnceCell;

/// Admin URL of the test server (a database we may `CREATE DATABASE` from).
pub fn admin_url() -> String {
    #[expect(clippy::disallowed_methods, reason = "tests read their own settings")]
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The URL of database `name` on the test server.
pub fn url_for(name: &str) -> String {
    let admin = admin_url();
    let (base, _) = admin
        .rsplit_once('/')
        .expect("TEST_DATABASE_URL has a path");
    let query = admin
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{base}/{name}{query}")
}

async fn admin() -> AsyncPgConnection {
    AsyncPgConnection::establish(&admin_url())
        .await
        .expect("connect to the test Postgres (TEST_DATABASE_URL); `make test` starts one")
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    datname: String,
}

/// A hash of every migration file, so a changed migration gets a new template.
fn migrations_fingerprint() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut entries: Vec<_> = walk(&dir);
    entries.sort();
    let mut h = DefaultHasher::new();
    for path in entries {
        path.to_string_lossy().hash(&mut h);
        std::fs::read(&path).expect("read migration").hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("migrations dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// Builds (once per process, under an advisory lock across processes) the migrated template.
async fn template() -> String {
    TEMPLATE
        .get_or_init(|| async {
            let name = format!("itsur_tpl_{}", migrations_fingerprint());
            let mut conn = admin().await;
            sweep(&mut conn).await;
            sql_query("SELECT pg_advisory_lock($1)")
                .bind::<BigInt, _>(0x6974_7375_722d_7470_i64)
                .execute(&mut conn)
                .await
                .unwrap();
            let exists = !sql_query("SELECT datname FROM pg_database WHERE datname = $1")
                .bind::<Text, _>(&name)
                .load::<Name>(&mut conn)
                .await
                .unwrap()
                .is_empty();
            if !exists {
                let building = format!("{name}_build");
                conn.batch_execute(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
                    .await
                    .unwrap();
                conn.batch_execute(&format!("CREATE DATABASE {building}"))
                    .await
                    .unwrap();
                itsur::store::migrations::run(url_for(&building))
                    .await
                    .expect("migrate the template");
                // Publish atomically: a half-built template is never cloned.
                conn.batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}"))
                    .await
                    .unwrap();
            }
            sql_query("SELECT pg_advisory_unlock($1)")
                .bind::<BigInt, _>(0x6974_7375_722d_7470_i64)
                .execute(&mut conn)
                .await
                .unwrap();
            name
        })
        .await
        .clone()
}

/// Drops databases of test processes that no longer run.
async fn sweep(conn: &mut AsyncPgConnection) {
    let names = sql_query("SELECT datname FROM pg_database WHERE datname LIKE 'itsur\\_t\\_%'")
        .load::<Name>(conn)
        .await
        .unwrap();
    for Name { datname } in names {
        // Templates of other migration sets are left alone: another checkout on this machine
        // (a worktree, a CI run) may be cloning them right now. They are a few MiB each.
        let stale = datname.strip_prefix("itsur_t_").is_some_and(|rest| {
            let pid = rest.split('_').next().unwrap_or("");
            !Path::new(&format!("/proc/{pid}")).exists()
        });
        if stale {
            // Best effort: a database still in use by a live run stays.
            let _ = conn
                .batch_execute(&format!("DROP DATABASE IF EXISTS {datname}"))
                .await;
        }
    }
}

/// A database of this test's own.
pub struct TestDb {
    /// Database name.
    pub name: String,
    /// Connection URL.
    pub url: String,
}

impl TestDb {
    /// A fresh, migrated database.
    pub async fn new() -> Self {
        let template = template().await;
        Self::create(Some(&template)).await
    }

    /// A fresh database with no migrations applied.
    pub async fn empty() -> Self {
        // Still sweep and make sure the server answers, like `new`.
        let _ = template().await;
        Self::create(None).await
    }

    async fn create(template: Option<&str>) -> Self {
        let name = format!(
            "itsur_t_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let mut conn = admin().await;
        let sql = match template {
            Some(t) => format!("CREATE DATABASE {name} TEMPLATE {t}"),
            None => format!("CREATE DATABASE {name}"),
        };
        let mut attempt = 0;
        loop {
            match conn.batch_execute(&sql).await {
                Ok(()) => break,
                // Concurrent clones of one template can collide briefly; retry a few times.
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    eprintln!("retrying {sql}: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{sql}: {e}"),
            }
        }
        let url = url_for(&name);
        Self { name, url }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside or outside a runtime; a thread with its own runtime works in both.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = AsyncPgConnection::establish(&admin_url()).await {
                    let _ = conn
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}
