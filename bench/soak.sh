#!/usr/bin/env bash
# The long soak: tests/soak.rs for 30 minutes (or 10 million requests, whichever first) on a
# release build, its samples recorded in bench/results/soak-latest.md.
#
#   bash bench/soak.sh                      # 30 minutes, a sample every 10 s
#   SOAK_SECONDS=600 bash bench/soak.sh     # shorter
#
# The same test runs for 60 s in scripts/test. What it does: one legate under mixed traffic
# (HTTP/1.1 keep-alive and new connections, h2c; a real nginx, a flaky upstream behind
# retries, mTLS out to a peer legate and back in over mTLS), 20 config reloads and 5
# certificate rotations; it fails on any failed request, on RSS growth above 1 MiB after the
# first quarter of the run, or on descriptors that do not come back once the clients leave.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export SOAK_SECONDS=${SOAK_SECONDS:-1800}
export SOAK_MAX_REQUESTS=${SOAK_MAX_REQUESTS:-10000000}
export SOAK_SAMPLE_SECONDS=${SOAK_SAMPLE_SECONDS:-10}
OUT=bench/results/soak-latest.md
LOG=$(mktemp)

status=0
cargo test --release --locked -p legate --test soak -- --nocapture >"$LOG" 2>&1 || status=$?
{
    echo "# Soak: latest run"
    echo
    echo "\`SOAK_SECONDS=$SOAK_SECONDS bash bench/soak.sh\` on $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD), $(nproc) cores, release build; exit status $status."
    echo
    grep -E '^soak:' "$LOG" || echo "(no summary line: see the test output below)"
    echo
    echo "Samples of the soaked legate (RSS, open descriptors, requests answered so far):"
    echo
    grep -E '^\|' "$LOG" || true
    if [[ $status -ne 0 ]]; then
        echo
        echo '```'
        grep -vE '^\|' "$LOG" | tail -40
        echo '```'
    fi
} >"$OUT"
rm -f "$LOG"
cat "$OUT"
exit "$status"
