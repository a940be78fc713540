//! The control thread: admin, signals, exit conditions, DNS, health checks, token refresh, the
//! file watcher and config reload. Nothing here is on the request path: what it changes, it
//! changes by storing a new `Arc` snapshot that workers read at their next accept or request.

use super::build::{self, BuildEnv, Generation};
use crate::admin::{self, Admin, AdminView, ReloadOutcome};
use crate::config::{self, Config, ListenOn, ListenerProtocol};
use crate::lifecycle::files::{self, Stamp, Watcher};
use crate::lifecycle::{self, DrainSettings, State};
use crate::listen::{self, Accepting, BoundListener, ServingHandle};
use crate::telemetry::access_log::Sink;
use crate::telemetry::metrics::Metrics;
use crate::upstream::discovery::{self, Resolver};
use crate::upstream::{health, Upstream};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

/// How long a reload or the start waits for new upstream names to resolve before going on
/// (the background refresh keeps trying).
const INITIAL_DNS: Duration = Duration::from_secs(5);

/// The file a config came from, to reload it.
#[derive(Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// `sha256:<hex>` of the bytes the running config was read from.
    pub hash: String,
    /// Command-line flags that override the file (`--workers`, `--exit-when-file`, ...),
    /// applied again to every reloaded config.
    pub overrides: Arc<dyn Fn(&mut Config) + Send + Sync>,
}

/// A listener the workers run now.
pub(super) struct LiveListener {
    pub name: Arc<str>,
    pub listen: ListenOn,
    pub protocol: ListenerProtocol,
    pub addr: Option<SocketAddr>,
    pub serving: ServingHandle,
    pub removed: watch::Sender<bool>,
    pub unix_path: Option<PathBuf>,
}

impl LiveListener {
    /// Starts a bound listener on every worker.
    pub fn start(
        b: &build::BuiltListener,
        bound: BoundListener,
        workers: &[mpsc::UnboundedSender<Accepting>],
    ) -> Self {
        let serving: ServingHandle = Arc::new(ArcSwap::new(b.serving.clone()));
        let (removed, removed_rx) = watch::channel(false);
        for (socket, worker) in bound.sockets.into_iter().zip(workers) {
            // A worker that is gone is draining: the socket closes with this message.
            let _ = worker.send(Accepting {
                name: b.name.clone(),
                socket,
                serving: serving.clone(),
                removed: removed_rx.clone(),
            });
        }
        Self {
            name: b.name.clone(),
            listen: b.listen.clone(),
            protocol: b.protocol,
            addr: bound.addr,
            serving,
            removed,
            unix_path: bound.unix_path,
        }
    }
}

/// The background work of one upstream (DNS refresh, health checks, token refresh).
struct UpstreamTasks {
    up: Arc<Upstream>,
    handles: Vec<AbortHandle>,
}

/// What the control thread owns: the running config and everything needed to replace it.
pub(super) struct Control {
    pub source: Option<ConfigSource>,
    pub cfg: Config,
    pub hash: String,
    pub gen: Generation,
    pub live: Vec<LiveListener>,
    pub workers: Vec<mpsc::UnboundedSender<Accepting>>,
    pub view: Arc<ArcSwap<AdminView>>,
    pub metrics: Arc<Metrics>,
    pub state: Arc<State>,
    pub sink: Sink,
    pub unix_paths: Arc<Mutex<Vec<PathBuf>>>,
    pub handle_signals: bool,
    pub exit_processes: Option<Vec<lifecycle::exit::Watched>>,
    pub admin_socket: Option<std::net::TcpListener>,
    pub reload_requests: mpsc::Receiver<oneshot::Sender<ReloadOutcome>>,
    pub reload_sender: mpsc::Sender<oneshot::Sender<ReloadOutcome>>,
    /// The OTLP queue and its exporter, with `otlp:` (read at start only).
    pub spans: Option<Arc<crate::telemetry::otlp::SpanSink>>,
    pub exporter: Option<crate::telemetry::otlp::Exporter>,
}

