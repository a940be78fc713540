//! Start and stop: readiness, the shutdown broadcast, and signals. SIGTERM or SIGINT flip
//! readiness off, stop accepting, and let in-flight requests finish within `drain_timeout`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::watch;

/// Process-wide state that admin reports and signals change.
pub struct State {
    ready: AtomicBool,
    draining: AtomicBool,
    /// Listeners at their `max_connections` now: `/ready` says 503 while any is, so the
    /// Service sends new work elsewhere (as cloud-sql-proxy does).
    saturated: AtomicUsize,
    shutdown: watch::Sender<bool>,
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    pub fn new() -> Self {
        Self {
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            saturated: AtomicUsize::new(0),
            shutdown: watch::channel(false).0,
        }
    }

    pub fn set_ready(&self) {
        if !self.is_draining() {
            self.ready.store(true, Ordering::SeqCst);
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn saturated(&self) -> usize {
        self.saturated.load(Ordering::SeqCst)
    }

    pub fn set_saturated(&self, saturated: bool) {
        if saturated {
            self.saturated.fetch_add(1, Ordering::SeqCst);
        } else {
            self.saturated.fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Begins the drain: readiness goes first so the Pod leaves the Service before sockets close.
    pub fn begin_shutdown(&self, why: &str) {
        if self.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        self.ready.store(false, Ordering::SeqCst);
        tracing::info!(
            reason = why,
            "draining: no new connections; finishing in-flight requests"
        );
        self.shutdown.send_replace(true);
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// Waits for SIGTERM or SIGINT and starts the drain; a second signal exits at once.
pub async fn watch_signals(state: std::sync::Arc<State>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!(
            "cannot install signal handlers; SIGTERM will kill legate without draining"
        );
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    state.begin_shutdown(name);
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::warn!("second signal: exiting without waiting for in-flight requests");
    std::process::exit(1);
}
