#!/usr/bin/env bash
# Measures what NOTIFY costs an order-like transaction (see docs/ARCHITECTURE.md, "Waking the
# relay"). Usage: bench/notify/run.sh [seconds per run] ; needs pgbench and a database set up
# by setup.sql on top of `itsur migrate` (DB env var, default itsur_notify_bench).
set -euo pipefail
cd "$(dirname "$0")"
DB="${DB:-postgres://postgres@127.0.0.1:5432/itsur_notify_bench}"
T="${1:-15}"
for items in 1000 5; do
  for c in 1 8 32 64; do
    for v in plain notify_in_tx notify_after_commit; do
      psql -qAt "$DB" -c "TRUNCATE orders, order_items, outbox_events, audit_log CASCADE" >/dev/null
      psql -qAt "$DB" -c "CHECKPOINT" >/dev/null
      out="$(pgbench -n -M prepared -c "$c" -j 2 -T "$T" -D items="$items" -f "$v.sql" "$DB" 2>&1)"
      tps="$(grep -oP 'tps = \K[0-9.]+' <<<"$out" | head -1)"
      lat="$(grep -oP 'latency average = \K[0-9.]+' <<<"$out")"
      printf 'items=%-5s clients=%-3s %-20s tps=%-10s avg_latency_ms=%s\n' "$items" "$c" "$v" "$tps" "$lat"
    done
  done
done