/// The reload side of the control thread, alive as long as the process.
struct Reloader {
    source: Option<ConfigSource>,
    cfg: Config,
    hash: String,
    gen: Generation,
    live: Vec<LiveListener>,
    workers: Vec<mpsc::UnboundedSender<Accepting>>,
    tasks: Vec<UpstreamTasks>,
    resolver: Option<Arc<Resolver>>,
    watcher: Watcher,
    view: Arc<ArcSwap<AdminView>>,
    metrics: Arc<Metrics>,
    state: Arc<State>,
    sink: Sink,
    unix_paths: Arc<Mutex<Vec<PathBuf>>>,
    spans: Option<Arc<crate::telemetry::otlp::SpanSink>>,
    /// Watched files that are not the config's to change (the OTLP collector's TLS).
    fixed_files: Vec<Arc<dyn files::Reloadable>>,
    stop: watch::Receiver<bool>,
    /// The config file as last seen by the watch.
    config_stamp: Stamp,
    /// The file is gone and that was said once.
    missing_reported: bool,
    /// The last watched reload failed: read once more on the next tick (the file may have been
    /// caught half-written).
    retry: bool,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

pub(super) fn admin_view(cfg: &Config, hash: &str, source: &str) -> AdminView {
    AdminView {
        config: Arc::new(cfg.clone()),
        hash: hash.to_string(),
        source: source.to_string(),
        loaded_at: crate::tls::format_unix(now_unix()),
        last_error: None,
        insecure_upstreams: cfg
            .upstreams
            .iter()
            .filter(|u| u.tls.as_ref().is_some_and(|t| t.insecure_skip_verify))
            .map(|u| u.name.clone())
            .collect(),
        expose_config: cfg.admin.expose_config,
        allow_get_quit: cfg.admin.allow_get_quit,
    }
}

pub(super) fn drain_settings(cfg: &Config) -> DrainSettings {
    DrainSettings {
        min_delay: cfg.shutdown.min_delay.get(),
        drain_timeout: cfg.shutdown.drain_timeout.get(),
        exit_zero_on_sigterm: cfg.shutdown.exit_zero_on_sigterm,
    }
}

fn current_thread_runtime() -> Option<tokio::runtime::Runtime> {
    super::current_thread_runtime()
}

pub(super) fn run(c: Control, stop: watch::Receiver<bool>) {
    let Some(rt) = current_thread_runtime() else {
        c.state.begin_shutdown("no runtime for the control thread");
        return;
    };
    let Control {
        source,
        cfg,
        hash,
        gen,
        live,
        workers,
        view,
        metrics,
        state,
        sink,
        unix_paths,
        handle_signals,
        exit_processes,
        admin_socket,
        reload_requests,
        reload_sender,
        spans,
        exporter,
    } = c;
    rt.block_on(async move {
        if handle_signals {
            tokio::spawn(lifecycle::watch_signals(state.clone()));
        }
        if let Some(path) = cfg.shutdown.exit_when_file.clone() {
            tokio::spawn(lifecycle::exit::when_file(path, state.clone()));
        }
        if let Some(procs) = exit_processes {
            tokio::spawn(lifecycle::exit::with_processes(procs, state.clone()));
        }
        // Files read at start only and watched for good (the collector's TLS).
        let fixed_files: Vec<Arc<dyn files::Reloadable>> = exporter
            .as_ref()
            .and_then(|e| e.tls())
            .map(|t| t as Arc<dyn files::Reloadable>)
            .filter(|t| !t.files().is_empty())
            .into_iter()
            .collect();
        // Finished last: the spans of the drain's final requests are flushed before exit.
        let exporting = exporter.map(|e| {
            let flush = e.timeout() + Duration::from_secs(1);
            (tokio::spawn(e.run(stop.clone())), flush)
        });
        if let Some(socket) = admin_socket {
            let admin = Arc::new(Admin {
                state: state.clone(),
                metrics: metrics.clone(),
                view: view.clone(),
                reload: Some(reload_sender),
            });
            tokio::spawn(admin::serve(socket, admin, stop.clone()));
        }
        metrics.config_loaded(None, &hash, now_unix());
        let watcher = Watcher::new(
            [gen.reloadables(), fixed_files.clone()].concat(),
            metrics.clone(),
            cfg.files.expiry_warning.get(),
        );
        let require_healthy = cfg.admin.ready_requires_healthy_upstreams;
        let config_stamp = source.as_ref().map_or_else(
            || files::stamp(std::path::Path::new("")),
            |s| files::stamp(&s.path),
        );
        let mut reloader = Reloader {
            source,
            cfg,
            hash,
            gen,
            live,
            workers,
            tasks: Vec::new(),
            resolver: None,
            watcher,
            view,
            metrics,
            state: state.clone(),
            sink,
            unix_paths,
            spans,
            fixed_files,
            stop: stop.clone(),
            config_stamp,
            missing_reported: false,
            retry: false,
        };
        let upstreams = reloader.gen.upstream_arcs();
        reloader.start_upstreams(upstreams.clone()).await;
        tokio::spawn(reloader.run(handle_signals, reload_requests));
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
        if let Some((task, flush)) = exporting {
            let _ = tokio::time::timeout(flush, task).await;
        }
    });
}

impl Reloader {
    /// Resolves the names of `ups` once (bounded), then starts their background tasks.
    async fn start_upstreams(&mut self, ups: Vec<Arc<Upstream>>) {
        self.resolve_first(&ups).await;
        self.spawn_tasks(ups);
    }

