//! A login storm must not grow the process (issue 17, item 1): argon2id needs 19 MiB per
//! hash, and with one unbounded blocking thread per login a burst of 64 concurrent failed
//! logins took the real `serve` past a gigabyte, which the allocator then kept. The bounded
//! hasher runs about one hash per core in reused memory, so the peak stays small.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;

use crate::proc::{free_port, itsur, sigterm, wait_exit, wait_ready};
use crate::support::fixtures::{PASSWORD, add_campus, add_user};
use crate::support::{TestDb, client, ctx_for};

const LOGINS: usize = 128;
const CONCURRENCY: usize = 64;
/// The goal for 1,000 logins at concurrency 64 (the bench measures that storm).
const MAX_PEAK_KIB: u64 = 100 * 1024;

/// `VmHWM` (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

#[tokio::test]
async fn a_login_storm_keeps_the_server_small() {
    let db = TestDb::new().await;
    let ctx = ctx_for(&db.url, None);
    let campus = add_campus(&ctx, "mem", "mem.edu").await;
    let user = add_user(&ctx, "ana@mem.edu", "student", Some(campus.id), None).await;

    let port = free_port();
    let mut cmd = itsur(&["serve"]);
    cmd.env("DATABASE_URL", &db.url)
        .env("JWT_SECRET", "e2e-jwt-secret-0123456789abcdef0123456789")
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        // Every request reaches the hasher: no bucket refuses the storm first.
        .env("RATE_LIMIT_IP", "off")
        .env("RATE_LIMIT_AUTH", "off")
        .env("RATE_LIMIT_LOGIN", "off")
        .env("REQUEST_TIMEOUT_MS", "60000");
    let mut child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{base}/health/ready"), Duration::from_secs(30)).await;

    let http = client(Duration::from_secs(120));
    let statuses: Vec<(u16, bool)> = futures_util::stream::iter(0..LOGINS)
        .map(|i| {
            let http = http.clone();
            let url = format!("{base}/auth/login");
            // Mostly wrong passwords and unknown accounts (the attack), a few right ones.
            let body = match i % 8 {
                0 => json!({ "email": user.email, "password": PASSWORD }),
                1..=3 => json!({ "email": user.email, "password": "wrong-password-1" }),
                _ => json!({ "email": format!("nobody{i}@mem.edu"), "password": "whatever-123" }),
            };
            async move {
                let res = http.post(url).json(&body).send().await.unwrap();
                (
                    res.status().as_u16(),
                    res.headers().contains_key("retry-after"),
                )
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let peak = peak_rss_kib(pid);
    sigterm(&child).await;
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)).await, 0);

    for (status, retry_after) in &statuses {
        assert!(
            matches!(status, 200 | 401) || (*status == 503 && *retry_after),
            "a login answered {status} (Retry-After: {retry_after})"
        );
    }
    assert!(
        statuses.iter().any(|(s, _)| *s == 200),
        "no login succeeded: {statuses:?}"
    );
    assert!(
        peak <= MAX_PEAK_KIB,
        "peak RSS {} MiB after {LOGINS} logins at concurrency {CONCURRENCY} (goal ≤ {} MiB)",
        peak / 1024,
        MAX_PEAK_KIB / 1024
    );
}
