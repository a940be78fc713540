# bench/variants.sh - shared by the benches that compare legate with itself under different
# configs (policies.sh, tracing.sh): one static nginx upstream, legate pinned to core 0, the
# upstream and wrk on core 1, configs alternated round by round (ABBA for two, rotated for
# more: whichever runs later in a round gets a warmer machine).
#
# The including script defines `config VARIANT PORT` (prints legate's YAML; $up_port is the
# upstream's port) and calls `variants_main VARIANT...`. Env: ROUNDS DURATION LEGATE_BIN.
#
# MEASURE=instructions counts instead of timing (valgrind's callgrind; deterministic to about
# 1%, where wall-clock CPU on this shared machine moves by 20%): each variant serves the same
# number of requests at a fixed rate (REQUESTS at 300/s on 16 keep-alive connections, after
# a warm-up that is not counted), and the table gives legate's user-space instructions per
# request. Kernel time is not in it: the last lines convert with the first variant's own split
# of CPU time into user and system time under wrk, so a difference in instructions can be
# read against the whole CPU cost of a request.
set -euo pipefail
root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-5s}
LEGATE_BIN=${LEGATE_BIN:-$root/target/release/legate}
[[ -x $LEGATE_BIN ]] || (cd "$root" && cargo build --release -p legate >&2)
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up_port=$(free_port)
cat > "$tmp/up.conf" <<NGX
worker_processes 1; daemon off; pid $tmp/up.pid; error_log $tmp/up.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$up_port; location / { return 200 "ok\n"; } } }
NGX
taskset -c 1 nginx -c "$tmp/up.conf" & pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$up_port/" >/dev/null && break; sleep 0.05; done

# One run of VARIANT: prints "µs/req req/s" (legate's CPU time over wrk's requests).
variant_run() {
  local port; port=$(free_port)
  config "$1" "$port" > "$tmp/$1.yaml"
  taskset -c 0 "$LEGATE_BIN" run -c "$tmp/$1.yaml" >/dev/null 2>&1 & local pid=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.05; done
  taskset -c 1 wrk -t1 -c64 -d1s "http://127.0.0.1:$port/" >/dev/null
  local u0 s0 u1 s1 out n rps
  read -r u0 s0 < <(awk '{print $14, $15}' /proc/$pid/stat)
  out=$(taskset -c 1 wrk -t1 -c64 -d"$DURATION" "http://127.0.0.1:$port/")
  read -r u1 s1 < <(awk '{print $14, $15}' /proc/$pid/stat)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  n=$(awk '/requests in/{print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/{print int($2)}' <<<"$out")
  # CPU µs/req, req/s, then user and system µs/req.
  awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v n="$n" -v hz="$(getconf CLK_TCK)" -v r="$rps" \
    'BEGIN { printf "%.2f %d %.2f %.2f\n", (u+s)*1e6/hz/n, r, u*1e6/hz/n, s*1e6/hz/n }'
}

LOADGEN=${LOADGEN:-$root/target/release/loadgen}
REQUESTS=${REQUESTS:-3000}

# One counted run of VARIANT under callgrind: prints "instructions/request requests".
variant_instructions() {
  local port pid dump ok
  port=$(free_port)
  config "$1" "$port" > "$tmp/$1.yaml"
  rm -f "$tmp"/cg.*
  valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.%p" "$LEGATE_BIN" run -c "$tmp/$1.yaml" \
    >/dev/null 2>"$tmp/valgrind.err" & pid=$!
  for _ in $(seq 300); do curl -fs "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
  "$LOADGEN" rate --url "http://127.0.0.1:$port/" --rps 300 --duration 3s --connections 16 >/dev/null
  callgrind_control -z "$pid" >/dev/null
  "$LOADGEN" rate --url "http://127.0.0.1:$port/" --rps 300 --duration "$((REQUESTS / 300))s" \
    --connections 16 > "$tmp/loadgen.json"
  callgrind_control -d "$pid" >/dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
  dump=$(ls "$tmp"/cg.*.1)
  ok=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ok"])' "$tmp/loadgen.json")
  awk -v ok="$ok" '/^totals:/ { printf "%.0f %d\n", $2 / ok, ok }' "$dump"
}

