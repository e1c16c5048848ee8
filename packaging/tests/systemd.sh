#!/usr/bin/env bash
# Checks the units of systemd/:
#   1. `systemd-analyze verify` on every unit (the template as instances 8081 and 8082), on a
#      copy whose ExecStart points at the built binary; ANY output (a warning included) fails;
#   2. `systemd-analyze security --offline` exposure stays at or below 2.0 (of 10);
#   3. the settings the deployment relies on are there (Type=notify, watchdog, stop timeout
#      above the drain budget, EnvironmentFile, ordering after itsur-migrate, hardening);
#   4. when DATABASE_URL is set: every role runs under strace and every system call it makes
#      is allowed by the units' SystemCallFilter=, every socket family by
#      RestrictAddressFamilies=, and no W+X memory is asked for (MemoryDenyWriteExecute=).
#      Without DATABASE_URL this part is skipped, and says so;
#   5. when DATABASE_URL is set: the sd_notify protocol the units rely on, against a fake
#      NOTIFY_SOCKET (READY=1, WATCHDOG=1 within WATCHDOG_USEC/2, STOPPING=1); skipped, and
#      saying so, while the binary has no sd_notify support at all.
#
#   ITSUR_BIN=/path/to/itsur packaging/tests/systemd.sh
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_tool systemd-analyze systemd
BIN="$(itsur_bin)"
UNITS="$REPO_ROOT/systemd"
make_tmp
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    [[ -n ${DROP_DB:-} ]] && psql -X -q -d "$ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$DROP_DB\" WITH (FORCE)" >/dev/null 2>&1
    rm -rf "$TMP"
}
trap cleanup EXIT

LONG_RUNNING=(itsur-serve@.service itsur-worker.service itsur-outbox-relay.service)
ALL_UNITS=(itsur-serve@.service itsur-worker.service itsur-outbox-relay.service itsur-migrate.service itsur.target)
for u in "${ALL_UNITS[@]}"; do
    [[ -f $UNITS/$u ]] || fail "missing unit systemd/$u"
done

