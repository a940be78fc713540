//! `legate top`: a terminal view of a running legate, built from its admin `GET /metrics`.
//!
//! Every interval the admin's OpenMetrics text is scraped and parsed; two scrapes make one
//! frame. Per upstream it shows:
//!
//! - **req/s**: the increase of `legate_http_requests_total` (every code class, summed over
//!   listeners and routes) divided by the time between the two scrapes.
//! - **err%**: 5xx responses / all responses over the interval, both from
//!   `legate_http_requests_total`. Answers legate gives itself (502 connect failure, 503 no
//!   healthy endpoint or circuit open, 504 timeout) are already counted there with their status
//!   class, so `legate_http_local_errors_total` is *not* added on top (that would count them
//!   twice). It is shown on its own in the totals as `legate-errors` (which also holds 429s of
//!   rate limits: a 4xx, not an error here). `-` when no request finished in the interval.
//! - **p50 / p99**: from the increase of each `legate_http_request_duration_seconds_bucket`
//!   between the scrapes (buckets of all the upstream's routes added up), interpolated linearly
//!   within the bucket the rank falls in, like PromQL's `histogram_quantile`: the first bucket
//!   starts at 0, a rank in the `+Inf` bucket gives the highest finite bound.
//! - **retry/s**: the increase of `legate_http_retries_total` (all reasons).
//! - **breaker**: `legate_circuit_state` (0 closed, 1 open, 2 half-open); `-`: no breaker.
//! - **ejected**: endpoints whose `legate_outlier_ejected` is 1, out of the endpoints known from
//!   any per-endpoint series of the upstream.
//! - **conns**: `legate_upstream_connections_active`, summed over endpoints.
//! - **totals since start**: the counters' current values (`requests=`, `errors=` (5xx),
//!   `legate-errors=`), exact and independent of timing.
//!
//! A counter lower than at the previous scrape means legate restarted: its current value is taken
//! as the increase (for a histogram, the whole series' buckets). Requests that matched no route are
//! counted by legate under `upstream=""`, shown here as `(no route)`. One line per TCP listener
//! shows `legate_tcp_connections_active` and bytes/s of `legate_tcp_bytes_total` by direction;
//! the header shows uptime (from `process_start_time_seconds`, when exported), the config hash
//! (`legate_config_info{hash}`) and the total req/s.
//!
//! Blocking std code only (the fetch is [`crate::lifecycle::probe::http`]); the screen is
//! cleared with ANSI `ESC[H ESC[2J` before each frame, `--once` prints one plain-text frame.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The flags of `legate top`.
#[derive(Debug, Clone)]
pub struct Args {
    /// The legate admin address whose `/metrics` to read.
    pub admin: SocketAddr,
    /// Take two scrapes `interval` apart, print one plain frame and exit.
    pub once: bool,
    /// Time between scrapes (the refresh rate).
    pub interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error(
        "cannot reach the legate admin at {addr} ({reason}): is legate running with its admin \
         on that address? Give the right one with --admin HOST:PORT"
    )]
    Unreachable { addr: SocketAddr, reason: String },
    #[error(
        "the legate admin at {addr} answered GET /metrics with status {status} ({body}): is \
         --admin the admin address (default 127.0.0.1:9901), not a listener?"
    )]
    Status {
        addr: SocketAddr,
        status: u16,
        body: String,
    },
    #[error(
        "GET /metrics at {addr} is not Prometheus text legate top can read ({error}): is \
         --admin the address of a legate admin?"
    )]
    Parse { addr: SocketAddr, error: ParseError },
    #[error("--interval must be more than zero, like 1s or 500ms")]
    ZeroInterval,
    #[error("cannot write the frame to stdout: {0}")]
    Output(#[from] std::io::Error),
}

/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Moves the cursor home and clears the screen.
const CLEAR: &str = "\x1b[H\x1b[2J";
const BOLD: &str = "\x1b[1m";
const REVERSE: &str = "\x1b[7m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

/// Runs `legate top` until interrupted (or once, with `--once`). Blocking.
pub fn run(args: &Args) -> Result<(), TopError> {
    if args.interval.is_zero() {
        return Err(TopError::ZeroInterval);
    }
    if args.once {
        let (first, t0) = scrape(args.admin)?;
        std::thread::sleep(args.interval);
        let (second, t1) = scrape(args.admin)?;
        let mut v = view(&first, &second, t1.saturating_duration_since(t0));
        v.admin = args.admin.to_string();
        return emit(&render(&v, false));
    }
    let mut prev: Option<(Snapshot, Instant)> = None;
    loop {
        let frame = match scrape(args.admin) {
            Ok((cur, at)) => {
                let frame = match &prev {
                    Some((p, p_at)) => {
                        let mut v = view(p, &cur, at.saturating_duration_since(*p_at));
                        v.admin = args.admin.to_string();
                        render(&v, true)
                    }
                    None => format!(
                        "{CLEAR}{BOLD}legate top  admin {}{RESET}\n\ncollecting: rates appear \
                         after the next scrape (every {:?})\n",
                        args.admin, args.interval
                    ),
                };
                prev = Some((cur, at));
                frame
            }
            Err(e) => format!(
                "{CLEAR}{BOLD}legate top  admin {}{RESET}\n\n{RED}error:{RESET} {e}\n\n\
                 trying again every {:?} (Ctrl-C to quit)\n",
                args.admin, args.interval
            ),
        };
        emit(&frame)?;
        std::thread::sleep(args.interval);
    }
}

