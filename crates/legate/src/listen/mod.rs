//! Listening sockets and the accept loop. Every worker gets its own TCP socket on the same
//! address (SO_REUSEPORT), so the kernel spreads connections across workers with no shared
//! accept lock, as nginx does; a Unix socket is one file, shared by the workers.

mod limit;
pub mod unix;

pub use limit::{ConnLimit, ConnSlot, ConnTracker, Tracked};

use crate::http::proxy::ListenerCtx;
use crate::http::server::{self, ConnBuilder};
use crate::tcp::TcpListenerCtx;
use crate::telemetry::throttle::Throttle;
use crate::upstream::pool::Pools;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The OS error is part of the message (not a `source`), so it is said once.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {error}{hint}")]
pub struct BindError {
    pub what: String,
    pub addr: String,
    pub error: std::io::Error,
    /// What to do about it, when legate can tell.
    pub hint: String,
}

impl BindError {
    pub fn new(what: &str, addr: impl ToString, source: std::io::Error) -> Self {
        Self {
            what: what.to_string(),
            addr: addr.to_string(),
            error: source,
            hint: String::new(),
        }
    }
}

/// Binds `count` sockets to `addr` with SO_REUSEPORT. Port 0 is resolved by the first socket
/// and the others join the same port.
pub fn bind_shared(
    what: &str,
    addr: SocketAddr,
    count: usize,
) -> Result<Vec<std::net::TcpListener>, BindError> {
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let l = bind_one(addr).map_err(|source| BindError::new(what, addr, source))?;
        if addr.port() == 0 {
            if let Ok(a) = l.local_addr() {
                addr = a;
            }
        }
        out.push(l);
    }
    Ok(out)
}

fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // A burst of connects from the app must not overflow the accept queue (the kernel caps
    // this at net.core.somaxconn, 4096 by default).
    socket.listen(4096)?;
    Ok(socket.into())
}

/// One worker's listening socket.
pub enum Bound {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// What a listener does with the connections it accepts.
#[derive(Clone)]
pub enum Service {
    Http {
        ctx: Arc<ListenerCtx>,
        builder: Arc<ConnBuilder>,
    },
    Tcp(Arc<TcpListenerCtx>),
}

/// A listener's compiled settings: one snapshot of the config.
pub struct Serving {
    pub service: Service,
    /// Shared by every worker's socket of this listener.
    pub limit: Option<Arc<ConnLimit>>,
}

impl Serving {
    pub fn http(&self) -> Option<&Arc<ListenerCtx>> {
        match &self.service {
            Service::Http { ctx, .. } => Some(ctx),
            Service::Tcp(_) => None,
        }
    }
}

/// The listener's current snapshot. A reload stores a new one; each connection reads it when
/// accepted and each HTTP request when it arrives, and keeps what it read until it is done (so
/// in-flight work finishes on the snapshot it started with).
pub type ServingHandle = Arc<arc_swap::ArcSwap<Serving>>;

/// A listener as one worker runs it.
pub struct Accepting {
    pub name: Arc<str>,
    pub socket: Bound,
    pub serving: ServingHandle,
    /// Flips when a reload removes (or rebinds) this listener.
    pub removed: watch::Receiver<bool>,
}

/// A listener's sockets, one per worker, before any worker runs them.
pub struct BoundListener {
    pub sockets: Vec<Bound>,
    /// The bound TCP address (port 0 resolved); `None` for a Unix socket.
    pub addr: Option<SocketAddr>,
    /// The socket file legate created, to remove when the listener goes.
    pub unix_path: Option<std::path::PathBuf>,
}

/// Binds one listener for `workers` workers: a TCP socket each (SO_REUSEPORT), or one Unix
/// socket file whose descriptor they share.
pub fn bind_listener(
    l: &crate::config::ListenerConfig,
    workers: usize,
) -> Result<BoundListener, BindError> {
    use crate::config::ListenOn;
    let what = format!("listener `{}`", l.name);
    match &l.listen {
        ListenOn::Tcp(a) => {
            let sockets = bind_shared(&what, a.0, workers)?;
            let addr = sockets[0]
                .local_addr()
                .map_err(|source| BindError::new(&what, a, source))?;
            Ok(BoundListener {
                sockets: sockets.into_iter().map(Bound::Tcp).collect(),
                addr: Some(addr),
                unix_path: None,
            })
        }
        ListenOn::Unix(path) => {
            let mode = l
                .socket_mode
                .map_or(crate::config::DEFAULT_SOCKET_MODE, |m| m.0);
            let first = unix::bind(&what, path, mode)?;
            let mut sockets = Vec::with_capacity(workers);
            for _ in 1..workers.max(1) {
                match first.try_clone() {
                    Ok(s) => sockets.push(Bound::Unix(s)),
                    Err(source) => {
                        unix::remove(path);
                        return Err(BindError::new(&what, l.listen.to_string(), source));
                    }
                }
            }
            sockets.push(Bound::Unix(first));
            Ok(BoundListener {
                sockets,
                addr: None,
                unix_path: Some(path.clone()),
            })
        }
    }
}

enum Listening {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    Unix(tokio::net::UnixStream),
}

impl Listening {
    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Listening::Tcp(l) => l.accept().await.map(|(s, a)| Accepted::Tcp(s, a)),
            Listening::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
        }
    }
}

