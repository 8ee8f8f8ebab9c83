#!/usr/bin/env bash
# The Python side of the test suite: the official `openai` SDK in .venv/ (gitignored), so
# tests/openai_sdk.rs can prove that a real client works through triage unchanged.
# Idempotent: when the pinned version is already installed it only checks (well under a
# second, offline); otherwise it creates the venv if needed and installs from PyPI.
# The venv is shared with scripts/check-deploy.sh (which adds its own tools to it).
# Exit non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
# Pinned exactly, so a new SDK release cannot break CI unannounced; bump it on purpose.
OPENAI_VERSION=3.54.0

installed() {
    [[ -x "$VENV/bin/python" ]] &&
        [[ "$("$VENV/bin/python" -c 'import openai; print(openai.__version__)' 2>/dev/null)" == "$OPENAI_VERSION" ]]
}

if installed; then
    echo "== python: openai $OPENAI_VERSION already in $VENV"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "== creating $VENV"
    python3 -m venv "$VENV"
fi
echo "== pip install openai==$OPENAI_VERSION (into $VENV)"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION"

if ! installed; then
    echo "setup-python: openai $OPENAI_VERSION is still not importable from $VENV/bin/python" >&2
    exit 1
fi
echo "== python: openai $OPENAI_VERSION ready in $VENV"
