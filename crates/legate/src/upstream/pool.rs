//! Idle upstream connections, one pool per worker (like nginx workers: no cross-thread locking
//! on the request path; the mutex is only ever taken by the worker's own thread).
//!
//! HTTP/1.1 connections are checked out exclusively and come back when the response body has
//! been read to its end (see `PoolReturn`); an HTTP/2 connection is shared by cloning its sender.

use super::breaker::{Limit, Limits};
use super::connect::{self, Sender};
use super::h1::H1Conn;
use super::{Endpoint, Upstream, UpstreamError};
use crate::http::body::ReqBody;
use hyper::client::conn::{http1, http2};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

type Key = (usize, SocketAddr);

#[derive(Default)]
struct Idle {
    h1: Vec<(http1::SendRequest<ReqBody>, Instant)>,
    fast: Vec<(H1Conn, Instant)>,
    /// The shared HTTP/2 connection and when a request last took it: the pool lets go of it
    /// after `idle_timeout` without a request (streams still running finish on it, then it
    /// closes), as it does with idle HTTP/1.1 connections.
    h2: Option<(http2::SendRequest<ReqBody>, Instant)>,
    idle_timeout: Duration,
    /// Requests of this worker waiting for a connection (the upstream at `max_connections`),
    /// first come first served: a connection given back goes to them before the pool.
    waiters: VecDeque<Waiter>,
}

struct Waiter {
    /// Can use legate's own HTTP/1.1 client (hyper's connections suit every waiter).
    fast: bool,
    tx: oneshot::Sender<Sender>,
}

/// Gives `conn` to the first waiter that can use it; back if none could.
fn hand_over(entry: &mut Idle, mut conn: Sender) -> Option<Sender> {
    let mut i = 0;
    while i < entry.waiters.len() {
        let w = &entry.waiters[i];
        if w.tx.is_closed() {
            entry.waiters.remove(i);
            continue;
        }
        if matches!(conn, Sender::Fast(_)) && !w.fast {
            i += 1;
            continue;
        }
        let Some(w) = entry.waiters.remove(i) else {
            break;
        };
        match w.tx.send(conn) {
            Ok(()) => return None,
            Err(back) => conn = back,
        }
    }
    Some(conn)
}

/// What to do with a connection a request is done with: a waiter of this worker takes it; if
/// requests elsewhere wait for a connection slot, it is closed so its slot goes to them (pools
/// are per worker: an idle connection here is no use to a request waiting on another worker);
/// otherwise it is pooled (`Some`).
fn after_use(entry: &mut Idle, conn: Sender, limits: &Limits) -> Option<Sender> {
    let conn = hand_over(entry, conn)?;
    (limits.waiting() == 0).then_some(conn)
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
    limits: Arc<Limits>,
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
            limits: up.limits.clone(),
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
        let Some(Sender::H1(tx)) = after_use(entry, Sender::H1(self.tx), &self.limits) else {
            return;
        };
        if entry.h1.len() < self.max_idle {
            entry.h1.push((tx, Instant::now()));
        }
    }
}

/// Hands one of legate's own HTTP/1.1 connections back once its response body has ended.
pub struct FastReturn {
    pools: Arc<Pools>,
    key: Key,
    max_idle: usize,
    idle_timeout: Duration,
    limits: Arc<Limits>,
}

impl FastReturn {
    pub fn new(pools: Arc<Pools>, up: &Upstream, addr: SocketAddr) -> Self {
        Self {
            pools,
            key: (up.index, addr),
            max_idle: up.pool.max_idle_per_endpoint,
            idle_timeout: up.pool.idle_timeout,
            limits: up.limits.clone(),
        }
    }

    pub fn give(self, conn: H1Conn) {
        // No reuse at all: the connection closes (and its slot frees for a waiter).
        if self.max_idle == 0 {
            return;
        }
        let Ok(mut idle) = self.pools.idle.lock() else {
            return;
        };
        let entry = entry(&mut idle, self.key);
        entry.idle_timeout = self.idle_timeout;
        let Some(Sender::Fast(conn)) = after_use(entry, Sender::Fast(conn), &self.limits) else {
            return;
        };
        if entry.fast.len() < self.max_idle {
            entry.fast.push((conn, Instant::now()));
        }
    }
}

