//! Circuit breakers for outbound calls (push providers, webhooks).
//!
//! States: **closed** (calls flow; outcomes counted in a fixed window of
//! `BREAKER_WINDOW_SECS`) → **open** once the window has seen `BREAKER_MIN_CALLS` calls and
//! failures / calls ≥ `BREAKER_FAILURE_RATIO`, or after `BREAKER_CONSECUTIVE_FAILURES` in a
//! row when that is set → after `BREAKER_COOLDOWN_SECS` ONE caller gets a **half-open** trial
//! (the others are still refused; a trial whose caller vanished is re-granted after one more
//! cool-down) → **closed** with fresh counts when the trial succeeds, **open** again when it
//! fails.
//!
//! State is shared by every process through Redis: one small hash per breaker
//! (`kv::keys::breaker`) updated by atomic Lua scripts using Redis `TIME`, so ten workers see
//! one breaker and a provider outage stops all of them after the same threshold. Without
//! Redis (not configured, or failing) the same state machine runs in process; the switch is
//! logged once per transition and Redis is tried again after [`REDIS_RETRY_AFTER`].
//!
//! Exposed as the gauge `circuit_breaker_state{name}` (0 closed, 1 half-open, 2 open) and in
//! `/health` detail (never in readiness: an open breaker is the system protecting itself).
//!
//! L1: depends on `kv`, `config` and `telemetry`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::BreakerConfig;
use crate::kv::Kv;
use crate::telemetry::CIRCUIT_BREAKER_STATE;

/// After a Redis failure, how long breakers use local state before trying Redis again.
pub const REDIS_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Deadline of one Redis update; past it the local state decides.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// A breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Calls flow.
    Closed,
    /// One trial call is allowed to probe the dependency.
    HalfOpen,
    /// Calls are refused until the cool-down ends.
    Open,
}

impl State {
    /// Gauge value: 0 closed, 1 half-open, 2 open.
    pub fn code(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }

    fn from_code(code: i64) -> Self {
        match code {
            1 => Self::HalfOpen,
            2 => Self::Open,
            _ => Self::Closed,
        }
    }
}

/// Permission to make one call; hand it back to [`CircuitBreaker::record`].
#[derive(Debug)]
#[must_use = "record the outcome of the call with CircuitBreaker::record"]
pub struct Permit {
    /// This call is the half-open trial: its outcome closes or re-opens the breaker.
    trial: bool,
}

/// The breaker refused the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker open; retry in {retry_after:?}")]
pub struct Rejected {
    /// When the next trial may be allowed.
    pub retry_after: Duration,
}

/// KEYS[1] = breaker hash; ARGV = cool-down (ms), trial lease (ms), key TTL (ms).
/// Returns {allowed (0|1), trial (0|1), retry after (ms), state code, transitioned (0|1)}.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local st = redis.call('HGET', KEYS[1], 'state') or 'closed'
if st == 'closed' then return {1, 0, 0, 0, 0} end
if st == 'open' then
  local ready = tonumber(redis.call('HGET', KEYS[1], 'opened_at') or '0') + tonumber(ARGV[1])
  if now < ready then return {0, 0, ready - now, 2, 0} end
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'trial_until', now + tonumber(ARGV[2]))
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1, 1, 0, 1, 1}
end
local trial_until = tonumber(redis.call('HGET', KEYS[1], 'trial_until') or '0')
if now < trial_until then return {0, 0, trial_until - now, 1, 0} end
redis.call('HSET', KEYS[1], 'trial_until', now + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, 1, 0, 1, 0}
";

/// KEYS[1] = breaker hash; ARGV = success (0|1), trial (0|1), window (ms), min calls,
/// failure ratio, consecutive failures (0 = off), key TTL (ms).
/// Returns {state code, transitioned (0|1)}.
const RECORD: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local st = redis.call('HGET', KEYS[1], 'state') or 'closed'
local ok = ARGV[1] == '1'
if ARGV[2] == '1' then
  if st ~= 'half_open' then
    if st == 'open' then return {2, 0} end
    return {0, 0}
  end
  if ok then
    redis.call('DEL', KEYS[1])
    return {0, 1}
  end
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now)
  redis.call('HDEL', KEYS[1], 'trial_until')
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
  return {2, 1}
