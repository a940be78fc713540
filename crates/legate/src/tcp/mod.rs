//! The TCP path: a `protocol: tcp` listener carries each client connection to its upstream.
//!
//! ```text
//! accept (TCP or Unix) ─▶ [TLS terminate | PostgreSQL: SSLRequest → 'N', read the startup]
//!   ─▶ connect (breaker, balancer, TLS or SSLRequest + TLS; next endpoint on failure)
//!   ─▶ [PostgreSQL: forward the startup, log in for the app] ─▶ copy both ways ─▶ log + metrics
//! ```
//!
//! Nothing is read from the client before connecting unless the upstream is PostgreSQL-aware,
//! so protocols where the server speaks first (MySQL, SMTP) work.

pub mod buffers;
pub mod connect;
pub mod copy;
pub mod postgres;
pub mod stream;

use crate::auth::postgres::PostgresCredentials;
use crate::listen::{ConnSlot, ConnTracker, Tracked};
use crate::telemetry::access_log::{AccessLog, TcpEntry};
use crate::telemetry::metrics::{Metrics, TcpListenerMetrics};
use crate::tls::server::ServerTls;
use crate::upstream::Upstream;
use copy::{Deadlines, Moved};
use postgres::login::LoginError;
use postgres::message::error_response;
use postgres::startup::{self, First};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use stream::Conn;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// A TCP listener as compiled from config; shared by its workers.
pub struct TcpListenerCtx {
    pub name: Arc<str>,
    pub upstream: Arc<Upstream>,
    pub tls: Option<Arc<ServerTls>>,
    pub connect_timeout: Duration,
    pub connect_attempts: u32,
    pub idle_timeout: Duration,
    pub max_lifetime: Option<Duration>,
    /// Set when the upstream is PostgreSQL-aware (`tls.mode: postgres` or `postgres:`).
    pub postgres: Option<PostgresSide>,
    pub metrics: TcpListenerMetrics,
    pub all_metrics: Arc<Metrics>,
    pub log: AccessLog,
    pub connect_log: connect::ConnectLog,
}

pub struct PostgresSide {
    /// Log in for the app with these; `None`: the app's own login passes through.
    pub credentials: Option<Arc<PostgresCredentials>>,
}

/// Serves one accepted connection in its own task.
pub fn spawn<S>(
    ctx: Arc<TcpListenerCtx>,
    stream: S,
    peer: Option<SocketAddr>,
    tracker: &Arc<ConnTracker>,
    slot: Option<ConnSlot>,
) where
    S: Conn + Send + 'static,
{
    let tracked = Tracked::new(tracker);
    tokio::spawn(async move {
        let _tracked = tracked;
        let _slot = slot;
        serve(&ctx, stream, peer).await;
    });
}

/// How a connection ended, for the log line and the metrics.
struct Ended {
    result: &'static str,
    endpoint: Option<SocketAddr>,
    moved: Moved,
    error: Option<String>,
}

impl Ended {
    fn early(result: &'static str, error: Option<String>) -> Self {
        Self {
            result,
            endpoint: None,
            moved: Moved::default(),
            error,
        }
    }
}

async fn serve<S: Conn>(ctx: &TcpListenerCtx, stream: S, peer: Option<SocketAddr>) {
    let started = Instant::now();
    let ts = SystemTime::now();
    ctx.metrics.active.inc();
    let peer_name = peer.map_or_else(|| "unix".to_string(), |p| p.to_string());
    let ended = match &ctx.tls {
        None => run(ctx, stream, &peer_name).await,
        Some(tls) => {
            match crate::tls::server::accept(tls, &ctx.name, &ctx.all_metrics, peer, stream).await {
                Ok(s) => run(ctx, s, &peer_name).await,
                Err(reason) => Ended::early(reason, None),
            }
        }
    };
    ctx.metrics.active.dec();
    let elapsed = started.elapsed();
    ctx.metrics.duration.observe(elapsed.as_secs_f64());
    ctx.all_metrics.tcp_closed(&ctx.name, ended.result);
    ctx.log.write_tcp(&TcpEntry {
        ts,
        listener: &ctx.name,
        peer: &peer_name,
        upstream: &ctx.upstream.name,
        endpoint: ended.endpoint,
        duration_ms: elapsed.as_secs_f64() * 1000.0,
        bytes_to_upstream: ended.moved.to_upstream,
        bytes_to_client: ended.moved.to_client,
        close: ended.result,
        error: ended.error.as_deref(),
    });
}

