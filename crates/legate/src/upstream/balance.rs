//! Endpoint choice: `p2c-ewma` (default), `least-request`, `round-robin` or `random`, with
//! optional weights. Ejected and unhealthy endpoints are skipped while any other is available;
//! when none is, they are tried anyway (Envoy's "panic mode"): failing every request is never
//! better than trying.
//!
//! A retry passes the addresses that already failed this request as `avoid`.

use super::{Endpoint, Upstream, UpstreamError};
use crate::config::resilience::Balance;
use crate::http::request_id;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

pub fn pick(up: &Upstream, avoid: &[SocketAddr]) -> Result<Arc<Endpoint>, UpstreamError> {
    let eps = up.endpoints();
    if eps.is_empty() {
        let names: Vec<String> = up.targets.iter().map(|t| t.spec.to_string()).collect();
        return Err(UpstreamError::NoEndpoint {
            upstream: up.name.clone(),
            targets: names.join(", "),
        });
    }
    if eps.len() == 1 {
        return Ok(eps[0].clone());
    }
    let now = Instant::now();
    // Each endpoint scores the tries this request already failed on it, plus two when it is
    // ejected or failing health checks, plus (on retries) up to two for failures in a row
    // across requests; the balancer chooses among the lowest scores. A first try therefore
    // only sees available endpoints (panic mode when there are none), and a retry moves to the
    // endpoint with the least evidence against it — a dead endpoint that outlier detection has
    // not ejected yet stops attracting retries after a couple of failures.
    let score = |e: &Endpoint| {
        let tried = avoid.iter().filter(|a| **a == e.addr).count();
        // Failures before this request; its own are already in `tried`.
        let earlier = (e.load.failing() as usize).saturating_sub(tried);
        let suspect = if avoid.is_empty() { 0 } else { earlier.min(2) };
        tried + suspect + if e.available(now) { 0 } else { 2 }
    };
    let best = eps.iter().map(|e| score(e)).min().unwrap_or(0);
    if let Some(ep) = choose(up, &eps, &|e| score(e) == best, avoid.is_empty()) {
        return Ok(ep.clone());
    }
    Ok(eps[0].clone())
}

fn random_u64() -> u64 {
    request_id::next()
}

/// A weighted position among the endpoints that pass `ok`, starting from `seed`.
fn weighted<'a>(
    eps: &'a [Arc<Endpoint>],
    seed: u64,
    ok: &dyn Fn(&Endpoint) -> bool,
) -> Option<&'a Arc<Endpoint>> {
    let total: u64 = eps
        .iter()
        .filter(|e| ok(e))
        .map(|e| u64::from(e.weight))
        .sum();
    if total == 0 {
        return None;
    }
    let mut at = seed % total;
    for e in eps.iter().filter(|e| ok(e)) {
        let w = u64::from(e.weight);
        if at < w {
            return Some(e);
        }
        at -= w;
    }
    None
}

/// `advance`: a first try moves the round-robin position on; a retry does not, so retries do
/// not skew the rotation of first tries.
fn choose<'a>(
    up: &Upstream,
    eps: &'a [Arc<Endpoint>],
    ok: &dyn Fn(&Endpoint) -> bool,
    advance: bool,
) -> Option<&'a Arc<Endpoint>> {
    match up.balance {
        Balance::RoundRobin => {
            let seed = if advance {
                up.rr_counter().fetch_add(1, Ordering::Relaxed)
            } else {
                up.rr_counter().load(Ordering::Relaxed)
            } as u64;
            weighted(eps, seed, ok)
        }
        Balance::Random => weighted(eps, random_u64(), ok),
        Balance::LeastRequest | Balance::P2cEwma => {
            let a = weighted(eps, random_u64(), ok)?;
            let mut b = weighted(eps, random_u64(), ok)?;
            // Two distinct choices when there are two to choose from.
            for _ in 0..3 {
                if !Arc::ptr_eq(a, b) {
                    break;
                }
                b = weighted(eps, random_u64(), ok)?;
            }
            let cost = |e: &Endpoint| {
                let base = if up.balance == Balance::P2cEwma {
                    e.load.cost()
                } else {
                    f64::from(e.load.inflight() + 1)
                };
                base / f64::from(e.weight.max(1))
            };
            Some(if cost(b) < cost(a) { b } else { a })
        }
    }
}
