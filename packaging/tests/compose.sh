#!/usr/bin/env bash
# Checks packaging/compose.yml and packaging/Dockerfile without a Docker engine:
#   1. compose.yml parses (PyYAML, anchors and merge keys resolved) and validates against the
#      Compose Specification JSON schema (the one shipped in the docker-compose 1.29.2 wheel
#      from PyPI; a visible skip of this part only when pip cannot fetch it);
#   2. the stack is complete and consistent: the required services exist, every depends_on
#      target exists, a service_healthy target has a healthcheck (its own or the image's
#      HEALTHCHECK), migrate runs once after a healthy postgres and every role waits for
#      it, each itsur service runs a real role, bind-mounted files exist, named volumes are
#      declared, nginx upstreams and Prometheus targets name services and ports that exist;
#   3. the Dockerfile has what the deployment relies on (static build, scratch, CA bundle,
#      non-root user 10001, HEALTHCHECK, ENTRYPOINT/CMD), and its roles agree with
#      `itsur --help` when a binary is at hand.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_tool python3 python3
need_pyyaml
make_tmp
trap 'rm -rf "$TMP"' EXIT

# The Compose Specification schema, from the docker-compose wheel on PyPI (cached).
SCHEMA_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/itsur-packaging"
SCHEMA="$SCHEMA_CACHE/compose_spec.json"
if [[ ! -s $SCHEMA ]]; then
    mkdir -p "$SCHEMA_CACHE"
    if python3 -m pip download -q --no-deps --dest "$TMP/wheel" docker-compose==1.29.2 >/dev/null 2>&1; then
        python3 - "$TMP"/wheel/*.whl "$SCHEMA" <<'PY'
import sys, zipfile
open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("compose/config/compose_spec.json"))
PY
    fi
fi
if [[ -s $SCHEMA ]] && ! python3 -c 'import jsonschema' 2>/dev/null; then
    python3 -m pip install -q jsonschema >/dev/null 2>&1 || apt_install python3-jsonschema || true
fi
if [[ -s $SCHEMA ]] && python3 -c 'import jsonschema' 2>/dev/null; then
    export COMPOSE_SCHEMA="$SCHEMA"
else
    say "SKIP part of 1: the Compose schema or jsonschema could not be installed from PyPI; structure checks below still run"
    export COMPOSE_SCHEMA=""
fi

BIN="${ITSUR_BIN:-$REPO_ROOT/target/debug/itsur}"
ROLES=""
if [[ -x $BIN ]]; then
    ROLES="$("$BIN" --help | sed -nE 's/^  ([a-z][a-z-]+) .*/\1/p' | grep -vx help | tr '\n' ' ')"
    say "roles of $BIN: $ROLES"
else
    say "no itsur binary at $BIN: roles checked against the documented list only"
fi
export ROLES

python3 - "$PACKAGING" <<'PY'
import json, os, re, sys
import yaml

pkg = sys.argv[1]
errors = []
def err(msg):
    errors.append(msg)

compose_path = os.path.join(pkg, "compose.yml")
doc = yaml.safe_load(open(compose_path, encoding="utf-8"))
services = doc.get("services") or {}
print(f"compose: compose.yml parsed: {len(services)} services: {', '.join(services)}", file=sys.stderr)

# ---- 1. schema
schema_path = os.environ.get("COMPOSE_SCHEMA")
if schema_path:
    import jsonschema
    schema = json.load(open(schema_path, encoding="utf-8"))
    # The 2021 schema predates the top-level "name" (Compose v2.3+); check the rest.
    body = {k: v for k, v in doc.items() if k != "name"}
    validator = jsonschema.Draft201909Validator(schema) if hasattr(jsonschema, "Draft201909Validator") else jsonschema.Draft7Validator(schema)
    problems = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    for p in problems:
        err(f"schema: {'/'.join(map(str, p.path)) or '(top)'}: {p.message}")
    if not problems:
        print("compose: valid against the Compose Specification schema", file=sys.stderr)
    if not isinstance(doc.get("name", ""), str):
        err("top-level name must be a string")

# ---- 2. structure
required = ["postgres", "redis", "migrate", "serve-1", "serve-2", "worker", "outbox-relay",
            "nginx", "prometheus", "grafana"]
for s in required:
    if s not in services:
        err(f"service {s} is missing")

dockerfile = open(os.path.join(pkg, "Dockerfile"), encoding="utf-8").read()
image_has_healthcheck = bool(re.search(r"^HEALTHCHECK(?:[^\n]*\\\n)*[^\n]*CMD", dockerfile, re.M))
itsur = {n: s for n, s in services.items() if (s.get("build") or {}).get("dockerfile") == "packaging/Dockerfile"}

