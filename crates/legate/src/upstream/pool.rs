//! Idle upstream connections, one pool per worker (like nginx workers: no cross-thread locking
//! on the request path; the mutex is only ever taken by the worker's own thread).
//!
//! HTTP/1.1 connections are checked out exclusively and come back when the response body has
//! been read to its end (see `PoolReturn`); an HTTP/2 connection is shared by cloning its sender.

use super::connect::{self, Sender};
use super::h1::H1Conn;
use super::{Endpoint, Upstream, UpstreamError};
use crate::http::body::ReqBody;
use hyper::client::conn::{http1, http2};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Key = (usize, SocketAddr);

#[derive(Default)]
struct Idle {
    h1: Vec<(http1::SendRequest<ReqBody>, Instant)>,
    fast: Vec<(H1Conn, Instant)>,
    h2: Option<http2::SendRequest<ReqBody>>,
    idle_timeout: Duration,
}

/// Keyed by (upstream, endpoint). A sidecar talks to a handful of endpoints, so a linear scan
/// over a short vector beats hashing a socket address twice per request.
#[derive(Default)]
pub struct Pools {
    idle: Mutex<Vec<(Key, Idle)>>,
}

fn entry(v: &mut Vec<(Key, Idle)>, key: Key) -> &mut Idle {
    let i = match v.iter().position(|(k, _)| *k == key) {
        Some(i) => i,
        None => {
            v.push((key, Idle::default()));
            v.len() - 1
        }
    };
    &mut v[i].1
}

/// Hands an HTTP/1.1 connection back to its pool once the response is fully read.
pub struct PoolReturn {
    pools: Arc<Pools>,
    key: Key,
    max_idle: usize,
    idle_timeout: Duration,
    tx: http1::SendRequest<ReqBody>,
}

impl PoolReturn {
    pub fn new(
        pools: Arc<Pools>,
        up: &Upstream,
        addr: SocketAddr,
        tx: http1::SendRequest<ReqBody>,
    ) -> Self {
        Self {
            pools,
            key: (up.index, addr),
            max_idle: up.pool.max_idle_per_endpoint,
            idle_timeout: up.pool.idle_timeout,
            tx,
        }
    }

    pub fn give_back(self) {
        if self.tx.is_closed() || self.max_idle == 0 {
            return;
        }
        let Ok(mut idle) = self.pools.idle.lock() else {
            return;
        };
        let entry = entry(&mut idle, self.key);
        entry.idle_timeout = self.idle_timeout;
        if entry.h1.len() < self.max_idle {
            entry.h1.push((self.tx, Instant::now()));
        }
    }
}

/// Hands one of legate's own HTTP/1.1 connections back once its response body has ended.
pub struct FastReturn {
    pools: Arc<Pools>,
    key: Key,
    max_idle: usize,
    idle_timeout: Duration,
}

impl FastReturn {
    pub fn new(pools: Arc<Pools>, up: &Upstream, addr: SocketAddr) -> Self {
        Self {
            pools,
            key: (up.index, addr),
            max_idle: up.pool.max_idle_per_endpoint,
            idle_timeout: up.pool.idle_timeout,
        }
    }

    pub fn give(self, conn: H1Conn) {
        if self.max_idle == 0 {
            return;
        }
        let Ok(mut idle) = self.pools.idle.lock() else {
            return;
        };
        let entry = entry(&mut idle, self.key);
        entry.idle_timeout = self.idle_timeout;
        if entry.fast.len() < self.max_idle {
            entry.fast.push((conn, Instant::now()));
        }
    }
}

