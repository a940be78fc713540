#!/usr/bin/env bash
# bench/tcp.sh - legate's TCP tunnels side by side with a direct connection and stunnel.
#
# Three parts, all on 127.0.0.1:
#   pgbench  pgbench -S (select-only) against a throwaway PostgreSQL 15 cluster that only takes
#            TLS over TCP: direct (verify-full), legate postgres-TLS mode (the app speaks
#            plaintext to legate, legate does SSLRequest + TLS), stunnel `protocol = pgsql`.
#   bulk     BULK_BYTES through: direct loopback, legate plain tunnel, a legate mTLS tunnel pair
#            (A: plain in, mTLS out; B: mTLS in, plain out), the same pair made of stunnels.
#   memory   RSS per idle tunnel connection (HOLD_CONNECTIONS idle connections, each having
#            carried one small message each way) and the peak RSS with BUSY_CONNECTIONS
#            connections streaming at once; legate plain / TLS client / TLS server side and
#            stunnel client / server side.
# The proxies run on core $PROXY_CPU; PostgreSQL, pgbench and the python source/sink/holder
# (bench/tcp_tool.py) on core $LOAD_CPU. pgbench and bulk run ROUNDS rounds, every system
# once per round, in an order that flips from one round to the next; memory runs once.
# See bench/README.md.
#
# Usage:   bash bench/tcp.sh                 # ROUNDS=3, DURATION=10s: about 5 minutes
#          QUICK=1 bash bench/tcp.sh         # 1 round, 3 s runs: about 1 minute
# Env:     ROUNDS DURATION WARMUP PARTS PG_SCALE PG_CLIENTS PG_THREADS BULK_BYTES BULK_REPEAT
#          HOLD_CONNECTIONS BUSY_CONNECTIONS BUSY_SECONDS PROXY_CPU LOAD_CPU READY_TIMEOUT
#          LEGATE_BIN STUNNEL_BIN PG_BIN PYTHON RESULTS_FILE KEEP_TMP FOREIGN_WARN_PCT QUIET_MAX
#
# The markdown report goes to stdout and $RESULTS_FILE; progress goes to stderr.
# Exits non-zero if any run failed (the report is still written).
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(cd -- "$here/.." && pwd)

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    ROUNDS=${ROUNDS:-1}
    DURATION=${DURATION:-3s}
    WARMUP=${WARMUP:-1s}
    BULK_BYTES=${BULK_BYTES:-268435456}
    BULK_REPEAT=${BULK_REPEAT:-1}
    BUSY_SECONDS=${BUSY_SECONDS:-2}
else
    ROUNDS=${ROUNDS:-3}
    DURATION=${DURATION:-10s}
    WARMUP=${WARMUP:-2s}
    BULK_BYTES=${BULK_BYTES:-1073741824}
    BULK_REPEAT=${BULK_REPEAT:-3}
    BUSY_SECONDS=${BUSY_SECONDS:-4}
fi
PARTS=${PARTS:-pgbench bulk memory}
PG_SCALE=${PG_SCALE:-10}
PG_CLIENTS=${PG_CLIENTS:-8}
PG_THREADS=${PG_THREADS:-2}
HOLD_CONNECTIONS=${HOLD_CONNECTIONS:-1000}
BUSY_CONNECTIONS=${BUSY_CONNECTIONS:-100}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
READY_TIMEOUT=${READY_TIMEOUT:-15}
LEGATE_BIN=${LEGATE_BIN:-$root/target/release/legate}
PYTHON=${PYTHON:-python3}
RESULTS_FILE=${RESULTS_FILE:-$here/results/tcp-latest.md}
KEEP_TMP=${KEEP_TMP:-0}
# Other processes using more than this share of one core while a run is measured get a note.
FOREIGN_WARN_PCT=${FOREIGN_WARN_PCT:-5}
# Before each measured run, wait up to this many seconds for the others to go below that.
if [[ $QUICK == 1 ]]; then QUIET_MAX=${QUIET_MAX:-2}; else QUIET_MAX=${QUIET_MAX:-10}; fi
tool=$here/tcp_tool.py

log() { printf '[tcp] %s\n' "$*" >&2; }
warn() { printf '[tcp] WARNING: %s\n' "$*" >&2; }
err() { printf '[tcp] ERROR: %s\n' "$*" >&2; }
die() {
    err "$*"
    exit 1
}

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
[[ $BULK_REPEAT =~ ^[1-9][0-9]*$ ]] || die "BULK_REPEAT must be a positive integer"
[[ $BULK_BYTES =~ ^[1-9][0-9]*$ ]] || die "BULK_BYTES must be a byte count"
duration_s=${DURATION%s}
warmup_s=${WARMUP%s}
[[ $duration_s =~ ^[1-9][0-9]*$ ]] || die "DURATION must be whole seconds (e.g. 10s), got '$DURATION'"
[[ $warmup_s =~ ^[0-9]+$ ]] || die "WARMUP must be whole seconds (e.g. 2s), got '$WARMUP'"
for p in $PARTS; do
    case $p in
    pgbench | bulk | memory) ;;
    *) die "unknown part in PARTS: $p (known: pgbench bulk memory)" ;;
    esac
done
has_part() { [[ " $PARTS " == *" $1 "* ]]; }

# --------------------------------------------------------------- tools -----
[[ -d /proc/self ]] || die "/proc is required (Linux only)"
apt_updated=0
# need CMD PACKAGE: make sure CMD exists, installing PACKAGE with apt-get if it does not.
need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "$1 not found: apt-get install -y $2"
        if ((!apt_updated)); then
            apt-get update -q >&2 || true
            apt_updated=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >&2 || true
    fi
    command -v "$1" >/dev/null 2>&1 || die "required tool not found: $1 (package $2)"
}
need taskset util-linux
need getconf libc-bin
need awk gawk
need ss iproute2
need curl curl
need openssl openssl
need "$PYTHON" python3
if has_part pgbench; then
    need su util-linux
    need pgbench postgresql-client
    need psql postgresql-client
    PG_BIN=${PG_BIN:-}
    if [[ -z $PG_BIN ]]; then
        if [[ -x /usr/lib/postgresql/15/bin/initdb ]]; then
            PG_BIN=/usr/lib/postgresql/15/bin
        else
            PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
        fi
    fi
    if [[ -z $PG_BIN || ! -x $PG_BIN/initdb ]]; then
        need pg_ctlcluster postgresql
        PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    fi
    [[ -x $PG_BIN/initdb && -x $PG_BIN/postgres ]] || die "no PostgreSQL server binaries (set PG_BIN)"
    id postgres >/dev/null 2>&1 || die "the 'postgres' user is needed to run the throwaway cluster"
    [[ $(id -u) == 0 ]] || die "the pgbench part runs initdb/postgres as 'postgres' through su: run as root"
fi
STUNNEL_BIN=${STUNNEL_BIN:-}
if [[ -z $STUNNEL_BIN ]]; then
    if ! command -v stunnel4 >/dev/null 2>&1 && ! command -v stunnel >/dev/null 2>&1; then
        need stunnel4 stunnel4
    fi
    STUNNEL_BIN=$(command -v stunnel4 || command -v stunnel)
