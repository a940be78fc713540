#!/usr/bin/env bash
# Coverage-guided fuzzing of legate's parsers (cargo-fuzz / libFuzzer, AddressSanitizer).
#
#   bash bench/fuzz.sh                        # every target, 30 minutes each, 2 at a time
#   SECONDS_PER_TARGET=60 bash bench/fuzz.sh h1_request config
#   JOBS=1 MERGE=1 bash bench/fuzz.sh         # ... then fold what was found into fuzz/corpus
#
# Targets (fuzz/fuzz_targets/, each calls legate::fuzzing::<target>):
#   h1_request     the client-facing request head parser, body decoder, differential with
#                  hyper's server and httparse's reading of what legate forwards
#   h1_response    the upstream client's response head parser and body decoder
#   config         the config loader (`legate check`), and render → load round trips
#   tls            PEM certificates and keys, PKCS#12 bundles, the identity check
#   postgres       the database tunnel's startup messages and login exchange
#   trace_headers  traceparent, B3 (single and multi) and uber-trace-id parsing
#
# Needs a nightly toolchain (`rustup toolchain install nightly`; sanitizers are nightly-only)
# and cargo-fuzz (`cargo install cargo-fuzz`). The corpora and crash regressions are replayed
# on stable by `cargo test --test fuzz_corpus` (part of scripts/test), so CI needs neither.
#
# Writes bench/results/fuzz-latest.md: per target the executions, coverage (edges and
# features), corpus size, and the crashes, leaks, timeouts and out-of-memory inputs found
# (saved under fuzz/artifacts/<target>/; a real one goes to fuzz/regressions/<target>/ with
# its fix).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ALL=(h1_request h1_response config tls postgres trace_headers)
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${ALL[@]}")
SECONDS_PER_TARGET=${SECONDS_PER_TARGET:-1800}
JOBS=${JOBS:-2}
MERGE=${MERGE:-0}
# SUMMARY_ONLY=1: no runs, only the table from the last runs' logs (fuzz/artifacts/*.log).
SUMMARY_ONLY=${SUMMARY_ONLY:-0}
OUT=bench/results/fuzz-latest.md

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q '^nightly' || {
    echo "bench/fuzz.sh needs a nightly toolchain: rustup toolchain install nightly" >&2
    exit 1
}

BIN=fuzz/target/x86_64-unknown-linux-gnu/release
COMMIT=$(git rev-parse --short HEAD)$(git diff --quiet || echo "+changes")
[[ $SUMMARY_ONLY == 1 ]] || (cd fuzz && cargo +nightly fuzz build -O 2>&1 | tail -1)

run_one() {
    local t=$1
    mkdir -p "fuzz/corpus-run/$t" "fuzz/artifacts/$t"
    # nice: a long run shares the machine with builds and benchmarks; it is measured in
    # executions, not seconds.
    nice -n 19 "$BIN/$t" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" \
        "fuzz/corpus-run/$t" "fuzz/corpus/$t" >"fuzz/artifacts/$t.log" 2>&1 || true
}

running=0
[[ $SUMMARY_ONLY == 1 ]] && TO_RUN=() || TO_RUN=("${TARGETS[@]}")
for t in "${TO_RUN[@]}"; do
    run_one "$t" &
    running=$((running + 1))
    if [[ $running -ge $JOBS ]]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

{
    echo "# Fuzzing: latest run"
    echo
    if [[ $SUMMARY_ONLY == 1 ]]; then
        echo "The logs in fuzz/artifacts/ as of $(date -u +%Y-%m-%d) (table written at commit $COMMIT), $(nproc) cores, libFuzzer with AddressSanitizer (\`cargo +nightly fuzz build -O\`); each run's own length is in its row."
    else
        echo "\`SECONDS_PER_TARGET=$SECONDS_PER_TARGET JOBS=$JOBS bash bench/fuzz.sh ${*:-}\` on $(date -u +%Y-%m-%d), commit $COMMIT, $(nproc) cores, libFuzzer with AddressSanitizer (\`cargo +nightly fuzz build -O\`)."
    fi
    echo
    echo "| target | time | executions | exec/s | edges | features | corpus | crashes | timeouts | out of memory |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for t in "${TARGETS[@]}"; do
        log="fuzz/artifacts/$t.log"
        done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
        execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
        speed=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
        cov=$(sed -nE 's/.*cov: ([0-9]+).*/\1/p' <<<"$done_line")
        ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$done_line")
        corp=$(sed -nE 's/.*corp: ([0-9]+\/[0-9a-zA-Z]+).*/\1/p' <<<"$done_line")
        crashes=$(find "fuzz/artifacts/$t" -name 'crash-*' -o -name 'leak-*' | wc -l)
        timeouts=$(find "fuzz/artifacts/$t" -name 'timeout-*' | wc -l)
        ooms=$(find "fuzz/artifacts/$t" -name 'oom-*' | wc -l)
        secs=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$log" | grep -oE '[0-9]+ second' | grep -oE '[0-9]+' || echo "?")
        echo "| $t | ${secs} s | $execs | $speed | ${cov:-?} | ${ft:-?} | ${corp:-?} | $crashes | $timeouts | $ooms |"
    done
} >"$OUT"
cat "$OUT"

if [[ $MERGE == 1 ]]; then
    # Fold the run's corpus into the checked-in one, keeping only inputs that add coverage.
    for t in "${TARGETS[@]}"; do
        rm -rf "fuzz/corpus-min/$t" && mkdir -p "fuzz/corpus-min/$t"
        "$BIN/$t" -merge=1 "fuzz/corpus-min/$t" "fuzz/corpus/$t" "fuzz/corpus-run/$t" >/dev/null 2>&1
        rm -rf "fuzz/corpus/$t" && mv "fuzz/corpus-min/$t" "fuzz/corpus/$t"
        echo "$t: $(ls "fuzz/corpus/$t" | wc -l) inputs in fuzz/corpus/$t"
    done
    rmdir fuzz/corpus-min 2>/dev/null || true
fi
