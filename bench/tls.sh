#!/usr/bin/env bash
# bench/tls.sh - cost of TLS origination: legate vs nginx (proxy_ssl) vs HAProxy.
#
# Each proxy accepts plain HTTP/1.1 keep-alive on 127.0.0.1 and forwards to one
# upstream nginx ("ok\n") in four cases:
#   plain          upstream over plain HTTP (baseline)
#   tls            upstream over TLS: CA verified, SNI upstream.test, keep-alive
#                  to the upstream (so handshakes happen only while warming up)
#   mtls           as tls, plus a client certificate (upstream requires one)
#   tls-handshake  TLS without upstream keep-alive: one TLS handshake per request
# The proxy runs on core $PROXY_CPU, the upstream and wrk on core $LOAD_CPU.
# Every case x system runs once per round; the system order alternates between
# rounds. CPU µs/req is the proxy process tree's utime+stime (/proc/PID/stat)
# over the wrk run divided by the requests wrk completed. See bench/README.md.
#
# UPSTREAM=haproxy serves the same three ports from HAProxy instead of nginx (a second
# upstream setup: a figure that holds against both is not an artefact of one TLS stack). The
# upstream's own CPU per request is reported beside the proxy's.
#
# Usage:   bash bench/tls.sh
#          SYSTEMS="nginx haproxy" DURATION=2s ROUNDS=1 bash bench/tls.sh
#          UPSTREAM=haproxy CASES="plain tls" ROUNDS=4 bash bench/tls.sh
#          RATE=10000 UPSTREAM=haproxy CASES="tls mtls" ROUNDS=6 bash bench/tls.sh
# Env:     DURATION WARMUP ROUNDS SYSTEMS CASES UPSTREAM WRK_CONNECTIONS PROXY_CPU LOAD_CPU
#          READY_TIMEOUT LEGATE_BIN RESULTS_FILE KEEP_TMP FOREIGN_WARN_PCT
#          RATE: measure at this fixed request rate (loadgen rate, open loop, WRK_CONNECTIONS
#          connections) instead of wrk's closed loop; LOADGEN_BIN (target/release/loadgen)
#
# The markdown report goes to stdout and $RESULTS_FILE; progress goes to stderr.
# Exits non-zero if any case failed (no "ok" through the proxy, wrk errors).
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(cd -- "$here/.." && pwd)

DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
ROUNDS=${ROUNDS:-2}
SYSTEMS=${SYSTEMS:-legate nginx haproxy}
CASES=${CASES:-plain tls mtls tls-handshake}
UPSTREAM=${UPSTREAM:-nginx}
[[ $UPSTREAM == nginx || $UPSTREAM == haproxy ]] || die "UPSTREAM must be nginx or haproxy"
[[ $UPSTREAM == nginx ]] || command -v haproxy >/dev/null 2>&1 || die "UPSTREAM=haproxy needs haproxy installed"
WRK_CONNECTIONS=${WRK_CONNECTIONS:-64}
RATE=${RATE:-}
LOADGEN_BIN=${LOADGEN_BIN:-$root/target/release/loadgen}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
READY_TIMEOUT=${READY_TIMEOUT:-15}
LEGATE_BIN=${LEGATE_BIN:-$root/target/release/legate}
RESULTS_FILE=${RESULTS_FILE:-$here/results/tls-latest.md}
KEEP_TMP=${KEEP_TMP:-0}
# Other processes using more than this share of one core while a run is
# measured get a note in the report (the machine has only two cores).
FOREIGN_WARN_PCT=${FOREIGN_WARN_PCT:-5}

log() { printf '[tls] %s\n' "$*" >&2; }
warn() { printf '[tls] WARNING: %s\n' "$*" >&2; }
err() { printf '[tls] ERROR: %s\n' "$*" >&2; }
die() {
    err "$*"
    exit 1
}

for tool in nginx openssl wrk curl taskset getconf awk; do
    command -v "$tool" >/dev/null 2>&1 || die "required tool not found: $tool"
done
[[ -z $RATE || -x $LOADGEN_BIN ]] || die "RATE needs loadgen at $LOADGEN_BIN: cargo build --release -p loadgen"
[[ -d /proc/self ]] || die "/proc is required (Linux only)"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
ncpu=$(getconf _NPROCESSORS_ONLN)
if ((ncpu < 2)); then
    warn "only $ncpu CPU online; proxy and load generator will share a core"
    LOAD_CPU=$PROXY_CPU
fi
clk_tck=$(getconf CLK_TCK)

for c in $CASES; do
    case $c in
    plain | tls | mtls | tls-handshake) ;;
    *) die "unknown case in CASES: $c (known: plain tls mtls tls-handshake)" ;;
    esac
done

