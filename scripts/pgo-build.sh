#!/usr/bin/env bash
# A profile-guided (PGO) release build of triage: build it instrumented, run it through a
# training load, merge the profile, build again with it. Leaves the optimised binary where
# `cargo build --release` leaves it, target/release/triage (under CARGO_TARGET_DIR when
# set), and the profile beside it in target/pgo/. The Dockerfile builds the image's binary
# with it.
#
#   scripts/pgo-build.sh      # two release builds and ~25 s of load
#
# The training load is the load test's own: its mock model server and driver, OpenAI chat
# answers of 0.8, 5 and 50 KB passed at saturation and at 1k req/s, a tenth held, and
# classifier answers. No broker is needed or touched: triage trains against a port where
# none answers, so its held outputs go to a temporary spool (as in an image build, where
# no broker runs either). Needs rustup: the profile merger comes from its llvm-tools
# component, added when missing. Measured gains: README, Performance.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  echo "pgo-build: adding rustup's llvm-tools (llvm-profdata)" >&2
  rustup component add llvm-tools
fi

echo "== 1/3 instrumented build, and the load test" >&2
# triage alone, as the optimised build below and the Dockerfile build it: building it
# together with the load test would unify features (tokio's `process`) into other code.
out="${CARGO_TARGET_DIR:-$PWD/target}"
gen="$out/pgo/gen"
raw="$work/raw"
RUSTFLAGS="-Cprofile-generate=$raw" CARGO_TARGET_DIR="$gen" \
  cargo build --locked --release -p triage
cargo build --locked --release -p loadtest

echo "== 2/3 training load" >&2
loadtest="$out/release/loadtest"
# `listening ADDR` (the mock) or `listening data=ADDR admin=ADDR` (triage) on stdout.
wait_listening() {
  for _ in $(seq 100); do
    line=$(grep -m1 '^listening ' "$1" 2>/dev/null || true)
    if [ -n "$line" ]; then
      echo "$line"
      return
    fi
    sleep 0.1
  done
  echo "pgo-build: $1 never said it was listening:" >&2
  cat "$1" >&2
  exit 1
}
"$loadtest" mock --listen 127.0.0.1:0 >"$work/mock.out" 2>&1 &
pids+=($!)
mock=$(wait_listening "$work/mock.out" | awk '{print $2}')

mkdir -p "$work/rules" "$work/spool"
cat >"$work/rules/rules.yaml" <<EOF
version: 1
upstreams:
  model: { url: "http://$mock", timeout_ms: 30000 }
tasks:
  - name: chat
    match: { path_prefix: /v1/chat/completions, method: POST }
    upstream: model
    confidence: { source: openai_logprobs, aggregate: mean }
    threshold: 0.85
    on_review: hold
  - name: classify
    match: { path_prefix: /v1/classify, method: POST }
    upstream: model
    confidence: { source: max, pointer: /probabilities }
    threshold: 0.85
    on_review: hold
EOF
# Logging as the image runs it (JSON, `info`, the access log on): some 90 MB of lines.
TRIAGE_AMQP_URL="amqp://guest:guest@127.0.0.1:1/%2f" TRIAGE_LOG=info TRIAGE_LOG_FORMAT=json \
  "$gen/release/triage" serve --rules "$work/rules/rules.yaml" \
  --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --worker-threads 1 --access-log info \
  --spool-dir "$work/spool" --drain-delay-ms 0 >"$work/triage.out" 2>&1 &
triage=$!
pids+=("$triage")
data=$(wait_listening "$work/triage.out" | sed -E 's/.*data=([^ ]+).*/\1/')

drive() { "$loadtest" drive "$@" | head -1 >&2; }
chat="http://$data/v1/chat/completions"
drive --url "$chat" --rate 0 --duration 4 --size 0.8k
drive --url "$chat" --rate 0 --duration 4 --size 50k
drive --url "$chat" --rate 0 --duration 2 --size 5k
drive --url "$chat" --rate 1000 --duration 4 --size 0.8k
drive --url "$chat" --rate 1000 --duration 3 --size 0.8k --hold-share 0.1
drive --url "http://$data/v1/classify" --rate 0 --duration 2 --size 0.8k

# The profile is written when the process exits; SIGTERM is a clean exit.
kill -TERM "$triage"
wait "$triage"
# Only triage's own profile: the instrumented build's build scripts wrote theirs to the
# same place, before the load ran.
"$profdata" merge -o "$out/pgo/triage.profdata" "$(ls -t "$raw"/*.profraw | head -1)"

echo "== 3/3 optimised build" >&2
RUSTFLAGS="-Cprofile-use=$out/pgo/triage.profdata" cargo build --locked --release -p triage
echo "pgo-build: $out/release/triage (profile: $out/pgo/triage.profdata)" >&2
