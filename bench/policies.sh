#!/usr/bin/env bash
# bench/policies.sh - cost of the resilience policies on the success path.
#
#   plain:    one route, no retry, outlier detection off, no circuit_breaker section
#   policies: retry (3 attempts, budget), circuit_breaker (limits + state machine),
#             outlier detection, p2c-ewma
# Rounds alternate ABBA (bench/variants.sh). Usage: bash bench/policies.sh  (ROUNDS=6 DURATION=5s)
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/variants.sh
source "$here/variants.sh"

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

variants_main plain policies
