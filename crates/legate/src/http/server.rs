//! Serving one client connection: HTTP/1.1 or h2c (prior knowledge), detected from the first
//! bytes, with upgrades, header limits and graceful shutdown.

use super::proxy::{self, ListenerCtx};
use crate::config::ListenerLimits;
use crate::upstream::pool::Pools;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpStream;

pub type ConnBuilder = auto::Builder<TokioExecutor>;

pub fn builder(limits: &ListenerLimits) -> ConnBuilder {
    let mut b = auto::Builder::new(TokioExecutor::new());
    let max_head = usize::try_from(limits.max_header_bytes.0)
        .unwrap_or(usize::MAX)
        .max(8192);
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.get())
        .max_buf_size(max_head)
        .max_headers(limits.max_headers);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes.0).unwrap_or(u32::MAX));
    b
}

pub fn serve(
    stream: TcpStream,
    builder: &ConnBuilder,
    listener: Arc<ListenerCtx>,
    pools: Arc<Pools>,
    graceful: &GracefulShutdown,
) {
    let _ = stream.set_nodelay(true);
    let svc = service_fn(move |req: Request<Incoming>| {
        let listener = listener.clone();
        let pools = pools.clone();
        async move { Ok::<_, Infallible>(proxy::handle(&listener, &pools, req).await) }
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .into_owned();
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "client connection ended with error");
        }
    });
}
