//! Putting it together: compile the config (`build`), bind every socket, start the workers (one
//! single-threaded event loop per thread, nginx-style) and the control thread (`control`:
//! admin, DNS, signals, reload), and drain on shutdown.

mod build;
mod control;
pub mod drain;

pub use control::ConfigSource;

use crate::config::{self, AdminListen, Config};
use crate::http::route::RouteError;
use crate::lifecycle::{self, State};
use crate::listen::{self, Accepting, BindError, ConnTracker};
use crate::telemetry::access_log::Sink;
use crate::telemetry::metrics::Metrics;
use crate::upstream::pool::Pools;
use crate::upstream::BuildError;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

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
    #[error(transparent)]
    Otlp(#[from] crate::telemetry::otlp::OtlpError),
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
    /// Install SIGTERM/SIGINT/SIGHUP handlers (the binary does; in-process tests do not).
    pub handle_signals: bool,
    /// The file the config was read from: watched, and reloaded on change, SIGHUP and
    /// `POST /reload`. `None` for a config built from flags or in memory.
    pub config_file: Option<ConfigSource>,
}

/// A running legate.
pub struct Running {
    pub listeners: Vec<(String, SocketAddr)>,
    /// Unix socket files legate created (reloads add and remove some); removed when it stops.
    unix_paths: Arc<Mutex<Vec<PathBuf>>>,
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
        if let Ok(paths) = self.unix_paths.lock() {
            paths.iter().for_each(|p| listen::unix::remove(p));
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
    let state = Arc::new(State::with_drain(control::drain_settings(&cfg)));
    // Found before anything binds, so a name that matches nothing fails the start.
    let exit_processes = match &cfg.shutdown.exit_with_process {
        Some(spec) => Some(lifecycle::exit::find(spec)?),
        None => None,
    };
    let workers = worker_count(&cfg);

    // Bind everything before starting anything, so a taken port fails the start cleanly.
    let mut bound = Vec::with_capacity(cfg.listeners.len());
    let mut addrs = HashMap::new();
    let unix_paths = Arc::new(Mutex::new(Vec::new()));
    let remove_unix = |paths: &Mutex<Vec<PathBuf>>| {
        if let Ok(p) = paths.lock() {
            p.iter().for_each(|p| listen::unix::remove(p));
        }
    };
    for l in &cfg.listeners {
        let b = match listen::bind_listener(l, workers) {
            Ok(b) => b,
            Err(e) => {
                remove_unix(&unix_paths);
                return Err(e.into());
            }
        };
        if let (Some(p), Ok(mut paths)) = (&b.unix_path, unix_paths.lock()) {
            paths.push(p.clone());
        }
        addrs.insert(l.name.clone(), b.addr);
        bound.push(b);
    }
    let (spans, exporter) = match &cfg.otlp {
        Some(o) => {
            let (sink, exporter) = crate::telemetry::otlp::new(o, &metrics)?;
            (Some(sink), Some(exporter))
        }
        None => (None, None),
    };
    let env = build::BuildEnv {
        metrics: &metrics,
        state: &state,
        sink: &opts.access_log_sink,
        spans: spans.as_ref(),
    };
    let gen = match build::build(&cfg, None, &env, &addrs) {
        Ok(g) => g,
        Err(e) => {
            remove_unix(&unix_paths);
            return Err(e);
        }
    };
    let admin_socket = match cfg.admin.listen {
        AdminListen::Off => None,
        AdminListen::Addr(a) => match listen::bind_shared("admin", a.0, 1) {
            Ok(mut s) => s.pop(),
            Err(e) => {
                remove_unix(&unix_paths);
                return Err(e.into());
            }
        },
    };
    let admin_addr = admin_socket.as_ref().and_then(|s| s.local_addr().ok());

    let mut senders = Vec::with_capacity(workers);
    let mut receivers = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        receivers.push(rx);
    }
    let mut live = Vec::with_capacity(gen.listeners.len());
    for (b, sockets) in gen.listeners.iter().zip(bound) {
        let l = control::LiveListener::start(b, sockets, &senders);
        let shown = l
            .addr
            .map_or_else(|| l.listen.to_string(), |a| a.to_string());
        tracing::info!(listener = %l.name, addr = %shown, protocol = ?l.protocol, workers, "listening");
        live.push(l);
    }
    let listeners = live
        .iter()
        .filter_map(|l| l.addr.map(|a| (l.name.to_string(), a)))
        .collect();

