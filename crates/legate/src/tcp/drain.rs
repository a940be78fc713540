//! Telling a worker's tunnels that legate drains. Each carrying task registers a small
//! control block in its worker's list (thread-local: a task never leaves its worker); at
//! drain the worker marks and wakes every live one, and each tunnel then closes once idle
//! (see `copy::DRAIN_IDLE`). Costs a 64-byte block per tunnel and nothing per byte.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Waker;

#[derive(Default)]
pub struct TunnelCtl {
    draining: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl TunnelCtl {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Remembers the task to wake; a task's waker does not change, so once is enough.
    pub fn set_waker(&self, waker: &Waker) {
        if let Ok(mut w) = self.waker.lock() {
            *w = Some(waker.clone());
        }
    }
}

thread_local! {
    static TUNNELS: RefCell<Vec<Weak<TunnelCtl>>> = const { RefCell::new(Vec::new()) };
}

/// A new tunnel's control block, listed on this worker.
pub fn register() -> Arc<TunnelCtl> {
    let ctl = Arc::new(TunnelCtl::default());
    TUNNELS.with(|t| {
        let mut t = t.borrow_mut();
        // Forget closed tunnels now and then, so the list follows the live ones.
        if t.len() >= 64 && t.len().is_power_of_two() {
            t.retain(|w| w.strong_count() > 0);
        }
        t.push(Arc::downgrade(&ctl));
    });
    ctl
}

/// Marks and wakes every live tunnel of this worker; returns how many there were.
pub fn drain_all() -> usize {
    TUNNELS.with(|t| {
        let live: Vec<Arc<TunnelCtl>> = t
            .borrow_mut()
            .drain(..)
            .filter_map(|w| w.upgrade())
            .collect();
        for ctl in &live {
            ctl.draining.store(true, Ordering::Relaxed);
            let waker = ctl.waker.lock().ok().and_then(|mut w| w.take());
            if let Some(w) = waker {
                w.wake();
            }
        }
        live.len()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn drain_marks_live_tunnels_only() {
        let a = super::register();
        let b = super::register();
        drop(b);
        assert_eq!(super::drain_all(), 1);
        assert!(a.is_draining());
        assert_eq!(super::drain_all(), 0, "the list is emptied by a drain");
    }
}