# ------------------------------------------------------------------ 1. verify --
cp "$UNITS"/* "$TMP/"
sed -i "s#^ExecStart=/usr/bin/itsur #ExecStart=$BIN #" "$TMP"/*.service
ln -s itsur-serve@.service "$TMP/itsur-serve@8081.service"
ln -s itsur-serve@.service "$TMP/itsur-serve@8082.service"
VERIFY=(itsur-migrate.service itsur-worker.service itsur-outbox-relay.service
    itsur-serve@8081.service itsur-serve@8082.service itsur.target)
problems=0
for u in "${VERIFY[@]}"; do
    if out="$(cd "$TMP" && systemd-analyze verify --man=no "$TMP/$u" 2>&1)" && [[ -z $out ]]; then
        say "verify $u: clean"
    else
        say "verify $u: NOT clean:"
        printf '%s\n' "$out" >&2
        problems=$((problems + 1))
    fi
done
((problems == 0)) || fail "systemd-analyze verify reported problems in $problems unit(s)"

# ------------------------------------------------------------- 2. exposure --
for u in itsur-migrate.service itsur-worker.service itsur-outbox-relay.service itsur-serve@8081.service; do
    out="$(cd "$TMP" && systemd-analyze security --offline=true --threshold=20 --no-pager "$TMP/$u" 2>&1)" ||
        {
            printf '%s\n' "$out" >&2
            fail "$u: exposure above 2.0"
        }
    say "security $u: ${out##*Overall exposure level for }"
done

# ------------------------------------------------------- 3. required settings --
has() { # unit regex what
    grep -Eq "$2" "$UNITS/$1" || fail "$1: $3 (expected a line matching /$2/)"
}
for u in "${LONG_RUNNING[@]}"; do
    has "$u" '^Type=notify$' "must be Type=notify (the binary sends READY/STOPPING/WATCHDOG)"
    has "$u" '^NotifyAccess=main$' "NotifyAccess=main"
    has "$u" '^WatchdogSec=30s$' "WatchdogSec=30s"
    has "$u" '^Restart=on-failure$' "Restart=on-failure"
    has "$u" '^Requires=itsur-migrate\.service$' "must Require= itsur-migrate.service"
    has "$u" '^After=.*itsur-migrate\.service' "must be ordered After= itsur-migrate.service"
    has "$u" '^PartOf=itsur\.target$' "PartOf=itsur.target"
    has "$u" '^WantedBy=itsur\.target$' "WantedBy=itsur.target"
    stop="$(sed -nE 's/^TimeoutStopSec=([0-9]+)s?$/\1/p' "$UNITS/$u")"
    if [[ -z $stop ]] || ((stop <= 30)); then fail "$u: TimeoutStopSec must exceed the 30 s drain (SHUTDOWN_TIMEOUT_SECS)"; fi
done
has itsur-serve@.service '^Environment=BIND_ADDR=127\.0\.0\.1:%i$' "one instance per port"
has itsur-worker.service '^ExecStart=/usr/bin/itsur worker$' "ExecStart"
has itsur-outbox-relay.service '^ExecStart=/usr/bin/itsur outbox-relay$' "ExecStart"
has itsur-serve@.service '^ExecStart=/usr/bin/itsur serve$' "ExecStart"
has itsur-migrate.service '^ExecStart=/usr/bin/itsur migrate$' "ExecStart"
has itsur-migrate.service '^Type=oneshot$' "Type=oneshot"
has itsur-migrate.service '^RemainAfterExit=yes$' "RemainAfterExit=yes"
has itsur-migrate.service '^Before=.*itsur-worker\.service' "ordered Before= the roles"
has itsur.target '^Wants=.*itsur-migrate\.service' "the target pulls the roles in"
for u in itsur-serve@.service itsur-worker.service itsur-outbox-relay.service itsur-migrate.service; do
    has "$u" '^EnvironmentFile=/etc/itsur/itsur\.env$' "EnvironmentFile=/etc/itsur/itsur.env"
    for d in 'User=itsur' 'ProtectSystem=strict' 'ProtectHome=yes' 'NoNewPrivileges=yes' \
        'PrivateTmp=yes' 'PrivateDevices=yes' 'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX' \
        'MemoryDenyWriteExecute=yes' 'LockPersonality=yes' 'RestrictNamespaces=yes' \
        'RestrictRealtime=yes' 'SystemCallArchitectures=native' 'SystemCallFilter=@system-service' \
        'CapabilityBoundingSet=' 'ProtectKernelTunables=yes' 'ProtectKernelModules=yes' \
        'ProtectKernelLogs=yes' 'ProtectControlGroups=yes' 'UMask=0077' 'LimitNOFILE=65536'; do
        grep -qxF "$d" "$UNITS/$u" || fail "$u: missing hardening line '$d'"
    done
done
say "required settings: present in every unit"

# ------------------------------------------------------ 4. syscall audit --
if [[ -z ${DATABASE_URL:-} ]]; then
    say "SKIP part 4 (syscall audit): DATABASE_URL is not set, the roles cannot start"
    say "PASS (parts 1-3)"
    exit 0
fi
need_tool strace strace
need_tool psql postgresql-client
need_tool curl curl

# The filter the units install, expanded by this systemd: allowed = @system-service minus
# @privileged and @resources (SystemCallFilter=~...).
expand() { systemd-analyze syscall-filter --no-pager "$1" 2>/dev/null | sed -nE 's/^    ([a-z0-9_]+)$/\1/p'; }
expand_deep() { # a group, with its nested @groups
    local g
    expand "$1" | sort -u
    for g in $(systemd-analyze syscall-filter --no-pager "$1" 2>/dev/null | sed -nE 's/^    (@[a-z-]+)$/\1/p'); do
        expand_deep "$g"
    done
}
expand_deep @system-service | sort -u >"$TMP/allow"
{
    expand_deep @privileged
    expand_deep @resources
} | sort -u >"$TMP/deny"
comm -23 "$TMP/allow" "$TMP/deny" >"$TMP/allowed"
[[ $(wc -l <"$TMP/allowed") -gt 100 ]] || fail "could not expand the @system-service filter with systemd-analyze syscall-filter"

ADMIN_URL="$(pg_admin_url "$DATABASE_URL")"
DB="itsur_sysaudit_$RANDOM$RANDOM"
psql -X -q -d "$ADMIN_URL" -c "CREATE DATABASE \"$DB\"" >/dev/null || fail "cannot create database $DB on $ADMIN_URL"
DROP_DB="$DB"
# "localhost" on purpose: the audit then covers name resolution (getaddrinfo) too.
export DATABASE_URL
DATABASE_URL="$(pg_with_db "$DATABASE_URL" "$DB" | sed -E 's#@127\.0\.0\.1([:/])#@localhost\1#')"
export JWT_SECRET=systemd-audit-secret-0123456789-0123456789
export REDIS_PREFIX="itsur-sysaudit-$RANDOM" LOG_FORMAT=json RUST_LOG=warn SHUTDOWN_TIMEOUT_SECS=5
TRACE=(strace -f -qq -o)

"${TRACE[@]}" "$TMP/trace.migrate" "$BIN" migrate >"$TMP/migrate.log" 2>&1 || {
    cat "$TMP/migrate.log" >&2
    fail "itsur migrate failed under strace"
}
API_PORT="$(free_port)" W_PORT="$(free_port)" R_PORT="$(free_port)"
run_role() { # role ready-url envs...
    local role="$1" url="$2"
    shift 2
    # strace does not pass SIGTERM on to its tracee: the shell writes the pid that exec
    # then hands to itsur, and the signal goes there.
    rm -f "$TMP/$role.pid"
    # shellcheck disable=SC2016 # $$ and $1 belong to the inner sh
    env "$@" "${TRACE[@]}" "$TMP/trace.$role" sh -c 'echo $$ >"$1"; shift; exec "$@"' sh \
        "$TMP/$role.pid" "$BIN" "$role" >"$TMP/$role.log" 2>&1 &
    local tracer=$! pid="" i
    PIDS+=("$tracer")
    for ((i = 0; i < 100; i++)); do
        [[ -s $TMP/$role.pid ]] && break
        sleep 0.1
    done
    pid="$(cat "$TMP/$role.pid" 2>/dev/null)" || fail "itsur $role did not start under strace"
    PIDS+=("$pid")
    wait_http "$url" 60 "$pid" || {
        cat "$TMP/$role.log" >&2
        fail "itsur $role did not become ready under strace"
    }
    curl -fsS -o /dev/null "${url%/ready}" || true # /health detail
    curl -fsS -o /dev/null "${url%/health/ready}/metrics"
    curl -fsS -o /dev/null "${url%/ready}/live"
    kill -TERM "$pid"
    wait "$tracer" || fail "itsur $role did not exit 0 on SIGTERM (under strace)"
    say "audit: $role ran, served, drained and exited 0"
}
run_role serve "http://127.0.0.1:$API_PORT/health/ready" BIND_ADDR="127.0.0.1:$API_PORT"
run_role worker "http://127.0.0.1:$W_PORT/health/ready" METRICS_BIND="127.0.0.1:$W_PORT"
run_role outbox-relay "http://127.0.0.1:$R_PORT/health/ready" METRICS_BIND="127.0.0.1:$R_PORT"
PIDS=()

cat "$TMP"/trace.* >"$TMP/trace"
# syscall names: "<pid> name(" lines, plus resumed calls "<... name resumed>".
sed -nE 's/^[0-9]+ +([a-z0-9_]+)\(.*/\1/p; s/^[0-9]+ +<\.\.\. ([a-z0-9_]+) resumed>.*/\1/p' "$TMP/trace" |
    sort -u >"$TMP/used"