# Systems that cannot run are dropped here, with a warning and a report note.
skipped=()
systems=()
for sys in $SYSTEMS; do
    case $sys in
    legate)
        if [[ -x $LEGATE_BIN ]]; then
            systems+=(legate)
        else
            warn "legate: no executable at $LEGATE_BIN; build it first with" \
                "'cargo build --release -p legate' (or set LEGATE_BIN). Skipping legate."
            skipped+=("legate: not run, no binary at $LEGATE_BIN (build with \`cargo build --release -p legate\`)")
        fi
        ;;
    nginx) systems+=(nginx) ;; # nginx is required anyway (it is the upstream)
    haproxy)
        if command -v haproxy >/dev/null 2>&1; then
            systems+=(haproxy)
        else
            warn "haproxy: not installed; skipping HAProxy"
            skipped+=("HAProxy: not run, not installed")
        fi
        ;;
    *) die "unknown system in SYSTEMS: $sys (known: legate nginx haproxy)" ;;
    esac
done
((${#systems[@]})) || die "no system left to benchmark"

# ------------------------------------------------------ temp dir & cleanup --
work=$(mktemp -d "${TMPDIR:-/tmp}/legate-tls-bench.XXXXXX")
# nginx workers may run as an unprivileged user and must reach their files.
chmod 711 "$work"
pids=()




trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers --
declare -A chosen_ports=()



# fetch URL [CURL_ARGS...]: prints "STATUS BODY" (body with newlines removed;
# status 000 if the request failed). Never uses a proxy.
fetch() {
    local url=$1 out
    shift
    out=$(curl --noproxy '*' -s -m 2 -w '\n%{http_code}' "$@" "$url" 2>/dev/null) || true
    printf '%s %s' "${out##*$'\n'}" "$(printf '%s' "${out%$'\n'*}" | tr -d '\r\n')"
}



now() { date +%s.%N; }

# tail_log FILE: show the end of a log on stderr (for failures).

# launch CPU LOGFILE CMD...: start CMD pinned to CPU in the background; the pid
# is stored in $launched and tracked for cleanup. taskset execs CMD, so the
# pid is that of the program itself.
launch() {
    local cpu=$1 out=$2
    shift 2
    taskset -c "$cpu" "$@" >"$out" 2>&1 &
    launched=$!
    pids+=("$launched")
}

# ----------------------------------------------------------- certificates --
# CA (EC P-256), upstream server cert (upstream.test, 127.0.0.1) and client
# cert (CN=client, SPIFFE URI SAN), all EC P-256 and signed by the CA.
pki=$work/pki
bench_pki "$pki" "upstream.test" "legate bench CA" || {
    tail_log "$pki/openssl.log"
    die "creating certificates with openssl failed"
}
# HAProxy wants the client certificate and its key in one file.
cat "$pki/client.pem" "$pki/client.key" >"$pki/client-combined.pem"
chmod 644 "$pki"/*
ca=$pki/ca.pem
log "certificates in $pki (CA, server upstream.test, client spiffe://test/ns/default/sa/client; EC P-256)"

# ------------------------------------------------------------- upstream ----
nginx_version=$(nginx -v 2>&1 | sed -n 's|.*nginx/\([^ ]*\).*|\1|p')
nginx_modules=$(nginx -V 2>&1)
haproxy_version=""
if command -v haproxy >/dev/null 2>&1; then
    haproxy_version=$(haproxy -v 2>/dev/null | sed -n 's/^HAProxy version \([^ -]*\).*/\1/p' || true)
fi
openssl_version=$(openssl version 2>/dev/null | awk '{ print $2 }')


# start_nginx_instance NAME CPU CONFIG_BODY -> $launched (after `nginx -t`).
start_nginx_instance() {
    local name=$1 cpu=$2 body=$3 dir=$work/$1
    rm -rf -- "$dir"
    mkdir -p "$dir"
    chmod 711 "$dir"
    {
        echo "worker_processes 1;"
        nginx_common "$dir"
        printf '%s\n}\n' "$body"
    } >"$dir/nginx.conf"
    if ! nginx -t -q -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" >"$dir/stderr.log" 2>&1; then
        tail_log "$dir/stderr.log"
        tail_log "$dir/error.log"
        err "$name: nginx -t rejected $dir/nginx.conf"
        return 1
    fi
    launch "$cpu" "$dir/stderr.log" nginx -e "$dir/error.log" -p "$dir" \
        -c "$dir/nginx.conf" -g 'daemon off;'
}

pick_port up_plain_port
pick_port up_tls_port
pick_port up_mtls_port
# One log line per new upstream connection (first request on it): which port,
# TLS version and cipher, and whether the TLS session was resumed ("r").
conn_log=$work/upstream-conns.log
: >"$conn_log"
chmod 666 "$conn_log"
# (access_log sits in each server block: the http level has "access_log off".)
server_body="access_log $conn_log conn if=\$new_conn;
        location / { default_type text/plain; return 200 \"ok\\n\"; }"
if [[ $UPSTREAM == nginx ]]; then
start_nginx_instance upstream "$LOAD_CPU" "
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:1m;
    ssl_certificate $pki/server.pem;
    ssl_certificate_key $pki/server.key;
    map \$connection_requests \$new_conn { 1 1; default 0; }
    log_format conn '\$server_port \$ssl_protocol \$ssl_cipher \$ssl_session_reused';
    server {
        listen 127.0.0.1:$up_plain_port backlog=4096;
        $server_body
    }
    server {
        listen 127.0.0.1:$up_tls_port ssl backlog=4096;
        server_name upstream.test;
        $server_body
    }
    server {
        listen 127.0.0.1:$up_mtls_port ssl backlog=4096;
        server_name upstream.test;
        ssl_verify_client on;
        ssl_client_certificate $ca;
        $server_body
    }" || die "cannot start the upstream nginx"
else
    # The same three ports from HAProxy: `ok` answered by HAProxy itself, TLS from OpenSSL via
    # HAProxy's own settings (no session log: the resumed column stays empty).
    cat "$pki/server.pem" "$pki/server.key" >"$pki/server-combined.pem"
    chmod 644 "$pki/server-combined.pem"
    mkdir -p "$work/upstream"
    cat >"$work/upstream/haproxy.cfg" <<HAP
global
    maxconn 8000
    tune.ssl.default-dh-param 2048
defaults
    mode http
    timeout client 60s
    timeout server 60s
    timeout connect 5s
    option http-keep-alive
frontend plain
    bind 127.0.0.1:$up_plain_port
    http-request return status 200 content-type text/plain string "ok"
frontend tls
    bind 127.0.0.1:$up_tls_port ssl crt $pki/server-combined.pem ssl-min-ver TLSv1.2
    http-request return status 200 content-type text/plain string "ok"
frontend mtls
    bind 127.0.0.1:$up_mtls_port ssl crt $pki/server-combined.pem ssl-min-ver TLSv1.2 verify required ca-file $ca
    http-request return status 200 content-type text/plain string "ok"
HAP
    haproxy -c -q -f "$work/upstream/haproxy.cfg" >"$work/upstream/stderr.log" 2>&1 || {
        tail_log "$work/upstream/stderr.log"
        die "haproxy rejected the upstream config"
    }
    launch "$LOAD_CPU" "$work/upstream/stderr.log" haproxy -db -f "$work/upstream/haproxy.cfg"
    : >"$work/upstream/error.log"
fi
upstream_pid=$launched

# Check the upstream directly: plain, TLS (verified against the CA), mTLS with
# the client cert, and that mTLS without a client cert is refused (400).
tls_curl=(--cacert "$ca" --resolve "upstream.test:$up_tls_port:127.0.0.1"
    --resolve "upstream.test:$up_mtls_port:127.0.0.1")
deadline=$((SECONDS + READY_TIMEOUT))
until [[ $(fetch "http://127.0.0.1:$up_plain_port/") == "200 ok" ]]; do
    if ! alive "$upstream_pid" || ((SECONDS > deadline)); then
        tail_log "$work/upstream/error.log"
        tail_log "$work/upstream/stderr.log"
        die "upstream $UPSTREAM did not answer on 127.0.0.1:$up_plain_port"
    fi
    sleep 0.05
done
r=$(fetch "https://upstream.test:$up_tls_port/" "${tls_curl[@]}")
[[ $r == "200 ok" ]] || die "upstream TLS check failed (got '$r')"
r=$(fetch "https://upstream.test:$up_mtls_port/" "${tls_curl[@]}" --cert "$pki/client.pem" --key "$pki/client.key")
[[ $r == "200 ok" ]] || die "upstream mTLS check failed (got '$r')"
r=$(fetch "https://upstream.test:$up_mtls_port/" "${tls_curl[@]}")
[[ $r != 200* ]] || die "upstream mTLS port accepted a client without a certificate (got '$r')"
log "upstream $UPSTREAM (pid $upstream_pid, cpu $LOAD_CPU): plain :$up_plain_port, TLS :$up_tls_port, mTLS :$up_mtls_port"

# case_port CASE: the upstream port a case talks to.
case_port() {
    case $1 in
    plain) echo "$up_plain_port" ;;
    mtls) echo "$up_mtls_port" ;;
    *) echo "$up_tls_port" ;;
    esac
}

# --------------------------------------------------------- proxy starters --
# start_SYSTEM CASE PORT: start the proxy for CASE listening on PORT; sets
# $launched, or prints why and returns non-zero.

start_legate() {
    local cs=$1 port=$2 dir=$work/legate cfg
    rm -rf -- "$dir"
    mkdir -p "$dir"
    cfg=$dir/legate.yaml
    {
        cat <<EOF
admin: { listen: off }
access_log: off
runtime: { workers: 1 }
listeners:
  - name: app
    listen: 127.0.0.1:$port
    routes:
      - { name: default, upstream: up, timeout: 10s }
upstreams:
  - name: up
    endpoints: ["127.0.0.1:$(case_port "$cs")"]
EOF
        if [[ $cs != plain ]]; then
            echo "    tls:"
            echo "      ca: $ca"
            echo "      server_name: upstream.test"
        fi
        if [[ $cs == mtls ]]; then
            echo "      client_cert: $pki/client.pem"
            echo "      client_key: $pki/client.key"
        fi
        if [[ $cs == tls-handshake ]]; then
            echo "    pool: { max_idle_per_endpoint: 0 }"
        fi
    } >"$cfg"
    if ! "$LEGATE_BIN" check -c "$cfg" >"$dir/check.log" 2>&1; then
        tail_log "$dir/check.log"
        err "legate: 'legate check' rejected $cfg"
        return 1
    fi
    launch "$PROXY_CPU" "$dir/legate.log" "$LEGATE_BIN" run -c "$cfg"
}

start_nginx() {
    local cs=$1 port=$2 keepalive="keepalive 64; keepalive_requests 1000000;" scheme=https ssl=""
    [[ $cs == tls-handshake ]] && keepalive=""
    if [[ $cs == plain ]]; then
        scheme=http
    else
        ssl="
            proxy_ssl_protocols TLSv1.2 TLSv1.3;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $ca;
            proxy_ssl_name upstream.test;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;"
    fi
    if [[ $cs == mtls ]]; then
        ssl+="
            proxy_ssl_certificate $pki/client.pem;
            proxy_ssl_certificate_key $pki/client.key;"
    fi
    start_nginx_instance nginx "$PROXY_CPU" "
    upstream up {
        server 127.0.0.1:$(case_port "$cs");
        $keepalive
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass $scheme://up;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";$ssl
        }
    }"
}

