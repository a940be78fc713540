#!/usr/bin/env bash
# bench/compare.sh - side-by-side benchmark of legate vs nginx vs HAProxy.
#
# All three proxy the same static upstream (a separate nginx returning
# "ok\n") on 127.0.0.1. The proxy under test runs on core $PROXY_CPU, the
# upstream and the load generators on core $LOAD_CPU. See bench/README.md.
#
# Usage:   bash bench/compare.sh            # 10 s runs
#          QUICK=1 bash bench/compare.sh    # 3 s runs (smoke test)
# Env:     DURATION WARMUP HOLD_DURATION RATE RATE_CONNECTIONS WRK_CONNECTIONS
#          HOLD_CONNECTIONS PROXY_CPU LOAD_CPU SYSTEMS READY_TIMEOUT
#          LEGATE_BIN LOADGEN_BIN RESULTS_FILE KEEP_TMP FOREIGN_WARN_PCT
#
# The markdown report goes to stdout and $RESULTS_FILE; progress goes to stderr.
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(cd -- "$here/.." && pwd)

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    DURATION=${DURATION:-3s}
    WARMUP=${WARMUP:-1s}
    HOLD_DURATION=${HOLD_DURATION:-2s}
else
    DURATION=${DURATION:-10s}
    WARMUP=${WARMUP:-2s}
    HOLD_DURATION=${HOLD_DURATION:-5s}
fi
RATE=${RATE:-2000}
RATE_CONNECTIONS=${RATE_CONNECTIONS:-50}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-64}
HOLD_CONNECTIONS=${HOLD_CONNECTIONS:-1000}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SYSTEMS=${SYSTEMS:-direct legate nginx haproxy}
READY_TIMEOUT=${READY_TIMEOUT:-15}
RESULTS_FILE=${RESULTS_FILE:-$here/results/latest.md}
KEEP_TMP=${KEEP_TMP:-0}

log() { printf '[compare] %s\n' "$*" >&2; }
warn() { printf '[compare] WARNING: %s\n' "$*" >&2; }
die() {
    printf '[compare] ERROR: %s\n' "$*" >&2
    exit 1
}

for tool in nginx wrk curl taskset getconf awk; do
    command -v "$tool" >/dev/null 2>&1 || die "required tool not found: $tool"
done
[[ -d /proc/self ]] || die "/proc is required (Linux only)"
ncpu=$(getconf _NPROCESSORS_ONLN)
if ((ncpu < 2)); then
    warn "only $ncpu CPU online; proxy and load generator will share a core"
    LOAD_CPU=$PROXY_CPU
fi
clk_tck=$(getconf CLK_TCK)

