//! One request's life, phase by phase:
//!
//! 1. refuse what an ambassador must never forward (CONNECT, absolute-form to other hosts);
//! 2. match a route; 3. request id, hop-by-hop removal, header rules, Host;
//! 4. forward within the route's timeout (one deadline, see `forward`): pick an endpoint, check out a pooled connection or
//!    open one, send (a request the pool's connection never wrote is re-sent once on a fresh
//!    connection: the keep-alive race, envoy#1979);
//! 5. response header rules; the body streams back and is accounted for when it ends.

use super::body::{Inbound, ReqBody, RespBody, UpBody};
use super::headers::{is_upgrade_request, strip_hop_by_hop};
use super::local;
use super::observe::{ListenerObs, Observe};
use super::route::{HostPolicy, Route};
use super::serve_h1::ClientUpgrade;
use super::trace::Trace;
use super::{request_id, upgrade};
use crate::upstream::connect::Sender;
use crate::upstream::pool::{self, FastReturn, PoolReturn, Pools};
use crate::upstream::{Endpoint, UpstreamError};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// A listener as compiled: its routes, its TLS and its accounting.
pub struct ListenerCtx {
    pub addr: SocketAddr,
    pub routes: Vec<Arc<Route>>,
    pub obs: Arc<ListenerObs>,
    pub tls: Option<Arc<crate::tls::server::ServerTls>>,
}

/// What is known about a client connection before its first request.
#[derive(Debug, Default)]
pub struct ConnInfo {
    /// The verified client certificate as an `x-forwarded-client-cert` element, when the
    /// listener forwards it.
    pub xfcc: Option<HeaderValue>,
}

// Not an `async fn`: an async fn keeps its arguments twice in its state (rust-lang/rust#62958);
// the block works on its captures in place (a request is hundreds of bytes).
#[allow(clippy::manual_async_fn)]
pub fn handle<'a>(
    listener: &'a ListenerCtx,
    pools: &'a Arc<Pools>,
    conn: &'a ConnInfo,
    mut req: Request<Inbound>,
    client_upgrade: Option<ClientUpgrade>,
) -> impl std::future::Future<Output = Response<RespBody>> + Send + 'a {
    async move {
        let mut obs = Observe::start(&listener.obs, &req);

        if req.method() == Method::CONNECT {
            return local::reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "connect-refused",
                "CONNECT is not supported: legate forwards only to its configured upstreams",
                obs,
            );
        }
        if req.version() < Version::HTTP_2
            && req.uri().scheme().is_some()
            && !is_own_authority(req.uri(), listener.addr)
        {
            return local::reply(
                StatusCode::FORBIDDEN,
                "open-proxy-refused",
                "absolute-form request for another host: legate is not an open proxy",
                obs,
            );
        }
        let Some(route) = listener.routes.iter().find(|r| r.matcher.matches(&req)) else {
            return local::reply(
                StatusCode::NOT_FOUND,
                "no-route",
                "no route matches this request",
                obs,
            );
        };
        obs.route = Some(route.clone());
        if let Some(limit) = &route.rate_limit {
            if let Err(wait) = limit.try_take() {
                route.metrics.rate_limited.inc();
                let mut resp = local::reply(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "route rate limit reached",
                    obs,
                );
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
                return resp;
            }
        }
        obs.request_id = Some(request_id::ensure(req.headers_mut()));
        obs.begin_trace(&mut req);
        if let Some(name) = listener
            .tls
            .as_ref()
            .and_then(|t| t.forward_client_cert.as_ref())
        {
            // Only legate may say who the client is: a copy from outside is a forgery.
            req.headers_mut().remove(name);
            if let Some(v) = &conn.xfcc {
                req.headers_mut().insert(name.clone(), v.clone());
            }
        }

        let client_version = req.version();
        // HTTP/1.1 only, as the server that would carry the switch decides (HTTP/1.0 has no 101).
        let wants_upgrade = client_version == Version::HTTP_11 && is_upgrade_request(req.headers());
        let client_upgrade = client_upgrade.filter(|_| wants_upgrade);
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(
            &mut parts.headers,
            wants_upgrade,
            !route.forward_proxy_authorization,
        );
        route.request_rules.apply(&mut parts.headers);
        for h in &route.file_headers {
            parts.headers.insert(h.header.clone(), h.value());
        }
        let body = if body.is_end_stream() {
            ReqBody::Empty
        } else if let Inbound::Full(data) = body {
            obs.bytes_in = Some(Arc::new(AtomicU64::new(data.len() as u64)));
            ReqBody::Full {
                data: Some(data),
                trailers: None,
            }
        } else {
            let counted = Arc::new(AtomicU64::new(0));
            obs.bytes_in = Some(counted.clone());
            ReqBody::Stream {
                inner: body,
                counted,
            }
        };

        let sent =
            super::forward::forward(pools, route, parts, body, wants_upgrade, &mut obs).await;
        let (mut resp, pool_return, endpoint) = match sent {
            Err(e) => {
                let (status, reason) = e.reply();
                if let Some(ep) = e.endpoint() {
                    obs.endpoint = Some(ep);
                }
                let endpoint = e
                    .endpoint()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "none".into());
                if let Some(folded) = route.failure_log.check() {
                    tracing::warn!(route = %route.name, upstream = %route.upstream.name,
                        endpoint, reason, error = %e, folded, "upstream request failed");
                }
                return local::reply(status, reason, &e.to_string(), obs);
            }
            Ok(sent) => sent,
        };
        obs.endpoint = Some(endpoint);
        obs.status = resp.status().as_u16();

        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(client)) = (switching, client_upgrade) {
            upgrade::bridge(client, hyper::upgrade::on(&mut resp), endpoint);
        }
        let (mut rparts, rbody) = resp.into_parts();
        rparts.version = client_version;
        strip_hop_by_hop(&mut rparts.headers, switching, false);
        route.response_rules.apply(&mut rparts.headers);
        let pool_return = if switching { None } else { pool_return };
        Response::from_parts(
            rparts,
            RespBody::upstream(rbody, pool_return, obs, route.response_body_timeout),
        )
    }
}

