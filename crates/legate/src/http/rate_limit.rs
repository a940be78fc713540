//! A route's local rate limit: a token bucket refilled continuously at `rate`, holding at most
//! `burst` tokens, shared by every worker. Over the limit the client gets 429 with
//! `Retry-After` (whole seconds until a token is back) and `legate-error: rate-limited`.

use crate::config::resilience::RateLimitConfig;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(c: &RateLimitConfig) -> Self {
        let burst = f64::from(c.burst());
        Self {
            per_second: c.rate.per_second(),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes a token, or returns how long until one is available.
    pub fn try_take(&self) -> Result<(), Duration> {
        let Ok(mut s) = self.state.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let (tokens, at) = *s;
        let tokens = (tokens + now.saturating_duration_since(at).as_secs_f64() * self.per_second)
            .min(self.burst);
        if tokens >= 1.0 {
            *s = (tokens - 1.0, now);
            Ok(())
        } else {
            *s = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::resilience::Rate;

    #[test]
    fn admits_burst_then_rate() {
        let b = TokenBucket::new(&RateLimitConfig {
            rate: Rate::parse("100/s").unwrap(),
            burst: Some(20),
        });
        let start = Instant::now();
        let mut admitted = 0u32;
        while start.elapsed() < Duration::from_millis(200) {
            if b.try_take().is_ok() {
                admitted += 1;
            }
        }
        let expected = 20.0 + 100.0 * start.elapsed().as_secs_f64();
        assert!(
            (f64::from(admitted) - expected).abs() <= expected * 0.1 + 2.0,
            "{admitted} vs {expected}"
        );
        let wait = b.try_take().err().unwrap_or_default();
        assert!(wait <= Duration::from_millis(10));
    }
}