fn emit(frame: &str) -> Result<(), TopError> {
    let mut out = std::io::stdout().lock();
    out.write_all(frame.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// One `GET /metrics`, parsed; with the moment it finished.
fn scrape(addr: SocketAddr) -> Result<(Snapshot, Instant), TopError> {
    let (status, body) = crate::lifecycle::probe::http(addr, "GET", "/metrics", SCRAPE_TIMEOUT)
        .map_err(|e| {
            // The probe's messages start with the address; it is in ours already.
            let prefix = format!("{addr}: ");
            let reason = e.strip_prefix(&prefix).unwrap_or(&e).to_string();
            TopError::Unreachable { addr, reason }
        })?;
    let at = Instant::now();
    if status != 200 {
        let mut first = body.lines().next().unwrap_or("").to_string();
        if first.len() > 200 {
            let mut end = 200;
            while !first.is_char_boundary(end) {
                end -= 1;
            }
            first.truncate(end);
        }
        return Err(TopError::Status {
            addr,
            status,
            body: first,
        });
    }
    let samples = parse(&body).map_err(|error| TopError::Parse { addr, error })?;
    let mut snap = Snapshot::from_samples(&samples);
    snap.scraped_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs_f64());
    Ok((snap, at))
}

// ---------------------------------------------------------------------------------------------
// The exposition parser.
// ---------------------------------------------------------------------------------------------

/// One sample line: `name{label="value",...} value [timestamp] [# exemplar]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A line of the exposition that is not Prometheus/OpenMetrics text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

/// Parses Prometheus text or OpenMetrics text. Comments (`# HELP`, `# TYPE`, ...) are skipped,
/// `# EOF` ends the input; timestamps and exemplars after the value are ignored.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('#') {
            if line == "# EOF" {
                break;
            }
            continue;
        }
        let sample = parse_line(line).map_err(|message| ParseError {
            line: i + 1,
            message,
        })?;
        out.push(sample);
    }
    Ok(out)
}

struct Reader<'a> {
    rest: &'a str,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.rest = &self.rest[c.len_utf8()..];
        Some(c)
    }

    fn skip_blanks(&mut self) {
        self.rest = self.rest.trim_start_matches([' ', '\t']);
    }

    /// `[a-zA-Z_(:)][a-zA-Z0-9_(:)]*`; empty when the next char cannot start one.
    fn ident(&mut self, colon: bool) -> &'a str {
        let end = self
            .rest
            .char_indices()
            .find(|&(i, c)| {
                !(c.is_ascii_alphabetic()
                    || c == '_'
                    || (colon && c == ':')
                    || (i > 0 && c.is_ascii_digit()))
            })
            .map(|(i, _)| i)
            .unwrap_or(self.rest.len());
        let (id, rest) = self.rest.split_at(end);
        self.rest = rest;
        id
    }

    fn expect(&mut self, want: char, context: &str) -> Result<(), String> {
        match self.bump() {
            Some(c) if c == want => Ok(()),
            Some(c) => Err(format!("expected `{want}` {context}, found `{c}`")),
            None => Err(format!(
                "expected `{want}` {context}, found the end of the line"
            )),
        }
    }

    fn quoted(&mut self, label: &str) -> Result<String, String> {
        let mut value = String::new();
        loop {
            match self.bump() {
                None => return Err(format!("the value of label `{label}` has no closing quote")),
                Some('"') => return Ok(value),
                Some('\\') => match self.bump() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    Some(c) => {
                        return Err(format!(
                            "unknown escape `\\{c}` in the value of label `{label}`"
                        ))
                    }
                    None => {
                        return Err(format!("the value of label `{label}` has no closing quote"))
                    }
                },
                Some(c) => value.push(c),
            }
        }
    }

    fn labels(&mut self) -> Result<Vec<(String, String)>, String> {
        let mut labels: Vec<(String, String)> = Vec::new();
        loop {
            self.skip_blanks();
            if self.peek() == Some('}') {
                self.bump();
                return Ok(labels);
            }
            let name = self.ident(false);
            if name.is_empty() {
                return Err(match self.peek() {
                    Some(c) => format!("expected a label name or `}}`, found `{c}`"),
                    None => "the label set has no closing `}`".to_string(),
                });
            }
            self.skip_blanks();
            self.expect('=', &format!("after label `{name}`"))?;
            self.skip_blanks();
            self.expect('"', &format!("to open the value of label `{name}`"))?;
            let value = self.quoted(name)?;
            if labels.iter().any(|(k, _)| k == name) {
                return Err(format!("label `{name}` appears twice"));
            }
            labels.push((name.to_string(), value));
            self.skip_blanks();
            match self.bump() {
                Some(',') => {}
                Some('}') => return Ok(labels),
                Some(c) => return Err(format!("expected `,` or `}}` after a label, found `{c}`")),
                None => return Err("the label set has no closing `}`".to_string()),
            }
        }
    }
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let mut r = Reader { rest: line };
    let name = r.ident(true);
    if name.is_empty() {
        return Err(format!(
            "expected a metric name, found `{}`",
            r.peek().unwrap_or(' ')
        ));
    }
    let labels = if r.peek() == Some('{') {
        r.bump();
        r.labels()?
    } else {
        Vec::new()
    };
    if !r.rest.starts_with([' ', '\t']) {
        return Err(match r.peek() {
            Some(c) => format!("unexpected `{c}` after `{name}`"),
            None => format!("`{name}` has no value"),
        });
    }
    let mut parts = r.rest.split_whitespace();
    let raw = parts
        .next()
        .ok_or_else(|| format!("`{name}` has no value"))?;
    let value = parse_value(raw).ok_or_else(|| format!("the value `{raw}` is not a number"))?;
    if let Some(extra) = parts.next() {
        // A timestamp, or an OpenMetrics exemplar after `#`.
        if extra != "#" && parse_value(extra).is_none() {
            return Err(format!("unexpected `{extra}` after the value"));
        }
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ if s
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshots: the series legate top reads, from one scrape.
// ---------------------------------------------------------------------------------------------

/// Counter series (by their full label set) and the group (upstream or listener) each adds to.
#[derive(Debug, Clone, Default, PartialEq)]
struct Counters {
    series: BTreeMap<String, (String, f64)>,
}

impl Counters {
    fn add(&mut self, key: String, group: &str, value: f64) {
        let e = self
            .series
            .entry(key)
            .or_insert_with(|| (group.to_string(), 0.0));
        e.1 += finite(value);
    }

    fn totals(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (group, v) in self.series.values() {
            *out.entry(group.clone()).or_insert(0.0) += v;
        }
        out
    }

    /// Increase per group from `prev` to `self`, series by series; a series lower than before
    /// was reset (legate restarted), so all of its current value is new.
    fn increase_since(&self, prev: &Counters) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (key, (group, v)) in &self.series {
            let before = prev.series.get(key).map_or(0.0, |(_, p)| *p);
            *out.entry(group.clone()).or_insert(0.0) += increase(before, *v);
        }
        out
    }
}

fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

fn increase(before: f64, now: f64) -> f64 {
    if now >= before {
        now - before
    } else {
        now
    }
}

/// One histogram series: cumulative counts by upper bound, sorted by bound.
#[derive(Debug, Clone, Default, PartialEq)]
struct Histogram {
    upstream: String,
    buckets: Vec<(f64, f64)>,
}

/// What one scrape says, reduced to the series `legate top` shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// When the scrape was taken (Unix seconds), for the uptime; set by the caller.
    pub scraped_at: Option<f64>,
    start_time: Option<f64>,
    config_hash: Option<String>,
    upstreams: BTreeSet<String>,
    requests: Counters,
    errors: Counters,
    local_errors: Counters,
    retries: Counters,
    histograms: BTreeMap<String, Histogram>,
    breaker: BTreeMap<String, f64>,
    ejected: BTreeMap<String, usize>,
    endpoints: BTreeMap<String, BTreeSet<String>>,
    connections: BTreeMap<String, f64>,
    tcp_listeners: BTreeSet<String>,
    tcp_active: BTreeMap<String, f64>,
    tcp_to_upstream: Counters,
    tcp_to_client: Counters,
}

/// A series' identity within its metric: its labels but `le`, sorted.
fn series_key(s: &Sample) -> String {
    let mut labels: Vec<&(String, String)> = s.labels.iter().filter(|(k, _)| k != "le").collect();
    labels.sort();
    let mut key = String::new();
    for (k, v) in labels {
        let _ = write!(key, "{k}={v:?},");
    }
    key
}