variants_instructions() {
  [[ -x $LOADGEN ]] || (cd "$root" && cargo build --release -p loadgen >&2)
  command -v valgrind >/dev/null || { echo "valgrind is needed for MEASURE=instructions" >&2; exit 1; }
  local vs=("$@") i j v
  declare -A ins
  printf '| round |'; for v in "${vs[@]}"; do printf ' %s instr/req |' "$v"; done; echo
  printf '|---:|'; for _ in "${vs[@]}"; do printf -- '---:|'; done; echo
  for i in $(seq "$ROUNDS"); do
    for j in $(seq 0 $(($# - 1))); do
      read -r ins[$i,$j] _ < <(variant_instructions "${vs[$j]}")
    done
    printf '| %d |' "$i"; for j in $(seq 0 $(($# - 1))); do printf ' %s |' "${ins[$i,$j]}"; done; echo
  done
  echo
  med() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
  local base; base=$(for i in $(seq "$ROUNDS"); do echo "${ins[$i,0]}"; done | med)
  # The first variant's CPU split under wrk, to read instructions against the whole request.
  local c r u s
  read -r c r u s < <(variant_run "${vs[0]}")
  echo "${vs[0]} under wrk -c64: ${c} µs/req CPU = ${u} user + ${s} system"
  for j in $(seq 0 $(($# - 1))); do
    local m; m=$(for i in $(seq "$ROUNDS"); do echo "${ins[$i,$j]}"; done | med)
    awk -v v="${vs[$j]}" -v m="$m" -v b="$base" -v c="$c" -v u="$u" 'BEGIN {
      d = m - b; t = d * u / b
      printf "%s: median %d instr/req, %+d (%+.1f%% of user-space instructions); at %s\n", v, m, d, 100 * d / b, sprintf("%.3f", u / b * 1000) " ns/instr"
      printf "    = %+.3f µs of %s µs/req CPU: %+.1f%%\n", t, c, 100 * t / c }'
  done
}

# The table, then each variant's median CPU µs/request and median req/s ratio to the first.
variants_main() {
  if [[ ${MEASURE:-time} == instructions ]]; then variants_instructions "$@"; return; fi
  local vs=("$@") n=$# i j v
  printf '| round |'; for v in "${vs[@]}"; do printf ' %s µs/req | %s req/s |' "$v" "$v"; done; echo
  printf '|---:|'; for _ in "${vs[@]}"; do printf -- '---:|---:|'; done; echo
  declare -A cpu rps
  for i in $(seq "$ROUNDS"); do
    local order=()
    if (( n == 2 )); then
      if (( i % 2 )); then order=(0 1); else order=(1 0); fi
    else
      for j in $(seq 0 $((n - 1))); do order+=($(( (j + i) % n ))); done
    fi
    for j in "${order[@]}"; do
      read -r c r _ < <(variant_run "${vs[$j]}")
      cpu[$i,$j]=$c; rps[$i,$j]=$r
    done
    printf '| %d |' "$i"; for j in $(seq 0 $((n - 1))); do printf ' %s | %s |' "${cpu[$i,$j]}" "${rps[$i,$j]}"; done; echo
  done
  echo
  med() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
  for j in $(seq 0 $((n - 1))); do
    local mc mr
    mc=$(for i in $(seq "$ROUNDS"); do echo "${cpu[$i,$j]}"; done | med)
    mr=$(for i in $(seq "$ROUNDS"); do awk -v a="${rps[$i,$j]}" -v b="${rps[$i,0]}" 'BEGIN{printf "%.3f\n", a/b}'; done | med)
    local cr
    cr=$(for i in $(seq "$ROUNDS"); do awk -v a="${cpu[$i,$j]}" -v b="${cpu[$i,0]}" 'BEGIN{printf "%.3f\n", a/b}'; done | med)
    echo "${vs[$j]}: median CPU ${mc} µs/req; median ratio to ${vs[0]}: CPU ${cr}, req/s ${mr}"
  done
}
