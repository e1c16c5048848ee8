//! The six roles as processes: help, configuration errors, migrate, serve, worker, relay,
//! all and healthcheck.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proc::{Log, free_port, itsur, output, sigterm, wait_exit, wait_ready};
use crate::support::{TestDb, TestRedis};

const SECRET: &str = "e2e-secret-that-is-long-enough-0123456789";
const ROLES: [&str; 6] = [
    "serve",
    "worker",
    "outbox-relay",
    "migrate",
    "healthcheck",
    "all",
];

#[tokio::test]
async fn every_subcommand_documents_its_settings() {
    let (code, out, _) = output(itsur(&["--version"])).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("itsur "), "{out}");

    let (code, out, _) = output(itsur(&["--help"])).await;
    assert_eq!(code, 0);
    for role in ROLES {
        assert!(out.contains(role), "top-level help lists {role}: {out}");
    }
    for role in ROLES {
        let (code, out, err) = output(itsur(&[role, "--help"])).await;
        assert_eq!(code, 0, "{role} --help: {err}");
        let expected: &[&str] = match role {
            "serve" | "all" => &[
                "DATABASE_URL",
                "REDIS_URL",
                "JWT_SECRET",
                "BIND_ADDR",
                "LOG_FORMAT",
                "RUST_LOG",
            ],
            "worker" | "outbox-relay" => {
                &["DATABASE_URL", "REDIS_URL", "METRICS_BIND", "LOG_FORMAT"]
            }
            "migrate" => &["DATABASE_URL"],
            _ => &["HEALTHCHECK_URL", "BIND_ADDR", "METRICS_BIND"],
        };
        for var in expected {
            assert!(
                out.contains(&format!("[env: {var}")),
                "{role} --help documents {var}: {out}"
            );
        }
    }
}

/// (role, environment, the variable the error must name)
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

#[tokio::test]
async fn bad_settings_exit_2_with_one_line_naming_the_variable() {
    let db = "postgres://postgres@127.0.0.1:1/x";
    let cases: Vec<Case<'_>> = vec![
        ("serve", vec![("JWT_SECRET", SECRET)], "DATABASE_URL"),
        ("serve", vec![("DATABASE_URL", db)], "JWT_SECRET"),
        (
            "serve",
            vec![("DATABASE_URL", db), ("JWT_SECRET", "short")],
            "JWT_SECRET",
        ),
        (
            "all",
            vec![
                ("DATABASE_URL", db),
                ("JWT_SECRET", "short"),
                ("ITSUR_ENV", "staging"),
            ],
            "ITSUR_ENV",
        ),
        (
            "serve",
            vec![("DATABASE_URL", "mysql://x/y"), ("JWT_SECRET", SECRET)],
            "DATABASE_URL",
        ),
        (
            "serve",
            vec![
                ("DATABASE_URL", db),
                ("JWT_SECRET", SECRET),
                ("BIND_ADDR", "nowhere"),
            ],
            "BIND_ADDR",
        ),
        (
            "worker",
            vec![("DATABASE_URL", db), ("LOG_FORMAT", "xml")],
            "LOG_FORMAT",
        ),
        (
            "worker",
            vec![("DATABASE_URL", db), ("DB_POOL_SIZE", "0")],
            "DB_POOL_SIZE",
        ),
        (
            "worker",
            vec![("DATABASE_URL", db), ("REDIS_URL", "http://x")],
            "REDIS_URL",
        ),
        (
            "outbox-relay",
            vec![("DATABASE_URL", db), ("METRICS_BIND", "::nope")],
            "METRICS_BIND",
        ),
        (
            "worker",
            vec![
                ("DATABASE_URL", db),
                ("REDIS_URL", "rediss://x:6380"),
                ("REDIS_CA_FILE", "/nonexistent/ca.pem"),
            ],
            "REDIS_CA_FILE",
        ),
        (
            "serve",
            vec![
                (
                    "DATABASE_URL",
                    "postgres://u:pw@h/x?sslmode=verify-everything",
                ),
                ("JWT_SECRET", SECRET),
            ],
            "sslmode",
        ),
        ("migrate", vec![], "DATABASE_URL"),
        (
            "migrate",
            vec![(
                "DATABASE_URL",
                "postgres://h/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            )],
            "sslrootcert",
        ),
        (
            "migrate",
            vec![("DATABASE_URL", "file:///tmp/db")],
            "DATABASE_URL",
        ),
    ];
    for (role, env, var) in cases {
        let mut cmd = itsur(&[role]);
        cmd.env_remove("LOG_FORMAT");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let (code, out, err) = output(cmd).await;
        assert_eq!(code, 2, "{role} {env:?}: exit 2, got {code}: {err}");
        assert!(out.is_empty(), "{role} {env:?}: nothing on stdout: {out}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{role} {env:?}: one line: {err}"
        );
        assert!(err.contains(var), "{role} {env:?}: names {var}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
        assert!(!err.contains(SECRET), "never prints a secret: {err}");
    }
    // A weak secret is fine in development (the process then waits for Postgres; stop it).
    let mut cmd = itsur(&["serve"]);
    cmd.env("DATABASE_URL", db)
        .env("JWT_SECRET", "short")
        .env("ITSUR_ENV", "dev")
        .env("BIND_ADDR", format!("127.0.0.1:{}", free_port()));
    let mut child = cmd.spawn().unwrap();
    // Past validation, the role waits for Postgres (nothing listens on that port).
    let log = Log::capture(&mut child);
    assert!(
        log.wait_for("waiting for postgres", 1, Duration::from_secs(30))
            .await,
        "{}",
        log.text()
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "dev accepts a short JWT_SECRET"
    );
    sigterm(&child).await;
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)).await, 0);
}

