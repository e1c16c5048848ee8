#!/usr/bin/env bash
# Runs every packaging test in turn and summarises:
#   systemd, nginx, client-ip, makefile, compose, image, prometheus, debian, k8s, rolling-restart
#
#   ITSUR_BIN=target/debug/itsur packaging/tests/run-all.sh [NAME...]
#
# DATABASE_URL / REDIS_URL: from the environment, else scripts/services.sh finds or starts
# Postgres and Redis (as `make test` does). A script exits 77 when a tool it needs truly
# cannot be installed: listed as SKIPPED with its reason, and never counted as passed.
# Exit status: 1 when any script failed, else 0.
set -uo pipefail
TEST_NAME=run-all # read by lib.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ALL=(systemd nginx client-ip makefile compose image prometheus debian k8s rolling-restart)
if (($# > 0)); then TESTS=("$@"); else TESTS=("${ALL[@]}"); fi

if [[ -z ${DATABASE_URL:-} ]]; then
    if env_lines="$("$REPO_ROOT/scripts/services.sh" env)"; then
        eval "$env_lines"
        export DATABASE_URL REDIS_URL
    else
        say "scripts/services.sh could not provide Postgres/Redis: tests that need them will say so"
    fi
fi
export ITSUR_BIN="${ITSUR_BIN:-$REPO_ROOT/target/debug/itsur}"
say "binary: $ITSUR_BIN; DATABASE_URL=${DATABASE_URL:-<unset>}; REDIS_URL=${REDIS_URL:-<unset>}"

LOGDIR="$(mktemp -d "${TMPDIR:-/tmp}/itsur-packaging-tests.XXXXXX")"
passed=0 failed=0 skipped=0
SUMMARY=()
for t in "${TESTS[@]}"; do
    script="$REPO_ROOT/packaging/tests/$t.sh"
    [[ -f $script ]] || {
        SUMMARY+=("$(printf '%-16s FAILED   no such test script' "$t")")
        failed=$((failed + 1))
        continue
    }
    printf '\n===== %s =====\n' "$t" >&2
    start=$SECONDS
    bash "$script" 2>&1 | tee "$LOGDIR/$t.log"
    rc=${PIPESTATUS[0]}
    secs=$((SECONDS - start))
    case $rc in
    0)
        SUMMARY+=("$(printf '%-16s PASSED   %4ds' "$t" "$secs")")
        passed=$((passed + 1))
        ;;
    77)
        reason="$(grep -m1 -oE 'SKIP: .*' "$LOGDIR/$t.log" | sed 's/^SKIP: //')"
        SUMMARY+=("$(printf '%-16s SKIPPED  %4ds  %s' "$t" "$secs" "${reason:-no reason printed}")")
        skipped=$((skipped + 1))
        ;;
    *)
        SUMMARY+=("$(printf '%-16s FAILED   %4ds  exit %d, log %s' "$t" "$secs" "$rc" "$LOGDIR/$t.log")")
        failed=$((failed + 1))
        ;;
    esac
done

printf '\n===== packaging tests =====\n'
printf '%s\n' "${SUMMARY[@]}"
# Partial skips inside a passing script (e.g. the syscall audit without Postgres) are shown too.
grep -H 'SKIP part' "$LOGDIR"/*.log 2>/dev/null | sed "s#^$LOGDIR/##; s#\.log:# : #" || true
printf 'packaging: %d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"
((failed == 0)) || exit 1
rm -rf "$LOGDIR"
exit 0
