#!/usr/bin/env bash
# Prints the path of a cargo subcommand binary, installing it from crates.io when missing.
#
#   scripts/cargo-tool.sh cargo-deb     # -> /usr/.../cargo-deb or .local/tools/bin/cargo-deb
#
# Looks on PATH first, then under .local/tools (git-ignored); otherwise runs
# `cargo install --locked --root .local/tools <crate>@<pinned version>` (a few minutes the
# first time). Messages go to stderr; only the path goes to stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
TOOLS="$ROOT/.local/tools"

# Pinned so every machine builds packages with the same tool.
declare -A VERSIONS=([cargo-deb]=3.8.0)

tool="${1:?usage: cargo-tool.sh <cargo-deb>}"
version="${VERSIONS[$tool]:-}"
[[ -n $version ]] || {
    echo "cargo-tool: unknown tool $tool (known: ${!VERSIONS[*]})" >&2
    exit 2
}
if path="$(command -v "$tool")"; then
    printf '%s\n' "$path"
    exit 0
fi
if [[ -x $TOOLS/bin/$tool ]]; then
    printf '%s\n' "$TOOLS/bin/$tool"
    exit 0
fi
echo "cargo-tool: $tool not found; installing $tool $version from crates.io into $TOOLS" >&2
cargo install --quiet --locked --root "$TOOLS" "$tool@$version" >&2
printf '%s\n' "$TOOLS/bin/$tool"
