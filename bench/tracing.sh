#!/usr/bin/env bash
# bench/tracing.sh - cost of trace context and span export on the success path.
#
#   off:      no `tracing:`
#   w3c-1pct: tracing { propagate: [w3c], sample_rate: 0.01 }, export on (OTLP to the
#             bench's nginx, which answers 200 to the POSTs: the collector's cost is not legate's)
#   w3c-prop: tracing { propagate: [w3c], sample_rate: 0 }, no export: propagation alone
#   all-100:  propagate [w3c, b3, jaeger], sample_rate 1.0, export on: every request exports
#             a server and a client span
# Rounds rotate the order (bench/variants.sh). Usage: bash bench/tracing.sh  (ROUNDS=6 DURATION=5s;
# VARIANTS="off w3c-prop w3c-1pct"; MEASURE=instructions ROUNDS=2 counts instructions instead)
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/variants.sh
source "$here/variants.sh"

config() { # $1 = off|w3c-1pct|all-100, $2 = port
  local tracing="" otlp=""
  case $1 in
    w3c-1pct) tracing="    tracing: { propagate: [w3c], sample_rate: 0.01 }" ;;
    w3c-prop) tracing="    tracing: { propagate: [w3c], sample_rate: 0 }" ;;
    all-100) tracing="    tracing: { propagate: [w3c, b3, jaeger], sample_rate: 1.0 }" ;;
  esac
  [[ $1 != off && $1 != w3c-prop ]] && otlp="otlp: { endpoint: \"http://127.0.0.1:$up_port/v1/traces\", queue_size: 65536 }"
  cat <<YAML
admin: { listen: off }
access_log: off
runtime: { workers: 1 }
$otlp
listeners:
  - name: app
    listen: 127.0.0.1:$2
$tracing
    routes:
      - name: default
        upstream: api
        timeout: 10s
upstreams:
  - name: api
    endpoints: ["127.0.0.1:$up_port"]
    outlier_detection: { enabled: false }
YAML
}

# shellcheck disable=SC2086 # a list of names
variants_main ${VARIANTS:-off w3c-1pct all-100}
