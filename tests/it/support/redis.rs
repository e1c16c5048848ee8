//! `TestRedis`: a random key prefix per test on the shared test Redis; its keys are deleted
//! on Drop.

/// URL of the test Redis.
pub fn redis_url() -> String {
    #[expect(clippy::disallowed_methods, reason = "tests read their own settings")]
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A key prefix of this test's own.
pub struct TestRedis {
    /// Redis URL.
    pub url: String,
    /// Prefix every key and channel of this test carries.
    pub prefix: String,
}

impl TestRedis {
    /// A fresh prefix.
    pub fn new() -> Self {
        Self {
            url: redis_url(),
            prefix: format!("itsur_t_{:012x}", rand::random::<u64>() >> 16),
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

/// A `redis-server` of this test's own, on a free loopback port, for drills that stop or
/// freeze Redis (SIGSTOP / SIGCONT) — never done to the shared test Redis. Killed on Drop.
pub struct PrivateRedis {
    child: std::process::Child,
    /// `redis://127.0.0.1:<port>`.
    pub url: String,
    dir: std::path::PathBuf,
}

impl PrivateRedis {
    /// Starts it and waits until it answers PING; panics (with its words) when it cannot.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("itsur-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("redis-server is installed (scripts/services.sh installs it)");
        let this = Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
            dir,
        };
        let up = super::eventually(std::time::Duration::from_secs(10), || async {
            let Ok(client) = redis::Client::open(this.url.as_str()) else {
                return false;
            };
            match client.get_multiplexed_async_connection().await {
                Ok(mut c) => redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        })
        .await;
        assert!(
            up,
            "the private redis-server on {} did not answer",
            this.url
        );
        this
    }

    fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {}", self.child.id());
    }

    /// Freezes it (SIGSTOP): connections stay open, nothing is answered.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets it run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        // Thawed first so nothing stays stopped should the kill fail.
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