# ---------------------------------------------------------------- build ----
target_dir=${CARGO_TARGET_DIR:-$root/target}
legate_unavailable=""
build_args=()
[[ -z ${LOADGEN_BIN:-} ]] && build_args+=(-p loadgen)
[[ -z ${LEGATE_BIN:-} ]] && build_args+=(-p legate)
if ((${#build_args[@]})); then
    log "cargo build --release ${build_args[*]}"
    if ! (cd -- "$root" && cargo build --release "${build_args[@]}" >&2); then
        warn "cargo build failed"
        if [[ -z ${LEGATE_BIN:-} ]]; then
            legate_unavailable="cargo build failed"
        fi
        if [[ -z ${LOADGEN_BIN:-} ]]; then
            (cd -- "$root" && cargo build --release -p loadgen >&2) ||
                die "cannot build loadgen"
        fi
    fi
fi
LOADGEN_BIN=${LOADGEN_BIN:-$target_dir/release/loadgen}
LEGATE_BIN=${LEGATE_BIN:-$target_dir/release/legate}
[[ -x $LOADGEN_BIN ]] || die "loadgen binary not found at $LOADGEN_BIN"
if [[ -z $legate_unavailable && ! -x $LEGATE_BIN ]]; then
    legate_unavailable="no binary at $LEGATE_BIN"
fi

# Raise the fd limit for everything started from here (1000 held connections
# need ~2000 fds in a proxy). Fall back to the hard limit if 65536 is denied.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [[ $(ulimit -n) != unlimited ]] && (($(ulimit -n) < 2 * HOLD_CONNECTIONS + 256)); then
    warn "open-file limit $(ulimit -n) may be too low for $HOLD_CONNECTIONS held connections"
fi

# ------------------------------------------------------ temp dir & cleanup --
work=$(mktemp -d "${TMPDIR:-/tmp}/legate-bench.XXXXXX")
# nginx workers may run as an unprivileged user and must reach their temp dirs.
chmod 711 "$work"
pids=()




trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers --
declare -A chosen_ports=()



# http_code URL: HTTP status of a GET (000 if it failed). Never uses a proxy.
http_code() {
    curl --noproxy '*' -s -o /dev/null -m 1 -w '%{http_code}' "$1" 2>/dev/null || true
}

# wait_ready URL PID: poll until URL answers 200, PID dies or the deadline.
wait_ready() {
    local url=$1 pid=$2 deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS <= deadline)); do
        alive "$pid" || return 1
        [[ $(http_code "$url") == 200 ]] && return 0
        sleep 0.05
    done
    return 1
}


# rss_kib PID...: summed VmRSS of the given processes.
rss_kib() {
    local total=0 p kib
    for p in "$@"; do
        kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null) || kib=0
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}


now() { date +%s.%N; }

kib_to_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# json_num JSON KEY: numeric field from loadgen's one-line JSON.
json_num() { sed -n "s/.*\"$2\":\\([0-9.]*\\).*/\\1/p" <<<"$1"; }

# tail_log FILE: show the end of a log on stderr (for start-up failures).

# launch CPU OUTFILE ERRFILE CMD...: start CMD pinned to CPU in the
# background; the pid is stored in $launched and tracked for cleanup. taskset
# execs CMD, so the pid is that of the program itself.
launch() {
    local cpu=$1 out=$2 err=$3
    shift 3
    if [[ $out == "$err" ]]; then
        taskset -c "$cpu" "$@" >"$out" 2>&1 &
    else
        taskset -c "$cpu" "$@" >"$out" 2>"$err" &
    fi
    launched=$!
    pids+=("$launched")
}

# ------------------------------------------------------------- upstream ----
nginx_version=$(nginx -v 2>&1 | sed -n 's|.*nginx/\([^ ]*\).*|\1|p')
nginx_modules=$(nginx -V 2>&1)


start_nginx_instance() { # NAME CPU CONFIG_BODY -> $launched
    local name=$1 cpu=$2 body=$3 dir=$work/$1
    mkdir -p "$dir"
    chmod 711 "$dir"
    {
        echo "worker_processes 1;"
        nginx_common "$dir"
        printf '%s\n}\n' "$body"
    } >"$dir/nginx.conf"
    launch "$cpu" "$dir/stderr.log" "$dir/stderr.log" nginx -e "$dir/error.log" -p "$dir" \
        -c "$dir/nginx.conf" -g 'daemon off;'
}

pick_port upstream_port
start_nginx_instance upstream "$LOAD_CPU" "
    server {
        listen 127.0.0.1:$upstream_port backlog=4096;
        location / {
            default_type text/plain;
            return 200 \"ok\\n\";
        }
    }"
upstream_pid=$launched
upstream_url="http://127.0.0.1:$upstream_port/"
if ! wait_ready "$upstream_url" "$upstream_pid"; then
    tail_log "$work/upstream/error.log"
    tail_log "$work/upstream/stderr.log"
    die "upstream nginx did not become ready on $upstream_url"
fi
log "upstream nginx $nginx_version on $upstream_url (pid $upstream_pid, $(grep Cpus_allowed_list "/proc/$upstream_pid/status" | tr -d '\t'))"

