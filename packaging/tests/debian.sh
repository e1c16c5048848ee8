#!/usr/bin/env bash
# Checks the Debian package (`make deb`, cargo-deb) and its assets (packaging/debian/):
#   1. itsur.env: every setting the binary reads from the environment (`itsur <role> --help`,
#      "[env: X]") is documented; BIND_ADDR / METRICS_BIND are not set (they would override
#      the units' per-instance values); the template as shipped is refused by the binary
#      (empty JWT_SECRET) with a message naming JWT_SECRET, and accepted once it is filled in;
#   2. [package.metadata.deb] in Cargo.toml: every asset source exists; binary, units, env template
#      (0600, conf-file), maintainer scripts present;
#   3. postinst/prerm/postrm: POSIX sh syntax (dash -n) and shellcheck -s sh;
#   4. a .deb built by cargo-deb (installed into .local/tools when missing) around the binary
#      under test, checked with dpkg-deb --info / --contents.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_tool python3 python3
need_tool dpkg-deb dpkg
need_tool shellcheck shellcheck
BIN="$(itsur_bin)"
DEB="$PACKAGING/debian"
make_tmp
trap 'rm -rf "$TMP"' EXIT

# ------------------------------------------------------------- 1. env file --
roles="$("$BIN" --help | sed -nE 's/^  ([a-z][a-z-]+) .*/\1/p' | grep -vx help)"
vars="$(for r in $roles; do "$BIN" "$r" --help; done | grep -oE '\[env: [A-Z0-9_]+' | sed 's/\[env: //' | sort -u)"
missing=()
for v in $vars; do
    grep -qE "^#?\s*$v=|^#\s+$v\s" "$DEB/itsur.env" || missing+=("$v")