end
if st == 'open' then return {2, 0} end
if st == 'half_open' then return {1, 0} end
local ws = tonumber(redis.call('HGET', KEYS[1], 'window_start') or '0')
if now - ws >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'window_start', now, 'calls', 0, 'failures', 0)
end
local calls = redis.call('HINCRBY', KEYS[1], 'calls', 1)
local failures
local consecutive
if ok then
  failures = tonumber(redis.call('HGET', KEYS[1], 'failures') or '0')
  redis.call('HSET', KEYS[1], 'consecutive', 0)
  consecutive = 0
else
  failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
  consecutive = redis.call('HINCRBY', KEYS[1], 'consecutive', 1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[7])
local threshold = tonumber(ARGV[6])
if (calls >= tonumber(ARGV[4]) and failures >= tonumber(ARGV[5]) * calls)
   or (threshold > 0 and consecutive >= threshold) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now)
  return {2, 1}
end
return {0, 0}
";

/// One named breaker; share it through [`Breakers`].
pub struct CircuitBreaker {
    name: String,
    policy: BreakerConfig,
    kv: Option<Kv>,
    acquire_script: redis::Script,
    record_script: redis::Script,
    local: Mutex<Local>,
    /// True while Redis is failing and the local state decides.
    degraded: AtomicBool,
    retry_redis_at_ms: AtomicU64,
    epoch: Instant,
}

/// The in-process state machine (no Redis, or Redis failing).
struct Local {
    state: State,
    window_start: Instant,
    calls: u32,
    failures: u32,
    consecutive: u32,
    opened_at: Instant,
    trial_until: Instant,
}

impl CircuitBreaker {
    /// A breaker named `name` (also its Redis key and its metric label).
    pub fn new(name: &str, policy: BreakerConfig, kv: Option<Kv>) -> Self {
        let now = Instant::now();
        let this = Self {
            name: name.to_owned(),
            policy,
            kv,
            acquire_script: redis::Script::new(ACQUIRE),
            record_script: redis::Script::new(RECORD),
            local: Mutex::new(Local {
                state: State::Closed,
                window_start: now,
                calls: 0,
                failures: 0,
                consecutive: 0,
                opened_at: now,
                trial_until: now,
            }),
            degraded: AtomicBool::new(false),
            retry_redis_at_ms: AtomicU64::new(0),
            epoch: now,
        };
        this.publish(State::Closed);
        this
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Asks to make one call: a [`Permit`] to pass back to [`record`](Self::record), or
    /// [`Rejected`] while the breaker is open (or a half-open trial is already running).
    pub async fn acquire(&self) -> Result<Permit, Rejected> {
        let shared = match self.kv_if_usable() {
            Some(kv) => self.redis_acquire(kv).await,
            None => None,
        };
        let (allowed, trial, retry_after, state, transitioned) =
            shared.unwrap_or_else(|| self.local_acquire(Instant::now()));
        self.publish(state);
        if transitioned {
            tracing::info!(breaker = %self.name, "circuit breaker half-open: one trial call");
        }
        if allowed {
            Ok(Permit { trial })
        } else {
            Err(Rejected { retry_after })
        }
    }

    /// Records the outcome of a call made under `permit`. Failures are what the caller
    /// decides they are (timeouts, 5xx, 429, bad credentials); a provider saying "this device
    /// token is dead" is a success of the provider.
    pub async fn record(&self, permit: Permit, success: bool) {
        let shared = match self.kv_if_usable() {
            Some(kv) => self.redis_record(kv, permit.trial, success).await,
            None => None,
        };
        let (state, transitioned) =
            shared.unwrap_or_else(|| self.local_record(permit.trial, success, Instant::now()));
        self.publish(state);
        if transitioned {
            match state {
                State::Open => {
                    tracing::warn!(breaker = %self.name, "circuit breaker opened: calls refused during the cool-down");
                }
                State::Closed => {
                    tracing::info!(breaker = %self.name, "circuit breaker closed: dependency recovered");
                }
                State::HalfOpen => {}
            }
        }
    }

    /// The current state, for `/health` (shared state when Redis answers).
    pub async fn state(&self) -> State {
        if let Some(kv) = self.kv_if_usable() {
            let read = async {
                let mut conn = kv.conn().await.ok()?;
                let st: Option<String> = redis::cmd("HGET")
                    .arg(kv.keys.breaker(&self.name))
                    .arg("state")
                    .query_async(&mut *conn)
                    .await
                    .ok()?;
                Some(match st.as_deref() {
                    Some("open") => State::Open,
                    Some("half_open") => State::HalfOpen,
                    _ => State::Closed,
                })
            };
            if let Ok(Some(state)) = tokio::time::timeout(REDIS_TIMEOUT, read).await {
                self.publish(state);
                return state;
            }
        }
        self.lock_local().state
    }

    fn publish(&self, state: State) {
        metrics::gauge!(CIRCUIT_BREAKER_STATE, "name" => self.name.clone())
            .set(f64::from(state.code()));
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    fn kv_if_usable(&self) -> Option<&Kv> {
        let kv = self.kv.as_ref()?;
        (self.now_ms() >= self.retry_redis_at_ms.load(Ordering::Relaxed)).then_some(kv)
    }

    fn redis_failed(&self, kv: &Kv, error: &str, timed_out: bool) {
        if timed_out {
            kv.mark_down();
        }
        let retry = self.now_ms().saturating_add(millis(REDIS_RETRY_AFTER));
        self.retry_redis_at_ms.store(retry, Ordering::Relaxed);
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(breaker = %self.name, error, "circuit breaker: redis unavailable, using local state");
        }
    }

    fn redis_ok(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!(breaker = %self.name, "circuit breaker: redis is back, state is shared again");
        }
    }