#[tokio::test]
async fn two_concurrent_migrations_apply_the_schema_once() {
    let db = TestDb::empty().await;
    let run = || {
        let mut cmd = itsur(&["migrate"]);
        cmd.env("DATABASE_URL", &db.url);
        output(cmd)
    };
    let ((c1, o1, e1), (c2, o2, e2)) = tokio::join!(run(), run());
    assert_eq!((c1, c2), (0, 0), "{e1}\n{e2}");
    let applied: Vec<&str> = o1
        .lines()
        .chain(o2.lines())
        .filter(|l| l.starts_with("applied"))
        .collect();
    let embedded = itsur::store::migrations::status(db.url.clone())
        .await
        .unwrap();
    assert!(embedded.pending.is_empty());
    assert_eq!(
        applied.len(),
        embedded.applied.len(),
        "each migration applied by exactly one process: {o1}\n{o2}"
    );

    let mut cmd = itsur(&["migrate", "--status"]);
    cmd.env("DATABASE_URL", &db.url);
    let (code, out, _) = output(cmd).await;
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("{} applied, 0 pending", embedded.applied.len())),
        "{out}"
    );
}

#[tokio::test]
async fn serve_is_ready_observable_and_drains_on_sigterm() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let port = free_port();
    let mut cmd = itsur(&["serve"]);
    cmd.env("DATABASE_URL", &db.url)
        .env("REDIS_URL", &redis.url)
        .env("REDIS_PREFIX", &redis.prefix)
        .env("JWT_SECRET", SECRET)
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("HTTP_WORKERS", "2");
    let mut child = cmd.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{base}/health/ready"), Duration::from_secs(30)).await;

    let http = crate::support::client(Duration::from_secs(5));
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("http_requests_total{"), "{metrics}");

    // healthcheck finds the role through the same BIND_ADDR the role was given.
    let mut hc = itsur(&["healthcheck"]);
    hc.env("BIND_ADDR", format!("127.0.0.1:{port}"));
    assert_eq!(output(hc).await.0, 0);

    // A request in flight when SIGTERM arrives: the handler is waiting for the rest of a
    // slowly uploaded body. Drain lets it finish; only then does the process exit.
    let body = br#"{"email":"nobody@a.edu","password":"not-the-password"}"#;
    let mut slow = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // `Expect: 100-continue` makes the server say when it has taken the request in (the
    // `100 Continue` comes once the head is parsed and the request dispatched): SIGTERM is
    // sent only then, without guessing with a sleep.
    let head = format!(
        "POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let mut interim = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut byte = [0_u8; 1];
        while !interim.ends_with(b"\r\n\r\n") {
            slow.read_exact(&mut byte).await.unwrap();
            interim.push(byte[0]);
        }
    })
    .await
    .expect("100 Continue");
    assert!(
        interim.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    slow.write_all(&body[..10]).await.unwrap();
    sigterm(&child).await;
    // Readiness turns false while draining; new connections are refused.
    let refused = crate::support::eventually(Duration::from_secs(5), || async {
        TcpStream::connect(("127.0.0.1", port)).await.is_err()
    })
    .await;
    assert!(refused, "stopped accepting new connections");
    assert!(
        child.try_wait().unwrap().is_none(),
        "still draining the slow request"
    );
    slow.write_all(&body[10..]).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), slow.read_to_string(&mut response))
        .await
        .expect("in-flight request answered")
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    assert!(response.contains("application/problem+json"), "{response}");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(15)).await, 0);
}

#[tokio::test]
async fn healthcheck_fails_fast_when_nothing_listens() {
    let port = free_port();
    let mut cmd = itsur(&["healthcheck"]);
    cmd.env(
        "HEALTHCHECK_URL",
        format!("http://127.0.0.1:{port}/health/ready"),
    );
    let (code, _, err) = output(cmd).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&port.to_string()),
        "names the probed address: {err}"
    );

    // A black hole (accepts, never answers): the 2 s deadline still holds.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut cmd = itsur(&["healthcheck"]);
    cmd.env("HEALTHCHECK_URL", format!("http://{addr}/health/ready"));
    let (code, _, err) = output(cmd).await;
    assert_eq!(code, 1, "{err}");
    // The deadline ended it (its duration is the contract, checked without a stopwatch).
    assert!(err.contains("no answer within 2s"), "{err}");
    hold.abort();
}