/// `http://localhost:8080/x` sent to legate's own listener is an odd but harmless spelling of
/// `/x`; any other authority would make legate an open proxy.
fn is_own_authority(uri: &Uri, own: SocketAddr) -> bool {
    let Some(auth) = uri.authority() else {
        return true;
    };
    let port_ok = auth.port_u16().is_none_or(|p| p == own.port());
    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
    let host_ok = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip == own.ip() || ip.is_loopback());
    port_ok && host_ok
}

/// The Host the upstream sees.
pub(crate) fn host_for(
    route: &Route,
    ep: &Endpoint,
    headers: &http::HeaderMap,
    uri: &Uri,
) -> Option<HeaderValue> {
    match &route.host {
        HostPolicy::Upstream => route
            .upstream
            .targets
            .get(ep.target)
            .map(|t| t.authority.clone()),
        HostPolicy::Literal(h) => Some(h.clone()),
        HostPolicy::Keep => headers.get(header::HOST).cloned().or_else(|| {
            uri.authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        }),
    }
}

/// Rewrites the request target for the connection's protocol: origin-form for HTTP/1.1,
/// scheme and authority (from Host) for HTTP/2, where `:authority` replaces `Host`.
fn set_target(req: &mut Request<ReqBody>, h2: bool, tls: bool) {
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if !h2 {
        *req.uri_mut() = Uri::from(pq);
        *req.version_mut() = Version::HTTP_11;
        return;
    }
    let authority = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok());
    let mut b = Uri::builder().scheme(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    if let Some(a) = authority {
        b = b.authority(a);
    }
    if let Ok(uri) = b.path_and_query(pq).build() {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_2;
}

/// RFC 9110 §9.2.2: safe to send twice.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

pub(crate) type Forwarded = (Response<UpBody>, Option<PoolReturn>, SocketAddr);

/// Sends on a pooled connection, or a fresh one. If the pooled connection turns out to be
/// closed before the request was written, the request comes back untouched and goes out once
/// more on a new connection; anything written is never re-sent here (that is the retry
/// policy's call, which knows about idempotency).
pub async fn send(
    pools: &Arc<Pools>,
    up: &crate::upstream::Upstream,
    ep: &Arc<Endpoint>,
    slot: &mut Option<Request<ReqBody>>,
    trace: Option<&Trace>,
    upgrade: bool,
) -> Result<Forwarded, UpstreamError> {
    // An upgraded connection never returns to the pool, so don't take a warm one for it.
    let mut fresh = upgrade;
    // Once a request handed to hyper comes back unsent, its trace headers are in its map and
    // must not be appended a second time.
    let mut in_map = false;
    // legate's own HTTP/1.1 client takes requests whose body is in memory; streamed bodies
    // and upgrades go through hyper's.
    let fast = !upgrade
        && slot.as_ref().is_some_and(|r| {
            matches!(
                r.body(),
                ReqBody::Empty | ReqBody::Full { trailers: None, .. }
            )
        });
    loop {
        let co = pool::checkout(pools, up, ep, fresh, fast).await?;
        let tls = up.tls.is_some();
        let Some(req) = slot.as_mut() else {
            return Err(UpstreamError::NoEndpoint {
                upstream: up.name.clone(),
                targets: "(request already sent)".into(),
            });
        };
        let result = match co.sender {
            Sender::Fast(conn) => {
                set_target(req, false, tls);
                let back = FastReturn::new(pools.clone(), up, ep.addr);
                let trace = trace.filter(|_| !in_map);
                let extra = |out: &mut Vec<u8>| {
                    if let Some(t) = trace {
                        t.write_wire(out);
                    }
                };
                match conn.request(req, &extra, back).await {
                    Ok(resp) => return Ok((resp.map(UpBody::Fast), None, ep.addr)),
                    // A reused connection that failed before anything came back: written or
                    // not, an idempotent request (or one never fully written) may go again.
                    Err(f)
                        if co.reused
                            && f.no_response
                            && (f.while_writing || is_idempotent(req.method())) =>
                    {
                        tracing::debug!(endpoint = %ep.addr, error = %f.error, "pooled connection failed before answering; resending on a new connection");
                        fresh = true;
                        continue;
                    }
                    Err(f) => return Err(UpstreamError::from_h1(ep.addr, f.error)),
                }
            }
            Sender::H1(mut tx) => {
                set_target(req, false, tls);
                if let Some(t) = trace {
                    t.write_headers(req.headers_mut());
                    in_map = true;
                }
                let Some(req) = slot.take() else { continue };
                match tx.try_send_request(req).await {
                    Ok(resp) => {
                        return Ok((
                            resp.map(UpBody::Hyper),
                            Some(PoolReturn::new(pools.clone(), up, ep.addr, tx)),
                            ep.addr,
                        ))
                    }
                    Err(e) => e,
                }
            }
            Sender::H2(mut tx) => {
                if upgrade {
                    return Err(UpstreamError::UpgradeUnsupported { endpoint: ep.addr });
                }
                set_target(req, true, tls);
                if let Some(t) = trace {
                    t.write_headers(req.headers_mut());
                    in_map = true;
                }
                let Some(req) = slot.take() else { continue };
                match tx.try_send_request(req).await {
                    Ok(resp) => return Ok((resp.map(UpBody::Hyper), None, ep.addr)),
                    Err(e) => e,
                }
            }
        };
        let mut err = result;
        match err.take_message() {
            Some(unsent) if co.reused => {
                tracing::debug!(endpoint = %ep.addr, "pooled connection was closed before the request was written; resending on a new connection");
                *slot = Some(unsent);
                fresh = true;
            }
            _ => return Err(UpstreamError::from_send(ep.addr, err.into_error())),
        }
    }
}
