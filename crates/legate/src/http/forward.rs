//! Forwarding with the resilience policies, one try at a time:
//!
//! ```text
//! retry loop { limits (max_requests) → balancer pick (avoiding the endpoint that just failed)
//!              → breaker admit → send with per-try timeout → classify
//!              → record (EWMA, outlier detection, breaker) }
//! ```
//!
//! The route timeout is one deadline for the whole request (body buffering, tries and the waits
//! between them); a try's own timer is the earlier of that deadline and its per-try timeout,
//! so each try arms exactly one timer.
//!
//! A try is retried only when the route has a retry policy, the method may be retried, the
//! body could be kept for replay, the outcome matches a condition, tries are left, the budget
//! allows it and the upstream's `max_retries` is not reached. Nothing is retried once the
//! response went to the client: the decision is made on the response head, before returning.

use super::body::{self, Buffered, ReqBody};
use super::proxy::{host_for, send, Forwarded};
use super::retry::{self, Outcome};
use super::route::Route;
use super::trace::Trace;
use crate::upstream::breaker::Limit;
use crate::upstream::error::FailureKind;
use crate::upstream::outcome::{self, Verdict};
use crate::upstream::pool::Pools;
use crate::upstream::{balance, Endpoint, Upstream, UpstreamError};
use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, Method, Request, Uri, Version};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The request head kept to build each try.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Head {
    fn request(&self, body: ReqBody) -> Request<ReqBody> {
        let mut r = Request::new(body);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// The request the tries send. Its header map goes back to the worker's pool when forwarding
/// ends (`h1::bufpool`), on every one of the retry loop's exits: with the response's map, which
/// the server gives back, a request allocates no map at all once the pool is warm. A request
/// hyper's client consumed took its map along.
struct Slot(Option<Request<ReqBody>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(req) = self.0.as_mut() {
            crate::h1::bufpool::give_map(std::mem::take(req.headers_mut()));
        }
    }
}

struct Replay {
    /// Only when the request may be consumed by a try (see above).
    head: Option<Head>,
    data: Bytes,
    trailers: Option<HeaderMap>,
}

// Not an `async fn`: an async fn keeps its arguments twice in its state (rust-lang/rust#62958);
// the block works on its captures in place.
#[allow(clippy::manual_async_fn)]
pub fn forward<'a>(
    pools: &'a Arc<Pools>,
    route: &'a Route,
    mut parts: Parts,
    body: ReqBody,
    upgrade: bool,
    obs: &'a mut super::observe::Observe,
) -> impl std::future::Future<Output = Result<Forwarded, UpstreamError>> + Send + 'a {
    async move {
        let deadline = Deadline {
            at: tokio::time::Instant::from_std(obs.start) + route.timeout,
            route,
        };
        let up = &route.upstream;
        if let Some(auth) = up
            .auth
            .as_ref()
            .filter(|a| !a.apply_now(&mut parts.headers))
        {
            // Boxed: a token fetch is a large future that almost no request runs.
            if let Err(detail) = deadline
                .bound(Box::pin(auth.apply(&mut parts.headers)))
                .await?
            {
                return Err(UpstreamError::Credentials {
                    upstream: up.name.clone(),
                    detail,
                });
            }
        }
        let policy = route
            .retry
            .as_ref()
            .filter(|p| !upgrade && p.attempts > 1 && p.allows_method(&parts.method));
        let mut first = Slot(None);
        let mut replay = None;
        match policy {
            None => first.0 = Some(Request::from_parts(parts, body)),
            Some(p) => match match body {
                // Nothing to read: no timer either.
                ReqBody::Empty => Ok(Buffered::Whole {
                    data: Bytes::new(),
                    trailers: None,
                }),
                body => {
                    deadline
                        .bound(body::buffer(body, p.max_replay_body))
                        .await?
                }
            } {
                Err(source) => return Err(UpstreamError::RequestBody { source }),
                Ok(Buffered::Whole { data, trailers }) => {
                    // legate's own HTTP/1.1 client sends a request without consuming it, so the
                    // same request goes out again on a retry. hyper's client (HTTP/2, trailers)
                    // consumes it: only then is a copy of the head kept for the next try.
                    let head = (up.may_use_hyper() || trailers.is_some()).then(|| Head {
                        method: parts.method.clone(),
                        uri: parts.uri.clone(),
                        version: parts.version,
                        headers: parts.headers.clone(),
                    });
                    first.0 = Some(Request::from_parts(
                        parts,
                        ReqBody::replay(&data, &trailers),
                    ));
                    replay = Some(Replay {
                        head,
                        data,
                        trailers,
                    });
                }
                Ok(Buffered::TooLarge(body)) => {
                    obs.replay_skipped = true;
                    tracing::debug!(route = %route.name, "request body larger than max_replay_body: streamed, not retried");
                    first.0 = Some(Request::from_parts(parts, body));
                }
            },
        }
        if let Some(p) = policy {
            p.budget.deposit(obs.start);
        }
        let mut failed: Vec<SocketAddr> = Vec::new();
        let mut _retry_permit = None;
        loop {
            obs.attempts += 1;
            // The request stays in `first` for the whole loop: a try borrows it (legate's own
            // HTTP/1.1 client sends it without consuming it, so the next try can send it
            // again), and only a try through hyper's client takes it. Moving it in and out of
            // each try instead cost a copy of its 352 bytes at every step.
            if first.0.is_none() {
                match replay
                    .as_ref()
                    .and_then(|r| r.head.as_ref().map(|h| (h, r)))
                {
                    Some((head, r)) => {
                        first.0 = Some(head.request(ReqBody::replay(&r.data, &r.trailers)));
                    }
                    // Unreachable: without a request to send again the loop returns after a try.
                    None => {
                        return Err(UpstreamError::NoEndpoint {
                            upstream: up.name.clone(),
                            targets: String::new(),
                        })
                    }
                }
            }
            if let Some(t) = obs.trace.as_deref_mut() {
                t.begin_attempt();
            }
            let trace = obs.trace.as_deref();
            let (result, outcome, endpoint) = attempt(
                pools,
                route,
                &mut first.0,
                trace,
                upgrade,
                &failed,
                &deadline,
            )
            .await;
            if let Some(t) = obs.trace.as_deref_mut().filter(|t| t.recording()) {
                let (status, error) = match &result {
                    Ok((resp, ..)) => (Some(resp.status().as_u16()), None),
                    Err(e) => (None, Some(e.reply().1)),
                };
                let host = endpoint.and_then(|a| {
                    let eps = up.endpoints();
                    let target = eps.iter().find(|e| e.addr == a)?.target;
                    up.targets.get(target).map(|t| t.spec.host.clone())
                });
                t.end_attempt(endpoint, host, status, error);
            }
            // The access log names the last endpoint tried, even if the route timeout ends the
            // request during a later wait.
            if endpoint.is_some() {
                obs.endpoint = endpoint;
            }
            if let Err(UpstreamError::RouteTimeout { .. }) = result {
                return result;
            }
            let Some(p) = policy else { return result };
            let can_resend = first.0.is_some() || replay.as_ref().is_some_and(|r| r.head.is_some());
            if replay.is_none() || !can_resend || obs.attempts >= p.attempts {
                return result;
            }
            let Some(reason) = p.condition(outcome) else {
                return result;
            };
            let wait = match &result {
                Ok((resp, ..)) => match retry::retry_after(resp.headers()) {
                    Some(d) if d > p.retry_after_max => return result,
                    Some(d) => d,
                    None => p.backoff(obs.attempts),
                },
                Err(_) => p.backoff(obs.attempts),
            };
            if !p.budget.try_withdraw() {
                up.metrics.budget_exhausted(&route.name, &up.name);
                tracing::debug!(route = %route.name, "retry budget exhausted: not retrying");
                return result;
            }
            let Some(permit) = up.limits.acquire(Limit::Retries) else {
                up.metrics.overflowed(&up.name, Limit::Retries.name());
                return result;
            };
            _retry_permit = Some(permit);
            up.metrics.retry(&route.name, &up.name, reason);
            failed.extend(endpoint);
            // Dropping an unread response closes its connection instead of pooling it: the body
            // of a failed try is not worth reading.
            drop(result);
            deadline.bound(tokio::time::sleep(wait)).await?;
        }
    }
}

