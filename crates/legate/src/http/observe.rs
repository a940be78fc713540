//! Accounting for one request: started when it arrives, finished exactly once when its response
//! body ends or is dropped. Feeds the access log, the request metrics and the inflight gauge.

use super::route::Route;
use crate::telemetry::access_log::{AccessLog, Entry};
use crate::telemetry::metrics::{Metrics, RouteMetrics};
use http::{HeaderValue, Method, Uri, Version};
use prometheus_client::metrics::gauge::Gauge;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// What every request on one listener shares.
pub struct ListenerObs {
    pub name: Arc<str>,
    pub access_log: AccessLog,
    pub inflight: Gauge,
    /// Requests that matched no route (or were refused before routing).
    pub unrouted: RouteMetrics,
    pub metrics: Arc<Metrics>,
}

pub struct Observe {
    listener: Arc<ListenerObs>,
    pub route: Option<Arc<Route>>,
    pub(crate) start: Instant,
    /// Wall-clock start, read only when the access log is on.
    ts: Option<SystemTime>,
    /// Kept only when the access log is on.
    /// Boxed: 120 bytes inline, in every request's state (twice: here and in the response
    /// body), for a feature that is often off.
    request: Option<Box<(Method, Uri, Version)>>,
    pub request_id: Option<HeaderValue>,
    pub status: u16,
    pub endpoint: Option<SocketAddr>,
    pub error: Option<&'static str>,
    pub body_error: Option<String>,
    /// The `reason` a body error is counted and logged under.
    pub body_error_reason: &'static str,
    pub bytes_in: Option<Arc<AtomicU64>>,
    /// Tries sent upstream (1 + retries); 0 when legate answered without trying.
    pub attempts: u32,
    /// The route could have retried, but the body was too large to keep for replay.
    pub replay_skipped: bool,
    /// The request's trace, when its route traces.
    pub trace: Option<Box<super::trace::Trace>>,
    /// Accounted for: by `finish`, or by `Drop` when the request's future was dropped before
    /// a response existed (the client closed its connection while legate waited upstream).
    done: bool,
}

impl Drop for Observe {
    fn drop(&mut self) {
        self.complete(0, true);
    }
}

impl Observe {
    pub fn start<B>(listener: &Arc<ListenerObs>, req: &http::Request<B>) -> Self {
        listener.inflight.inc();
        let request = listener
            .access_log
            .enabled
            .then(|| Box::new((req.method().clone(), req.uri().clone(), req.version())));
        Self {
            listener: listener.clone(),
            route: None,
            start: Instant::now(),
            ts: listener.access_log.enabled.then(SystemTime::now),
            request,
            request_id: None,
            status: 0,
            endpoint: None,
            error: None,
            body_error: None,
            body_error_reason: "response-body-error",
            bytes_in: None,
            attempts: 0,
            replay_skipped: false,
            trace: None,
            done: false,
        }
    }

    /// Starts the request's trace (the route traces): reads and rewrites its trace headers.
    pub fn begin_trace<B>(&mut self, req: &mut http::Request<B>) {
        let Some(policy) = self.route.as_ref().and_then(|r| r.tracing.as_ref()) else {
            return;
        };
        self.trace = super::trace::begin(policy, req.headers_mut());
        // A recorded span names the method and path even when the access log is off.
        if self.request.is_none() && self.trace.as_ref().is_some_and(|t| t.recording()) {
            self.request = Some(Box::new((
                req.method().clone(),
                req.uri().clone(),
                req.version(),
            )));
        }
    }

    pub fn finish(mut self, bytes_out: u64, aborted: bool) {
        self.complete(bytes_out, aborted);
    }

    fn complete(&mut self, bytes_out: u64, aborted: bool) {
        if self.done {
            return;
        }
        self.done = true;
        if aborted && self.status == 0 {
            // The client went away before any response (nginx's 499): counted and logged, and
            // never left in the in-flight gauge.
            self.status = 499;
        }
        self.listener.inflight.dec();
        let trace = self.trace.take();
        let trace_id = trace
            .as_ref()
            .filter(|_| self.listener.access_log.enabled)
            .map(|t| t.trace_id_hex());
        let elapsed = self.start.elapsed();
        let route_metrics = match &self.route {
            Some(r) => &r.metrics,
            None => &self.listener.unrouted,
        };
        route_metrics.record(self.status, elapsed.as_secs_f64());
        let body_reason = self.body_error.as_ref().map(|_| self.body_error_reason);
        if let Some(reason) = self.error.or(body_reason) {
            self.listener
                .metrics
                .local_error(&route_metrics.labels, reason);
        }
        let Some((method, uri, version)) = self.request.as_deref() else {
            return;
        };
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let error = self.error.or(body_reason);
        let request_id = self
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if let Some(t) = trace {
            (*t).finish(super::trace::ServerSpan {
                method: method.as_str(),
                path: uri.path(),
                listener: &self.listener.name,
                route: self.route.as_ref().map(|r| &*r.name).unwrap_or(""),
                upstream: self.route.as_ref().map(|r| &*r.upstream.name).unwrap_or(""),
                status: self.status,
                error,
                attempts: self.attempts,
                request_id,
            });
        }
        if !self.listener.access_log.enabled {
            return;
        }
        self.listener.access_log.write(&Entry {
            ts: self.ts.unwrap_or_else(SystemTime::now),
            request_id,
            trace_id: trace_id.as_deref(),
            listener: &self.listener.name,
            route: self.route.as_ref().map(|r| &*r.name).unwrap_or(""),
            method: method.as_str(),
            path,
            protocol: version_str(*version),
            status: self.status,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            upstream: self.route.as_ref().map(|r| &*r.upstream.name).unwrap_or(""),
            endpoint: self.endpoint,
            bytes_in: self
                .bytes_in
                .as_ref()
                .map(|c| c.load(Ordering::Relaxed))
                .unwrap_or(0),
            bytes_out,
            error,
            aborted,
            attempts: self.attempts,
            replay_skipped: self.replay_skipped,
        });
    }
}

pub fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}
