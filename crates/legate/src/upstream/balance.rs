//! Endpoint choice. Round-robin for now; the resilience work adds p2c-EWMA and friends here.

use super::{Endpoint, Upstream, UpstreamError};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Picks the next endpoint, avoiding `avoid` when another one exists (a retry after a failure
/// on a connection should try a different address).
pub fn pick(
    up: &Upstream,
    avoid: Option<std::net::SocketAddr>,
) -> Result<Arc<Endpoint>, UpstreamError> {
    let eps = up.endpoints();
    if eps.is_empty() {
        let names: Vec<String> = up.targets.iter().map(|t| t.spec.to_string()).collect();
        return Err(UpstreamError::NoEndpoint {
            upstream: up.name.clone(),
            targets: names.join(", "),
        });
    }
    let n = eps.len();
    let start = up.rr_counter().fetch_add(1, Ordering::Relaxed);
    for k in 0..n {
        let ep = &eps[(start + k) % n];
        if Some(ep.addr) != avoid || n == 1 {
            return Ok(ep.clone());
        }
    }
    Ok(eps[start % n].clone())
}
