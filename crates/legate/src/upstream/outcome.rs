//! What one try (an HTTP request, or a TCP tunnel's connect) teaches about an endpoint: fed to
//! the balancer's latency estimate, outlier detection and the circuit breaker. Both paths call
//! this one function, so an endpoint ejected by HTTP failures is ejected for tunnels too.

use super::outlier::Recorded;
use super::{Endpoint, Upstream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a try ended, as the resilience policies see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// A gateway error, reset or timeout.
    Failure,
    /// The connection (TCP, TLS) could not be made.
    ConnectFailure,
}

/// A failed try weighs this much in the latency estimate: failing fast (a refused
/// connection) must not make an endpoint look attractive to p2c-EWMA.
const FAILURE_PENALTY: Duration = Duration::from_millis(500);

pub fn record(
    up: &Upstream,
    ep: &Arc<Endpoint>,
    admission: Option<super::breaker::Admission>,
    verdict: Verdict,
    now: Instant,
    rtt: Duration,
) {
    let failed = verdict != Verdict::Success;
    let sample = if failed {
        rtt.max(FAILURE_PENALTY)
    } else {
        rtt
    };
    ep.load.observe(sample, now);
    ep.load.outcome(failed);
    if let Some(policy) = &up.outlier {
        if failed {
            let may_eject = || {
                let eps = up.endpoints();
                let ejected = eps.iter().filter(|e| e.outlier.is_ejected(now)).count();
                ejected < policy.max_ejected(eps.len())
            };
            if let Recorded::Ejected { for_, times } =
                ep.outlier
                    .failure(policy, verdict == Verdict::ConnectFailure, may_eject)
            {
                tracing::warn!(upstream = %up.name, endpoint = %ep.addr, ejected_for = ?for_, times,
                    "outlier detection: endpoint ejected after consecutive failures");
                up.metrics.ejections.get_or_create(&ep.label).inc();
                let gauge = up.metrics.ejected.get_or_create(&ep.label).clone();
                gauge.set(1);
                tokio::spawn(async move {
                    tokio::time::sleep(for_).await;
                    gauge.set(0);
                });
            }
        } else {
            ep.outlier.success();
        }
    }
    if let (Some(b), Some(a)) = (&up.breaker, admission) {
        b.record(a, failed, now);
    }
}