    /// Resolves the names of `ups` once, bounded by `INITIAL_DNS`; what fails is left to the
    /// background refresh.
    async fn resolve_first(&mut self, ups: &[Arc<Upstream>]) {
        // Only names need a resolver: with IP endpoints alone, none is built (it reads
        // resolv.conf and hosts, time the startup probe would wait for).
        if ups.iter().any(|u| !u.dns_targets().is_empty()) {
            let resolver = self
                .resolver
                .get_or_insert_with(|| Arc::new(Resolver::from_system()))
                .clone();
            discovery::resolve_initial(&resolver, ups, INITIAL_DNS).await;
        }
    }

    fn spawn_tasks(&mut self, ups: Vec<Arc<Upstream>>) {
        for up in ups {
            let mut handles = Vec::new();
            if let Some(resolver) = &self.resolver {
                for (target, spec) in up.dns_targets() {
                    handles.push(
                        tokio::spawn(discovery::refresh_loop(
                            resolver.clone(),
                            up.clone(),
                            target,
                            spec,
                        ))
                        .abort_handle(),
                    );
                }
            }
            if up.health_check.is_some() {
                handles.push(tokio::spawn(health::run(up.clone())).abort_handle());
            }
            if let Some(crate::auth::UpstreamAuth::OAuth2(t)) = &up.auth {
                handles.push(tokio::spawn(t.clone().keep_fresh(self.stop.clone())).abort_handle());
            }
            self.tasks.push(UpstreamTasks { up, handles });
        }
    }

