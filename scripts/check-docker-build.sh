#!/usr/bin/env bash
# Run the Dockerfile's build step without Docker (no engine runs on these machines): copy
# exactly what the builder stage COPYs into an empty directory and run its cargo command
# there. Catches what a static check cannot: a file the build needs that the Dockerfile or
# .dockerignore leaves out (include_str! of an example, a workspace member, a lock file).
#
#   scripts/check-docker-build.sh          cargo check of the copied sources (fast)
#   DOCKER_CHECK_FULL=1 scripts/...        the Dockerfile's exact build command, the
#                                          profile-guided build (~10 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

# COPY lines of the builder stage (before the first `FROM` after it), without --from.
awk '/^FROM /{n++} n==1 && /^COPY / && !/--from/' Dockerfile | while read -r _ rest; do
  # shellcheck disable=SC2086
  set -- $rest
  dest="${*: -1}"
  for src in "${@:1:$#-1}"; do
    case "$dest" in
      ./|.) cp -r "$src" "$ctx/" ;;
      *) mkdir -p "$ctx/$(dirname "$dest")"; cp -r "$src" "$ctx/$dest" ;;
    esac
  done
done

# The build command: the line after the builder's `RUN --mount=...` line.
cmd=$(awk '/^RUN --mount/ { getline; sub(/^ +/, ""); sub(/ +$/, ""); print; exit }' Dockerfile)
case "$cmd" in
  "scripts/pgo-build.sh" | "cargo build --locked --release") ;;
  *) echo "check-docker-build: unexpected build command: $cmd" >&2; exit 1 ;;
esac

if [ "${DOCKER_CHECK_FULL:-0}" = "1" ]; then
  export CARGO_TARGET_DIR="$PWD/target/docker-check"
  echo "== in $ctx: $cmd"
  (cd "$ctx" && $cmd)
  test -x "$CARGO_TARGET_DIR/release/triage"
else
  # The files a build needs do not depend on the profile: check in the dev profile and
  # share target/, so only the copied package itself is compiled again.
  export CARGO_TARGET_DIR="$PWD/target"
  echo "== in $ctx: cargo check --locked --bin triage (the Dockerfile's sources; DOCKER_CHECK_FULL=1 runs its exact build)"
  (cd "$ctx" && cargo check --locked --bin triage)
  [ "$cmd" = "cargo build --locked --release" ] || bash -n "$ctx/$cmd"
fi
echo "check-docker-build: ok"
