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
