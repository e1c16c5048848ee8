#!/usr/bin/env bash
# The container image without a Docker engine: builds the image's runtime tree with
# packaging/rootfs.sh (the script the Dockerfile runs) around the static binary, then runs it
# the way the image does — chroot into that tree (nothing else in it: no shell, no libc),
# uid 10001, the Dockerfile's ENV only, plus the /etc/hosts and /etc/resolv.conf Docker mounts:
#   1. `itsur migrate` against DATABASE_URL with the host written as a NAME (localhost), so
#      name resolution from scratch is exercised;
#   2. `itsur serve` and `itsur worker` start; `itsur healthcheck` (the image's HEALTHCHECK,
#      no arguments) answers 0 in each container's environment, and non-zero when nothing runs;
#   3. the processes run as uid 10001; SIGTERM stops them with exit 0.
#
#   STATIC_BIN=target/x86_64-unknown-linux-gnu/release/itsur packaging/tests/image.sh
#
# STATIC_BIN defaults to the `make static` output; it is built when missing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_tool python3 python3
need_tool psql postgresql-client
[[ $(id -u) -eq 0 ]] || skip "chroot needs root (CAP_SYS_CHROOT); this runs as uid $(id -u)"
STATIC_BIN="${STATIC_BIN:-$REPO_ROOT/target/x86_64-unknown-linux-gnu/release/itsur}"
if [[ ! -x $STATIC_BIN ]]; then
    say "no static binary at $STATIC_BIN: running make static (a release build, several minutes)"
    make -C "$REPO_ROOT" --no-print-directory static >&2 || fail "make static failed"
fi
if [[ -z ${DATABASE_URL:-} ]]; then
    env_lines="$("$REPO_ROOT/scripts/services.sh" env)" || fail "scripts/services.sh could not provide Postgres"
    eval "$env_lines"
fi

make_tmp
PIDS=() DB=""
cleanup() {
    local rc=$? p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    drop_db
    if ((rc != 0)); then say "logs kept in $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

# ------------------------------------------------------------- the tree --
ROOT="$TMP/rootfs"
sh "$PACKAGING/rootfs.sh" "$STATIC_BIN" "$ROOT"
cp /etc/hosts /etc/resolv.conf "$ROOT/etc/" # what Docker bind-mounts into every container
say "runtime tree: $(find "$ROOT" -type f | sed "s|$ROOT||" | sort | tr '\n' ' ')"
if find "$ROOT" -name 'sh' -o -name '*.so*' | grep -q .; then
    fail "the runtime tree holds a shell or a shared library"
fi

create_db itsur_image
# The same server, addressed by name: scratch has no resolver library, only glibc's built-in
# files/dns NSS modules and /etc/nsswitch.conf from rootfs.sh.
DB_URL="$(python3 - "$DATABASE_URL" "$DB" <<'PY'
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
host = p.hostname or "localhost"
if host in ("127.0.0.1", "::1"):
    host = "localhost"
auth = p.netloc.rsplit("@", 1)[0] + "@" if "@" in p.netloc else ""
port = f":{p.port}" if p.port else ""
print(u.urlunsplit((p.scheme, f"{auth}{host}{port}", "/" + sys.argv[2], p.query, "")))
PY
)"

# image_cmd VAR=VALUE... -- ARGS: sets IMG to the command running /itsur ARGS inside the
# tree as uid 10001, with only the Dockerfile's ENV and the given variables. Run as a simple
# command ("${IMG[@]}" &), env and chroot exec in turn, so $! is the itsur process itself.
image_cmd() {
    local vars=()
    while [[ $1 != -- ]]; do vars+=("$1"); shift; done
    shift
    IMG=(env -i SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt LOG_FORMAT=json
        DATABASE_URL="$DB_URL" JWT_SECRET=image-test-secret-0123456789abcdefghij
        "${vars[@]}" /usr/sbin/chroot --userspec=10001:10001 "$ROOT" /itsur "$@")
}
in_image() {
    image_cmd "$@"
    "${IMG[@]}"
}

# ----------------------------------------------------------- 1. migrate --
in_image -- migrate >"$TMP/migrate.log" 2>&1 || {
    cat "$TMP/migrate.log" >&2
    fail "itsur migrate in the image tree failed (host name $(python3 -c 'import sys,urllib.parse as u;print(u.urlsplit(sys.argv[1]).hostname)' "$DB_URL"))"
}
say "migrate: ok, Postgres reached by host name"

# ------------------------------------------------------ 2. roles + HEALTHCHECK --
P_SERVE="$(free_port)"
P_WORKER="$(free_port)"
image_cmd BIND_ADDR="127.0.0.1:$P_SERVE" -- serve
"${IMG[@]}" >"$TMP/serve.log" 2>&1 &
SERVE_PID=$!
PIDS+=("$SERVE_PID")
image_cmd METRICS_BIND="127.0.0.1:$P_WORKER" -- worker
"${IMG[@]}" >"$TMP/worker.log" 2>&1 &
WORKER_PID=$!
PIDS+=("$WORKER_PID")

healthy() { # VAR=VALUE of the container's role: until `itsur healthcheck` answers 0
    local i
    for ((i = 0; i < 300; i++)); do
        in_image "$1" -- healthcheck >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}
healthy BIND_ADDR="127.0.0.1:$P_SERVE" || {
    tail -20 "$TMP/serve.log" >&2
    fail "HEALTHCHECK of the serve container never passed"
}
healthy METRICS_BIND="127.0.0.1:$P_WORKER" || {
    tail -20 "$TMP/worker.log" >&2
    fail "HEALTHCHECK of the worker container never passed"
}
say "HEALTHCHECK (itsur healthcheck, no arguments) passes for serve and worker"
P_NONE="$(free_port)"
if in_image BIND_ADDR="127.0.0.1:$P_NONE" -- healthcheck >/dev/null 2>&1; then
    fail "HEALTHCHECK passed with nothing listening"
fi
say "HEALTHCHECK fails when nothing answers"
code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P_SERVE/openapi.json")"
[[ $code == 200 ]] || fail "GET /openapi.json from the image's serve answered $code"

# ------------------------------------------------- 3. user and shutdown --
for pid in "$SERVE_PID" "$WORKER_PID"; do
    uid="$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")"
    [[ $uid == 10001 ]] || fail "pid $pid runs as uid $uid, not 10001"
done
say "serve and worker run as uid 10001"
for pid in "$SERVE_PID" "$WORKER_PID"; do
    kill -TERM "$pid"
    rc=0
    wait "$pid" || rc=$?
    ((rc == 0)) || fail "pid $pid exited $rc after SIGTERM"
done
PIDS=()
say "SIGTERM: both exited 0"
say "PASS"
