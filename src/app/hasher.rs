//! The bounded argon2id password hasher every role shares through `Ctx::hasher` (logins,
//! registrations, bulk imports): at most one hash per core at once, each reusing a pooled
//! memory area, and a bounded wait for a free hasher. It lives in `app` because it is a
//! process resource like the pools; the use cases in `service::credentials` call it.
//!
//! L2: depends on the leaf utilities only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{
    self, Output, ParamsString, PasswordHash, PasswordHasher as _, SaltString,
};
use argon2::{Algorithm as Argon2Algorithm, Argon2, Block, Params, Version};
use tokio::sync::Semaphore;

/// Hashes a password with argon2id (default parameters: m=19 MiB, t=2, p=1) on the blocking
/// pool, allocating its own memory. For tools and tests only (seeding, benches, fixtures):
/// request and job paths go through the bounded [`PasswordHasher`] in `Ctx`.
pub async fn hash_password(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
    })
    .await?
}

/// A stored hash for unknown accounts: verifying against it costs the same as a real check,
/// so response time does not reveal which e-mails have accounts.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Q8dWfkFVsFjVpQ+PB0xqnL0Vhj9d9W3Ud6bmu5mrZpY";

/// Largest argon2 memory a stored hash may ask for (64 MiB): a hash with a larger `m` is
/// refused instead of growing a pooled buffer without bound.
const MAX_BLOCKS: usize = 64 * 1024;

/// Limits of the [`PasswordHasher`].
#[derive(Debug, Clone, Copy)]
pub struct HasherSettings {
    /// Hashes computed at once (each holds argon2's 19 MiB of memory): about one per core.
    pub concurrency: usize,
    /// How long a request may wait for a free hasher before it is refused with 503.
    pub queue_timeout: Duration,
}

impl Default for HasherSettings {
    fn default() -> Self {
        Self {
            concurrency: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            queue_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a hash was not computed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every hasher stayed busy for the whole queue timeout: the caller answers 503.
    #[error("password hashing saturated: waited {0:?} for a free hasher")]
    Saturated(Duration),
    /// The input or stored hash is unusable, or the blocking task died.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Bounded argon2id: at most `concurrency` hashes run at once, each reusing one of
/// `concurrency` preallocated memory areas, and callers queue for a permit no longer than
/// `queue_timeout`. Without it every login ran its own hash on a fresh blocking thread with
/// a fresh 19 MiB allocation: a burst of logins took RSS from 15 MiB to 1.8 GiB, which the
/// allocator then kept (issue 17, item 1). Cloning is cheap; clones share the limits.
#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    /// Idle memory areas (argon2 blocks), one per permit at most; reused, never freed.
    memory: Arc<Mutex<Vec<Vec<Block>>>>,
    queue_timeout: Duration,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("available", &self.permits.available_permits())
            .field("queue_timeout", &self.queue_timeout)
            .finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// A hasher with these limits (concurrency at least 1).
    pub fn new(settings: HasherSettings) -> Self {
        let n = settings.concurrency.max(1);
        Self {
            permits: Arc::new(Semaphore::new(n)),
            memory: Arc::new(Mutex::new(Vec::with_capacity(n))),
            queue_timeout: settings.queue_timeout,
        }
    }

    /// Hashes a new password (argon2id defaults, random salt) into its PHC string.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        self.run(move |memory| {
            let params = Params::default();
            let mut salt = [0_u8; 16];
            OsRng.fill_bytes(&mut salt);
            let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
            let mut raw_salt = [0_u8; 16];
            let salt_bytes = salt
                .decode_b64(&mut raw_salt)
                .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
            let argon = Argon2::new(Argon2Algorithm::Argon2id, Version::V0x13, params.clone());
            let output = Output::init_with(Params::DEFAULT_OUTPUT_LEN, |out| {
                argon
                    .hash_password_into_with_memory(
                        password.as_bytes(),
                        salt_bytes,
                        out,
                        blocks(memory, params.block_count())?,
                    )
                    .map_err(|_| password_hash::Error::Password)
            })
            .map_err(|e| anyhow::anyhow!("hashing password: {e}"))?;
            let phc = PasswordHash {
                algorithm: Argon2Algorithm::Argon2id.ident(),
                version: Some(Version::V0x13.into()),
                params: ParamsString::try_from(&params)
                    .map_err(|e| anyhow::anyhow!("params: {e}"))?,
                salt: Some(salt.as_salt()),
                hash: Some(output),
            };
            Ok(phc.to_string())
        })
        .await
    }

    /// Checks a password against a stored hash. With no hash (unknown user) it spends the
    /// same work on a dummy hash and answers false.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, HashError> {
        let known = hash.is_some();
        let ok = self
            .run(move |memory| {
                let stored = hash.as_deref().unwrap_or(DUMMY_HASH);
                let parsed = PasswordHash::new(stored)
                    .map_err(|e| anyhow::anyhow!("stored hash unreadable: {e}"))?;
                let expected = parsed
                    .hash
                    .ok_or_else(|| anyhow::anyhow!("stored hash has no output"))?;
                let algorithm = Argon2Algorithm::try_from(parsed.algorithm)
                    .map_err(|e| anyhow::anyhow!("stored hash algorithm: {e}"))?;
                let version = parsed
                    .version
                    .map(Version::try_from)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("stored hash version: {e}"))?
                    .unwrap_or_default();
                let params = Params::try_from(&parsed)
                    .map_err(|e| anyhow::anyhow!("stored hash params: {e}"))?;
                let mut raw_salt = [0_u8; 64];
                let salt = parsed
                    .salt
                    .ok_or_else(|| anyhow::anyhow!("stored hash has no salt"))?
                    .decode_b64(&mut raw_salt)
                    .map_err(|e| anyhow::anyhow!("stored hash salt: {e}"))?;
                let argon = Argon2::new(algorithm, version, params.clone());
                let computed = Output::init_with(expected.len(), |out| {
                    argon
                        .hash_password_into_with_memory(
                            password.as_bytes(),
                            salt,
                            out,
                            blocks(memory, params.block_count())?,
                        )
                        .map_err(|_| password_hash::Error::Password)
                });
                // A password argon2 refuses (longer than 2^32 bytes) simply does not match.
                // `Output`'s equality is constant-time.
                Ok(computed.is_ok_and(|c| c == expected))
            })
            .await?;
        Ok(ok && known)
    }

    /// Runs `work` on the blocking pool with a permit and a pooled memory area, after
    /// waiting at most `queue_timeout` for the permit. The permit and the memory move into
    /// the blocking task, so a caller that gives up (its request timed out) cannot let more
    /// hashes run than there are permits.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| HashError::Saturated(self.queue_timeout))?
            .map_err(|e| anyhow::anyhow!("hasher closed: {e}"))?;
        let pool = Arc::clone(&self.memory);
        let task = tokio::task::spawn_blocking(move || {
            let mut memory = lock(&pool).pop().unwrap_or_default();
            let out = work(&mut memory);
            lock(&pool).push(memory);
            drop(permit);
            out
        });
        Ok(task
            .await
            .map_err(|e| anyhow::anyhow!("hash task: {e}"))??)
    }
}

