#!/usr/bin/env bash
# bench/cpu_split.sh - where a proxied keep-alive request's CPU goes: user and system time per
# request of the serving process, and its system calls per request, legate against nginx.
#
# Both proxies run at once on core $PROXY_CPU (legate with one worker, nginx with one worker
# process), in front of one nginx upstream on core $LOAD_CPU; wrk (also on $LOAD_CPU) drives
# them in turn, ROUNDS times. For each run: utime and stime of the serving process only (legate's
# process; nginx's worker, not its master) from /proc/PID/stat over the measured run, divided by
# the requests wrk completed. With `perf` (and tracepoints readable: root), a second run per
# system counts system calls per request with `perf stat -e 'syscalls:sys_enter_*'`, which,
# unlike strace, does not slow the process down.
#
# Usage:   bash bench/cpu_split.sh
# Env:     ROUNDS DURATION WRK_CONNECTIONS PROXY_CPU LOAD_CPU LEGATE_BIN KEEP_TMP
# Needs:   nginx, wrk, taskset; perf for the system-call table (skipped without it).
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(cd -- "$here/.." && pwd)

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4s}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-64}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
LEGATE_BIN=${LEGATE_BIN:-$root/target/release/legate}
KEEP_TMP=${KEEP_TMP:-0}

log() { printf '[cpu_split] %s\n' "$*" >&2; }
die() {
    printf '[cpu_split] ERROR: %s\n' "$*" >&2
    exit 1
}

for tool in nginx wrk taskset awk; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (apt-get install nginx-light wrk util-linux)"
done
[[ -x $LEGATE_BIN ]] || die "no legate binary at $LEGATE_BIN: cargo build --release -p legate"
nginx_modules=$(nginx -V 2>&1)

start_proxy_pair cpu-split

wrk_requests() { awk '/requests in/ { print $1 }'; }

echo "| round | system | requests | user µs/req | system µs/req | total µs/req |"
echo "|---|---|---:|---:|---:|---:|"
declare -A totals=()
for ((round = 1; round <= ROUNDS; round++)); do
    for sys in legate nginx; do
        if [[ $sys == legate ]]; then pid=$legate_pid port=$legate_port; else pid=$nginx_worker port=$nginx_port; fi
        taskset -c "$LOAD_CPU" wrk -t1 -c"$WRK_CONNECTIONS" -d1s "http://127.0.0.1:$port/" >/dev/null
        read -r -a before <<<"$(awk '{ sub(/.*\) /, ""); print $12, $13 }' "/proc/$pid/stat")"
        n=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$WRK_CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$port/" | wrk_requests)
        read -r -a after <<<"$(awk '{ sub(/.*\) /, ""); print $12, $13 }' "/proc/$pid/stat")"
        tick=$(getconf CLK_TCK)
        line=$(awk -v n="$n" -v u=$((after[0] - before[0])) -v s=$((after[1] - before[1])) -v t="$tick" \
            'BEGIN { f = 1e6 / t / n; printf "%d | %.2f | %.2f | %.2f", n, u * f, s * f, (u + s) * f }')
        echo "| $round | $sys | $line |"
        totals[$sys]+="${line##* } "
    done
done
echo
for sys in legate nginx; do
    echo "- $sys total µs/req by round: ${totals[$sys]}"
done

if command -v perf >/dev/null 2>&1 && perf stat -e 'syscalls:sys_enter_read' -- true >/dev/null 2>&1; then
    echo
    echo "System calls per request (perf stat -e 'syscalls:sys_enter_*' over one $DURATION run each):"
    echo
    for sys in legate nginx; do
        if [[ $sys == legate ]]; then pid=$legate_pid port=$legate_port; else pid=$nginx_worker port=$nginx_port; fi
        secs=${DURATION%s}
        perf stat -e 'syscalls:sys_enter_*' -p "$pid" -o "$work/perf-$sys.txt" -- sleep "$secs" &
        perf_pid=$!
        n=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$WRK_CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$port/" | wrk_requests)
        wait "$perf_pid"
        awk -v n="$n" -v sys="$sys" '$1 ~ /^[0-9,]+$/ { gsub(",", "", $1); if ($1 / n >= 0.01) { sub("syscalls:sys_enter_", "", $2); out = out sprintf(" %s %.2f,", $2, $1 / n); total += $1 / n } }
            END { sub(",$", "", out); printf "- %s: %.2f in all:%s\n", sys, total, out }' "$work/perf-$sys.txt"
    done
else
    log "perf with syscall tracepoints not available: system-call table skipped"
fi