    /// Watches the config file and the files it names, answers SIGHUP and `POST /reload`.
    async fn run(
        mut self,
        signals: bool,
        mut requests: mpsc::Receiver<oneshot::Sender<ReloadOutcome>>,
    ) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = if signals {
            match signal(SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGHUP; files are still checked every interval");
                    None
                }
            }
        } else {
            None
        };
        let mut interval = self.cfg.files.watch_interval.get();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        enum Event {
            Tick,
            Hangup,
            Request(oneshot::Sender<ReloadOutcome>),
            Stop,
        }
        let mut stop = self.stop.clone();
        loop {
            let event = tokio::select! {
                _ = tick.tick() => Event::Tick,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => Event::Hangup,
                Some(reply) = requests.recv() => Event::Request(reply),
                _ = stop.wait_for(|s| *s) => Event::Stop,
            };
            match event {
                Event::Tick => {
                    self.watch_config().await;
                    self.watcher.check(false);
                }
                Event::Hangup => {
                    tracing::info!("SIGHUP: reloading the config, certificates and credentials");
                    self.reload("SIGHUP", true).await;
                    self.watcher.check(true);
                }
                Event::Request(reply) => {
                    let outcome = self.reload("POST /reload", true).await;
                    let _ = reply.send(outcome);
                }
                Event::Stop => return,
            }
            let wanted = self.cfg.files.watch_interval.get();
            if wanted != interval {
                interval = wanted;
                tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
            }
        }
    }

    /// Reloads when the config file changed (a ConfigMap's `..data` swap changes the inode of
    /// the file the path resolves to).
    async fn watch_config(&mut self) {
        let Some(path) = self.source.as_ref().map(|s| s.path.clone()) else {
            return;
        };
        let now = files::stamp(&path);
        if now == self.config_stamp && !self.retry {
            return;
        }
        self.config_stamp = now.clone();
        if !now.exists() {
            self.retry = false;
            if !self.missing_reported {
                self.missing_reported = true;
                let msg = format!(
                    "{}: the config file is gone (deleted, or being replaced); the running config stays",
                    path.display()
                );
                tracing::error!(file = %path.display(), "config file is gone (deleted, or being replaced); the running config stays until it is back");
                self.failed("file watch", vec![msg]);
            }
            return;
        }
        self.missing_reported = false;
        let was_retry = self.retry;
        let outcome = self.reload("file changed", false).await;
        self.retry = matches!(outcome, ReloadOutcome::Failed { .. }) && !was_retry;
    }

    /// Records a failed reload: every error logged, counted, and shown on `/config`.
    fn failed(&self, why: &str, errors: Vec<String>) -> ReloadOutcome {
        for e in &errors {
            tracing::error!(trigger = why, error = %e, "config reload failed; the running config stays");
        }
        self.metrics.config_reload(false);
        let mut view = AdminView::clone(&self.view.load());
        view.last_error = Some(format!(
            "{} ({why}):\n{}",
            crate::tls::format_unix(now_unix()),
            errors.join("\n")
        ));
        self.view.store(Arc::new(view));
        ReloadOutcome::Failed { errors }
    }

    /// Reads, validates and applies the config file. `explicit`: asked for (SIGHUP, POST), so
    /// an unchanged file counts as a successful reload; a watch tick that finds the same bytes
    /// (a ConfigMap update of another key) counts nothing.
    async fn reload(&mut self, why: &str, explicit: bool) -> ReloadOutcome {
        if self.state.is_draining() {
            return ReloadOutcome::Draining;
        }
        let Some(src) = self.source.clone() else {
            return ReloadOutcome::NoFile;
        };
        let started = Instant::now();
        let (mut cfg, hash) = match config::load_file_hashed(&src.path, config::Files::Check) {
            Ok(x) => x,
            Err(e) => return self.failed(why, e.lines()),
        };
        if hash == self.hash {
            if explicit {
                self.metrics.config_reload(true);
                tracing::info!(trigger = why, %hash, "config unchanged");
            }
            // The file is what runs: an earlier failure no longer describes it.
            if self.view.load().last_error.is_some() {
                let mut view = AdminView::clone(&self.view.load());
                view.last_error = None;
                self.view.store(Arc::new(view));
                self.metrics.config_last_reload_successful.set(1);
            }
            return ReloadOutcome::Unchanged { hash };
        }
        (src.overrides)(&mut cfg);
        let mut notes = keep_restart_only(&self.cfg, &mut cfg);
        match self.apply(cfg, &src.path).await {
            Ok(changes) => {
                notes.splice(0..0, changes);
                self.metrics
                    .config_loaded(Some(&self.hash), &hash, now_unix());
                self.metrics.config_reload(true);
                self.hash = hash.clone();
                self.view.store(Arc::new(admin_view(
                    &self.cfg,
                    &hash,
                    &src.path.display().to_string(),
                )));
                tracing::info!(trigger = why, %hash, took = ?started.elapsed(), changes = %notes.join("; "), "config reloaded");
                ReloadOutcome::Applied { hash, notes }
            }
            Err(errors) => self.failed(why, errors),
        }
    }

    /// Binds, compiles, then swaps. Nothing visible changes until everything that can fail has
    /// succeeded; on failure the new sockets are closed and the running config stays whole.
    async fn apply(
        &mut self,
        cfg: Config,
        file: &std::path::Path,
    ) -> Result<Vec<String>, Vec<String>> {
        let workers = self.workers.len();
        let mut fresh: Vec<(String, BoundListener)> = Vec::new();
        let mut addrs = HashMap::new();
        let drop_fresh = |fresh: Vec<(String, BoundListener)>| {
            for (_, b) in fresh {
                if let Some(p) = &b.unix_path {
                    listen::unix::remove(p);
                }
            }
        };
        let names: Vec<&str> = cfg.listeners.iter().map(|l| l.name.as_str()).collect();
        for l in &cfg.listeners {
            match keeps(&self.live, &l.name, &l.listen, l.protocol, &names) {
                Some(i) => {
                    addrs.insert(l.name.clone(), self.live[i].addr);
                }
                None => match listen::bind_listener(l, workers) {
                    Ok(b) => {
                        addrs.insert(l.name.clone(), b.addr);
                        fresh.push((l.name.clone(), b));
                    }
                    Err(e) => {
                        drop_fresh(fresh);
                        return Err(vec![format!("{}: {e}", file.display())]);
                    }
                },
            }
        }
        let env = BuildEnv {
            metrics: &self.metrics,
            state: &self.state,
            sink: &self.sink,
            spans: self.spans.as_ref(),
        };
        let gen = match build::build(&cfg, Some(&self.gen), &env, &addrs) {
            Ok(g) => g,
            Err(e) => {
                drop_fresh(fresh);
                return Err(vec![format!("{}: {e}", file.display())]);
            }
        };
        let new_upstreams: Vec<Arc<Upstream>> = gen
            .upstreams
            .iter()
            .filter(|b| !self.gen.has(&b.up))
            .map(|b| b.up.clone())
            .collect();
        // New upstreams have endpoints before they take traffic (names resolved, bounded);
        // the running config serves meanwhile.
        self.resolve_first(&new_upstreams).await;

        // A drain that began meanwhile wins: nothing new starts.
        if self.state.is_draining() {
            drop_fresh(fresh);
            return Err(vec!["draining: the reload was not applied".into()]);
        }
        // Commit: from here on nothing fails.
        let mut changes = Vec::new();
        let mut next_live = Vec::with_capacity(gen.listeners.len());
        for b in &gen.listeners {
            match keeps(&self.live, &b.name, &b.listen, b.protocol, &names) {
                Some(i) => {
                    let mut x = self.live.swap_remove(i);
                    if x.name != b.name {
                        tracing::info!(from = %x.name, to = %b.name, "listener renamed; its socket is kept");
                        changes.push(format!("listener `{}` renamed to `{}`", x.name, b.name));
                        x.name = b.name.clone();
                    }
                    x.serving.store(b.serving.clone());
                    if let (Some(p), Some(l)) = (
                        &x.unix_path,
                        cfg.listeners.iter().find(|l| *l.name == *b.name),
                    ) {
                        listen::unix::set_mode(
                            p,
                            l.socket_mode.map_or(config::DEFAULT_SOCKET_MODE, |m| m.0),
                        );
                    }
                    next_live.push(x);
                }
                None => {
                    let Some(i) = fresh.iter().position(|(n, _)| *n == *b.name) else {
                        continue;
                    };
                    let (_, bound) = fresh.swap_remove(i);
                    if let Some(p) = &bound.unix_path {
                        if let Ok(mut paths) = self.unix_paths.lock() {
                            paths.push(p.clone());
                        }
                    }
                    let moved = self.live.iter().any(|x| x.name == b.name);
                    let x = LiveListener::start(b, bound, &self.workers);
                    let at = x
                        .addr
                        .map_or_else(|| x.listen.to_string(), |a| a.to_string());
                    tracing::info!(listener = %x.name, addr = %at, protocol = ?x.protocol,
                        "{}", if moved { "listener rebound" } else { "listener added" });
                    changes.push(format!(
                        "listener `{}` {} {at}",
                        x.name,
                        if moved { "rebound to" } else { "added on" }
                    ));
                    next_live.push(x);
                }
            }
        }
        for x in std::mem::replace(&mut self.live, next_live) {
            x.removed.send_replace(true);
            if let Some(p) = &x.unix_path {
                listen::unix::remove(p);
                if let Ok(mut paths) = self.unix_paths.lock() {
                    paths.retain(|q| q != p);
                }
            }
            if !self.live.iter().any(|l| l.name == x.name) {
                tracing::info!(listener = %x.name, "listener removed");
                changes.push(format!("listener `{}` removed", x.name));
            }
        }
        let mut dropped = 0;
        self.tasks.retain(|t| {
            let keep = gen.has(&t.up);
            if !keep {
                t.handles.iter().for_each(AbortHandle::abort);
                dropped += 1;
            }
            keep
        });
        let kept = gen.upstreams.len() - new_upstreams.len();
        changes.push(format!(
            "upstreams: {kept} kept with their state, {} new or rebuilt, {dropped} retired",
            new_upstreams.len()
        ));
        self.watcher.set_items(
            [gen.reloadables(), self.fixed_files.clone()].concat(),
            cfg.files.expiry_warning.get(),
        );
        self.state.set_drain(drain_settings(&cfg));
        self.gen = gen;
        self.cfg = cfg;
        self.spawn_tasks(new_upstreams);
        Ok(changes)
    }
}