# execve of the binary happens before systemd's filter applies to it (it is part of the exec).
blocked="$(comm -23 "$TMP/used" "$TMP/allowed" | grep -vx 'execve' || true)"
say "audit: $(wc -l <"$TMP/used") distinct system calls used: $(tr "\n" " " <"$TMP/used")"
[[ -z $blocked ]] || fail "system calls the units' SystemCallFilter= would refuse (EPERM): $(tr '\n' ' ' <<<"$blocked")"

families="$(grep -oE 'socket\((AF_[A-Z0-9]+|PF_[A-Z0-9]+)' "$TMP/trace" | sed 's/socket(//' | sort -u | tr '\n' ' ')"
say "audit: socket families used: $families"
for f in $families; do
    case "$f" in AF_INET | AF_INET6 | AF_UNIX | AF_LOCAL | PF_INET | PF_INET6 | PF_UNIX | PF_LOCAL) ;;
    *) fail "socket family $f is not in RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX" ;;
    esac
done
if grep -E '^[0-9]+ +(mmap|mprotect|pkey_mprotect)\(.*PROT_EXEC' "$TMP/trace" |
    grep -E 'PROT_WRITE|mprotect' >"$TMP/wx"; then
    head -5 "$TMP/wx" >&2
    fail "writable+executable or later-made-executable memory: MemoryDenyWriteExecute=yes would refuse it"
