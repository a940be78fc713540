//! Circuit breaking, both kinds:
//!
//! - `Limits`: Envoy-style thresholds on what one upstream may have in flight (connections,
//!   requests waiting for a connection, requests, retries). Past a limit the request fails fast
//!   with 503 `overflow` instead of queueing behind a struggling service.
//! - `Breaker`: a state machine over the failure ratio in a sliding window. Closed → open when
//!   at least `min_requests` were seen and `failure_ratio` of them failed; open fails fast with
//!   503 `circuit-open` for `open_for` (doubling with each consecutive trip, capped); then
//!   half-open lets `probes` requests through, and closes only if all of them succeed.

use crate::config::resilience::CircuitBreakerConfig;
use crate::window::Window;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Connections,
    PendingRequests,
    Requests,
    Retries,
}

impl Limit {
    pub fn name(self) -> &'static str {
        match self {
            Limit::Connections => "max_connections",
            Limit::PendingRequests => "max_pending_requests",
            Limit::Requests => "max_requests",
            Limit::Retries => "max_retries",
        }
    }
}

#[derive(Debug)]
pub struct Limits {
    max: [u32; 4],
    now: [AtomicU32; 4],
    /// Requests waiting for a connection slot (`max_connections` reached).
    waiting: AtomicU32,
    /// Told when a connection slot frees while requests wait.
    freed: tokio::sync::Notify,
}

/// Holds one unit of a limit until dropped.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<Limits>,
    which: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limits.now[self.which].fetch_sub(1, Ordering::AcqRel);
        if self.which == Limit::Connections as usize
            && self.limits.waiting.load(Ordering::Acquire) > 0
        {
            self.limits.freed.notify_one();
        }
    }
}

/// Counts one request waiting for a connection slot, while held.
pub struct Waiting(Arc<Limits>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limits {
    pub fn new(c: &CircuitBreakerConfig) -> Self {
        Self {
            max: [
                c.max_connections,
                c.max_pending_requests,
                c.max_requests,
                c.max_retries,
            ],
            now: Default::default(),
            waiting: AtomicU32::new(0),
            freed: tokio::sync::Notify::new(),
        }
    }

    /// Requests waiting for a connection slot now.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Acquire)
    }

    /// Registers a request as waiting for a connection slot.
    pub fn wait_for_connection(self: &Arc<Self>) -> Waiting {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(self.clone())
    }

    /// Resolves when a connection slot frees (or a wake-up was stored for the next waiter).
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    fn index(l: Limit) -> usize {
        l as usize
    }

    /// One more unit of `limit`, or `None` when it is at its maximum.
    pub fn acquire(self: &Arc<Self>, limit: Limit) -> Option<Permit> {
        let i = Self::index(limit);
        let max = self.max[i];
        self.now[i]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                limits: self.clone(),
                which: i,
            })
    }

    pub fn current(&self, limit: Limit) -> u32 {
        self.now[Self::index(limit)].load(Ordering::Acquire)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
enum Mode {
    Closed,
    Open { until: Instant },
    HalfOpen { left: u32, ok: u32 },
}

#[derive(Debug)]
struct Inner {
    mode: Mode,
    trips: u32,
}

#[derive(Debug)]
pub struct Breaker {
    upstream: Arc<str>,
    failure_ratio: f64,
    min_requests: u32,
    open_for: Duration,
    max_open_for: Duration,
    probes: u32,
    inner: Mutex<Inner>,
    /// Outcomes while closed (marked = failed); added to without the lock.
    window: Window,
    /// Mirrors "closed" so the common case admits without taking the lock.
    closed: std::sync::atomic::AtomicBool,
    gauge: Gauge,
    trips_total: Counter,
}

/// Whether an admitted request is one of the half-open probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub probe: bool,
}

impl Breaker {
    pub fn new(
        upstream: Arc<str>,
        c: &CircuitBreakerConfig,
        gauge: Gauge,
        trips_total: Counter,
    ) -> Self {
        gauge.set(0);
        Self {
            upstream,
            failure_ratio: c.failure_ratio,
            min_requests: c.min_requests,
            open_for: c.open_for.get(),
            max_open_for: c.max_open_for.get(),
            probes: c.probes,
            inner: Mutex::new(Inner {
                mode: Mode::Closed,
                trips: 0,
            }),
            window: Window::new(c.window.get()),
            closed: std::sync::atomic::AtomicBool::new(true),
            gauge,
            trips_total,
        }
    }

    pub fn state(&self) -> State {
        match self.inner.lock().map(|i| match i.mode {
            Mode::Closed => State::Closed,
            Mode::Open { .. } => State::Open,
            Mode::HalfOpen { .. } => State::HalfOpen,
        }) {
            Ok(s) => s,
            Err(_) => State::Closed,
        }
    }

    fn set(&self, inner: &mut Inner, mode: Mode) {
        let (gauge, name) = match mode {
            Mode::Closed => (0, "closed"),
            Mode::Open { .. } => (1, "open"),
            Mode::HalfOpen { .. } => (2, "half-open"),
        };
        self.closed
            .store(matches!(mode, Mode::Closed), Ordering::Release);
        inner.mode = mode;
        self.gauge.set(gauge);
        tracing::warn!(upstream = %self.upstream, state = name, trips = inner.trips, "circuit breaker state changed");
    }

