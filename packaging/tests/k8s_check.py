"""Offline checks of packaging/k8s: schemas and the deployment invariants.

    python k8s_check.py K8S_DIR ENV_VARS_FILE ROLES_FILE [KUBECTL_RENDER_DIR]

Renders every kustomization under K8S_DIR (resources, namespace, images and JSON 6902
patches: the subset the shipped files use; anything else fails loudly), validates every
object against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields
fail) and KEDA's ScaledObject against the schema below, then checks what a schema cannot:
probes, resources, non-root, grace period > preStop + drain budget, PDB/Service/HPA wiring,
NetworkPolicy ports, and that the ConfigMap + Secret name every setting the binary reads
(ENV_VARS_FILE, one name a line, from `itsur <role> --help`). ROLES_FILE lists the binary's
subcommands. With KUBECTL_RENDER_DIR (files `<overlay>.yaml` from `kubectl kustomize`), the
renderer's output must match kubectl's object for object.

Prints one line per problem and exits 1 when there is any.
"""

import json
import pathlib
import re
import sys

import kubernetes_validate
import jsonschema
import yaml

K8S_VERSION = "1.30.0"  # oldest supported: preStop `sleep` is on by default from 1.30
PROBLEMS = []


def problem(msg):
    PROBLEMS.append(msg)


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


# --- a small kustomize: exactly what the shipped kustomizations use --------------------------

def json_pointer_parts(path):
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def apply_json6902(obj, ops, where):
    for op in ops:
        parts = json_pointer_parts(op["path"])
        parent = obj
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        if op["op"] == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            elif last in parent:
                del parent[last]
            else:
                raise ValueError(f"{where}: remove {op['path']}: no such field")
        elif op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                else:
                    parent.insert(int(last), op["value"]) if op["op"] == "add" else parent.__setitem__(int(last), op["value"])
            else:
                parent[last] = op["value"]
        else:
            raise ValueError(f"{where}: unsupported patch op {op['op']}")


def render(kdir):
    kdir = pathlib.Path(kdir)
    kfile = kdir / "kustomization.yaml"
    (k,) = load_docs(kfile)
    allowed = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
    unknown = set(k) - allowed
    if unknown:
        raise ValueError(f"{kfile}: fields this checker cannot render: {sorted(unknown)}")
    objs = []
    for res in k.get("resources", []):
        p = kdir / res
        if p.is_dir():
            objs.extend(render(p))
        else:
            objs.extend(load_docs(p))
    for patch in k.get("patches", []):
        t = patch["target"]
        ops = yaml.safe_load(patch["patch"])
        hits = [o for o in objs if o["kind"] == t["kind"] and o["metadata"]["name"] == t["name"]]
        if len(hits) != 1:
            raise ValueError(f"{kfile}: patch target {t} matches {len(hits)} objects")
        apply_json6902(hits[0], ops, str(kfile))
    for img in k.get("images", []):
        for o in objs:
            for c in pod_containers(o):
                name, _, tag = c["image"].partition(":")
                if name == img["name"]:
                    c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag or 'latest')}"
    if "namespace" in k:
        for o in objs:
            if o["kind"] != "Namespace":
                o["metadata"]["namespace"] = k["namespace"]
    return objs


def pod_spec(o):
    if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return o["spec"]["template"]["spec"]
    return None


def pod_containers(o, init=True):
    spec = pod_spec(o)
    if not spec:
        return []
    return list(spec.get("containers", [])) + (list(spec.get("initContainers", [])) if init else [])


# --- KEDA ScaledObject: the part of KEDA 2.x's CRD schema the overlay uses -----------------

SCALED_OBJECT_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "name": {"type": "string"}, "envSourceContainerName": {"type": "string"}},
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "fallback": {
                    "type": "object", "required": ["failureThreshold", "replicas"], "additionalProperties": False,
                    "properties": {"failureThreshold": {"type": "integer", "minimum": 1},
                                   "replicas": {"type": "integer", "minimum": 0},
                                   "behavior": {"type": "string"}},
                },
                "advanced": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object", "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "required": ["type", "metadata"], "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"}, "name": {"type": "string"},
                            "useCachedMetrics": {"type": "boolean"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "authenticationRef": {"type": "object", "required": ["name"]},
                            # KEDA's trigger metadata is a map of strings.
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                        },
                    },
                },
            },
        },
    },
}


