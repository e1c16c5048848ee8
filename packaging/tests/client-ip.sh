#!/usr/bin/env bash
# Rate limits per client behind the packaged nginx, for real (issue 17, item 2): nginx (OS
# package, packaging/nginx/itsur.conf rendered to loopback, TLS with a self-signed
# certificate) in front of one `itsur serve` started with the TRUSTED_PROXIES of the shipped
# packaging/debian/itsur.env (read as systemd reads it), Postgres (a database of its own,
# migrated, demo data) and Redis (a random key prefix). Clients are distinct loopback
# addresses (curl --interface 127.0.0.x), so nginx sees each as its own $remote_addr.
#   1. client A spends its whole `ip` bucket (429); client B still gets 200 with a full
#      bucket of its own;
#   2. A's forged X-Forwarded-For (a stranger's address, or the trusted proxy's own) does
#      not get it a fresh bucket;
#   3. ten wrong passwords for admin@itsur.edu from client C lock out C (429), while the
#      admin, from client B, still signs in.
# Also: the systemd unit of serve and the env file trust the same loopback proxy.
#
#   ITSUR_BIN=target/debug/itsur DATABASE_URL=postgres://... REDIS_URL=redis://... \
#       packaging/tests/client-ip.sh
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_tool nginx nginx nginx-light
need_tool python3 python3
need_tool curl curl
need_tool psql postgresql-client
BIN="$(itsur_bin)"
need_services

make_tmp
SERVE_PID="" NGINX_PID="" DB=""
cleanup() {
    local rc=$?
    [[ -n $SERVE_PID ]] && kill -TERM "$SERVE_PID" 2>/dev/null
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

# ---------------------------------------------------- the shipped settings --
env_value() { # file key -> the value of an active KEY=VALUE line
    sed -nE "s/^$2=(.*)$/\1/p" "$1" | tail -n 1
}
TRUSTED="$(env_value "$PACKAGING/debian/itsur.env" TRUSTED_PROXIES)"
[[ -n $TRUSTED ]] || fail "packaging/debian/itsur.env does not set TRUSTED_PROXIES: every client would share nginx's bucket"
unit_value="$(sed -nE 's/^Environment=TRUSTED_PROXIES=(.*)$/\1/p' "$REPO_ROOT/systemd/itsur-serve@.service")"
[[ $unit_value == "$TRUSTED" ]] ||
    fail "itsur-serve@.service trusts '$unit_value', itsur.env '$TRUSTED': they must agree"
# Exactly the proxy in front: nginx connects from loopback, so loopback and nothing else.
python3 - "$TRUSTED" <<'PY' || fail "TRUSTED_PROXIES=$TRUSTED is not exactly loopback"
import ipaddress, sys
nets = {ipaddress.ip_network(c.strip()) for c in sys.argv[1].split(",")}
want = {ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128")}
sys.exit(0 if nets == want else 1)
PY
say "shipped TRUSTED_PROXIES=$TRUSTED (env file and unit agree)"

# ------------------------------------------------------------ database --
migrated_db itsur_clientip
"$BIN" seed --demo >"$TMP/seed.log" 2>&1 || {
    cat "$TMP/seed.log" >&2
    fail "itsur seed --demo failed"
}
say "database $DB created, migrated, demo data loaded"

# -------------------------------------------------------------- instance --
# A small `ip` quota keeps the test short; every other limit is the default
# (RATE_LIMIT_LOGIN 10/15m, RATE_LIMIT_AUTH 20/1m).
IP_LIMIT=30
PORT="$(free_port)"
TRUSTED_PROXIES="$TRUSTED" RATE_LIMIT_IP="$IP_LIMIT/1m" BIND_ADDR="127.0.0.1:$PORT" \
    "$BIN" serve >"$TMP/serve.log" 2>&1 &
SERVE_PID=$!
wait_http "http://127.0.0.1:$PORT/health/ready" 60 "$SERVE_PID" || {
    tail -20 "$TMP/serve.log" >&2
    fail "itsur serve did not become ready"
}

start_nginx "$PORT"
say "nginx on $BASE in front of itsur serve on 127.0.0.1:$PORT"

# req CLIENT_ADDR METHOD PATH [curl args...] -> status in $CODE, headers in $TMP/h
req() {
    local from="$1" method="$2" path="$3"
    shift 3
    CODE="$(curl -sS --cacert "$TLS_CA" --interface "$from" -X "$method" -D "$TMP/h" -o "$TMP/body" \
        -w '%{http_code}' "$@" "$BASE$path")"
}
header() { sed -nE "s/^$1: ([^\r]*)\r?$/\1/Ip" "$TMP/h" | tail -n 1; }
expect() { # what got want
    [[ $2 == "$3" ]] || fail "$1: got '$2', want '$3'"
    say "ok: $1"
}
A=127.0.0.2 B=127.0.0.3 C=127.0.0.4

# ------------------------------------------- 1. one bucket per client --
first_429=""
for ((i = 1; i <= IP_LIMIT + 1; i++)); do
    req "$A" GET /campuses
    if [[ $CODE == 429 ]]; then
        first_429=$i
        break
    fi
    [[ $CODE == 200 ]] || fail "client A, request $i: $CODE"
done
expect "client A limited after its $IP_LIMIT requests" "$first_429" $((IP_LIMIT + 1))
req "$B" GET /campuses
expect "client B after A's burst: status" "$CODE" 200
expect "client B's own bucket: RateLimit-Remaining" "$(header RateLimit-Remaining)" $((IP_LIMIT - 1))

# --------------------------------------- 2. forged X-Forwarded-For ignored --
for forged in 203.0.113.77 127.0.0.1 "198.51.100.1, 127.0.0.1"; do
    req "$A" GET /campuses -H "X-Forwarded-For: $forged"
    expect "client A with a forged X-Forwarded-For '$forged': still limited" "$CODE" 429
done

# -------------------------- 3. someone else's wrong passwords lock out nobody else --
login() { # client password
    req "$1" POST /auth/login -H 'Content-Type: application/json' \
        -d "{\"email\":\"admin@itsur.edu\",\"password\":\"$2\"}"
}
for ((i = 1; i <= 10; i++)); do
    login "$C" "wrong-password-$i"
    expect "client C, wrong password $i" "$CODE" 401
done
login "$C" "wrong-password-11"
expect "client C, 11th guess: locked out" "$CODE" 429
login "$C" admin-demo-pass
expect "client C, even with the right password: locked out" "$CODE" 429
login "$B" admin-demo-pass
expect "the admin from client B: signs in" "$CODE" 200
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["data"]["accessToken"]' "$TMP/body" ||
    fail "the admin's sign-in has no access token"
say "PASS"