fi
say "audit: no W+X memory; every system call and socket family is allowed by the units"

# ------------------------------------------------------ 5. sd_notify --
# The units are Type=notify with WatchdogSec=30s: each long-running role must send READY=1
# once it serves, WATCHDOG=1 more often than half the watchdog period, STOPPING=1 on
# SIGTERM. Checked against a fake NOTIFY_SOCKET with a 2 s watchdog.
if ! grep -qa NOTIFY_SOCKET "$BIN"; then
    say "SKIP part 5 (sd_notify): $BIN never reads NOTIFY_SOCKET, it has no sd_notify support yet; under these Type=notify units systemd would kill it at the start timeout"
    say "PASS (parts 1-4)"
    exit 0
fi
notify_check() { # role ready-url envs...
    local role="$1" url="$2" log="$TMP/notify.$1" sock="$TMP/notify.$1.sock" listener pid i
    shift 2
    : >"$log"
    python3 "$PACKAGING/tests/notify_listener.py" "$sock" "$log" &
    listener=$!
    PIDS+=("$listener")
    for ((i = 0; i < 50; i++)); do [[ -S $sock ]] && break; sleep 0.1; done
    # WATCHDOG_PID must be the service's own pid: the shell's pid is itsur's after exec.
    # shellcheck disable=SC2016 # $$ belongs to the inner sh
    env "$@" NOTIFY_SOCKET="$sock" WATCHDOG_USEC=2000000 \
        sh -c 'WATCHDOG_PID=$$ exec "$@"' sh "$BIN" "$role" >"$TMP/notify-$role.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_http "$url" 60 "$pid" || fail "itsur $role did not become ready (sd_notify check)"
    for ((i = 0; i < 50; i++)); do grep -q 'READY=1' "$log" && break; sleep 0.1; done
    grep -q 'READY=1' "$log" || fail "$role: no READY=1 on NOTIFY_SOCKET after it became ready"
    sleep 3.5
    local pings
    pings="$(grep -c 'WATCHDOG=1' "$log" || true)"
    ((pings >= 3)) || fail "$role: $pings WATCHDOG=1 in 3.5 s with WATCHDOG_USEC=2000000 (want one per second or more)"
    kill -TERM "$pid"
    wait "$pid" || fail "$role: exit status not 0 after SIGTERM (sd_notify check)"
    grep -q 'STOPPING=1' "$log" || fail "$role: no STOPPING=1 on SIGTERM"
    kill -TERM "$listener" 2>/dev/null || true
    say "sd_notify $role: READY=1, $pings WATCHDOG=1 in 3.5 s, STOPPING=1 on SIGTERM"
}
notify_check serve "http://127.0.0.1:$API_PORT/health/ready" BIND_ADDR="127.0.0.1:$API_PORT"
notify_check worker "http://127.0.0.1:$W_PORT/health/ready" METRICS_BIND="127.0.0.1:$W_PORT"
notify_check outbox-relay "http://127.0.0.1:$R_PORT/health/ready" METRICS_BIND="127.0.0.1:$R_PORT"
PIDS=()
say "PASS"
