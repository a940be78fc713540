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

/// Serves one accepted connection: a setup task (TLS handshake, PostgreSQL startup, connect,
/// login), then, once both ends are ready, a task that only carries bytes.
///
/// Two tasks because a task is as large as its future's largest state: the setup's states are
/// transient, while the carrying state lives as long as the connection, mostly idle. The
/// carrying task holds the two streams, the copy loop and a few words; nothing else.
pub fn spawn<S>(
    ctx: Arc<TcpListenerCtx>,
    stream: S,
    peer: Option<SocketAddr>,
    tracker: &Arc<ConnTracker>,
    slot: Option<ConnSlot>,
) where
    S: Conn + Send + 'static,
{
    let held = Held {
        _tracked: Tracked::new(tracker),
        _slot: slot,
    };
    ctx.metrics.active.inc();
    let opened = Opened {
        started: Instant::now(),
        ts: SystemTime::now(),
        peer,
    };
    tokio::spawn(setup(ctx, stream, opened, held));
}

/// What the connection holds for its whole life: its place in the drain count and under the
/// listener's `max_connections`.
struct Held {
    _tracked: Tracked,
    _slot: Option<ConnSlot>,
}

/// When and from where the connection came, for the line logged when it closes.
#[derive(Clone, Copy)]
struct Opened {
    started: Instant,
    ts: SystemTime,
    peer: Option<SocketAddr>,
}

impl Opened {
    fn peer_name(&self) -> String {
        self.peer
            .map_or_else(|| "unix".to_string(), |p| p.to_string())
    }
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

/// Metrics and the log line of a closed connection.
fn finish(ctx: &TcpListenerCtx, opened: &Opened, ended: Ended) {
    ctx.metrics.active.dec();
    let elapsed = opened.started.elapsed();
    ctx.metrics.duration.observe(elapsed.as_secs_f64());
    ctx.all_metrics.tcp_closed(&ctx.name, ended.result);
    ctx.log.write_tcp(&TcpEntry {
        ts: opened.ts,
        listener: &ctx.name,
        peer: &opened.peer_name(),
        upstream: &ctx.upstream.name,
        endpoint: ended.endpoint,
        duration_ms: elapsed.as_secs_f64() * 1000.0,
        bytes_to_upstream: ended.moved.to_upstream,
        bytes_to_client: ended.moved.to_client,
        close: ended.result,
        error: ended.error.as_deref(),
    });
}

async fn setup<S>(ctx: Arc<TcpListenerCtx>, stream: S, opened: Opened, held: Held)
where
    S: Conn + Send + 'static,
{
    let peer = opened.peer_name();
    let failed = match &ctx.tls {
        None => match open(&ctx, stream, &peer).await {
            Ok((client, up)) => {
                tokio::spawn(carry(ctx.clone(), client, up, opened, held));
                return;
            }
            Err(ended) => ended,
        },
        Some(tls) => {
            match crate::tls::server::accept(tls, &ctx.name, &ctx.all_metrics, opened.peer, stream)
                .await
            {
                Err(reason) => Ended::early(reason, None),
                Ok(s) => match open(&ctx, s, &peer).await {
                    Ok((client, up)) => {
                        tokio::spawn(carry(ctx.clone(), client, up, opened, held));
                        return;
                    }
                    Err(ended) => ended,
                },
            }
        }
    };
    finish(&ctx, &opened, failed);
}

/// The carrying task: the tunnel, and what is needed to log it when it ends.
struct Carry<C: Conn> {
    tunnel: copy::Tunnel<C, crate::upstream::connect::Io>,
    ctx: Arc<TcpListenerCtx>,
    endpoint: Arc<crate::upstream::Endpoint>,
    _permit: crate::upstream::breaker::Permit,
    opened: Opened,
    _held: Held,
    /// Its place in the worker's drain list.
    listed: crate::server::drain::Listed,
}

fn carry<C: Conn>(
    ctx: Arc<TcpListenerCtx>,
    client: C,
    up: connect::Connected,
    opened: Opened,
    held: Held,
) -> Carry<C> {
    let deadlines = Deadlines {
        idle: ctx.idle_timeout,
        end_of_life: ctx.max_lifetime.map(|l| opened.started + l),
    };
    up.endpoint.metrics.active.inc();
    Carry {
        tunnel: copy::Tunnel::new(client, up.io, deadlines),
        ctx,
        endpoint: up.endpoint,
        _permit: up._permit,
        opened,
        _held: held,
        listed: crate::server::drain::Listed::new(crate::server::drain::WORKER),
    }
}

impl<C: Conn> std::future::Future for Carry<C> {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let me = &mut *self;
        if me.listed.poll_draining(cx) {
            me.tunnel.drain();
        }
        let close = std::task::ready!(me.tunnel.poll_carry(
            cx,
            &me.ctx.metrics.to_upstream,
            &me.ctx.metrics.to_client
        ));
        me.endpoint.metrics.active.dec();
        let error = match &close {
            copy::Close::Reset { error, .. } => Some(error.to_string()),
            _ => None,
        };
        let ended = Ended {
            result: close.reason(),
            endpoint: Some(me.endpoint.addr),
            moved: me.tunnel.moved(),
            error,
        };
        finish(&me.ctx, &me.opened, ended);
        std::task::Poll::Ready(())
    }
}

