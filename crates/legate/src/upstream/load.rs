//! Per-endpoint load signals for balancing: requests in flight and a peak-EWMA of latency
//! (Linkerd's cost model: a slow response raises the estimate at once, fast ones lower it
//! gradually with a time-based decay).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How fast the latency estimate forgets: after `DECAY` the old value weighs 1/e.
const DECAY: Duration = Duration::from_secs(10);
/// A new endpoint starts at this latency so it is neither shunned nor flooded.
const DEFAULT_RTT: Duration = Duration::from_millis(1);

#[derive(Debug)]
pub struct Load {
    inflight: AtomicU32,
    ewma: Mutex<(f64, Instant)>,
    /// Failures since the last success: an endpoint failing fast (refused connections) must
    /// look expensive, not cheap.
    failing: AtomicU32,
}

impl Default for Load {
    fn default() -> Self {
        Self {
            inflight: AtomicU32::new(0),
            ewma: Mutex::new((DEFAULT_RTT.as_secs_f64(), Instant::now())),
            failing: AtomicU32::new(0),
        }
    }
}

/// Counts one request in flight on an endpoint for as long as it lives.
pub struct InFlight<'a>(&'a Load);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Load {
    pub fn start(&self) -> InFlight<'_> {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn observe(&self, rtt: Duration, now: Instant) {
        let sample = rtt.as_secs_f64();
        if let Ok(mut e) = self.ewma.lock() {
            let (cur, at) = *e;
            let next = if sample > cur {
                sample
            } else {
                let w = (-(now.saturating_duration_since(at).as_secs_f64()) / DECAY.as_secs_f64())
                    .exp();
                cur * w + sample * (1.0 - w)
            };
            *e = (next, now);
        }
    }

    /// Seconds of latency the estimate currently predicts.
    pub fn ewma(&self) -> f64 {
        self.ewma
            .lock()
            .map(|e| e.0)
            .unwrap_or(DEFAULT_RTT.as_secs_f64())
    }

    /// Failures since the last success.
    pub fn failing(&self) -> u32 {
        self.failing.load(Ordering::Relaxed)
    }

    pub fn outcome(&self, failed: bool) {
        if failed {
            self.failing.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failing.store(0, Ordering::Relaxed);
        }
    }

    /// The p2c-EWMA cost: predicted latency × (requests in flight + 1) × (failures in a row + 1).
    pub fn cost(&self) -> f64 {
        let failing = self.failing.load(Ordering::Relaxed).min(1000);
        self.ewma() * f64::from(self.inflight() + 1) * f64::from(failing + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rises_at_once_and_costs_grow_with_inflight() {
        let l = Load::default();
        l.observe(Duration::from_millis(200), Instant::now());
        assert!((l.ewma() - 0.2).abs() < 1e-9);
        l.observe(Duration::from_millis(1), Instant::now());
        assert!(
            l.ewma() > 0.19,
            "a fast sample right after does not erase the peak"
        );
        let c0 = l.cost();
        let _g = l.start();
        assert!(l.cost() > c0 * 1.9);
    }
}
