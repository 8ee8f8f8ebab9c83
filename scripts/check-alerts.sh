#!/usr/bin/env bash
# Checks the monitoring artifacts in deploy/:
#   1. deploy/prometheus/rules.yaml is exactly the `spec` of deploy/prometheus/alerts.yaml (the
#      PrometheusRule is the source; promtool and plain Prometheus read the rules file),
#   2. promtool check rules, then promtool test rules deploy/prometheus/tests/*.yaml,
#   3. deploy/grafana/*.json is JSON and every PromQL query in it parses.
# Installs promtool with apt-get when it is missing. Exits non-zero on any failure.
#
#   scripts/check-alerts.sh            check
#   scripts/check-alerts.sh --write    regenerate rules.yaml from alerts.yaml, then check
set -euo pipefail
cd "$(dirname "$0")/.."

PROM=deploy/prometheus
SOURCE=$PROM/alerts.yaml
RULES=$PROM/rules.yaml
DASHBOARDS=(deploy/grafana/*.json)

write=false
case "${1:-}" in
"") ;;
--write) write=true ;;
*)
    echo "usage: $0 [--write]" >&2
    exit 64
    ;;
esac

fail() {
    echo "check-alerts: $*" >&2
    exit 1
}

tmp=$(mktemp -d)
policy_rc_created=false
cleanup() {
    rm -rf "$tmp"
    if $policy_rc_created; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT

install_promtool() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null && sudo -n true 2>/dev/null ||
            fail "promtool is missing and installing it needs root (apt-get install prometheus)"
        sudo=(sudo -n)
    fi
    command -v apt-get >/dev/null ||
        fail "promtool is missing and apt-get is not available: install Prometheus' promtool (2.42 or later) and put it on PATH"
    echo "== installing promtool (apt-get install prometheus)"
    # No init system in containers: keep the package's postinst from starting the server.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
        policy_rc_created=true
    fi
    "${sudo[@]}" apt-get update -qq ||
        fail "apt-get update failed; cannot install promtool"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        prometheus >"$tmp/apt.log" 2>&1 || {
        cat "$tmp/apt.log" >&2
        fail "apt-get install prometheus failed; cannot install promtool"
    }
    command -v promtool >/dev/null || fail "the prometheus package did not provide promtool"
}

command -v python3 >/dev/null || fail "python3 is needed (JSON checks and rules generation)"
command -v promtool >/dev/null || install_promtool
echo "== $(promtool --version 2>&1 | head -n1)"

# rules.yaml = a header + the lines under alerts.yaml's `spec:`, one level (2 spaces) less
# indented. Done on text so comments carry over and no YAML library is needed; promtool
# checks the result.
generate_rules() {
    awk -v src="$SOURCE" '
        BEGIN {
            print "# GENERATED from " src " by scripts/check-alerts.sh --write. Do not edit:"
            print "# edit " src " (the PrometheusRule) and regenerate. Definitions, thresholds and"
            print "# the audit-rate arithmetic are explained at the top of that file."
        }
        in_spec {
            if ($0 ~ /^$/ || $0 ~ /^  /) { print substr($0, 3); next }
            printf "%s:%d: a line after spec: that is not indented under it\n", src, NR > "/dev/stderr"
            bad = 1; exit 1
        }
        /^spec:[ ]*$/ { in_spec = 1 }
        END {
            if (bad) exit 1
            if (!in_spec) { print src ": no top-level `spec:`" > "/dev/stderr"; exit 1 }
        }
    ' "$SOURCE"
}

grep -q '^apiVersion: monitoring.coreos.com/v1$' "$SOURCE" || fail "$SOURCE: apiVersion is not monitoring.coreos.com/v1"
grep -q '^kind: PrometheusRule$' "$SOURCE" || fail "$SOURCE: kind is not PrometheusRule"
generate_rules >"$tmp/rules.yaml" || fail "could not generate $RULES from $SOURCE"
if $write; then
    cp "$tmp/rules.yaml" "$RULES"
    echo "== wrote $RULES"
elif ! diff -u "$RULES" "$tmp/rules.yaml" >"$tmp/rules.diff"; then
    cat "$tmp/rules.diff" >&2
    fail "$RULES is out of date with $SOURCE: run scripts/check-alerts.sh --write"
fi

echo "== promtool check rules $RULES"
promtool check rules "$RULES"

echo "== promtool test rules $PROM/tests/*.yaml"
promtool test rules "$PROM"/tests/*.yaml

# Dashboards: valid JSON, and every target's PromQL parses once Grafana's variables are
# replaced (checked by promtool as recording rules of a throwaway rule file).
for dashboard in "${DASHBOARDS[@]}"; do
    echo "== dashboard $dashboard"
    python3 -m json.tool "$dashboard" >/dev/null || fail "$dashboard is not valid JSON"
    python3 - "$dashboard" "$tmp/dashboard-rules.json" <<'PY' || fail "$dashboard: see above"
import json, re, sys

path, out = sys.argv[1], sys.argv[2]
with open(path) as f:
    dash = json.load(f)

errors, exprs = [], []
if dash.get("uid") in (None, "") or not dash.get("title"):
    errors.append("dashboard needs a uid and a title")
templating = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
for needed in ("datasource", "task", "variant"):
    if needed not in templating:
        errors.append(f"template variable ${needed} is missing")

def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))

ids = set()
for p in panels(dash.get("panels", [])):
    if p.get("id") in ids:
        errors.append(f"panel id {p.get('id')} is used twice")
    ids.add(p.get("id"))
    if p.get("type") == "row":
        continue
    where = f"panel {p.get('id')} {p.get('title')!r}"
    if p.get("datasource", {}).get("uid") != "${datasource}":
        errors.append(f"{where}: datasource is not ${{datasource}}")
    if not p.get("targets"):
        errors.append(f"{where}: no targets")
    for t in p.get("targets", []):
        expr = t.get("expr", "")
        if not expr.strip():
            errors.append(f"{where}: target {t.get('refId')} has no expr")
            continue
        e = expr
        for var, value in (("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1h")):
            e = e.replace(var, value)
        e = re.sub(r"\$\{?(task|variant)\}?", ".+", e)
        if "$" in e:
            errors.append(f"{where}: unknown variable in {expr!r}")
        exprs.append(e)

for a in dash.get("annotations", {}).get("list", []):
    if a.get("expr"):
        exprs.append(a["expr"])

for e in errors:
    print(f"{path}: {e}", file=sys.stderr)
rules = [{"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]
with open(out, "w") as f:
    json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
print(f"{len(exprs)} queries in {len(ids)} panels")
sys.exit(1 if errors else 0)
PY
    promtool check rules "$tmp/dashboard-rules.json" >"$tmp/dash.log" 2>&1 || {
        cat "$tmp/dash.log" >&2
        fail "$dashboard: a query does not parse (dashboard:queryN is the Nth target, from 0, then annotations)"
    }
done

echo "== check-alerts: ok"