async fn run<C: Conn>(ctx: &TcpListenerCtx, mut client: C, peer: &str) -> Ended {
    let deadlines = Deadlines {
        idle: ctx.idle_timeout,
        end_of_life: ctx.max_lifetime.map(|l| Instant::now() + l),
    };
    let first = match &ctx.postgres {
        None => None,
        Some(_) => {
            let read = tokio::time::timeout(ctx.idle_timeout, startup::read_first(&mut client));
            match Box::pin(read).await {
                Err(_) => return Ended::early("idle-timeout", None),
                Ok(Err(e)) => {
                    tracing::info!(listener = %ctx.name, peer, error = %e,
                        "closing a client that did not open a PostgreSQL session");
                    return Ended::early("client-protocol-error", Some(e.to_string()));
                }
                Ok(Ok(f)) => Some(f),
            }
        }
    };
    let connected = match Box::pin(connect::connect(ctx, peer)).await {
        Ok(c) => c,
        Err((e, endpoint)) => {
            if let Some(First::Startup(_)) = first {
                // The app speaks PostgreSQL: tell it why, in its own protocol.
                let msg = error_response("08001", &format!("legate: {e}"));
                let _ = Box::pin(client.write_all(&msg)).await;
            }
            return Ended {
                result: e.reply().1,
                endpoint,
                moved: Moved::default(),
                error: Some(e.to_string()),
            };
        }
    };
    let endpoint = connected.endpoint.clone();
    endpoint.metrics.active.inc();
    let mut upstream = connected.io;
    let setup = setup_postgres(ctx, first, &mut client, &mut upstream, peer);
    let mut ended = match Box::pin(setup).await {
        Err(ended) => ended,
        Ok(()) => {
            let (close, moved) = copy::tunnel(
                &mut client,
                &mut upstream,
                deadlines,
                &ctx.metrics.to_upstream,
                &ctx.metrics.to_client,
            )
            .await;
            let error = match &close {
                copy::Close::Reset { error, .. } => Some(error.to_string()),
                _ => None,
            };
            Ended {
                result: close.reason(),
                endpoint: None,
                moved,
                error,
            }
        }
    };
    endpoint.metrics.active.dec();
    ended.endpoint = Some(endpoint.addr);
    ended
}

/// Sends the app's first PostgreSQL message on, and logs in for the app when configured.
async fn setup_postgres<C: Conn>(
    ctx: &TcpListenerCtx,
    first: Option<First>,
    client: &mut C,
    upstream: &mut crate::upstream::connect::Io,
    peer: &str,
) -> Result<(), Ended> {
    let credentials = ctx
        .postgres
        .as_ref()
        .and_then(|p| p.credentials.as_ref())
        .map(|c| c.get());
    let reset = |e: std::io::Error| Ended::early("reset", Some(e.to_string()));
    match first {
        None => Ok(()),
        Some(First::Cancel(raw)) => {
            upstream.write_all(&raw).await.map_err(reset)?;
            upstream.flush().await.map_err(reset)
        }
        Some(First::Startup(s)) => {
            let user = credentials.as_ref().map(|c| c.user.as_str());
            upstream.write_all(&s.encode(user)).await.map_err(reset)?;
            upstream.flush().await.map_err(reset)?;
            let binding = upstream
                .peer_certificate()
                .and_then(|der| crate::tls::cert_info::end_point_hash(&der));
            let result = match &credentials {
                Some(creds) => {
                    let login = postgres::login::login(upstream, client, creds, binding);
                    tokio::time::timeout(ctx.connect_timeout, login).await
                }
                // The app logs in itself; legate only adjusts the SASL offer (see `relay`).
                // The wait is on the app (and bounded by the server's authentication_timeout).
                None => {
                    let relay = postgres::login::relay(upstream, client);
                    tokio::time::timeout(ctx.idle_timeout, relay).await
                }
            };
            let (reason, failure) = match result {
                Ok(Ok(())) => return Ok(()),
                // The server's ErrorResponse has reached the app already.
                Ok(Err(LoginError::Refused(m))) => ("auth-failed", m),
                Ok(Err(e)) => {
                    let _ = client
                        .write_all(&error_response("28000", &format!("legate: {e}")))
                        .await;
                    (e.reason(), e.to_string())
                }
                Err(_) => {
                    let m = "the server did not finish the login in time".to_string();
                    let _ = client
                        .write_all(&error_response("08006", &format!("legate: {m}")))
                        .await;
                    ("auth-failed", m)
                }
            };
            let user = credentials.as_ref().map(|c| c.user.as_str());
            tracing::warn!(listener = %ctx.name, upstream = %ctx.upstream.name, peer,
                user, reason, error = %failure, "PostgreSQL login failed");
            Err(Ended::early(reason, Some(failure)))
        }
    }
}

#[cfg(test)]
mod tests {
    /// What an idle plain tunnel's task holds, beyond the sockets' kernel buffers: the future
    /// of `serve` while it waits in the copy loop. Printed for docs/performance.md; bounded so
    /// a rare path inlined into it again is noticed.
    #[test]
    fn an_idle_tunnel_future_is_small() {
        fn size<F: std::future::Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let std_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = std_l.local_addr().unwrap();
            let client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut upstream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut c = client;
            let counter = prometheus_client::metrics::counter::Counter::default();
            let deadlines = super::copy::Deadlines {
                idle: std::time::Duration::from_secs(1),
                end_of_life: None,
            };
            let f = super::copy::tunnel(&mut c, &mut upstream, deadlines, &counter, &counter);
            let n = size(&f);
            eprintln!("tunnel future: {n} bytes");
            assert!(n <= 512, "the copy loop's future grew to {n} bytes");
        });
    }
}
