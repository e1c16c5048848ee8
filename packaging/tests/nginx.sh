#!/usr/bin/env bash
# Checks packaging/nginx/itsur.conf and compose.conf with the real nginx of the OS packages:
#   1. `nginx -t` on a minimal wrapper (temp prefix, pid, logs, temp paths) that includes
#      itsur.conf as shipped, then both files as rendered for loopback; no [warn]/[emerg];
#   2. compose.conf differs from itsur.conf only in upstream addresses, access log, header;
#   3. behaviour, with nginx running on loopback in front of two stub upstreams
#      (upstream_stub.py) and one dead port, itsur.conf's TLS server with a self-signed
#      certificate made now: plain HTTP answers only a 308 to HTTPS (path and query kept,
#      nothing proxied), the certificate verifies and TLS 1.2/1.3 are spoken,
#      X-Request-Id generated when absent / kept when sane / replaced when not,
#      X-Forwarded-For / -Proto passed, upstream keepalive (no "Connection: close"),
#      WebSocket upgrade headers on /ws only, /metrics and /health denied unless from
#      127.0.0.1, /health/live and /health/ready open, a refused upstream retried (GET and
#      POST: nothing was sent), an upstream 503 retried once for GET and never for POST,
#      an RFC 9457 problem when no instance answers, 413 over client_max_body_size,
#      no `?token=` value in the access or error log (also when /ws's upstream is refused).
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
    # As shipped (ports 80/443, /var/log/nginx) but for the certificate paths, which point at
    # a self-signed pair made now: nginx -t neither binds nor needs root.
    mkdir -p "$TMP/asis/logs" "$TMP/asis/tmp"
    tls_cert "$TMP/asis/tls" || fail "cannot make a self-signed certificate"
    sed -E "s#^(\s*ssl_certificate )\S+;#\1$TMP/asis/tls/cert.pem;#; s#^(\s*ssl_certificate_key )\S+;#\1$TMP/asis/tls/key.pem;#" \
        "$NGX/itsur.conf" >"$TMP/asis/itsur.conf"
    [[ $(diff "$NGX/itsur.conf" "$TMP/asis/itsur.conf" | grep -c '^>') == 2 ]] ||
        fail "itsur.conf: expected exactly one ssl_certificate and one ssl_certificate_key line"
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
    include $TMP/asis/itsur.conf;
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
TLS_PORT=8443 render_nginx "$NGX/itsur.conf" "$TMP/vm" 8080 8081 8082 >/dev/null
nginx_t "$TMP/vm" "itsur.conf (loopback rendering)"
# compose.conf names its upstreams serve-1/serve-2, which resolve only inside compose.
render_nginx "$NGX/compose.conf" "$TMP/compose" 8080 8081 8082 >/dev/null
nginx_t "$TMP/compose" "compose.conf (upstreams rendered to loopback)"

# ------------------------------------------------------------ 2. in sync --
# itsur.conf's API server is its TLS server; compose.conf's is its only (plain HTTP) one.
# Compared without comments, upstream addresses, access log paths, listen and ssl_ lines.
norm() { # file
    python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
lines = [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
out, block, depth = [], [], 0
for l in lines:
    if depth == 0 and re.match(r"^server \{", l):
        block, depth = [l], 1
        continue
    if depth:
        block.append(l)
        depth += l.count("{") - l.count("}")
        if depth == 0 and not any(re.search(r"return 30[1278] https://", b) for b in block):
            out.extend(block)  # the redirect-only server of itsur.conf is left out
        continue
    out.append(l)
for l in out:
    s = l.strip()
    if re.match(r"(listen|ssl_\w+) ", s) or re.match(r"server \S+:\d+ ", s):
        continue
    print(re.sub(r"access_log \S+ itsur_json", "access_log LOG itsur_json", l))
PY
}
if ! diff -u <(norm "$NGX/itsur.conf") <(norm "$NGX/compose.conf") >"$TMP/drift"; then
    cat "$TMP/drift" >&2
    fail "compose.conf drifted from itsur.conf (beyond upstreams, access log and TLS)"
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
for ((i = 0; i < 100; i++)); do
    curl -fsS -o /dev/null --max-time 1 --cacert "$TLS_CA" "https://127.0.0.1:$TLS_PORT/health/live" 2>/dev/null && break
    kill -0 "$NGINX_PID" 2>/dev/null || fail "nginx did not start (see $TMP/run/logs/error.log)"
    sleep 0.1
done
BASE="https://127.0.0.1:$TLS_PORT"
PLAIN="http://127.0.0.1:$P_NGX"

# get PATH [curl args...] -> status in $CODE, body in $BODY, headers in $TMP/h
get() {
    local path="$1"
    shift
    CODE="$(curl -sS --cacert "$TLS_CA" -D "$TMP/h" -o "$TMP/body" -w '%{http_code}' "$@" "$BASE$path")"
    BODY="$(cat "$TMP/body")"
}
jq_() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
expect() { # what got want
    [[ $2 == "$3" ]] || fail "$1: got '$2', want '$3'"
    say "ok: $1"
}

# Plain HTTP: a 308 to the same path and query on HTTPS, for every method; never proxied.
: >"$TMP/hits.A"
: >"$TMP/hits.B"
for method in GET POST; do
    code="$(curl -sS -o /dev/null -D "$TMP/h" -w '%{http_code}' -X "$method" "$PLAIN/api/x?a=1&b=2")"
    expect "plain HTTP $method: redirect status" "$code" 308
    expect "plain HTTP $method: Location" "$(sed -nE 's/^[Ll]ocation: (.*)\r$/\1/p' "$TMP/h")" \
        "https://127.0.0.1:$TLS_PORT/api/x?a=1&b=2"
done
expect "plain HTTP: requests proxied" "$(cat "$TMP/hits.A" "$TMP/hits.B" | wc -l)" 0
code="$(curl -sS -o /dev/null -w '%{http_code}' -L --cacert "$TLS_CA" "$PLAIN/health/live")"
expect "plain HTTP followed to HTTPS (certificate verified)" "$code" 200
for v in 1.2 1.3; do
    out="$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$TLS_CA" --tlsv$v --tls-max $v "$BASE/health/live")"
    expect "TLS $v handshake" "$out" 200