/// The live listener a configured one keeps: the same name, address and protocol; or, for a
/// rename, the same address and protocol held by a listener the new config no longer names (a
/// Unix socket path cannot be bound twice, and a TCP port need not be). A port-0 listener is
/// kept only under its own name: two of them share the spelling, not the port.
fn keeps(
    live: &[LiveListener],
    name: &str,
    listen: &ListenOn,
    protocol: ListenerProtocol,
    names: &[&str],
) -> Option<usize> {
    let same = |x: &LiveListener| x.listen == *listen && x.protocol == protocol;
    live.iter()
        .position(|x| *x.name == *name && same(x))
        .or_else(|| {
            let port_zero = matches!(listen, ListenOn::Tcp(a) if a.0.port() == 0);
            (!port_zero)
                .then(|| {
                    live.iter()
                        .position(|x| same(x) && !names.contains(&&*x.name))
                })
                .flatten()
        })
}

/// Settings read only at start: a reload keeps the running value, and says so.
fn keep_restart_only(running: &Config, new: &mut Config) -> Vec<String> {
    fn same<T: serde::Serialize>(a: &T, b: &T) -> bool {
        serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
    }
    let mut notes = Vec::new();
    let mut note = |field: &str| {
        tracing::warn!(
            field,
            "changed in the config file, but read only at start: takes effect at the next restart"
        );
        notes.push(format!(
            "{field}: changed; takes effect at the next restart"
        ));
    };
    if !same(&running.admin.listen, &new.admin.listen) {
        note("admin.listen");
        new.admin.listen = running.admin.listen;
    }
    if running.runtime.workers != new.runtime.workers {
        note("runtime.workers");
        new.runtime.workers = running.runtime.workers;
    }
    if running.shutdown.exit_when_file != new.shutdown.exit_when_file {
        note("shutdown.exit_when_file");
        new.shutdown.exit_when_file = running.shutdown.exit_when_file.clone();
    }
    if !same(&running.otlp, &new.otlp) {
        note("otlp");
        new.otlp = running.otlp.clone();
    }
    if running.admin.ready_requires_healthy_upstreams != new.admin.ready_requires_healthy_upstreams
    {
        note("admin.ready_requires_healthy_upstreams");
        new.admin.ready_requires_healthy_upstreams = running.admin.ready_requires_healthy_upstreams;
    }
    if running.shutdown.exit_with_process != new.shutdown.exit_with_process {
        note("shutdown.exit_with_process");
        new.shutdown.exit_with_process = running.shutdown.exit_with_process.clone();
    }
    notes
}