def validate_schema(o, where):
    if o["kind"] == "ScaledObject":
        errs = sorted(jsonschema.Draft7Validator(SCALED_OBJECT_SCHEMA).iter_errors(o), key=str)
        for e in errs:
            problem(f"{where}: ScaledObject {o['metadata']['name']}: {'/'.join(map(str, e.path))}: {e.message}")
        return
    try:
        kubernetes_validate.validate(o, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        problem(f"{where}: {o['kind']} {o['metadata'].get('name')}: {'/'.join(map(str, e.path))}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError as e:
        problem(f"{where}: {o['kind']} {o['metadata'].get('name')}: no schema in Kubernetes {K8S_VERSION}: {e}")


# --- invariants ----------------------------------------------------------------------------

def quantity(q, unit):
    """CPU in millicores or memory in bytes."""
    q = str(q)
    if unit == "cpu":
        return int(q[:-1]) if q.endswith("m") else int(float(q) * 1000)
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|K|M|G)?", q)
    if not m:
        raise ValueError(f"memory quantity {q}")
    mult = {None: 1, "K": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}[m.group(2)]
    return int(m.group(1)) * mult


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def env_value(container, configmaps, name):
    for e in container.get("env", []):
        if e["name"] == name and "value" in e:
            return e["value"]
    for src in container.get("envFrom", []):
        ref = src.get("configMapRef")
        if ref and name in configmaps.get(ref["name"], {}):
            return configmaps[ref["name"]][name]
    return None


def check_invariants(objs, where, roles, secret_names):
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in by_kind.get("ConfigMap", [])}
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    if not deployments:
        problem(f"{where}: no Deployment")
    roles_seen = set()
    autoscaled = set()
    for h in by_kind.get("HorizontalPodAutoscaler", []) + by_kind.get("ScaledObject", []):
        ref = h["spec"]["scaleTargetRef"]
        name = f"{h['kind']} {h['metadata']['name']}"
        target = deployments.get(ref["name"])
        if ref.get("kind", "Deployment") != "Deployment" or target is None:
            problem(f"{where}: {name}: scaleTargetRef {ref} is not a Deployment of this kustomization")
            continue
        if ref["name"] in autoscaled:
            problem(f"{where}: {name}: {ref['name']} already has an autoscaler")
        autoscaled.add(ref["name"])
        if "replicas" in target["spec"]:
            problem(f"{where}: {name}: Deployment {ref['name']} sets replicas, which every apply would reset")
        if h["kind"] == "HorizontalPodAutoscaler":
            if h["spec"]["minReplicas"] < 2:
                problem(f"{where}: {name}: minReplicas below 2 leaves no instance during a restart")
            for m in h["spec"]["metrics"]:
                if m["type"] == "Resource":
                    res = m["resource"]["name"]
                    for c in pod_containers(target, init=False):
                        if res not in c.get("resources", {}).get("requests", {}):
                            problem(f"{where}: {name}: scales on {res} but container {c['name']} has no {res} request")
        else:
            for t in h["spec"]["triggers"]:
                if t["type"] == "prometheus" and "jobs_queued" not in t["metadata"].get("query", ""):
                    problem(f"{where}: {name}: prometheus trigger does not read jobs_queued (per-queue depth)")

    for name, d in deployments.items():
        w = f"{where}: Deployment {name}"
        spec = pod_spec(d)
        tmpl_labels = d["spec"]["template"]["metadata"]["labels"]
        if not labels_match(d["spec"]["selector"], tmpl_labels):
            problem(f"{w}: selector does not match the pod labels")
        if name not in autoscaled and d["spec"].get("replicas", 1) < 2:
            problem(f"{w}: fewer than 2 replicas and no autoscaler")
        if spec.get("automountServiceAccountToken") is not False:
            problem(f"{w}: automountServiceAccountToken must be false (itsur calls no Kubernetes API)")
        psc = spec.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or psc.get("runAsUser", 0) == 0:
            problem(f"{w}: pod must run as non-root (runAsNonRoot: true, runAsUser != 0)")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problem(f"{w}: pod seccompProfile must be RuntimeDefault")
        for c in pod_containers(d):
            cw = f"{w} container {c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                problem(f"{cw}: allowPrivilegeEscalation must be false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problem(f"{cw}: readOnlyRootFilesystem must be true")
            if sc.get("privileged"):
                problem(f"{cw}: privileged")
            if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
                problem(f"{cw}: capabilities must drop ALL and add none")
            if sc.get("runAsUser") == 0:
                problem(f"{cw}: runs as root")
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for unit in ("cpu", "memory"):
                    if unit not in res.get(kind, {}):
                        problem(f"{cw}: no {unit} {kind[:-1]}")
            for unit in ("cpu", "memory"):
                try:
                    if quantity(res["requests"][unit], unit) > quantity(res["limits"][unit], unit):
                        problem(f"{cw}: {unit} request above its limit")
                except (KeyError, ValueError):
                    pass
            if c.get("image", "").split(":")[0].split("/")[-1] != "itsur":
                problem(f"{cw}: image {c.get('image')} is not itsur")
            role = (c.get("args") or [None])[0]
            if role not in roles:
                problem(f"{cw}: args[0] {role!r} is not a subcommand of itsur ({sorted(roles)})")
            for src in c.get("envFrom", []):
                if "configMapRef" in src and src["configMapRef"]["name"] not in configmaps:
                    problem(f"{cw}: envFrom ConfigMap {src['configMapRef']['name']} is not in the kustomization")
                if "secretRef" in src and src["secretRef"]["name"] not in secret_names:
                    problem(f"{cw}: envFrom Secret {src['secretRef']['name']} is not secret.example.yaml's")
        main = spec["containers"]
        for c in main:
            cw = f"{w} container {c['name']}"
            roles_seen.add((c.get("args") or [None])[0])
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            expect = {"startupProbe": "/health/live", "livenessProbe": "/health/live",
                      "readinessProbe": "/health/ready"}
            for probe, path in expect.items():
                p = c.get(probe)
                if not p:
                    problem(f"{cw}: no {probe}")
                    continue
                hg = p.get("httpGet", {})
                if hg.get("path") != path:
                    problem(f"{cw}: {probe} must GET {path}, not {hg.get('path')}")
                if hg.get("port") not in ports and hg.get("port") not in ports.values():
                    problem(f"{cw}: {probe} port {hg.get('port')} is not a container port")
                if p.get("timeoutSeconds", 1) > 5:
                    problem(f"{cw}: {probe} timeout above 5 s")
            pre = c.get("lifecycle", {}).get("preStop", {})
            pause = pre.get("sleep", {}).get("seconds")
            if not pause:
                problem(f"{cw}: no preStop sleep (endpoints must drop before SIGTERM)")
                pause = 0
            drain = env_value(c, configmaps, "SHUTDOWN_TIMEOUT_SECS")
            if drain is None:
                problem(f"{cw}: SHUTDOWN_TIMEOUT_SECS not set (the drain budget the grace period covers)")
                drain = 30  # the binary's default
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if not grace > pause + int(drain):
                problem(f"{cw}: terminationGracePeriodSeconds {grace} is not above preStop {pause} s + drain {drain} s")
        pdbs = [p for p in by_kind.get("PodDisruptionBudget", []) if labels_match(p["spec"]["selector"], tmpl_labels)]
        if len(pdbs) != 1:
            problem(f"{w}: {len(pdbs)} PodDisruptionBudgets select its pods (want 1)")
        svcs = [s for s in by_kind.get("Service", [])
                if all(tmpl_labels.get(k) == v for k, v in s["spec"].get("selector", {}).items())]
        if not svcs:
            problem(f"{w}: no Service selects its pods")
        for s in svcs:
            names = {p.get("name") for c in main for p in c.get("ports", [])}
            for p in s["spec"]["ports"]:
                if isinstance(p.get("targetPort"), str) and p["targetPort"] not in names:
                    problem(f"Service {s['metadata']['name']}: targetPort {p['targetPort']} is no port of {name}")
        nps = [n for n in by_kind.get("NetworkPolicy", []) if labels_match(n["spec"]["podSelector"], tmpl_labels)]
        if not nps:
            problem(f"{w}: no NetworkPolicy selects its pods")
        for c in main:
            for p in c.get("ports", []):
                if not any(any(rp.get("port") in (p["containerPort"], p.get("name")) for rp in rule.get("ports", []))
                           for n in nps for rule in n["spec"].get("ingress", [])):
                    problem(f"{w}: NetworkPolicy admits no traffic to port {p['containerPort']}")
    for want in ("serve", "worker", "outbox-relay"):
        if want not in roles_seen:
            problem(f"{where}: no Deployment runs `itsur {want}`")


