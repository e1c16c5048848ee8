#!/usr/bin/env bash
# Development services for itsur: a PostgreSQL and a Redis that answer.
#
#   eval "$(scripts/services.sh env)"   # ensure both answer, print export lines
#   scripts/services.sh stop            # stop the project-local instances
#   scripts/services.sh status          # tell which instances are in use
#
# `env` resolution order, for each service independently:
#   1. $DATABASE_URL / $REDIS_URL if set and answering;
#   2. the usual system instance on 127.0.0.1:5432 / 127.0.0.1:6379;
#   3. a project-local instance under .local/ (git-ignored) on
#      127.0.0.1:55432 / 127.0.0.1:56379, started here and reused afterwards.
#      Debian packages are installed only when the server binaries are missing.
#
# Only the export lines go to stdout; every message goes to stderr.
# Probes go over TCP on purpose: a Unix socket of some other instance may be
# visible even when nothing listens on the loopback address we will hand out.
#
# Tunables (environment): ITSUR_LOCAL_PG_PORT (55432), ITSUR_LOCAL_REDIS_PORT
# (56379), ITSUR_SERVICES_TIMEOUT (30 seconds).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
LOCAL="$ROOT/.local"
PG_BASE="$LOCAL/pg"
PG_DATA="$PG_BASE/data"
PG_RUN="$PG_BASE/run"
PG_LOG="$PG_BASE/postgres.log"
PG_PORT="${ITSUR_LOCAL_PG_PORT:-55432}"
REDIS_DIR="$LOCAL/redis"
REDIS_PORT="${ITSUR_LOCAL_REDIS_PORT:-56379}"
TIMEOUT="${ITSUR_SERVICES_TIMEOUT:-30}"
APP_DB="itsur"

SYSTEM_PG_URL="postgres://postgres@127.0.0.1:5432/$APP_DB"
SYSTEM_REDIS_URL="redis://127.0.0.1:6379"
LOCAL_PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/$APP_DB"
LOCAL_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

