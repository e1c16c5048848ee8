#!/usr/bin/env bash
# Zero-downtime rolling restart, for real: nginx (OS package, packaging/nginx/itsur.conf)
# on loopback in front of two `itsur serve` instances, steady GET load on /health/ready and
# /health/live through nginx (load.py), and each instance in turn restarted with SIGTERM:
# wait for it to exit (it must exit 0), start it again on the same port, wait until it is
# ready and nginx sends it traffic again. Prints the figures; exits 1 when any request
# failed (a non-200 answer or a transport error), or when an instance misbehaved.
#
#   ITSUR_BIN=target/debug/itsur DATABASE_URL=postgres://... REDIS_URL=redis://... \
#       packaging/tests/rolling-restart.sh
#
# DATABASE_URL / REDIS_URL: from the environment, else found or started by
# scripts/services.sh. A database itsur_roll_<random> is created on DATABASE_URL's server,
# migrated, and dropped at the end.
# Tunables: ROLL_MIN_SECONDS (load duration, at least; 24), ROLL_RATE (requests/s; 400),
# ROLL_THREADS (8), ROLL_SETTLE_SECONDS (pause after an instance is back; 3).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MIN_SECONDS="${ROLL_MIN_SECONDS:-24}"
RATE="${ROLL_RATE:-400}"
THREADS="${ROLL_THREADS:-8}"
SETTLE="${ROLL_SETTLE_SECONDS:-3}"

need_tool nginx nginx nginx-light
need_tool python3 python3
need_tool curl curl
need_tool psql postgresql-client
BIN="$(itsur_bin)"
need_services

