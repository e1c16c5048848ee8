//! WebSocket connections open across the fleet, for the console overview (issue 14): every
//! `serve` instance writes its own count into one Redis hash (`<prefix>:sockets`, field =
//! the instance's id, value = `<count> <Redis time in ms>`) every [`REPORT_EVERY`]; a reader
//! sums the fields written within [`FRESH`] (and deletes older ones: instances that died
//! without saying goodbye). Both sides run as Lua scripts reading Redis's own clock, so the
//! instances' clocks do not matter. The hash expires when nobody reports.
//!
//! Rebuildable and optional like the rest of `kv`: without Redis, or while it is down,
//! callers show their own instance's count and say so.

use std::time::Duration;

use super::{Kv, KvUnavailable};

/// How often an instance reports its count.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);
/// How old a report may be and still count (three missed reports: the instance is gone).
pub const FRESH: Duration = Duration::from_secs(15);
/// Deadline of one call: the overview does not wait on a struggling Redis.
const TIMEOUT: Duration = Duration::from_secs(1);

const REPORT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. now)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

const TOTAL: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fresh, own, total = tonumber(ARGV[1]), ARGV[2], 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local field, value = all[i], all[i + 1]
  local sep = string.find(value, ' ', 1, true)
  local n = sep and tonumber(string.sub(value, 1, sep - 1))
  local at = sep and tonumber(string.sub(value, sep + 1))
  if not n or not at or now - at > fresh then
    redis.call('HDEL', KEYS[1], field)
  elseif field ~= own then
    total = total + n
  end
end
return total
";

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn run<T: redis::FromRedisValue>(
    kv: &Kv,
    invocation: redis::ScriptInvocation<'_>,
) -> Result<T, KvUnavailable> {
    let call = async {
        let mut conn = kv.conn().await?;
        invocation
            .invoke_async(&mut *conn)
            .await
            .map_err(|e| KvUnavailable(e.to_string()))
    };
    tokio::time::timeout(TIMEOUT, call)
        .await
        .map_err(|_| KvUnavailable("sockets report timed out".to_owned()))?
}

/// Records that this instance (`kv.instance()`) has `open` sockets now.
pub async fn report(kv: &Kv, open: usize) -> Result<(), KvUnavailable> {
    let script = redis::Script::new(REPORT);
    let mut inv = script.key(kv.keys.sockets());
    inv.arg(kv.instance())
        .arg(open)
        .arg(millis(FRESH.saturating_mul(4)));
    run::<i64>(kv, inv).await.map(drop)
}

/// Removes this instance's entry (on shutdown: the total drops at once).
pub async fn forget(kv: &Kv) -> Result<(), KvUnavailable> {
    let call = async {
        let mut conn = kv.conn().await?;
        redis::cmd("HDEL")
            .arg(kv.keys.sockets())
            .arg(kv.instance())
            .query_async::<i64>(&mut *conn)
            .await
            .map_err(|e| KvUnavailable(e.to_string()))
    };
    tokio::time::timeout(TIMEOUT, call)
        .await
        .map_err(|_| KvUnavailable("sockets report timed out".to_owned()))?
        .map(drop)
}

/// Sockets open across the fleet: this instance's live count `own` plus every other
/// instance's fresh report.
pub async fn fleet_total(kv: &Kv, own: usize) -> Result<i64, KvUnavailable> {
    let script = redis::Script::new(TOTAL);
    let mut inv = script.key(kv.keys.sockets());
    inv.arg(millis(FRESH)).arg(kv.instance());
    let others: i64 = run(kv, inv).await?;
    Ok(others.saturating_add(i64::try_from(own).unwrap_or(i64::MAX)))
}
