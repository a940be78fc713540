//! Serving one client connection: HTTP/1.1 (with upgrades, legate's own server) or HTTP/2 (h2c
//! with prior knowledge, or ALPN h2: hyper's), told apart by peeking at the first bytes or by
//! ALPN (no wrapper stays in the I/O path), with header limits and graceful shutdown.

use super::body::Inbound;
use super::proxy::{self, ConnInfo, ListenerCtx};
use super::serve_h1::{self, ClientIo, ConnCtx, Settings};
use crate::config::ListenerLimits;
use crate::h1::request::HeadLimits;
use crate::listen::{ConnSlot, ConnTracker, ServingHandle, Tracked};
use crate::tls::server::ServerTls;
use crate::upstream::pool::Pools;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Per-listener protocol settings, built once: legate's own HTTP/1.1 server's, and hyper's
/// for HTTP/2.
pub struct ConnBuilder {
    h1: Arc<Settings>,
    h2: http2::Builder<TokioExecutor>,
}

pub fn builder(limits: &ListenerLimits) -> ConnBuilder {
    let max_head = usize::try_from(limits.max_header_bytes.0).unwrap_or(usize::MAX);
    let h1 = Settings {
        limits: HeadLimits {
            max_header_bytes: max_head,
            max_headers: limits.max_headers,
        },
        header_read_timeout: limits.header_read_timeout.get(),
        idle_timeout: limits.idle_timeout.get(),
        body_timeout: limits.request_body_timeout.get(),
    };
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes.0).unwrap_or(u32::MAX));
    ConnBuilder {
        h1: Arc::new(h1),
        h2,
    }
}

/// Is this the start of an HTTP/2 prior-knowledge preface? `None`: need more bytes to tell.
fn is_h2_preface(peeked: &[u8]) -> Option<bool> {
    let n = peeked.len().min(H2_PREFACE.len());
    if peeked[..n] != H2_PREFACE[..n] {
        Some(false)
    } else if n >= 4 {
        // "PRI " is not an HTTP/1 method anyone may use (RFC 9113 §3.4).
        Some(true)
    } else {
        None
    }
}

async fn sniff_h2(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        if let Some(h2) = is_h2_preface(&buf[..n]) {
            return Ok(h2);
        }
        // A client that sent fewer than four bytes: wait a moment for the rest.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Drives `conn` to completion, asking it to finish gracefully when shutdown begins.
async fn with_graceful<C, E>(
    conn: C,
    mut shutdown: watch::Receiver<bool>,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut conn = pin!(conn);
    let finished = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = shutdown.wait_for(|s| *s) => None,
    };
    let result = match finished {
        Some(r) => r,
        None => {
            graceful(conn.as_mut());
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "client connection ended with error");
    }
}

/// `listener` is the snapshot the connection was accepted with (its TLS, its protocol
/// settings); each request reads the listener's current routes from `current`. HTTP/1.x
/// connections are served by legate's own server (`serve_h1`), HTTP/2 ones (h2c prior
/// knowledge, ALPN h2) by hyper's: the choice is made once, before the first request.
#[allow(clippy::too_many_arguments)]
pub fn serve(
    stream: TcpStream,
    builder: &Arc<ConnBuilder>,
    listener: Arc<ListenerCtx>,
    current: ServingHandle,
    pools: Arc<Pools>,
    tracker: &Arc<ConnTracker>,
    slot: Option<ConnSlot>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let tracked = Tracked::new(tracker);
    let builder = builder.clone();
    // An HTTP/1.1 connection spends its life waiting for its next request, in a task of its
    // own that holds only that wait (`serve_h1::serve`): the sniff, the TLS handshake and
    // hyper's HTTP/2 connection happen in this first task, which ends once it has handed the
    // connection over (one more spawn per connection, paid once, rather than a task as large
    // as a TLS handshake for as long as the connection is idle).
    tokio::spawn(async move {
        let keep = (tracked, slot);
        let ctx = |conn| {
            Arc::new(ConnCtx {
                accepted_with: listener.clone(),
                current,
                pools,
                conn,
            })
        };
        match listener.tls.clone() {
            None => {
                let sniff = tokio::time::timeout(builder.h1.header_read_timeout, sniff_h2(&stream));
                let h2 = match sniff.await {
                    Ok(Ok(h2)) => h2,
                    _ => return,
                };
                let ctx = ctx(ConnInfo::default());
                hand_over(stream, h2, ClientIo::Plain, &builder, ctx, shutdown, keep).await;
            }
            Some(tls) => {
                let handshaking = Box::pin(handshake(&tls, &listener, stream));
                let Some((stream, conn)) = handshaking.await else {
                    return;
                };
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                let ctx = ctx(conn);
                let h1 = |s| ClientIo::Tls(Box::new(s));
                hand_over(stream, h2, h1, &builder, ctx, shutdown, keep).await;
            }
        }
    });
}

/// HTTP/2 is served here by hyper; HTTP/1.x moves to a task of its own (see `serve`).
/// `keep` (the connection's accounting) lives as long as the connection.
async fn hand_over<I, K>(
    stream: I,
    h2: bool,
    h1_io: impl FnOnce(I) -> ClientIo,
    builder: &ConnBuilder,
    ctx: Arc<ConnCtx>,
    shutdown: watch::Receiver<bool>,
    keep: K,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    K: Send + 'static,
{
    if h2 {
        let _keep = keep;
        let h2 = Box::pin(serve_h2(TokioIo::new(stream), builder, ctx, shutdown));
        h2.await;
    } else {
        let settings = builder.h1.clone();
        let io = h1_io(stream);
        tokio::spawn(async move {
            let _keep = keep;
            serve_h1::serve(io, settings, ctx, shutdown).await;
        });
    }
}

/// The TLS handshake of an inbound connection, plus the client certificate for XFCC.
async fn handshake(
    tls: &ServerTls,
    listener: &ListenerCtx,
    stream: TcpStream,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, ConnInfo)> {
    let peer = stream.peer_addr().ok();
    let s =
        crate::tls::server::accept(tls, &listener.obs.name, &listener.obs.metrics, peer, stream)
            .await
            .ok()?;
    let xfcc = tls.xfcc(s.get_ref().1.peer_certificates());
    Some((s, ConnInfo { xfcc }))
}

async fn serve_h2<I>(
    io: TokioIo<I>,
    builder: &ConnBuilder,
    ctx: Arc<ConnCtx>,
    shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let ctx = ctx.clone();
        async move {
            let listener = ctx.listener();
            let req = req.map(Inbound::Hyper);
            Ok::<_, Infallible>(proxy::handle(&listener, &ctx.pools, &ctx.conn, req, None).await)
        }
    });
    let conn = builder.h2.serve_connection(io, svc);
    with_graceful(conn, shutdown, |c| c.graceful_shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::is_h2_preface;

    #[test]
    fn tells_h2_from_h1() {
        assert_eq!(is_h2_preface(b"PRI * HTTP/2.0\r\n"), Some(true));
        assert_eq!(is_h2_preface(b"GET / HTTP/1.1\r\n"), Some(false));
        assert_eq!(is_h2_preface(b"PR"), None);
        assert_eq!(is_h2_preface(b"POST"), Some(false));
    }
}