fi
[[ -f $tool ]] || die "missing $tool"

ncpu=$(getconf _NPROCESSORS_ONLN)
if ((ncpu < 2)); then
    warn "only $ncpu CPU online; proxy and load will share a core"
    LOAD_CPU=$PROXY_CPU
fi
clk_tck=$(getconf CLK_TCK)

legate_ok=1
legate_skip=""
if [[ ! -x $LEGATE_BIN ]]; then
    legate_ok=0
    legate_skip="legate: not run, no binary at $LEGATE_BIN (build with \`cargo build --release -p legate\` or set LEGATE_BIN)"
    warn "$legate_skip"
fi
stunnel_version=$("$STUNNEL_BIN" -version 2>&1 | sed -n 's/^stunnel \([^ ]*\) .*/\1/p' | head -n 1)
openssl_version=$(openssl version 2>/dev/null | awk '{ print $2 }')
python_version=$("$PYTHON" -c 'import platform; print(platform.python_version())')

# Many held connections need ~2 fds each in the proxy and one in each of client and holder.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [[ $(ulimit -n) != unlimited ]] && (($(ulimit -n) < 2 * HOLD_CONNECTIONS + 256)); then
    warn "open-file limit $(ulimit -n) may be too low for $HOLD_CONNECTIONS held connections"
fi

# ------------------------------------------------------ temp dir & cleanup --
work=$(mktemp -d "${TMPDIR:-/tmp}/legate-tcp-bench.XXXXXX")
# The postgres user must reach its cluster and the certificates below this.
chmod 711 "$work"
pids=()
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

declare -A chosen_ports=()

now() { date +%s.%N; }


# launch CPU LOGFILE CMD...: start CMD pinned to CPU in the background; the pid is stored in
# $launched and tracked for cleanup. taskset execs CMD, so the pid is the program's own.
launch() {
    local cpu=$1 out=$2
    shift 2
    taskset -c "$cpu" "$@" </dev/null >"$out" 2>&1 &
    launched=$!
    pids+=("$launched")
}

# forget PID: stop PID's tree and drop it from the cleanup list.
forget() {
    local p keep=()
    stop_tree "$1"
    for p in ${pids[@]+"${pids[@]}"}; do
        [[ $p == "$1" ]] || keep+=("$p")
    done
    pids=(${keep[@]+"${keep[@]}"})
}

