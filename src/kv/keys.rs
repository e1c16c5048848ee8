//! The only place Redis keys and channels are spelled: `<prefix>:<shape>:<parts>`.

/// Builds keys under one deployment prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The deployment prefix (used to scan/clean a test's keys).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Cached validity of a session: `<prefix>:session:<id>`.
    pub fn session(&self, session_id: &str) -> String {
        format!("{}:session:{session_id}", self.prefix)
    }

    /// Sliding-window log of one rate-limit subject: `<prefix>:rate:<bucket>:<subject>`.
    /// `subject` is an IP (or /64), a user id or a hash: never an e-mail or a token.
    pub fn rate(&self, bucket: &str, subject: &str) -> String {
        format!("{}:rate:{bucket}:{subject}", self.prefix)
    }

    /// Shared state (a small hash) of one circuit breaker: `<prefix>:breaker:<name>`.
    pub fn breaker(&self, name: &str) -> String {
        format!("{}:breaker:{name}", self.prefix)
    }

    /// Sockets open per `serve` instance (a hash: instance id → `<count> <ms>`):
    /// `<prefix>:sockets`.
    pub fn sockets(&self) -> String {
        format!("{}:sockets", self.prefix)
    }

    /// The pub/sub channel carrying outbox events to every gateway instance.
    pub fn events_channel(&self) -> String {
        format!("{}:events", self.prefix)
    }
}
