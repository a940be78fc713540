//! Passive outlier detection: an endpoint that fails `consecutive_failures` times in a row
//! (gateway errors, connect failures, resets, timeouts) leaves the balancer for
//! `base_ejection × times_ejected` (capped at `max_ejection`, ±10% jitter), never taking more
//! than `max_ejected_percent` of the upstream's endpoints out at once.

use crate::config::resilience::OutlierConfig;
use crate::http::request_id;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct State {
    consecutive: u32,
    /// Connections refused or timed out in a row: an unambiguous "nobody is there".
    consecutive_connect: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
    last_ejection_end: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct EndpointOutlier {
    state: Mutex<State>,
    /// Set while there is anything for `success` to reset, so the common case takes no lock.
    dirty: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone)]
pub struct OutlierPolicy {
    pub consecutive_failures: u32,
    pub consecutive_connect_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejected_percent: u32,
}

impl OutlierPolicy {
    pub fn from_config(c: &OutlierConfig) -> Option<Self> {
        c.enabled.then(|| Self {
            consecutive_failures: c.consecutive_failures,
            consecutive_connect_failures: c.consecutive_connect_failures,
            base_ejection: c.base_ejection.get(),
            max_ejection: c.max_ejection.get(),
            max_ejected_percent: c.max_ejected_percent,
        })
    }

    /// How many of `total` endpoints may be ejected at once.
    pub fn max_ejected(&self, total: usize) -> usize {
        total * self.max_ejected_percent as usize / 100
    }
}

/// What recording an outcome did.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    Nothing,
    Ejected { for_: Duration, times: u32 },
}

impl EndpointOutlier {
    pub fn is_ejected(&self, now: Instant) -> bool {
        if !self.dirty.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        self.state
            .lock()
            .map(|s| s.ejected_until.is_some_and(|t| t > now))
            .unwrap_or(false)
    }

    pub fn success(&self) {
        if !self.dirty.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if let Ok(mut s) = self.state.lock() {
            s.consecutive = 0;
            s.consecutive_connect = 0;
            // A long clean run after the last ejection forgets past ejections.
            if let (Some(end), None) = (s.last_ejection_end, s.ejected_until) {
                if end.elapsed() > Duration::from_secs(300) {
                    s.times_ejected = 0;
                    s.last_ejection_end = None;
                }
            }
            if s.times_ejected == 0 && s.ejected_until.is_none() {
                self.dirty
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Counts a failure; ejects when the threshold is reached and `may_eject` allows it.
    /// `may_eject` looks at the other endpoints, so it runs without this endpoint's lock held.
    pub fn failure(
        &self,
        policy: &OutlierPolicy,
        connect: bool,
        may_eject: impl FnOnce() -> bool,
    ) -> Recorded {
        {
            let Ok(mut s) = self.state.lock() else {
                return Recorded::Nothing;
            };
            let now = Instant::now();
            if s.ejected_until.is_some_and(|t| t > now) {
                return Recorded::Nothing;
            }
            if let Some(t) = s.ejected_until.take() {
                s.last_ejection_end = Some(t);
            }
            self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
            s.consecutive += 1;
            s.consecutive_connect = if connect {
                s.consecutive_connect + 1
            } else {
                0
            };
            if s.consecutive < policy.consecutive_failures
                && s.consecutive_connect < policy.consecutive_connect_failures
            {
                return Recorded::Nothing;
            }
        }
        if !may_eject() {
            return Recorded::Nothing;
        }
        let Ok(mut s) = self.state.lock() else {
            return Recorded::Nothing;
        };
        let now = Instant::now();
        if s.ejected_until.is_some_and(|t| t > now) {
            return Recorded::Nothing;
        }
        s.times_ejected += 1;
        s.consecutive = 0;
        s.consecutive_connect = 0;
        let base = policy
            .base_ejection
            .saturating_mul(s.times_ejected)
            .min(policy.max_ejection);
        // ±10% jitter so endpoints ejected together do not all return in the same instant.
        let unit = (request_id::next() >> 11) as f64 / (1u64 << 53) as f64;
        let for_ = base.mul_f64(0.9 + 0.2 * unit).min(policy.max_ejection);
        s.ejected_until = Some(now + for_);
        Recorded::Ejected {
            for_,
            times: s.times_ejected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: 3,
            consecutive_connect_failures: 2,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn ejects_after_consecutive_failures_growing_and_capped() {
        let o = EndpointOutlier::default();
        let p = policy();
        assert_eq!(o.failure(&p, false, || true), Recorded::Nothing);
        o.success();
        assert_eq!(o.failure(&p, false, || true), Recorded::Nothing);
        assert_eq!(o.failure(&p, false, || true), Recorded::Nothing);
        let Recorded::Ejected { for_, times } = o.failure(&p, false, || true) else {
            panic!("ejected")
        };
        assert_eq!(times, 1);
        assert!(
            for_ >= Duration::from_secs(9) && for_ <= Duration::from_secs(11),
            "{for_:?}"
        );
        assert!(o.is_ejected(Instant::now()));
        // Pretend the ejection ended, fail again: the second ejection is longer, the third capped.
        o.state.lock().unwrap().ejected_until = Some(Instant::now());
        for _ in 0..2 {
            o.failure(&p, false, || true);
        }
        let Recorded::Ejected { for_, times } = o.failure(&p, false, || true) else {
            panic!("ejected")
        };
        assert_eq!(times, 2);
        assert!(
            for_ >= Duration::from_secs(18) && for_ <= Duration::from_secs(22),
            "{for_:?}"
        );
        o.state.lock().unwrap().ejected_until = Some(Instant::now());
        for _ in 0..2 {
            o.failure(&p, false, || true);
        }
        let Recorded::Ejected { for_, .. } = o.failure(&p, false, || true) else {
            panic!("ejected")
        };
        assert!(for_ <= Duration::from_secs(25), "{for_:?}");
    }

    #[test]
    fn refused_connections_eject_sooner() {
        let o = EndpointOutlier::default();
        let p = policy();
        assert_eq!(o.failure(&p, true, || true), Recorded::Nothing);
        assert!(matches!(
            o.failure(&p, true, || true),
            Recorded::Ejected { .. }
        ));
        let o = EndpointOutlier::default();
        o.failure(&p, true, || true);
        assert_eq!(
            o.failure(&p, false, || true),
            Recorded::Nothing,
            "a 503 breaks the connect streak"
        );
    }

    #[test]
    fn the_cap_on_ejected_endpoints_holds() {
        let o = EndpointOutlier::default();
        let p = policy();
        for _ in 0..10 {
            assert_eq!(o.failure(&p, false, || false), Recorded::Nothing);
        }
        assert!(!o.is_ejected(Instant::now()));
        assert_eq!(p.max_ejected(2), 1);
        assert_eq!(p.max_ejected(1), 0, "the only endpoint is never ejected");
    }
}
