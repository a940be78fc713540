#!/usr/bin/env bash
# bench/rounds.sh - the two figures single runs cannot settle on this machine, in interleaved
# rounds: requests per second with 1,000 busy client connections, and the latency legate and
# nginx add at 2,000 requests per second.
#
# legate (one worker) and nginx (one worker process) run at once on core $PROXY_CPU as proxies
# for one nginx upstream on core $LOAD_CPU; the load (wrk, loadgen) runs on $LOAD_CPU. Each
# round measures the systems back to back, the order flipping between rounds:
#   busy     wrk -t1 -c1000 -d$BUSY_DURATION: req/s, each proxy's peak RSS (VmHWM) at the end, and
#            the TCP connections opened meanwhile (nstat: wrk's 1,000 + the proxy's upstream ones)
#   latency  loadgen rate --rps 2000 --connections 50 --duration $RATE_DURATION through each
#            proxy and straight to the upstream ("direct"): p50, p99; "added" is the proxy's
#            p50 minus the direct path's in the same round
# Ports are picked free (a leftover process on a fixed port once took half a run's traffic).
#
# Usage:   bash bench/rounds.sh
#          ROUNDS=8 MEASURE=latency bash bench/rounds.sh
# Env:     ROUNDS (4) MEASURE ("busy latency") BUSY_DURATION (8s) RATE_DURATION (4s)
#          NGINX_KEEPALIVE (64: nginx's idle upstream connections; legate keeps up to 1,024)
#          PROXY_CPU (0) LOAD_CPU (1) LEGATE_BIN LOADGEN_BIN KEEP_TMP
# Needs:   nginx, wrk, taskset; loadgen (cargo build --release -p loadgen) for latency.
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(cd -- "$here/.." && pwd)

ROUNDS=${ROUNDS:-4}
MEASURE=${MEASURE:-busy latency}
BUSY_DURATION=${BUSY_DURATION:-8s}
RATE_DURATION=${RATE_DURATION:-4s}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
LEGATE_BIN=${LEGATE_BIN:-$root/target/release/legate}
LOADGEN_BIN=${LOADGEN_BIN:-$root/target/release/loadgen}
KEEP_TMP=${KEEP_TMP:-0}

die() {
    printf '[rounds] ERROR: %s\n' "$*" >&2
    exit 1
}
for tool in nginx wrk taskset awk python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done
[[ -x $LEGATE_BIN ]] || die "no legate binary at $LEGATE_BIN: cargo build --release -p legate"
if [[ " $MEASURE " == *" latency "* ]]; then
    [[ -x $LOADGEN_BIN ]] || die "no loadgen at $LOADGEN_BIN: cargo build --release -p loadgen"
fi
nginx_modules=$(nginx -V 2>&1)
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)"

start_proxy_pair rounds

port_of() { case $1 in legate) echo "$legate_port" ;; nginx) echo "$nginx_port" ;; direct) echo "$up_port" ;; esac; }
pid_of() { case $1 in legate) echo "$legate_pid" ;; nginx) echo "$nginx_worker" ;; esac; }

declare -A busy=() added=()
for ((round = 1; round <= ROUNDS; round++)); do
    order=(legate nginx)
    ((round % 2)) || order=(nginx legate)
    if [[ " $MEASURE " == *" busy "* ]]; then
        for sys in "${order[@]}"; do
            nstat -n 2>/dev/null || true
            rps=$(taskset -c "$LOAD_CPU" wrk -t1 -c1000 -d"$BUSY_DURATION" "http://127.0.0.1:$(port_of "$sys")/" |
                awk '/Requests\/sec/ { print $2 }')
            # TCP connections opened on this host during the run: wrk's 1,000 plus the proxy's
            # new upstream connections (a pool smaller than the concurrency churns them).
            opened=$(nstat 2>/dev/null | awk '/TcpActiveOpens/ { print $2 }')
            hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$(pid_of "$sys")/status")
            echo "round $round busy $sys: $rps req/s, peak RSS $hwm kB, TCP connections opened ${opened:-?}"
            busy[$sys]+="$rps "
        done
    fi
    if [[ " $MEASURE " == *" latency "* ]]; then
        declare -A p50=()
        for sys in direct "${order[@]}"; do
            out=$(taskset -c "$LOAD_CPU" "$LOADGEN_BIN" rate --url "http://127.0.0.1:$(port_of "$sys")/" \
                --rps 2000 --connections 50 --duration "$RATE_DURATION")
            read -r p50[$sys] p99 < <(python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["p50_us"], d["p99_us"])' <<<"$out")
            echo "round $round latency $sys: p50 ${p50[$sys]} µs, p99 $p99 µs"
        done
        for sys in legate nginx; do added[$sys]+="$((p50[$sys] - p50[direct])) "; done
    fi
done

echo
# compare WHAT UNIT OP "LEGATE VALUES" "NGINX VALUES": both medians, then legate against nginx
# round by round (OP: ratio or difference) and its median.
compare() {
    python3 - "$@" <<'PY'
import statistics, sys
what, unit, op = sys.argv[1:4]
legate, nginx = ([float(v) for v in a.split()] for a in sys.argv[4:6])
for name, vals in (("legate", legate), ("nginx", nginx)):
    print(f"- {what} {name}: median {statistics.median(vals):g} {unit} ({' '.join(f'{v:g}' for v in vals)})")
per = [a / b if op == "ratio" else a - b for a, b in zip(legate, nginx)]
sign, fmt = ("/", "{:.3f}") if op == "ratio" else ("−", "{:.0f}")
print(f"- {what} legate {sign} nginx per round: median {fmt.format(statistics.median(per))} "
      f"({' '.join(fmt.format(v) for v in per)})")
PY
}
if [[ " $MEASURE " == *" busy "* ]]; then
    compare "busy" "req/s" ratio "${busy[legate]}" "${busy[nginx]}"
fi
if [[ " $MEASURE " == *" latency "* ]]; then
    compare "added p50" "µs" difference "${added[legate]}" "${added[nginx]}"
fi
