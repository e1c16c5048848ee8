#!/usr/bin/env bash
# What NOTIFY costs an order-like transaction under concurrency (docs/ARCHITECTURE.md,
# "Waking the relay"). Three variants of the same transaction (lock a menu item, decrement
# stock, insert order + line + outbox event + audit row):
#   plain                no NOTIFY (the relay polls)
#   notify_in_tx         pg_notify inside the transaction (what a trigger or insert_event
#                        would do): takes the database-wide notify lock during COMMIT
#   notify_after_commit  pg_notify as its own statement right after COMMIT (the shape of the
#                        chosen design, without its per-process coalescing: an upper bound)
# 48 clients at most: Postgres's default max_connections is 100. Each point is the median
# of REPS runs of SECS seconds (the figures in the docs: SECS=6 REPS=5); pgbench counts a
# whole script as one transaction, so notify_after_commit's latency includes the extra
# round trip.
#
# Usage: DB=postgres://… bench/notify/run.sh [SECS] [REPS]
# The database: `itsur migrate`, then `psql -f bench/notify/setup.sql`.
set -euo pipefail
cd "$(dirname "$0")"
DB="${DB:-postgres://postgres@127.0.0.1:5432/itsur_notify_bench}"
SECS="${1:-6}"
REPS="${2:-5}"
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '%-6s %-7s %-20s %10s %12s\n' items clients variant tps latency_ms
for items in 1000 5; do
  for c in 1 16 48; do
    for v in plain notify_in_tx notify_after_commit; do
      tps=(); lat=()
      for _ in $(seq "$REPS"); do
        psql -qAt "$DB" -c "TRUNCATE orders, order_items, outbox_events, audit_log CASCADE" >/dev/null
        psql -qAt "$DB" -c "CHECKPOINT" >/dev/null
        out="$(pgbench -n -M prepared -c "$c" -j 2 -T "$SECS" -D items="$items" -f "$v.sql" "$DB" 2>&1 || true)"
        tps+=("$(grep -oP 'tps = \K[0-9.]+' <<<"$out" | head -1 || echo 0)")
        lat+=("$(grep -oP 'latency average = \K[0-9.]+' <<<"$out" || echo 0)")
      done
      printf '%-6s %-7s %-20s %10.0f %12.2f\n' "$items" "$c" "$v" \
        "$(printf '%s\n' "${tps[@]}" | median)" "$(printf '%s\n' "${lat[@]}" | median)"
    done
  done
done
