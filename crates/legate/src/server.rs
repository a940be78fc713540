//! Putting it together: compile the config, bind every socket, start the workers (one
//! single-threaded event loop per thread, nginx-style) and the control thread (admin, DNS,
//! signals), and drain on shutdown.

use crate::admin::{self, Admin};
use crate::auth::postgres::PostgresCredentials;
use crate::config::{self, AdminListen, Config, ListenOn, ListenerProtocol};
use crate::http::observe::ListenerObs;
use crate::http::proxy::ListenerCtx;
use crate::http::route::{Route, RouteError};
use crate::http::server as http_server;
use crate::lifecycle::{self, State};
use crate::listen::{self, Accepting, BindError, Bound, ConnLimit, ConnTracker, Service};
use crate::reload::{self, Reloadable};
use crate::tcp::TcpListenerCtx;
use crate::telemetry::access_log::{AccessLog, Sink};
use crate::telemetry::metrics::Metrics;
use crate::tls::client;
use crate::tls::server::ServerTls;
use crate::upstream::discovery::{self, Resolver};
use crate::upstream::health;
use crate::upstream::pool::Pools;
use crate::upstream::{BuildError, Carries, TlsOrigin, Upstream};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Upstream(#[from] BuildError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("invalid config:\n{0}")]
    Invalid(String),
    #[error(transparent)]
    Exit(#[from] lifecycle::exit::ExitError),
    #[error("cannot start a runtime thread: {0}")]
    Thread(std::io::Error),
    #[error("{what}: tls: {source}")]
    Tls {
        what: String,
        source: crate::tls::TlsError,
    },
}

/// How to run, beyond the config itself.
#[derive(Clone, Default)]
pub struct Options {
    pub access_log_sink: Sink,
    /// Install SIGTERM/SIGINT handlers (the binary does; in-process tests do not).
    pub handle_signals: bool,
}

/// A running legate.
pub struct Running {
    pub listeners: Vec<(String, SocketAddr)>,
    /// Unix socket files legate created; removed when it stops.
    unix_paths: Vec<std::path::PathBuf>,
    pub admin_addr: Option<SocketAddr>,
    pub state: Arc<State>,
    pub metrics: Arc<Metrics>,
    pub workers: usize,
    worker_threads: Vec<JoinHandle<()>>,
    control: Option<JoinHandle<()>>,
    stop_control: watch::Sender<bool>,
}

impl Running {
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Starts the drain (as SIGTERM would).
    pub fn shutdown(&self) {
        self.state.begin_shutdown("shutdown requested");
    }

    /// Blocks until every worker has drained and stopped; the process's exit code (0, or
    /// 143/130 after a signal with `exit_zero_on_sigterm: false`).
    pub fn wait(mut self) -> i32 {
        for t in self.worker_threads.drain(..) {
            let _ = t.join();
        }
        for p in &self.unix_paths {
            listen::unix::remove(p);
        }
        self.stop_control.send_replace(true);
        if let Some(c) = self.control.take() {
            let _ = c.join();
        }
        self.state.exit_code()
    }
}

/// Worker threads to run: the configured number, or what this process may use (std reads the
/// cgroup CPU quota and the affinity mask, so a 100m-limited container gets 1, not the node's).
pub fn worker_count(cfg: &Config) -> usize {
    cfg.runtime
        .workers
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1)
}

/// Redacted YAML of the effective config for `/config`.
fn effective_yaml(cfg: &Config) -> String {
    config::to_yaml(&config::redacted(cfg))
}

