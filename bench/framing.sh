#!/usr/bin/env bash
# bench/framing.sh - the request framing corpus (crates/legate/tests/h1_request_corpus.rs) run
# against legate, nginx and HAProxy, each in front of the same echo upstream
# (bench/framing_echo.py), side by side: what each proxy answers to each case and whether it
# closed the connection after a refusal. A behaviour table, not a timing.
#
# Usage:   bash bench/framing.sh
# Env:     SYSTEMS (default "legate nginx haproxy") RESULTS_FILE KEEP_TMP LEGATE_BIN
# The markdown report goes to stdout and $RESULTS_FILE (bench/results/framing-latest.md).
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
root=$(cd -- "$here/.." && pwd)

SYSTEMS=${SYSTEMS:-legate nginx haproxy}
RESULTS_FILE=${RESULTS_FILE:-$root/bench/results/framing-latest.md}
KEEP_TMP=${KEEP_TMP:-0}
LEGATE_BIN=${LEGATE_BIN:-$root/target/release/legate}

log() { printf '[framing] %s\n' "$*" >&2; }
die() {
    printf '[framing] ERROR: %s\n' "$*" >&2
    exit 1
}

declare -A chosen_ports=()
pids=()
work=$(mktemp -d "${TMPDIR:-/tmp}/legate-framing.XXXXXX")
trap cleanup EXIT
nginx_modules=$(nginx -V 2>&1 || true)

[[ -x $LEGATE_BIN ]] || (cd "$root" && cargo build --release -p legate >&2)
# The corpus runner: the test binary in its external-proxy mode.
(cd "$root" && cargo test --release --no-run --test h1_request_corpus >&2)

pick_port up
python3 "$here/framing_echo.py" "$up" >"$work/echo.log" 2>&1 &
pids+=("$!")

start() { # SYSTEM PORT
    local sys=$1 port=$2 dir=$work/$1
    mkdir -p "$dir"
    case $sys in
    legate)
        "$LEGATE_BIN" http --listen "127.0.0.1:$port" --upstream "http://127.0.0.1:$up" \
            --admin off --access-log off --workers 1 >"$dir/out.log" 2>&1 &
        ;;
    nginx)
        {
            echo "daemon off; worker_processes 1;"
            nginx_common "$dir"
            echo "    server { listen 127.0.0.1:$port;"
            echo "        location / { proxy_pass http://127.0.0.1:$up; proxy_http_version 1.1; } } }"
        } >"$dir/nginx.conf"
        nginx -c "$dir/nginx.conf" -p "$dir" >"$dir/out.log" 2>&1 &
        ;;
    haproxy)
        printf '%s\n' "global" "    nbthread 1" "defaults" "    mode http" "    timeout connect 5s" \
            "    timeout client 30s" "    timeout server 30s" "frontend fe" \
            "    bind 127.0.0.1:$port" "    default_backend be" "backend be" \
            "    server s1 127.0.0.1:$up" >"$dir/haproxy.cfg"
        haproxy -db -f "$dir/haproxy.cfg" >"$dir/out.log" 2>&1 &
        ;;
    esac
    pids+=("$!")
    for _ in $(seq 100); do
        (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.05
    done
    die "$sys did not listen on $port (see $dir/out.log)"
}

declare -A outcome=()
names=()
labels=()
for sys in $SYSTEMS; do
    command -v "$([[ $sys == legate ]] && echo "$LEGATE_BIN" || echo "$sys")" >/dev/null 2>&1 ||
        { log "$sys: not installed, skipped"; continue; }
    pick_port port
    start "$sys" "$port"
    log "$sys on 127.0.0.1:$port"
    out=$(cd "$root" && CORPUS_PROXY="127.0.0.1:$port" cargo test -q --release \
        --test h1_request_corpus -- --nocapture 2>&1 | grep '^CASE' || true)
    [[ -n $out ]] || die "$sys: the corpus runner printed nothing"
    labels+=("$sys")
    while IFS=$'\t' read -r _ name seen; do
        [[ " ${names[*]} " == *" $name "* ]] || names+=("$name")
        outcome[$name,$sys]=$seen
    done <<<"$out"
done

{
    echo "# Request framing corpus: what each proxy answers"
    echo
    printf '| case |'
    printf ' %s |' "${labels[@]}"
    echo
    printf '|---|'
    printf -- '---|%.0s' "${labels[@]}"
    echo
    for n in "${names[@]}"; do
        printf '| %s |' "$n"
        for s in "${labels[@]}"; do printf ' %s |' "${outcome[$n,$s]:-–}"; done
        echo
    done
    echo
    echo "Each cell: the status of the first answer (\`fwd\` = the upstream's 200, i.e. forwarded;"
    echo "\`none\` = no answer), then \`closed\` when the proxy closed the connection after it."
    echo "Pipelined cases show every answer. Run $(date -u +%Y-%m-%dT%H:%M:%SZ)."
} | tee "$RESULTS_FILE"
