//! Active health checks: every `interval`, each endpoint gets an HTTP GET (`path`, status in
//! `expect`) or a TCP connect, bounded by `timeout`. `unhealthy_threshold` failures in a row take
//! an endpoint out of the balancer; `healthy_threshold` successes bring it back. Endpoints start
//! routable, so a slow first check never blocks traffic.

use super::connect::{self, Io};
use super::{Endpoint, Upstream};
use crate::config::resilience::HealthCheckConfig;
use crate::telemetry::metrics::HealthCheckLabels;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

const UNKNOWN: u8 = 0;
const HEALTHY: u8 = 1;
const UNHEALTHY: u8 = 2;

#[derive(Debug)]
pub struct EndpointHealth {
    checked: bool,
    state: AtomicU8,
    successes: AtomicU32,
    failures: AtomicU32,
}

impl EndpointHealth {
    pub fn new(checked: bool) -> Self {
        Self {
            checked,
            state: AtomicU8::new(UNKNOWN),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
        }
    }

    pub fn routable(&self) -> bool {
        self.state.load(Ordering::Relaxed) != UNHEALTHY
    }

    /// Has a check confirmed this endpoint healthy? (Unchecked endpoints count as healthy.)
    pub fn confirmed(&self) -> bool {
        !self.checked || self.state.load(Ordering::Relaxed) == HEALTHY
    }

    /// Records one check result; returns the new state when it changed.
    fn record(&self, ok: bool, cfg: &HealthCheckConfig) -> Option<bool> {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
            let n = self.successes.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= cfg.healthy_threshold && self.state.swap(HEALTHY, Ordering::Relaxed) != HEALTHY
            {
                return Some(true);
            }
        } else {
            self.successes.store(0, Ordering::Relaxed);
            let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= cfg.unhealthy_threshold
                && self.state.swap(UNHEALTHY, Ordering::Relaxed) != UNHEALTHY
            {
                return Some(false);
            }
        }
        None
    }
}

/// Every health-checked upstream has at least one endpoint a check confirmed healthy.
pub fn all_have_healthy(upstreams: &[Arc<Upstream>]) -> bool {
    upstreams
        .iter()
        .filter(|u| u.health_check.is_some())
        .all(|u| u.endpoints().iter().any(|e| e.health.confirmed()))
}

async fn check_once(up: &Upstream, ep: &Endpoint, cfg: &HealthCheckConfig) -> Result<(), String> {
    let (io, h2) = connect::dial(up, ep).await.map_err(|e| e.to_string())?;
    let Some(http) = &cfg.http else { return Ok(()) };
    let host = up.targets.get(ep.target).map(|t| t.authority.clone());
    let mut req = http::Request::get(http.path.as_str());
    if let Some(h) = &host {
        req = req.header(http::header::HOST, h.clone());
    }
    let req = req
        .header(http::header::USER_AGENT, "legate-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let status = send(io, h2, req, up.tls.is_some(), host).await?;
    if http.expect.contains(status) {
        Ok(())
    } else {
        Err(format!(
            "status {status} not in {}-{}",
            http.expect.low, http.expect.high
        ))
    }
}

async fn send(
    io: Io,
    h2: bool,
    mut req: http::Request<Empty<Bytes>>,
    tls: bool,
    host: Option<http::HeaderValue>,
) -> Result<u16, String> {
    let io = TokioIo::new(io);
    if h2 {
        let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let authority = host
            .and_then(|h| h.to_str().ok().map(String::from))
            .unwrap_or_else(|| "localhost".into());
        let uri = format!(
            "{}://{authority}{}",
            if tls { "https" } else { "http" },
            req.uri()
        );
        *req.uri_mut() = uri
            .parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())?;
        req.headers_mut().remove(http::header::HOST);
        tx.send_request(req)
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        tx.send_request(req)
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    }
}

/// Checks every endpoint of `up` forever (runs on the control thread).
pub async fn run(up: Arc<Upstream>) {
    let Some(cfg) = up.health_check.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(cfg.interval.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let endpoints = up.endpoints().clone();
        let mut checks = Vec::with_capacity(endpoints.len());
        for ep in endpoints.iter().cloned() {
            let up = up.clone();
            let cfg = cfg.clone();
            checks.push(tokio::spawn(async move {
                let result = match tokio::time::timeout(cfg.timeout.get(), check_once(&up, &ep, &cfg)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {}", cfg.timeout)),
                };
                let labels = HealthCheckLabels {
                    upstream: up.name.to_string(),
                    endpoint: ep.addr.to_string(),
                    result: if result.is_ok() { "success" } else { "failure" }.to_string(),
                };
                up.metrics.health_checks.get_or_create(&labels).inc();
                match ep.health.record(result.is_ok(), &cfg) {
                    Some(true) => {
                        up.metrics.healthy.get_or_create(&ep.label).set(1);
                        tracing::info!(upstream = %up.name, endpoint = %ep.addr, "endpoint healthy");
                    }
                    Some(false) => {
                        up.metrics.healthy.get_or_create(&ep.label).set(0);
                        tracing::warn!(upstream = %up.name, endpoint = %ep.addr,
                            reason = %result.err().unwrap_or_default(), "endpoint unhealthy: out of the balancer");
                    }
                    None => {}
                }
            }));
        }
        for c in checks {
            let _ = c.await;
        }
    }
}
