#!/usr/bin/env bash
# Layering rules of src/, enforced with grep. Exits 1 and prints the offending
# lines when a rule is broken. Lines that are `//` comments (including `///`
# and `//!` doc comments) are ignored; modules that do not exist yet are
# skipped. A module may be a directory (src/x/) or a file (src/x.rs).
#
#   domain      pure: no diesel, actix, redis, bb8, tokio, reqwest
#   actix       only in http (not in cli, main.rs, lib.rs, ...)
#   domain store kv realtime resilience clients service app
#               never reach up into http, jobs, outbox, cli
#   app         never uses service (service depends on app::Ctx: no circle)
#   http        never uses jobs, outbox, store or diesel, and never names a store row
#               type (`XRow`): use cases answer their own types, http maps them to DTOs
#   service     never re-exports a store item (`pub use crate::store::…`): what a use case
#               answers is its own type, so store rows and enums never reach a role unnamed
#   jobs        never uses outbox or http
#   outbox      never uses jobs or http
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

failed=0

# Existing paths of the given modules (src/<m>/ and/or src/<m>.rs).
paths_of() {
    local m
    for m in "$@"; do
        [[ -d src/$m ]] && printf '%s\n' "src/$m"
        [[ -f src/$m.rs ]] && printf '%s\n' "src/$m.rs"
    done
    return 0
}

# rule DESCRIPTION REGEX PATH... : report non-comment lines of *.rs files
# under PATH... that match the extended REGEX.
rule() {
    local desc="$1" re="$2"
    shift 2
    (($# > 0)) || return 0
    local hits
    hits="$(grep -rnE --include='*.rs' -e "$re" -- "$@" 2>/dev/null |
        grep -vE '^[^:]+:[0-9]+:[[:space:]]*//' || true)"
    if [[ -n $hits ]]; then
        printf 'layer violation: %s\n%s\n\n' "$desc" "$hits"
        failed=1
    fi
}

# An identifier used as a path root: `name::`, `::name::`, `use name`, not
# preceded by another path segment (so `crate::kv::redis::` is not `redis::`).
crate_re() { # alternation of crate names
    printf '(^|[^[:alnum:]_:])(::)?(%s)::|(^|[^[:alnum:]_])(use|extern[[:space:]]+crate)[[:space:]]+(::)?(%s)\\b' "$1" "$1"
}

# `crate::m`, also as a direct member of a one-line group `crate::{a, m::X}`.
internal_re() { # alternation of module names
    printf '(^|[^[:alnum:]_])crate::(%s)\\b|(^|[^[:alnum:]_])crate::\\{([^{}]*[{,[:space:]])?(%s)\\b' "$1" "$1"
}

mapfile -t domain < <(paths_of domain)
rule "src/domain must not use infrastructure crates" \
    "$(crate_re 'diesel[a-z_]*|actix[a-z_]*|redis|bb8[a-z_]*|tokio[a-z_]*|reqwest')" \
    "${domain[@]}"

mapfile -t not_http < <(find src -mindepth 1 -maxdepth 1 \( -name '*.rs' -o -type d \) \
    ! -name http ! -name http.rs 2>/dev/null | sort)
rule "actix is allowed in src/http only" \
    "$(crate_re 'actix[a-z_]*')" \
    "${not_http[@]}"

mapfile -t lower < <(paths_of domain store kv realtime resilience clients service app)
rule "domain/store/kv/realtime/resilience/clients/service/app must not depend on http, jobs, outbox, cli" \
    "$(internal_re 'http|jobs|outbox|cli')" \
    "${lower[@]}"

mapfile -t app < <(paths_of app)
rule "src/app must not depend on service (service depends on app: no circle)" \
    "$(internal_re 'service')" \
    "${app[@]}"

mapfile -t http < <(paths_of http)
rule "src/http must not depend on jobs, outbox" \
    "$(internal_re 'jobs|outbox')" \
    "${http[@]}"
rule "src/http must not depend on store (go through service)" \
    "$(internal_re 'store')" \
    "${http[@]}"
rule "src/http must not name store row types (*Row): map the service's types to DTOs" \
    '(^|[^[:alnum:]_])[A-Z][[:alnum:]_]*Row\b' \
    "${http[@]}"
rule "src/http must not use diesel (go through store/service)" \
    "$(crate_re 'diesel[a-z_]*')" \
    "${http[@]}"

mapfile -t service < <(paths_of service)
rule "src/service must not re-export store items: answer the use case's own types" \
    '(^|[^[:alnum:]_])pub(\([a-z]+\))?[[:space:]]+use[[:space:]]+(crate::)?store::' \
    "${service[@]}"

mapfile -t jobs < <(paths_of jobs)
rule "src/jobs must not depend on outbox, http" \
    "$(internal_re 'outbox|http')" \
    "${jobs[@]}"

mapfile -t outbox < <(paths_of outbox)
rule "src/outbox must not depend on jobs, http" \
    "$(internal_re 'jobs|http')" \
    "${outbox[@]}"

if ((failed)); then
    exit 1
fi