# --------------------------------------------------------- proxy starters --
# Each start_* takes a listen port, sets $launched and returns non-zero
# (after printing why) if the proxy cannot be started.

start_legate() {
    local port=$1 dir=$work/legate
    if [[ -n $legate_unavailable ]]; then
        warn "legate: $legate_unavailable"
        add_note legate "not run: $legate_unavailable"
        return 1
    fi
    mkdir -p "$dir"
    launch "$PROXY_CPU" "$dir/stdout.log" "$dir/stderr.log" "$LEGATE_BIN" http \
        --listen "127.0.0.1:$port" --upstream "http://127.0.0.1:$upstream_port" \
        --admin off --access-log off --workers 1
}

start_nginx() {
    start_nginx_instance nginx "$PROXY_CPU" "
    upstream backend {
        server 127.0.0.1:$upstream_port;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$1 backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
}

start_haproxy() {
    local port=$1 dir=$work/haproxy
    if ! command -v haproxy >/dev/null 2>&1; then
        warn "haproxy: not installed"
        add_note haproxy "not run: haproxy not installed"
        return 1
    fi
    mkdir -p "$dir"
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
    http-reuse always

frontend fe
    bind 127.0.0.1:$port
    default_backend be

backend be
    server upstream 127.0.0.1:$upstream_port
EOF
    launch "$PROXY_CPU" "$dir/stderr.log" "$dir/stderr.log" haproxy -db -f "$dir/haproxy.cfg"
}

proxy_logs() { # NAME: log files worth showing when NAME fails
    case $1 in
    legate) echo "$work/legate/stdout.log $work/legate/stderr.log" ;;
    nginx) echo "$work/nginx/error.log $work/nginx/stderr.log" ;;
    haproxy) echo "$work/haproxy/stderr.log" ;;
    esac
}

# ------------------------------------------------------------ measurement --
declare -A label max_rps cpu_us p50 p99 idle_mib hold_mib idle_kib per_conn notes util

add_note() { notes[$1]+="${notes[$1]:+; }$2"; }

# Other processes using more than this share of one core while a system is
# measured get a note in the report (the machine has only two cores).
FOREIGN_WARN_PCT=${FOREIGN_WARN_PCT:-5}

