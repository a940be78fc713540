//! Reaching the upstream for one tunnel, through the upstream module: the circuit breaker
//! admits, the balancer picks, `upstream::connect::dial` makes the TCP connection and TLS (or
//! PostgreSQL's SSLRequest then TLS), and the outcome feeds outlier detection and the breaker.
//! A failed connect tries the next endpoint, up to `connect_attempts`.

use super::TcpListenerCtx;
use crate::telemetry::throttle::Throttle;
use crate::upstream::breaker::{Limit, Permit};
use crate::upstream::connect::{self, Io};
use crate::upstream::outcome::{self, Verdict};
use crate::upstream::{balance, Endpoint, UpstreamError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// A connected upstream, holding its place under the upstream's `max_connections`.
pub struct Connected {
    pub io: Io,
    pub endpoint: Arc<Endpoint>,
    pub _permit: Permit,
}

/// One log line per second per listener for failed connects; the metric counts every one.
#[derive(Default)]
pub struct ConnectLog(Throttle);

pub async fn connect(
    ctx: &TcpListenerCtx,
    peer: &str,
) -> Result<Connected, (UpstreamError, Option<SocketAddr>)> {
    let up = &ctx.upstream;
    let Some(permit) = up.limits.acquire(Limit::Connections) else {
        up.metrics.overflowed(&up.name, Limit::Connections.name());
        return Err((
            UpstreamError::Overflow {
                upstream: up.name.clone(),
                limit: "max_connections",
            },
            None,
        ));
    };
    let mut avoid: Vec<SocketAddr> = Vec::new();
    let mut last = None;
    for attempt in 1..=ctx.connect_attempts {
        let ep = balance::pick(up, &avoid).map_err(|e| (e, None))?;
        let admission = match &up.breaker {
            Some(b) => match b.admit() {
                Some(a) => Some(a),
                None => {
                    return Err((
                        UpstreamError::CircuitOpen {
                            upstream: up.name.clone(),
                        },
                        last,
                    ))
                }
            },
            None => None,
        };
        let started = Instant::now();
        let result = match tokio::time::timeout(ctx.connect_timeout, connect::dial(up, &ep)).await {
            Ok(r) => r.map(|(io, _)| io),
            Err(_) => Err(UpstreamError::ConnectTimeout {
                endpoint: ep.addr,
                timeout: ctx.connect_timeout,
            }),
        };
        let now = Instant::now();
        let verdict = if result.is_ok() {
            Verdict::Success
        } else {
            Verdict::ConnectFailure
        };
        outcome::record(up, &ep, admission, verdict, now, now - started);
        match result {
            Ok(io) => {
                ep.metrics.opened.inc();
                return Ok(Connected {
                    io,
                    endpoint: ep,
                    _permit: permit,
                });
            }
            Err(e) => {
                let reason = e.reply().1;
                up.metrics.tcp_connect_failed(&up.name, reason);
                if let Some(folded) = ctx.connect_log.0.check() {
                    tracing::warn!(listener = %ctx.name, upstream = %up.name, endpoint = %ep.addr,
                        peer, attempt, of = ctx.connect_attempts, reason, error = %e, folded,
                        "connect to upstream endpoint failed");
                }
                avoid.push(ep.addr);
                last = Some(ep.addr);
                if attempt == ctx.connect_attempts {
                    return Err((e, last));
                }
            }
        }
    }
    Err((
        UpstreamError::NoEndpoint {
            upstream: up.name.clone(),
            targets: String::new(),
        },
        last,
    ))
}
