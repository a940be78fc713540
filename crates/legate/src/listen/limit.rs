//! Counting client connections: per worker for the drain (`ConnTracker`), and per listener
//! across workers for `max_connections` (`ConnLimit`).

use crate::lifecycle::State;
use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Counts a worker's open client connections so the drain knows when it is done.
#[derive(Default)]
pub struct ConnTracker {
    open: AtomicUsize,
    idle: Notify,
}

impl ConnTracker {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Resolves once no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let notified = self.idle.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One open connection, for as long as it is held.
pub struct Tracked(Arc<ConnTracker>);

impl Tracked {
    pub fn new(t: &Arc<ConnTracker>) -> Self {
        t.open.fetch_add(1, Ordering::SeqCst);
        Self(t.clone())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A listener's `max_connections`, shared by its workers. While the listener is full, the
/// process reports not ready.
pub struct ConnLimit {
    pub max: usize,
    open: AtomicUsize,
    state: Arc<State>,
    /// `legate_listener_connections_refused_total{reason="max-connections"}`.
    pub refused: Counter,
    /// The refusal is logged at most once a second for the listener, all workers together.
    pub log: crate::telemetry::throttle::Throttle,
}

impl ConnLimit {
    pub fn new(max: usize, state: Arc<State>, refused: Counter) -> Self {
        Self {
            max: max.max(1),
            open: AtomicUsize::new(0),
            state,
            refused,
            log: crate::telemetry::throttle::Throttle::default(),
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnSlot> {
        let mut cur = self.open.load(Ordering::SeqCst);
        loop {
            if cur >= self.max {
                return None;
            }
            match self
                .open
                .compare_exchange(cur, cur + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if cur + 1 == self.max {
            self.state.set_saturated(true);
        }
        Some(ConnSlot(self.clone()))
    }
}

/// A place under a listener's `max_connections`, given back on drop.
pub struct ConnSlot(Arc<ConnLimit>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == self.0.max {
            self.0.state.set_saturated(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturation_follows_the_count() {
        let state = Arc::new(State::new());
        let limit = Arc::new(ConnLimit::new(2, state.clone(), Counter::default()));
        let a = limit.try_acquire().unwrap();
        assert_eq!(state.saturated(), 0);
        let b = limit.try_acquire().unwrap();
        assert_eq!(state.saturated(), 1);
        assert!(limit.try_acquire().is_none());
        drop(a);
        assert_eq!(state.saturated(), 0);
        let _c = limit.try_acquire().unwrap();
        assert_eq!(state.saturated(), 1);
        drop(b);
        assert_eq!(limit.open(), 1);
    }
}
