#!/usr/bin/env bash
# Checks packaging/nginx/itsur.conf and compose.conf with the real nginx of the OS packages:
#   1. `nginx -t` on a minimal wrapper (temp prefix, pid, logs, temp paths) that includes
#      itsur.conf as shipped, then both files as rendered for loopback; no [warn]/[emerg];
#   2. compose.conf differs from itsur.conf only in upstream addresses, access log, header;
#   3. behaviour, with nginx running on loopback in front of two stub upstreams
#      (upstream_stub.py) and one dead port:
#      X-Request-Id generated when absent / kept when sane / replaced when not,
#      X-Forwarded-For / -Proto passed, upstream keepalive (no "Connection: close"),
#      WebSocket upgrade headers on /ws only, /metrics and /health denied unless from
#      127.0.0.1, /health/live and /health/ready open, a refused upstream retried (GET and
#      POST: nothing was sent), an upstream 503 retried once for GET and never for POST,
#      an RFC 9457 problem when no instance answers, 413 over client_max_body_size.
# Needs no root (root only to install nginx when it is missing).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_tool nginx nginx nginx-light
need_tool curl curl
need_tool python3 python3
make_tmp
NGINX_PID="" STUB_PIDS=()
cleanup() {
    local p
    [[ -n $NGINX_PID ]] && kill -QUIT "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
    for p in "${STUB_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
say "$(nginx -v 2>&1)"

nginx_t() { # dir label
    local out
    if ! out="$(nginx -t -p "$1/" -c "$1/nginx.conf" -e "$1/logs/error.log" 2>&1)"; then
        printf '%s\n' "$out" >&2
        fail "nginx -t failed for $2"
    fi
    if grep -E '\[(warn|emerg|alert|crit|error)\]' <<<"$out" >&2; then
        fail "nginx -t printed warnings for $2"
    fi
    grep -q 'test is successful' <<<"$out" || fail "nginx -t: no success line for $2"
    say "nginx -t: $2: ok"
}

# ------------------------------------------------------------------ 1. nginx -t --
NGX="$PACKAGING/nginx"
if [[ -w /var/log/nginx ]]; then
    # As shipped, byte for byte (port 80, /var/log/nginx): nginx -t neither binds nor needs root.
    mkdir -p "$TMP/asis/logs" "$TMP/asis/tmp"
    cat >"$TMP/asis/nginx.conf" <<CONF
pid $TMP/asis/nginx.pid;
error_log $TMP/asis/logs/error.log;
events {}
http {
    client_body_temp_path $TMP/asis/tmp/body;
    proxy_temp_path $TMP/asis/tmp/proxy;
    fastcgi_temp_path $TMP/asis/tmp/fastcgi;
    uwsgi_temp_path $TMP/asis/tmp/uwsgi;
    scgi_temp_path $TMP/asis/tmp/scgi;
    include $NGX/itsur.conf;
}
CONF
    # nginx -t creates the access log it would write; leave no new file behind.
    created=""
    [[ -e /var/log/nginx/itsur.access.log ]] || created=1
    nginx_t "$TMP/asis" "itsur.conf as shipped"
    if [[ -n $created ]]; then rm -f /var/log/nginx/itsur.access.log; fi
else
    say "itsur.conf as shipped: not checked byte for byte (/var/log/nginx is not writable for $(id -un)); the rendered copy below is"
fi
render_nginx "$NGX/itsur.conf" "$TMP/vm" 8080 8081 8082 >/dev/null
nginx_t "$TMP/vm" "itsur.conf (loopback rendering)"
# compose.conf names its upstreams serve-1/serve-2, which resolve only inside compose.
render_nginx "$NGX/compose.conf" "$TMP/compose" 8080 8081 8082 >/dev/null
nginx_t "$TMP/compose" "compose.conf (upstreams rendered to loopback)"

# ------------------------------------------------------------ 2. in sync --
norm() {
    sed -E '/^#/d; /^\s*server [^ ]+:[0-9]+ /d; /^\s*# Names are resolved/d; s#access_log \S+ itsur_json#access_log LOG itsur_json#' "$1"
}
if ! diff -u <(norm "$NGX/itsur.conf") <(norm "$NGX/compose.conf") >"$TMP/drift"; then
    cat "$TMP/drift" >&2
    fail "compose.conf drifted from itsur.conf (beyond upstreams and access log)"
fi
say "compose.conf: same settings as itsur.conf"

# ------------------------------------------------------------ 3. behaviour --
P_NGX="$(free_port)" P_A="$(free_port)" P_B="$(free_port)" P_DEAD="$(free_port)"
for n in A B; do
    port_var="P_$n"
    python3 "$PACKAGING/tests/upstream_stub.py" "$n" "${!port_var}" "$TMP/hits.$n" &
    STUB_PIDS+=($!)
    : >"$TMP/hits.$n"
done
for n in A B; do
    port_var="P_$n"
    wait_http "http://127.0.0.1:${!port_var}/ready" 10 || fail "stub upstream $n did not start"
done
: >"$TMP/hits.A"
: >"$TMP/hits.B"
render_nginx "$NGX/itsur.conf" "$TMP/run" "$P_NGX" "$P_A" "$P_B" "$P_DEAD" >/dev/null
nginx -p "$TMP/run/" -c "$TMP/run/nginx.conf" -e "$TMP/run/logs/error.log" -g 'daemon off;' &
NGINX_PID=$!
wait_http "http://127.0.0.1:$P_NGX/health/live" 10 "$NGINX_PID" || fail "nginx did not start (see $TMP/run/logs/error.log)"
BASE="http://127.0.0.1:$P_NGX"

# get PATH [curl args...] -> status in $CODE, body in $BODY, headers in $TMP/h
get() {
    local path="$1"
    shift
    CODE="$(curl -sS -D "$TMP/h" -o "$TMP/body" -w '%{http_code}' "$@" "$BASE$path")"
    BODY="$(cat "$TMP/body")"
}
jq_() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
expect() { # what got want
    [[ $2 == "$3" ]] || fail "$1: got '$2', want '$3'"
    say "ok: $1"
}

get /api/x
body="$BODY"
expect "GET / proxied" "$CODE" 200
rid="$(jq_ 'd["headers"].get("x-request-id","")' <<<"$body")"
[[ $rid =~ ^[0-9a-f]{32}$ ]] || fail "no generated X-Request-Id upstream (got '$rid')"
say "ok: X-Request-Id generated when absent ($rid)"
expect "X-Forwarded-For" "$(jq_ 'd["headers"].get("x-forwarded-for")' <<<"$body")" 127.0.0.1
expect "X-Forwarded-Proto" "$(jq_ 'd["headers"].get("x-forwarded-proto")' <<<"$body")" http
expect "X-Real-IP" "$(jq_ 'd["headers"].get("x-real-ip")' <<<"$body")" 127.0.0.1
expect "no Connection header upstream (keepalive)" "$(jq_ 'd["headers"].get("connection")' <<<"$body")" None
expect "no Upgrade header upstream" "$(jq_ 'd["headers"].get("upgrade")' <<<"$body")" None
get /api/x -H 'X-Request-Id: client-id-42' -H 'X-Forwarded-For: 203.0.113.9'
body="$BODY"
expect "X-Request-Id kept when sane" "$(jq_ 'd["headers"].get("x-request-id")' <<<"$body")" client-id-42
expect "X-Forwarded-For appended" "$(jq_ 'd["headers"].get("x-forwarded-for")' <<<"$body")" "203.0.113.9, 127.0.0.1"
get /api/x -H 'X-Request-Id: bad id<script>'
body="$BODY"
rid="$(jq_ 'd["headers"].get("x-request-id","")' <<<"$body")"
[[ $rid =~ ^[0-9a-f]{32}$ ]] || fail "an unsafe X-Request-Id was passed on (got '$rid')"
say "ok: unsafe X-Request-Id replaced"
get /ws -H 'Upgrade: websocket' -H 'Connection: Upgrade'
body="$BODY"
expect "/ws: Upgrade passed" "$(jq_ 'd["headers"].get("upgrade")' <<<"$body")" websocket
expect "/ws: Connection: upgrade passed" "$(jq_ 'd["headers"].get("connection")' <<<"$body")" upgrade

for path in /metrics /health //metrics /health/ /metrics/; do
    get "$path" --interface 127.0.0.2
    expect "$path denied from 127.0.0.2" "$CODE" 403
done
for path in /metrics /health; do
    get "$path"
    expect "$path allowed from 127.0.0.1" "$CODE" 200
done
for path in /health/live /health/ready; do
    get "$path" --interface 127.0.0.2
    expect "$path open to everyone" "$CODE" 200
done

# A dead upstream: the refused connection is retried on a live one, for every method
# (nothing reached an instance, so a POST is safe to send elsewhere).
fails=0
for i in $(seq 1 30); do
    get "/api/retry$i"
    [[ $CODE == 200 ]] || fails=$((fails + 1))
    get "/api/post$i" -X POST -d '{}'
    [[ $CODE == 200 ]] || fails=$((fails + 1))
done
expect "60 requests with one upstream refusing: non-200 answers" "$fails" 0
grep -q "connect() failed (111: Connection refused) while connecting to upstream" "$TMP/run/logs/error.log" ||
    fail "the dead upstream was never tried, so the retry was not exercised"

# 503 from an instance: a GET is tried on a second one (tries=2), a POST is not.
: >"$TMP/hits.A"
: >"$TMP/hits.B"
get /status/503
expect "GET answered 503 by every instance: final status" "$CODE" 503
expect "GET 503: instances tried" "$(cat "$TMP/hits.A" "$TMP/hits.B" | grep -c '^GET /status/503$')" 2
: >"$TMP/hits.A"
: >"$TMP/hits.B"
get /status/503 -X POST -d '{}'
expect "POST answered 503: final status" "$CODE" 503
expect "POST 503: instances tried (never twice)" "$(cat "$TMP/hits.A" "$TMP/hits.B" | grep -c '^POST /status/503$')" 1

# Too large a body: 413 as a problem document.
head -c $((11 * 1024 * 1024)) /dev/zero >"$TMP/big"
get /api/import -X POST --data-binary "@$TMP/big" -H 'Content-Type: text/csv'
expect "11 MiB body" "$CODE" 413
grep -qi '^content-type: application/problem+json' "$TMP/h" || fail "413 is not application/problem+json"

# No instance at all: an RFC 9457 problem with Retry-After and the request id.
kill "${STUB_PIDS[@]}"
wait "${STUB_PIDS[@]}" 2>/dev/null || true
STUB_PIDS=()
get /api/x -H 'X-Request-Id: outage-1'
body="$BODY"
expect "every instance down: status" "$CODE" 503
grep -qi '^content-type: application/problem+json' "$TMP/h" || fail "outage answer is not application/problem+json"
grep -qi '^retry-after: 1' "$TMP/h" || fail "outage answer has no Retry-After"
grep -qi '^x-request-id: outage-1' "$TMP/h" || fail "outage answer does not carry the request id"
expect "outage problem status field" "$(jq_ 'd["status"]' <<<"$body")" 503

# Access log: one JSON object per line with the request id.
python3 - "$TMP/run/logs/itsur.access.log" <<'PY' || fail "access log lines are not JSON with a request_id"
import json, sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
assert lines, "empty access log"
for line in lines:
    d = json.loads(line)
    assert d["request_id"], line
print(f"nginx: access log: {len(lines)} JSON lines, each with a request_id", file=sys.stderr)
PY
say "PASS"