    fn ttl_ms(&self) -> u64 {
        millis((self.policy.window + self.policy.cooldown) * 4).max(1000)
    }

    fn lease(&self) -> Duration {
        // A trial whose caller died must not block the breaker forever; one more cool-down
        // is the natural bound (provider calls have their own, shorter, timeouts).
        self.policy.cooldown.max(Duration::from_millis(100))
    }

    async fn redis_acquire(&self, kv: &Kv) -> Option<(bool, bool, Duration, State, bool)> {
        let fut = async {
            let mut conn = kv.conn().await.map_err(|e| e.to_string())?;
            let mut inv = self.acquire_script.key(kv.keys.breaker(&self.name));
            inv.arg(millis(self.policy.cooldown))
                .arg(millis(self.lease()))
                .arg(self.ttl_ms());
            let r: (i64, i64, i64, i64, i64) = inv
                .invoke_async(&mut *conn)
                .await
                .map_err(|e| redis_error(kv, &e))?;
            Ok::<_, String>(r)
        };
        match tokio::time::timeout(REDIS_TIMEOUT, fut).await {
            Ok(Ok((allowed, trial, retry_ms, code, transitioned))) => {
                self.redis_ok();
                Some((
                    allowed == 1,
                    trial == 1,
                    Duration::from_millis(u64::try_from(retry_ms.max(0)).unwrap_or(0)),
                    State::from_code(code),
                    transitioned == 1,
                ))
            }
            Ok(Err(e)) => {
                self.redis_failed(kv, &e, false);
                None
            }
            Err(_) => {
                self.redis_failed(kv, "no answer in time", true);
                None
            }
        }
    }

    async fn redis_record(&self, kv: &Kv, trial: bool, success: bool) -> Option<(State, bool)> {
        let fut = async {
            let mut conn = kv.conn().await.map_err(|e| e.to_string())?;
            let mut inv = self.record_script.key(kv.keys.breaker(&self.name));
            inv.arg(u8::from(success))
                .arg(u8::from(trial))
                .arg(millis(self.policy.window))
                .arg(self.policy.min_calls)
                .arg(self.policy.failure_ratio)
                .arg(self.policy.consecutive_failures.unwrap_or(0))
                .arg(self.ttl_ms());
            let r: (i64, i64) = inv
                .invoke_async(&mut *conn)
                .await
                .map_err(|e| redis_error(kv, &e))?;
            Ok::<_, String>(r)
        };
        match tokio::time::timeout(REDIS_TIMEOUT, fut).await {
            Ok(Ok((code, transitioned))) => {
                self.redis_ok();
                Some((State::from_code(code), transitioned == 1))
            }
            Ok(Err(e)) => {
                self.redis_failed(kv, &e, false);
                None
            }
            Err(_) => {
                self.redis_failed(kv, "no answer in time", true);
                None
            }
        }
    }