# wait_port PORT PID: until 127.0.0.1:PORT accepts a connection (false if PID dies first or
# READY_TIMEOUT passes).
wait_port() {
    local deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS <= deadline)); do
        alive "$2" || return 1
        if (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

# wait_line FILE REGEX PID [SECONDS]: until a line of FILE matches REGEX.
wait_line() {
    local deadline=$((SECONDS + ${4:-$READY_TIMEOUT}))
    while ! grep -Eq -- "$2" "$1" 2>/dev/null; do
        if ! alive "$3" || ((SECONDS > deadline)); then
            grep -Eq -- "$2" "$1" 2>/dev/null
            return
        fi
        sleep 0.05
    done
}

# rss_kib PID: VmRSS of PID in KiB; hwm_kib PID: its VmHWM (peak RSS).
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# The ksoftirqd threads carry this script's own loopback traffic when a core is saturated
# (bulk, direct: ~20% of a core), so they do not count as other processes here.
softirqd=()
for f in /proc/[0-9]*/comm; do
    { read -r c <"$f"; } 2>/dev/null || continue
    [[ $c == ksoftirqd/* ]] && softirqd+=("$(basename "$(dirname "$f")")")
done
others_ticks() { echo $(($(foreign_ticks) - $(cpu_ticks ${softirqd[@]+"${softirqd[@]}"}))); }

# other_pct OTHERS0 WALL0: CPU share of one core that processes outside this script used since
# (0 if negative: a process that exited meanwhile takes its ticks with it).
other_pct() {
    awk -v t=$(($(others_ticks) - $1)) -v hz="$clk_tck" -v a="$2" -v b="$(now)" \
        'BEGIN { p = (b > a) ? 100 * t / hz / (b - a) : 0; printf "%.0f", (p > 0) ? p : 0 }'
}

# wait_quiet: wait (at most QUIET_MAX s) for a 0.5 s window in which processes outside this
# script use at most FOREIGN_WARN_PCT of a core (a concurrent cargo build ruins the numbers).
wait_quiet() {
    local deadline=$((SECONDS + QUIET_MAX)) f0 w0 pct said=0
    while :; do
        f0=$(others_ticks)
        w0=$(now)
        sleep 0.5
        pct=$(other_pct "$f0" "$w0")
        ((pct <= FOREIGN_WARN_PCT)) && return 0
        if ((SECONDS >= deadline)); then
            warn "other processes still use ${pct}% of a core after ${QUIET_MAX}s; measuring anyway"
            return 0
        fi
        ((said)) || log "waiting up to ${QUIET_MAX}s for other processes to go quiet (${pct}% of a core)"
        said=1
    done
}

# median VALUES...: median of the non-empty values (empty if none).
median() {
    printf '%s\n' "$@" | awk 'NF' | sort -g |
        awk '{ a[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
# spread VALUES...: "min–max" of the non-empty values, rounded.
spread() {
    printf '%s\n' "$@" | awk 'NF' | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { if (NR) printf "%.0f–%.0f", lo, hi }'
}
fmt() { [[ -z ${1:-} ]] || awk -v v="$1" -v f="$2" 'BEGIN { printf f, v }'; }
ratio() { # A B: A/B with 2 decimals, or n/a
    if [[ -n ${1:-} && -n ${2:-} ]]; then
        awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'
    else
        echo "n/a"
    fi
}
cell() { if [[ -n ${1:-} ]]; then echo "$1"; else echo "n/a"; fi; }

# paired VALUES OTHERS A B: median over the rounds of VALUES[r|A] / VALUES[r|B], using only the
# rounds in which both runs were quiet (OTHERS[r|X] <= FOREIGN_WARN_PCT), or every round with
# both values if there is no such round. Prints "RATIO (n=K[, all noisy])", or "n/a".
paired() {
    local -n pv=$1 po=$2
    local a=$3 b=$4 r q=() all=() x
    for ((r = 1; r <= ROUNDS; r++)); do
        [[ -n ${pv[$r|$a]:-} && -n ${pv[$r|$b]:-} ]] || continue
        x=$(ratio "${pv[$r|$a]}" "${pv[$r|$b]}")
        [[ $x == n/a ]] && continue
        all+=("$x")
        if ((${po[$r|$a]:-0} <= FOREIGN_WARN_PCT && ${po[$r|$b]:-0} <= FOREIGN_WARN_PCT)); then q+=("$x"); fi
    done
    if ((${#q[@]})); then
        printf '%s (n=%s)' "$(fmt "$(median "${q[@]}")" %.2f)" "${#q[@]}"
    elif ((${#all[@]})); then
        printf '%s (n=%s, all noisy)' "$(fmt "$(median "${all[@]}")" %.2f)" "${#all[@]}"
    else
        echo "n/a"
    fi
}
mib() { [[ -z ${1:-} ]] || awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# Failures and notes go into the report; any failure makes the script exit 1.
failures=0
notes=()
fail() {
    failures=$((failures + 1))
    notes+=("FAILED: $*")
    err "$*"
}
note() { notes+=("$*"); }
[[ -n $legate_skip ]] && note "$legate_skip"

# order_for ROUND SYSTEMS...: the systems, reversed in even rounds.
order_for() {
    local r=$1 i
    shift
    local s=("$@")
    if ((r % 2 == 0)); then
        for ((i = ${#s[@]} - 1; i >= 0; i--)); do printf '%s ' "${s[i]}"; done
    else
        printf '%s ' "${s[@]}"
    fi
}

# ----------------------------------------------------------- certificates --
# CA, server certificate (CN/SAN DNS:localhost, IP:127.0.0.1) and client certificate
# (CN=client), all EC P-256 and signed by the CA.
pki=$work/pki
bench_pki "$pki" "localhost" "legate tcp bench CA" || {
    tail_log "$pki/openssl.log"
    die "creating certificates with openssl failed"
}
chmod 644 "$pki"/*
ca=$pki/ca.pem
log "certificates in $pki (CA; server localhost + 127.0.0.1; client CN=client; EC P-256)"

# ------------------------------------------------------- proxy starters ----
# Each start_* writes its config under $work/NAME, starts the proxy on $PROXY_CPU and sets
# $launched; it returns non-zero (after saying why) if the config is rejected.

# legate_head NAME LISTEN_PORT [ADMIN_PORT]: the common head of a legate config with one tcp
# listener NAME carried to the upstream `up`; the caller appends listener extras and `upstreams`.
legate_head() {
    local admin="off"
    [[ -n ${3:-} ]] && admin="127.0.0.1:$3"
    cat <<EOF
admin: { listen: $admin }
access_log: off
runtime: { workers: 1 }
listeners:
  - name: $1
    listen: 127.0.0.1:$2
    protocol: tcp
    upstream: up
EOF
}

# start_legate NAME CONFIG_TEXT
start_legate() {
    local dir=$work/$1
    mkdir -p "$dir"
    printf '%s\n' "$2" >"$dir/legate.yaml"
    if ! "$LEGATE_BIN" check -c "$dir/legate.yaml" >"$dir/check.log" 2>&1; then
        tail_log "$dir/check.log"
        err "$1: 'legate check' rejected $dir/legate.yaml"
        return 1
    fi
    launch "$PROXY_CPU" "$dir/legate.log" "$LEGATE_BIN" run -c "$dir/legate.yaml"
}

# stunnel_server ACCEPT_PORT CONNECT_PORT: the service lines of an stunnel terminating mTLS
# (the bench CA's server certificate; a client certificate from the same CA required).
stunnel_server() {
    printf '%s\n' "accept = 127.0.0.1:$1" "connect = 127.0.0.1:$2" "cert = $pki/server.pem" \
        "key = $pki/server.key" "CAfile = $ca" "verifyChain = yes" "requireCert = yes"
}

# start_stunnel NAME SERVICE_LINES: one stunnel process with one service.
start_stunnel() {
    local dir=$work/$1
    mkdir -p "$dir"
    {
        echo "foreground = yes"
        echo "pid ="
        echo "debug = warning"
        echo "output = $dir/stunnel.log"
        echo "[$1]"
        printf '%s\n' "$2"
    } >"$dir/stunnel.conf"
    launch "$PROXY_CPU" "$dir/stderr.log" "$STUNNEL_BIN" "$dir/stunnel.conf"
}

# Per-system proxy pids (space separated; one per process) for the part running now.
proxy_pids=""
proxy_logs=""

# stop_proxies: stop the processes started by the last start_system.
stop_proxies() {
    local p
    for p in $proxy_pids; do forget "$p"; done
    proxy_pids=""
}

# proxy_ticks: CPU ticks of the running proxies (all their processes and threads).
proxy_ticks() {
    local p all=""
    for p in $proxy_pids; do all+=" $(tree_pids "$p")"; done
    # shellcheck disable=SC2086 # the list is meant to split
    cpu_ticks $all
}

show_proxy_logs() {
    local f
    for f in $proxy_logs; do tail_log "$f"; done
}

# ======================================================= part 1: pgbench ====
declare -A pg_tps pg_cpu pg_util pg_other pg_txn
pg_systems=(direct)
((legate_ok)) && pg_systems+=(legate)
pg_systems+=(stunnel)

pg_setup() {
    pgdir=$work/pg
    mkdir -p "$pgdir"
    chown postgres: "$pgdir"
    chmod 700 "$pgdir"
    pick_port pg_port
    log "initdb in $pgdir/data (as postgres)"
    if ! su postgres -c "cd '$pgdir' && exec '$PG_BIN/initdb' -D '$pgdir/data' -U postgres -A trust -E UTF8 --no-sync --no-instructions" \
        >"$work/initdb.log" 2>&1; then
        tail_log "$work/initdb.log"
        return 1
    fi
    cp "$pki/server.pem" "$pki/server.key" "$pgdir/data/"
    chown postgres: "$pgdir/data/server.pem" "$pgdir/data/server.key"
    chmod 600 "$pgdir/data/server.key"
    cat >>"$pgdir/data/postgresql.conf" <<EOF

# bench/tcp.sh
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$pgdir'
max_connections = 100
ssl = on
ssl_cert_file = 'server.pem'
ssl_key_file = 'server.key'
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
EOF
    cat >"$pgdir/data/pg_hba.conf" <<EOF
local   all all                trust
hostssl all all 127.0.0.1/32   trust
EOF
    launch "$LOAD_CPU" "$work/postgres.log" su postgres -c "cd '$pgdir' && exec '$PG_BIN/postgres' -D '$pgdir/data'"
    pg_pid=$launched
    local deadline=$((SECONDS + 30))
    until psql -h "$pgdir" -p "$pg_port" -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; do
        if ! alive "$pg_pid" || ((SECONDS > deadline)); then
            tail_log "$work/postgres.log"
            return 1
        fi
        sleep 0.2
    done
    log "postgres on 127.0.0.1:$pg_port (pid $pg_pid, cpu $LOAD_CPU): pgbench -i -s $PG_SCALE"
    if ! taskset -c "$LOAD_CPU" pgbench -i -q -s "$PG_SCALE" -h "$pgdir" -p "$pg_port" -U postgres postgres \
        >"$work/pgbench-init.log" 2>&1; then
        tail_log "$work/pgbench-init.log"
        return 1
    fi
    pg_version=$(psql -h "$pgdir" -p "$pg_port" -U postgres -d postgres -Atqc 'show server_version')
}

# pg_env SYSTEM PORT: libpq environment for pgbench/psql. Direct: TLS with verify-full against
# the bench CA (hostaddr keeps libpq on 127.0.0.1; host names the certificate). Through a
# proxy: plaintext (sslmode=disable) to the proxy, which does TLS to the server.
pg_env() {
    local e=(PGUSER=postgres PGDATABASE=postgres PGPORT="$2" PGSSLCERT=/nonexistent PGSSLKEY=/nonexistent
        PGCONNECT_TIMEOUT=10)
    if [[ $1 == direct ]]; then
        e+=(PGHOST=localhost PGHOSTADDR=127.0.0.1 PGSSLMODE=verify-full PGSSLROOTCERT="$ca")
    else
        e+=(PGHOST=127.0.0.1 PGSSLMODE=disable)
    fi
    printf '%s\n' "${e[@]}"
}

# pg_start SYSTEM: start the proxy for SYSTEM; sets $pg_target_port.
pg_start() {
    proxy_pids=""
    proxy_logs=""
    case $1 in
    direct)
        pg_target_port=$pg_port
        ;;
    legate)
        pick_port pg_target_port
        start_legate legate-pg "$(legate_head db "$pg_target_port")
upstreams:
  - name: up
    endpoints: [\"127.0.0.1:$pg_port\"]
    tls: { mode: postgres, ca: $ca, server_name: localhost }" || return 1
        proxy_pids=$launched
        proxy_logs="$work/legate-pg/legate.log"
        ;;
    stunnel)
        pick_port pg_target_port
        # stunnel's pgsql protocol (client mode) sends the SSLRequest itself.
        start_stunnel stunnel-pg "client = yes
accept = 127.0.0.1:$pg_target_port
connect = 127.0.0.1:$pg_port
protocol = pgsql
CAfile = $ca
verifyChain = yes
checkHost = localhost
sni = localhost"
        proxy_pids=$launched
        proxy_logs="$work/stunnel-pg/stunnel.log $work/stunnel-pg/stderr.log"
        ;;
    esac
    if [[ -n $proxy_pids ]] && ! wait_port "$pg_target_port" "$proxy_pids"; then
        show_proxy_logs
        return 1
    fi
}

# pg_one ROUND SYSTEM: one warm-up and one measured pgbench -S run.
pg_one() {
    local round=$1 sys=$2 key="$1|$2" out env0 ssl t0 t1 ticks foreign0 wall0 tps txn secs failed
    log "pgbench round $round: $sys"
    if ! pg_start "$sys"; then
        fail "pgbench round $round, $sys: the proxy did not start"
        stop_proxies
        return 0
    fi
    mapfile -t env0 < <(pg_env "$sys" "$pg_target_port")
    # The server must see this session as TLS, whichever way it came.
    ssl=$(env "${env0[@]}" psql -Atqc 'select ssl from pg_stat_ssl where pid = pg_backend_pid()' 2>"$work/psql.err" || true)
    if [[ $ssl != t ]]; then
        tail_log "$work/psql.err"
        show_proxy_logs
        fail "pgbench round $round, $sys: psql through it failed or the server session is not TLS (ssl='$ssl')"
        stop_proxies
        return 0
    fi
    wait_quiet
    foreign0=$(others_ticks)
    wall0=$(now)
    if ((warmup_s > 0)); then
        env "${env0[@]}" taskset -c "$LOAD_CPU" pgbench -n -S -c "$PG_CLIENTS" -j "$PG_THREADS" -T "$warmup_s" \
            >/dev/null 2>&1 || warn "pgbench $sys: warm-up run failed"
    fi
    out=$work/pgbench.$round.$sys.txt
    t0=$(proxy_ticks)
    if ! env "${env0[@]}" taskset -c "$LOAD_CPU" pgbench -n -S -c "$PG_CLIENTS" -j "$PG_THREADS" -T "$duration_s" \
        >"$out" 2>&1; then
        tail_log "$out"
        show_proxy_logs
        fail "pgbench round $round, $sys: pgbench failed"
        stop_proxies
        return 0
    fi
    t1=$(proxy_ticks)
    pg_other[$key]=$(other_pct "$foreign0" "$wall0")
    tps=$(awk '/^tps = / { print $3; exit }' "$out")
    txn=$(awk -F': *' '/number of transactions actually processed/ { print $2 }' "$out")
    failed=$(awk -F': *' '/number of failed transactions/ { split($2, a, " "); print a[1] }' "$out")
    if [[ -z $tps || -z $txn ]] || ((txn == 0)); then
        tail_log "$out"
        fail "pgbench round $round, $sys: no transactions"
    else
        pg_tps[$key]=$(fmt "$tps" "%.0f")
        pg_txn[$key]=$txn
        if [[ $sys != direct ]]; then
            ticks=$((t1 - t0))
            pg_cpu[$key]=$(awk -v t="$ticks" -v hz="$clk_tck" -v n="$txn" 'BEGIN { printf "%.4f", t / hz / n * 1000 }')
            pg_util[$key]=$(awk -v t="$ticks" -v hz="$clk_tck" -v s="$duration_s" 'BEGIN { printf "%.0f", 100 * t / hz / s }')
        fi
        if [[ -n $failed && $failed != 0 ]]; then
            note "pgbench round $round, $sys: $failed failed transactions"
        fi
    fi
    ((${pg_other[$key]} > FOREIGN_WARN_PCT)) &&
        note "pgbench round $round, $sys: other processes used ${pg_other[$key]}% of a core; left out of the median"
    alive_all || fail "pgbench round $round, $sys: the proxy died during the run"
    log "pgbench $sys: ${pg_tps[$key]:-?} tps, ${pg_cpu[$key]:-–} proxy CPU s/1k tx, proxy core ${pg_util[$key]:-–}%, others ${pg_other[$key]}%"
    stop_proxies
    sleep 0.5
}

alive_all() {
    local p
    for p in $proxy_pids; do alive "$p" || return 1; done
}

# ========================================================== part 2: bulk ====
declare -A bulk_mbs bulk_cpu bulk_other bulk_rmed
bulk_systems=(direct)
((legate_ok)) && bulk_systems+=(legate)
command -v haproxy >/dev/null 2>&1 && bulk_systems+=(haproxy)
((legate_ok)) && bulk_systems+=(legate-tls)
bulk_systems+=(stunnel-tls)

bulk_setup() {
    pick_port sink_port
    launch "$LOAD_CPU" "$work/sink.log" "$PYTHON" "$tool" sink --port "$sink_port"
    sink_pid=$launched
    wait_line "$work/sink.log" '^listening' "$sink_pid" || {
        tail_log "$work/sink.log"
        return 1
    }
    log "bulk sink on 127.0.0.1:$sink_port (pid $sink_pid, cpu $LOAD_CPU)"
}

# bulk_start SYSTEM: sets $bulk_port (where the source connects).
bulk_start() {
    local pa pb
    proxy_pids=""
    proxy_logs=""
    case $1 in
    direct)
        bulk_port=$sink_port
        return 0
        ;;
    legate)
        pick_port bulk_port
        # The quick mode: a plain TCP tunnel.
        launch "$PROXY_CPU" "$work/legate-bulk.log" "$LEGATE_BIN" tcp --listen "127.0.0.1:$bulk_port" \
            --upstream "127.0.0.1:$sink_port" --admin off --access-log off --workers 1
        proxy_pids=$launched
        proxy_logs="$work/legate-bulk.log"
        ;;
    haproxy)
        # The plain-tunnel reference: HAProxy in TCP mode, one thread, splicing when it can.
        pick_port bulk_port
        mkdir -p "$work/haproxy"
        printf '%s\n' "global" "  nbthread 1" "defaults" "  mode tcp" "  option splice-auto" \
            "  timeout connect 5s" "  timeout client 1h" "  timeout server 1h" \
            "frontend f" "  bind 127.0.0.1:$bulk_port" "  default_backend b" \
            "backend b" "  server s 127.0.0.1:$sink_port" >"$work/haproxy/haproxy.cfg"
        launch "$PROXY_CPU" "$work/haproxy/haproxy.log" haproxy -db -f "$work/haproxy/haproxy.cfg"
        proxy_pids=$launched
        proxy_logs="$work/haproxy/haproxy.log"
        ;;
    legate-tls)
        pick_port pb
        pick_port bulk_port
        start_legate legate-b "$(legate_head b "$pb")
    tls: { cert: $pki/server.pem, key: $pki/server.key, client_ca: $ca }
upstreams:
  - name: up
    endpoints: [\"127.0.0.1:$sink_port\"]" || return 1
        proxy_pids=$launched
        start_legate legate-a "$(legate_head a "$bulk_port")
upstreams:
  - name: up
    endpoints: [\"127.0.0.1:$pb\"]
    tls: { ca: $ca, client_cert: $pki/client.pem, client_key: $pki/client.key, server_name: localhost }" || return 1
        proxy_pids+=" $launched"
        proxy_logs="$work/legate-a/legate.log $work/legate-b/legate.log"
        wait_port "$pb" "${proxy_pids%% *}" || return 1
        ;;
    stunnel-tls)
        pick_port pb
        pick_port bulk_port
        start_stunnel stunnel-b "$(stunnel_server "$pb" "$sink_port")"
        proxy_pids=$launched
        start_stunnel stunnel-a "client = yes
accept = 127.0.0.1:$bulk_port
connect = 127.0.0.1:$pb
cert = $pki/client.pem
key = $pki/client.key
CAfile = $ca
verifyChain = yes
checkHost = localhost
sni = localhost"
        proxy_pids+=" $launched"
        proxy_logs="$work/stunnel-a/stunnel.log $work/stunnel-b/stunnel.log $work/stunnel-a/stderr.log $work/stunnel-b/stderr.log"
        wait_port "$pb" "${proxy_pids%% *}" || return 1
        ;;
    esac
    wait_port "$bulk_port" "${proxy_pids##* }"
}

# transfer PORT BYTES: one source run; prints MB/s (empty on failure).
transfer() {
    local json
    json=$(taskset -c "$LOAD_CPU" "$PYTHON" "$tool" source --port "$1" --bytes "$2" 2>>"$work/source.err") || {
        printf '%s\n' "$json" >>"$work/source.err"
        return 1
    }
    sed -n 's/.*"mb_per_s": \([0-9.]*\).*/\1/p' <<<"$json"
}

bulk_one() {
    local round=$1 sys=$2 i mbs t0 t1 foreign0 wall0 vals=() ticks
    log "bulk round $round: $sys"
    if ! bulk_start "$sys"; then
        show_proxy_logs
        fail "bulk round $round, $sys: the proxy did not start"
        stop_proxies
        return 0
    fi
    # Warm-up transfer (64 MiB, not counted); it also proves the path carries every byte.
    if ! transfer "$bulk_port" 67108864 >/dev/null; then
        tail_log "$work/source.err"
        show_proxy_logs
        fail "bulk round $round, $sys: the warm-up transfer failed"
        stop_proxies
        return 0
    fi
    wait_quiet
    foreign0=$(others_ticks)
    wall0=$(now)
    t0=$(proxy_ticks)
    for ((i = 1; i <= BULK_REPEAT; i++)); do
        if mbs=$(transfer "$bulk_port" "$BULK_BYTES") && [[ -n $mbs ]]; then
            vals+=("$mbs")
            bulk_mbs["$round|$sys|$i"]=$mbs
        else
            tail_log "$work/source.err"
            show_proxy_logs
            fail "bulk round $round, $sys, transfer $i: failed or incomplete"
        fi
    done
    t1=$(proxy_ticks)
    bulk_other["$round|$sys"]=$(other_pct "$foreign0" "$wall0")
    bulk_rmed["$round|$sys"]=$(median ${vals[@]+"${vals[@]}"})
    if [[ $sys != direct ]] && ((${#vals[@]})); then
        ticks=$((t1 - t0))
        # CPU seconds of the proxy (both processes for a pair) per GiB carried.
        bulk_cpu["$round|$sys"]=$(awk -v t="$ticks" -v hz="$clk_tck" -v n="${#vals[@]}" -v b="$BULK_BYTES" \
            'BEGIN { printf "%.3f", t / hz / (n * b / 1073741824) }')
    fi
    ((${bulk_other[$round|$sys]} > FOREIGN_WARN_PCT)) &&
        note "bulk round $round, $sys: other processes used ${bulk_other[$round|$sys]}% of a core; left out of the median"
    log "bulk $sys: ${vals[*]:-none} MB/s, proxy ${bulk_cpu[$round|$sys]:-–} CPU s/GiB, others ${bulk_other[$round|$sys]}%"
    stop_proxies
    sleep 0.3
}

# ======================================================== part 3: memory ====
declare -A mem_before mem_idle mem_per mem_busy_idle mem_busy_peak mem_busy_mbs mem_held
mem_systems=()
((legate_ok)) && mem_systems+=(legate legate-tls-client)
mem_systems+=(stunnel-client)
((legate_ok)) && mem_systems+=(legate-tls-server)
mem_systems+=(stunnel-server)

mem_label() {
    case $1 in
    legate) echo "legate plain tunnel" ;;
    legate-tls-client) echo "legate, plain in → TLS out" ;;
    stunnel-client) echo "stunnel client, plain in → TLS out" ;;
    legate-tls-server) echo "legate, mTLS in → plain out" ;;
    stunnel-server) echo "stunnel server, mTLS in → plain out" ;;
    esac
}

