//! Start and stop: the startup and readiness flags, the drain broadcast, signals, and the
//! conditions that end a sidecar with its main work (`exit`).
//!
//! The drain, in order: `/ready` turns 503 at once; listeners keep accepting for
//! `shutdown.min_delay` (the app's last calls, while the Pod leaves its Services); then the
//! workers' shutdown watch flips: listeners close, idle keep-alives close, in-flight work
//! finishes within `drain_timeout`, and the process exits with the code the drain set.

pub mod exit;
pub mod files;
pub mod probe;

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Process-wide state that admin reports and signals change.
pub struct State {
    /// Listeners bound, certificates loaded, first DNS done. Never goes back (`/startup`).
    started: AtomicBool,
    ready: AtomicBool,
    draining: AtomicBool,
    /// Listeners at their `max_connections` now: `/ready` says 503 while any is, so the
    /// Service sends new work elsewhere (as cloud-sql-proxy does).
    saturated: AtomicUsize,
    /// What the process exits with once drained.
    exit_code: AtomicI32,
    /// The `shutdown:` settings a reload may change, read when the drain begins.
    min_delay_ms: AtomicU64,
    drain_timeout_ms: AtomicU64,
    exit_zero_on_sigterm: AtomicBool,
    shutdown: watch::Sender<bool>,
}

/// The `shutdown:` settings that take effect without a restart.
#[derive(Debug, Clone, Copy)]
pub struct DrainSettings {
    pub min_delay: Duration,
    pub drain_timeout: Duration,
    pub exit_zero_on_sigterm: bool,
}

impl Default for DrainSettings {
    fn default() -> Self {
        Self {
            min_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(30),
            exit_zero_on_sigterm: true,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    pub fn new() -> Self {
        Self::with_drain(DrainSettings::default())
    }

    pub fn with_drain(d: DrainSettings) -> Self {
        let s = Self {
            started: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            saturated: AtomicUsize::new(0),
            exit_code: AtomicI32::new(0),
            min_delay_ms: AtomicU64::new(0),
            drain_timeout_ms: AtomicU64::new(0),
            exit_zero_on_sigterm: AtomicBool::new(true),
            shutdown: watch::channel(false).0,
        };
        s.set_drain(d);
        s
    }

    /// `min_delay`: how long new connections are still accepted once the drain begins.
    pub fn with_min_delay(min_delay: Duration) -> Self {
        Self::with_drain(DrainSettings {
            min_delay,
            ..DrainSettings::default()
        })
    }

    /// Applies reloaded `shutdown:` settings (a drain already under way keeps its own).
    pub fn set_drain(&self, d: DrainSettings) {
        self.min_delay_ms
            .store(millis(d.min_delay), Ordering::SeqCst);
        self.drain_timeout_ms
            .store(millis(d.drain_timeout), Ordering::SeqCst);
        self.exit_zero_on_sigterm
            .store(d.exit_zero_on_sigterm, Ordering::SeqCst);
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms.load(Ordering::SeqCst))
    }

    fn min_delay(&self) -> Duration {
        Duration::from_millis(self.min_delay_ms.load(Ordering::SeqCst))
    }

    pub fn exit_zero_on_sigterm(&self) -> bool {
        self.exit_zero_on_sigterm.load(Ordering::SeqCst)
    }

    /// Startup is complete: ready from now on (unless draining), started for good.
    pub fn set_ready(&self) {
        self.started.store(true, Ordering::SeqCst);
        if !self.is_draining() {
            self.ready.store(true, Ordering::SeqCst);
        }
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
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

    pub fn exit_code(&self) -> i32 {
        self.exit_code.load(Ordering::SeqCst)
    }

    /// Begins the drain, to exit 0 once done.
    pub fn begin_shutdown(&self, why: &str) {
        self.begin_shutdown_with(why, 0);
    }

    /// Begins the drain: readiness goes first so the Pod leaves the Service before sockets
    /// close; listeners close `min_delay` later. Only the first call counts.
    pub fn begin_shutdown_with(&self, why: &str, exit_code: i32) {
        if self.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        self.exit_code.store(exit_code, Ordering::SeqCst);
        self.ready.store(false, Ordering::SeqCst);
        let delay = self.min_delay();
        if delay.is_zero() {
            tracing::info!(
                reason = why,
                "draining: no new connections; finishing in-flight requests"
            );
            self.shutdown.send_replace(true);
            return;
        }
        tracing::info!(reason = why, min_delay = ?delay,
            "draining: not ready; still accepting connections for min_delay");
        let tx = self.shutdown.clone();
        let spawned = std::thread::Builder::new()
            .name("legate-min-delay".into())
            .spawn(move || {
                std::thread::sleep(delay);
                tracing::info!("min_delay over: no new connections; finishing in-flight requests");
                tx.send_replace(true);
            });
        if spawned.is_err() {
            self.shutdown.send_replace(true);
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// Raises the open-files soft limit to the hard limit, as nginx's `worker_rlimit_nofile` would:
/// every client connection and every upstream connection is a descriptor, and the soft limit
/// many runtimes start with (1024) would refuse a burst an app can easily make.
pub fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur >= lim.rlim_max {
        return;
    }
    let before = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        tracing::info!(
            from = before,
            to = lim.rlim_cur,
            "raised the open-files limit to its hard limit"
        );
    } else {
        tracing::warn!(
            soft = before,
            hard = lim.rlim_max,
            "cannot raise the open-files limit; connections beyond it will be refused"
        );
    }
}

/// Waits for SIGTERM or SIGINT and starts the drain (exit 0, or 143/130 without
/// `shutdown.exit_zero_on_sigterm`); a second signal exits at once.
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
    let (name, code) = tokio::select! {
        _ = term.recv() => ("SIGTERM", 143),
        _ = int.recv() => ("SIGINT", 130),
    };
    let exit_zero = state.exit_zero_on_sigterm();
    state.begin_shutdown_with(name, if exit_zero { 0 } else { code });
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::warn!("second signal: exiting without waiting for in-flight requests");
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_stays_readiness_goes() {
        let s = State::new();
        assert!(!s.is_started() && !s.is_ready());
        s.set_ready();
        assert!(s.is_started() && s.is_ready());
        let rx = s.subscribe();
        s.begin_shutdown_with("test", 143);
        assert!(s.is_started() && !s.is_ready() && s.is_draining());
        assert!(*rx.borrow());
        assert_eq!(s.exit_code(), 143);
        s.begin_shutdown_with("again", 0);
        assert_eq!(s.exit_code(), 143, "only the first request counts");
    }

    #[test]
    fn min_delay_holds_the_listeners_open() {
        let s = State::with_min_delay(Duration::from_millis(200));
        let mut rx = s.subscribe();
        s.begin_shutdown("test");
        assert!(!s.is_ready());
        assert!(!*rx.borrow(), "listeners still open during min_delay");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            rx.wait_for(|v| *v).await.unwrap();
        });
    }
}
