#!/usr/bin/env bash
# Fuzz the pure hot-path pieces (rules compiler, JSON probe + confidence extractors, JSON
# pointers, spool framing) with cargo-fuzz / libFuzzer. Not part of scripts/test.sh: slow.
#
#   scripts/fuzz.sh                      every target, FUZZ_SECONDS (default 60) each
#   scripts/fuzz.sh rules_compile ...    only these targets
#   scripts/fuzz.sh --replay [TARGET...] run the seed corpus and fuzz/regressions/<target>/
#                                        once each, no fuzzing (fixed crashes stay fixed;
#                                        *.gz reproducers are decompressed first)
#
# Each target fuzzes a temporary copy of its seed corpus (fuzz/corpus/<target>/), so the
# inputs libFuzzer finds never land in the repo; FUZZ_KEEP_CORPUS=1 keeps and prints the copy.
# A crash leaves its input in fuzz/artifacts/<target>/; the script prints the path, goes on
# with the other targets, and exits 1 at the end. Reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>   (from fuzz/)
# then copy the input to fuzz/regressions/<target>/ with a note in fuzz/regressions/README.md.
#
# Env: FUZZ_SECONDS (60), FUZZ_TIMEOUT (seconds one input may take before it counts as a
# hang: 10 when fuzzing, 600 in --replay), FUZZ_ARGS (extra libFuzzer flags), FUZZ_KEEP_CORPUS.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

# cargo-fuzz needs nightly-only flags (-Zsanitizer); RUSTC_BOOTSTRAP lets stable pass them.
export RUSTC_BOOTSTRAP=1

ALL=(rules_compile probe_extract request_pin header_extract confidence_math pointer_parse spool_records)
replay=0
if [[ "${1:-}" == "--replay" ]]; then
    replay=1
    shift
fi
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${ALL[@]}")
for t in "${targets[@]}"; do
    if [[ ! " ${ALL[*]} " == *" $t "* ]]; then
        echo "unknown target $t (one of: ${ALL[*]})" >&2
        exit 2
    fi
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

seconds=${FUZZ_SECONDS:-60}
# A hang while fuzzing is anything over 10 s; replaying known large inputs may take minutes.
if [[ $replay == 1 ]]; then timeout=${FUZZ_TIMEOUT:-600}; else timeout=${FUZZ_TIMEOUT:-10}; fi
echo "== cargo fuzz build"
cargo fuzz build

work=$(mktemp -d "${TMPDIR:-/tmp}/triage-fuzz.XXXXXX")
if [[ -z "${FUZZ_KEEP_CORPUS:-}" ]]; then
    trap 'rm -rf "$work"' EXIT
fi

failed=()
summary=()
for t in "${targets[@]}"; do
    log="$work/$t.log"
    if [[ $replay == 1 ]]; then
        echo "== replay $t"
        # Files, not directories: libFuzzer runs each once and writes nothing next to them.
        # Large reproducers are stored gzipped; they run decompressed.
        inputs=(corpus/"$t"/*)
        mkdir -p "$work/regressions/$t"
        for f in regressions/"$t"/*; do
            [[ -f "$f" ]] || continue
            if [[ "$f" == *.gz ]]; then
                gzip -dc "$f" >"$work/regressions/$t/$(basename "$f" .gz)"
                inputs+=("$work/regressions/$t/$(basename "$f" .gz)")
            else
                inputs+=("$f")
            fi
        done
        set +e
        cargo fuzz run "$t" "${inputs[@]}" -- -timeout="$timeout" >"$log" 2>&1
        status=$?
        set -e
        echo "   $(grep -c '^Running: ' "$log") inputs run"
    else
        echo "== fuzz $t for ${seconds}s"
        mkdir -p "$work/corpus/$t"
        cp -R corpus/"$t"/. "$work/corpus/$t/"
        set +e
        # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
        cargo fuzz run "$t" "$work/corpus/$t" -- \
            -max_total_time="$seconds" -timeout="$timeout" -print_final_stats=1 \
            ${FUZZ_ARGS:-} >"$log" 2>&1
        status=$?
        set -e
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1 || true)
        rate=$(grep -o 'exec/s: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$' || true)
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$' || true)
        line="$t: ${runs:-?} execs, ${rate:-?} exec/s, cov ${cov:-?}, corpus $(ls "$work/corpus/$t" | wc -l) files"
        echo "   $line"
        summary+=("$line")
    fi
    if [[ $status != 0 ]]; then
        failed+=("$t")
        echo "!! $t failed (exit $status); last lines of $log:" >&2
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written to|deadly signal|timeout' "$log" >&2 || tail -n 30 "$log" >&2
        artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -n 1 | sed 's/Test unit written to //' || true)
        if [[ $replay == 1 ]]; then
            artifact=$(grep '^Running: ' "$log" | tail -n 1 | sed 's/^Running: //' || true)
        fi
        if [[ -n "$artifact" ]]; then
            echo "!! reproducer: $artifact" >&2
            echo "!!   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $t $artifact" >&2
        fi
        # Keep the log of a failure, even when the temporary directory goes away.
        mkdir -p artifacts/"$t"
        cp "$log" artifacts/"$t"/last-failure.log
        echo "!! log: fuzz/artifacts/$t/last-failure.log" >&2
    fi
done

if [[ ${#summary[@]} -gt 0 ]]; then
    echo "== summary"
    printf '   %s\n' "${summary[@]}"
fi
if [[ -n "${FUZZ_KEEP_CORPUS:-}" ]]; then
    echo "== grown corpora kept in $work/corpus"
fi
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "== no crashes"
