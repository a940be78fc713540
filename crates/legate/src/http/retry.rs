//! Retries: which outcomes are retried, how long to wait between tries, and the budget that
//! keeps retries from multiplying load on a struggling upstream.
//!
//! Ownership of a retried request: the head (method, URI, headers) is kept as a template and
//! copied for every try; a body is replayed only if it was read whole into `max_replay_body`
//! before the first try (see `body::buffer`). A larger body streams to the first try and that
//! request is never retried — legate cannot send bytes it no longer has.

use crate::config::resilience::{RetryConfig, RetryOn};
use crate::upstream::error::FailureKind;
use crate::window::Window;
use http::{HeaderMap, Method, StatusCode};
use std::time::{Duration, Instant, SystemTime};

/// What one try came back with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(StatusCode),
    Failed(FailureKind),
}

impl Outcome {
    /// Does this outcome count against the endpoint (outlier detection) and the upstream
    /// (breaker)? Gateway errors and connection-level failures do; legate's own refusals and
    /// every other status do not.
    pub fn is_failure(self) -> bool {
        match self {
            Outcome::Status(s) => matches!(s.as_u16(), 502..=504),
            Outcome::Failed(FailureKind::Local) => false,
            Outcome::Failed(_) => true,
        }
    }
}

/// The compiled `retry:` of a route.
#[derive(Debug)]
pub struct RetryPolicy {
    pub attempts: u32,
    on: Vec<RetryOn>,
    pub per_try_timeout: Option<Duration>,
    base: Duration,
    max: Duration,
    pub retry_non_idempotent: bool,
    pub max_replay_body: usize,
    pub retry_after_max: Duration,
    pub budget: Budget,
}

impl RetryPolicy {
    pub fn new(c: &RetryConfig) -> Self {
        Self {
            attempts: c.attempts.max(1),
            on: c.on.clone(),
            per_try_timeout: c.per_try_timeout.map(|d| d.get()),
            base: c.backoff.base.get(),
            max: c.backoff.max.get(),
            retry_non_idempotent: c.retry_non_idempotent,
            max_replay_body: usize::try_from(c.max_replay_body.0).unwrap_or(usize::MAX),
            retry_after_max: c.retry_after_max.get(),
            budget: Budget::new(c.budget.ratio, c.budget.min_per_second),
        }
    }

    /// Idempotent methods (RFC 9110 §9.2.2) unless `retry_non_idempotent`.
    pub fn allows_method(&self, m: &Method) -> bool {
        self.retry_non_idempotent
            || matches!(
                *m,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::PUT
                    | Method::DELETE
                    | Method::TRACE
            )
    }

    /// The condition that makes `outcome` retriable, if any (its name labels the metric).
    pub fn condition(&self, outcome: Outcome) -> Option<&'static str> {
        self.on.iter().find_map(|c| {
            let hit = match (c, outcome) {
                (RetryOn::ConnectFailure, Outcome::Failed(FailureKind::Connect)) => true,
                (RetryOn::Reset, Outcome::Failed(FailureKind::Reset)) => true,
                (RetryOn::RefusedStream, Outcome::Failed(FailureKind::RefusedStream)) => true,
                (RetryOn::Timeout, Outcome::Failed(FailureKind::Timeout)) => true,
                (RetryOn::GatewayError, Outcome::Status(s)) => matches!(s.as_u16(), 502..=504),
                (RetryOn::Server5xx, Outcome::Status(s)) => s.is_server_error(),
                (RetryOn::Retriable4xx, Outcome::Status(s)) => s.as_u16() == 409,
                (RetryOn::TooManyRequests, Outcome::Status(s)) => s.as_u16() == 429,
                (RetryOn::Status(code), Outcome::Status(s)) => s.as_u16() == *code,
                _ => false,
            };
            hit.then(|| condition_name(c))
        })
    }

    /// Full jitter: a uniformly random wait in [0, min(max, base · 2^(retry-1))].
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max);
        let unit = (super::request_id::next() >> 11) as f64 / (1u64 << 53) as f64;
        cap.mul_f64(unit)
    }
}

