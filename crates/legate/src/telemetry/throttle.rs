//! Repeated identical events (a refused connection, a dead endpoint) logged at most once per
//! interval, with how many were folded into the line: a flood of failures must not become a
//! flood of log lines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

#[derive(Debug)]
pub struct Throttle {
    interval_ms: u64,
    /// Milliseconds since the process epoch of the last line written, plus one (0: never).
    last: AtomicU64,
    folded: AtomicU64,
}

impl Throttle {
    pub fn new(interval: Duration) -> Self {
        epoch();
        Self {
            interval_ms: interval.as_millis().max(1) as u64,
            last: AtomicU64::new(0),
            folded: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: write the line now, mentioning `n` events folded since the last one.
    /// `None`: this event is folded into the next line.
    pub fn check(&self) -> Option<u64> {
        let now = epoch().elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now < last + self.interval_ms {
            self.folded.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.folded.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.folded.swap(0, Ordering::Relaxed))
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_within_the_interval() {
        let t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.check(), Some(0));
        assert_eq!(t.check(), None);
        assert_eq!(t.check(), None);
        let t2 = Throttle::new(Duration::from_millis(1));
        assert_eq!(t2.check(), Some(0));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(t2.check(), Some(0));
    }
}
