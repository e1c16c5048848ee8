//! Flows across real `itsur worker` processes: a worker killed with SIGKILL in the middle of a
//! step loses nothing and starts nothing twice — the step's job is rescued by another worker
//! after its lease, completes once, and only then is the next step enqueued (in the same
//! transaction as that completion), so the run reaches `succeeded` with every side effect
//! exactly once.

use std::process::Stdio;
use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, RunQueryDsl};
use itsur::app::Ctx;
use serde_json::json;
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::proc::{free_port, itsur, wait_ready};
use crate::support::fixtures::add_campus;
use crate::support::{TestDb, ctx_for, eventually};

struct Worker {
    child: Child,
    log: std::path::PathBuf,
}

impl Worker {
    async fn spawn(db: &TestDb) -> Self {
        Self::spawn_with(db, &[]).await
    }

    /// A worker with extra environment variables.
    async fn spawn_with(db: &TestDb, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log =
            std::env::temp_dir().join(format!("itsur-e2e-flows-{}-{port}.log", std::process::id()));
        let mut cmd: Command = itsur(&["worker"]);
        cmd.env("DATABASE_URL", &db.url)
            .env("METRICS_BIND", format!("127.0.0.1:{port}"))
            .env("JOB_LEASE_SECS", "3")
            .env("JOB_NO_CRON", "true")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
        let child = cmd.spawn().unwrap();
        wait_ready(
            &format!("http://127.0.0.1:{port}/health/ready"),
            Duration::from_secs(60),
        )
        .await;
        Self { child, log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn kill_9(&mut self) {
        let pid = self.child.id().unwrap().to_string();
        assert!(
            Command::new("kill")
                .args(["-KILL", &pid])
                .status()
                .await
                .unwrap()
                .success()
        );
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct S {
    #[diesel(sql_type = Text)]
    s: String,
}

async fn count(ctx: &Ctx, sql: &str) -> i64 {
    let mut conn = ctx.db.conn().await.unwrap();
    diesel::sql_query(sql).load::<N>(&mut conn).await.unwrap()[0].n
}

async fn text(ctx: &Ctx, sql: &str) -> String {
    let mut conn = ctx.db.conn().await.unwrap();
    diesel::sql_query(sql)
        .load::<S>(&mut conn)
        .await
        .unwrap()
        .pop()
        .map(|r| r.s)
        .unwrap_or_default()
}

/// Saves `def` as flow `name` of `campus` and starts a run of it in one transaction.
async fn save_and_start(ctx: &Ctx, campus: Uuid, name: &str, def: &serde_json::Value) -> Uuid {
    let def = itsur::service::flows::validate_definition(def).unwrap();
    let mut conn = ctx.db.conn().await.unwrap();
    conn.transaction(async |conn| -> itsur::service::Result<Uuid> {
        let flow = itsur::service::flows::save_new_flow(conn, campus, name, "", &def, None).await?;
        let run = itsur::service::flows::start_run_in(
            conn,
            &ctx.flow_definitions,
            &flow,
            json!({}),
            None,
            "api",
            None,
        )
        .await?;
        Ok(run.unwrap().id)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_step_loses_nothing_and_starts_nothing_twice() {
    let db = TestDb::new().await;
    let ctx = ctx_for(&db.url, None);
    let campus = add_campus(&ctx, "k9", "k9.edu").await;
    let def = json!({"steps": [
        {"id": "slow", "node": "noop", "input": {"sleepMs": 4000, "audit": true}, "maxAttempts": 3},
        {"id": "next", "node": "noop", "dependsOn": ["slow"], "input": {"audit": true}},
        {"id": "last", "node": "noop", "dependsOn": ["next"], "input": {"audit": true}}
    ]});
    let run = save_and_start(&ctx, campus.id, "k9", &def).await;
    let mut a = Worker::spawn(&db).await;
    let step_running = eventually(Duration::from_secs(30), || async {
        count(
            &ctx,
            &format!(
                "SELECT count(*) AS n FROM jobs j JOIN flow_steps s ON s.job_id = j.id \
             WHERE s.run_id = '{run}' AND s.step_key = 'slow' AND j.state = 'running'"
            ),
        )
        .await
            == 1
    })
    .await;
    assert!(step_running, "worker A runs step slow: {}", a.logs());
    a.kill_9().await;
    assert_eq!(
        count(
            &ctx,
            "SELECT count(*) AS n FROM audit_log WHERE action = 'job.noop'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&ctx, &format!("SELECT count(*) AS n FROM flow_steps WHERE run_id = '{run}' AND step_key = 'next' AND job_id IS NOT NULL")).await,
        0,
        "the next step was not started by the killed worker"
    );

    let b = Worker::spawn(&db).await;
    let done = eventually(Duration::from_secs(90), || async {
        text(
            &ctx,
            &format!("SELECT status AS s FROM flow_runs WHERE id = '{run}'"),
        )
        .await
            != "running"
    })
    .await;
    assert!(done, "the run ended: {}", b.logs());
    assert_eq!(
        text(
            &ctx,
            &format!("SELECT status AS s FROM flow_runs WHERE id = '{run}'")
        )
        .await,
        "succeeded"
    );
    // Each step's side effect happened once; `slow` took two attempts (A's lost one, B's).
    assert_eq!(
        count(
            &ctx,
            "SELECT count(*) AS n FROM audit_log WHERE action = 'job.noop'"
        )
        .await,
        3
    );
    assert_eq!(
        count(&ctx, &format!("SELECT attempt::int8 AS n FROM flow_steps WHERE run_id = '{run}' AND step_key = 'slow'")).await,
        2
    );
    // One job per step ever: nothing was enqueued twice.
    assert_eq!(
        count(&ctx, &format!(
            "SELECT count(*) AS n FROM jobs_history h JOIN flow_steps s ON h.flow_step_id = s.id WHERE s.run_id = '{run}'"
        ))
        .await,
        3
    );
}

/// Runs a one-step flow that e-mails `to` through a worker process whose `SMTP_URL` is `url`
/// and whose trusted roots are only `ca` (`SSL_CERT_FILE`, read by rustls-native-certs as
/// lettre loads its roots); returns the run's final status and the worker's logs.
async fn email_through_worker(url: &str, ca: &std::path::Path) -> (String, String) {
    let db = TestDb::new().await;
    let ctx = ctx_for(&db.url, None);
    let campus = add_campus(&ctx, "mail", "mail.edu").await;
    let user =
        crate::support::fixtures::add_user(&ctx, "ada@mail.edu", "student", Some(campus.id), None)
            .await;
    let def = json!({"steps": [{
        "id": "mail",
        "node": "send_email",
        "input": {"to": {"userIds": [user.id]}, "subject": "Your order is ready", "text": "Pick it up.\n.\nThanks."},
        "maxAttempts": 1
    }]});
    let run = save_and_start(&ctx, campus.id, "mail", &def).await;
    let ca = ca.display().to_string();
    let worker = Worker::spawn_with(
        &db,
        &[
            ("SMTP_URL", url),
            ("SMTP_FROM", "ITSUR Eats <no-reply@itsur.test>"),
            ("SMTP_TIMEOUT_MS", "10000"),
            ("SSL_CERT_FILE", &ca),
        ],
    )
    .await;
    let status_sql = format!("SELECT status AS s FROM flow_runs WHERE id = '{run}'");
    let ended = eventually(Duration::from_secs(60), || async {
        text(&ctx, &status_sql).await != "running"
    })
    .await;
    assert!(ended, "the run ended: {}", worker.logs());
    (text(&ctx, &status_sql).await, worker.logs())
}

/// The e-mail node over STARTTLS (`smtp://…?tls=required`) and implicit TLS (`smtps://`)
/// against the test's own SMTP server with a certificate from a throw-away CA: the message
/// arrives over TLS with the headers the node sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_over_starttls_and_implicit_tls_with_its_headers() {
    use crate::support::smtp::{SmtpServer, TlsMode};
    let pki = match crate::support::tls::Pki::new() {
        Ok(p) => p,
        Err(reason) => {
            crate::support::tls::skip("flows::email_goes_over_starttls_and_implicit_tls", &reason);
            return;
        }
    };
    for mode in [TlsMode::StartTls, TlsMode::Implicit] {
        let smtp = SmtpServer::start_tls(&pki, mode).await;
        let (status, logs) = email_through_worker(&smtp.url, &pki.ca()).await;
        assert_eq!(status, "succeeded", "{mode:?}: {logs}");
        let mails = smtp.mails();
        assert_eq!(mails.len(), 1, "{mode:?}: {mails:?}");
        let m = &mails[0];
        assert!(m.tls, "{mode:?}: the message came over TLS");
        assert_eq!(m.from, "no-reply@itsur.test");
        assert_eq!(m.to, ["ada@mail.edu"]);
        assert_eq!(
            m.header("From").as_deref(),
            Some("\"ITSUR Eats\" <no-reply@itsur.test>")
        );
        assert_eq!(m.header("To").as_deref(), Some("ada@mail.edu"));
        assert_eq!(m.header("Subject").as_deref(), Some("Your order is ready"));
        let id = m.header("Message-ID").unwrap();
        assert!(id.starts_with('<') && id.ends_with("@itsur>"), "{id}");
        assert!(
            m.header("Content-Type")
                .is_some_and(|c| c.starts_with("text/plain")),
            "{:?}",
            m.header("Content-Type")
        );
        assert!(m.header("Date").is_some(), "{}", m.data);
        // The lone dot in the body survived dot-stuffing.
        assert!(m.data.contains("Pick it up.\r\n.\r\nThanks."), "{}", m.data);
    }
}