fn condition_name(c: &RetryOn) -> &'static str {
    match c {
        RetryOn::ConnectFailure => "connect-failure",
        RetryOn::Reset => "reset",
        RetryOn::RefusedStream => "refused-stream",
        RetryOn::Timeout => "timeout",
        RetryOn::GatewayError => "gateway-error",
        RetryOn::Server5xx => "5xx",
        RetryOn::Retriable4xx => "retriable-4xx",
        RetryOn::TooManyRequests => "429",
        RetryOn::Status(_) => "status",
    }
}

/// `Retry-After` as seconds or an HTTP date, from now.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(v)?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only format senders may generate.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: i64 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as i64
        + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<i64> = parts[4]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (H. Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2];
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Retries allowed over the last 10 s: `ratio` × requests + `min_per_second` × 10 — the
/// Envoy/Linkerd budget, so a dead upstream sees at most (1 + ratio)× the load, not
/// `attempts`× the load. Requests are the window's events, retries its marks.
#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    floor: u32,
    window: Window,
}

/// The budget's span in seconds.
const SPAN_SECS: u32 = 10;

impl Budget {
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        Self {
            ratio,
            floor: min_per_second,
            window: Window::new(Duration::from_secs(u64::from(SPAN_SECS))),
        }
    }

    /// Counts one original request that arrived at `now`.
    pub fn deposit(&self, now: Instant) {
        self.window.add(now, false);
    }

    /// Takes one retry from the budget, or says no.
    pub fn try_withdraw(&self) -> bool {
        let now = Instant::now();
        let t = self.window.totals(now);
        let allowed = self.ratio * t.events as f64 + f64::from(self.floor) * f64::from(SPAN_SECS);
        if (t.marked as f64) < allowed {
            self.window.mark(now);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::resilience::RetryConfig;

    #[test]
    fn conditions_match_their_outcomes() {
        let c = RetryConfig {
            on: vec![
                RetryOn::GatewayError,
                RetryOn::Timeout,
                RetryOn::Status(409),
            ],
            ..Default::default()
        };
        let p = RetryPolicy::new(&c);
        assert_eq!(
            p.condition(Outcome::Status(StatusCode::BAD_GATEWAY)),
            Some("gateway-error")
        );
        assert_eq!(
            p.condition(Outcome::Status(StatusCode::INTERNAL_SERVER_ERROR)),
            None
        );
        assert_eq!(
            p.condition(Outcome::Status(StatusCode::CONFLICT)),
            Some("status")
        );
        assert_eq!(
            p.condition(Outcome::Failed(FailureKind::Timeout)),
            Some("timeout")
        );
        assert_eq!(p.condition(Outcome::Failed(FailureKind::Connect)), None);
        assert!(p.allows_method(&Method::PUT));
        assert!(!p.allows_method(&Method::POST));
    }

    #[test]
    fn backoff_stays_within_full_jitter_bounds() {
        let p = RetryPolicy::new(&RetryConfig::default()); // base 25ms, max 250ms
        for retry in 1..8 {
            let cap =
                Duration::from_millis(25 * (1 << (retry - 1))).min(Duration::from_millis(250));
            let mut seen_high = false;
            for _ in 0..2000 {
                let d = p.backoff(retry);
                assert!(d <= cap, "retry {retry}: {d:?} > {cap:?}");
                seen_high |= d > cap.mul_f64(0.9);
            }
            assert!(seen_high, "jitter spreads over the whole range");
        }
    }

    #[test]
    fn budget_caps_retries_at_ratio_plus_floor() {
        let b = Budget::new(0.2, 1);
        for _ in 0..1000 {
            b.deposit(Instant::now());
        }
        let granted = (0..1000).filter(|_| b.try_withdraw()).count();
        assert_eq!(granted, 210, "0.2 × 1000 requests + 1/s × 10 s");
    }

    #[test]
    fn parses_retry_after() {
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            784_111_777
        );
        h.insert(
            http::header::RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after(&h),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert!(parse_http_date("yesterday").is_none());
    }
}
