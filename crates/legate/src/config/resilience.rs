//! Config for the resilience policies: retries with budgets, rate limits, load balancing,
//! circuit breaking, outlier ejection and active health checks. Defaults are chosen to be safe
//! for a sidecar: nothing here can turn a healthy upstream away, and retries can never grow
//! into a storm.

use super::duration::ConfigDuration;
use super::size::ByteSize;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// `retry:` on a route.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Total tries, the first one included.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Which outcomes are retried.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    /// Bound on each try; unset means only the route's `timeout` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<ConfigDuration>,
    #[serde(default)]
    pub backoff: BackoffConfig,
    #[serde(default)]
    pub budget: BudgetConfig,
    /// Retry POST, PATCH and other non-idempotent methods too.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Request bodies up to this size are kept for replay; larger ones stream and are not retried.
    #[serde(default = "default_max_replay_body")]
    pub max_replay_body: ByteSize,
    /// A `Retry-After` longer than this is not waited for: the response goes to the client.
    #[serde(default = "default_retry_after_max")]
    pub retry_after_max: ConfigDuration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: default_attempts(),
            on: default_retry_on(),
            per_try_timeout: None,
            backoff: BackoffConfig::default(),
            budget: BudgetConfig::default(),
            retry_non_idempotent: false,
            max_replay_body: default_max_replay_body(),
            retry_after_max: default_retry_after_max(),
        }
    }
}

fn default_attempts() -> u32 {
    3
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::ConnectFailure,
        RetryOn::Reset,
        RetryOn::RefusedStream,
        RetryOn::GatewayError,
    ]
}
fn default_max_replay_body() -> ByteSize {
    ByteSize(64 * 1024)
}
fn default_retry_after_max() -> ConfigDuration {
    ConfigDuration::from_secs(2)
}

/// One retry condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// Connecting failed: refused, unreachable, connect timeout, TLS handshake.
    ConnectFailure,
    /// The upstream closed or reset the connection before a response.
    Reset,
    /// HTTP/2 REFUSED_STREAM: the request was not processed.
    RefusedStream,
    /// The try exceeded `per_try_timeout`.
    Timeout,
    /// 502, 503, 504.
    GatewayError,
    /// Any 5xx.
    Server5xx,
    /// 409.
    Retriable4xx,
    /// 429.
    TooManyRequests,
    Status(u16),
}

impl RetryOn {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "connect-failure" => RetryOn::ConnectFailure,
            "reset" => RetryOn::Reset,
            "refused-stream" => RetryOn::RefusedStream,
            "timeout" => RetryOn::Timeout,
            "gateway-error" => RetryOn::GatewayError,
            "5xx" => RetryOn::Server5xx,
            "retriable-4xx" => RetryOn::Retriable4xx,
            "429" => RetryOn::TooManyRequests,
            other => match other.parse::<u16>() {
                Ok(code) if (100..600).contains(&code) => RetryOn::Status(code),
                _ => {
                    return Err(format!(
                        "unknown retry condition `{other}`: use connect-failure, reset, refused-stream, timeout, gateway-error, 5xx, retriable-4xx, 429 or a status code"
                    ))
                }
            },
        })
    }

    pub fn name(&self) -> String {
        match self {
            RetryOn::ConnectFailure => "connect-failure".into(),
            RetryOn::Reset => "reset".into(),
            RetryOn::RefusedStream => "refused-stream".into(),
            RetryOn::Timeout => "timeout".into(),
            RetryOn::GatewayError => "gateway-error".into(),
            RetryOn::Server5xx => "5xx".into(),
            RetryOn::Retriable4xx => "retriable-4xx".into(),
            RetryOn::TooManyRequests => "429".into(),
            RetryOn::Status(c) => c.to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RetryOn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a retry condition such as gateway-error, or a status code")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RetryOn, E> {
                RetryOn::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RetryOn, E> {
                RetryOn::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RetryOn, E> {
                RetryOn::parse(&v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RetryOn::Status(c) => s.serialize_u16(*c),
            other => s.serialize_str(&other.name()),
        }
    }
}

/// Exponential backoff with full jitter: try n waits a random time in [0, min(max, base·2ⁿ)].
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    #[serde(default = "default_backoff_base")]
    pub base: ConfigDuration,
    #[serde(default = "default_backoff_max")]
    pub max: ConfigDuration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base: default_backoff_base(),
            max: default_backoff_max(),
        }
    }
}
fn default_backoff_base() -> ConfigDuration {
    ConfigDuration::from_millis(25)
}
fn default_backoff_max() -> ConfigDuration {
    ConfigDuration::from_millis(250)
}