impl Snapshot {
    pub fn from_samples(samples: &[Sample]) -> Snapshot {
        let mut s = Snapshot::default();
        for m in samples {
            let upstream = m.label("upstream").unwrap_or("");
            let listener = m.label("listener").unwrap_or("");
            let endpoint = m.label("endpoint");
            match m.name.as_str() {
                "legate_http_requests_total" => {
                    s.upstreams.insert(upstream.to_string());
                    s.requests.add(series_key(m), upstream, m.value);
                    if m.label("code_class") == Some("5xx") {
                        s.errors.add(series_key(m), upstream, m.value);
                    }
                }
                "legate_http_local_errors_total" => {
                    s.upstreams.insert(upstream.to_string());
                    s.local_errors.add(series_key(m), upstream, m.value);
                }
                "legate_http_retries_total" => {
                    s.upstreams.insert(upstream.to_string());
                    s.retries.add(series_key(m), upstream, m.value);
                }
                "legate_http_request_duration_seconds_bucket" => {
                    let Some(le) = m.label("le").and_then(parse_value) else {
                        continue;
                    };
                    if le.is_nan() {
                        continue;
                    }
                    s.upstreams.insert(upstream.to_string());
                    let h = s
                        .histograms
                        .entry(series_key(m))
                        .or_insert_with(|| Histogram {
                            upstream: upstream.to_string(),
                            buckets: Vec::new(),
                        });
                    h.buckets.push((le, finite(m.value)));
                }
                "legate_circuit_state" => {
                    s.upstreams.insert(upstream.to_string());
                    s.breaker.insert(upstream.to_string(), m.value);
                }
                "legate_outlier_ejected" => {
                    s.upstreams.insert(upstream.to_string());
                    if let Some(e) = endpoint {
                        s.endpoints
                            .entry(upstream.to_string())
                            .or_default()
                            .insert(e.to_string());
                    }
                    let n = s.ejected.entry(upstream.to_string()).or_insert(0);
                    if m.value == 1.0 {
                        *n += 1;
                    }
                }
                "legate_upstream_connections_active" => {
                    s.upstreams.insert(upstream.to_string());
                    if let Some(e) = endpoint {
                        s.endpoints
                            .entry(upstream.to_string())
                            .or_default()
                            .insert(e.to_string());
                    }
                    *s.connections.entry(upstream.to_string()).or_insert(0.0) += finite(m.value);
                }
                "legate_upstream_connections_opened_total"
                | "legate_upstream_connections_reused_total"
                | "legate_outlier_ejections_total"
                | "legate_endpoint_healthy"
                | "legate_health_checks_total" => {
                    s.upstreams.insert(upstream.to_string());
                    if let Some(e) = endpoint {
                        s.endpoints
                            .entry(upstream.to_string())
                            .or_default()
                            .insert(e.to_string());
                    }
                }
                "legate_tcp_connections_active" => {
                    s.tcp_listeners.insert(listener.to_string());
                    *s.tcp_active.entry(listener.to_string()).or_insert(0.0) += finite(m.value);
                }
                "legate_tcp_bytes_total" => {
                    s.tcp_listeners.insert(listener.to_string());
                    match m.label("direction") {
                        Some("to_upstream") => {
                            s.tcp_to_upstream.add(series_key(m), listener, m.value)
                        }
                        Some("to_client") => s.tcp_to_client.add(series_key(m), listener, m.value),
                        _ => {}
                    }
                }
                "legate_config_info" => {
                    if let Some(h) = m.label("hash") {
                        if s.config_hash.is_none() || m.value == 1.0 {
                            s.config_hash = Some(h.to_string());
                        }
                    }
                }
                "process_start_time_seconds" | "legate_process_start_time_seconds"
                    if m.value.is_finite() =>
                {
                    s.start_time = Some(m.value);
                }
                _ => {}
            }
        }
        for h in s.histograms.values_mut() {
            h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            h.buckets.dedup_by(|later, earlier| {
                let same = later.0 == earlier.0;
                if same {
                    earlier.1 += later.1;
                }
                same
            });
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// The view: what changed between two snapshots.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Breaker {
    Closed,
    Open,
    HalfOpen,
    /// A value legate does not document.
    Other(f64),
}

impl Breaker {
    fn from_gauge(v: f64) -> Breaker {
        if v == 0.0 {
            Breaker::Closed
        } else if v == 1.0 {
            Breaker::Open
        } else if v == 2.0 {
            Breaker::HalfOpen
        } else {
            Breaker::Other(v)
        }
    }

    fn text(self) -> String {
        match self {
            Breaker::Closed => "closed".into(),
            Breaker::Open => "open".into(),
            Breaker::HalfOpen => "half-open".into(),
            Breaker::Other(v) => format!("?{v}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamRow {
    /// As legate labels it; `""` for requests that matched no route.
    pub name: String,
    pub req_per_s: f64,
    /// 5xx / all responses over the interval, in percent; `None` without responses.
    pub error_pct: Option<f64>,
    /// Seconds.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub retries_per_s: f64,
    /// `None`: the upstream has no circuit breaker.
    pub breaker: Option<Breaker>,
    pub ejected: usize,
    pub endpoints: usize,
    pub connections: f64,
    pub requests_total: f64,
    pub errors_total: f64,
    pub local_errors_total: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerRow {
    pub name: String,
    pub connections: f64,
    pub to_upstream_per_s: f64,
    pub to_client_per_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// The admin address, for the header; empty: not shown.
    pub admin: String,
    pub elapsed: Duration,
    pub uptime: Option<Duration>,
    pub config_hash: Option<String>,
    pub req_per_s: f64,
    pub upstreams: Vec<UpstreamRow>,
    pub listeners: Vec<ListenerRow>,
}

/// What happened between `prev` and `cur`, taken `elapsed` apart.
pub fn view(prev: &Snapshot, cur: &Snapshot, elapsed: Duration) -> View {
    let secs = elapsed.as_secs_f64();
    let rate = |d: f64| if secs > 0.0 { d / secs } else { 0.0 };
    let get = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);

    let req_d = cur.requests.increase_since(&prev.requests);
    let err_d = cur.errors.increase_since(&prev.errors);
    let retry_d = cur.retries.increase_since(&prev.retries);
    let req_t = cur.requests.totals();
    let err_t = cur.errors.totals();
    let local_t = cur.local_errors.totals();
    let buckets = histogram_increase(prev, cur);

    let upstreams = cur
        .upstreams
        .iter()
        // legate keeps a series for requests that match no route: show it only once used.
        .filter(|name| !name.is_empty() || get(&req_t, name) > 0.0)
        .map(|name| {
            let requests = get(&req_d, name);
            let b = buckets.get(name).map(Vec::as_slice).unwrap_or(&[]);
            UpstreamRow {
                name: name.clone(),
                req_per_s: rate(requests),
                error_pct: (requests > 0.0).then(|| 100.0 * get(&err_d, name) / requests),
                p50: quantile(0.5, b),
                p99: quantile(0.99, b),
                retries_per_s: rate(get(&retry_d, name)),
                breaker: cur.breaker.get(name).copied().map(Breaker::from_gauge),
                ejected: cur.ejected.get(name).copied().unwrap_or(0),
                endpoints: cur.endpoints.get(name).map_or(0, BTreeSet::len),
                connections: get(&cur.connections, name),
                requests_total: get(&req_t, name),
                errors_total: get(&err_t, name),
                local_errors_total: get(&local_t, name),
            }
        })
        .collect();

    let up_d = cur.tcp_to_upstream.increase_since(&prev.tcp_to_upstream);
    let down_d = cur.tcp_to_client.increase_since(&prev.tcp_to_client);
    let listeners = cur
        .tcp_listeners
        .iter()
        .map(|name| ListenerRow {
            name: name.clone(),
            connections: get(&cur.tcp_active, name),
            to_upstream_per_s: rate(get(&up_d, name)),
            to_client_per_s: rate(get(&down_d, name)),
        })
        .collect();

    let uptime = match (cur.scraped_at, cur.start_time) {
        (Some(now), Some(start)) if now >= start => Duration::try_from_secs_f64(now - start).ok(),
        _ => None,
    };
    View {
        admin: String::new(),
        elapsed,
        uptime,
        config_hash: cur.config_hash.clone(),
        req_per_s: rate(req_d.values().sum()),
        upstreams,
        listeners,
    }
}

/// Per upstream: the buckets' increase between the scrapes, all routes added up.
fn histogram_increase(prev: &Snapshot, cur: &Snapshot) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut by_upstream: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (key, h) in &cur.histograms {
        let before = prev.histograms.get(key);
        // Same bounds and no bucket went down: subtract; otherwise the series was reset.
        let comparable = before.is_some_and(|b| {
            b.buckets.len() == h.buckets.len()
                && b.buckets
                    .iter()
                    .zip(&h.buckets)
                    .all(|(p, c)| p.0 == c.0 && c.1 >= p.1)
        });
        let delta: Vec<(f64, f64)> = match before {
            Some(b) if comparable => b
                .buckets
                .iter()
                .zip(&h.buckets)
                .map(|(p, c)| (c.0, c.1 - p.1))
                .collect(),
            _ => h.buckets.clone(),
        };
        let merged = by_upstream.entry(h.upstream.clone()).or_default();
        for (le, n) in delta {
            match merged.iter_mut().find(|(b, _)| *b == le) {
                Some(slot) => slot.1 += n,
                None => merged.push((le, n)),
            }
        }
    }
    for b in by_upstream.values_mut() {
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
    }
    by_upstream
}

/// The `q` quantile of cumulative `buckets` (sorted by upper bound, the last one `+Inf`),
/// like PromQL's `histogram_quantile`. `None` without observations or without a `+Inf` bucket.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    if !(0.0..=1.0).contains(&q) {
        return None;
    }
    let (last_le, _) = *buckets.last()?;
    if last_le != f64::INFINITY || buckets.len() < 2 {
        return None;
    }
    // Cumulative counts must not go down; repair like Prometheus does.
    let mut counts = Vec::with_capacity(buckets.len());
    let mut running = 0.0f64;
    for &(_, n) in buckets {
        running = running.max(n);
        counts.push(running);
    }
    let total = running;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let finite_n = buckets.len() - 1;
    let b = (0..finite_n)
        .find(|&i| counts[i] >= rank)
        .unwrap_or(finite_n);
    if b == finite_n {
        return Some(buckets[finite_n - 1].0);
    }
    let end = buckets[b].0;
    if b == 0 && end <= 0.0 {
        return Some(end);
    }
    let (start, below) = if b == 0 {
        (0.0, 0.0)
    } else {
        (buckets[b - 1].0, counts[b - 1])
    };
    let in_bucket = counts[b] - below;
    if in_bucket <= 0.0 {
        return Some(end);
    }
    Some(start + (end - start) * ((rank - below) / in_bucket))
}

// ---------------------------------------------------------------------------------------------
// Rendering.
// ---------------------------------------------------------------------------------------------

/// One frame of text. `ansi`: clear the screen first and use bold/colour.
pub fn render(view: &View, ansi: bool) -> String {
    let paint = |code: &str, text: &str| {
        if ansi {
            format!("{code}{text}{RESET}")
        } else {
            text.to_string()
        }
    };
    let mut out = String::new();
    if ansi {
        out.push_str(CLEAR);
    }

    let mut header = String::from("legate top");
    if !view.admin.is_empty() {
        let _ = write!(header, "  admin {}", clean(&view.admin));
    }
    if let Some(up) = view.uptime {
        let _ = write!(header, "  uptime {}", fmt_uptime(up));
    }
    if let Some(hash) = &view.config_hash {
        let _ = write!(header, "  config {}", short_hash(hash));
    }
    let _ = write!(
        header,
        "  {} req/s  (over {:.2}s)",
        fmt_rate(view.req_per_s),
        view.elapsed.as_secs_f64()
    );
    out.push_str(&paint(BOLD, &header));
    out.push_str("\n\n");

    let names: Vec<String> = view
        .upstreams
        .iter()
        .map(|u| upstream_name(&u.name))
        .collect();
    let w = names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(0)
        .max(8);
    if view.upstreams.is_empty() {
        out.push_str("no HTTP upstreams in /metrics yet\n");
    } else {
        let head = format!(
            "{:<w$}  {:>8}  {:>6}  {:>8}  {:>8}  {:>7}  {:<9}  {:>7}  {:>5}",
            "UPSTREAM", "REQ/S", "ERR%", "P50", "P99", "RETRY/S", "BREAKER", "EJECTED", "CONNS"
        );
        out.push_str(&paint(REVERSE, &head));
        out.push('\n');
        for (u, name) in view.upstreams.iter().zip(&names) {
            let breaker = u.breaker.map_or_else(|| "-".to_string(), Breaker::text);
            let breaker = format!("{breaker:<9}");
            let breaker = match u.breaker {
                Some(Breaker::Open) => paint(RED, &breaker),
                Some(Breaker::HalfOpen) => paint(YELLOW, &breaker),
                _ => breaker,
            };
            let ejected = if u.endpoints == 0 && u.ejected == 0 {
                "-".to_string()
            } else {
                format!("{}/{}", u.ejected, u.endpoints)
            };
            let ejected = format!("{ejected:>7}");
            let ejected = if u.ejected > 0 {
                paint(RED, &ejected)
            } else {
                ejected
            };
            let pct = u
                .error_pct
                .map_or_else(|| "-".to_string(), |p| format!("{p:.1}%"));
            let pct = format!("{pct:>6}");
            let pct = if u.error_pct.is_some_and(|p| p > 0.0) {
                paint(RED, &pct)
            } else {
                pct
            };
            let _ = writeln!(
                out,
                "{name:<w$}  {:>8}  {pct}  {:>8}  {:>8}  {:>7}  {breaker}  {ejected}  {:>5}",
                fmt_rate(u.req_per_s),
                fmt_latency(u.p50),
                fmt_latency(u.p99),
                fmt_rate(u.retries_per_s),
                fmt_count(u.connections),
            );
        }
    }

    if !view.listeners.is_empty() {
        let lw = view
            .listeners
            .iter()
            .map(|l| clean(&l.name).chars().count())
            .max()
            .unwrap_or(0)
            .max(12);
        out.push('\n');
        let head = format!(
            "{:<lw$}  {:>5}  {:>14}  {:>14}",
            "TCP LISTENER", "CONNS", "TO UPSTREAM", "TO CLIENT"
        );
        out.push_str(&paint(REVERSE, &head));
        out.push('\n');
        for l in &view.listeners {
            let _ = writeln!(
                out,
                "{:<lw$}  {:>5}  {:>14}  {:>14}",
                clean(&l.name),
                fmt_count(l.connections),
                fmt_bytes_rate(l.to_upstream_per_s),
                fmt_bytes_rate(l.to_client_per_s),
            );
        }
    }

    if !view.upstreams.is_empty() {
        out.push('\n');
        out.push_str(&paint(BOLD, "totals since start"));
        out.push('\n');
        for (u, name) in view.upstreams.iter().zip(&names) {
            let _ = writeln!(
                out,
                "{name:<w$}  requests={} errors={} legate-errors={}",
                fmt_count(u.requests_total),
                fmt_count(u.errors_total),
                fmt_count(u.local_errors_total),
            );
        }
    }
    out
}

fn upstream_name(name: &str) -> String {
    if name.is_empty() {
        "(no route)".to_string()
    } else {
        clean(name)
    }
}

/// Label values come from the network: no control characters reach the terminal.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn short_hash(hash: &str) -> String {
    let hash = clean(hash);
    match hash.split_once(':') {
        Some((algo, hex)) if hex.len() > 12 && hex.is_char_boundary(12) => {
            format!("{algo}:{}", &hex[..12])
        }
        _ => hash,
    }
}

fn fmt_rate(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn fmt_latency(s: Option<f64>) -> String {
    match s {
        Some(s) if s.is_finite() && s >= 0.0 => {
            if s < 0.001 {
                format!("{:.0}us", s * 1e6)
            } else if s < 1.0 {
                format!("{:.1}ms", s * 1e3)
            } else {
                format!("{s:.2}s")
            }
        }
        _ => "-".into(),
    }
}

fn fmt_count(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn fmt_bytes_rate(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let units = ["B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s"];
    let mut v = v;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0}{}", units[i])
    } else {
        format!("{v:.1}{}", units[i])
    }
}

fn fmt_uptime(d: Duration) -> String {
    let s = d.as_secs();
    let (days, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{h:02}h{m:02}m")
    } else if h > 0 {
        format!("{h}h{m:02}m{sec:02}s")
    } else if m > 0 {
        format!("{m}m{sec:02}s")
    } else {
        format!("{sec}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(text: &str) -> Snapshot {
        Snapshot::from_samples(&parse(text).expect("test exposition parses"))
    }

    fn row<'a>(v: &'a View, name: &str) -> &'a UpstreamRow {
        v.upstreams
            .iter()
            .find(|u| u.name == name)
            .unwrap_or_else(|| panic!("no row for {name:?} in {v:#?}"))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn parses_labels_escapes_and_special_values() {
        let text = "# HELP legate_x A help text with \"quotes\"\n\
                    # TYPE legate_x counter\n\
                    legate_x_total{a=\"plain\",b=\"q\\\"uo\\\\te\\n\",c=\"ünï, {}=\"} 5\n\
                    up 1\n\
                    legate_h_bucket{le=\"+Inf\"} 3 1700000000\n\
                    legate_y{ a = \"1\" , } -Inf\n\
                    legate_z_total 2.5e3 # {trace_id=\"abc\"} 1.0\n\
                    nan_metric NaN\n\
                    # EOF\n\
                    this is not read\n";
        let s = parse(text).expect("parses");
        assert_eq!(s.len(), 6, "{s:?}");
        assert_eq!(s[0].name, "legate_x_total");
        assert_eq!(s[0].label("a"), Some("plain"));
        assert_eq!(s[0].label("b"), Some("q\"uo\\te\n"));
        assert_eq!(s[0].label("c"), Some("ünï, {}="));
        assert_eq!(s[0].value, 5.0);
        assert_eq!((s[1].name.as_str(), s[1].value), ("up", 1.0));
        assert!(s[1].labels.is_empty());
        assert_eq!(s[2].value, 3.0);
        assert_eq!(s[2].label("le"), Some("+Inf"));
        assert_eq!(s[3].value, f64::NEG_INFINITY);
        assert_eq!(s[3].label("a"), Some("1"));
        assert_eq!(s[4].value, 2500.0);
        assert!(s[5].value.is_nan());
    }

    #[test]
    fn bad_lines_are_errors_with_their_line_number() {
        for (text, needle) in [
            ("ok 1\nlegate_x{a=\"b\"}\n", "no value"),
            ("ok 1\n\nlegate_x{a=\"b} 1\n", "no closing quote"),
            ("legate_x{a=\"\\t\"} 1\n", "unknown escape"),
            ("legate_x{a=b} 1\n", "to open the value"),
            ("legate_x{a=\"1\"", "no closing `}`"),
            ("legate_x{a=\"1\" b=\"2\"} 1", "expected `,` or `}`"),
            ("legate_x{a=\"1\",a=\"2\"} 1", "appears twice"),
            ("legate_x one", "not a number"),
            ("legate_x 1 3z", "unexpected"),
            ("legate_x 0x10", "not a number"),
            ("{a=\"1\"} 1", "expected a metric name"),
            ("9lives 1", "expected a metric name"),
            ("legate-x 1", "unexpected `-`"),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.message.contains(needle), "{text:?}: {e}");
        }
        assert_eq!(parse("ok 1\nlegate_x{a=\"b\"}\n").unwrap_err().line, 2);
        assert_eq!(parse("ok 1\n\nlegate_x{a=\"b} 1\n").unwrap_err().line, 3);
    }

