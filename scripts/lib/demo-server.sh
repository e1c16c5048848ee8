# shellcheck shell=bash
# Sourced by the suites that drive a whole `itsur all` (tests/browser/run.sh,
# scripts/schemathesis.sh): a throw-away database seeded with the demo accounts, the server on
# a given port, ready before the function returns; on EXIT the server stops and the database
# is dropped.
#
# demo_server_start LABEL PREFIX PORT
#   needs PSQL, ITSUR_BIN, TEST_DATABASE_URL, TEST_REDIS_URL; the caller exports JWT_SECRET and
#   any RATE_LIMIT_* first. Sets DEMO_TMP, DEMO_DB_URL, DEMO_BASE and DEMO_LOG.

demo_server_start() {
    local label="$1" prefix="$2" port="$3"
    DEMO_TMP="$(mktemp -d)"
    demo_db="itsur_${prefix}_$$_$RANDOM"
    DEMO_DB_URL="${TEST_DATABASE_URL%/*}/$demo_db"
    DEMO_LOG="$DEMO_TMP/server.log"
    DEMO_BASE="http://127.0.0.1:$port"
    demo_pid=""
    trap demo_server_stop EXIT

    "$PSQL" -X -q -w "$TEST_DATABASE_URL" -c "create database $demo_db" >/dev/null
    export DATABASE_URL="$DEMO_DB_URL" REDIS_URL="$TEST_REDIS_URL" REDIS_PREFIX="$prefix$$$RANDOM"
    export ITSUR_ENV=dev BIND_ADDR="127.0.0.1:$port" HTTP_WORKERS=2 WORKER_CONCURRENCY=2
    export HSTS_MAX_AGE_SECS=0 RUST_LOG="${RUST_LOG:-warn}"
    "$ITSUR_BIN" migrate >"$DEMO_TMP/migrate.log" 2>&1 || { cat "$DEMO_TMP/migrate.log"; exit 1; }
    "$ITSUR_BIN" seed --demo >"$DEMO_TMP/seed.log" 2>&1 || { cat "$DEMO_TMP/seed.log"; exit 1; }
    "$ITSUR_BIN" all >"$DEMO_LOG" 2>&1 &
    demo_pid=$!

    local deadline=$((SECONDS + 60))
    until curl -fsS "$DEMO_BASE/health/ready" >/dev/null 2>&1; do
        if ! kill -0 "$demo_pid" 2>/dev/null || ((SECONDS > deadline)); then
            echo "$label: the server did not become ready; its log:" >&2
            tail -n 50 "$DEMO_LOG" >&2
            exit 1
        fi
        sleep 0.2
    done
}

demo_server_stop() {
    if [[ -n ${demo_pid:-} ]]; then
        kill "$demo_pid" 2>/dev/null || true
        wait "$demo_pid" 2>/dev/null || true
    fi
    if [[ -n ${demo_db:-} ]]; then
        "$PSQL" -X -q -w "$TEST_DATABASE_URL" -c "drop database if exists $demo_db with (force)" \
            >/dev/null 2>&1 || true
    fi
    [[ -z ${DEMO_TMP:-} ]] || rm -rf "$DEMO_TMP"
}
