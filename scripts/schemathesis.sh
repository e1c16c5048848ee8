#!/usr/bin/env bash
# Schemathesis over /openapi.json for three roles (issue 17 item 9); `make test` runs it after
# the browser suite (SCHEMATHESIS=0 skips it).
#
#   scripts/schemathesis.sh [EXTRA st run ARGS...]
#
# Installs the pinned schemathesis from PyPI into .local/schemathesis-<version> (git-ignored;
# once), creates a fresh database, migrates it, seeds the demo campus (`itsur seed --demo`),
# starts ONE `itsur all` (the debug binary, ITSUR_BIN) on a free loopback port, logs in the
# demo student, vendor staff and campus admin, and runs `st run` once per role with every
# check and every phase (examples, coverage, fuzzing, stateful) with a bounded number of
# examples per operation (ST_MAX_EXAMPLES, default 20) and a fixed seed (ST_SEED), so a run is
# reproducible and takes a couple of minutes on 2 cores. Reports (JUnit) go to
# target/schemathesis/. Exits non-zero when any role reports a failure.
#
# Without python3 or PyPI it prints one "SKIP schemathesis: <why>" line and exits 0.
# Needs psql, curl and the dev services (TEST_DATABASE_URL, TEST_REDIS_URL:
# `eval "$(scripts/services.sh env)"`).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$root"

# Pinned: a new schemathesis adds checks, and `make test` must not change under our feet.
VERSION=4.32.5
venv="$root/.local/schemathesis-$VERSION"
max_examples="${ST_MAX_EXAMPLES:-20}"
seed="${ST_SEED:-20261205}"

skip() {
    echo "SKIP schemathesis: $*"
    exit 0
}

[[ ${SCHEMATHESIS:-1} != 0 ]] || skip "SCHEMATHESIS=0"
if [[ ! -x $venv/bin/st ]]; then
    command -v python3 >/dev/null || skip "no python3"
    rm -rf "$venv"
    python3 -m venv "$venv" >/dev/null 2>&1 || skip "python3 -m venv failed (apt-get install python3-venv)"
    echo "schemathesis: installing schemathesis $VERSION from PyPI into $venv" >&2
    if ! "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION" >&2; then
        rm -rf "$venv"
        skip "pip install schemathesis==$VERSION failed (offline?)"
    fi
fi
PSQL="$(command -v psql || ls -1 /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -n 1 || true)"
[[ -n $PSQL ]] || skip "no psql to create the test database"
command -v curl >/dev/null || skip "no curl"
: "${TEST_DATABASE_URL:?set TEST_DATABASE_URL (eval \"\$(scripts/services.sh env)\")}"
: "${TEST_REDIS_URL:?set TEST_REDIS_URL}"
ITSUR_BIN="${ITSUR_BIN:-$root/target/debug/itsur}"
[[ -x $ITSUR_BIN ]] || cargo build --locked --bin itsur

port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export JWT_SECRET="schemathesis-secret-0123456789abcdef0123456789"
# Schemathesis sends thousands of requests from one address: lift the limits, not the code
# (their 429s are documented and checked; with them on, most cases would only see 429).
export RATE_LIMIT_IP=1000000/1m RATE_LIMIT_USER=1000000/1m RATE_LIMIT_ORDERS=1000000/1m \
    RATE_LIMIT_AUTH=1000000/1m RATE_LIMIT_LOGIN=1000000/1m
# shellcheck source-path=SCRIPTDIR source=lib/demo-server.sh
. "$root/scripts/lib/demo-server.sh"
demo_server_start schemathesis st "$port"
base="$DEMO_BASE"

# An access token of a demo account (printed by `itsur seed --demo`).
token() {
    curl -fsS "$base/auth/login" -H 'content-type: application/json' \
        -d "{\"email\":\"$1\",\"password\":\"$2\"}" |
        "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["data"]["accessToken"])'
}

reports="$root/target/schemathesis"
mkdir -p "$reports"
status=0
started=$SECONDS
for role in ${ST_ROLES:-student staff admin}; do
    access="$(token "$role@itsur.edu" "$role-demo-pass")"
    echo "schemathesis: role $role ($max_examples examples per operation, seed $seed)"
    # Excluded: the operations that end the caller's own session (a fuzzer that logs itself
    # out tests nothing after that); their 401/404 answers are covered in tests/it.
    "$venv/bin/st" --config-file "$root/tests/schemathesis/schemathesis.toml" run "$base/openapi.json" \
        --checks all \
        --phases examples,coverage,fuzzing,stateful \
        --max-examples "$max_examples" \
        --seed "$seed" \
        --generation-deterministic \
        --workers 2 \
        --request-timeout 30 \
        --no-color \
        --header "Authorization: Bearer $access" \
        --exclude-operation-id logout --exclude-operation-id web_logout \
        --exclude-operation-id revoke_session \
        --report junit --report-junit-path "$reports/$role.xml" \
        "$@" || status=$?
done
echo "schemathesis: three roles in $((SECONDS - started)) s"
if ((status != 0)); then
    echo "schemathesis failed; the last lines of the server log:" >&2
    tail -n 40 "$DEMO_LOG" >&2
fi
exit "$status"
