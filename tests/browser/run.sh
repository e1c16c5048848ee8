#!/usr/bin/env bash
# The browser suite (`make test` runs it after cargo test): Debian's Chromium driven by
# playwright-core (no browser download), axe-core on every page.
#
#   tests/browser/run.sh [FILE.test.mjs ...]     default: every tests/browser/*.test.mjs
#
# Needs: chromium (/usr/bin/chromium, or CHROMIUM=path), node >= 18 and npm, psql, the
# debug binary (target/debug/itsur, or ITSUR_BIN), and the dev services (TEST_DATABASE_URL,
# TEST_REDIS_URL: `eval "$(scripts/services.sh env)"`). Without chromium or node it prints
# one "SKIP browser tests: <why>" line and exits 0.
#
# It installs the locked npm packages into tests/browser/node_modules (`npm ci`, only when
# package-lock.json changed), creates a fresh database, migrates and seeds it (demo data),
# starts ONE `itsur all` on a free loopback port for every test file (ITSUR_BASE_URL), runs
# the files one after another with node's test runner, then stops the server and drops the
# database. Screenshots go to docs/screenshots/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

skip() {
    echo "SKIP browser tests: $*"
    exit 0
}

CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
[[ -n $CHROMIUM && -x $CHROMIUM ]] || skip "no chromium (apt-get install chromium)"
command -v node >/dev/null || skip "no node (apt-get install nodejs npm)"
command -v npm >/dev/null || skip "no npm (apt-get install npm)"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
((node_major >= 18)) || skip "node $node_major is older than 18"
PSQL="$(command -v psql || ls -1 /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -n 1 || true)"
[[ -n $PSQL ]] || skip "no psql to create the test database"
: "${TEST_DATABASE_URL:?set TEST_DATABASE_URL (eval \"\$(scripts/services.sh env)\")}"
: "${TEST_REDIS_URL:?set TEST_REDIS_URL}"
ITSUR_BIN="${ITSUR_BIN:-$root/target/debug/itsur}"
[[ -x $ITSUR_BIN ]] || cargo build --locked --bin itsur
export CHROMIUM ITSUR_BIN

# Locked packages, project-local; reinstalled only when the lockfile changed.
stamp="$here/node_modules/.lock-sha256"
want="$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)"
if [[ ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error) ||
        skip "npm ci failed (offline and no tests/browser/node_modules?)"
    echo "$want" >"$stamp"
fi

port="$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
export JWT_SECRET="browser-tests-secret-0123456789abcdef0123456789"
# The suite places orders and loads pages faster than a person: lift the limits, not the code.
export RATE_LIMIT_IP=100000/1m RATE_LIMIT_USER=100000/1m RATE_LIMIT_ORDERS=100000/1m \
    RATE_LIMIT_AUTH=1000/1m RATE_LIMIT_LOGIN=1000/1m
# shellcheck source-path=SCRIPTDIR source=../../scripts/lib/demo-server.sh
. "$root/scripts/lib/demo-server.sh"
demo_server_start "browser tests" browser "$port"
export ITSUR_BASE_URL="$DEMO_BASE" ITSUR_SERVER_LOG="$DEMO_LOG"
export ITSUR_DATABASE_URL="$DEMO_DB_URL" PSQL

mkdir -p "$root/docs/screenshots"
if (($# > 0)); then
    files=("$@")
else
    files=("$here"/*.test.mjs)
fi
status=0
# One file at a time: each launches its own Chromium, and the machine has 2 cores.
node --test "${files[@]}" || status=$?
if ((status != 0)); then
    echo "browser tests failed; the last lines of the server log:" >&2
    tail -n 40 "$DEMO_LOG" >&2
fi
exit "$status"