start_haproxy() {
    local cs=$1 port=$2 dir=$work/haproxy server reuse="http-reuse always"
    rm -rf -- "$dir"
    mkdir -p "$dir"
    server="server s1 127.0.0.1:$(case_port "$cs")"
    if [[ $cs != plain ]]; then
        # With `sni` set, HAProxy checks the certificate against the SNI value
        # (`verifyhost` would only apply without SNI).
        server+=" ssl verify required ca-file $ca sni str(upstream.test) alpn http/1.1"
    fi
    [[ $cs == mtls ]] && server+=" crt $pki/client-combined.pem"
    if [[ $cs == tls-handshake ]]; then
        reuse="http-reuse never
    option http-server-close"
    fi
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
    $reuse

frontend fe
    bind 127.0.0.1:$port
    default_backend be

backend be
    $server
EOF
    if ! haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1; then
        tail_log "$dir/check.log"
        err "haproxy: 'haproxy -c' rejected $dir/haproxy.cfg"
        return 1
    fi
    launch "$PROXY_CPU" "$dir/haproxy.log" haproxy -db -f "$dir/haproxy.cfg"
}

proxy_logs() { # SYSTEM: log files worth showing when it fails
    case $1 in
    legate) echo "$work/legate/legate.log" ;;
    nginx) echo "$work/nginx/error.log $work/nginx/stderr.log" ;;
    haproxy) echo "$work/haproxy/haproxy.log" ;;
    esac
}

