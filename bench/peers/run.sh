#!/usr/bin/env bash
# The peers' side of the `jobs` bench: the same scenarios as `cargo bench --bench load -- jobs`
# (benches/load.rs), run by another Postgres job queue on the same Postgres, so that
# "itsur vs peer" ratios can be taken in one quiet run (bench/README.md, "Peers").
#
#   bench/peers/run.sh [s1|s3 ...]      default: s1 s3
#
#   s1  20,000 no-op jobs enqueued in one transaction, drained by 1 worker × concurrency 32
#   s3  10,000 jobs sleeping 5 ms each, 1 worker × concurrency 32 (limit 6,400 jobs/s)
#
# Peer: graphile-worker (bench/peers/graphile-worker/, version pinned by its
# package-lock.json), measured with its defaults and with its documented throughput settings.
# Prints one JSON line per scenario (both configurations in it) and appends them to
# bench/results/peers.jsonl. The method and every field: bench/peers/graphile-worker/run.js.
#
# Needs node >= 20 and npm (the locked packages go into bench/peers/graphile-worker/node_modules,
# `npm ci` only when the lockfile changed) and a Postgres: BENCH_DATABASE_URL (an admin URL, as
# for `cargo bench`), else TEST_DATABASE_URL from `scripts/services.sh env`, which finds or
# starts one. Each measurement creates its own database `bench_peer_<random>` and drops it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
gw="$here/graphile-worker"

die() {
    echo "bench/peers: $*" >&2
    exit 1
}

command -v node >/dev/null || die "no node (apt-get install nodejs npm)"
command -v npm >/dev/null || die "no npm (apt-get install npm)"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
((node_major >= 20)) || die "node $node_major is older than 20"

if [[ -z ${BENCH_DATABASE_URL:-} ]]; then
    env_lines="$("$root/scripts/services.sh" env)"
    eval "$env_lines"
    BENCH_DATABASE_URL="${TEST_DATABASE_URL:?scripts/services.sh env gave no TEST_DATABASE_URL}"
fi
export BENCH_DATABASE_URL

# Locked packages, local to the peer; reinstalled only when the lockfile changed.
stamp="$gw/node_modules/.lock-sha256"
want="$(sha256sum "$gw/package-lock.json" | cut -d' ' -f1)"
if [[ ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
    (cd "$gw" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" >"$stamp"
fi

if (($# > 0)); then
    scenarios=("$@")
else
    scenarios=(s1 s3)
fi
mkdir -p "$root/bench/results"
for s in "${scenarios[@]}"; do
    node "$gw/run.js" "$s" | tee -a "$root/bench/results/peers.jsonl"
done