pub fn start(cfg: Config, opts: Options) -> Result<Running, StartError> {
    let issues = config::validate::validate(&cfg);
    if !issues.is_empty() {
        let text = issues
            .iter()
            .map(|i| format!("{}: {}", i.path, i.message))
            .collect::<Vec<_>>()
            .join("\n");
        return Err(StartError::Invalid(text));
    }
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(State::with_min_delay(cfg.shutdown.min_delay.get()));
    // Found before anything binds, so a name that matches nothing fails the start.
    let exit_processes = match &cfg.shutdown.exit_with_process {
        Some(spec) => Some(lifecycle::exit::find(spec)?),
        None => None,
    };
    let workers = worker_count(&cfg);

    let tcp_upstreams: Vec<&str> = cfg
        .listeners
        .iter()
        .filter(|l| l.protocol == ListenerProtocol::Tcp)
        .filter_map(|l| l.upstream.as_deref())
        .collect();
    let upstreams = cfg
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let carries = if tcp_upstreams.contains(&u.name.as_str()) {
                Carries::Tcp
            } else {
                Carries::Http
            };
            Upstream::build_for(i, u, metrics.clone(), carries).map(Arc::new)
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut reloadables: Vec<Arc<dyn Reloadable>> = Vec::new();
    for up in &upstreams {
        if let Some(crate::auth::UpstreamAuth::Basic(h)) = &up.auth {
            reloadables.push(h.clone());
        }
        match &up.tls {
            // With system roots and no client certificate there is no file to watch.
            Some(TlsOrigin::Rustls(tls))
                if tls.settings().ca.is_some() || client::key_source(tls.settings()).is_some() =>
            {
                reloadables.push(tls.clone());
            }
            Some(TlsOrigin::Rustls(_)) => {}
            #[cfg(feature = "legacy-tls")]
            Some(TlsOrigin::Openssl(tls)) => reloadables.push(tls.clone()),
            None => {}
        }
    }
    // Bind everything before starting anything, so a taken port fails the start cleanly.
    let mut per_worker: Vec<Vec<Accepting>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    let mut unix_paths = Vec::new();
    let mut pg_credentials: std::collections::HashMap<String, Arc<PostgresCredentials>> =
        std::collections::HashMap::new();
    let access_log = AccessLog::new(cfg.access_log, opts.access_log_sink.clone());
    for l in &cfg.listeners {
        let what = format!("listener `{}`", l.name);
        let name: Arc<str> = Arc::from(l.name.as_str());
        let (sockets, addr) = match &l.listen {
            ListenOn::Tcp(a) => {
                let sockets = listen::bind_shared(&what, a.0, workers)?;
                let addr = sockets[0]
                    .local_addr()
                    .map_err(|source| BindError::new(&what, a, source))?;
                (
                    sockets.into_iter().map(Bound::Tcp).collect::<Vec<_>>(),
                    Some(addr),
                )
            }
            ListenOn::Unix(path) => {
                let mode = l.socket_mode.map_or(config::DEFAULT_SOCKET_MODE, |m| m.0);
                let first = listen::unix::bind(&what, path, mode)?;
                unix_paths.push(path.clone());
                let mut sockets = Vec::with_capacity(workers);
                for _ in 1..workers {
                    sockets.push(Bound::Unix(first.try_clone().map_err(|source| {
                        BindError::new(&what, l.listen.to_string(), source)
                    })?));
                }
                sockets.push(Bound::Unix(first));
                (sockets, None)
            }
        };
        let tls = match &l.tls {
            Some(t) => {
                let tls_name = format!("listener:{}", l.name);
                // A tunnel carries no HTTP: it offers no ALPN protocol unless told to.
                let t = &match (l.protocol, &t.alpn) {
                    (ListenerProtocol::Tcp, None) => config::ListenerTls {
                        alpn: Some(Vec::new()),
                        ..t.clone()
                    },
                    _ => t.clone(),
                };
                let (server, leaf) =
                    ServerTls::new(tls_name, t).map_err(|source| StartError::Tls {
                        what: what.clone(),
                        source,
                    })?;
                tracing::info!(listener = %l.name, serial = %leaf.serial, identity = %leaf.identity(),
                    mtls = t.client_ca.is_some(), "TLS termination on");
                let server = Arc::new(server);
                reloadables.push(server.clone());
                Some(server)
            }
            None => None,
        };
        let service = match l.protocol {
            ListenerProtocol::Http => {
                let obs = Arc::new(ListenerObs {
                    name: name.clone(),
                    access_log: access_log.clone(),
                    inflight: metrics.listener_inflight(&l.name),
                    unrouted: metrics.route(&l.name, "", ""),
                    metrics: metrics.clone(),
                });
                let mut routes = Vec::with_capacity(l.routes.len());
                for r in &l.routes {
                    let up = find_upstream(&upstreams, &r.upstream, || {
                        format!("route `{}` names unknown upstream `{}`", r.name, r.upstream)
                    })?;
                    let rm = metrics.route(&l.name, &r.name, &r.upstream);
                    let route = Arc::new(Route::compile(r, up, rm)?);
                    for h in &route.file_headers {
                        reloadables.push(h.clone());
                    }
                    routes.push(route);
                }
                let Some(addr) = addr else {
                    return Err(StartError::Invalid(format!(
                        "{what}: HTTP listeners take IP:PORT, not a Unix socket"
                    )));
                };
                Service::Http {
                    ctx: Arc::new(ListenerCtx {
                        addr,
                        routes,
                        obs,
                        tls,
                    }),
                    builder: Arc::new(http_server::builder(&l.limits)),
                }
            }
            ListenerProtocol::Tcp => {
                let up_name = l.upstream.as_deref().unwrap_or_default();
                let up = find_upstream(&upstreams, up_name, || {
                    format!("{what} names unknown upstream `{up_name}`")
                })?;
                let up_cfg = cfg.upstreams.iter().find(|u| u.name == up_name);
                let pg_tls = up_cfg
                    .and_then(|u| u.tls.as_ref())
                    .is_some_and(|t| t.mode == config::TlsMode::Postgres);
                let credentials = match up_cfg.and_then(|u| u.postgres.as_ref()) {
                    // Listeners sharing an upstream share its credentials (one reload each).
                    Some(_) if pg_credentials.contains_key(up_name) => {
                        pg_credentials.get(up_name).cloned()
                    }
                    Some(p) => {
                        let c = PostgresCredentials::new(up_name, p).map_err(|e| {
                            StartError::Invalid(format!("upstream `{up_name}`: {e}"))
                        })?;
                        let c = Arc::new(c);
                        reloadables.push(c.clone());
                        pg_credentials.insert(up_name.to_string(), c.clone());
                        Some(c)
                    }
                    None => None,
                };
                let postgres = (pg_tls || credentials.is_some())
                    .then_some(crate::tcp::PostgresSide { credentials });
                Service::Tcp(Arc::new(TcpListenerCtx {
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
                    upstream: up,
                    tls,
                    postgres,
                    metrics: metrics.tcp_listener(&l.name),
                    all_metrics: metrics.clone(),
                    log: access_log.clone(),
                    connect_log: Default::default(),
                }))
            }
        };
        let limit = l.max_connections.map(|max| {
            Arc::new(ConnLimit::new(
                max,
                state.clone(),
                metrics.refused_handle(&l.name, "max-connections"),
            ))
        });
        for (w, socket) in sockets.into_iter().enumerate() {
            per_worker[w].push(Accepting {
                name: name.clone(),
                socket,
                service: service.clone(),
                limit: limit.clone(),
            });
        }
        let shown = addr.map_or_else(|| l.listen.to_string(), |a| a.to_string());
        tracing::info!(listener = %l.name, addr = %shown, protocol = ?l.protocol, workers, "listening");
        bound.push((l.name.clone(), addr, l.listen.clone()));
    }
    let admin_socket = match cfg.admin.listen {
        AdminListen::Off => None,
        AdminListen::Addr(a) => listen::bind_shared("admin", a.0, 1)?.pop(),
    };
    let admin_addr = admin_socket.as_ref().and_then(|s| s.local_addr().ok());

    let drain = cfg.shutdown.drain_timeout.get();
    let mut worker_threads = Vec::with_capacity(workers);
    for (i, listeners) in per_worker.into_iter().enumerate() {
        let shutdown = state.subscribe();
        let t = std::thread::Builder::new()
            .name(format!("legate-worker-{i}"))
            .spawn(move || run_worker(listeners, shutdown, drain))
            .map_err(StartError::Thread)?;
        worker_threads.push(t);
    }

    let (stop_control, stop_rx) = watch::channel(false);
    let control = {
        let state = state.clone();
        let admin = Arc::new(Admin {
            expose_config: cfg.admin.expose_config,
            allow_get_quit: cfg.admin.allow_get_quit,
            state: state.clone(),
            metrics: metrics.clone(),
            config_yaml: effective_yaml(&cfg),
            insecure_upstreams: cfg
                .upstreams
                .iter()
                .filter(|u| u.tls.as_ref().is_some_and(|t| t.insecure_skip_verify))
                .map(|u| u.name.clone())
                .collect(),
        });
        let handle_signals = opts.handle_signals;
        let exit_zero_on_sigterm = cfg.shutdown.exit_zero_on_sigterm;
        let exit_when_file = cfg.shutdown.exit_when_file.clone();
        let require_healthy = cfg.admin.ready_requires_healthy_upstreams;
        let watcher =
            reload::Watcher::new(reloadables, metrics.clone(), cfg.files.expiry_warning.get());
        let watch_interval = cfg.files.watch_interval.get();
        std::thread::Builder::new()
            .name("legate-control".into())
            .spawn(move || {
                run_control(
                    upstreams,
                    admin,
                    admin_socket,
                    state,
                    Control {
                        handle_signals,
                        exit_zero_on_sigterm,
                        require_healthy,
                        watcher,
                        watch_interval,
                        exit_when_file,
                        exit_processes,
                    },
                    stop_rx,
                )
            })
            .map_err(StartError::Thread)?
    };
    if let Some(a) = admin_addr {
        tracing::info!(addr = %a, "admin listening");
    }
    Ok(Running {
        listeners: bound
            .iter()
            .filter_map(|(n, a, _)| a.map(|a| (n.clone(), a)))
            .collect(),
        unix_paths,
        admin_addr,
        state,
        metrics,
        workers,
        worker_threads,
        control: Some(control),
        stop_control,
    })
}