def settings_coverage(k8s_dir, env_vars):
    """Every setting is a ConfigMap key, a Secret key, or a commented-out line in one of
    them (optional settings that have no default and must not be set empty), or is set per
    Deployment (listen addresses)."""
    named = set()
    for f in (k8s_dir / "base" / "configmap.yaml", k8s_dir / "base" / "secret.example.yaml"):
        text = f.read_text(encoding="utf-8")
        named |= set(re.findall(r"^\s*#?\s*([A-Z][A-Z0-9_]+):", text, flags=re.M))
    for f in (k8s_dir / "base").glob("*.yaml"):
        named |= set(re.findall(r"^\s*- name: ([A-Z][A-Z0-9_]+)$", f.read_text(encoding="utf-8"), flags=re.M))
    for var in sorted(env_vars - named):
        problem(f"setting {var} is in neither base/configmap.yaml nor base/secret.example.yaml "
                f"(add it there, commented out when it has no default)")


def main():
    k8s_dir = pathlib.Path(sys.argv[1])
    env_vars = set(pathlib.Path(sys.argv[2]).read_text().split())
    roles = set(pathlib.Path(sys.argv[3]).read_text().split())
    kubectl_dir = pathlib.Path(sys.argv[4]) if len(sys.argv) > 4 else None
    if len(env_vars) < 20 or "DATABASE_URL" not in env_vars:
        problem(f"could not read the binary's settings from {sys.argv[2]}")
    secret_docs = load_docs(k8s_dir / "base" / "secret.example.yaml")
    secret_names = {d["metadata"]["name"] for d in secret_docs}

    # Every YAML file as written (including the Secret example the kustomization leaves out).
    files = 0
    for f in sorted(k8s_dir.rglob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        for o in load_docs(f):
            files += 1
            validate_schema(o, str(f.relative_to(k8s_dir)))
    # Every kustomization as rendered.
    kdirs = sorted(p.parent for p in k8s_dir.rglob("kustomization.yaml"))
    for kdir in kdirs:
        label = str(kdir.relative_to(k8s_dir))
        try:
            objs = render(kdir)
        except (ValueError, KeyError, OSError) as e:
            problem(f"{label}: cannot render: {e}")
            continue
        names = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs]
        for dup in {n for n in names if names.count(n) > 1}:
            problem(f"{label}: {dup} defined twice")
        for o in objs:
            validate_schema(o, f"{label} (rendered)")
        check_invariants(objs, label, roles, secret_names)
        if kubectl_dir:
            kfile = kubectl_dir / (label.replace("/", "_") + ".yaml")
            theirs = load_docs(kfile)
            key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
            mine = {key(o): o for o in objs}
            other = {key(o): o for o in theirs}
            if set(mine) != set(other):
                problem(f"{label}: kubectl kustomize renders {sorted(other)}, this checker {sorted(mine)}")
            for k in set(mine) & set(other):
                if json.dumps(mine[k], sort_keys=True) != json.dumps(other[k], sort_keys=True):
                    problem(f"{label}: {k} differs between kubectl kustomize and this checker's rendering")
        print(f"k8s: {label}: {len(objs)} objects rendered, validated against Kubernetes {K8S_VERSION} and checked")
    settings_coverage(k8s_dir, env_vars)
    print(f"k8s: {files} objects in {k8s_dir} validated; {len(env_vars)} settings of the binary covered")
    for p in PROBLEMS:
        print(f"k8s: FAIL: {p}", file=sys.stderr)
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