mem_setup() {
    pick_port hold_port
    pick_port hold_tls_port
    launch "$LOAD_CPU" "$work/hold.log" "$PYTHON" "$tool" hold --port "$hold_port"
    hold_pid=$launched
    launch "$LOAD_CPU" "$work/hold-tls.log" "$PYTHON" "$tool" hold --port "$hold_tls_port" \
        --cert "$pki/server.pem" --key "$pki/server.key"
    hold_tls_pid=$launched
    wait_line "$work/hold.log" '^listening' "$hold_pid" && wait_line "$work/hold-tls.log" '^listening' "$hold_tls_pid" || {
        tail_log "$work/hold.log"
        tail_log "$work/hold-tls.log"
        return 1
    }
    log "holders on 127.0.0.1:$hold_port (plain) and :$hold_tls_port (TLS), cpu $LOAD_CPU"
}

# mem_start SYSTEM: one proxy; sets $mem_port, $mem_admin (legate) and $client_tls (the
# clients' TLS arguments, for the systems that take TLS from the client).
mem_start() {
    proxy_pids=""
    proxy_logs=""
    mem_admin=""
    client_tls=()
    pick_port mem_port
    case $1 in
    legate | legate-tls-client | legate-tls-server)
        pick_port mem_admin
        local listen_extra="" up_port=$hold_port up_extra=""
        case $1 in
        legate-tls-client)
            up_port=$hold_tls_port
            up_extra="
    tls: { ca: $ca, server_name: localhost }"
            ;;
        legate-tls-server)
            listen_extra="
    tls: { cert: $pki/server.pem, key: $pki/server.key, client_ca: $ca }"
            client_tls=(--ca "$ca" --server-name localhost --cert "$pki/client.pem" --key "$pki/client.key")
            ;;
        esac
        start_legate "mem-$1" "$(legate_head m "$mem_port" "$mem_admin")$listen_extra