    /// May a request go now? `None` means the circuit is open (or half-open with no probe left).
    pub fn admit(&self) -> Option<Admission> {
        if self.closed.load(Ordering::Acquire) {
            return Some(Admission { probe: false });
        }
        let Ok(mut i) = self.inner.lock() else {
            return Some(Admission { probe: false });
        };
        match i.mode {
            Mode::Closed => Some(Admission { probe: false }),
            Mode::Open { until } if Instant::now() >= until => {
                let probes = self.probes;
                self.set(
                    &mut i,
                    Mode::HalfOpen {
                        left: probes - 1,
                        ok: 0,
                    },
                );
                Some(Admission { probe: true })
            }
            Mode::Open { .. } => None,
            Mode::HalfOpen { left: 0, .. } => None,
            Mode::HalfOpen { ref mut left, .. } => {
                *left -= 1;
                Some(Admission { probe: true })
            }
        }
    }

    pub fn record(&self, admission: Admission, failed: bool, now: Instant) {
        if !admission.probe {
            // Late results from before a state change say nothing about the upstream now.
            if !self.closed.load(Ordering::Acquire) {
                return;
            }
            self.window.add(now, failed);
            // A success only lowers the failure ratio: the lock is for deciding to trip.
            if !failed {
                return;
            }
            let Ok(mut i) = self.inner.lock() else { return };
            let t = self.window.totals(now);
            if matches!(i.mode, Mode::Closed)
                && t.events >= u64::from(self.min_requests)
                && t.marked as f64 >= self.failure_ratio * t.events as f64
            {
                self.trip(&mut i, now);
            }
            return;
        }
        let Ok(mut i) = self.inner.lock() else { return };
        if let Mode::HalfOpen { ok, .. } = i.mode {
            if failed {
                self.trip(&mut i, now);
            } else if ok + 1 >= self.probes {
                i.trips = 0;
                self.window.clear();
                self.set(&mut i, Mode::Closed);
            } else if let Mode::HalfOpen { ok, .. } = &mut i.mode {
                *ok += 1;
            }
        }
    }

    fn trip(&self, i: &mut Inner, now: Instant) {
        let factor = 1u32 << i.trips.min(16);
        let open_for = self.open_for.saturating_mul(factor).min(self.max_open_for);
        i.trips += 1;
        self.trips_total.inc();
        self.window.clear();
        self.set(
            i,
            Mode::Open {
                until: now + open_for,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;

    fn cfg() -> CircuitBreakerConfig {
        CircuitBreakerConfig {
            min_requests: 4,
            failure_ratio: 0.5,
            open_for: ConfigDuration::from_millis(50),
            max_open_for: ConfigDuration::from_millis(120),
            probes: 2,
            max_connections: 2,
            ..Default::default()
        }
    }

    #[test]
    fn opens_half_opens_and_closes() {
        let b = Breaker::new(
            Arc::from("api"),
            &cfg(),
            Gauge::default(),
            Counter::default(),
        );
        let closed = Admission { probe: false };
        b.record(closed, true, Instant::now());
        b.record(closed, false, Instant::now());
        b.record(closed, false, Instant::now());
        assert_eq!(b.state(), State::Closed, "below min_requests nothing trips");
        // The decision is taken on a failure: a success only lowers the ratio.
        b.record(closed, true, Instant::now());
        assert_eq!(b.state(), State::Open, "2 of 4 failed = ratio 0.5");
        assert!(b.admit().is_none(), "open fails fast");
        std::thread::sleep(Duration::from_millis(60));
        let p1 = b.admit().expect("first probe");
        assert!(p1.probe);
        assert_eq!(b.state(), State::HalfOpen);
        let p2 = b.admit().expect("second probe");
        assert!(
            b.admit().is_none(),
            "only `probes` requests while half-open"
        );
        b.record(p1, false, Instant::now());
        assert_eq!(b.state(), State::HalfOpen);
        b.record(p2, false, Instant::now());
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_for_longer_up_to_the_cap() {
        let b = Breaker::new(
            Arc::from("api"),
            &cfg(),
            Gauge::default(),
            Counter::default(),
        );
        for _ in 0..4 {
            b.record(Admission { probe: false }, true, Instant::now());
        }
        assert_eq!(b.state(), State::Open);
        std::thread::sleep(Duration::from_millis(60));
        let p = b.admit().unwrap();
        b.record(p, true, Instant::now());
        assert_eq!(b.state(), State::Open);
        // Second trip: 100 ms, so at 60 ms it is still open.
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.admit().is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.admit().is_some());
    }

    #[test]
    fn limits_fail_fast_and_release() {
        let l = Arc::new(Limits::new(&cfg()));
        let a = l.acquire(Limit::Connections).unwrap();
        let _b = l.acquire(Limit::Connections).unwrap();
        assert!(l.acquire(Limit::Connections).is_none());
        drop(a);
        assert!(l.acquire(Limit::Connections).is_some());
        assert_eq!(l.current(Limit::Connections), 1);
    }
}