make_tmp
declare -A PID PORT
NGINX_PID="" LOAD_PID="" DB=""
cleanup() {
    local rc=$? n
    [[ -n $LOAD_PID ]] && kill -TERM "$LOAD_PID" 2>/dev/null
    for n in "${!PID[@]}"; do kill -TERM "${PID[$n]}" 2>/dev/null || true; done
    [[ -n $NGINX_PID ]] && kill -QUIT "$NGINX_PID" 2>/dev/null
    wait 2>/dev/null || true
    drop_db
    if ((rc != 0)) && [[ -d $TMP ]]; then
        say "logs kept in $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT

# ------------------------------------------------------------ database --
migrated_db itsur_roll
say "database $DB created and migrated"

# ------------------------------------------------------------ instances --
now_ms() { date +%s%3N; }
start_instance() { # name
    local n="$1"
    BIND_ADDR="127.0.0.1:${PORT[$n]}" "$BIN" serve >>"$TMP/serve-$n.log" 2>&1 &
    PID[$n]=$!
}
ready_url() { printf 'http://127.0.0.1:%s/health/ready' "${PORT[$1]}"; }
# Requests this process of instance NAME has answered on PATH (its own /metrics).
served() { # name path
    curl -fsS --max-time 2 "http://127.0.0.1:${PORT[$1]}/metrics" 2>/dev/null |
        awk -v p="path=\"$2\"" 'index($0, "http_requests_total{") == 1 && index($0, p) { s += $NF } END { print s + 0 }'
}

PORT[a]="$(free_port)"
PORT[b]="$(free_port)"
for n in a b; do
    start_instance "$n"
done
for n in a b; do
    wait_http "$(ready_url "$n")" 60 "${PID[$n]}" || {
        tail -20 "$TMP/serve-$n.log" >&2
        fail "instance $n (port ${PORT[$n]}) did not become ready"
    }
done
say "instances ready: a=127.0.0.1:${PORT[a]} b=127.0.0.1:${PORT[b]}"

# ----------------------------------------------------------------- nginx --
# itsur.conf serves the API over TLS (a self-signed certificate made by render_nginx); its
# plain-HTTP port only redirects.
start_nginx "${PORT[a]}" "${PORT[b]}"
say "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') on https://127.0.0.1:$TLS_PORT, upstream itsur_api = both instances"

# ------------------------------------------------------------------ load --
python3 "$PACKAGING/tests/load.py" --base "https://127.0.0.1:$TLS_PORT" --cacert "$TLS_CA" \
    --paths /health/ready,/health/live --threads "$THREADS" --rate "$RATE" \
    --max-seconds 600 >"$TMP/load.json" 2>"$TMP/load.err" &
LOAD_PID=$!
LOAD_START="$(now_ms)"
say "load: $RATE requests/s over $THREADS keep-alive connections, for at least $MIN_SECONDS s"
sleep "$SETTLE"

REPORT=()
for n in a b; do
    t0="$(now_ms)"
    kill -TERM "${PID[$n]}"
    rc=0
    wait "${PID[$n]}" || rc=$?
    t1="$(now_ms)"
    ((rc == 0)) || fail "instance $n exited $rc on SIGTERM (want 0); log: $TMP/serve-$n.log"
    start_instance "$n"
    wait_http "$(ready_url "$n")" 60 "${PID[$n]}" || {
        tail -20 "$TMP/serve-$n.log" >&2
        fail "instance $n did not become ready again"
    }
    t2="$(now_ms)"
    # Back in rotation: nginx has sent the new process load traffic (only the load uses
    # /health/live; this script's own probes use /health/ready and /metrics).
    back=""
    for ((i = 0; i < 300; i++)); do
        if (($(served "$n" /health/live) > 0)); then
            back="$(now_ms)"
            break
        fi
        sleep 0.1
    done
    [[ -n $back ]] || fail "nginx sent no traffic to the restarted instance $n within 30 s"
    line="$(printf 'restart %s: SIGTERM->exit(0) %5d ms, start->ready %5d ms, ready->serving via nginx %5d ms' \
        "$n" $((t1 - t0)) $((t2 - t1)) $((back - t2)))"
    REPORT+=("$line")
    say "$line"
    sleep "$SETTLE"
done

elapsed=$((($(now_ms) - LOAD_START) / 1000))
if ((elapsed < MIN_SECONDS)); then
    sleep $((MIN_SECONDS - elapsed))
fi
kill -TERM "$LOAD_PID"
wait "$LOAD_PID" || fail "load generator failed: $(cat "$TMP/load.err")"
LOAD_PID=""
[[ -s $TMP/load.json ]] || fail "load generator printed no summary: $(cat "$TMP/load.err")"

# Per-instance share (final processes only) and nginx's own retries, from its access log.
share_a="$(served a /health/live)/$(served a /health/ready)"
share_b="$(served b /health/live)/$(served b /health/ready)"
python3 - "$TMP/load.json" "$TMP/nginx/logs/itsur.access.log" "$share_a" "$share_b" "${REPORT[@]}" <<'PY'
import json, sys
s = json.load(open(sys.argv[1], encoding="utf-8"))
log = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8") if l.strip()]
load = [l for l in log if l["request_id"].startswith("load-")]
retried = [l for l in load if "," in l["upstream_status"]]
kinds = {}
for l in retried:
    kinds[l["upstream_status"]] = kinds.get(l["upstream_status"], 0) + 1
print("rolling restart: 2 instances behind nginx, each restarted once with SIGTERM")
for line in sys.argv[5:]:
    print("  " + line)
print(f"  load: {s['seconds']} s, {s['rps_mean']} requests/s on average, "
      f"lowest 1-second count {s['rps_min_per_second']}")
for p, v in s["by_path"].items():
    print(f"  GET {p}: {v['total']} requests, {v['failed']} failed")
print(f"  nginx retried {len(retried)} request(s) on the other instance "
      f"(upstream statuses: {json.dumps(kinds) if kinds else 'none'})")
print(f"  final processes served /health/live / /health/ready: a={sys.argv[3]} b={sys.argv[4]}")
print(f"TOTAL REQUESTS: {s['total']}")
print(f"FAILED REQUESTS: {s['failed']}")
for f in s["failures"]:
    print(f"  failure at {f['t']} s: GET {f['path']}: {f['detail']}")
PY
total="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["total"])' "$TMP/load.json")"
failed="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["failed"])' "$TMP/load.json")"
((total > 0)) || fail "no request was made"
((failed == 0)) || fail "$failed of $total requests failed during the rolling restart"
say "PASS: $total requests, 0 failed"