upstreams:
  - name: up
    endpoints: [\"127.0.0.1:$up_port\"]$up_extra" || return 1
        proxy_pids=$launched
        proxy_logs="$work/mem-$1/legate.log"
        ;;
    stunnel-client)
        start_stunnel "mem-$1" "client = yes
accept = 127.0.0.1:$mem_port
connect = 127.0.0.1:$hold_tls_port
CAfile = $ca
verifyChain = yes
checkHost = localhost
sni = localhost"
        proxy_pids=$launched
        proxy_logs="$work/mem-$1/stunnel.log"
        ;;
    stunnel-server)
        start_stunnel "mem-$1" "$(stunnel_server "$mem_port" "$hold_port")"
        proxy_pids=$launched
        proxy_logs="$work/mem-$1/stunnel.log"
        client_tls=(--ca "$ca" --server-name localhost --cert "$pki/client.pem" --key "$pki/client.key")
        ;;
    esac
    wait_port "$mem_port" "$proxy_pids"
}

# legate_active: legate_tcp_connections_active from the admin endpoint (empty if none).
legate_active() {
    curl --noproxy '*' -s -m 2 "http://127.0.0.1:$mem_admin/metrics" 2>/dev/null |
        awk '/^legate_tcp_connections_active[{ ]/ { s += $NF; f = 1 } END { if (f) print s }'
}