    #[test]
    fn never_panics_on_truncated_or_odd_input() {
        let text = "legate_http_requests_total{listener=\"ä\\\"p\",upstream=\"ü\\\\\"} 1\n\
                    legate_x{le=\"+Inf\"} 2 # {t=\"x\"} 1\n# EOF\n";
        for (i, _) in text.char_indices() {
            let _ = parse(&text[..i]);
            let _ = parse(&text[i..]);
        }
        for odd in [
            "{", "}", "\"", "\\", "a{", "a{b", "a{b=", "a{b=\"", "a{b=\"\\", "a{}", "a{} ", "é 1",
            "\u{0}", "# EOF", "#",
        ] {
            let _ = parse(odd);
        }
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("# EOF\n").unwrap(), vec![]);
        assert_eq!(parse("a{} 1").unwrap()[0].value, 1.0);
    }

    const BEFORE: &str = r#"
legate_http_requests_total{listener="app",route="r1",upstream="api",code_class="2xx"} 100
legate_http_requests_total{listener="app",route="r1",upstream="api",code_class="5xx"} 4
legate_http_requests_total{listener="app",route="r2",upstream="api",code_class="2xx"} 10
legate_http_requests_total{listener="app",route="r3",upstream="db",code_class="2xx"} 7
legate_http_requests_total{listener="app",route="",upstream="",code_class="4xx"} 1
legate_http_local_errors_total{listener="app",route="r1",upstream="api",reason="connect"} 4
legate_http_retries_total{route="r1",upstream="api",reason="connect-failure"} 2
# EOF
"#;

    const AFTER: &str = r#"