fn lock(pool: &Mutex<Vec<Vec<Block>>>) -> std::sync::MutexGuard<'_, Vec<Vec<Block>>> {
    // The pool holds plain buffers: one poisoned by a panicking hash is still usable.
    pool.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The first `count` blocks of a pooled area, growing it once to the largest size asked for
/// (every hash we write asks for the same).
fn blocks(memory: &mut Vec<Block>, count: usize) -> password_hash::Result<&mut [Block]> {
    if count > MAX_BLOCKS {
        return Err(password_hash::Error::ParamValueInvalid(
            password_hash::errors::InvalidValue::TooLong,
        ));
    }
    if memory.len() < count {
        memory.resize(count, Block::default());
    }
    Ok(&mut memory[..count])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_hash_and_verify_through_the_bounded_hasher() {
        use argon2::PasswordVerifier as _;
        let hasher = PasswordHasher::new(HasherSettings::default());
        let hash = hasher.hash("correct horse".to_owned()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        // The PHC string is the standard one: argon2's own verifier accepts it, and hashes
        // made the usual way (seeded accounts, older rows) verify through the pool.
        let parsed = PasswordHash::new(&hash).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        let legacy = hash_password("battery staple".to_owned()).await.unwrap();
        let verify = |p: &str, h: Option<String>| hasher.verify(p.to_owned(), h);
        assert!(verify("correct horse", Some(hash.clone())).await.unwrap());
        assert!(
            verify("battery staple", Some(legacy.clone()))
                .await
                .unwrap()
        );
        assert!(!verify("wrong", Some(hash)).await.unwrap());
        assert!(!verify("wrong", Some(legacy)).await.unwrap());
        assert!(!verify("x", None).await.unwrap());
        // One pooled memory area per hash that ran at once, reused afterwards.
        assert!(lock(&hasher.memory).len() <= HasherSettings::default().concurrency);
    }

    #[tokio::test]
    async fn a_saturated_hasher_refuses_after_its_queue_timeout() {
        let hasher = PasswordHasher::new(HasherSettings {
            concurrency: 1,
            queue_timeout: Duration::from_millis(50),
        });
        // Stands in for a hash in progress: the only permit is taken.
        let held = hasher.permits.clone().acquire_owned().await.unwrap();
        let refused = hasher.verify("second".to_owned(), None).await;
        assert!(
            matches!(refused, Err(HashError::Saturated(_))),
            "{refused:?}"
        );
        drop(held);
        assert!(!hasher.verify("third".to_owned(), None).await.unwrap());
    }
}
