#!/usr/bin/env bash
# Measures what each role uses under a small, steady load, to size packaging/k8s requests
# and limits (not part of run-all.sh: it takes a minute and its figures vary with the host).
#
#   ITSUR_BIN=target/release/itsur packaging/tests/k8s-measure.sh [SECONDS] [ORDERS_PER_SEC]
#
# A fresh database (migrate + seed --demo), then serve, worker and outbox-relay as separate
# processes (Redis from REDIS_URL when set). The load: one student places orders at the given
# rate while staff move half of them to `ready` (each a push job for the worker and outbox
# events for the relay), plus menu reads. Prints, per role, CPU in millicores averaged over
# the load, and RSS at the end and at its peak (VmHWM).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SECS="${1:-60}"
RATE="${2:-20}"
BIN="$(itsur_bin)"
if [[ -z ${DATABASE_URL:-} ]]; then
    eval "$("$REPO_ROOT/scripts/services.sh" env)"
fi
make_tmp
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    drop_db
    rm -rf "$TMP"
}
trap cleanup EXIT
create_db itsur_measure
DATABASE_URL="$(pg_with_db "$DATABASE_URL" "$DB")"
export DATABASE_URL
export ITSUR_ENV=dev JWT_SECRET=measure-secret-that-is-long-enough-0123456789 LOG_FORMAT=json RUST_LOG=warn
export RATE_LIMIT_IP=off RATE_LIMIT_USER=off RATE_LIMIT_ORDERS=off RATE_LIMIT_AUTH=off RATE_LIMIT_LOGIN=off
export REDIS_PREFIX="measure$$"
"$BIN" migrate >/dev/null 2>&1
"$BIN" seed --demo >/dev/null 2>&1
PORT="$(free_port)" WPORT="$(free_port)" RPORT="$(free_port)"
BIND_ADDR="127.0.0.1:$PORT" "$BIN" serve 2>"$TMP/serve.log" &
PIDS+=($!)
SERVE=$!
METRICS_BIND="127.0.0.1:$WPORT" "$BIN" worker 2>"$TMP/worker.log" &
PIDS+=($!)
WORKER=$!
METRICS_BIND="127.0.0.1:$RPORT" "$BIN" outbox-relay 2>"$TMP/relay.log" &
PIDS+=($!)
RELAY=$!
for u in "http://127.0.0.1:$PORT/health/ready" "http://127.0.0.1:$WPORT/health/ready" "http://127.0.0.1:$RPORT/health/ready"; do
    wait_http "$u" 60 || fail "$u did not become ready"
done
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A T0
for p in $SERVE $WORKER $RELAY; do T0[$p]="$(ticks "$p")"; done
start=$(date +%s.%N)
python3 - "http://127.0.0.1:$PORT" "$SECS" "$RATE" <<'PY'
import json, sys, threading, time, urllib.request
base, secs, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
def call(method, path, body=None, token=None):
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("content-type", "application/json")
    if token: req.add_header("authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
login = lambda e, p: call("POST", "/auth/login", {"email": e, "password": p})[1]["data"]["accessToken"]
student, staff = login("student@itsur.edu", "student-demo-pass"), login("staff@itsur.edu", "staff-demo-pass")
campus = call("GET", "/campuses")[1]["data"][0]["id"]
vendors = call("GET", f"/campuses/{campus}/vendors", token=student)[1]["data"]
vendor = next(v["id"] for v in vendors if v["name"] == "Cafeteria Central")
items = [i["id"] for i in call("GET", f"/vendors/{vendor}/menu", token=student)[1]["data"]["items"]]
stats = {"orders": 0, "ready": 0, "errors": 0, "reads": 0}
end = time.monotonic() + secs
def advance(order):
    for to in ("accepted", "preparing", "ready"):
        s, _ = call("POST", f"/orders/{order}/transitions", {"to": to}, staff)
        if s != 200: stats["errors"] += 1; return
    stats["ready"] += 1
n = 0
while time.monotonic() < end:
    t = time.monotonic()
    s, body = call("POST", "/orders", {"vendorId": vendor, "items": [{"menuItemId": items[n % len(items)], "quantity": 1}]}, student)
    if s == 201:
        stats["orders"] += 1
        if n % 2 == 0:
            threading.Thread(target=advance, args=(body["data"]["id"],)).start()
    else:
        stats["errors"] += 1
    call("GET", f"/vendors/{vendor}/menu", token=student); stats["reads"] += 1
    n += 1
    time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - t)))
time.sleep(2)
print("load:", json.dumps(stats), file=sys.stderr)
PY
elapsed="$(python3 -c "import time; print($(date +%s.%N) - $start)")"
hz="$(getconf CLK_TCK)"
printf '%-14s %10s %10s %10s\n' role "cpu(m)" "rss(MiB)" "peak(MiB)"
for pair in "serve:$SERVE" "worker:$WORKER" "outbox-relay:$RELAY"; do
    name="${pair%%:*}" p="${pair#*:}"
    t1="$(ticks "$p")"
    mcpu="$(python3 -c "print(round(($t1 - ${T0[$p]}) / $hz / $elapsed * 1000))")"
    rss="$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$p/status")"
    hwm="$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$p/status")"
    printf '%-14s %10s %10s %10s\n' "$name" "$mcpu" "$rss" "$hwm"
done
say "$SECS s at $RATE orders/s (binary: $BIN)"