/// The route timeout: one instant for the whole request.
struct Deadline<'a> {
    at: tokio::time::Instant,
    route: &'a Route,
}

impl Deadline<'_> {
    fn expired(&self) -> UpstreamError {
        UpstreamError::RouteTimeout {
            upstream: self.route.upstream.name.clone(),
            timeout: self.route.timeout,
        }
    }

    async fn bound<F: std::future::Future>(&self, f: F) -> Result<F::Output, UpstreamError> {
        tokio::time::timeout_at(self.at, f)
            .await
            .map_err(|_| self.expired())
    }
}

/// One try: limits, endpoint, breaker, send, record.
type TryResult = (
    Result<Forwarded, UpstreamError>,
    Outcome,
    Option<SocketAddr>,
);

/// One try of the request in `slot`. It stays there unless the try consumes it (hyper's
/// client does; legate's own HTTP/1.1 client only borrows it), also when the per-try timeout
/// drops the try: the next try sends it again.
// Not an `async fn`: an async fn keeps its arguments twice in its state (rust-lang/rust#62958);
// the block works on its captures in place.
#[allow(clippy::manual_async_fn)]
fn attempt<'a>(
    pools: &'a Arc<Pools>,
    route: &'a Route,
    slot: &'a mut Option<Request<ReqBody>>,
    trace: Option<&'a Trace>,
    upgrade: bool,
    avoid: &'a [SocketAddr],
    deadline: &'a Deadline<'a>,
) -> impl std::future::Future<Output = TryResult> + Send + 'a {
    // What needs no waiting is done before the future exists, so the future keeps only what
    // the send needs: a capture stays in the state for the future's whole life.
    let admitted = match slot.as_mut() {
        Some(req) => admit(route, req, avoid, deadline),
        None => Err(UpstreamError::NoEndpoint {
            upstream: route.upstream.name.clone(),
            targets: String::new(),
        }),
    };
    async move {
        let up = &route.upstream;
        let a = match admitted {
            Ok(a) => a,
            // Refused before sending: the request is still ours to send again.
            Err(e) => return (Err(e), Outcome::Failed(FailureKind::Local), None),
        };
        let ep = &a.ep;
        let inflight = ep.load.start();
        let sending = send(pools, up, ep, slot, trace, upgrade);
        let result = match tokio::time::timeout_at(a.until, sending).await {
            Ok(r) => r,
            Err(_) => Err(match a.per_try {
                Some(timeout) => UpstreamError::TryTimeout {
                    endpoint: ep.addr,
                    timeout,
                },
                None => deadline.expired(),
            }),
        };
        drop(inflight);
        // A 101 answers only a request that asked to switch (RFC 9110 §15.2.2); forwarded to
        // any other, it would tell the app its connection now speaks something else. Dropped
        // unread, the upstream connection is closed, not pooled.
        let result = match result {
            Ok((resp, ..))
                if !upgrade && resp.status() == http::StatusCode::SWITCHING_PROTOCOLS =>
            {
                Err(UpstreamError::BadResponse {
                    endpoint: ep.addr,
                    detail: "101 Switching Protocols to a request that asked for no upgrade".into(),
                })
            }
            r => r,
        };
        let Admitted {
            ep,
            admission,
            started,
            ..
        } = a;
        let outcome = match &result {
            Ok((resp, ..)) => Outcome::Status(resp.status()),
            Err(e) => Outcome::Failed(e.kind()),
        };
        let now = Instant::now();
        record(up, &ep, admission, outcome, now, now - started.into_std());
        (result, outcome, Some(ep.addr))
    }
}