/// Accepts until `shutdown` flips or a reload removes the listener, then drops the socket so
/// new connections are refused and asks its HTTP connections to finish (`Connection: close`,
/// GOAWAY, idle ones closed). Tunnels are left to the worker's drain: a reload that removes a
/// TCP listener does not cut the database sessions it carries.
pub async fn accept_loop(
    a: Accepting,
    pools: Arc<Pools>,
    tracker: Arc<ConnTracker>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Drained however the loop ends (a panic included): the listener's connections must learn
    // that it no longer accepts.
    struct DrainOnExit(crate::server::drain::ListId);
    impl Drop for DrainOnExit {
        fn drop(&mut self) {
            crate::server::drain::drain(self.0);
        }
    }
    let list = DrainOnExit(crate::server::drain::new_list());
    accept_until_stopped(a, &pools, &tracker, &mut shutdown, list.0).await;
}

async fn accept_until_stopped(
    mut a: Accepting,
    pools: &Arc<Pools>,
    tracker: &Arc<ConnTracker>,
    shutdown: &mut watch::Receiver<bool>,
    finishing: crate::server::drain::ListId,
) {
    let registered = match a.socket {
        Bound::Tcp(s) => tokio::net::TcpListener::from_std(s).map(Listening::Tcp),
        Bound::Unix(s) => tokio::net::UnixListener::from_std(s).map(Listening::Unix),
    };
    let listener = match registered {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %a.name, error = %e, "cannot register listener");
            return;
        }
    };
    let accept_failed = Throttle::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            _ = a.removed.wait_for(|s| *s) => {
                tracing::info!(listener = %a.name, "listener removed by a reload: no longer accepting");
                break;
            }
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; in-flight work goes on.
                if let Some(folded) = accept_failed.check() {
                    tracing::warn!(listener = %a.name, error = %e, folded, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let serving = a.serving.load_full();
        let slot = match &serving.limit {
            None => None,
            Some(limit) => match limit.try_acquire() {
                Some(slot) => Some(slot),
                None => {
                    limit.refused.inc();
                    if let Some(folded) = limit.log.check() {
                        tracing::warn!(listener = %a.name, max_connections = limit.max, folded,
                            "connection refused: the listener is at its max_connections");
                    }
                    // Dropping the stream closes it at once; nothing was read or sent.
                    continue;
                }
            },
        };
        match (&serving.service, stream) {
            (Service::Http { ctx, builder }, Accepted::Tcp(stream, _)) => server::serve(
                stream,
                builder,
                ctx.clone(),
                a.serving.clone(),
                pools.clone(),
                tracker,
                slot,
                finishing,
            ),
            (Service::Tcp(ctx), Accepted::Tcp(stream, peer)) => {
                let _ = stream.set_nodelay(true);
                crate::tcp::spawn(ctx.clone(), stream, Some(peer), tracker, slot);
            }
            (Service::Tcp(ctx), Accepted::Unix(stream)) => {
                crate::tcp::spawn(ctx.clone(), stream, None, tracker, slot);
            }
            (Service::Http { .. }, Accepted::Unix(_)) => {
                // The validator keeps HTTP listeners off Unix sockets.
                tracing::error!(listener = %a.name, "HTTP on a Unix socket is not supported");
            }
        }
    }
}