    fn lock_local(&self) -> MutexGuard<'_, Local> {
        // Poisoning means a panic between two plain assignments; the state is still usable.
        match self.local.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn local_acquire(&self, now: Instant) -> (bool, bool, Duration, State, bool) {
        let mut l = self.lock_local();
        match l.state {
            State::Closed => (true, false, Duration::ZERO, State::Closed, false),
            State::Open => {
                let ready = l.opened_at + self.policy.cooldown;
                if now < ready {
                    return (false, false, ready - now, State::Open, false);
                }
                l.state = State::HalfOpen;
                l.trial_until = now + self.lease();
                (true, true, Duration::ZERO, State::HalfOpen, true)
            }
            State::HalfOpen => {
                if now < l.trial_until {
                    return (false, false, l.trial_until - now, State::HalfOpen, false);
                }
                l.trial_until = now + self.lease();
                (true, true, Duration::ZERO, State::HalfOpen, false)
            }
        }
    }

    fn local_record(&self, trial: bool, success: bool, now: Instant) -> (State, bool) {
        let mut l = self.lock_local();
        if trial {
            if l.state != State::HalfOpen {
                return (l.state, false);
            }
            if success {
                l.state = State::Closed;
                l.window_start = now;
                l.calls = 0;
                l.failures = 0;
                l.consecutive = 0;
            } else {
                l.state = State::Open;
                l.opened_at = now;
            }
            return (l.state, true);
        }
        if l.state != State::Closed {
            // A call admitted before the breaker opened: its outcome no longer matters.
            return (l.state, false);
        }
        if now.duration_since(l.window_start) >= self.policy.window {
            l.window_start = now;
            l.calls = 0;
            l.failures = 0;
        }
        l.calls = l.calls.saturating_add(1);
        if success {
            l.consecutive = 0;
        } else {
            l.failures = l.failures.saturating_add(1);
            l.consecutive = l.consecutive.saturating_add(1);
        }
        let ratio_trips = l.calls >= self.policy.min_calls
            && f64::from(l.failures) >= self.policy.failure_ratio * f64::from(l.calls);
        let streak_trips = self
            .policy
            .consecutive_failures
            .is_some_and(|n| l.consecutive >= n);
        if ratio_trips || streak_trips {
            l.state = State::Open;
            l.opened_at = now;
            return (State::Open, true);
        }
        (State::Closed, false)
    }
}

/// Classifies a Redis error; connection-level failures mark Redis down for every caller.
fn redis_error(kv: &Kv, e: &redis::RedisError) -> String {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
        kv.mark_down();
    }
    e.to_string()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The breakers of one process, by name, all with the configured policy. Cheap to clone.
#[derive(Clone)]
pub struct Breakers {
    kv: Option<Kv>,
    policy: BreakerConfig,
    by_name: Arc<Mutex<BTreeMap<String, Arc<CircuitBreaker>>>>,
}

/// A breaker's entry in `/health`.
#[derive(Clone, Debug, Serialize)]
pub struct BreakerStatus {
    /// Breaker name (`push_fcm`, `push_onesignal`, …).
    pub name: String,
    /// Its state.
    pub state: State,
}