# established PORT: client connections established to 127.0.0.1:PORT (as the kernel sees them).
established() {
    ss -Htn state established "( sport = :$1 )" 2>/dev/null | wc -l
}

# clients_warm: a few connections through the proxy and closed again, to fault in the code
# and the allocator before the "before" reading.
clients_warm() {
    taskset -c "$LOAD_CPU" "$PYTHON" "$tool" clients --port "$mem_port" --connections 20 \
        ${client_tls[@]+"${client_tls[@]}"} </dev/null >"$work/warm.out" 2>&1
}

mem_idle_one() {
    local sys=$1 pid cpid held deadline active est rss0 rss1 out=$work/hold.$1.out
    log "memory: $sys, $HOLD_CONNECTIONS idle connections"
    if ! mem_start "$sys"; then
        show_proxy_logs
        fail "memory $sys: the proxy did not start"
        stop_proxies
        return 0
    fi
    pid=$proxy_pids
    if ! clients_warm || ! grep -q '"errors": 0' "$work/warm.out"; then
        tail_log "$work/warm.out"
        show_proxy_logs
        fail "memory $sys: connections through the proxy fail"
        stop_proxies
        return 0
    fi
    wait_quiet
    rss0=$(rss_kib "$pid")
    mem_before[$sys]=$rss0
    rm -f "$work/release"
    taskset -c "$LOAD_CPU" "$PYTHON" "$tool" clients --port "$mem_port" --connections "$HOLD_CONNECTIONS" \
        --until-file "$work/release" ${client_tls[@]+"${client_tls[@]}"} </dev/null >"$out" 2>&1 &
    cpid=$!
    pids+=("$cpid")
    if ! wait_line "$out" '^holding ' "$cpid" 120; then
        tail_log "$out"
        fail "memory $sys: the clients never reported their connections"
        touch "$work/release"
        forget "$cpid"
        stop_proxies
        return 0
    fi
    held=$(awk '/^holding / { print $2 }' "$out")
    mem_held[$sys]=$held
    ((held == HOLD_CONNECTIONS)) || note "memory $sys: only $held of $HOLD_CONNECTIONS connections were established"
    # Wait until the proxy carries them all (legate: its own gauge; stunnel: the kernel's count).
    deadline=$((SECONDS + 20))
    while :; do
        est=$(established "$mem_port")
        active=""
        [[ -n $mem_admin ]] && active=$(legate_active)
        if [[ -n $mem_admin ]]; then
            [[ ${active:-0} -ge $held ]] && break
        else
            ((est >= held)) && break
        fi
        if ((SECONDS > deadline)); then
            note "memory $sys: the proxy reports ${active:-?} active, the kernel $est established (of $held)"
            break
        fi
        sleep 0.1
    done
    sleep 1
    rss1=$(rss_kib "$pid")
    mem_idle[$sys]=$rss1
    mem_per[$sys]=$(awk -v a="$rss0" -v b="$rss1" -v n="$held" 'BEGIN { if (n > 0) printf "%.0f", (b - a) * 1024 / n }')
    log "memory $sys: RSS $rss0 KiB before, $rss1 KiB with $held idle (legate active: ${active:-–}; established: $est) = ${mem_per[$sys]} B/conn"
    touch "$work/release"
    wait_pid_or_kill "$cpid" 20
    alive_all || fail "memory $sys: the proxy died"
    stop_proxies
    sleep 0.3
}

# wait_pid_or_kill PID SECONDS
wait_pid_or_kill() {
    local deadline=$((SECONDS + $2))
    while alive "$1" && ((SECONDS <= deadline)); do sleep 0.1; done
    forget "$1"
}

mem_busy_one() {
    local sys=$1 pid cpid rss0 peak=0 r out=$work/busy.$1.out json bytes
    log "memory: $sys, $BUSY_CONNECTIONS connections streaming for ${BUSY_SECONDS}s"
    if ! mem_start "$sys"; then
        show_proxy_logs
        fail "memory (busy) $sys: the proxy did not start"
        stop_proxies
        return 0
    fi
    pid=$proxy_pids
    clients_warm || true
    wait_quiet
    rss0=$(rss_kib "$pid")
    mem_busy_idle[$sys]=$rss0
    taskset -c "$LOAD_CPU" "$PYTHON" "$tool" clients --port "$mem_port" --connections "$BUSY_CONNECTIONS" \
        --stream-seconds "$BUSY_SECONDS" ${client_tls[@]+"${client_tls[@]}"} </dev/null >"$out" 2>&1 &
    cpid=$!
    pids+=("$cpid")
    while alive "$cpid"; do
        r=$(rss_kib "$pid")
        ((r > peak)) && peak=$r
        sleep 0.1
    done
    forget "$cpid"
    r=$(hwm_kib "$pid")
    ((r > peak)) && peak=$r
    mem_busy_peak[$sys]=$peak
    json=$(grep '^{' "$out" || true)
    bytes=$(sed -n 's/.*"streamed_bytes": \([0-9]*\).*/\1/p' <<<"$json")
    if [[ -z $bytes ]] || ! grep -q "^streaming $BUSY_CONNECTIONS\$" "$out"; then
        tail_log "$out"
        fail "memory (busy) $sys: the streaming clients failed"
    else
        mem_busy_mbs[$sys]=$(awk -v b="$bytes" -v s="$BUSY_SECONDS" 'BEGIN { printf "%.0f", b / s / 1e6 }')
        grep -q '"errors": 0' "$out" || note "memory (busy) $sys: $json"
    fi
    log "memory $sys busy: RSS $rss0 KiB idle, peak $peak KiB, ${mem_busy_mbs[$sys]:-?} MB/s streamed"
    alive_all || fail "memory (busy) $sys: the proxy died"
    stop_proxies
    sleep 0.3
}