impl Pools {
    fn take(&self, key: Key, idle_timeout: Duration, fast: bool) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        let entry = idle.iter_mut().find(|(k, _)| *k == key).map(|(_, e)| e)?;
        if let Some(h2) = &entry.h2 {
            if !h2.is_closed() {
                return Some(Sender::H2(h2.clone()));
            }
            entry.h2 = None;
        }
        let now = Instant::now();
        if fast {
            // LIFO: the most recently used connection is the most likely to be alive.
            while let Some((mut conn, since)) = entry.fast.pop() {
                if now.duration_since(since) < idle_timeout && conn.is_reusable() {
                    return Some(Sender::Fast(conn));
                }
            }
        }
        while let Some((tx, since)) = entry.h1.pop() {
            if !tx.is_closed() && now.duration_since(since) < idle_timeout {
                return Some(Sender::H1(tx));
            }
        }
        None
    }

    fn put_h2(&self, key: Key, idle_timeout: Duration, tx: http2::SendRequest<ReqBody>) {
        if let Ok(mut idle) = self.idle.lock() {
            let entry = entry(&mut idle, key);
            entry.idle_timeout = idle_timeout;
            entry.h2 = Some(tx);
        }
    }

    /// Puts an HTTP/1.1 connection straight into the pool (used by tests to stage races).
    pub fn put_h1(&self, up: &Upstream, addr: SocketAddr, tx: http1::SendRequest<ReqBody>) {
        if let Ok(mut idle) = self.idle.lock() {
            let entry = entry(&mut idle, (up.index, addr));
            entry.idle_timeout = up.pool.idle_timeout;
            entry.h1.push((tx, Instant::now()));
        }
    }

    /// Closes connections idle for longer than their upstream's `idle_timeout`.
    pub fn sweep(&self) {
        let now = Instant::now();
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain_mut(|(_, e)| {
                e.h1.retain(|(tx, since)| {
                    !tx.is_closed() && now.duration_since(*since) < e.idle_timeout
                });
                let timeout = e.idle_timeout;
                e.fast.retain_mut(|(conn, since)| {
                    now.duration_since(*since) < timeout && conn.is_reusable()
                });
                if e.h2.as_ref().is_some_and(|h| h.is_closed()) {
                    e.h2 = None;
                }
                !e.h1.is_empty() || !e.fast.is_empty() || e.h2.is_some()
            });
        }
    }
}

/// A connection ready to take a request, and whether it was reused from the pool.
pub struct Checkout {
    pub sender: Sender,
    pub reused: bool,
}

/// A pooled connection if one is alive, otherwise a new one. `fast`: the request may use
/// legate's own HTTP/1.1 client (no upgrade, body in memory).
pub async fn checkout(
    pools: &Arc<Pools>,
    up: &Upstream,
    ep: &Endpoint,
    fresh: bool,
    fast: bool,
) -> Result<Checkout, UpstreamError> {
    let key = (up.index, ep.addr);
    if !fresh {
        while let Some(sender) = pools.take(key, up.pool.idle_timeout, fast) {
            match sender {
                Sender::Fast(conn) => {
                    ep.metrics.reused.inc();
                    return Ok(Checkout {
                        sender: Sender::Fast(conn),
                        reused: true,
                    });
                }
                Sender::H2(tx) => {
                    ep.metrics.reused.inc();
                    return Ok(Checkout {
                        sender: Sender::H2(tx),
                        reused: true,
                    });
                }
                Sender::H1(mut tx) => {
                    // Ready is immediate for an idle connection; an error means the peer closed it.
                    if tx.ready().await.is_ok() {
                        ep.metrics.reused.inc();
                        return Ok(Checkout {
                            sender: Sender::H1(tx),
                            reused: true,
                        });
                    }
                }
            }
        }
    }
    // Waiting for a new connection is the "pending" state Envoy's max_pending_requests bounds.
    let Some(_pending) = up.limits.acquire(super::breaker::Limit::PendingRequests) else {
        up.metrics
            .overflowed(&up.name, super::breaker::Limit::PendingRequests.name());
        return Err(UpstreamError::Overflow {
            upstream: up.name.clone(),
            limit: "max_pending_requests",
        });
    };
    // Boxed: connecting (TCP, TLS, HTTP/2 handshake) is a large future that most requests never
    // run, and an inline one would make every request's future as large (moved per request).
    let sender = Box::pin(connect::open(up, ep, fast)).await?;
    if let Sender::H2(tx) = &sender {
        pools.put_h2(key, up.pool.idle_timeout, tx.clone());
    }
    Ok(Checkout {
        sender,
        reused: false,
    })
}