legate_http_requests_total{listener="app",route="r1",upstream="api",code_class="2xx"} 130
legate_http_requests_total{listener="app",route="r1",upstream="api",code_class="5xx"} 14
legate_http_requests_total{listener="app",route="r2",upstream="api",code_class="2xx"} 10
legate_http_requests_total{listener="app",route="r3",upstream="db",code_class="2xx"} 7
legate_http_requests_total{listener="app",route="",upstream="",code_class="4xx"} 1
legate_http_local_errors_total{listener="app",route="r1",upstream="api",reason="connect"} 12
legate_http_local_errors_total{listener="app",route="r1",upstream="api",reason="timeout"} 2
legate_http_retries_total{route="r1",upstream="api",reason="connect-failure"} 8
# EOF
"#;

    #[test]
    fn rates_error_percent_and_totals() {
        let v = view(&snap(BEFORE), &snap(AFTER), Duration::from_secs(2));
        let api = row(&v, "api");
        // 30 + 10 responses in 2 s, 10 of them 5xx.
        assert!(close(api.req_per_s, 20.0), "{api:?}");
        assert!(close(api.error_pct.unwrap(), 25.0), "{api:?}");
        assert!(close(api.retries_per_s, 3.0), "{api:?}");
        assert_eq!(api.requests_total, 154.0);
        assert_eq!(api.errors_total, 14.0);
        assert_eq!(api.local_errors_total, 14.0);
        let db = row(&v, "db");
        assert_eq!((db.req_per_s, db.error_pct), (0.0, None));
        assert_eq!(db.requests_total, 7.0);
        assert!(close(v.req_per_s, 20.0));
        let text = render(&v, false);
        assert!(text.contains("(no route)"), "{text}");
        let totals: Vec<&str> = text.lines().filter(|l| l.contains("requests=")).collect();
        assert!(
            totals
                .iter()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    == ["api", "requests=154", "errors=14", "legate-errors=14"]),
            "{text}"
        );
        assert!(totals.iter().any(|l| l.starts_with("db ") && l.ends_with("requests=7 errors=0 legate-errors=0")), "{text}");
        assert!(text.contains("25.0%"), "{text}");
        assert!(text.contains("20.0 req/s"), "{text}");
    }

    #[test]
    fn counter_reset_counts_the_current_value() {
        let before = "legate_http_requests_total{upstream=\"api\",code_class=\"2xx\"} 1000\n\
                      legate_http_requests_total{upstream=\"api\",code_class=\"5xx\"} 50\n\
                      legate_http_retries_total{upstream=\"api\",reason=\"x\"} 9\n";
        let after = "legate_http_requests_total{upstream=\"api\",code_class=\"2xx\"} 6\n\
                     legate_http_requests_total{upstream=\"api\",code_class=\"5xx\"} 2\n\
                     legate_http_retries_total{upstream=\"api\",reason=\"x\"} 1\n";
        let v = view(&snap(before), &snap(after), Duration::from_secs(1));
        let api = row(&v, "api");
        assert!(close(api.req_per_s, 8.0), "{api:?}");
        assert!(close(api.error_pct.unwrap(), 25.0), "{api:?}");
        assert!(close(api.retries_per_s, 1.0), "{api:?}");
        assert_eq!(api.requests_total, 8.0);
    }

    fn hist(upstream: &str, route: &str, counts: [u64; 5]) -> String {
        let les = ["0.1", "0.25", "0.5", "1.0", "+Inf"];
        les.iter()
            .zip(counts)
            .map(|(le, n)| {
                format!(
                    "legate_http_request_duration_seconds_bucket{{listener=\"app\",route=\"{route}\",upstream=\"{upstream}\",le=\"{le}\"}} {n}\n"
                )
            })
            .collect()
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        // Cumulative 10 / 60 / 90 / 100 / 100.
        let b = [
            (0.1, 10.0),
            (0.25, 60.0),
            (0.5, 90.0),
            (1.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        // p50: rank 50 falls in (0.1, 0.25] holding 50: 0.1 + 0.15 * 40/50 = 0.22.
        assert!(close(quantile(0.5, &b).unwrap(), 0.22));
        // p99: rank 99 in (0.5, 1.0] holding 10: 0.5 + 0.5 * 9/10 = 0.95.
        assert!(close(quantile(0.99, &b).unwrap(), 0.95));
        // The first bucket starts at 0: rank 5 of 10 in (0, 0.1] = 0.05.
        assert!(close(quantile(0.05, &b).unwrap(), 0.05));
        // Ranks in +Inf give the highest finite bound.
        let slow = [(0.1, 0.0), (1.0, 1.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(0.5, &slow), Some(1.0));
        assert_eq!(quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &[(0.1, 3.0), (1.0, 3.0)]), None, "no +Inf");
        assert_eq!(quantile(0.5, &[]), None);
    }

    #[test]
    fn quantiles_come_from_the_increase_of_all_routes() {
        // Before: only old fast requests. Between the scrapes route a adds 10 / 30 / 45 / 50 /
        // 50 and route b adds 0 / 30 / 45 / 50 / 50: together 10 / 60 / 90 / 100 / 100.
        let before =
            hist("api", "a", [1000, 1000, 1000, 1000, 1000]) + &hist("api", "b", [0, 0, 0, 0, 0]);
        let after = hist("api", "a", [1010, 1030, 1045, 1050, 1050])
            + &hist("api", "b", [0, 30, 45, 50, 50]);
        let v = view(&snap(&before), &snap(&after), Duration::from_secs(1));
        let api = row(&v, "api");
        assert!(close(api.p50.unwrap(), 0.22), "{api:?}");
        assert!(close(api.p99.unwrap(), 0.95), "{api:?}");
        let text = render(&v, false);
        assert!(
            text.contains("220.0ms") && text.contains("950.0ms"),
            "{text}"
        );
        // Nothing new: no latency to show.
        let idle = view(&snap(&after), &snap(&after), Duration::from_secs(1));
        assert_eq!((row(&idle, "api").p50, row(&idle, "api").p99), (None, None));
        // A reset histogram counts from zero.
        let reset = view(
            &snap(&after),
            &snap(&hist("api", "a", [10, 60, 90, 100, 100])),
            Duration::from_secs(1),
        );
        assert!(close(row(&reset, "api").p50.unwrap(), 0.22));
    }

    #[test]
    fn breaker_states_and_ejected_endpoints() {
        let text = r#"
legate_circuit_state{upstream="a"} 0
legate_circuit_state{upstream="b"} 1
legate_circuit_state{upstream="c"} 2
legate_outlier_ejected{upstream="a",endpoint="10.0.0.1:80"} 1
legate_outlier_ejected{upstream="a",endpoint="10.0.0.2:80"} 0
legate_upstream_connections_active{upstream="a",endpoint="10.0.0.1:80"} 0
legate_upstream_connections_active{upstream="a",endpoint="10.0.0.2:80"} 3
legate_upstream_connections_active{upstream="a",endpoint="10.0.0.3:80"} 2
legate_upstream_connections_active{upstream="d",endpoint="10.0.1.1:80"} 1
"#;
        let s = snap(text);
        let v = view(&s, &s, Duration::from_secs(1));
        assert_eq!(row(&v, "a").breaker, Some(Breaker::Closed));
        assert_eq!(row(&v, "b").breaker, Some(Breaker::Open));
        assert_eq!(row(&v, "c").breaker, Some(Breaker::HalfOpen));
        assert_eq!(row(&v, "d").breaker, None);
        assert_eq!((row(&v, "a").ejected, row(&v, "a").endpoints), (1, 3));
        assert_eq!(row(&v, "a").connections, 5.0);
        assert_eq!((row(&v, "d").ejected, row(&v, "d").endpoints), (0, 1));
        let out = render(&v, false);
        let line = |name: &str| {
            out.lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| panic!("no {name} line in\n{out}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(line("a")[6..], ["closed", "1/3", "5"], "{out}");
        assert_eq!(line("b")[6], "open");
        assert_eq!(line("c")[6], "half-open");
        assert_eq!(line("d")[6..], ["-", "0/1", "1"], "{out}");
    }

    #[test]
    fn tcp_listeners_header_and_ansi() {
        let before = r#"
legate_config_info{hash="sha256:0123456789abcdef0123"} 1
process_start_time_seconds 1000
legate_tcp_connections_active{listener="db"} 2
legate_tcp_bytes_total{listener="db",direction="to_upstream"} 1000
legate_tcp_bytes_total{listener="db",direction="to_client"} 0
"#;
        let after = r#"
legate_config_info{hash="sha256:0123456789abcdef0123"} 1
process_start_time_seconds 1000
legate_tcp_connections_active{listener="db"} 3
legate_tcp_bytes_total{listener="db",direction="to_upstream"} 3048
legate_tcp_bytes_total{listener="db",direction="to_client"} 4194304
"#;
        let mut cur = snap(after);
        cur.scraped_at = Some(1000.0 + 3723.0);
        let mut v = view(&snap(before), &cur, Duration::from_secs(2));
        v.admin = "127.0.0.1:9901".into();
        assert_eq!(v.uptime, Some(Duration::from_secs(3723)));
        assert_eq!(
            v.listeners,
            vec![ListenerRow {
                name: "db".into(),
                connections: 3.0,
                to_upstream_per_s: 1024.0,
                to_client_per_s: 2097152.0,
            }]
        );
        let plain = render(&v, false);
        assert!(!plain.contains('\x1b'), "{plain:?}");
        let header = plain.lines().next().unwrap();
        assert!(header.contains("admin 127.0.0.1:9901"), "{header}");
        assert!(header.contains("uptime 1h02m03s"), "{header}");
        assert!(header.contains("config sha256:0123456789ab "), "{header}");
        assert!(header.contains("0.0 req/s"), "{header}");
        let db = plain.lines().find(|l| l.starts_with("db ")).expect(&plain);
        assert_eq!(
            db.split_whitespace().collect::<Vec<_>>(),
            ["db", "3", "1.0KiB/s", "2.0MiB/s"]
        );
        let ansi = render(&v, true);
        assert!(ansi.starts_with("\x1b[H\x1b[2J"), "{ansi:?}");
        // Without scrape time or start time: no uptime.
        assert_eq!(
            view(&snap(before), &snap(after), Duration::from_secs(1)).uptime,
            None
        );
    }

    #[test]
    fn empty_metrics_render_a_frame() {
        let s = snap("");
        let v = view(&s, &s, Duration::ZERO);
        assert!(v.upstreams.is_empty() && v.listeners.is_empty());
        let text = render(&v, false);
        assert!(text.contains("no HTTP upstreams"), "{text}");
        // The no-route series legate always exports shows only once a request used it.
        let s = snap("legate_http_requests_total{upstream=\"\",code_class=\"4xx\"} 0\n");
        assert!(view(&s, &s, Duration::ZERO).upstreams.is_empty());
        assert!(!text.contains("totals"), "{text}");
        assert_eq!(snap("# EOF\n"), Snapshot::default());
    }

    #[test]
    fn control_characters_do_not_reach_the_terminal() {
        let s = snap(
            "legate_http_requests_total{upstream=\"ev\\nil\u{1b}[2J\",code_class=\"2xx\"} 1\n",
        );
        let text = render(&view(&s, &s, Duration::from_secs(1)), false);
        assert!(
            !text.contains('\x1b') && text.contains("ev?il?[2J"),
            "{text:?}"
        );
    }

    #[test]
    fn reads_what_legate_exports() {
        use crate::telemetry::metrics::{EndpointLabels, Metrics, UpstreamLabels};
        let m = Metrics::new();
        m.config_loaded(None, "sha256:feedface00112233", 0);
        let r = m.route("app", "main", "api");
        for _ in 0..3 {
            r.record(200, 0.003);
        }
        r.record(502, 0.001);
        m.local_error(&r.labels, "connect-refused");
        m.retry("main", "api", "connect-failure");
        m.circuit_state
            .get_or_create(&UpstreamLabels {
                upstream: "api".into(),
            })
            .set(1);
        m.ejected
            .get_or_create(&EndpointLabels {
                upstream: "api".into(),
                endpoint: "127.0.0.1:1".into(),
            })
            .set(1);
        m.endpoint("api", "127.0.0.1:2").active.set(2);
        let t = m.tcp_listener("db");
        t.active.set(1);
        t.to_client.inc_by(10);
        let s = snap(&m.encode());
        let v = view(&Snapshot::default(), &s, Duration::from_secs(1));
        let api = row(&v, "api");
        assert_eq!(
            (api.requests_total, api.errors_total, api.local_errors_total),
            (4.0, 1.0, 1.0)
        );
        assert!(close(api.error_pct.unwrap(), 25.0));
        assert!(close(api.retries_per_s, 1.0));
        assert_eq!(api.breaker, Some(Breaker::Open));
        assert_eq!((api.ejected, api.endpoints, api.connections), (1, 2, 2.0));
        // 3 of 4 in (0.0025, 0.005]: p50 = 0.0025 + 0.0025 * (2 - 1) / 3.
        assert!(close(api.p50.unwrap(), 0.0025 + 0.0025 / 3.0), "{api:?}");
        assert_eq!(v.config_hash.as_deref(), Some("sha256:feedface00112233"));
        assert_eq!(v.listeners[0].to_client_per_s, 10.0);
    }

    #[test]
    fn unreachable_admin_names_the_address() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let e = run(&Args {
            admin: addr,
            once: true,
            interval: Duration::from_millis(10),
        })
        .unwrap_err();
        assert!(matches!(e, TopError::Unreachable { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(&addr.to_string()) && msg.contains("--admin"),
            "{msg}"
        );
        let e = run(&Args {
            admin: addr,
            once: true,
            interval: Duration::ZERO,
        })
        .unwrap_err();
        assert!(matches!(e, TopError::ZeroInterval), "{e:?}");
    }
}