    let mut worker_threads = Vec::with_capacity(workers);
    for (i, added) in receivers.into_iter().enumerate() {
        let shutdown = state.subscribe();
        let state = state.clone();
        let t = std::thread::Builder::new()
            .name(format!("legate-worker-{i}"))
            .spawn(move || run_worker(added, shutdown, state))
            .map_err(StartError::Thread)?;
        worker_threads.push(t);
    }

    let mut view = control::admin_view(&cfg, "", "command line");
    view.hash = match &opts.config_file {
        Some(src) => {
            view.source = src.path.display().to_string();
            src.hash.clone()
        }
        // No file: the hash of the effective config (what `/config` shows).
        None => config::hash_text(&config::to_yaml(&config::redacted(&cfg))),
    };
    let hash = view.hash.clone();
    let view = Arc::new(ArcSwap::from_pointee(view));
    let (reload_sender, reload_requests) = mpsc::channel(8);
    let (stop_control, stop_rx) = watch::channel(false);
    let c = control::Control {
        source: opts.config_file.clone(),
        cfg,
        hash,
        gen,
        live,
        workers: senders,
        view,
        metrics: metrics.clone(),
        state: state.clone(),
        sink: opts.access_log_sink.clone(),
        unix_paths: unix_paths.clone(),
        handle_signals: opts.handle_signals,
        exit_processes,
        admin_socket,
        reload_requests,
        reload_sender,
        spans,
        exporter,
    };
    let control = std::thread::Builder::new()
        .name("legate-control".into())
        .spawn(move || control::run(c, stop_rx))
        .map_err(StartError::Thread)?;
    if let Some(a) = admin_addr {
        tracing::info!(addr = %a, "admin listening");
    }
    Ok(Running {
        listeners,
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

pub(crate) fn current_thread_runtime() -> Option<tokio::runtime::Runtime> {
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

/// One worker: runs the listeners it is given (at start and by reloads) until the drain, then
/// waits for its connections to finish within `shutdown.drain_timeout`.
fn run_worker(
    mut added: mpsc::UnboundedReceiver<Accepting>,
    mut shutdown: watch::Receiver<bool>,
    state: Arc<State>,
) {
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
                    // The HTTP/1.1 server's spare buffers, on this worker's thread.
                    crate::h1::bufpool::trim();
                }
            })
        };
        let tracker = Arc::new(ConnTracker::default());
        let mut loops = tokio::task::JoinSet::new();
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => None,
                a = added.recv() => a,
                // Listeners removed by reloads end here.
                Some(_) = loops.join_next(), if !loops.is_empty() => continue,
            };
            let Some(a) = next else { break };
            loops.spawn(listen::accept_loop(
                a,
                pools.clone(),
                tracker.clone(),
                shutdown.clone(),
            ));
        }
        // Sockets sent while the drain began close unopened.
        added.close();
        while added.try_recv().is_ok() {}
        while loops.join_next().await.is_some() {}
        sweeper.abort();
        // HTTP connections were told by their listeners' accept loops as they ended.
        let tunnels = drain::drain(drain::WORKER);
        if tunnels > 0 {
            tracing::info!(
                tunnels,
                "draining TCP tunnels: each closes once idle for {:?}",
                crate::tcp::copy::DRAIN_IDLE
            );
        }
        let drain = state.drain_timeout();
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