done
if curl -sS -o /dev/null --max-time 5 "$BASE/health/live" 2>/dev/null; then
    fail "an unverified client accepted the self-signed certificate: the test is not checking TLS"
fi

get /api/x
body="$BODY"
expect "GET / proxied" "$CODE" 200
rid="$(jq_ 'd["headers"].get("x-request-id","")' <<<"$body")"
[[ $rid =~ ^[0-9a-f]{32}$ ]] || fail "no generated X-Request-Id upstream (got '$rid')"
say "ok: X-Request-Id generated when absent ($rid)"
expect "X-Forwarded-For" "$(jq_ 'd["headers"].get("x-forwarded-for")' <<<"$body")" 127.0.0.1
expect "X-Forwarded-Proto" "$(jq_ 'd["headers"].get("x-forwarded-proto")' <<<"$body")" https
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
# WebSockets with ?token= go the same way: the token must reach neither log.
TOKEN_MARK="secret-token-$RANDOM$RANDOM"
fails=0
for i in $(seq 1 30); do
    get "/api/retry$i"
    [[ $CODE == 200 ]] || fails=$((fails + 1))
    get "/api/post$i" -X POST -d '{}'
    [[ $CODE == 200 ]] || fails=$((fails + 1))
    get "/ws?token=$TOKEN_MARK.$i" -H 'Upgrade: websocket' -H 'Connection: Upgrade'
    [[ $CODE == 200 ]] || fails=$((fails + 1))
done
expect "90 requests with one upstream refusing: non-200 answers" "$fails" 0
curl -sS -o /dev/null "$PLAIN/ws?token=$TOKEN_MARK.plain"
# nginx tries the refused upstream again once its fail_timeout (5 s) is over: keep opening
# /ws until one of them was refused there and retried (its access-log line has two upstream
# statuses), so the error log had its chance to quote the token.
ws_retried() {
    python3 - "$TMP/run/logs/itsur.access.log" <<'PY'
import json, sys
for line in open(sys.argv[1], encoding="utf-8"):
    d = json.loads(line)
    if d["path"] == "/ws" and "," in d["upstream_status"]:
        sys.exit(0)
sys.exit(1)
PY
}
for ((i = 0; i < 150; i++)); do
    ws_retried && break
    get "/ws?token=$TOKEN_MARK.w$i" -H 'Upgrade: websocket' -H 'Connection: Upgrade'
    [[ $CODE == 200 ]] || fail "/ws with one upstream refusing answered $CODE"
    sleep 0.1
done
ws_retried || fail "no /ws request reached the refused upstream within 15 s"
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

# Access log: one JSON object per line with the request id, and the path without the query.
python3 - "$TMP/run/logs/itsur.access.log" <<'PY' || fail "access log lines are not JSON with a request_id and a path"
import json, sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
assert lines, "empty access log"
ws = 0
for line in lines:
    d = json.loads(line)
    assert d["request_id"], line
    assert "?" not in d["path"], line
    ws += d["path"] == "/ws"
assert ws >= 32, f"only {ws} /ws lines"
print(f"nginx: access log: {len(lines)} JSON lines, each with a request_id; {ws} of /ws", file=sys.stderr)
PY
if grep -rl -- "$TOKEN_MARK" "$TMP/run/logs"; then
    grep -rh -- "$TOKEN_MARK" "$TMP/run/logs" | head -3 >&2
    fail "a ?token= value reached nginx's logs"
fi
say "ok: no ?token= value in the access or error log (/ws requests, one refused by an upstream)"
say "PASS"
