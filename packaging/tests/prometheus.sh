#!/usr/bin/env bash
# Checks packaging/prometheus/ with promtool (Debian package `prometheus`):
#   promtool check config  prometheus.yml, prometheus.compose.yml (rule files included)
#   promtool check rules   alerts.yml
#   promtool test rules    alerts.test.yml (each alert fires on a bad series, not on a good one)
# and that every metric the rules and the Grafana dashboard use is one of DESIGN.md's (the
# names listed in packaging/README.md, "Metrics contract").
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_tool promtool prometheus
need_tool python3 python3
need_pyyaml
say "$(promtool --version 2>&1 | head -n 1)"
cd "$PACKAGING/prometheus"
run() {
    local out
    if ! out="$("$@" 2>&1)"; then
        printf '%s\n' "$out" >&2
        fail "$*"
    fi
    say "ok: $* ($(grep -oE '[0-9]+ rules found|SUCCESS' <<<"$out" | tail -n 1))"
}
run promtool check config prometheus.yml
run promtool check config prometheus.compose.yml
run promtool check rules alerts.yml
run promtool test rules alerts.test.yml

# Metric names: rules and dashboard may only use names of the contract (a typo there is an
# alert that never fires or a panel that stays empty, and neither tool notices).
python3 - "$PACKAGING/README.md" alerts.yml "$PACKAGING/grafana/dashboards/itsur.json" <<'PY' || fail "unknown metric names"
import json, re, sys
readme, rules, dash = sys.argv[1:4]
text = open(readme, encoding="utf-8").read()
section = text.split("## Metrics contract", 1)[1].split("\n## ", 1)[0]
known = set(re.findall(r"^\| `([a-z_:]+)`", section, flags=re.M))
assert len(known) >= 10, f"could not read the contract table of {readme}"
suffixes = ("_bucket", "_sum", "_count")
def names(expr):
    expr = re.sub(r'"[^"]*"', '""', expr)           # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)            # matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)           # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    funcs = {"sum", "by", "without", "rate", "irate", "increase", "max", "min", "avg", "count",
             "histogram_quantile", "absent", "or", "and", "unless", "on", "ignoring", "le",
             "clamp_min", "topk", "delta", "deriv", "time", "vector", "scalar", "job",
             "instance", "pool", "state", "kind", "name", "path", "status", "method", "sink",
             "role", "group_left", "group_right", "bool", "label_replace", "sort_desc", "up",
             "e", "inf", "Inf", "offset", "changes", "resets", "max_over_time", "min_over_time",
             "avg_over_time", "last_over_time", "version", "interval", "__rate_interval",
             "__interval", "__range"}
    return {w for w in words if w not in funcs and not w.isdigit() and ":" not in w}
def base(n):
    for s in suffixes:
        if n.endswith(s) and n[: -len(s)] in known:
            return n[: -len(s)]
    return n
exprs = []
import yaml  # noqa: E402 (pyyaml is pulled in by compose.sh as well)
for g in yaml.safe_load(open(rules, encoding="utf-8"))["groups"]:
    for r in g["rules"]:
        exprs.append(("alerts.yml " + r.get("alert", r.get("record", "?")), r["expr"]))
def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))
d = json.load(open(dash, encoding="utf-8"))
for p in walk(d["panels"]):
    for t in p.get("targets", []):
        exprs.append((f"itsur.json panel {p.get('title')!r}", t["expr"]))
bad = []
# Dashboard layout: unique ids, inside the 24-column grid, no two panels overlapping,
# every query on the dashboard's datasource variable.
ids, cells = set(), {}
for p in walk(d["panels"]):
    if p["id"] in ids:
        bad.append(f"itsur.json: duplicate panel id {p['id']}")
    ids.add(p["id"])
    g = p["gridPos"]
    if g["x"] < 0 or g["x"] + g["w"] > 24:
        bad.append(f"itsur.json panel {p['title']!r}: outside the 24-column grid")
    for cx in range(g["x"], g["x"] + g["w"]):
        for cy in range(g["y"], g["y"] + g["h"]):
            if (cx, cy) in cells:
                bad.append(f"itsur.json: panels {cells[(cx, cy)]!r} and {p['title']!r} overlap")
                break
            cells[(cx, cy)] = p["title"]
    for t in p.get("targets", []):
        if t.get("datasource", {}).get("uid") != "${datasource}":
            bad.append(f"itsur.json panel {p['title']!r}: query not on the ${{datasource}} variable")
for where, e in exprs:
    for n in names(e):
        if base(n) not in known:
            bad.append(f"{where}: {n}")
if bad:
    print("\n".join(bad), file=sys.stderr)
    sys.exit(1)
print(f"prometheus: ok: {len(exprs)} expressions use only the {len(known)} contract metrics", file=sys.stderr)
PY
say "PASS"