fn current_thread_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the async runtime");
            None
        }
    }
}

fn find_upstream(
    upstreams: &[Arc<Upstream>],
    name: &str,
    missing: impl FnOnce() -> String,
) -> Result<Arc<Upstream>, StartError> {
    upstreams
        .iter()
        .find(|u| &*u.name == name)
        .cloned()
        .ok_or_else(|| StartError::Invalid(missing()))
}

fn run_worker(listeners: Vec<Accepting>, shutdown: watch::Receiver<bool>, drain: Duration) {
    let Some(rt) = current_thread_runtime() else {
        return;
    };
    rt.block_on(async move {
        let pools = Arc::new(Pools::default());
        let sweeper = {
            let pools = pools.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    pools.sweep();
                }
            })
        };
        let tracker = Arc::new(ConnTracker::default());
        let mut loops = Vec::new();
        for a in listeners {
            loops.push(tokio::spawn(listen::accept_loop(
                a,
                pools.clone(),
                tracker.clone(),
                shutdown.clone(),
            )));
        }
        for l in loops {
            let _ = l.await;
        }
        sweeper.abort();
        let tunnels = crate::tcp::drain::drain_all();
        if tunnels > 0 {
            tracing::info!(
                tunnels,
                "draining TCP tunnels: each closes once idle for {:?}",
                crate::tcp::copy::DRAIN_IDLE
            );
        }
        if tokio::time::timeout(drain, tracker.all_closed())
            .await
            .is_err()
        {
            tracing::warn!(
                ?drain,
                open = tracker.open(),
                "drain timeout reached; closing the remaining connections"
            );
        }
    });
}

