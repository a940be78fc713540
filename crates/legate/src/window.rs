//! A sliding window of two counts (events, and the events that were marked: retries among
//! requests, failures among tries), kept in ten buckets that age out as time moves on.
//!
//! Every request adds to a window on the success path (the retry budget, the circuit breaker),
//! so buckets are atomics and adding takes no lock. Two threads moving a bucket into a new slot
//! at the same moment may lose a count or two of that slot, which a budget or a failure ratio
//! can afford.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BUCKETS: usize = 10;
/// A bucket that has never been used.
const UNUSED: u64 = u64::MAX;

#[derive(Debug)]
pub struct Window {
    width: Duration,
    start: Instant,
    buckets: [Bucket; BUCKETS],
}

#[derive(Debug)]
struct Bucket {
    /// Which slot (`width`-long span since `start`) the counts belong to.
    slot: AtomicU64,
    events: AtomicU64,
    marked: AtomicU64,
}

/// What a window holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub events: u64,
    pub marked: u64,
}

impl Window {
    /// A window `span` long (ten buckets of `span / 10`, at least 1 ms each).
    pub fn new(span: Duration) -> Self {
        Self {
            width: (span / BUCKETS as u32).max(Duration::from_millis(1)),
            start: Instant::now(),
            buckets: std::array::from_fn(|_| Bucket {
                slot: AtomicU64::new(UNUSED),
                events: AtomicU64::new(0),
                marked: AtomicU64::new(0),
            }),
        }
    }

    fn slot(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.start).as_nanos() / self.width.as_nanos()) as u64
    }

    /// The bucket for `slot`, emptied first if it still holds an older slot.
    fn bucket(&self, slot: u64) -> &Bucket {
        let b = &self.buckets[(slot % BUCKETS as u64) as usize];
        let seen = b.slot.load(Ordering::Acquire);
        if seen != slot
            && b.slot
                .compare_exchange(seen, slot, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.events.store(0, Ordering::Relaxed);
            b.marked.store(0, Ordering::Relaxed);
        }
        b
    }

    /// Counts one event at `now`, marked or not.
    pub fn add(&self, now: Instant, marked: bool) {
        let b = self.bucket(self.slot(now));
        b.events.fetch_add(1, Ordering::Relaxed);
        if marked {
            b.marked.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one marked event that is not also an event (a retry, counted apart from the
    /// requests it is budgeted against).
    pub fn mark(&self, now: Instant) {
        self.bucket(self.slot(now))
            .marked
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn totals(&self, now: Instant) -> Totals {
        let slot = self.slot(now);
        self.buckets
            .iter()
            .filter(|b| {
                let s = b.slot.load(Ordering::Acquire);
                s != UNUSED && s + BUCKETS as u64 > slot
            })
            .fold(
                Totals {
                    events: 0,
                    marked: 0,
                },
                |t, b| Totals {
                    events: t.events + b.events.load(Ordering::Relaxed),
                    marked: t.marked + b.marked.load(Ordering::Relaxed),
                },
            )
    }

    pub fn clear(&self) {
        for b in &self.buckets {
            b.slot.store(UNUSED, Ordering::Release);
            b.events.store(0, Ordering::Relaxed);
            b.marked.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_age_out_after_the_span() {
        let w = Window::new(Duration::from_secs(10));
        let t0 = w.start;
        for i in 0..10u64 {
            w.add(t0 + Duration::from_secs(i), i % 2 == 0);
        }
        w.mark(t0 + Duration::from_secs(9));
        let now = t0 + Duration::from_millis(9_500);
        assert_eq!(
            w.totals(now),
            Totals {
                events: 10,
                marked: 6
            }
        );
        // One second later the first second has left the window.
        let later = t0 + Duration::from_millis(10_500);
        assert_eq!(w.totals(later).events, 9);
        // A new event in a reused bucket clears what it held.
        w.add(later, false);
        assert_eq!(w.totals(later).events, 10);
        assert_eq!(w.totals(t0 + Duration::from_secs(30)).events, 0);
        w.clear();
        assert_eq!(w.totals(later).events, 0);
    }
}