/// Everything before bytes can be carried: the PostgreSQL startup (when the upstream is
/// PostgreSQL-aware), the connect, and the login. Returns both ends ready.
async fn open<C: Conn>(
    ctx: &TcpListenerCtx,
    mut client: C,
    peer: &str,
) -> Result<(C, connect::Connected), Ended> {
    let first = match &ctx.postgres {
        None => None,
        Some(_) => {
            match tokio::time::timeout(ctx.idle_timeout, startup::read_first(&mut client)).await {
                Err(_) => return Err(Ended::early("idle-timeout", None)),
                Ok(Err(e)) => {
                    tracing::info!(listener = %ctx.name, peer, error = %e,
                        "closing a client that did not open a PostgreSQL session");
                    return Err(Ended::early("client-protocol-error", Some(e.to_string())));
                }
                Ok(Ok(f)) => Some(f),
            }
        }
    };
    let mut connected = match connect::connect(ctx, peer).await {
        Ok(c) => c,
        Err((e, endpoint)) => {
            if let Some(First::Startup(_)) = first {
                // The app speaks PostgreSQL: tell it why, in its own protocol.
                let msg = error_response("08001", &format!("legate: {e}"));
                let _ = client.write_all(&msg).await;
            }
            return Err(Ended {
                result: e.reply().1,
                endpoint,
                moved: Moved::default(),
                error: Some(e.to_string()),
            });
        }
    };
    if let Err(mut ended) = setup_postgres(ctx, first, &mut client, &mut connected.io, peer).await {
        ended.endpoint = Some(connected.endpoint.addr);
        return Err(ended);
    }
    Ok((client, connected))
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
    /// What an idle plain tunnel's task holds, beyond the sockets' kernel buffers and their
    /// registrations: the carrying task's future. Printed for docs/performance.md; bounded so
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
            let c = tokio::net::TcpStream::connect(addr).await.unwrap();
            let upstream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let client2 = tokio::net::TcpStream::connect(addr).await.unwrap();
            let deadlines = super::copy::Deadlines {
                idle: std::time::Duration::from_secs(1),
                end_of_life: None,
            };
            let f = super::copy::Tunnel::new(c, upstream, deadlines);
            let n = std::mem::size_of_val(&f);
            drop(f);
            eprintln!(
                "tunnel: {n} bytes (a Sleep: {}, a TcpStream: {}, Io: {})",
                std::mem::size_of::<tokio::time::Sleep>(),
                std::mem::size_of::<tokio::net::TcpStream>(),
                std::mem::size_of::<crate::upstream::connect::Io>()
            );
            assert!(n <= 256, "the tunnel grew to {n} bytes");
            let c = client2;

            let metrics = std::sync::Arc::new(crate::telemetry::metrics::Metrics::new());
            let cfg =
                crate::config::UpstreamConfig::with_endpoints("u", vec!["127.0.0.1:1".into()]);
            let up = crate::upstream::Upstream::build_for(
                0,
                &cfg,
                metrics.clone(),
                crate::upstream::Carries::Tcp,
            )
            .unwrap();
            let ctx = super::TcpListenerCtx {
                name: "l".into(),
                upstream: std::sync::Arc::new(up),
                tls: None,
                connect_timeout: std::time::Duration::from_secs(1),
                connect_attempts: 1,
                idle_timeout: std::time::Duration::from_secs(1),
                max_lifetime: None,
                postgres: None,
                metrics: metrics.tcp_listener("l"),
                all_metrics: metrics.clone(),
                log: Default::default(),
                connect_log: Default::default(),
            };
            let std_u = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let up_stream = tokio::net::TcpStream::connect(std_u.local_addr().unwrap())
                .await
                .unwrap();
            let ep = ctx.upstream.endpoints()[0].clone();
            let connected = super::connect::Connected {
                io: crate::upstream::connect::Io::Plain(up_stream),
                endpoint: ep,
                _permit: ctx
                    .upstream
                    .limits
                    .acquire(crate::upstream::breaker::Limit::Connections)
                    .unwrap(),
            };
            let tracker = std::sync::Arc::new(crate::listen::ConnTracker::default());
            let held = super::Held {
                _tracked: crate::listen::Tracked::new(&tracker),
                _slot: None,
            };
            let opened = super::Opened {
                started: tokio::time::Instant::now(),
                ts: std::time::SystemTime::now(),
                peer: None,
            };
            let f = super::carry(std::sync::Arc::new(ctx), c, connected, opened, held);
            let n = size(&f);
            eprintln!("carrying task future: {n} bytes");
            assert!(n <= 512, "the carrying task grew to {n} bytes");
        });
    }
}