# measure NAME URL [PID]: run all measurements against URL. With PID, the
# CPU and RSS of PID's process tree are accounted as well.
measure() {
    local name=$1 url=$2 pid=${3:-} tree out reqs secs rps non2xx sockerr t0 t1 ticks
    local json errs sent scheduled foreign0 wall0 pct
    foreign0=$(foreign_ticks)
    wall0=$(now)

    if [[ -n $pid ]]; then
        tree=$(tree_pids "$pid")
        # shellcheck disable=SC2086 # word splitting of the pid list is intended
        idle_kib[$name]=$(rss_kib $tree)
        idle_mib[$name]=$(kib_to_mib "${idle_kib[$name]}")
        log "$name: idle RSS ${idle_mib[$name]} MiB (pids $tree)"
    fi

    # Warm-up (not recorded): fills connection pools, faults in memory.
    taskset -c "$LOAD_CPU" wrk -t1 -c"$WRK_CONNECTIONS" -d"$WARMUP" "$url" >/dev/null 2>&1 ||
        warn "$name: warm-up wrk run failed"

    # Max throughput, plus proxy CPU over exactly that run.
    out=$work/wrk.$name.txt
    log "$name: wrk -t1 -c$WRK_CONNECTIONS -d$DURATION"
    t0=0
    t1=0
    if [[ -n $pid ]]; then
        tree=$(tree_pids "$pid")
        # shellcheck disable=SC2086 # word splitting of the pid list is intended
        t0=$(cpu_ticks $tree)
    fi
    if taskset -c "$LOAD_CPU" wrk -t1 -c"$WRK_CONNECTIONS" -d"$DURATION" --latency "$url" >"$out" 2>&1; then
        if [[ -n $pid ]]; then
            # shellcheck disable=SC2086
            t1=$(cpu_ticks $tree)
        fi
        reqs=$(awk '/ requests in / { print $1 }' "$out")
        secs=$(awk '/ requests in / { sub(/s,?$/, "", $4); print $4 }' "$out")
        rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
        non2xx=$(awk -F': *' '/Non-2xx or 3xx responses/ { print $2 }' "$out")
        sockerr=$(grep 'Socket errors' "$out" || true)
        if [[ -n $rps && -n $reqs ]] && ((reqs > 0)); then
            max_rps[$name]=$(awk -v r="$rps" 'BEGIN { printf "%.0f", r }')
            if [[ -n $pid ]]; then
                ticks=$((t1 - t0))
                cpu_us[$name]=$(awk -v t="$ticks" -v hz="$clk_tck" -v n="$reqs" \
                    'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
                util[$name]=$(awk -v t="$ticks" -v hz="$clk_tck" -v s="$secs" \
                    'BEGIN { if (s > 0) printf "%.0f", 100 * t / hz / s; else print "?" }')
                log "$name: ${max_rps[$name]} req/s, ${cpu_us[$name]} CPU µs/req, proxy core ${util[$name]}% busy"
            else
                log "$name: ${max_rps[$name]} req/s"
            fi
        else
            warn "$name: could not parse wrk output"
            tail_log "$out"
        fi
        if [[ -n $non2xx ]]; then
            warn "$name: wrk saw $non2xx non-2xx/3xx responses"
            add_note "$name" "wrk: $non2xx non-2xx responses"
        fi
        if [[ -n $sockerr ]]; then
            warn "$name: wrk $sockerr"
            add_note "$name" "wrk: ${sockerr#"${sockerr%%[![:space:]]*}"}"
        fi
    else
        warn "$name: wrk failed"
        tail_log "$out"
    fi

    sleep 1

    # Latency at a fixed, moderate rate.
    log "$name: loadgen rate --rps $RATE --duration $DURATION --connections $RATE_CONNECTIONS"
    if json=$(taskset -c "$LOAD_CPU" "$LOADGEN_BIN" rate --url "$url" --rps "$RATE" \
        --duration "$DURATION" --connections "$RATE_CONNECTIONS" 2>"$work/rate.$name.err"); then
        echo "$json" >"$work/rate.$name.json"
        p50[$name]=$(json_num "$json" p50_us)
        p99[$name]=$(json_num "$json" p99_us)
        log "$name: $json"
        errs=$(json_num "$json" errors)
        sent=$(json_num "$json" sent)
        scheduled=$(json_num "$json" scheduled)
        if [[ ${errs:-0} != 0 ]]; then
            add_note "$name" "loadgen rate: $errs errors"
            tail_log "$work/rate.$name.err"
        fi
        if [[ ${sent:-0} != "${scheduled:-0}" ]]; then
            add_note "$name" "loadgen rate: only $sent of $scheduled requests sent"
        fi
    else
        warn "$name: loadgen rate failed"
        tail_log "$work/rate.$name.err"
    fi

    if [[ -n $pid ]]; then
        sleep 1
        measure_hold "$name" "$url" "$pid"
    fi

    pct=$(awk -v t=$(($(foreign_ticks) - foreign0)) -v hz="$clk_tck" -v a="$wall0" -v b="$(now)" \
        'BEGIN { printf "%.0f", (b > a) ? 100 * t / hz / (b - a) : 0 }')
    log "$name: other processes used ${pct}% of a core meanwhile"
    if ((pct > FOREIGN_WARN_PCT)); then
        warn "$name: other processes were busy (${pct}% of a core); numbers are noisy"
        add_note "$name" "other processes used ${pct}% of a core during this run; numbers are noisy"
    fi
    return 0
}

# measure_hold NAME URL PID: RSS of PID's tree while loadgen holds idle
# keep-alive connections to URL.
measure_hold() {
    local name=$1 url=$2 pid=$3 tree hpid held deadline summary closed base_kib
    local hout=$work/hold.$name.out herr=$work/hold.$name.err
    # The baseline is taken now, after the load phases: what they grew (pools, buffers, code
    # paths paged in, the allocator's high-water) is not the idle connections' cost.
    tree=$(tree_pids "$pid")
    # shellcheck disable=SC2086
    base_kib=$(rss_kib $tree)
    log "$name: loadgen hold --connections $HOLD_CONNECTIONS --duration $HOLD_DURATION"
    launch "$LOAD_CPU" "$hout" "$herr" "$LOADGEN_BIN" hold --url "$url" \
        --connections "$HOLD_CONNECTIONS" --duration "$HOLD_DURATION"
    hpid=$launched
    deadline=$((SECONDS + 60))
    while ! grep -q '^holding ' "$hout" 2>/dev/null; do
        if ! alive "$hpid" || ((SECONDS > deadline)); then
            break
        fi
        sleep 0.05
    done
    held=$(awk '/^holding / { print $2 }' "$hout")
    if [[ -n $held ]]; then
        sleep 0.5
        tree=$(tree_pids "$pid")
        # shellcheck disable=SC2086
        local hold_kib
        # shellcheck disable=SC2086
        hold_kib=$(rss_kib $tree)
        hold_mib[$name]=$(kib_to_mib "$hold_kib")
        # What one idle keep-alive connection (one request served) costs: the RSS it added.
        if ((held > 0)); then
            per_conn[$name]=$(((hold_kib - base_kib) * 1024 / held))
        fi
        log "$name: holding $held connections, RSS ${hold_mib[$name]} MiB (${per_conn[$name]:-?} B each)"
        if ((held < HOLD_CONNECTIONS)); then
            add_note "$name" "hold: only $held of $HOLD_CONNECTIONS connections established"
        fi
    else
        warn "$name: loadgen hold never reported its connections"
    fi
    wait "$hpid" 2>/dev/null || warn "$name: loadgen hold exited with an error"
    summary=$(grep '^{' "$hout" || true)
    closed=$(json_num "$summary" closed_during_hold)
    if [[ ${closed:-0} != 0 ]]; then
        add_note "$name" "hold: server closed $closed idle connections within $HOLD_DURATION"
    fi
    tail_log "$herr"
    return 0
}

# bench_proxy NAME LABEL: start proxy NAME on a fresh port, measure, stop it.
bench_proxy() {
    local name=$1 port pid f
    label[$name]=$2
    pick_port port
    if ! "start_$name" "$port"; then
        [[ -n ${notes[$name]:-} ]] || add_note "$name" "not run: failed to start"
        return 0
    fi
    pid=$launched
    if ! wait_ready "http://127.0.0.1:$port/" "$pid"; then
        if alive "$pid"; then
            add_note "$name" "not run: no 200 from 127.0.0.1:$port within ${READY_TIMEOUT}s"
        else
            add_note "$name" "not run: exited during start-up"
        fi
        warn "$name: ${notes[$name]}"
        for f in $(proxy_logs "$name"); do tail_log "$f"; done
        stop_tree "$pid"
        return 0
    fi
    log "$name: ready on 127.0.0.1:$port (pid $pid, $(grep Cpus_allowed_list "/proc/$pid/status" | tr -d '\t'))"
    measure "$name" "http://127.0.0.1:$port/" "$pid"
    stop_tree "$pid"
    sleep 1
}

haproxy_version=$(haproxy -v 2>/dev/null | sed -n 's/^HAProxy version \([^ -]*\).*/\1/p' || true)
for sys in $SYSTEMS; do
    case $sys in
    direct)
        label[direct]="direct (no proxy)"
        measure direct "$upstream_url"
        sleep 1
        ;;
    legate) bench_proxy legate "legate" ;;
    nginx) bench_proxy nginx "nginx ${nginx_version}" ;;
    haproxy) bench_proxy haproxy "HAProxy ${haproxy_version}" ;;
    *) die "unknown system in SYSTEMS: $sys" ;;
    esac
