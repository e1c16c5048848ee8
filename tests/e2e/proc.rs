//! Spawning the binary: environment, free ports, readiness polling, signals.

use std::net::TcpListener;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_itsur");

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A command for the binary with a clean, explicit environment.
pub fn itsur(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs to completion, returning (status code, stdout, stderr).
pub async fn output(mut cmd: Command) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("command finished")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sends SIGTERM.
pub async fn sigterm(child: &Child) {
    let pid = child.id().unwrap().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
}

/// Waits until `url` answers 200 (or panics with the child's stderr after `deadline`).
pub async fn wait_ready(url: &str, deadline: Duration) {
    let http = crate::support::client(Duration::from_secs(1));
    let ok = crate::support::eventually(deadline, || async {
        matches!(http.get(url).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(ok, "{url} never became ready");
}

/// Waits for the child to exit, returning its status code.
pub async fn wait_exit(child: &mut Child, deadline: Duration) -> i32 {
    tokio::time::timeout(deadline, child.wait())
        .await
        .expect("process exited in time")
        .unwrap()
        .code()
        .unwrap_or(-1)
}

/// A child's stderr, read in the background so a test can wait for a log line (the event
/// itself) instead of sleeping.
pub struct Log(Arc<Mutex<String>>);

impl Log {
    /// Takes over `child`'s piped stderr.
    pub fn capture(child: &mut Child) -> Self {
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        let stderr = child.stderr.take().expect("stderr is piped");
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut t = sink.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
            }
        });
        Self(text)
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Waits until `needle` was logged at least `times` times; false after `deadline`.
    pub async fn wait_for(&self, needle: &str, times: usize, deadline: Duration) -> bool {
        crate::support::eventually(deadline, || async {
            self.text().matches(needle).count() >= times
        })
        .await
    }
}
