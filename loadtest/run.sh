#!/usr/bin/env bash
# Build triage and the load test (release), then run the interleaved comparison.
#   loadtest/run.sh            # full run, ~5–8 min, 3 rounds
#   loadtest/run.sh --quick    # ~1–2 min, one round
# Any other flags go to `loadtest run` (see `cargo run -p loadtest --release -- run --help`).
# Needs RabbitMQ on 127.0.0.1:5672 (guest/guest); installs nginx with apt when missing.
# The table goes to loadtest/results/latest.md and stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v rabbitmq-diagnostics >/dev/null && ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    echo "RabbitMQ does not answer: starting it" >&2
    rabbitmq-server -detached || true
    for _ in $(seq 60); do rabbitmq-diagnostics -q ping >/dev/null 2>&1 && break; sleep 1; done
fi

cargo build --release --locked -p triage -p loadtest
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec target/release/loadtest run "$@"
