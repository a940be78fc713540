//! Compiling a config into what the workers serve: upstreams, routes and listener snapshots.
//!
//! A reload compiles the new config against the running generation and keeps every part whose
//! settings did not change: an upstream keeps its endpoints, pools, health, breaker and outlier
//! state (and its credentials); a route its retry budget and rate-limit bucket; a listener its
//! TLS and its `max_connections` count. "Did not change" is decided on the part's config as
//! serialized, so a new field can never be forgotten by the comparison. Each built part keeps
//! its config and the comparison runs only when a reload asks: a start serializes nothing (the
//! serializer's code would be paged in for nothing, about 250 KiB of the idle RSS).

use super::StartError;
use crate::auth::postgres::PostgresCredentials;
use crate::config::{self, Config, ListenOn, ListenerConfig, ListenerProtocol};
use crate::http::observe::ListenerObs;
use crate::http::proxy::ListenerCtx;
use crate::http::route::Route;
use crate::http::server as http_server;
use crate::lifecycle::files::Reloadable;
use crate::lifecycle::State;
use crate::listen::{ConnLimit, Service, Serving};
use crate::tcp::TcpListenerCtx;
use crate::telemetry::access_log::{AccessLog, Sink};
use crate::telemetry::metrics::Metrics;
use crate::tls::client;
use crate::tls::server::ServerTls;
use crate::upstream::{Carries, TlsOrigin, Upstream};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Pools are keyed by upstream index: every upstream built gets a new one, so a reloaded
/// upstream never picks up connections pooled for the one it replaced.
static NEXT_UPSTREAM_INDEX: AtomicUsize = AtomicUsize::new(0);

/// Whether a reload left a part's settings as they were.
fn same<T: serde::Serialize>(a: &T, b: &T) -> bool {
    match (serde_json::to_value(a), serde_json::to_value(b)) {
        (Ok(a), Ok(b)) => a == b,
        // Cannot tell: rebuild.
        _ => false,
    }
}

pub struct BuiltUpstream {
    cfg: config::UpstreamConfig,
    carries: Carries,
    pub up: Arc<Upstream>,
    /// PostgreSQL credentials legate logs in with; shared by every listener of the upstream.
    pub credentials: Option<Arc<PostgresCredentials>>,
}

struct BuiltRoute {
    listener: Arc<str>,
    cfg: config::RouteConfig,
    route: Arc<Route>,
}

pub struct BuiltListener {
    pub name: Arc<str>,
    pub listen: ListenOn,
    pub protocol: ListenerProtocol,
    pub serving: Arc<Serving>,
    /// The TLS settings as applied (ALPN defaulted), with what they built.
    tls: Option<(config::ListenerTls, Arc<ServerTls>)>,
}

/// One compiled config.
pub struct Generation {
    pub upstreams: Vec<BuiltUpstream>,
    routes: Vec<BuiltRoute>,
    pub listeners: Vec<BuiltListener>,
}

/// What compiling needs besides the config.
pub struct BuildEnv<'a> {
    pub metrics: &'a Arc<Metrics>,
    pub state: &'a Arc<State>,
    pub sink: &'a Sink,
    /// The OTLP exporter's queue, with `otlp:`.
    pub spans: Option<&'a Arc<crate::telemetry::otlp::SpanSink>>,
}

impl Generation {
    pub fn upstream_arcs(&self) -> Vec<Arc<Upstream>> {
        self.upstreams.iter().map(|u| u.up.clone()).collect()
    }

    /// Whether this generation already ran `up` (the same object, kept by a reload).
    pub fn has(&self, up: &Arc<Upstream>) -> bool {
        self.upstreams.iter().any(|u| Arc::ptr_eq(&u.up, up))
    }

    /// Everything built from files, for the file watcher.
    pub fn reloadables(&self) -> Vec<Arc<dyn Reloadable>> {
        let mut out: Vec<Arc<dyn Reloadable>> = Vec::new();
        for b in &self.upstreams {
            if let Some(crate::auth::UpstreamAuth::Basic(h)) = &b.up.auth {
                out.push(h.clone());
            }
            match &b.up.tls {
                // With system roots and no client certificate there is no file to watch.
                Some(TlsOrigin::Rustls(tls))
                    if tls.settings().ca.is_some()
                        || client::key_source(tls.settings()).is_some() =>
                {
                    out.push(tls.clone());
                }
                Some(TlsOrigin::Rustls(_)) => {}
                #[cfg(feature = "legacy-tls")]
                Some(TlsOrigin::Openssl(tls)) => out.push(tls.clone()),
                None => {}
            }
            if let Some(c) = &b.credentials {
                out.push(c.clone());
            }
        }
        for l in &self.listeners {
            if let Some((_, t)) = &l.tls {
                out.push(t.clone());
            }
        }
        for r in &self.routes {
            for h in &r.route.file_headers {
                out.push(h.clone());
            }
        }
        out
    }
}