def has_healthcheck(name):
    s = services[name]
    hc = s.get("healthcheck")
    if hc is not None:
        return not hc.get("disable", False) and bool(hc.get("test"))
    return name in itsur and image_has_healthcheck

def deps(s):
    d = s.get("depends_on") or {}
    return {k: "service_started" for k in d} if isinstance(d, list) else {k: (v or {}).get("condition", "service_started") for k, v in d.items()}

for name, s in services.items():
    for target, cond in deps(s).items():
        if target not in services:
            err(f"{name}: depends_on {target}, which is not a service")
            continue
        if cond == "service_healthy" and not has_healthcheck(target):
            err(f"{name}: waits for {target} to be healthy, but {target} has no healthcheck")
        if target == name:
            err(f"{name}: depends on itself")
    if "image" not in s and "build" not in s:
        err(f"{name}: neither image nor build")

# dependency cycles
def visit(n, stack):
    if n in stack:
        err(f"depends_on cycle: {' -> '.join(stack + [n])}")
        return
    for t in deps(services.get(n, {})):
        if t in services:
            visit(t, stack + [n])
for n in services:
    visit(n, [])

if "migrate" in services:
    m = services["migrate"]
    if deps(m).get("postgres") != "service_healthy":
        err("migrate must depend on postgres with condition service_healthy")
    if str(m.get("restart", "no")) != "no":
        err("migrate runs once: restart must be \"no\"")
    if m.get("command") != ["migrate"]:
        err("migrate: command must be [\"migrate\"]")

roles = os.environ.get("ROLES", "").split() or ["serve", "worker", "outbox-relay", "migrate", "healthcheck", "all"]
ports_of = {}
for name, s in itsur.items():
    cmd = s.get("command") or ["serve"]
    role = cmd[0]
    if role not in roles:
        err(f"{name}: command {cmd} is not an itsur role ({' '.join(roles)})")
    env = s.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    if role != "migrate" and deps(s).get("migrate") != "service_completed_successfully":
        err(f"{name}: must wait for migrate (condition service_completed_successfully)")
    if "DATABASE_URL" not in env:
        err(f"{name}: DATABASE_URL is not set")
    if role in ("serve", "all"):
        if "JWT_SECRET" not in env:
            err(f"{name}: JWT_SECRET is not set")
        addr = env.get("BIND_ADDR", "0.0.0.0:8080")
    elif role in ("worker", "outbox-relay"):
        addr = env.get("METRICS_BIND", "0.0.0.0:9464" if role == "worker" else "0.0.0.0:9465")
        if "BIND_ADDR" in env:
            err(f"{name}: BIND_ADDR would make `itsur healthcheck` probe it instead of METRICS_BIND")
    else:
        addr = None
    if addr:
        port = addr.rsplit(":", 1)[1]
        ports_of[name] = port
        if not addr.startswith("0.0.0.0:"):
            err(f"{name}: listens on {addr}: other containers cannot reach it")
    grace = str(s.get("stop_grace_period", "10s"))
    secs = int(re.match(r"(\d+)s$", grace).group(1)) if re.match(r"(\d+)s$", grace) else 0
    if role != "migrate" and secs <= 30:
        err(f"{name}: stop_grace_period {grace} must exceed the 30 s drain")

for name, s in services.items():
    for v in s.get("volumes") or []:
        src = v.split(":", 1)[0] if isinstance(v, str) else v.get("source", "")
        if src.startswith((".", "/")):
            if not os.path.exists(os.path.normpath(os.path.join(pkg, src))):
                err(f"{name}: bind mount source {src} does not exist")
        elif src and src not in (doc.get("volumes") or {}):
            err(f"{name}: named volume {src} is not declared under volumes:")

# nginx upstreams and prometheus targets must be services on the ports they listen on
conf = open(os.path.join(pkg, "nginx", "compose.conf"), encoding="utf-8").read()
ups = re.findall(r"^\s*server ([a-z0-9-]+):(\d+)", conf, re.M)
if not ups:
    err("nginx/compose.conf: no upstream servers")
for host, port in ups:
    if host not in services:
        err(f"nginx/compose.conf: upstream {host} is not a service")
    elif ports_of.get(host) != port:
        err(f"nginx/compose.conf: {host}:{port}, but {host} listens on {ports_of.get(host)}")
serve_services = {n for n, s in itsur.items() if (s.get("command") or ["serve"])[0] == "serve"}
if {h for h, _ in ups} != serve_services:
    err(f"nginx/compose.conf upstreams {sorted(h for h, _ in ups)} != serve services {sorted(serve_services)}")
