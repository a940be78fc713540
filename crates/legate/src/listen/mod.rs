//! Listening sockets. Every worker gets its own socket on the same address (SO_REUSEPORT), so
//! the kernel spreads connections across workers with no shared accept lock, as nginx does.

use crate::http::proxy::ListenerCtx;
use crate::http::server::{self, ConnBuilder, ConnTracker};
use crate::upstream::pool::Pools;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    pub what: String,
    pub addr: SocketAddr,
    pub source: std::io::Error,
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
        let l = bind_one(addr).map_err(|source| BindError {
            what: what.to_string(),
            addr,
            source,
        })?;
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
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Accepts until `shutdown` flips, then drops the socket so new connections are refused.
pub async fn accept_loop(
    std_listener: std::net::TcpListener,
    ctx: Arc<ListenerCtx>,
    builder: Arc<ConnBuilder>,
    pools: Arc<Pools>,
    tracker: Arc<ConnTracker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(std_listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %ctx.obs.name, error = %e, "cannot register listener");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => server::serve(
                stream,
                &builder,
                ctx.clone(),
                pools.clone(),
                &tracker,
                shutdown.clone(),
            ),
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; in-flight work goes on.
                tracing::warn!(listener = %ctx.obs.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