# ================================================================== run =====
if has_part pgbench; then
    if pg_setup; then
        log "postgres $pg_version ready"
    else
        fail "PostgreSQL setup failed; pgbench part skipped"
        PARTS=${PARTS//pgbench/}
    fi
fi
if has_part bulk; then
    bulk_setup || {
        fail "bulk sink did not start; bulk part skipped"
        PARTS=${PARTS//bulk/}
    }
fi

for ((round = 1; round <= ROUNDS; round++)); do
    if has_part pgbench; then
        for sys in $(order_for "$round" "${pg_systems[@]}"); do pg_one "$round" "$sys"; done
    fi
    if has_part bulk; then
        for sys in $(order_for "$round" "${bulk_systems[@]}"); do bulk_one "$round" "$sys"; done
    fi
done
if has_part pgbench; then
    forget "$pg_pid"
fi
if has_part bulk; then
    forget "$sink_pid"
fi

if has_part memory; then
    if mem_setup; then
        for sys in "${mem_systems[@]}"; do mem_idle_one "$sys"; done
        for sys in "${mem_systems[@]}"; do mem_busy_one "$sys"; done
    else
        fail "holder servers did not start; memory part skipped"
    fi
fi

# ================================================================ report ====
label() {
    case $1 in
    direct) echo "direct" ;;
    legate) echo "legate" ;;
    stunnel) echo "stunnel $stunnel_version" ;;
    legate-tls) echo "legate pair (mTLS)" ;;
    haproxy) echo "HAProxy $(haproxy -v 2>/dev/null | sed -n 's/^HAProxy version \([0-9.]*\).*/\1/p') (mode tcp)" ;;
    stunnel-tls) echo "stunnel $stunnel_version pair (mTLS)" ;;
    *) mem_label "$1" ;;
    esac
}
target() { # VALUE OP LIMIT -> "met"/"missed" (VALUE may be followed by " (n=…)")
    set -- "${1%% *}" "$2" "$3"
    if [[ -z $1 || $1 == n/a ]]; then echo "n/a"; return; fi
    if awk -v v="$1" -v l="$3" -v op="$2" 'BEGIN { exit !((op == ">=") ? v >= l : v <= l) }'; then
        echo "met"
    else
        echo "**missed**"
    fi
}

