#!/usr/bin/env bash
# Where a drain's time goes, for one `itsur worker`: the profiling companion of
# `cargo bench --bench load -- jobs` (bench/README.md, "Probing the job engine").
#
#   bench/probe-jobs.sh [ITSUR_BIN]        default: target/release/itsur
#
# On a fresh database it enqueues COUNT jobs of PAYLOAD (one statement), starts one worker
# with CONCURRENCY slots, waits until the history holds them all, then prints:
#   - the rate, by the database's clock as the bench computes it;
#   - the worker's CPU and the Postgres processes' CPU per job (utime+stime from /proc;
#     the Postgres side also counts this script's polling backends, so read it as an
#     upper bound);
#   - the worker's own histograms: handler duration, claim and record latencies, batch
#     sizes (from its /metrics);
#   - the share of claims that were HOT updates (pg_stat_user_tables).
# TIMELINE=1 also prints claims and ends as they happened (ms from the first claim,
# jobs claimed or ended, jobs held by the worker): a claim that comes too late shows as
# `held` falling under the concurrency.
#
#   COUNT (20000)  PAYLOAD ({})  CONCURRENCY (32)  PRE_SQL (run after migrate, e.g.
#   "ALTER TABLE jobs SET (fillfactor = 50)")  TIMELINE (0)  METRICS_PORT (19464)
#   BENCH_DATABASE_URL: an admin URL of the Postgres to use (default: scripts/services.sh env)
#
# S3 as the bench runs it: COUNT=10000 PAYLOAD='{"sleepMs":5}' bench/probe-jobs.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${1:-$root/target/release/itsur}"
count="${COUNT:-20000}"
payload="${PAYLOAD:-"{}"}"
concurrency="${CONCURRENCY:-32}"
port="${METRICS_PORT:-19464}"
[[ -x $bin ]] || { echo "probe-jobs: no itsur binary at $bin (cargo build --release)" >&2; exit 1; }
if [[ -z ${BENCH_DATABASE_URL:-} ]]; then
    env_lines="$("$root/scripts/services.sh" env)"
    eval "$env_lines"
    BENCH_DATABASE_URL="${TEST_DATABASE_URL:?scripts/services.sh env gave no TEST_DATABASE_URL}"
fi
admin="${BENCH_DATABASE_URL%%\?*}"
db="probe_jobs_$RANDOM$RANDOM"
url="${admin%/*}/$db?sslmode=disable"
psql -qX "$admin" -c "CREATE DATABASE $db" >/dev/null
worker=""
cleanup() {
    if [[ -n $worker ]]; then kill "$worker" 2>/dev/null || true; wait "$worker" 2>/dev/null || true; fi
    psql -qX "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
}
trap cleanup EXIT
export DATABASE_URL="$url" JWT_SECRET=probe-only-secret-0123456789-0123456789 ITSUR_ENV=dev RUST_LOG=warn
"$bin" migrate >/dev/null 2>&1
if [[ -n ${PRE_SQL:-} ]]; then psql -qX "$url" -c "$PRE_SQL" >/dev/null; fi
"$bin" jobs enqueue noop --payload "$payload" --count "$count" --queue probe >/dev/null 2>&1

cpu_of() { # utime+stime (clock ticks) of the given pids that still exist
    local sum=0 pid stat
    for pid in "$@"; do
        stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
        stat="${stat##*) }"
        read -r -a f <<<"$stat"
        sum=$((sum + f[11] + f[12]))
    done
    echo "$sum"
}
# shellcheck disable=SC2046 # one pid per word
pg_before="$(cpu_of $(pgrep -x postgres || true))"
WORKER_CONCURRENCY="$concurrency" JOB_NO_CRON=true JOB_QUEUES=probe METRICS_BIND="127.0.0.1:$port" \
    "$bin" worker >/dev/null 2>&1 &
worker=$!
until [[ "$(psql -qtAX "$url" -c "SELECT count(*) FROM jobs_history WHERE queue = 'probe'")" -ge $count ]]; do
    kill -0 "$worker" 2>/dev/null || { echo "probe-jobs: the worker exited" >&2; exit 1; }
    sleep 0.1
done
worker_cpu="$(cpu_of "$worker")"
# shellcheck disable=SC2046
pg_after="$(cpu_of $(pgrep -x postgres || true))"
metrics="$(curl -fsS "127.0.0.1:$port/metrics" || true)"
tick_ns=$((1000000000 / $(getconf CLK_TCK)))
psql -qtAX "$url" -c "SELECT 'rate: ' || round(count(*) / extract(epoch FROM max(finished_at) - min(started_at))) \
    || ' jobs/s (' || count(*) || ' jobs)' FROM jobs_history WHERE queue = 'probe'"
echo "worker CPU: $((worker_cpu * tick_ns / count)) ns a job"
echo "Postgres CPU: $(((pg_after - pg_before) * tick_ns / count)) ns a job (upper bound)"
grep -E '^jobs_(duration|claim|record)_seconds_(sum|count)|^jobs_record_batch_size_(sum|count)' <<<"$metrics" || true
# The worker's backends publish their table statistics when they end.
kill "$worker"
wait "$worker" 2>/dev/null || true
worker=""
sleep 0.5
psql -qtAX "$url" -c "SELECT 'claims HOT: ' || n_tup_hot_upd || ' of ' || n_tup_upd FROM pg_stat_user_tables WHERE relname = 'jobs'"
if [[ ${TIMELINE:-0} == 1 ]]; then
    psql -qX "$url" -c "WITH c AS (SELECT started_at AS t, count(*) AS n FROM jobs_history GROUP BY 1), \
        e AS (SELECT finished_at AS t, count(*) AS n FROM jobs_history GROUP BY 1), \
        ev AS (SELECT t, n AS claimed, 0 AS ended FROM c UNION ALL SELECT t, 0, n FROM e), \
        cum AS (SELECT t, claimed, ended, sum(claimed - ended) OVER (ORDER BY t, ended) AS held FROM ev) \
        SELECT round(extract(epoch FROM t - (SELECT min(started_at) FROM jobs_history)) * 1000, 1) AS ms, \
            claimed, ended, held FROM cum ORDER BY t"
fi