# Every serve instance believes X-Forwarded-For from exactly the nginx service (rate limits
# per client, issue 17): nginx has a fixed address in the declared subnet, and each serve's
# TRUSTED_PROXIES is that address as a /32, nothing wider.
import ipaddress
ngx_nets = (services.get("nginx") or {}).get("networks") or {}
ngx_addr = None
if isinstance(ngx_nets, dict):
    for net_name, net in ngx_nets.items():
        if isinstance(net, dict) and net.get("ipv4_address"):
            ngx_addr = (net_name, ipaddress.ip_address(net["ipv4_address"]))
if ngx_addr is None:
    err("nginx: no fixed ipv4_address, so the serve instances cannot trust exactly it")
else:
    net_name, addr = ngx_addr
    subnets = [ipaddress.ip_network(c["subnet"]) for c in
               (((doc.get("networks") or {}).get(net_name) or {}).get("ipam") or {}).get("config", [])]
    if not any(addr in s for s in subnets):
        err(f"nginx: ipv4_address {addr} is not in a declared subnet of network {net_name}")
    for n in sorted(serve_services):
        tp = str((itsur[n].get("environment") or {}).get("TRUSTED_PROXIES", ""))
        want = {f"{addr}/32"}
        if {c.strip() for c in tp.split(",") if c.strip()} != want:
            err(f"{n}: TRUSTED_PROXIES={tp!r}, want exactly nginx's address {addr}/32")
prom = yaml.safe_load(open(os.path.join(pkg, "prometheus", "prometheus.compose.yml"), encoding="utf-8"))
scraped = set()
for job in prom["scrape_configs"]:
    for sc in job.get("static_configs", []):
        for t in sc["targets"]:
            host, port = t.rsplit(":", 1)
            if host == "localhost":
                continue
            scraped.add(host)
            if host not in services:
                err(f"prometheus.compose.yml: target {t} is not a service")
            elif ports_of.get(host) != port:
                err(f"prometheus.compose.yml: {t}, but {host} listens on {ports_of.get(host)}")
for n in itsur:
    if n in ports_of and n not in scraped:
        err(f"prometheus.compose.yml does not scrape {n}")

# ---- 3. Dockerfile
must = {
    r"^FROM rust:1\.95-bookworm AS builder$|^ARG RUST_IMAGE=rust:1\.95-bookworm$": "builder image rust:1.95-bookworm",
    r"cargo build --release --locked --target x86_64-unknown-linux-gnu": "static release build with --locked",
    r"target-feature=\+crt-static": "RUSTFLAGS crt-static",
    r'getrandom_backend=\\"linux_getrandom\\"': "RUSTFLAGS getrandom_backend=linux_getrandom (no /dev/urandom in scratch)",
    r"^FROM scratch$": "scratch runtime",
    r"^RUN sh packaging/rootfs\.sh /out/itsur /rootfs$": "runtime tree from packaging/rootfs.sh (CA bundle, passwd, nsswitch; run by image.sh)",
    r"^COPY --from=builder /rootfs/ /$": "COPY of the rootfs into scratch",
    r"^USER 10001(:10001)?$": "USER 10001",
    r"^EXPOSE 8080$": "EXPOSE 8080",
    r'^HEALTHCHECK(?:[^\n]*\\\n)*[^\n]*CMD \["/itsur", ?"healthcheck"\]': 'HEALTHCHECK CMD ["/itsur","healthcheck"]',
    r'^ENTRYPOINT \["/itsur"\]$': 'ENTRYPOINT ["/itsur"]',
    r'^CMD \["serve"\]$': 'CMD ["serve"]',
}
for rx, what in must.items():
    if not re.search(rx, dockerfile, re.M):
        err(f"Dockerfile: missing {what}")
if re.search(r"^ENV[^\n]*(\\\n[^\n]*)*\bBIND_ADDR=", dockerfile, re.M):
    err("Dockerfile: ENV BIND_ADDR would make the HEALTHCHECK of worker/relay containers probe 8080 only")
if not os.path.exists(os.path.join(pkg, "Dockerfile.dockerignore")):
    err("packaging/Dockerfile.dockerignore is missing (target/ would be sent as build context)")
elif "!packaging/rootfs.sh" not in open(os.path.join(pkg, "Dockerfile.dockerignore")).read().split("\n"):
    err("packaging/Dockerfile.dockerignore must let packaging/rootfs.sh into the build context")

if errors:
    print("\n".join("compose: FAIL: " + e for e in errors), file=sys.stderr)
    sys.exit(1)
print(f"compose: ok: depends_on graph, healthchecks, roles, mounts, volumes, nginx upstreams "
      f"({len(ups)}) and Prometheus targets ({len(scraped)}) consistent; Dockerfile complete", file=sys.stderr)
PY
say "PASS"