report=$work/report.md
{
    echo "# TCP tunnels: legate vs stunnel $stunnel_version"
    echo
    if has_part pgbench; then
        declare -A med_tps med_cpu
        echo "## 1. PostgreSQL: pgbench -S (select-only), TLS to the server"
        echo
        echo "\`pgbench -n -S -c $PG_CLIENTS -j $PG_THREADS -T $duration_s\` (after a ${warmup_s}s warm-up), scale $PG_SCALE, PostgreSQL ${pg_version:-?}."
        echo "direct: \`sslmode=verify-full\` to the server; legate (\`tls: { mode: postgres }\`) and stunnel (\`protocol = pgsql\`):"
        echo "\`sslmode=disable\` to the proxy, TLS with verification from the proxy to the server (checked per run in \`pg_stat_ssl\`)."
        echo
        echo "| system | tps median | spread (runs) | vs direct | proxy CPU s / 1k tx | proxy core % |"
        echo "|---|---:|---:|---:|---:|---:|"
        for sys in "${pg_systems[@]}"; do
            # Medians over the quiet runs; over all of them only if none was quiet.
            t=()
            c=()
            u=()
            for pass in clean all; do
                for ((r = 1; r <= ROUNDS; r++)); do
                    [[ -n ${pg_tps[$r|$sys]:-} ]] || continue
                    [[ $pass == clean ]] && ((${pg_other[$r|$sys]:-0} > FOREIGN_WARN_PCT)) && continue
                    t+=("${pg_tps[$r|$sys]}")
                    c+=("${pg_cpu[$r|$sys]:-}")
                    u+=("${pg_util[$r|$sys]:-}")
                done
                ((${#t[@]})) && break
            done
            runs="n=${#t[@]}"
            [[ $pass == all ]] && ((${#t[@]})) && runs+=", all noisy"
            med_tps[$sys]=$(median ${t[@]+"${t[@]}"})
            med_cpu[$sys]=$(median ${c[@]+"${c[@]}"})
            mu=$(median ${u[@]+"${u[@]}"})
            printf '| %s | %s | %s | %s | %s | %s |\n' "$(label "$sys")" "$(cell "$(fmt "${med_tps[$sys]:-}" %.0f)")" \
                "$(cell "$(spread ${t[@]+"${t[@]}"})") ($runs)" "$(ratio "${med_tps[$sys]:-}" "${med_tps[direct]:-}")" \
                "$(if [[ $sys == direct ]]; then echo –; else cell "$(fmt "${med_cpu[$sys]:-}" %.4f)"; fi)" \
                "$(if [[ $sys == direct ]]; then echo –; else cell "$(fmt "$mu" %.0f)"; fi)"
        done
        echo
        lr=$(paired pg_tps pg_other legate direct)
        sr=$(paired pg_tps pg_other stunnel direct)
        echo "- Per-round ratios (median over the rounds where both runs were quiet): legate / direct = $lr,"
        echo "  target ≥ 0.90: $(target "$lr" '>=' 0.9); stunnel / direct = $sr; legate / stunnel = $(paired pg_tps pg_other legate stunnel)."
        if [[ -n ${med_cpu[legate]:-} && -n ${med_cpu[stunnel]:-} ]]; then
            echo "- proxy CPU per transaction: legate / stunnel = $(ratio "${med_cpu[legate]}" "${med_cpu[stunnel]}")."
        fi
        echo "- Per round (tps; proxy CPU s/1k tx; other processes' CPU %, * = above ${FOREIGN_WARN_PCT}%, left out of the median):"
        for ((r = 1; r <= ROUNDS; r++)); do
            line="  round $r:"
            for sys in $(order_for "$r" "${pg_systems[@]}"); do
                line+=" $sys ${pg_tps[$r|$sys]:-FAILED}"
                [[ -n ${pg_cpu[$r|$sys]:-} ]] && line+="; ${pg_cpu[$r|$sys]}"
                line+="; ${pg_other[$r|$sys]:-?}%"
                ((${pg_other[$r|$sys]:-0} > FOREIGN_WARN_PCT)) && line+="*"
                line+=" ·"
            done
            echo "${line% ·}"
        done
        echo
    fi
    if has_part bulk; then
        declare -A med_mbs
        echo "## 2. Bulk throughput, $(awk -v b="$BULK_BYTES" 'BEGIN { printf (b >= 1073741824 ? "%.1f GiB" : "%.0f MiB"), (b >= 1073741824 ? b / 1073741824 : b / 1048576) }') per transfer"
        echo
        echo "One connection; the source sends a length header and the bytes (1 MiB sends), the sink counts them and"
        echo "answers; time from connect() to that answer ($BULK_REPEAT transfer(s) per system per round, after a 64 MiB warm-up)."
        echo
        echo "| system | MB/s median | spread (transfers) | vs direct | proxy CPU s / GiB |"
        echo "|---|---:|---:|---:|---:|"
        for sys in "${bulk_systems[@]}"; do
            v=()
            c=()
            for pass in clean all; do
                for ((r = 1; r <= ROUNDS; r++)); do
                    [[ $pass == clean ]] && ((${bulk_other[$r|$sys]:-0} > FOREIGN_WARN_PCT)) && continue
                    for ((i = 1; i <= BULK_REPEAT; i++)); do
                        [[ -n ${bulk_mbs[$r|$sys|$i]:-} ]] && v+=("${bulk_mbs[$r|$sys|$i]}")
                    done
                    [[ -n ${bulk_cpu[$r|$sys]:-} ]] && c+=("${bulk_cpu[$r|$sys]}")
                done
                ((${#v[@]})) && break
            done
            runs="n=${#v[@]}"
            [[ $pass == all ]] && ((${#v[@]})) && runs+=", all noisy"
            med_mbs[$sys]=$(median ${v[@]+"${v[@]}"})
            mc=$(median ${c[@]+"${c[@]}"})
            printf '| %s | %s | %s | %s | %s |\n' "$(label "$sys")" "$(cell "$(fmt "${med_mbs[$sys]:-}" %.0f)")" \
                "$(cell "$(spread ${v[@]+"${v[@]}"})") ($runs)" "$(ratio "${med_mbs[$sys]:-}" "${med_mbs[direct]:-}")" \
                "$(if [[ $sys == direct ]]; then echo –; else cell "$(fmt "$mc" %.3f)"; fi)"
        done
        echo
        lr=$(paired bulk_rmed bulk_other legate direct)
        pr=$(paired bulk_rmed bulk_other legate-tls stunnel-tls)
        echo "- Per-round ratios (of each round's median transfer; median over the rounds where both runs were quiet):"
        echo "  legate plain tunnel / direct = $lr, target ≥ 0.90: $(target "$lr" '>=' 0.9);"
        echo "  legate plain tunnel / HAProxy (mode tcp) = $(paired bulk_rmed bulk_other legate haproxy);"
        echo "  legate mTLS pair / stunnel mTLS pair = $pr, target ≥ 1.00: $(target "$pr" '>=' 1.0)."
        echo "- The proxy column counts both processes of a pair. Direct: source and sink share core $LOAD_CPU; with a proxy,"
        echo "  the proxy adds core $PROXY_CPU, so a ratio above 1 is possible."
        echo "- Per round (MB/s of each transfer; other processes' CPU %, * = above ${FOREIGN_WARN_PCT}%, left out of the median):"
        for ((r = 1; r <= ROUNDS; r++)); do
            line="  round $r:"
            for sys in $(order_for "$r" "${bulk_systems[@]}"); do
                line+=" $sys"
                for ((i = 1; i <= BULK_REPEAT; i++)); do line+=" $(cell "$(fmt "${bulk_mbs[$r|$sys|$i]:-}" %.0f)")"; done
                line+="; ${bulk_other[$r|$sys]:-?}%"
                ((${bulk_other[$r|$sys]:-0} > FOREIGN_WARN_PCT)) && line+="*"
                line+=" ·"
            done
            echo "${line% ·}"
        done
        echo
    fi
    if has_part memory; then
        echo "## 3. Memory per connection"
        echo
        echo "RSS (VmRSS) of the proxy process after 20 warm-up connections, then with $HOLD_CONNECTIONS client connections open"
        echo "and idle (each carried \"hello\\n\" up and \"ok\\n\" back first); then, with a fresh proxy, the peak RSS"
        echo "(VmHWM / 0.1 s samples) while $BUSY_CONNECTIONS connections stream 64 KiB writes for ${BUSY_SECONDS}s into a discarding holder."
        echo
        echo "| system | RSS before MiB | RSS @$HOLD_CONNECTIONS idle MiB | bytes / idle conn | busy: peak RSS MiB | busy: peak − idle MiB | busy MB/s |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
        for sys in "${mem_systems[@]}"; do
            printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$(label "$sys")" \
                "$(cell "$(mib "${mem_before[$sys]:-}")")" "$(cell "$(mib "${mem_idle[$sys]:-}")")" \
                "$(cell "${mem_per[$sys]:-}")" \
                "$(cell "$(mib "${mem_busy_peak[$sys]:-}")")" \
                "$(cell "$([[ -n ${mem_busy_peak[$sys]:-} ]] && awk -v k="${mem_busy_peak[$sys]}" -v i="${mem_busy_idle[$sys]}" 'BEGIN { printf "%.1f", (k - i) / 1024 }')")" \
                "$(cell "${mem_busy_mbs[$sys]:-}")"
        done
        echo
        echo "- legate plain tunnel: ${mem_per[legate]:-n/a} bytes per idle connection (target ≤ 1024: $(target "${mem_per[legate]:-}" '<=' 1024))."
        echo "- RSS only: the kernel's socket buffers are not in it (the same for every system)."
        echo
    fi
    if ((${#notes[@]})); then
        echo "Notes:"
        for n in "${notes[@]}"; do printf -- '- %s\n' "$n"; done
        echo
    fi
    printf 'Run %s on %s (%s CPUs, Linux %s); OpenSSL %s, Python %s. ' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo unknown)" \
        "$ncpu" "$(uname -r)" "$openssl_version" "$python_version"
    printf 'Proxies (legate `runtime.workers: 1`, `access_log: off`; stunnel default threads) on cpu %s; PostgreSQL, pgbench and the python source/sink/holders (bench/tcp_tool.py) on cpu %s. ' \
        "$PROXY_CPU" "$LOAD_CPU"
    printf 'ROUNDS=%s DURATION=%s BULK_BYTES=%s BULK_REPEAT=%s; systems alternate their order from round to round.\n' \
        "$ROUNDS" "$DURATION" "$BULK_BYTES" "$BULK_REPEAT"
} >"$report"

mkdir -p -- "$(dirname -- "$RESULTS_FILE")"
cp -- "$report" "$RESULTS_FILE"
cat -- "$report"
log "report written to $RESULTS_FILE"
if ((failures)); then
    err "$failures run(s) failed; see the notes in the report"
    exit 1
fi
