#!/usr/bin/env bash
# The newcomer path, for real (issue 17, item 14):
#   1. the Makefile takes the binary from cargo's target directory: with CARGO_TARGET_DIR
#      set, `make -n run` / `make -n test-packaging` name that directory, never ./target;
#   2. `make run` with BIND_ADDR set (the setting the binary documents) serves there, and
#      what it prints holds neither DATABASE_URL's nor REDIS_URL's password (the URLs carry
#      a made-up one; the dev Postgres trusts local connections, Redis ignores it);
#   3. the README's curl walk-through, run twice against it as written (only its base URL
#      pointed at BIND_ADDR): every run places a new order (a fresh Idempotency-Key), its
#      retry replays that order, and every transition sends If-Match and gets a new version.
#
#   DATABASE_URL=postgres://... REDIS_URL=redis://... packaging/tests/makefile.sh
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_tool make make
need_tool curl curl
need_tool jq jq
need_tool psql postgresql-client
need_tool python3 python3
if [[ -z ${DATABASE_URL:-} ]]; then
    env_lines="$("$REPO_ROOT/scripts/services.sh" env)" || fail "scripts/services.sh could not provide Postgres/Redis"
    eval "$env_lines"
fi
[[ -n ${REDIS_URL:-} ]] || fail "REDIS_URL is needed (make run would start a project-local Redis)"

make_tmp
RUN_PID="" DB=""
cleanup() {
    local rc=$?
    # make runs in its own process group (setsid): stop make, its shell and itsur together.
    [[ -n $RUN_PID ]] && kill -TERM -- "-$RUN_PID" 2>/dev/null
    wait 2>/dev/null || true
    drop_db
    if ((rc != 0)) && [[ -d $TMP ]]; then say "logs kept in $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

# ------------------------------------------------ 1. CARGO_TARGET_DIR --
elsewhere="$TMP/elsewhere-target"
out="$(CARGO_TARGET_DIR="$elsewhere" make -C "$REPO_ROOT" --no-print-directory -n run test-packaging)"
grep -q "$elsewhere/debug/itsur all" <<<"$out" || fail "make -n run with CARGO_TARGET_DIR does not run $elsewhere/debug/itsur"
grep -q "ITSUR_BIN='$elsewhere/debug/itsur'" <<<"$out" || fail "make -n test-packaging does not test $elsewhere/debug/itsur"
if grep -nE '(^|[ =/.])target/debug' <<<"$out" >&2; then
    fail "the Makefile still names ./target/debug with CARGO_TARGET_DIR set"
fi
say "ok: with CARGO_TARGET_DIR the Makefile uses \$CARGO_TARGET_DIR/debug/itsur"

# ---------------------------------------------------- 2. make run --
create_db itsur_makerun
PG_SECRET="pg-secret-$RANDOM$RANDOM" REDIS_SECRET="redis-secret-$RANDOM$RANDOM"
db_url="$(python3 - "$DATABASE_URL" "$DB" "$PG_SECRET" <<'PY'
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
user = p.username or "postgres"
host = p.hostname + (f":{p.port}" if p.port else "")
print(u.urlunsplit((p.scheme, f"{user}:{sys.argv[3]}@{host}", "/" + sys.argv[2], p.query, "")))
PY
)"
redis_url="$(python3 - "$REDIS_URL" "$REDIS_SECRET" <<'PY'
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
host = p.hostname + (f":{p.port}" if p.port else "")
print(u.urlunsplit((p.scheme, f"default:{sys.argv[2]}@{host}", p.path, p.query, "")))
PY
)"
# Redis without requirepass answers AUTH with an error: make sure this one ignores it.
if ! redis-cli -u "$redis_url" ping 2>/dev/null | grep -q PONG; then
    redis_url="$REDIS_URL"
    REDIS_SECRET=""
    say "Redis refuses AUTH here: REDIS_URL without a password (only DATABASE_URL's is checked)"
fi
PORT="$(free_port)"
BIND="127.0.0.1:$PORT"
DATABASE_URL="$db_url" REDIS_URL="$redis_url" REDIS_PREFIX="itsur-makerun-$RANDOM$RANDOM" \
    BIND_ADDR="$BIND" RATE_LIMIT_IP=off RUST_LOG=info \
    setsid make -C "$REPO_ROOT" --no-print-directory run >"$TMP/run.out" 2>"$TMP/run.err" &
RUN_PID=$!
# The first make run may build; allow for it.
wait_http "http://$BIND/health/ready" 600 "$RUN_PID" || {
    tail -20 "$TMP/run.err" >&2
    fail "make run did not serve on BIND_ADDR=$BIND"
}
say "ok: make run serves on BIND_ADDR=$BIND"

# ------------------------------------------------- 3. README twice --
python3 - "$REPO_ROOT/README.md" "$TMP/walk.sh" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
sec = text.split("## Walk-through with curl", 1)[1]
block = re.search(r"```sh\n(.*?)```", sec, re.S).group(1)
assert block.startswith("H=http://127.0.0.1:8080\n"), block[:40]
block = block.replace("H=http://127.0.0.1:8080\n", 'H="http://$WALK_BIND"\n', 1)
# Report what the walk-through computed (its variables) for the checks below.
block += '\necho "RESULT order=$ORDER replay=$(place | jq -r .data.id) version=$VERSION"\n'
open(sys.argv[2], "w", encoding="utf-8").write(block)
PY
prev=""
for run in 1 2; do
    WALK_BIND="$BIND" bash -eo pipefail "$TMP/walk.sh" >"$TMP/walk.$run" 2>&1 || {
        cat "$TMP/walk.$run" >&2
        fail "README walk-through, run $run, failed"
    }
    res="$(grep '^RESULT ' "$TMP/walk.$run")"
    order="$(sed -nE 's/.* order=([^ ]*) .*/\1/p' <<<"$res")"
    replay="$(sed -nE 's/.* replay=([^ ]*) .*/\1/p' <<<"$res")"
    [[ $order =~ ^[0-9a-f-]{36}$ ]] || fail "run $run: no order placed: $(cat "$TMP/walk.$run")"
    [[ $order == "$replay" ]] || fail "run $run: retry with the same Idempotency-Key gave $replay, not $order"
    [[ $order != "$prev" ]] || fail "run $run: the same order as the previous run ($order): the Idempotency-Key is not fresh"
    for to in accepted preparing ready; do
        grep -qE "^$to: version [0-9]+$" "$TMP/walk.$run" ||
            fail "run $run: transition to $to got no new version: $(cat "$TMP/walk.$run")"
    done
    [[ $(grep -c '' <(grep -E '^"ready"$' "$TMP/walk.$run")) == 1 ]] || fail "run $run: final status is not \"ready\""
    grep -q 'If-Match: \\"\$VERSION\\"' "$TMP/walk.sh" || fail "the walk-through sends no If-Match"
    prev="$order"
    say "ok: README walk-through run $run: order $order placed, replayed, accepted -> preparing -> ready with If-Match"
done

# ------------------------------------------------ no secrets printed --
for s in "$PG_SECRET" ${REDIS_SECRET:+"$REDIS_SECRET"}; do
    if grep -l -- "$s" "$TMP/run.out" "$TMP/run.err"; then
        grep -h -- "$s" "$TMP/run.out" "$TMP/run.err" | head -3 >&2
        fail "make run printed a password"
    fi
done
grep -q "DATABASE_URL=.*:\*\*\*@" "$TMP/run.err" || fail "make run's start line does not show DATABASE_URL redacted"
say "ok: make run's output holds no password ($(grep -c '' "$TMP/run.err") lines checked)"
say "PASS"