/// A try let through the upstream's limits, balancer and breaker.
struct Admitted {
    _permit: crate::upstream::breaker::Permit,
    ep: Arc<Endpoint>,
    admission: Option<crate::upstream::breaker::Admission>,
    started: tokio::time::Instant,
    per_try: Option<Duration>,
    until: tokio::time::Instant,
}

/// A try's limits (`max_requests`), endpoint (avoiding those that just failed) and breaker
/// admission, and the request's `Host` for that endpoint.
fn admit(
    route: &Route,
    req: &mut Request<ReqBody>,
    avoid: &[SocketAddr],
    deadline: &Deadline<'_>,
) -> Result<Admitted, UpstreamError> {
    let up = &route.upstream;
    let Some(permit) = up.limits.acquire(Limit::Requests) else {
        up.metrics.overflowed(&up.name, Limit::Requests.name());
        return Err(UpstreamError::Overflow {
            upstream: up.name.clone(),
            limit: Limit::Requests.name(),
        });
    };
    let ep = balance::pick(up, avoid)?;
    let admission = match &up.breaker {
        Some(b) => match b.admit() {
            Some(a) => Some(a),
            None => {
                return Err(UpstreamError::CircuitOpen {
                    upstream: up.name.clone(),
                })
            }
        },
        None => None,
    };
    match host_for(route, &ep, req.headers(), req.uri()) {
        Some(h) => {
            req.headers_mut().insert(header::HOST, h);
        }
        None => {
            req.headers_mut().remove(header::HOST);
        }
    }
    let started = tokio::time::Instant::now();
    let per_try = route
        .retry
        .as_ref()
        .and_then(|p| p.per_try_timeout)
        .filter(|t| started + *t < deadline.at);
    let until = per_try.map_or(deadline.at, |t| started + t);
    Ok(Admitted {
        _permit: permit,
        ep,
        admission,
        started,
        per_try,
        until,
    })
}

/// Feeds one try's outcome to the balancer's latency estimate, outlier detection and breaker.
fn record(
    up: &Upstream,
    ep: &Arc<Endpoint>,
    admission: Option<crate::upstream::breaker::Admission>,
    outcome: Outcome,
    now: Instant,
    rtt: Duration,
) {
    let verdict = if !outcome.is_failure() {
        Verdict::Success
    } else if outcome == Outcome::Failed(FailureKind::Connect) {
        Verdict::ConnectFailure
    } else {
        Verdict::Failure
    };
    outcome::record(up, ep, admission, verdict, now, rtt);
}