/// Compiles `cfg`, keeping what `prev` built for parts that did not change. `addrs` holds each
/// TCP listener's bound address (HTTP listeners need it to recognise their own authority).
pub fn build(
    cfg: &Config,
    prev: Option<&Generation>,
    env: &BuildEnv<'_>,
    addrs: &HashMap<String, Option<SocketAddr>>,
) -> Result<Generation, StartError> {
    let upstreams = build_upstreams(cfg, prev, env)?;
    let access_log = AccessLog::new(cfg.access_log, env.sink.clone());
    let mut routes = Vec::new();
    let mut listeners = Vec::with_capacity(cfg.listeners.len());
    for l in &cfg.listeners {
        let name: Arc<str> = Arc::from(l.name.as_str());
        let old = prev.and_then(|p| p.listeners.iter().find(|o| *o.name == *l.name));
        let tls = listener_tls(l, old)?;
        let server_tls = tls.as_ref().map(|(_, t)| t.clone());
        let service = match l.protocol {
            ListenerProtocol::Http => {
                let Some(addr) = addrs.get(&l.name).copied().flatten() else {
                    return Err(StartError::Invalid(format!(
                        "listener `{}`: HTTP listeners take IP:PORT, not a Unix socket",
                        l.name
                    )));
                };
                let mut compiled = Vec::with_capacity(l.routes.len());
                for r in &l.routes {
                    // The listener's `tracing:` applies to routes without their own.
                    let mut r = r.clone();
                    if r.tracing.is_none() {
                        r.tracing = l.tracing.clone();
                    }
                    let route = route(&name, &r, &upstreams, prev, env)?;
                    compiled.push(route.route.clone());
                    routes.push(route);
                }
                Service::Http {
                    ctx: Arc::new(ListenerCtx {
                        addr,
                        routes: compiled,
                        obs: Arc::new(ListenerObs {
                            name: name.clone(),
                            access_log: access_log.clone(),
                            inflight: env.metrics.listener_inflight(&l.name),
                            unrouted: env.metrics.route(&l.name, "", ""),
                            metrics: env.metrics.clone(),
                        }),
                        tls: server_tls,
                    }),
                    builder: Arc::new(http_server::builder(&l.limits)),
                }
            }
            ListenerProtocol::Tcp => Service::Tcp(tcp_listener(
                l,
                &name,
                &upstreams,
                server_tls,
                env,
                &access_log,
            )?),
        };
        let limit = match (
            l.max_connections,
            old.and_then(|o| o.serving.limit.as_ref()),
        ) {
            (Some(max), Some(kept)) if kept.max == max.max(1) => Some(kept.clone()),
            (Some(max), _) => Some(Arc::new(ConnLimit::new(
                max,
                env.state.clone(),
                env.metrics.refused_handle(&l.name, "max-connections"),
            ))),
            (None, _) => None,
        };
        listeners.push(BuiltListener {
            name,
            listen: l.listen.clone(),
            protocol: l.protocol,
            serving: Arc::new(Serving { service, limit }),
            tls,
        });
    }
    Ok(Generation {
        upstreams,
        routes,
        listeners,
    })
}

fn build_upstreams(
    cfg: &Config,
    prev: Option<&Generation>,
    env: &BuildEnv<'_>,
) -> Result<Vec<BuiltUpstream>, StartError> {
    let tcp_upstreams: Vec<&str> = cfg
        .listeners
        .iter()
        .filter(|l| l.protocol == ListenerProtocol::Tcp)
        .filter_map(|l| l.upstream.as_deref())
        .collect();
    let mut out = Vec::with_capacity(cfg.upstreams.len());
    for u in &cfg.upstreams {
        let carries = if tcp_upstreams.contains(&u.name.as_str()) {
            Carries::Tcp
        } else {
            Carries::Http
        };
        let kept = prev.and_then(|p| {
            p.upstreams
                .iter()
                .find(|o| *o.up.name == *u.name && o.carries == carries && same(&o.cfg, u))
        });
        if let Some(k) = kept {
            out.push(BuiltUpstream {
                cfg: u.clone(),
                carries,
                up: k.up.clone(),
                credentials: k.credentials.clone(),
            });
            continue;
        }
        let index = NEXT_UPSTREAM_INDEX.fetch_add(1, Ordering::Relaxed);
        let up = Arc::new(Upstream::build_for(index, u, env.metrics.clone(), carries)?);
        let credentials = match &u.postgres {
            Some(p) => Some(Arc::new(PostgresCredentials::new(&u.name, p).map_err(
                |e| StartError::Invalid(format!("upstream `{}`: {e}", u.name)),
            )?)),
            None => None,
        };
        out.push(BuiltUpstream {
            cfg: u.clone(),
            carries,
            up,
            credentials,
        });
    }
    Ok(out)
}