/// Retries allowed = `ratio` × requests over the last 10 s + `min_per_second` × 10.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    #[serde(default = "default_budget_ratio")]
    pub ratio: f64,
    #[serde(default = "default_budget_floor")]
    pub min_per_second: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ratio: default_budget_ratio(),
            min_per_second: default_budget_floor(),
        }
    }
}
fn default_budget_ratio() -> f64 {
    0.2
}
fn default_budget_floor() -> u32 {
    10
}

/// `rate_limit:` on a route: a token bucket refilled at `rate`, holding at most `burst`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub rate: Rate,
    /// Bucket size; defaults to one second's worth of `rate` (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl RateLimitConfig {
    pub fn burst(&self) -> u32 {
        self.burst
            .unwrap_or_else(|| (self.rate.per_second().ceil() as u32).max(1))
    }
}

/// `100/s`, `6000/m`, `10/h`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub count: f64,
    pub per: std::time::Duration,
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        self.count / self.per.as_secs_f64()
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let (n, unit) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("invalid rate `{s}`: write it like 100/s, 6000/m or 10/h"))?;
        let count: f64 = n
            .trim()
            .parse()
            .map_err(|_| format!("invalid rate `{s}`: `{n}` is not a number"))?;
        let per = match unit.trim() {
            "s" => std::time::Duration::from_secs(1),
            "m" => std::time::Duration::from_secs(60),
            "h" => std::time::Duration::from_secs(3600),
            other => {
                return Err(format!(
                    "invalid rate unit `{other}` in `{s}`: use s, m or h"
                ))
            }
        };
        if !(count > 0.0 && count.is_finite()) {
            return Err(format!("rate `{s}` must be greater than zero"));
        }
        Ok(Self { count, per })
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Rate::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let unit = match self.per.as_secs() {
            60 => "m",
            3600 => "h",
            _ => "s",
        };
        s.collect_str(&format_args!("{}/{unit}", self.count))
    }
}

/// `balance:` on an upstream.
#[derive(
    Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Power of two choices over peak-EWMA latency × (in-flight + 1), like Linkerd.
    #[default]
    P2cEwma,
    /// Power of two choices over in-flight requests.
    LeastRequest,
    RoundRobin,
    Random,
}

/// `circuit_breaker:` on an upstream. Without the section, the thresholds apply with these
/// defaults and the trip state machine is off; with it (even `{}`), both are on.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Connections to the upstream open at once (all workers). A request over it waits for one.
    #[serde(default = "default_1024")]
    pub max_connections: u32,
    /// Requests waiting for a connection (a new one, or one another request gives back); over
    /// it a request fails at once with 503 `overflow`.
    #[serde(default = "default_65536")]
    pub max_pending_requests: u32,
    /// Requests in flight to the upstream; over it a request fails at once with 503 `overflow`.
    #[serde(default = "default_65536")]
    pub max_requests: u32,
    /// Retries in flight at once across the upstream.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    #[serde(default = "default_failure_ratio")]
    pub failure_ratio: f64,
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    #[serde(default = "default_window")]
    pub window: ConfigDuration,
    /// How long an open circuit fails fast; doubles with each consecutive trip.
    #[serde(default = "default_open_for")]
    pub open_for: ConfigDuration,
    /// The cap on `open_for` growth.
    #[serde(default = "default_max_open_for")]
    pub max_open_for: ConfigDuration,
    /// Requests let through while half-open; all must succeed to close.
    #[serde(default = "default_probes")]
    pub probes: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            max_connections: default_1024(),
            max_pending_requests: default_65536(),
            max_requests: default_65536(),
            max_retries: default_max_retries(),
            failure_ratio: default_failure_ratio(),
            min_requests: default_min_requests(),
            window: default_window(),
            open_for: default_open_for(),
            max_open_for: default_max_open_for(),
            probes: default_probes(),
        }
    }
}
fn default_1024() -> u32 {
    1024
}
/// High enough that a burst to a healthy upstream waits for connections instead of failing
/// (Envoy's 1024 sheds a burst of 1,500): the limits shed load where a user sets them low.
fn default_65536() -> u32 {
    65536
}
fn default_max_retries() -> u32 {
    3
}
fn default_failure_ratio() -> f64 {
    0.5
}
fn default_min_requests() -> u32 {
    20
}
fn default_window() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}
fn default_open_for() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}
fn default_max_open_for() -> ConfigDuration {
    ConfigDuration::from_secs(60)
}
fn default_probes() -> u32 {
    3
}