say() { printf 'services: %s\n' "$*" >&2; }
die() {
    printf 'services: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- helpers --

# Split a URL into U_SCHEME U_AUTH U_HOST U_PORT U_PATH U_QUERY.
parse_url() {
    local re='^([A-Za-z][A-Za-z0-9+.-]*)://(([^@/?#]*)@)?(\[[^]/]*\]|[^:/?#]*)(:([0-9]*))?(/[^?#]*)?(\?[^#]*)?$'
    U_SCHEME="" U_AUTH="" U_HOST="" U_PORT="" U_PATH="" U_QUERY=""
    [[ $1 =~ $re ]] || return 1
    U_SCHEME="${BASH_REMATCH[1]}"
    U_AUTH="${BASH_REMATCH[3]}"
    U_HOST="${BASH_REMATCH[4]}"
    U_PORT="${BASH_REMATCH[6]}"
    U_PATH="${BASH_REMATCH[7]}"
    U_QUERY="${BASH_REMATCH[8]}"
    U_HOST="${U_HOST#[}"
    U_HOST="${U_HOST%]}"
}

# A URL without its password, fit for messages.
redact() {
    if parse_url "$1"; then
        local auth="${U_AUTH%%:*}"
        printf '%s://%s%s%s%s\n' "$U_SCHEME" "${auth:+$auth@}" "$U_HOST" "${U_PORT:+:$U_PORT}" "$U_PATH"
    else
        printf '(unparsable URL)\n'
    fi
}

# shellcheck disable=SC2016 # expanded by the inner bash
tcp_open() { # host port
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# Wait until "$@" succeeds, at most $TIMEOUT seconds.
wait_for() {
    local deadline=$((SECONDS + TIMEOUT))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

# First match in PATH, else the highest /usr/lib/postgresql/<version>/bin.
find_pg_tool() {
    local found
    if found="$(command -v "$1" 2>/dev/null)"; then
        printf '%s\n' "$found"
        return 0
    fi
    found="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path "*/bin/$1" -executable 2>/dev/null | sort -V | tail -n 1)"
    [[ -n $found ]] || return 1
    printf '%s\n' "$found"
}

PSQL="$(find_pg_tool psql || true)"
PG_ISREADY="$(find_pg_tool pg_isready || true)"
REDIS_CLI="$(command -v redis-cli || true)"

SUDO=()
apt_install() { # package...
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to install: $*"
        SUDO=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these manually: $*"
    say "installing Debian packages: $* (output follows)"
    if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2; then
        say "install failed; running apt-get update and retrying"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 ||
            die "apt-get update failed"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2 ||
            die "apt-get install $* failed"
    fi
}

# Serialise concurrent runs (e.g. `make run` and `make test` started together)
# while they create or start the project-local instances.
lock_local() {
    [[ -n ${LOCKED:-} ]] && return 0
    mkdir -p "$LOCAL"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$LOCAL/services.lock"
        flock -w "$((TIMEOUT * 2))" 9 || die "could not lock $LOCAL/services.lock"
    fi
    LOCKED=1
}

# --------------------------------------------------------------- postgres --

pg_answers() { # url
    parse_url "$1" || return 1
    if [[ -n $U_HOST && $U_HOST != /* ]]; then
        tcp_open "$U_HOST" "${U_PORT:-5432}" || return 1
    fi
    if [[ -n $PG_ISREADY ]]; then
        timeout 5 "$PG_ISREADY" -q -d "$1" >/dev/null 2>&1 || return 1
    fi
}

psql_q() { # url sql
    PGCONNECT_TIMEOUT=5 timeout 10 "$PSQL" -X -w -q -v ON_ERROR_STOP=1 -d "$1" -tAc "$2" 2>/dev/null
}

# Replace the database name of a Postgres URL.
pg_url_with_db() { # url db
    parse_url "$1" || die "cannot parse Postgres URL $(redact "$1")"
    local hostport="$U_HOST"
    [[ $hostport == *:* ]] && hostport="[$hostport]"
    printf '%s://%s%s%s/%s%s\n' "$U_SCHEME" "${U_AUTH:+$U_AUTH@}" "$hostport" "${U_PORT:+:$U_PORT}" "$2" "$U_QUERY"
}

# Create database $APP_DB through the maintenance URL if it is missing.
ensure_app_db() { # maintenance-url
    if [[ -z $PSQL ]]; then
        say "note: psql not found; cannot check that database '$APP_DB' exists on $(redact "$1") (create it by hand if needed)"
        return 0
    fi
    local sql_exists="select 1 from pg_database where datname = '$APP_DB'"
    [[ $(psql_q "$1" "$sql_exists" || true) == 1 ]] && return 0
    if ! psql_q "$1" "create database \"$APP_DB\"" >/dev/null; then
        # Lost a race with a concurrent run?
        [[ $(psql_q "$1" "$sql_exists" || true) == 1 ]] ||
            die "could not create database '$APP_DB' on $(redact "$1")"
    fi
    say "created database '$APP_DB' on $(redact "$1")"
}

PG_USER=""
pick_pg_user() {
    if ((EUID != 0)); then
        PG_USER="$(id -un)"
        return 0
    fi
    # postgres refuses to run as root: reuse the owner of an existing cluster,
    # else the `postgres` system user, else a dedicated `itsur-dev` user.
    if [[ -d $PG_DATA ]]; then
        local owner
        owner="$(stat -c %U "$PG_DATA")"
        if [[ $owner != root && $owner != UNKNOWN ]]; then
            PG_USER="$owner"
            return 0
        fi
    fi
    if id -u postgres >/dev/null 2>&1; then
        PG_USER=postgres
    else
        if ! id -u itsur-dev >/dev/null 2>&1; then
            say "creating system user itsur-dev to run the project-local Postgres"
            useradd --system --user-group --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin itsur-dev ||
                die "could not create system user itsur-dev"
        fi
        PG_USER=itsur-dev
    fi
}

# Run as $PG_USER. Closes fd 9 (the lock): a daemon inheriting it would hold
# the lock for as long as it runs.
as_pg() {
    if [[ $PG_USER == "$(id -un)" ]]; then
        (cd / && "$@") 9>&-
    else
        (cd / && runuser -u "$PG_USER" -- "$@") 9>&-
    fi
}

# Make every ancestor of $PG_BASE traversable by $PG_USER (e.g. a clone under
# /root, which is mode 0700 on Debian). Execute permission only, no read.
make_traversable() {
    as_pg test -w "$PG_BASE" && return 0
    local d="$PG_BASE" dirs=()
    while [[ $d != / ]]; do
        d="$(dirname "$d")"
        dirs=("$d" "${dirs[@]}")
    done
    for d in "${dirs[@]}"; do
        as_pg test -x "$d" && continue
        say "granting $PG_USER search (x) permission on $d"
        if command -v setfacl >/dev/null 2>&1 && setfacl -m "u:$PG_USER:x" "$d" 2>/dev/null; then
            continue
        fi
        chmod o+x "$d" || die "cannot make $d traversable for $PG_USER"
    done
    as_pg test -w "$PG_BASE" || die "$PG_USER cannot write to $PG_BASE"
}

# Settings regenerated at every start, so a moved clone keeps working.
write_local_pg_conf() {
    local sockets="$PG_RUN"
    # Unix socket paths are limited to 107 bytes; go TCP-only when too long.
    if ((${#PG_RUN} + 20 > 107)); then
        sockets=""
    fi
    as_pg tee "$PG_DATA/itsur.conf" >/dev/null <<EOF
# Written by scripts/services.sh at every start; do not edit.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '${sockets//\'/\'\'}'
max_connections = 200
# Disposable development cluster: durability traded for speed.
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
}

PG_CTL="" LOCAL_PG_MAINT_URL=""
local_pg_running() { as_pg "$PG_CTL" -D "$PG_DATA" status >/dev/null 2>&1; }
local_pg_answers_or_gone() { pg_answers "$LOCAL_PG_MAINT_URL" || ! local_pg_running; }

start_local_pg() {
    lock_local
    local initdb pg_ctl
    initdb="$(find_pg_tool initdb || true)"
    pg_ctl="$(find_pg_tool pg_ctl || true)"
    if [[ -z $initdb || -z $pg_ctl ]]; then
        apt_install postgresql
        initdb="$(find_pg_tool initdb)" || die "initdb still not found after installing postgresql"
        pg_ctl="$(find_pg_tool pg_ctl)" || die "pg_ctl still not found after installing postgresql"
        [[ -n $PSQL ]] || PSQL="$(find_pg_tool psql || true)"
        [[ -n $PG_ISREADY ]] || PG_ISREADY="$(find_pg_tool pg_isready || true)"
    fi
    # Prefer pg_ctl from the same installation as initdb.
    [[ -x "$(dirname "$initdb")/pg_ctl" ]] && pg_ctl="$(dirname "$initdb")/pg_ctl"

    pick_pg_user
    mkdir -p "$PG_BASE"
    if [[ ! -s $PG_DATA/PG_VERSION ]]; then
        chown "$PG_USER:" "$PG_BASE"
        chmod 0700 "$PG_BASE"
        make_traversable
        rm -rf "$PG_DATA"
        say "initialising project-local Postgres in ${PG_DATA#"$ROOT"/} (runs as $PG_USER)"
        if ! as_pg "$initdb" -D "$PG_DATA" -A trust -U postgres -E UTF8 --locale=C \
            >"$PG_BASE/initdb.log" 2>&1; then
            cat "$PG_BASE/initdb.log" >&2
            die "initdb failed (log: $PG_BASE/initdb.log)"
        fi
        printf "\ninclude_if_exists = 'itsur.conf'\n" | as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null
    else
        make_traversable
    fi

    local url="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
    PG_CTL="$pg_ctl" LOCAL_PG_MAINT_URL="$url"
    if local_pg_running; then
        # Already started by an earlier run (or still shutting down after a crash).
        wait_for local_pg_answers_or_gone ||
            die "project-local Postgres is running ($(head -n 1 "$PG_DATA/postmaster.pid")) but does not answer on 127.0.0.1:$PG_PORT (started from another network namespace?); run: scripts/services.sh stop"
    fi
    if ! pg_answers "$url"; then
        if tcp_open 127.0.0.1 "$PG_PORT"; then
            die "127.0.0.1:$PG_PORT is taken by another process; set ITSUR_LOCAL_PG_PORT to a free port"
        fi
        mkdir -p "$PG_RUN"
        chown "$PG_USER:" "$PG_RUN"
        write_local_pg_conf
        say "starting project-local Postgres on 127.0.0.1:$PG_PORT (log: ${PG_LOG#"$ROOT"/})"
        as_pg touch "$PG_LOG"
        if ! as_pg "$pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$TIMEOUT" -s start >&2; then
            tail -n 20 "$PG_LOG" >&2 || true
            die "project-local Postgres did not start within ${TIMEOUT}s (log: $PG_LOG)"
        fi
        wait_for pg_answers "$url" ||
            die "project-local Postgres started but does not answer on 127.0.0.1:$PG_PORT within ${TIMEOUT}s (log: $PG_LOG)"
    fi
    ensure_app_db "$url"
}

stop_local_pg() {
    [[ -s $PG_DATA/PG_VERSION ]] || return 0
    local pg_ctl
    pg_ctl="$(find_pg_tool pg_ctl || true)"
    [[ -n $pg_ctl ]] || die "pg_ctl not found; cannot stop the Postgres in $PG_DATA"
    pick_pg_user
    if as_pg "$pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
        as_pg "$pg_ctl" -D "$PG_DATA" -m fast -w -t "$TIMEOUT" -s stop >&2 ||
            die "could not stop the Postgres in $PG_DATA"
        say "stopped project-local Postgres"
    fi
}

DATABASE_URL_OUT=""
resolve_postgres() {
    if [[ -n ${DATABASE_URL:-} ]]; then
        if pg_answers "$DATABASE_URL"; then
            DATABASE_URL_OUT="$DATABASE_URL"
            return 0
        fi
        say "warning: DATABASE_URL=$(redact "$DATABASE_URL") does not answer; looking for another Postgres"
    fi
    if pg_answers "postgres://postgres@127.0.0.1:5432/postgres"; then
        local maint="postgres://postgres@127.0.0.1:5432/postgres"
        if [[ -z $PSQL ]] || [[ $(psql_q "$maint" "select 1" || true) == 1 ]]; then
            ensure_app_db "$maint"
            DATABASE_URL_OUT="$SYSTEM_PG_URL"
            return 0
        fi
        say "note: 127.0.0.1:5432 answers but user postgres cannot log in there without a password; using a project-local Postgres"
    fi
    start_local_pg
    DATABASE_URL_OUT="$LOCAL_PG_URL"
}

# ------------------------------------------------------------------ redis --

# shellcheck disable=SC2016 # expanded by the inner bash
redis_raw_ping() { # host port [AUTH arguments]
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        if [[ -n $2 ]]; then
            printf "AUTH %s\r\n" "$2" >&3
            IFS= read -r line <&3 || exit 1
            [[ $line == "+OK"* ]] || exit 1
        fi
        printf "PING\r\n" >&3
        IFS= read -r line <&3 || exit 1
        [[ $line == "+PONG"* ]]' "$1" "$2" "${3:-}" 2>/dev/null
}

redis_answers() { # url
    parse_url "$1" || return 1
    local host="${U_HOST:-127.0.0.1}" port="${U_PORT:-6379}"
    case "$U_SCHEME" in
    redis)
        if [[ -n $REDIS_CLI ]]; then
            [[ $(timeout 5 "$REDIS_CLI" --no-auth-warning -u "$1" ping 2>/dev/null) == PONG ]]
        else
            local auth=""
            if [[ $U_AUTH == *:* ]]; then
                auth="${U_AUTH%%:*} ${U_AUTH#*:}"
                auth="${auth# }"
            fi
            redis_raw_ping "$host" "$port" "$auth"
        fi
        ;;
    rediss) tcp_open "$host" "$port" ;; # TLS: connecting is all we can check
    *) return 1 ;;
    esac
}

redis_pid() { # prints the pid of the project-local redis-server, if running
    local pid
    pid="$(cat "$REDIS_DIR/redis.pid" 2>/dev/null || true)"
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null || true) == redis-server* ]] || return 1
    printf '%s\n' "$pid"
}

local_redis_answers_or_gone() { redis_answers "$LOCAL_REDIS_URL" || ! redis_pid >/dev/null; }

start_local_redis() {
    lock_local
    local server
    server="$(command -v redis-server || true)"
    if [[ -z $server ]]; then
        apt_install redis-server
        server="$(command -v redis-server)" || die "redis-server still not found after installing redis-server"
        [[ -n $REDIS_CLI ]] || REDIS_CLI="$(command -v redis-cli || true)"
    fi
    mkdir -p "$REDIS_DIR"
    if redis_pid >/dev/null; then
        # Already started by an earlier run (or still shutting down).
        wait_for local_redis_answers_or_gone ||
            die "project-local Redis is running (pid $(redis_pid)) but does not answer on 127.0.0.1:$REDIS_PORT (started from another network namespace?); run: scripts/services.sh stop"
        redis_answers "$LOCAL_REDIS_URL" && return 0
    fi
    if tcp_open 127.0.0.1 "$REDIS_PORT"; then
        die "127.0.0.1:$REDIS_PORT is taken by another process; set ITSUR_LOCAL_REDIS_PORT to a free port"
    fi
    rm -f "$REDIS_DIR/redis.pid"
    say "starting project-local Redis on 127.0.0.1:$REDIS_PORT (log: ${REDIS_DIR#"$ROOT"/}/redis.log)"
    # Relative paths (after cd) keep a repository path with spaces working.
    if ! (cd "$REDIS_DIR" && "$server" --daemonize yes --port "$REDIS_PORT" --bind 127.0.0.1 \
        --save '' --appendonly no --dir . --logfile redis.log --pidfile redis.pid) >&2 9>&-; then
        tail -n 20 "$REDIS_DIR/redis.log" >&2 || true
        die "redis-server failed to start (log: $REDIS_DIR/redis.log)"
    fi
    if ! wait_for redis_answers "$LOCAL_REDIS_URL"; then
        tail -n 20 "$REDIS_DIR/redis.log" >&2 || true
        die "project-local Redis does not answer on 127.0.0.1:$REDIS_PORT within ${TIMEOUT}s (log: $REDIS_DIR/redis.log)"
    fi
}

stop_local_redis() {
    local pid
    pid="$(redis_pid)" || {
        rm -f "$REDIS_DIR/redis.pid"
        return 0
    }
    kill -TERM "$pid"
    local deadline=$((SECONDS + TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || die "project-local Redis (pid $pid) did not stop within ${TIMEOUT}s"
        sleep 0.2
    done
    rm -f "$REDIS_DIR/redis.pid"
    say "stopped project-local Redis"
}

REDIS_URL_OUT=""
resolve_redis() {
    if [[ -n ${REDIS_URL:-} ]]; then
        if redis_answers "$REDIS_URL"; then
            REDIS_URL_OUT="$REDIS_URL"
            return 0
        fi
        say "warning: REDIS_URL=$(redact "$REDIS_URL") does not answer; looking for another Redis"
    fi
    if tcp_open 127.0.0.1 6379; then
        if redis_answers "$SYSTEM_REDIS_URL"; then
            REDIS_URL_OUT="$SYSTEM_REDIS_URL"
            return 0
        fi
        say "note: 127.0.0.1:6379 answers but not to an unauthenticated PING; using a project-local Redis"
    fi
    start_local_redis
    REDIS_URL_OUT="$LOCAL_REDIS_URL"
}

# --------------------------------------------------------------- commands --

emit() { printf 'export %s=%q\n' "$1" "$2"; }

cmd_env() {
    resolve_postgres
    resolve_redis

    local test_db test_redis
    if [[ -n ${TEST_DATABASE_URL:-} ]] && pg_answers "$TEST_DATABASE_URL"; then
        test_db="$TEST_DATABASE_URL"
    else
        # Tests connect to the maintenance database and CREATE DATABASE from it.
        test_db="$(pg_url_with_db "$DATABASE_URL_OUT" postgres)"
    fi
    if [[ -n ${TEST_REDIS_URL:-} ]] && redis_answers "$TEST_REDIS_URL"; then
        test_redis="$TEST_REDIS_URL"
    else
        test_redis="$REDIS_URL_OUT"
    fi

    emit DATABASE_URL "$DATABASE_URL_OUT"
    emit REDIS_URL "$REDIS_URL_OUT"
    emit TEST_DATABASE_URL "$test_db"
    emit TEST_REDIS_URL "$test_redis"
}

cmd_stop() {
    stop_local_pg
    stop_local_redis
}

cmd_status() {
    local s
    if pg_answers "postgres://postgres@127.0.0.1:5432/postgres"; then s=answers; else s="does not answer"; fi
    printf 'system Postgres 127.0.0.1:5432: %s\n' "$s" >&2
    if redis_answers "$SYSTEM_REDIS_URL"; then s=answers; else s="does not answer"; fi
    printf 'system Redis    127.0.0.1:6379: %s\n' "$s" >&2
    local pid
    pid="$(head -n 1 "$PG_DATA/postmaster.pid" 2>/dev/null || true)"
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        s="running (pid $pid)"
        pg_answers "postgres://postgres@127.0.0.1:$PG_PORT/postgres" || s+=", not answering here"
    elif [[ -s $PG_DATA/PG_VERSION ]]; then
        s="stopped"
    else
        s="not created"
    fi
    printf 'local  Postgres 127.0.0.1:%s: %s\n' "$PG_PORT" "$s" >&2
    if pid="$(redis_pid)"; then
        s="running (pid $pid)"
        redis_answers "$LOCAL_REDIS_URL" || s+=", not answering here"
    else
        s="stopped"
    fi
    printf 'local  Redis    127.0.0.1:%s: %s\n' "$REDIS_PORT" "$s" >&2
}

usage() {
    cat >&2 <<'EOF'
usage: scripts/services.sh env|stop|status
  env     make sure a Postgres and a Redis answer; print export lines to eval:
            eval "$(scripts/services.sh env)"
  stop    stop the project-local instances under .local/ (never system ones)
  status  tell which instances answer
EOF
}

case "${1:-}" in
env) cmd_env ;;
stop) cmd_stop ;;
status) cmd_status ;;
-h | --help | help) usage ;;
*)
    usage
    exit 2
    ;;
esac