/// What the control thread runs besides admin and discovery.
struct Control {
    handle_signals: bool,
    exit_zero_on_sigterm: bool,
    require_healthy: bool,
    watcher: reload::Watcher,
    watch_interval: Duration,
    exit_when_file: Option<std::path::PathBuf>,
    exit_processes: Option<Vec<lifecycle::exit::Watched>>,
}

fn run_control(
    upstreams: Vec<Arc<Upstream>>,
    admin: Arc<Admin>,
    admin_socket: Option<std::net::TcpListener>,
    state: Arc<State>,
    control: Control,
    stop: watch::Receiver<bool>,
) {
    let Control {
        handle_signals,
        exit_zero_on_sigterm,
        require_healthy,
        watcher,
        watch_interval,
        exit_when_file,
        exit_processes,
    } = control;
    let Some(rt) = current_thread_runtime() else {
        state.begin_shutdown("no runtime for the control thread");
        return;
    };
    rt.block_on(async move {
        if handle_signals {
            tokio::spawn(lifecycle::watch_signals(
                state.clone(),
                exit_zero_on_sigterm,
            ));
        }
        if let Some(path) = exit_when_file {
            tokio::spawn(lifecycle::exit::when_file(path, state.clone()));
        }
        if let Some(procs) = exit_processes {
            tokio::spawn(lifecycle::exit::with_processes(procs, state.clone()));
        }
        if let Some(socket) = admin_socket {
            tokio::spawn(admin::serve(socket, admin.clone(), stop.clone()));
        }
        if !watcher.is_empty() || handle_signals {
            tokio::spawn(reload::run(
                watcher,
                watch_interval,
                handle_signals,
                stop.clone(),
            ));
        }
        // Only names need a resolver: with IP endpoints alone, none is built (it reads
        // resolv.conf and hosts, time the startup probe would wait for).
        let resolver = upstreams
            .iter()
            .any(|u| !u.dns_targets().is_empty())
            .then(|| Arc::new(Resolver::from_system()));
        if let Some(resolver) = &resolver {
            discovery::resolve_initial(resolver, &upstreams, Duration::from_secs(5)).await;
        }
        for up in &upstreams {
            for (target, spec) in up.dns_targets() {
                let Some(resolver) = &resolver else { break };
                tokio::spawn(discovery::refresh_loop(
                    resolver.clone(),
                    up.clone(),
                    target,
                    spec,
                ));
            }
            if up.health_check.is_some() {
                tokio::spawn(health::run(up.clone()));
            }
            if let Some(crate::auth::UpstreamAuth::OAuth2(t)) = &up.auth {
                tokio::spawn(t.clone().keep_fresh(stop.clone()));
            }
        }
        if require_healthy {
            // Ready only once every health-checked upstream has a confirmed healthy endpoint.
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !health::all_have_healthy(&upstreams) && !state.is_draining() {
                tick.tick().await;
            }
        }
        state.set_ready();
        tracing::info!("ready");
        let mut stop = stop;
        let _ = stop.wait_for(|s| *s).await;
    });
}