/// `outlier_detection:` on an upstream: passive ejection of endpoints that keep failing.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// Connections refused or timed out in a row that eject an endpoint: nobody listening is
    /// a clearer signal than a 503, so it acts sooner.
    #[serde(default = "default_consecutive_connect_failures")]
    pub consecutive_connect_failures: u32,
    #[serde(default = "default_base_ejection")]
    pub base_ejection: ConfigDuration,
    #[serde(default = "default_max_ejection")]
    pub max_ejection: ConfigDuration,
    #[serde(default = "default_max_ejected_percent")]
    pub max_ejected_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: default_consecutive_failures(),
            consecutive_connect_failures: default_consecutive_connect_failures(),
            base_ejection: default_base_ejection(),
            max_ejection: default_max_ejection(),
            max_ejected_percent: default_max_ejected_percent(),
        }
    }
}
fn default_true() -> bool {
    true
}
fn default_consecutive_failures() -> u32 {
    5
}
fn default_consecutive_connect_failures() -> u32 {
    3
}
fn default_base_ejection() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}
fn default_max_ejection() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}
fn default_max_ejected_percent() -> u32 {
    50
}

/// `health_check:` on an upstream. Exactly one of `http` and `tcp`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    #[serde(default = "default_hc_interval")]
    pub interval: ConfigDuration,
    #[serde(default = "default_hc_timeout")]
    pub timeout: ConfigDuration,
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub path: String,
    /// Accepted statuses: `200`, `200-399`, or a list like `[200, 204]`.
    #[serde(default = "default_expect")]
    pub expect: StatusRange,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {}

fn default_hc_interval() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}
fn default_hc_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(1)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_expect() -> StatusRange {
    StatusRange {
        low: 200,
        high: 399,
    }
}

/// `200-399` or `200`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub low: u16,
    pub high: u16,
}

impl StatusRange {
    pub fn contains(&self, code: u16) -> bool {
        (self.low..=self.high).contains(&code)
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid status range `{s}`: write 200 or 200-399");
        let (lo, hi) = match s.trim().split_once('-') {
            Some((a, b)) => (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            ),
            None => {
                let c = s.trim().parse().map_err(|_| bad())?;
                (c, c)
            }
        };
        if !(100..600).contains(&lo) || !(100..600).contains(&hi) || lo > hi {
            return Err(bad());
        }
        Ok(Self { low: lo, high: hi })
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = StatusRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status or a range like 200-399")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StatusRange, E> {
                StatusRange::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StatusRange, E> {
                StatusRange::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StatusRange, E> {
                StatusRange::parse(&v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for StatusRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.low == self.high {
            s.serialize_u16(self.low)
        } else {
            s.collect_str(&format_args!("{}-{}", self.low, self.high))
        }
    }
}

/// An `endpoints:` entry: `"host:port"` or `{ address: "host:port", weight: 3 }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointEntry {
    pub address: String,
    pub weight: u32,
}

impl From<String> for EndpointEntry {
    fn from(address: String) -> Self {
        Self { address, weight: 1 }
    }
}

impl<'de> Deserialize<'de> for EndpointEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            address: String,
            #[serde(default = "one")]
            weight: u32,
        }
        fn one() -> u32 {
            1
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Plain(String),
            Full(Full),
        }
        match Either::deserialize(d) {
            Ok(Either::Plain(address)) => Ok(Self { address, weight: 1 }),
            Ok(Either::Full(f)) => Ok(Self {
                address: f.address,
                weight: f.weight,
            }),
            Err(_) => Err(serde::de::Error::custom(
                "an endpoint is \"host:port\" or { address: \"host:port\", weight: N }",
            )),
        }
    }
}

impl Serialize for EndpointEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if self.weight == 1 {
            return s.serialize_str(&self.address);
        }
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("address", &self.address)?;
        m.serialize_entry("weight", &self.weight)?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates_ranges_and_conditions() {
        assert_eq!(Rate::parse("100/s").unwrap().per_second(), 100.0);
        assert_eq!(Rate::parse("60/m").unwrap().per_second(), 1.0);
        assert!(Rate::parse("100").is_err());
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("5/d").is_err());
        assert_eq!(
            StatusRange::parse("200-399").unwrap(),
            StatusRange {
                low: 200,
                high: 399
            }
        );
        assert!(StatusRange::parse("399-200").is_err());
        assert_eq!(RetryOn::parse("409").unwrap(), RetryOn::Status(409));
        assert!(RetryOn::parse("sometimes").is_err());
    }
}
