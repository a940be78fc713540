#!/usr/bin/env bash
# bench/policies.sh - cost of the resilience policies on the success path.
#
# Runs legate twice against the same static nginx upstream, alternating ROUNDS times:
#   plain:    one route, no retry, outlier detection off, no circuit_breaker section
#   policies: retry (3 attempts, budget), circuit_breaker (limits + state machine),
#             outlier detection, p2c-ewma
# legate pinned to core 0, upstream and wrk to core 1; the order alternates (ABBA) by round. Prints CPU µs/request and req/s for each
# run and the median ratio. Usage: bash bench/policies.sh   (ROUNDS=6 DURATION=5s)
set -euo pipefail
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
root=$(cd -- "$here/.." && pwd)
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

config() { # $1 = plain|policies, $2 = port
  local route_extra="" up_extra="    outlier_detection: { enabled: false }"
  if [[ $1 == policies ]]; then
    route_extra="        retry: { attempts: 3, on: [connect-failure, reset, gateway-error], per_try_timeout: 2s, budget: { ratio: 0.2, min_per_second: 10 } }"
    up_extra="    balance: p2c-ewma
    circuit_breaker: { failure_ratio: 0.5, min_requests: 20 }
    outlier_detection: { consecutive_failures: 5 }"
  fi
  cat <<YAML
admin: { listen: off }
access_log: off
runtime: { workers: 1 }
listeners:
  - name: app
    listen: 127.0.0.1:$2
    routes:
      - name: default
        upstream: api
        timeout: 10s
$route_extra
upstreams:
  - name: api
    endpoints: ["127.0.0.1:$up_port"]
$up_extra
YAML
}

run() { # $1 = plain|policies -> "µs/req req/s"
  local port; port=$(free_port)
  config "$1" "$port" > "$tmp/$1.yaml"
  taskset -c 0 "$LEGATE_BIN" run -c "$tmp/$1.yaml" >/dev/null 2>&1 & local pid=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.05; done
  taskset -c 1 wrk -t1 -c64 -d1s "http://127.0.0.1:$port/" >/dev/null
  local t0 t1 out n rps
  t0=$(awk '{print $14+$15}' /proc/$pid/stat)
  out=$(taskset -c 1 wrk -t1 -c64 -d"$DURATION" "http://127.0.0.1:$port/")
  t1=$(awk '{print $14+$15}' /proc/$pid/stat)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  n=$(awk '/requests in/{print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/{print int($2)}' <<<"$out")
  awk -v t=$((t1 - t0)) -v n="$n" -v hz="$(getconf CLK_TCK)" -v r="$rps" 'BEGIN { printf "%.2f %d\n", t*1e6/hz/n, r }'
}

printf '| round | plain µs/req | policies µs/req | plain req/s | policies req/s |\n|---:|---:|---:|---:|---:|\n'
ratios=()
for i in $(seq "$ROUNDS"); do
  # ABBA order: whichever runs second in a round gets a warmer machine, so alternate.
  if (( i % 2 )); then
    read -r pc pr < <(run plain)
    read -r qc qr < <(run policies)
  else
    read -r qc qr < <(run policies)
    read -r pc pr < <(run plain)
  fi
  printf '| %d | %s | %s | %s | %s |\n' "$i" "$pc" "$qc" "$pr" "$qr"
  ratios+=("$(awk -v a="$qr" -v b="$pr" 'BEGIN{printf "%.3f", a/b}')")
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
echo
echo "median req/s ratio policies/plain: $median"
