# Shared helpers of the packaging tests; sourced, never run.
#
# Exit codes of every test script: 0 passed, 1 failed, 77 skipped (a tool that truly cannot
# be installed here; the reason is printed on stderr and repeated by run-all.sh).
# shellcheck shell=bash disable=SC2034 # variables for the scripts that source this file

TEST_NAME="${TEST_NAME:-$(basename "${BASH_SOURCE[1]:-$0}" .sh)}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
PACKAGING="$REPO_ROOT/packaging"
SKIP=77

say() { printf '%s: %s\n' "$TEST_NAME" "$*" >&2; }
fail() {
    printf '%s: FAIL: %s\n' "$TEST_NAME" "$*" >&2
    exit 1
}
skip() {
    printf '%s: SKIP: %s\n' "$TEST_NAME" "$*" >&2
    exit "$SKIP"
}

# apt_install PKG... : installs Debian packages when apt-get works; returns non-zero when
# they cannot be installed (no apt-get, not root, no package list, no network).
APT_UPDATED=""
apt_install() {
    command -v apt-get >/dev/null 2>&1 || return 1
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null || return 1
        sudo=(sudo -n)
    fi
    say "installing Debian package(s): $*"
    if [[ -z $APT_UPDATED ]]; then
        "${sudo[@]}" apt-get update -qq >/dev/null 2>&1 || true
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" \
        >/dev/null 2>&1
}

# need_tool CMD PKG... : makes CMD available, installing the first Debian package of the list
# that installs; skips the test (exit 77) only when none can be installed.
need_tool() {
    local cmd="$1" pkg
    shift
    command -v "$cmd" >/dev/null 2>&1 && return 0
    for pkg in "$@"; do
        if apt_install "$pkg" && command -v "$cmd" >/dev/null 2>&1; then
            return 0
        fi
    done
    skip "'$cmd' is missing and could not be installed from Debian packages ($*): no apt-get, no root, or no network"
}

# The itsur binary under test: $ITSUR_BIN, else target/debug/itsur of this repository.
itsur_bin() {
    local bin="${ITSUR_BIN:-$REPO_ROOT/target/debug/itsur}"
    [[ -x $bin ]] || fail "no itsur binary at $bin: build it (cargo build --locked) or set ITSUR_BIN"
    printf '%s\n' "$bin"
}