fn find<'a>(upstreams: &'a [BuiltUpstream], name: &str) -> Option<&'a BuiltUpstream> {
    upstreams.iter().find(|u| &*u.up.name == name)
}

fn route(
    listener: &Arc<str>,
    r: &config::RouteConfig,
    upstreams: &[BuiltUpstream],
    prev: Option<&Generation>,
    env: &BuildEnv<'_>,
) -> Result<BuiltRoute, StartError> {
    let Some(up) = find(upstreams, &r.upstream) else {
        return Err(StartError::Invalid(format!(
            "route `{}` names unknown upstream `{}`",
            r.name, r.upstream
        )));
    };
    let kept = prev.and_then(|p| {
        p.routes.iter().find(|o| {
            o.listener == *listener && Arc::ptr_eq(&o.route.upstream, &up.up) && same(&o.cfg, r)
        })
    });
    let route = match kept {
        Some(k) => k.route.clone(),
        None => {
            let rm = env.metrics.route(listener, &r.name, &r.upstream);
            Arc::new(Route::compile(r, up.up.clone(), rm, env.spans.cloned())?)
        }
    };
    Ok(BuiltRoute {
        listener: listener.clone(),
        cfg: r.clone(),
        route,
    })
}

/// The listener's TLS termination, kept from `old` when its settings are the same.
fn listener_tls(
    l: &ListenerConfig,
    old: Option<&BuiltListener>,
) -> Result<Option<(config::ListenerTls, Arc<ServerTls>)>, StartError> {
    let Some(t) = &l.tls else {
        return Ok(None);
    };
    // A tunnel carries no HTTP: it offers no ALPN protocol unless told to.
    let t = match (l.protocol, &t.alpn) {
        (ListenerProtocol::Tcp, None) => config::ListenerTls {
            alpn: Some(Vec::new()),
            ..t.clone()
        },
        _ => t.clone(),
    };
    if let Some((_, kept)) = old
        .and_then(|o| o.tls.as_ref())
        .filter(|(was, _)| same(was, &t))
    {
        return Ok(Some((t, kept.clone())));
    }
    let (server, leaf) =
        ServerTls::new(format!("listener:{}", l.name), &t).map_err(|source| StartError::Tls {
            what: format!("listener `{}`", l.name),
            source,
        })?;
    tracing::info!(listener = %l.name, serial = %leaf.serial, identity = %leaf.identity(),
        mtls = t.client_ca.is_some(), "TLS termination on");
    Ok(Some((t, Arc::new(server))))
}

fn tcp_listener(
    l: &ListenerConfig,
    name: &Arc<str>,
    upstreams: &[BuiltUpstream],
    tls: Option<Arc<ServerTls>>,
    env: &BuildEnv<'_>,
    log: &AccessLog,
) -> Result<Arc<TcpListenerCtx>, StartError> {
    let up_name = l.upstream.as_deref().unwrap_or_default();
    let Some(built) = find(upstreams, up_name) else {
        return Err(StartError::Invalid(format!(
            "listener `{}` names unknown upstream `{up_name}`",
            l.name
        )));
    };
    let up = &built.up;
    let postgres =
        (up.postgres_ssl || built.credentials.is_some()).then(|| crate::tcp::PostgresSide {
            credentials: built.credentials.clone(),
        });
    Ok(Arc::new(TcpListenerCtx {
        name: name.clone(),
        connect_timeout: l.connect_timeout.map_or(up.connect_timeout, |t| t.get()),
        connect_attempts: l
            .connect_attempts
            .unwrap_or(config::DEFAULT_CONNECT_ATTEMPTS)
            .max(1),
        idle_timeout: l
            .idle_timeout
            .map_or(config::DEFAULT_TCP_IDLE_TIMEOUT, |t| t.get()),
        max_lifetime: l.max_connection_lifetime.map(|t| t.get()),
        upstream: up.clone(),
        tls,
        postgres,
        metrics: env.metrics.tcp_listener(&l.name),
        all_metrics: env.metrics.clone(),
        log: log.clone(),
        connect_log: Default::default(),
    }))
}