done
((${#missing[@]} == 0)) || fail "itsur.env does not document: ${missing[*]} (the binary reads them)"
say "itsur.env documents all $(wc -w <<<"$vars") settings the binary reads"
for v in BIND_ADDR METRICS_BIND; do
    if grep -qE "^$v=" "$DEB/itsur.env"; then
        fail "itsur.env sets $v: EnvironmentFile= would override every unit's own value"
    fi
done
if grep -vE '^\s*(#|$)' "$DEB/itsur.env" | grep -vE '^[A-Z][A-Z0-9_]*=' >&2; then
    fail "itsur.env has lines systemd's EnvironmentFile= would not read as KEY=VALUE"
fi
# Load it the way systemd does (KEY=VALUE, no shell), then run the binary.
mapfile -t envs < <(grep -E '^[A-Z][A-Z0-9_]*=' "$DEB/itsur.env")
port="$(free_port)"
set +e
out="$(env -i PATH=/usr/bin:/bin "${envs[@]}" BIND_ADDR="127.0.0.1:$port" timeout 10 "$BIN" serve 2>&1)"
rc=$?
set -e
((rc != 0 && rc != 124)) || fail "itsur serve started with the template's empty JWT_SECRET (exit $rc)"
grep -q JWT_SECRET <<<"$out" || fail "the refusal does not name JWT_SECRET: $out"
say "template as shipped is refused (exit $rc): $out"
# Filled in, the settings parse: `serve` gets past configuration and waits for Postgres
# (CHANGE_ME credentials); it must not complain about a setting.
set +e
out="$(env -i PATH=/usr/bin:/bin "${envs[@]}" JWT_SECRET="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
    BIND_ADDR="127.0.0.1:$port" DATABASE_URL="postgres://itsur:x@127.0.0.1:1/itsur" \
    DB_CONNECT_TIMEOUT_MS=200 timeout 3 "$BIN" serve 2>&1)"
rc=$?
set -e
if grep -q 'invalid setting' <<<"$out"; then
    fail "a filled-in template is refused: $out"
fi
say "template with JWT_SECRET set: configuration accepted (serve then waits for Postgres; stopped, exit $rc)"

# ------------------------------------------- 2. [package.metadata.deb] --
python3 - "$REPO_ROOT/Cargo.toml" "$REPO_ROOT" <<'PY' || fail "[package.metadata.deb] in Cargo.toml"
import os, sys, tomllib
path, root = sys.argv[1:3]
meta = tomllib.load(open(path, "rb"))["package"]["metadata"]["deb"]
errors = []
assets = meta["assets"]
dests = {a[1]: a for a in assets}
for src, dst, mode in assets:
    if src == "target/release/itsur":
        continue  # the build output
    if not os.path.exists(os.path.join(root, src)):
        errors.append(f"asset source {src} does not exist")
    int(mode, 8)
want = {
    "usr/bin/itsur": "755",
    "etc/itsur/itsur.env": "600",
    "lib/systemd/system/itsur-serve@.service": "644",
    "lib/systemd/system/itsur-worker.service": "644",
    "lib/systemd/system/itsur-outbox-relay.service": "644",
    "lib/systemd/system/itsur-migrate.service": "644",
    "lib/systemd/system/itsur.target": "644",
}
for d, m in want.items():
    if d not in dests:
        errors.append(f"no asset installs {d}")
    elif dests[d][2] != m:
        errors.append(f"{d}: mode {dests[d][2]}, want {m}")
if dests.get("usr/bin/itsur", [""])[0] != "target/release/itsur":
    errors.append("the binary asset must be target/release/itsur (cargo-deb maps it to --target)")
units = sorted(f for f in os.listdir(os.path.join(root, "systemd")))
for u in units:
    if f"lib/systemd/system/{u}" not in dests:
        errors.append(f"unit systemd/{u} is not packaged")
if "/etc/itsur/itsur.env" not in meta.get("conf-files", []):
    errors.append("/etc/itsur/itsur.env must be a conf-file")
ms = os.path.join(root, meta["maintainer-scripts"])
for s in ("postinst", "prerm", "postrm"):
    if not os.access(os.path.join(ms, s), os.X_OK):
        errors.append(f"maintainer script {s} missing or not executable in {meta['maintainer-scripts']}")
if "adduser" not in meta.get("depends", ""):
    errors.append("depends must include adduser (postinst creates the itsur user)")
if errors:
    print("\n".join("debian: " + e for e in errors), file=sys.stderr)
    sys.exit(1)
print(f"debian: [package.metadata.deb]: {len(assets)} assets, every source present", file=sys.stderr)
PY

# ---------------------------------------------------------- 3. maintainer scripts --
for s in postinst prerm postrm; do
    sh -n "$DEB/$s" || fail "$s: sh syntax"
    command -v dash >/dev/null && { dash -n "$DEB/$s" || fail "$s: dash syntax"; }
    shellcheck -s sh "$DEB/$s" || fail "$s: shellcheck"
done
say "maintainer scripts: POSIX sh, shellcheck clean"

# -------------------------------------------------------------- 4. the package --
# Built by cargo-deb exactly as `make deb` does, around the binary under test (the debug one
# in `make test-packaging`) placed where cargo-deb looks for it.
if ! cargo_deb="$("$REPO_ROOT/scripts/cargo-tool.sh" cargo-deb)"; then
    skip "cargo-deb is missing and could not be installed from crates.io (scripts/cargo-tool.sh)"
fi
mkdir -p "$TMP/target/release"
cp "$BIN" "$TMP/target/release/itsur"
(cd "$REPO_ROOT" && CARGO_TARGET_DIR="$TMP/target" "$cargo_deb" --no-build --no-strip \
    --output "$TMP/itsur.deb") >"$TMP/cargo-deb.log" 2>&1 || {
    cat "$TMP/cargo-deb.log" >&2
    fail "cargo-deb failed"
}
say "cargo-deb ($("$cargo_deb" --version 2>/dev/null | head -n 1)) built the package"
info="$(dpkg-deb --info "$TMP/itsur.deb")"
contents="$(dpkg-deb --contents "$TMP/itsur.deb")"
for f in postinst prerm postrm conffiles; do
    grep -qE "^\s+[0-9]+ bytes,\s+[0-9]+ lines\s+\*?\s+$f\b" <<<"$info" || fail "dpkg-deb --info: no $f"
done
for want in '^ Package: itsur$' '^ Architecture: amd64$' '^ Depends: .*adduser' "^ Version: $("$BIN" --version | awk '{print $2}')"; do
    grep -qE "$want" <<<"$info" || fail "dpkg-deb --info: no line matching '$want'"
done
expect_entry() { # mode path
    # Owned by root: cargo-deb writes uid/gid 0 as numbers (dpkg-deb would write names).
    grep -qE "^$1 (root/root|0/0) .* \./$2$" <<<"$contents" || {
        printf '%s\n' "$contents" >&2
        fail "dpkg-deb --contents: want $1 owned by root ./$2"
    }
}
expect_entry -rwxr-xr-x usr/bin/itsur
expect_entry -rw------- etc/itsur/itsur.env
for u in itsur-serve@.service itsur-worker.service itsur-outbox-relay.service itsur-migrate.service itsur.target; do
    expect_entry -rw-r--r-- "lib/systemd/system/$u"
done
expect_entry -rw-r--r-- usr/share/itsur/nginx/itsur.conf
expect_entry -rw-r--r-- usr/share/doc/itsur/README.md
say "package: $(du -h "$TMP/itsur.deb" | cut -f1) with the debug binary; dpkg-deb --info:"
awk '{print "    " $0}' <<<"$info" >&2
say "dpkg-deb --contents:"
awk '{print "    " $1, $2, $NF}' <<<"$contents" >&2
say "PASS"