async fn ops_role_runs_and_stops(role: &str) {
    let db = TestDb::new().await;
    let port = free_port();
    let mut cmd = itsur(&[role]);
    cmd.env("DATABASE_URL", &db.url)
        .env("METRICS_BIND", format!("127.0.0.1:{port}"));
    let mut child = cmd.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{base}/health/ready"), Duration::from_secs(30)).await;
    let http = crate::support::client(Duration::from_secs(5));
    let detail: serde_json::Value = http
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["status"], "ready", "{detail}");
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("itsur_ready 1"), "{metrics}");

    let mut hc = itsur(&["healthcheck"]);
    hc.env("METRICS_BIND", format!("127.0.0.1:{port}"));
    assert_eq!(output(hc).await.0, 0);

    sigterm(&child).await;
    assert_eq!(wait_exit(&mut child, Duration::from_secs(15)).await, 0);
}

#[tokio::test]
async fn worker_reports_health_and_stops_cleanly() {
    ops_role_runs_and_stops("worker").await;
}

#[tokio::test]
async fn outbox_relay_reports_health_and_stops_cleanly() {
    ops_role_runs_and_stops("outbox-relay").await;
}

#[tokio::test]
async fn all_migrates_then_serves_and_stops_cleanly() {
    let db = TestDb::empty().await;
    let port = free_port();
    let mut cmd = itsur(&["all"]);
    cmd.env("DATABASE_URL", &db.url)
        .env("JWT_SECRET", SECRET)
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("HTTP_WORKERS", "1");
    let mut child = cmd.spawn().unwrap();
    wait_ready(
        &format!("http://127.0.0.1:{port}/health/ready"),
        Duration::from_secs(30),
    )
    .await;
    assert!(
        itsur::store::migrations::status(db.url.clone())
            .await
            .unwrap()
            .pending
            .is_empty()
    );
    sigterm(&child).await;
    assert_eq!(wait_exit(&mut child, Duration::from_secs(15)).await, 0);
}

#[tokio::test]
async fn a_role_waits_for_postgres_instead_of_dying() {
    // Postgres is "down" (nothing on the port) when the role starts, then comes up.
    let db = TestDb::new().await;
    let (proxy, via) = crate::support::chaos::ChaosProxy::in_front_of(&db.url).await;
    proxy.cut();
    let port = free_port();
    let mut cmd = itsur(&["worker"]);
    cmd.env("DATABASE_URL", &via)
        .env("METRICS_BIND", format!("127.0.0.1:{port}"));
    let mut child = cmd.spawn().unwrap();
    let log = Log::capture(&mut child);
    // Two failed attempts: it retried instead of dying.
    assert!(
        log.wait_for("waiting for postgres", 2, Duration::from_secs(30))
            .await,
        "{}",
        log.text()
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "still waiting, not dead"
    );
    proxy.restore();
    wait_ready(
        &format!("http://127.0.0.1:{port}/health/ready"),
        Duration::from_secs(30),
    )
    .await;
    sigterm(&child).await;
    assert_eq!(wait_exit(&mut child, Duration::from_secs(15)).await, 0);
    let stderr = log.text();
    assert!(
        stderr.contains("waiting for postgres"),
        "one log line per attempt: {stderr}"
    );
}

#[tokio::test]
async fn speaks_the_systemd_notify_protocol() {
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(format!("itsur-notify-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&path).unwrap();
    let port = free_port();
    let mut cmd = itsur(&["worker"]);
    cmd.env("DATABASE_URL", &db.url)
        .env("METRICS_BIND", format!("127.0.0.1:{port}"))
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "400000");
    let mut child = cmd.spawn().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0_u8; 256];
    let recv = |seen: &mut Vec<String>, buf: &mut [u8; 256]| {
        let n = sock.try_recv(buf).unwrap_or(0);
        if n > 0 {
            seen.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
        }
    };
    let got = |seen: &[String], what: &str| seen.iter().any(|m| m == what);
    let start = Instant::now();
    while !(got(&seen, "READY=1") && got(&seen, "WATCHDOG=1"))
        && start.elapsed() < Duration::from_secs(20)
    {
        let _ = tokio::time::timeout(Duration::from_millis(200), sock.readable()).await;
        recv(&mut seen, &mut buf);
    }
    assert!(got(&seen, "READY=1"), "READY=1 sent: {seen:?}");
    assert!(got(&seen, "WATCHDOG=1"), "watchdog pings: {seen:?}");
    sigterm(&child).await;
    let start = Instant::now();
    while !got(&seen, "STOPPING=1") && start.elapsed() < Duration::from_secs(10) {
        let _ = tokio::time::timeout(Duration::from_millis(200), sock.readable()).await;
        recv(&mut seen, &mut buf);
    }
    assert!(got(&seen, "STOPPING=1"), "STOPPING=1 sent: {seen:?}");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(15)).await, 0);
    std::fs::remove_dir_all(&dir).ok();
}
