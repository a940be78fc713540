//! Serving one client connection: HTTP/1.1 (with upgrades, legate's own server) or HTTP/2 (h2c
//! with prior knowledge, or ALPN h2: hyper's), told apart by peeking at the first bytes or by
//! ALPN (no wrapper stays in the I/O path), with header limits and graceful shutdown.

use super::body::Inbound;
use super::proxy::{self, ConnInfo, ListenerCtx};
use super::serve_h1::{self, ClientIo, ConnCtx, Settings};
use crate::config::ListenerLimits;
use crate::h1::request::HeadLimits;
use crate::listen::{ConnSlot, ConnTracker, ServingHandle, Tracked};
use crate::server::drain;
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

/// Peeks at a new plain connection's first bytes: is it HTTP/2 prior knowledge? Polls the
/// socket directly (its registration holds the waker): this runs in the task the connection
/// keeps for its life, where every byte of future state counts.
async fn sniff_h2(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; 24];
    let n = std::future::poll_fn(|cx| {
        let mut peeked = tokio::io::ReadBuf::new(&mut buf);
        stream.poll_peek(cx, &mut peeked)
    })
    .await?;
    match is_h2_preface(&buf[..n]) {
        _ if n == 0 => Ok(false),
        Some(h2) => Ok(h2),
        // Fewer than four bytes, all of them a preface's start: rare, so its wait is boxed
        // (in a statement of its own: a temporary lives to the end of its statement).
        None => {
            let slow = Box::pin(sniff_h2_slowly(stream));
            slow.await
        }
    }
}

async fn sniff_h2_slowly(stream: &TcpStream) -> std::io::Result<bool> {
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

/// Drives `conn` to completion, asking it to finish gracefully when the worker drains.
async fn with_graceful<C, E>(
    conn: C,
    list: drain::ListId,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut conn = pin!(conn);
    let mut listed = drain::Listed::new(list);
    let finished = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = std::future::poll_fn(|cx| {
            if listed.poll_draining(cx) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        }) => None,
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
    drain: drain::ListId,
) {
    let _ = stream.set_nodelay(true);
    let keep = (Tracked::new(tracker), slot);
    let builder = builder.clone();
    match listener.tls.clone() {
        None => {
            let ctx = ConnCtx {
                accepted_with: listener,
                current,
                pools,
                conn: ConnInfo::default(),
                drain,
            };
            tokio::spawn(plain(stream, builder, ctx, keep));
        }
        // The handshake's state is large; an HTTP/1.1 connection then moves to a task of its
        // own that holds only its idle wait (one more spawn per connection, paid once, rather
        // than a task as large as a TLS handshake for as long as the connection is idle).
        Some(tls) => {
            tokio::spawn(async move {
                let handshaking = Box::pin(handshake(&tls, &listener, stream));
                let Some((stream, conn)) = handshaking.await else {
                    return;
                };
                let ctx = ConnCtx {
                    accepted_with: listener,
                    current,
                    pools,
                    conn,
                    drain,
                };
                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    let _keep = keep;
                    let h2 = Box::pin(serve_h2(TokioIo::new(stream), &builder, Arc::new(ctx)));
                    h2.await;
                } else {
                    let io = ClientIo::Tls(Box::new(stream));
                    tokio::spawn(serve_h1::serve(io, builder.h1.clone(), ctx, keep));
                }
            });
        }
    }
}

/// A plain connection's task: the HTTP/2 sniff, then legate's HTTP/1.1 loop on the same
/// state (no second task), or hyper's HTTP/2 in a boxed future. Not an `async fn`, for the
/// reason given at `serve_h1::serve`: its captures are used in place.
fn plain<K: Send + 'static>(
    stream: TcpStream,
    builder: Arc<ConnBuilder>,
    ctx: ConnCtx,
    keep: K,
) -> impl Future<Output = ()> + Send {
    let mut io = Some(ClientIo::Plain(stream));
    async move {
        let _ = &keep;
        let Some(ClientIo::Plain(stream)) = &io else {
            return;
        };
        let sniff = tokio::time::timeout(builder.h1.header_read_timeout, sniff_h2(stream));
        match sniff.await {
            Ok(Ok(false)) => serve_h1::serve_conn(&mut io, &builder.h1, &ctx).await,
            Ok(Ok(true)) => {
                let Some(ClientIo::Plain(stream)) = io.take() else {
                    return;
                };
                let h2 = Box::pin(serve_h2(TokioIo::new(stream), &builder, Arc::new(ctx)));
                h2.await;
            }
            _ => {}
        }
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

async fn serve_h2<I>(io: TokioIo<I>, builder: &ConnBuilder, ctx: Arc<ConnCtx>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let list = ctx.drain;
    let svc = service_fn(move |req: Request<Incoming>| {
        let ctx = ctx.clone();
        async move {
            let listener = ctx.listener();
            let req = req.map(Inbound::Hyper);
            Ok::<_, Infallible>(proxy::handle(&listener, &ctx.pools, &ctx.conn, req, None).await)
        }
    });
    let conn = builder.h2.serve_connection(io, svc);
    with_graceful(conn, list, |c| c.graceful_shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::is_h2_preface;
    use crate::http::serve_h1::size_tests::future_size;

    /// A plain HTTP/1.1 connection's task is this future for the connection's life (its idle
    /// wait is what counts, see `serve_h1`): printed for docs/performance.md, bounded so that
    /// tokio's task allocation (the future plus about 100 bytes, in 128-byte steps) stays at
    /// 512 bytes.
    #[test]
    fn a_plain_connection_task_is_small() {
        type Keep = (crate::listen::Tracked, Option<crate::listen::ConnSlot>);
        let n = future_size(super::plain::<Keep>);
        eprintln!("plain connection task future: {n} bytes");
        assert!(n <= 400, "the plain connection future grew to {n} bytes");
    }

    #[test]
    fn tells_h2_from_h1() {
        assert_eq!(is_h2_preface(b"PRI * HTTP/2.0\r\n"), Some(true));
        assert_eq!(is_h2_preface(b"GET / HTTP/1.1\r\n"), Some(false));
        assert_eq!(is_h2_preface(b"PR"), None);
        assert_eq!(is_h2_preface(b"POST"), Some(false));
    }
}