done

# ----------------------------------------------------------------- report --
cell() { # VALUE: the value or n/a
    if [[ -n ${1:-} ]]; then echo "$1"; else echo "n/a"; fi
}

report=$work/report.md
{
    echo "| system | max req/s | CPU µs/req | p50 µs @$RATE | p99 µs @$RATE | idle RSS MiB | RSS @$HOLD_CONNECTIONS conns MiB | B per idle conn |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for sys in $SYSTEMS; do
        if [[ $sys == direct ]]; then
            printf '| %s | %s | – | %s | %s | – | – | – |\n' "${label[$sys]}" \
                "$(cell "${max_rps[$sys]:-}")" "$(cell "${p50[$sys]:-}")" "$(cell "${p99[$sys]:-}")"
        else
            printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "${label[$sys]}" \
                "$(cell "${max_rps[$sys]:-}")" "$(cell "${cpu_us[$sys]:-}")" \
                "$(cell "${p50[$sys]:-}")" "$(cell "${p99[$sys]:-}")" \
                "$(cell "${idle_mib[$sys]:-}")" "$(cell "${hold_mib[$sys]:-}")" \
                "$(cell "${per_conn[$sys]:-}")"
        fi
    done
    echo
    echo "Added latency vs direct @$RATE req/s (p50 / p99):"
    for sys in $SYSTEMS; do
        [[ $sys == direct ]] && continue
        if [[ -n ${p50[direct]:-} && -n ${p50[$sys]:-} && -n ${p99[direct]:-} && -n ${p99[$sys]:-} ]]; then
            printf -- '- %s: %+d µs / %+d µs\n' "${label[$sys]}" \
                $((p50[$sys] - p50[direct])) $((p99[$sys] - p99[direct]))
        else
            printf -- '- %s: n/a\n' "${label[$sys]}"
        fi
    done
    echo
    echo "Proxy core utilisation during the wrk run (below ~95% means the load side, not the proxy, was the limit):"
    for sys in $SYSTEMS; do
        [[ $sys == direct ]] && continue
        printf -- '- %s: %s\n' "${label[$sys]}" "$(cell "${util[$sys]:+${util[$sys]}%}")"
    done
    have_notes=0
    for sys in $SYSTEMS; do
        [[ -n ${notes[$sys]:-} ]] && have_notes=1
    done
    if ((have_notes)); then
        echo
        echo "Notes:"
        for sys in $SYSTEMS; do
            [[ -n ${notes[$sys]:-} ]] && printf -- '- %s: %s\n' "${label[$sys]}" "${notes[$sys]}"
        done
    fi
    echo
    printf 'Run %s on %s (%s CPUs, Linux %s). ' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo unknown)" \
        "$ncpu" "$(uname -r)"
    printf 'Proxy on cpu %s; upstream (nginx %s, `return 200 "ok\\n"`) and load generators on cpu %s. ' \
        "$PROXY_CPU" "$nginx_version" "$LOAD_CPU"
    printf 'wrk -t1 -c%s -d%s (after %s warm-up); loadgen rate %s req/s for %s over %s connections; loadgen hold %s connections.\n' \
        "$WRK_CONNECTIONS" "$DURATION" "$WARMUP" "$RATE" "$DURATION" "$RATE_CONNECTIONS" "$HOLD_CONNECTIONS"
} >"$report"

mkdir -p -- "$(dirname -- "$RESULTS_FILE")"
cp -- "$report" "$RESULTS_FILE"
cat -- "$report"
log "report written to $RESULTS_FILE"