sys_label() {
    case $1 in
    legate) echo "legate" ;;
    nginx) echo "nginx $nginx_version" ;;
    haproxy) echo "HAProxy $haproxy_version" ;;
    esac
}

# ------------------------------------------------------------ measurement --
# Results, keyed "ROUND|CASE|SYSTEM".
declare -A res_rps res_cpu res_util res_conns res_resumed res_other res_note res_fail res_up
# Upstream TLS version/cipher seen per "CASE|SYSTEM" (over the proxy's lifetime).
declare -A tls_seen
failures=0

fail() { # KEY MESSAGE
    res_fail[$1]=1
    res_note[$1]+="${res_note[$1]:+; }$2"
    failures=$((failures + 1))
    local r c s
    IFS='|' read -r r c s <<<"$1"
    err "round $r, $c / $s: $2"
}
note() { res_note[$1]+="${res_note[$1]:+; }$2"; }

# run_one ROUND CASE SYSTEM: start the proxy, check "ok" through it, warm up,
# measure one wrk run, stop it.
run_one() {
    local round=$1 cs=$2 sys=$3 key="$1|$2|$3" port pid url r deadline f
    local lines0 w0 w1 tree t0 t1 out reqs secs rps non2xx sockerr ticks foreign0 wall0 new resumed
    pick_port port
    url="http://127.0.0.1:$port/"
    lines0=$(wc -l <"$conn_log")
    log "round $round: $cs / $sys on :$port"
    if ! "start_$sys" "$cs" "$port"; then
        fail "$key" "proxy did not start"
        return 0
    fi
    pid=$launched
    # Ready = the listener answers; then the answer must be 200 "ok".
    deadline=$((SECONDS + READY_TIMEOUT))
    r=$(fetch "$url")
    while [[ $r != "200 ok" ]]; do
        if ! alive "$pid" || ((SECONDS > deadline)); then break; fi
        sleep 0.05
        r=$(fetch "$url")
    done
    if [[ $r != "200 ok" ]]; then
        if alive "$pid"; then
            fail "$key" "no 200 \"ok\" through the proxy within ${READY_TIMEOUT}s (last answer: '${r}')"
        else
            fail "$key" "proxy exited during start-up (last answer: '${r}')"
        fi
        for f in $(proxy_logs "$sys"); do tail_log "$f"; done
        tail_log "$work/upstream/error.log"
        stop_tree "$pid"
        return 0
    fi

    foreign0=$(foreign_ticks)
    wall0=$(now)
    taskset -c "$LOAD_CPU" wrk -t1 -c"$WRK_CONNECTIONS" -d"$WARMUP" "$url" >/dev/null 2>&1 ||
        warn "$cs / $sys: warm-up wrk run failed"

    out=$work/wrk.$round.$cs.$sys.txt
    tree=$(tree_pids "$pid")
    w0=$(wc -l <"$conn_log")
    local up_tree up0 up1
    up_tree=$(tree_pids "$upstream_pid")
    # shellcheck disable=SC2086 # word splitting of the pid list is intended
    up0=$(cpu_ticks $up_tree)
    # shellcheck disable=SC2086 # word splitting of the pid list is intended
    t0=$(cpu_ticks $tree)
    if [[ -n $RATE ]]; then
        # Open loop at a fixed rate: every system serves the same load, so the CPU per request
        # compares the proxies at equal work, not at whatever rate a closed loop settles on
        # (a proxy that does not saturate its core pays for the upstream's batching too).
        # The output is rewritten in wrk's terms for the parsing below.
        if ! taskset -c "$LOAD_CPU" "$LOADGEN_BIN" rate --url "$url" --rps "$RATE"             --connections "$WRK_CONNECTIONS" --duration "$DURATION" >"$out.json" 2>"$out.err"; then
            tail_log "$out.err"
            fail "$key" "loadgen failed"
            stop_tree "$pid"
            return 0
        fi
        python3 - "$out.json" "$DURATION" >"$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
secs = float(sys.argv[2].rstrip("s"))
print(f"  {d['ok']} requests in {secs}s, 0MB read")
print(f"Requests/sec: {d['achieved_rps']}")
if d["errors"]:
    print(f"Non-2xx or 3xx responses: {d['errors']}")
PY
    elif ! taskset -c "$LOAD_CPU" wrk -t1 -c"$WRK_CONNECTIONS" -d"$DURATION" "$url" >"$out" 2>&1; then
        tail_log "$out"
        fail "$key" "wrk failed"
        stop_tree "$pid"
        return 0
    fi
    # shellcheck disable=SC2086
    t1=$(cpu_ticks $tree)
    # shellcheck disable=SC2086
    up1=$(cpu_ticks $up_tree)
    w1=$(wc -l <"$conn_log")
    res_other[$key]=$(awk -v t=$(($(foreign_ticks) - foreign0)) -v hz="$clk_tck" -v a="$wall0" -v b="$(now)" \
        'BEGIN { printf "%.0f", (b > a) ? 100 * t / hz / (b - a) : 0 }')
    alive "$pid" || fail "$key" "proxy died during the run"

    reqs=$(awk '/ requests in / { print $1 }' "$out")
    secs=$(awk '/ requests in / { sub(/s,?$/, "", $4); print $4 }' "$out")
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    non2xx=$(awk -F': *' '/Non-2xx or 3xx responses/ { print $2 }' "$out")
    sockerr=$(grep 'Socket errors' "$out" || true)
    if [[ -z $rps || -z $reqs ]] || ((reqs == 0)); then
        tail_log "$out"
        fail "$key" "no requests completed (see wrk output above)"
    else
        ticks=$((t1 - t0))
        res_rps[$key]=$(awk -v r="$rps" 'BEGIN { printf "%.0f", r }')
        res_cpu[$key]=$(awk -v t="$ticks" -v hz="$clk_tck" -v n="$reqs" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
        res_up[$key]=$(awk -v t=$((up1 - up0)) -v hz="$clk_tck" -v n="$reqs" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
        res_util[$key]=$(awk -v t="$ticks" -v hz="$clk_tck" -v s="$secs" \
            'BEGIN { if (s > 0) printf "%.0f", 100 * t / hz / s; else print "?" }')
    fi
    # An error answer is cheaper than a proxied one: any non-2xx makes the row invalid.
    if [[ -n $non2xx ]]; then
        fail "$key" "wrk saw $non2xx non-2xx responses"
        for f in $(proxy_logs "$sys"); do tail_log "$f"; done
    fi
    if [[ -n $sockerr ]]; then
        sockerr=${sockerr#"${sockerr%%[![:space:]]*}"}
        warn "$cs / $sys: wrk $sockerr"
        note "$key" "wrk: $sockerr"
    fi

    # New upstream connections during the measured run, and how many resumed.
    new=$((w1 - w0))
    resumed=$(sed -n "$((w0 + 1)),${w1}p" "$conn_log" | awk '$4 == "r"' | wc -l)
    res_conns[$key]=$new
    if ((new > 0)) && [[ $cs != plain ]]; then
        res_resumed[$key]=$(awk -v r="$resumed" -v n="$new" 'BEGIN { printf "%.0f%%", 100 * r / n }')
    fi
    if [[ $cs != plain && -z ${tls_seen[$cs|$sys]:-} ]]; then
        tls_seen[$cs|$sys]=$(sed -n "$((lines0 + 1)),\$p" "$conn_log" | awk '$2 != "-" { print $2 "/" $3 }' |
            sort | uniq -c | sort -rn | awk '{ printf "%s%s", (NR > 1 ? ", " : ""), $2 }')
    fi
    if ((${res_other[$key]} > FOREIGN_WARN_PCT)); then
        warn "$cs / $sys: other processes used ${res_other[$key]}% of a core; numbers are noisy"
    fi
    log "$cs / $sys: ${res_rps[$key]:-?} req/s, ${res_cpu[$key]:-?} CPU µs/req, proxy core ${res_util[$key]:-?}%," \
        "$new new upstream conns${res_resumed[$key]:+ (${res_resumed[$key]} resumed)}, others ${res_other[$key]}%"
    stop_tree "$pid"
    sleep 1
}

for ((round = 1; round <= ROUNDS; round++)); do
    order=("${systems[@]}")
    if ((round % 2 == 0)); then
        order=()
        for ((i = ${#systems[@]} - 1; i >= 0; i--)); do order+=("${systems[i]}"); done
    fi
    for cs in $CASES; do
        for sys in "${order[@]}"; do
            run_one "$round" "$cs" "$sys"
        done
    done
done

# ----------------------------------------------------------------- report --
cell() { if [[ -n ${1:-} ]]; then echo "$1"; else echo "n/a"; fi; }

# median VALUES...: median of the non-empty values (empty if none).
median() {
    printf '%s\n' "$@" | awk 'NF' | sort -g |
        awk '{ a[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# round_ratio_median CASE SYS OTHER...: the median over rounds of SYS's CPU per request divided
# by the lowest of the OTHERs' in the same round ("n/a" without a complete round).
round_ratio_median() {
    local cs=$1 sys=$2 round v o best
    shift 2
    local -a ratios=()
    for ((round = 1; round <= ROUNDS; round++)); do
        v=${res_cpu[$round|$cs|$sys]:-}
        [[ -n $v ]] || continue
        best=""
        for o in "$@"; do
            o=${res_cpu[$round|$cs|$o]:-}
            [[ -n $o ]] || continue
            if [[ -z $best ]] || awk -v a="$o" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$o; fi
        done
        [[ -n $best ]] && ratios+=("$(awk -v a="$v" -v b="$best" 'BEGIN { printf "%.4f", a / b }')")
    done
    ((${#ratios[@]})) || { echo "n/a"; return; }
    printf '%s\n' "${ratios[@]}" | sort -g |
        awk '{ a[NR] = $1 } END { if (NR % 2) printf "%.3f", a[(NR + 1) / 2]; else printf "%.3f", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

declare -A med_cpu med_rps
for cs in $CASES; do
    for sys in "${systems[@]}"; do
        vals=()
        rvals=()
        for ((round = 1; round <= ROUNDS; round++)); do
            key="$round|$cs|$sys"
            [[ -n ${res_fail[$key]:-} ]] && continue
            vals+=("${res_cpu[$key]:-}")
            rvals+=("${res_rps[$key]:-}")
        done
        med_cpu[$cs|$sys]=$(median ${vals[@]+"${vals[@]}"})
        med_rps[$cs|$sys]=$(median ${rvals[@]+"${rvals[@]}"})
    done
done

report=$work/report.md
{
    echo "# TLS origination: $(for s in "${systems[@]}"; do printf '%s, ' "$(sys_label "$s")"; done | sed 's/, $//')"
    echo
    for ((round = 1; round <= ROUNDS; round++)); do
        echo "## Round $round"
        echo
        echo "| case | system | req/s | CPU µs/req | upstream CPU µs/req | proxy core % | new upstream conns | resumed | other procs % |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
        order=("${systems[@]}")
        if ((round % 2 == 0)); then
            order=()
            for ((i = ${#systems[@]} - 1; i >= 0; i--)); do order+=("${systems[i]}"); done
        fi
        for cs in $CASES; do
            for sys in "${order[@]}"; do
                key="$round|$cs|$sys"
                if [[ -n ${res_fail[$key]:-} ]]; then
                    printf '| %s | %s | FAILED | FAILED | | | | | |\n' "$cs" "$(sys_label "$sys")"
                    continue
                fi
                printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$cs" "$(sys_label "$sys")" \
                    "$(cell "${res_rps[$key]:-}")" "$(cell "${res_cpu[$key]:-}")" "$(cell "${res_up[$key]:-}")" \
                    "$(cell "${res_util[$key]:-}")" "$(cell "${res_conns[$key]:-}")" \
                    "${res_resumed[$key]:-–}" "$(cell "${res_other[$key]:-}")"
            done
        done
        echo
    done

    echo "## Summary (median over $ROUNDS round(s))"
    echo
    hdr="| case |"
    sep="|---|"
    for sys in "${systems[@]}"; do
        hdr+=" $(sys_label "$sys") µs/req |"
        sep+="---:|"
    done
    have_ratio=0
    if [[ " ${systems[*]} " == *" legate "* ]] && { [[ " ${systems[*]} " == *" nginx "* ]] || [[ " ${systems[*]} " == *" haproxy "* ]]; }; then
        have_ratio=1
        hdr+=" legate / best other |"
        sep+="---:|"
    fi
    echo "$hdr"
    echo "$sep"
    for cs in $CASES; do
        row="| $cs |"
        for sys in "${systems[@]}"; do
            v=${med_cpu[$cs|$sys]:-}
            r=${med_rps[$cs|$sys]:-}
            row+=" $(cell "$v")${r:+ ($(awk -v r="$r" 'BEGIN { printf "%.0f", r }') req/s)} |"
        done
        if ((have_ratio)); then
            best=""
            best_sys=""
            for sys in nginx haproxy; do
                v=${med_cpu[$cs|$sys]:-}
                [[ -n $v ]] || continue
                if [[ -z $best ]] || awk -v a="$v" -v b="$best" 'BEGIN { exit !(a < b) }'; then
                    best=$v
                    best_sys=$sys
                fi
            done
            lv=${med_cpu[$cs|legate]:-}
            if [[ -n $best && -n $lv ]]; then
                row+=" $(awk -v a="$lv" -v b="$best" 'BEGIN { printf "%.2f", a / b }') (vs $(sys_label "$best_sys")) |"
            else
                row+=" n/a |"
            fi
        fi
        echo "$row"
    done
    echo
    if ((have_ratio)); then
        echo "legate / best other, round by round (each round's systems ran back to back), and the spread:"
        echo
        for cs in $CASES; do
            ratios=()
            lv_all=()
            for ((round = 1; round <= ROUNDS; round++)); do
                lv=${res_cpu[$round|$cs|legate]:-}
                [[ -n $lv ]] && lv_all+=("$lv")
                best=""
                for sys in nginx haproxy; do
                    v=${res_cpu[$round|$cs|$sys]:-}
                    [[ -n $v ]] || continue
                    if [[ -z $best ]] || awk -v a="$v" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$v; fi
                done
                if [[ -n $lv && -n $best ]]; then
                    ratios+=("$(awk -v a="$lv" -v b="$best" 'BEGIN { printf "%.2f", a / b }')")
                fi
            done
            ((${#ratios[@]})) || continue
            spread=$(printf '%s\n' "${lv_all[@]}" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s–%s", lo, hi }')
            med_ratio=$(printf '%s\n' "${ratios[@]}" | sort -g |
                awk '{ a[NR] = $1 } END { if (NR % 2) printf "%.2f", a[(NR + 1) / 2]; else printf "%.3f", (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
            printf -- '- %s: %s (median %s); legate µs/req %s\n' "$cs" "${ratios[*]}" "$med_ratio" "$spread"
        done
        echo
        # The best of two noisy peers, taken round by round, is biased low (the smaller of two
        # samples), so the line above scores a system that equals its peers above 1.0. Per peer,
        # and the same measure taken for every system (a control: nginx and HAProxy get it too):
        echo "Per peer (median of round-by-round ratios), and the round-by-round measure above applied to every system (each against the best of the others; equal systems all score above 1.0 on it):"
        echo
        for cs in $CASES; do
            line="- $cs:"
            for peer in nginx haproxy; do
                [[ " ${systems[*]} " == *" $peer "* ]] || continue
                line+=" legate / $(sys_label "$peer") $(round_ratio_median "$cs" legate "$peer");"
            done
            line+=" each against the best of the others:"
            for sys in "${systems[@]}"; do
                others=()
                for o in "${systems[@]}"; do [[ $o == "$sys" ]] || others+=("$o"); done
                line+=" $(sys_label "$sys") $(round_ratio_median "$cs" "$sys" "${others[@]}"),"
            done
            echo "${line%,}"
        done
        echo
    fi
    echo "CPU µs/request of the proxy (median; the upstream is TLS in the TLS and mTLS columns, keep-alive everywhere):"
    echo
    echo "| | plain | TLS | mTLS |"
    echo "|---|---:|---:|---:|"
    for sys in "${systems[@]}"; do
        printf '| %s | %s | %s | %s |\n' "$(sys_label "$sys")" "$(cell "${med_cpu[plain|$sys]:-}")" \
            "$(cell "${med_cpu[tls|$sys]:-}")" "$(cell "${med_cpu[mtls|$sys]:-}")"
    done
    echo
    echo "Upstream TLS negotiated (from the upstream's per-connection log):"
    for cs in $CASES; do
        [[ $cs == plain ]] && continue
        for sys in "${systems[@]}"; do
            printf -- '- %s / %s: %s\n' "$cs" "$(sys_label "$sys")" "$(cell "${tls_seen[$cs|$sys]:-}")"
        done
    done
    have_notes=0
    for key in "${!res_note[@]}"; do have_notes=1; done
    if ((have_notes)) || ((${#skipped[@]})); then
        echo
        echo "Notes:"
        for s in ${skipped[@]+"${skipped[@]}"}; do
            printf -- '- %s\n' "$s"
        done
        for ((round = 1; round <= ROUNDS; round++)); do
            for cs in $CASES; do
                for sys in "${systems[@]}"; do
                    key="$round|$cs|$sys"
                    [[ -n ${res_note[$key]:-} ]] &&
                        printf -- '- round %s, %s / %s: %s\n' "$round" "$cs" "$(sys_label "$sys")" "${res_note[$key]}"
                done
            done
        done
    fi
    echo
    echo "Columns: CPU µs/req = proxy utime+stime over the wrk run / requests completed; proxy core % = that CPU time"
    echo "/ wall time (below ~95% the load side was the limit, not the proxy); new upstream conns = TCP connections"
    echo "the upstream accepted during the measured run (0 = keep-alive held; ≈ requests in tls-handshake);"
    echo "resumed = share of those whose TLS session was resumed; other procs % = CPU of processes outside this"
    echo "benchmark (noisy above ${FOREIGN_WARN_PCT}%; a concurrent cargo build ruins req/s, CPU µs/req holds up best)."
    echo
    printf 'Run %s on %s (%s CPUs, Linux %s), OpenSSL %s. ' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo unknown)" \
        "$ncpu" "$(uname -r)" "$openssl_version"
    if [[ $UPSTREAM == nginx ]]; then
        printf 'Proxy on cpu %s; upstream (nginx %s, `return 200 "ok\\n"`, EC P-256 certs, TLSv1.2+1.3, session cache) and wrk on cpu %s. ' \
            "$PROXY_CPU" "$nginx_version" "$LOAD_CPU"
    else
        printf 'Proxy on cpu %s; upstream (HAProxy %s, `http-request return 200 "ok"`, EC P-256 certs, TLSv1.2+1.3) and wrk on cpu %s. ' \
            "$PROXY_CPU" "$haproxy_version" "$LOAD_CPU"
    fi
    if [[ -n $RATE ]]; then
        printf 'loadgen rate --rps %s --connections %s --duration %s (a fixed rate, open loop) after a %s wrk warm-up, plain HTTP/1.1 keep-alive to the proxy.\n' \
            "$RATE" "$WRK_CONNECTIONS" "$DURATION" "$WARMUP"
    else
        printf 'wrk -t1 -c%s -d%s after a %s warm-up, plain HTTP/1.1 keep-alive to the proxy.\n' \
            "$WRK_CONNECTIONS" "$DURATION" "$WARMUP"
    fi
} >"$report"

mkdir -p -- "$(dirname -- "$RESULTS_FILE")"
cp -- "$report" "$RESULTS_FILE"
cat -- "$report"
log "report written to $RESULTS_FILE"
if ((failures)); then
    err "$failures case(s) failed; see the notes in the report"
    exit 1
fi