impl Pools {
    fn take(&self, key: Key, idle_timeout: Duration, fast: bool) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        let entry = idle.iter_mut().find(|(k, _)| *k == key).map(|(_, e)| e)?;
        let now = Instant::now();
        if let Some((h2, used)) = &mut entry.h2 {
            if !h2.is_closed() {
                *used = now;
                return Some(Sender::H2(h2.clone()));
            }
            entry.h2 = None;
        }
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
            // An HTTP/2 connection is shared: every request of this worker waiting for a
            // connection to this endpoint can use it now.
            for w in entry.waiters.drain(..) {
                let _ = w.tx.send(Sender::H2(tx.clone()));
            }
            entry.h2 = Some((tx, Instant::now()));
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
                if e.h2
                    .as_ref()
                    .is_some_and(|(h, used)| h.is_closed() || now.duration_since(*used) >= timeout)
                {
                    e.h2 = None;
                }
                e.waiters.retain(|w| !w.tx.is_closed());
                !e.h1.is_empty() || !e.fast.is_empty() || e.h2.is_some() || !e.waiters.is_empty()
            });
        }
    }
}

enum Waited {
    /// A connection slot freed: open a new connection with it.
    Slot(super::breaker::Permit),
    /// A connection another request of this worker gave back.
    Conn(Sender),
}

/// A connection handed over or taken from the pool, once it can take a request (hyper's
/// HTTP/1.1 sender may not have signalled readiness yet); `None` if it closed meanwhile.
async fn ready(sender: Sender) -> Option<Sender> {
    match sender {
        Sender::H1(mut tx) => tx.ready().await.ok().map(|()| Sender::H1(tx)),
        other => Some(other),
    }
}

/// At `max_connections`: waits (bounded by the caller's deadline) until a request of this
/// worker gives a connection back, or a slot frees anywhere.
async fn wait_for_connection(pools: &Arc<Pools>, up: &Upstream, key: Key, fast: bool) -> Waited {
    let _waiting = up.limits.wait_for_connection();
    loop {
        // An HTTP/2 connection opened meanwhile (shared), or one given back to the pool.
        if let Some(sender) = pools.take(key, up.pool.idle_timeout, fast) {
            if let Some(ready) = ready(sender).await {
                return Waited::Conn(ready);
            }
        }
        let (tx, mut rx) = oneshot::channel();
        if let Ok(mut idle) = pools.idle.lock() {
            entry(&mut idle, key).waiters.push_back(Waiter { fast, tx });
        }
        let freed = up.limits.freed();
        tokio::pin!(freed);
        freed.as_mut().enable();
        // A slot may have freed between the first try and registering.
        if let Some(p) = up.limits.acquire(Limit::Connections) {
            return Waited::Slot(p);
        }
        tokio::select! {
            got = &mut rx => {
                if let Ok(sender) = got {
                    if let Some(ready) = ready(sender).await {
                        return Waited::Conn(ready);
                    }
                }
            }
            _ = freed => {
                // Take the slot, or wait again if another request took it first; a connection
                // handed over meanwhile is not lost: it is in `rx`.
                rx.close();
                if let Ok(sender) = rx.try_recv() {
                    if let Some(ready) = ready(sender).await {
                        return Waited::Conn(ready);
                    }
                }
                if let Some(p) = up.limits.acquire(Limit::Connections) {
                    return Waited::Slot(p);
                }
            }
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
    // Waiting for a connection is the "pending" state Envoy's max_pending_requests bounds.
    let Some(_pending) = up.limits.acquire(Limit::PendingRequests) else {
        up.metrics
            .overflowed(&up.name, Limit::PendingRequests.name());
        return Err(UpstreamError::Overflow {
            upstream: up.name.clone(),
            limit: "max_pending_requests",
        });
    };
    let permit = match up.limits.acquire(Limit::Connections) {
        Some(p) => p,
        None => match wait_for_connection(pools, up, key, fast).await {
            Waited::Slot(p) => p,
            Waited::Conn(sender) => {
                ep.metrics.reused.inc();
                return Ok(Checkout {
                    sender,
                    reused: true,
                });
            }
        },
    };
    // Boxed: connecting (TCP, TLS, HTTP/2 handshake) is a large future that most requests never
    // run, and an inline one would make every request's future as large (moved per request).
    // Boxed in its own statement: in `Box::pin(f()).await` the temporary `f()` lives to the end
    // of the statement and so would be part of every request's state, connected or not.
    let opening = Box::pin(connect::open(up, ep, fast, permit));
    let sender = opening.await?;
    if let Sender::H2(tx) = &sender {
        pools.put_h2(key, up.pool.idle_timeout, tx.clone());
    }
    Ok(Checkout {
        sender,
        reused: false,
    })
}
