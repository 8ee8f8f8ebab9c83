#!/usr/bin/env bash
# The one test command: broker up, formatting, lints, the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-rabbitmq.sh
scripts/setup-python.sh   # the official openai SDK, for tests/openai_sdk.rs

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo test --locked --workspace --all-targets

echo "== deploy checks (Dockerfile, Kubernetes manifests)"
scripts/check-deploy.sh
scripts/check-docker-build.sh

echo "== alert rules and dashboard (promtool)"
scripts/check-alerts.sh
