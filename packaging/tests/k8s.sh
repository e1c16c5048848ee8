#!/usr/bin/env bash
# Checks packaging/k8s offline (no cluster):
#   - every manifest, as written and as each kustomization renders it, against the Kubernetes
#     1.30 OpenAPI schemas (kubernetes-validate, pinned in k8s-requirements.txt, strict:
#     unknown fields fail) and KEDA's ScaledObject schema;
#   - the invariants (k8s_check.py): probes on /health/live and /health/ready, requests and
#     limits, non-root + read-only root + no privilege escalation + drop ALL + seccomp,
#     terminationGracePeriodSeconds > preStop + SHUTDOWN_TIMEOUT_SECS, a PDB, Service and
#     NetworkPolicy per Deployment, autoscaler targets that exist, every setting of the
#     binary (`itsur <role> --help`) in the ConfigMap or the Secret;
#   - with kubectl on PATH: `kubectl kustomize` renders the same objects;
#   - the checker itself: broken copies of the manifests must fail it.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BIN="$(itsur_bin)"
need_tool python3 python3
make_tmp
trap 'rm -rf "$TMP"' EXIT

VENV="$REPO_ROOT/.local/k8s-venv"
REQ="$PACKAGING/tests/k8s-requirements.txt"
if ! cmp -s "$REQ" "$VENV/requirements.txt" 2>/dev/null; then
    say "installing $(grep -m1 kubernetes-validate "$REQ") into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || skip "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ" ||
        skip "cannot install $REQ from PyPI into $VENV"
    cp "$REQ" "$VENV/requirements.txt"
fi
PY="$VENV/bin/python"

roles="$("$BIN" --help | sed -nE 's/^  ([a-z][a-z-]+) .*/\1/p' | grep -vx help)"
printf '%s\n' "$roles" >"$TMP/roles"
for r in serve worker outbox-relay migrate; do "$BIN" "$r" --help; done |
    grep -oE '\[env: [A-Z0-9_]+' | sed 's/\[env: //' | sort -u >"$TMP/env"

K8S="$PACKAGING/k8s"
args=("$K8S" "$TMP/env" "$TMP/roles")
if command -v kubectl >/dev/null 2>&1; then
    mkdir -p "$TMP/kubectl"
    while IFS= read -r k; do
        d="$(dirname "$k")"
        label="${d#"$K8S"/}"
        kubectl kustomize "$d" >"$TMP/kubectl/${label//\//_}.yaml" || fail "kubectl kustomize $label"
    done < <(find "$K8S" -name kustomization.yaml | sort)
    args+=("$TMP/kubectl")
    say "kubectl kustomize renders compared ($(kubectl version --client 2>/dev/null | grep -m1 Kustomize || true))"
else
    say "SKIP part: kubectl not on PATH, kustomizations rendered by k8s_check.py only"
fi
"$PY" "$PACKAGING/tests/k8s_check.py" "${args[@]}" || fail "packaging/k8s does not pass (lines above)"

# The checker must catch what it claims to: each broken copy has to fail.
mutate() { # description python-expression-on-text
    local desc="$1" expr="$2" copy="$TMP/mut"
    rm -rf "$copy" && cp -r "$K8S" "$copy"
    "$PY" - "$copy" "$expr" <<'PY'
import pathlib, sys
root, expr = pathlib.Path(sys.argv[1]), sys.argv[2]
f, old, new = expr.split("|")
p = root / f
t = p.read_text()
assert old in t, f"{f}: {old!r} not found"
p.write_text(t.replace(old, new, 1))
PY
    if "$PY" "$PACKAGING/tests/k8s_check.py" "$copy" "$TMP/env" "$TMP/roles" >"$TMP/mut.log" 2>&1; then
        fail "the checker passed a copy with $desc"
    fi
    say "ok: a copy with $desc fails ($(grep -m1 FAIL "$TMP/mut.log" | sed 's/^k8s: FAIL: //'))"
}
mutate "no readiness probe" "base/serve.yaml|readinessProbe:|readinessProbeX:"
mutate "a readiness probe on the liveness path" "base/serve.yaml|path: /health/ready|path: /health/live"
mutate "a grace period below the drain budget" "base/worker.yaml|terminationGracePeriodSeconds: 45|terminationGracePeriodSeconds: 30"
mutate "a root container" "base/outbox-relay.yaml|runAsNonRoot: true|runAsNonRoot: false"
mutate "no memory limit" "base/serve.yaml|              memory: 512Mi|"
mutate "an HPA aimed at a missing Deployment" "base/serve.yaml|    name: itsur-serve
  minReplicas|    name: itsur-api
  minReplicas"
mutate "a setting missing from the ConfigMap" "base/configmap.yaml|  WS_PING_SECS: \"20\"|"
mutate "a typo in a field name" "base/worker.yaml|imagePullPolicy|imagePulPolicy"
say "passed"