impl Breakers {
    /// A registry whose breakers share state through `kv` when present.
    pub fn new(kv: Option<Kv>, policy: BreakerConfig) -> Self {
        Self {
            kv,
            policy,
            by_name: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// The breaker named `name`, created on first use.
    pub fn get(&self, name: &str) -> Arc<CircuitBreaker> {
        let mut map = match self.by_name.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(name.to_owned())
            .or_insert_with(|| Arc::new(CircuitBreaker::new(name, self.policy, self.kv.clone())))
            .clone()
    }

    /// Every breaker's state, sorted by name.
    pub async fn statuses(&self) -> Vec<BreakerStatus> {
        let all: Vec<Arc<CircuitBreaker>> = match self.by_name.lock() {
            Ok(g) => g.values().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().values().cloned().collect(),
        };
        let states = futures_util::future::join_all(all.iter().map(|b| b.state())).await;
        all.iter()
            .zip(states)
            .map(|(b, state)| BreakerStatus {
                name: b.name.clone(),
                state,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerConfig {
        BreakerConfig {
            failure_ratio: 0.5,
            min_calls: 4,
            window: Duration::from_secs(60),
            consecutive_failures: None,
            cooldown: Duration::from_secs(10),
        }
    }

    #[test]
    fn local_breaker_opens_on_ratio_trials_after_cooldown_and_closes() {
        let b = CircuitBreaker::new("t", policy(), None);
        let t0 = Instant::now();
        // Three calls, all failing, are below the minimum: still closed.
        for _ in 0..3 {
            assert_eq!(b.local_record(false, false, t0), (State::Closed, false));
        }
        // The fourth failure reaches min_calls with ratio 1.0: open.
        assert_eq!(b.local_record(false, false, t0), (State::Open, true));
        let (allowed, _, retry, state, _) = b.local_acquire(t0 + Duration::from_secs(4));
        assert!(!allowed);
        assert_eq!(retry, Duration::from_secs(6));
        assert_eq!(state, State::Open);
        // After the cool-down exactly one trial is let through.
        let (allowed, trial, _, state, transitioned) =
            b.local_acquire(t0 + Duration::from_secs(10));
        assert!(allowed && trial && transitioned);
        assert_eq!(state, State::HalfOpen);
        assert!(!b.local_acquire(t0 + Duration::from_secs(11)).0);
        // A failed trial re-opens; the next trial's success closes with fresh counts.
        assert_eq!(
            b.local_record(true, false, t0 + Duration::from_secs(11)),
            (State::Open, true)
        );
        let t1 = t0 + Duration::from_secs(21);
        assert!(b.local_acquire(t1).1);
        assert_eq!(b.local_record(true, true, t1), (State::Closed, true));
        assert_eq!(b.local_record(false, false, t1), (State::Closed, false));
    }

    #[test]
    fn successes_keep_the_ratio_below_the_threshold() {
        let b = CircuitBreaker::new("t", policy(), None);
        let t0 = Instant::now();
        for i in 0..20 {
            // One failure in three: ratio 0.33 < 0.5.
            assert_eq!(b.local_record(false, i % 3 != 2, t0).0, State::Closed);
        }
    }

    #[test]
    fn consecutive_failures_open_when_configured() {
        let mut p = policy();
        p.min_calls = 100;
        p.consecutive_failures = Some(3);
        let b = CircuitBreaker::new("t", p, None);
        let t0 = Instant::now();
        assert_eq!(b.local_record(false, false, t0).0, State::Closed);
        assert_eq!(b.local_record(false, false, t0).0, State::Closed);
        assert_eq!(b.local_record(false, true, t0).0, State::Closed);
        assert_eq!(b.local_record(false, false, t0).0, State::Closed);
        assert_eq!(b.local_record(false, false, t0).0, State::Closed);
        assert_eq!(b.local_record(false, false, t0), (State::Open, true));
    }

    #[test]
    fn a_lost_trial_is_granted_again_after_its_lease() {
        let b = CircuitBreaker::new("t", policy(), None);
        let t0 = Instant::now();
        for _ in 0..4 {
            let _ = b.local_record(false, false, t0);
        }
        assert!(b.local_acquire(t0 + Duration::from_secs(10)).1);
        // The trial's caller never reports back; after one lease another caller tries.
        assert!(!b.local_acquire(t0 + Duration::from_secs(15)).0);
        assert!(b.local_acquire(t0 + Duration::from_secs(20)).1);
    }
}