# A TCP port nobody listens on right now, on 127.0.0.1.
free_port() {
    python3 - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

# wait_http URL SECONDS [PID]: until URL answers 200; fails early when PID died.
wait_http() {
    local url="$1" secs="$2" pid="${3:-}" i
    for ((i = 0; i < secs * 10; i++)); do
        if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then
            return 0
        fi
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        sleep 0.1
    done
    return 1
}

# Temp directory removed on exit (scripts add their own cleanup before calling this).
make_tmp() {
    TMP="$(mktemp -d "${TMPDIR:-/tmp}/itsur-$TEST_NAME.XXXXXX")"
}

# Database helpers for tests that need a migrated database of their own.
# pg_admin_url URL: the same server, database "postgres".
pg_admin_url() {
    python3 - "$1" <<'PY'
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
print(u.urlunsplit((p.scheme, p.netloc, "/postgres", p.query, "")))
PY
}
# pg_with_db URL DBNAME: the same server and options, another database.
pg_with_db() {
    python3 - "$1" "$2" <<'PY'
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
print(u.urlunsplit((p.scheme, p.netloc, "/" + sys.argv[2], p.query, "")))
PY
}

# create_db PREFIX: a throwaway database PREFIX_<random> on DATABASE_URL's server; sets DB
# and ADMIN_URL (fails the test when it cannot). drop_db, from the script's cleanup, drops it
# again (nothing to do before create_db ran).
create_db() {
    ADMIN_URL="$(pg_admin_url "$DATABASE_URL")"
    DB="$1_$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
    psql -X -q -d "$ADMIN_URL" -c "CREATE DATABASE \"$DB\"" >/dev/null || {
        DB=""
        fail "cannot create a database on $ADMIN_URL"
    }
}
drop_db() {
    [[ -n ${DB:-} ]] || return 0
    psql -X -q -d "$ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 ||
        say "could not drop database $DB"
}

# need_services: DATABASE_URL (and REDIS_URL) from the environment, else from
# scripts/services.sh (which finds or starts Postgres and Redis); says so when REDIS_URL stays
# unset (the instances then use their in-process fallbacks).
need_services() {
    if [[ -z ${DATABASE_URL:-} ]]; then
        say "DATABASE_URL unset: asking scripts/services.sh for Postgres and Redis"
        local env_lines
        env_lines="$("$REPO_ROOT/scripts/services.sh" env)" || fail "scripts/services.sh could not provide Postgres/Redis"
        eval "$env_lines"
    fi
    [[ -n ${REDIS_URL:-} ]] || say "REDIS_URL unset: the instances use their in-process fallbacks"
}

# migrated_db PREFIX: a database of the test's own (see create_db; drop_db in the cleanup),
# exported as DATABASE_URL with the settings every instance of the test shares (a JWT
# secret, a random Redis prefix, JSON logs, ITSUR_ENV=prod, no inherited addresses), then
# `itsur migrate` ($BIN) run on it.
migrated_db() {
    create_db "$1"
    export DATABASE_URL
    DATABASE_URL="$(pg_with_db "$DATABASE_URL" "$DB")"
    export JWT_SECRET="$TEST_NAME-test-secret-0123456789abcdefgh"
    export REDIS_PREFIX="itsur-$TEST_NAME-$RANDOM$RANDOM" LOG_FORMAT=json RUST_LOG=info ITSUR_ENV=prod
    unset DATABASE_READ_URL BIND_ADDR METRICS_BIND
    "$BIN" migrate >"$TMP/migrate.log" 2>&1 || {
        cat "$TMP/migrate.log" >&2
        fail "itsur migrate failed"
    }
}

# start_nginx UPSTREAM_PORT... : the shipped packaging/nginx/itsur.conf (see render_nginx)
# in front of itsur instances on 127.0.0.1:UPSTREAM_PORT..., run in the background from
# $TMP/nginx until it answers /health/ready over TLS. Sets NGINX_PID (for the script's
# cleanup), BASE (https://127.0.0.1:$TLS_PORT), TLS_PORT and TLS_CA.
start_nginx() {
    local i
    render_nginx "$PACKAGING/nginx/itsur.conf" "$TMP/nginx" "$(free_port)" "$@" >/dev/null
    nginx -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/logs/error.log" -g 'daemon off;' &
    NGINX_PID=$!
    BASE="https://127.0.0.1:$TLS_PORT"
    for ((i = 0; i < 100; i++)); do
        curl -fsS -o /dev/null --max-time 1 --cacert "$TLS_CA" "$BASE/health/ready" 2>/dev/null && return 0
        kill -0 "$NGINX_PID" 2>/dev/null || fail "nginx did not start (see $TMP/nginx/logs/error.log)"
        sleep 0.1
    done
    fail "nginx on $BASE did not answer /health/ready (see $TMP/nginx/logs/error.log)"
}

# render_nginx SRC DIR LISTEN_PORT UPSTREAM_PORT... : a runnable copy of an nginx conf of
# packaging/nginx/ under DIR (prefix, logs, temp paths, pid all inside DIR): nginx listens
# on 127.0.0.1:LISTEN_PORT and balances over 127.0.0.1:UPSTREAM_PORT...; everything else
# is the file as shipped. Prints the path of the wrapper nginx.conf (use with -p DIR/ -c).
# A conf with a TLS server (itsur.conf): LISTEN_PORT is its plain-HTTP (redirecting)
# server; the TLS server listens on 127.0.0.1:$TLS_PORT (a free port unless set) with a
# self-signed certificate for localhost / 127.0.0.1 made now (see tls_cert), the redirect
# points at that port, and TLS_PORT and TLS_CA (the certificate, for curl --cacert) are set.
render_nginx() {
    local src="$1" dir="$2" port="$3" tls_port=""
    shift 3
    mkdir -p "$dir/logs" "$dir/tmp"
    if grep -qE '^\s*listen 443 ssl;$' "$src"; then
        TLS_PORT="${TLS_PORT:-$(free_port)}"
        tls_port="$TLS_PORT"
        tls_cert "$dir/tls" || return 1
        TLS_CA="$dir/tls/cert.pem"
    fi
    python3 - "$src" "$dir/itsur.conf" "$dir/logs/itsur.access.log" "$port" "$tls_port" "$dir/tls" "$@" <<'PY' || return 1
import re, sys
src, dst, log, port, tls_port, tls_dir = sys.argv[1:7]
ups = sys.argv[7:]
text = open(src, encoding="utf-8").read()
def sub(pattern, repl, count_expected, flags=re.M):
    global text
    text, n = re.subn(pattern, repl, text, flags=flags)
    if n != count_expected:
        sys.exit(f"render_nginx: {src}: expected {count_expected} match(es) of /{pattern}/, got {n}")
sub(r"^(\s*)listen 80;$", rf"\1listen 127.0.0.1:{port};", 1)
sub(r"^\s*listen \[::\]:80;\n", "", 1)
if tls_port:
    sub(r"^(\s*)listen 443 ssl;$", rf"\1listen 127.0.0.1:{tls_port} ssl;", 1)
    sub(r"^\s*listen \[::\]:443 ssl;\n", "", 1)
    sub(r"^(\s*ssl_certificate )\S+;$", rf"\g<1>{tls_dir}/cert.pem;", 1)
    sub(r"^(\s*ssl_certificate_key )\S+;$", rf"\g<1>{tls_dir}/key.pem;", 1)
    sub(r"https://\$host\$request_uri", f"https://$host:{tls_port}$request_uri", 1)
sub(r"^(\s*error_log )/var/log/nginx/error\.log( crit;)$", rf"\g<1>{log.rsplit('/', 1)[0]}/error.log\2", 1)
n_logs = len(re.findall(r"^\s*access_log \S+ itsur_json;$", text, flags=re.M))
sub(r"^(\s*access_log )\S+( itsur_json;)$", rf"\g<1>{log}\2", max(n_logs, 1))
servers = re.findall(r"^\s*server (\S+:\d+) (.*);$", text, flags=re.M)
if len(servers) < 1:
    sys.exit(f"render_nginx: {src}: no upstream server lines")
params = servers[0][1]
block = "".join(f"    server 127.0.0.1:{p} {params};\n" for p in ups)
text = re.sub(r"^\s*server \S+:\d+ .*;\n", "", text, flags=re.M)
sub(r"^(\s*zone itsur_api 64k;\n)", lambda m: m.group(1) + block, 1)
open(dst, "w", encoding="utf-8").write(text)
PY
    cat >"$dir/nginx.conf" <<CONF
# test wrapper around $(basename "$src"), written by packaging/tests/lib.sh
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/logs/error.log notice;
events { worker_connections 1024; }
http {
    client_body_temp_path $dir/tmp/client_body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    include $dir/itsur.conf;
}
CONF
    printf '%s\n' "$dir/nginx.conf"
}

# tls_cert DIR: a self-signed certificate (DIR/cert.pem, EC P-256, valid one day, for
# localhost and 127.0.0.1) and its key (DIR/key.pem), made at test time; kept when present.
tls_cert() {
    local dir="$1"
    [[ -s $dir/cert.pem && -s $dir/key.pem ]] && return 0
    need_tool openssl openssl
    mkdir -p "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -keyout "$dir/key.pem" -out "$dir/cert.pem" >"$dir/openssl.log" 2>&1 || {
        cat "$dir/openssl.log" >&2
        return 1
    }
}

# PyYAML for the python3 on PATH: pip first (it serves whichever python3 this is), then
# Debian's python3-yaml (for the system python3); skips only when neither works.
need_pyyaml() {
    python3 -c 'import yaml' 2>/dev/null && return 0
    say "installing PyYAML"
    python3 -m pip install -q pyyaml >/dev/null 2>&1 ||
        python3 -m pip install -q --user pyyaml >/dev/null 2>&1 ||
        python3 -m pip install -q --break-system-packages pyyaml >/dev/null 2>&1 ||
        apt_install python3-yaml || true
    python3 -c 'import yaml' 2>/dev/null ||
        skip "PyYAML cannot be installed for $(command -v python3) (pip and apt-get both failed)"
}
