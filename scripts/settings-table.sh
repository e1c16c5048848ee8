#!/usr/bin/env bash
# The README's settings table is generated from the clap definitions by the hidden
# `itsur settings` subcommand. Without arguments this rewrites the table in README.md
# (between the settings-table markers); with --check it fails when README.md is stale.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

table="$(cargo run --quiet --locked -- settings)"
new="$(TABLE="$table" awk '
    /^<!-- settings-table:begin/ { print ENVIRON["TABLE"]; skip = 1; next }
    /^<!-- settings-table:end -->/ { skip = 0; next }
    !skip { print }
' README.md)"
if ! grep -q '^<!-- settings-table:begin' README.md; then
    echo "settings-table: README.md has no settings-table markers" >&2
    exit 1
fi
if [[ ${1:-} == --check ]]; then
    if [[ $new != "$(cat README.md)" ]]; then
        echo "settings-table: README.md's settings table is stale; run \`make settings-table\`" >&2
        diff <(cat README.md) <(printf '%s\n' "$new") >&2 || true
        exit 1
    fi
else
    printf '%s\n' "$new" > README.md
fi
