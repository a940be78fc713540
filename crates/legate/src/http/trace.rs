//! Trace context: read the caller's trace from W3C `traceparent`/`tracestate`, B3 (multi and
//! single header) or Jaeger's `uber-trace-id`; start one when there is none; give every
//! upstream attempt its own span id and write the configured formats with the same trace id.
//!
//! What a request carries is trusted only once it parses completely: a header with a wrong
//! length, a non-hex digit or an all-zero id is dropped, never forwarded half-parsed, and the
//! request continues as if it had carried no trace. Whenever a route traces, every known trace
//! header is removed from the request and the configured ones are written afresh, so the
//! upstream never sees two formats naming different traces.
//!
//! The span model: one server span per request (its parent is the caller's span), one client
//! span per attempt (its parent is the server span): retries are visible as siblings.

use super::request_id::{self, hex_into};
use crate::config::{Propagation, TracingConfig};
use crate::telemetry::otlp::{SpanKind, SpanRecord, SpanSink};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;
use std::time::SystemTime;

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
const UBER: HeaderName = HeaderName::from_static("uber-trace-id");

/// Every header a trace travels in, in any format legate knows.
static ALL: [HeaderName; 9] = [
    TRACEPARENT,
    TRACESTATE,
    B3,
    B3_TRACE,
    B3_SPAN,
    B3_PARENT,
    B3_SAMPLED,
    B3_FLAGS,
    UBER,
];

/// W3C limits for `tracestate` (§3.3.1.1): at most 32 members; a propagated value over 512
/// characters loses its members longer than 128 first, then members from the end.
const TRACESTATE_MAX_MEMBERS: usize = 32;
const TRACESTATE_MAX_LEN: usize = 512;
const TRACESTATE_LONG_MEMBER: usize = 128;

/// A trace as a request carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// `None`: the caller left the decision to us.
    pub sampled: Option<bool>,
}

/// A route's `tracing:` as compiled.
#[derive(Debug)]
pub struct TracePolicy {
    pub propagate: Vec<Propagation>,
    pub create: bool,
    /// `sample_rate` scaled to the `u64` range: sampled when a random `u64` is below it.
    threshold: u64,
    /// Where sampled spans go; `None` without `otlp:`.
    pub sink: Option<Arc<SpanSink>>,
}

impl TracePolicy {
    pub fn new(cfg: &TracingConfig, sink: Option<Arc<SpanSink>>) -> Self {
        let rate = cfg.sample_rate.clamp(0.0, 1.0);
        let threshold = if rate >= 1.0 {
            u64::MAX
        } else {
            (rate * u64::MAX as f64) as u64
        };
        let mut propagate = cfg.propagate.clone();
        propagate.dedup();
        Self {
            propagate,
            create: cfg.create,
            threshold,
            sink,
        }
    }

    fn sample(&self) -> bool {
        self.threshold == u64::MAX || request_id::next() < self.threshold
    }
}

/// One attempt's client span, kept only while sampled.
#[derive(Debug)]
pub struct AttemptSpan {
    pub span_id: SpanId,
    pub start: SystemTime,
    pub end: Option<SystemTime>,
    pub endpoint: Option<std::net::SocketAddr>,
    /// The endpoint's configured host name (`server.address`).
    pub host: Option<String>,
    pub status: Option<u16>,
    pub error: Option<&'static str>,
}

/// A request's trace: its server span and, when sampled, its attempts.
#[derive(Debug)]
pub struct Trace {
    pub trace_id: TraceId,
    /// The server span: legate's handling of this request.
    pub span_id: SpanId,
    /// The caller's span, if the request carried a trace.
    pub parent: Option<SpanId>,
    pub sampled: bool,
    tracestate: Option<HeaderValue>,
    policy: Arc<TracePolicy>,
    pub start: Option<SystemTime>,
    pub attempts: Vec<AttemptSpan>,
    /// `trace_id`, `span_id` (every attempt's parent) and the current attempt's span id in
    /// hex: the trace headers are written from these (see `write_wire`).
    trace_hex: [u8; 32],
    span_hex: [u8; 16],
    attempt_hex: [u8; 16],
}

/// Bit `i` set: the request carries `ALL[i]`.
type Present = u16;

/// Which known trace headers the request carries: one pass over its header names (a
/// handful), where looking each format's headers up by name would hash up to nine names.
fn scan(headers: &HeaderMap) -> Present {
    let mut present = 0;
    for name in headers.keys() {
        let i = match name.as_str() {
            "traceparent" => 0,
            "tracestate" => 1,
            "b3" => 2,
            "x-b3-traceid" => 3,
            "x-b3-spanid" => 4,
            "x-b3-parentspanid" => 5,
            "x-b3-sampled" => 6,
            "x-b3-flags" => 7,
            "uber-trace-id" => 8,
            _ => continue,
        };
        present |= 1 << i;
    }
    present
}

/// The headers `format` reads, as bits of `Present`.
fn read_by(format: Propagation) -> Present {
    match format {
        Propagation::W3c => 1 << 0,
        Propagation::B3 => 1 << 2 | 1 << 3 | 1 << 4 | 1 << 6 | 1 << 7,
        Propagation::B3Single => 1 << 2,
        Propagation::Jaeger => 1 << 8,
    }
}

fn new_span_id() -> SpanId {
    loop {
        let id = request_id::next();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn new_trace_id() -> TraceId {
    let mut r = [0u64; 2];
    request_id::fill(&mut r);
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&r[0].to_be_bytes());
    t[8..].copy_from_slice(&r[1].to_be_bytes());
    if t == [0; 16] {
        t[15] = 1;
    }
    t
}

/// Reads the request's trace in the policy's formats, removes every trace header, and decides
/// the request's trace: the carried one continued, a new one, or none (`create: false` and
/// nothing valid carried).
pub fn begin(policy: &Arc<TracePolicy>, headers: &mut HeaderMap) -> Option<Box<Trace>> {
    let present = scan(headers);
    let mut carried = None;
    let mut hint = None;
    for f in &policy.propagate {
        if present & read_by(*f) == 0 {
            continue;
        }
        match extract(*f, headers) {
            Extracted::Trace(c) => {
                carried = Some((*f, c));
                break;
            }
            Extracted::SamplingOnly(s) => hint = hint.or(Some(s)),
            Extracted::Nothing => {}
        }
    }
    // Only a trace that arrived as a W3C traceparent has a tracestate that belongs to it.
    let tracestate = match &carried {
        Some((Propagation::W3c, _)) => tracestate(headers),
        _ => None,
    };
    for (i, h) in ALL.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
    let (trace_id, parent, sampled) = match carried.map(|(_, c)| c) {
        Some(c) => {
            let sampled = c.sampled.or(hint).unwrap_or_else(|| policy.sample());
            (c.trace_id, Some(c.span_id), sampled)
        }
        None if policy.create => (
            new_trace_id(),
            None,
            hint.unwrap_or_else(|| policy.sample()),
        ),
        None => return None,
    };
    let exported = sampled && policy.sink.is_some();
    let span_id = new_span_id();
    let mut trace_hex = [0u8; 32];
    hex_into(&trace_id, &mut trace_hex);
    let mut span_hex = [0u8; 16];
    hex_into(&span_id, &mut span_hex);
    Some(Box::new(Trace {
        trace_id,
        span_id,
        parent,
        sampled,
        tracestate,
        policy: policy.clone(),
        start: exported.then(SystemTime::now),
        attempts: Vec::new(),
        trace_hex,
        span_hex,
        attempt_hex: [b'0'; 16],
    }))
}

/// Copies `src` into `line` at `at`: the header lines are templates whose id fields are
/// filled in place (constant offsets, no formatting machinery).
fn put(line: &mut [u8], at: usize, src: &[u8]) {
    if let Some(dst) = line.get_mut(at..at + src.len()) {
        dst.copy_from_slice(src);
    }
}

impl Trace {
    /// Whether this trace's spans are exported.
    pub fn recording(&self) -> bool {
        self.start.is_some()
    }

    /// Starts an attempt: a new span id for its headers (see `write_wire`, `write_headers`).
    pub fn begin_attempt(&mut self) {
        let span = new_span_id();
        hex_into(&span, &mut self.attempt_hex);
        if self.recording() {
            self.attempts.push(AttemptSpan {
                span_id: span,
                start: SystemTime::now(),
                end: None,
                endpoint: None,
                host: None,
                status: None,
                error: None,
            });
        }
    }

    /// The current attempt's trace headers, in every configured format, as request-head
    /// lines (`name: value\r\n`) appended to `out`: legate's HTTP/1.1 client writes them
    /// straight into the head it sends, with no `HeaderValue` allocated, validated, hashed
    /// into the request's map and dropped again per attempt.
    pub fn write_wire(&self, out: &mut Vec<u8>) {
        const TP: &[u8; 70] =
            b"traceparent: 00-................................-................-0.\r\n";
        const B3M: &[u8; 133] = b"x-b3-traceid: ................................\r\n\
x-b3-spanid: ................\r\nx-b3-parentspanid: ................\r\nx-b3-sampled: .\r\n";
        const B3S: &[u8; 74] =
            b"b3: ................................-................-.-................\r\n";
        const UBER_LINE: &[u8; 86] =
            b"uber-trace-id: ................................:................:................:0.\r\n";
        let (t, s, p) = (&self.trace_hex, &self.attempt_hex, &self.span_hex);
        let flag = if self.sampled { b'1' } else { b'0' };
        let ts = self.tracestate.as_ref().map(|v| v.as_bytes());
        out.reserve(self.policy.propagate.len() * UBER_LINE.len() + ts.map_or(0, |v| v.len() + 14));
        for f in &self.policy.propagate {
            match f {
                Propagation::W3c => {
                    let mut l = *TP;
                    put(&mut l, 16, t);
                    put(&mut l, 49, s);
                    l[67] = flag;
                    out.extend_from_slice(&l);
                    if let Some(ts) = ts {
                        out.extend_from_slice(b"tracestate: ");
                        out.extend_from_slice(ts);
                        out.extend_from_slice(b"\r\n");
                    }
                }
                Propagation::B3 => {
                    let mut l = *B3M;
                    put(&mut l, 14, t);
                    put(&mut l, 61, s);
                    put(&mut l, 98, p);
                    l[130] = flag;
                    out.extend_from_slice(&l);
                }
                Propagation::B3Single => {
                    let mut l = *B3S;
                    put(&mut l, 4, t);
                    put(&mut l, 37, s);
                    l[54] = flag;
                    put(&mut l, 56, p);
                    out.extend_from_slice(&l);
                }
                Propagation::Jaeger => {
                    let mut l = *UBER_LINE;
                    put(&mut l, 15, t);
                    put(&mut l, 48, s);
                    put(&mut l, 65, p);
                    l[83] = flag;
                    out.extend_from_slice(&l);
                }
            }
        }
    }

    /// The current attempt's trace headers written into `headers` (replacing a previous
    /// attempt's), for requests that go through hyper (HTTP/2, streamed bodies, upgrades):
    /// parsed back from `write_wire`, so both paths send the same bytes.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let mut lines = Vec::new();
        self.write_wire(&mut lines);
        for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], line.get(colon + 2..).unwrap_or_default());
            if let Some(h) = ALL.iter().find(|h| h.as_str().as_bytes() == name) {
                headers.insert(h.clone(), header_value(value));
            }
        }
    }

    /// Ends the attempt begun last.
    pub fn end_attempt(
        &mut self,
        endpoint: Option<std::net::SocketAddr>,
        host: Option<String>,
        status: Option<u16>,
        error: Option<&'static str>,
    ) {
        if let Some(a) = self.attempts.last_mut() {
            a.end = Some(SystemTime::now());
            a.endpoint = endpoint;
            a.host = host;
            a.status = status;
            a.error = error;
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// Hands the finished spans to the exporter (sampled traces with `otlp:` only).
    pub fn finish(self, server: ServerSpan<'_>) {
        let (Some(start), Some(sink)) = (self.start, self.policy.sink.as_ref()) else {
            return;
        };
        let end = SystemTime::now();
        let mut attrs = vec![
            ("http.request.method", server.method.to_string().into()),
            ("url.path", server.path.to_string().into()),
            ("legate.listener", server.listener.to_string().into()),
            ("legate.route", server.route.to_string().into()),
            ("legate.upstream", server.upstream.to_string().into()),
            ("legate.attempts", i64::from(server.attempts).into()),
            ("legate.request_id", server.request_id.to_string().into()),
        ];
        if server.status != 0 {
            attrs.push(("http.response.status_code", i64::from(server.status).into()));
        }
        let error = server
            .error
            .map(str::to_string)
            .or_else(|| (server.status >= 500).then(|| server.status.to_string()));
        if let Some(e) = &error {
            attrs.push(("error.type", e.clone().into()));
        }
        let name = if server.route.is_empty() {
            server.method.to_string()
        } else {
            format!("{} {}", server.method, server.route)
        };
        let tracestate = self
            .tracestate
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut spans = Vec::with_capacity(1 + self.attempts.len());
        spans.push(SpanRecord {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent: self.parent,
            kind: SpanKind::Server,
            name,
            start,
            end,
            attributes: attrs,
            error: error.is_some(),
            tracestate: tracestate.clone(),
        });
        for (i, a) in self.attempts.iter().enumerate() {
            let mut attrs = vec![
                ("http.request.method", server.method.to_string().into()),
                ("legate.upstream", server.upstream.to_string().into()),
            ];
            if let Some(h) = &a.host {
                attrs.push(("server.address", h.clone().into()));
            }
            if let Some(ep) = a.endpoint {
                attrs.push(("server.port", i64::from(ep.port()).into()));
                attrs.push(("network.peer.address", ep.ip().to_string().into()));
                attrs.push(("network.peer.port", i64::from(ep.port()).into()));
            }
            if let Some(s) = a.status {
                attrs.push(("http.response.status_code", i64::from(s).into()));
            }
            if i > 0 {
                attrs.push(("http.request.resend_count", (i as i64).into()));
            }
            let error = a
                .error
                .map(str::to_string)
                .or_else(|| a.status.filter(|s| *s >= 500).map(|s| s.to_string()));
            if let Some(e) = &error {
                attrs.push(("error.type", e.clone().into()));
            }
            spans.push(SpanRecord {
                trace_id: self.trace_id,
                span_id: a.span_id,
                parent: Some(self.span_id),
                kind: SpanKind::Client,
                name: server.method.to_string(),
                start: a.start,
                end: a.end.unwrap_or(end),
                attributes: attrs,
                error: error.is_some(),
                tracestate: tracestate.clone(),
            });
        }
        sink.push(spans);
    }
}

/// What the server span says about the request, gathered when it ends.
pub struct ServerSpan<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub listener: &'a str,
    pub route: &'a str,
    pub upstream: &'a str,
    pub status: u16,
    pub error: Option<&'static str>,
    pub attempts: u32,
    pub request_id: &'a str,
}

fn header_value(bytes: &[u8]) -> HeaderValue {
    // Hex digits and punctuation: always a valid header value.
    HeaderValue::from_bytes(bytes).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    // Hex digits only: always UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// What one format found in the headers.
#[derive(Debug, PartialEq, Eq)]
pub enum Extracted {
    Trace(Carried),
    /// A sampling decision without ids (`b3: 0`, or `X-B3-Sampled` alone).
    SamplingOnly(bool),
    Nothing,
}

pub fn extract(format: Propagation, headers: &HeaderMap) -> Extracted {
    match format {
        Propagation::W3c => headers
            .get(&TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()))
            .map_or(Extracted::Nothing, Extracted::Trace),
        Propagation::B3 => match b3_multi(headers) {
            Extracted::Nothing => headers
                .get(&B3)
                .map_or(Extracted::Nothing, |v| parse_b3_single(v.as_bytes())),
            found => found,
        },
        Propagation::B3Single => headers
            .get(&B3)
            .map_or(Extracted::Nothing, |v| parse_b3_single(v.as_bytes())),
        Propagation::Jaeger => headers
            .get(&UBER)
            .and_then(|v| parse_uber(v.as_bytes()))
            .map_or(Extracted::Nothing, Extracted::Trace),
    }
}

fn hex_val(c: u8, upper_ok: bool) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' if upper_ok => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Exactly `N * 2` hex digits into N bytes.
fn fixed_hex<const N: usize>(s: &[u8], upper_ok: bool) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = hex_val(pair[0], upper_ok)? << 4 | hex_val(pair[1], upper_ok)?;
    }
    Some(out)
}

/// 1 to `N * 2` hex digits, left-padded with zeros (Jaeger drops leading zeros; B3 allows a
/// 64-bit trace id in a 128-bit slot).
fn padded_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.is_empty() || s.len() > N * 2 {
        return None;
    }
    let mut digits = [b'0'; 64];
    let pad = N * 2 - s.len();
    digits[pad..N * 2].copy_from_slice(s);
    fixed_hex::<N>(&digits[..N * 2], true)
}

fn nonzero<const N: usize>(id: [u8; N]) -> Option<[u8; N]> {
    (id != [0u8; N]).then_some(id)
}

/// `version-traceid-parentid-flags` (W3C Trace Context §3.2). Lower-case hex only; version
/// `ff` is invalid; a later version may append fields after a `-`.
pub fn parse_traceparent(v: &[u8]) -> Option<Carried> {
    let v = trim(v);
    if v.len() < 55 {
        return None;
    }
    let version = fixed_hex::<1>(&v[0..2], false)?[0];
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = nonzero(fixed_hex::<16>(&v[3..35], false)?)?;
    let span_id = nonzero(fixed_hex::<8>(&v[36..52], false)?)?;
    let flags = fixed_hex::<1>(&v[53..55], false)?[0];
    Some(Carried {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
    })
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|c| !matches!(c, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

/// `tracestate`, kept only when every member is well formed, then cut to the W3C limits.
fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut members: Vec<&str> = Vec::new();
    for value in headers.get_all(&TRACESTATE) {
        let text = value.to_str().ok()?;
        for m in text.split(',') {
            let m = m.trim_matches([' ', '\t']);
            if m.is_empty() {
                continue;
            }
            if !valid_member(m) {
                return None;
            }
            members.push(m);
        }
    }
    if members.is_empty() || members.len() > TRACESTATE_MAX_MEMBERS {
        return None;
    }
    let len = |ms: &[&str]| ms.iter().map(|m| m.len()).sum::<usize>() + ms.len().saturating_sub(1);
    if len(&members) > TRACESTATE_MAX_LEN {
        members.retain(|m| m.len() <= TRACESTATE_LONG_MEMBER);
        while len(&members) > TRACESTATE_MAX_LEN {
            members.pop();
        }
    }
    if members.is_empty() {
        return None;
    }
    HeaderValue::try_from(members.join(",")).ok()
}

/// `key=value` as W3C §3.3.1.3 allows: a lower-case key (with an optional `tenant@system`
/// form) of at most 256 characters, a value of at most 256 printable characters without `,`
/// and `=`, not ending in a space.
fn valid_member(m: &str) -> bool {
    let Some((key, value)) = m.split_once('=') else {
        return false;
    };
    let key_ok = !key.is_empty()
        && key.len() <= 256
        && key.as_bytes()[0].is_ascii_lowercase() | key.as_bytes()[0].is_ascii_digit()
        && key.bytes().all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, b'_' | b'-' | b'*' | b'/' | b'@')
        })
        && key.matches('@').count() <= 1;
    let value_ok = !value.is_empty()
        && value.len() <= 256
        && !value.ends_with(' ')
        && value
            .bytes()
            .all(|c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=');
    key_ok && value_ok
}

fn b3_multi(headers: &HeaderMap) -> Extracted {
    let sampled = match (headers.get(&B3_FLAGS), headers.get(&B3_SAMPLED)) {
        (Some(f), _) if f.as_bytes() == b"1" => Some(true),
        (_, Some(s)) => match s.as_bytes() {
            b"1" | b"true" | b"d" => Some(true),
            b"0" | b"false" => Some(false),
            _ => None,
        },
        _ => None,
    };
    let (Some(t), Some(s)) = (headers.get(&B3_TRACE), headers.get(&B3_SPAN)) else {
        return sampled.map_or(Extracted::Nothing, Extracted::SamplingOnly);
    };
    let trace = trim(t.as_bytes());
    let trace_id = match trace.len() {
        16 | 32 => padded_hex::<16>(trace).and_then(nonzero),
        _ => None,
    };
    let span_id = fixed_hex::<8>(trim(s.as_bytes()), true).and_then(nonzero);
    match (trace_id, span_id) {
        (Some(trace_id), Some(span_id)) => Extracted::Trace(Carried {
            trace_id,
            span_id,
            sampled,
        }),
        _ => sampled.map_or(Extracted::Nothing, Extracted::SamplingOnly),
    }
}

/// `b3: {trace}-{span}[-{sampling}[-{parent}]]`, or a lone sampling state (`0`, `1`, `d`).
pub fn parse_b3_single(v: &[u8]) -> Extracted {
    let v = trim(v);
    match v {
        b"0" => return Extracted::SamplingOnly(false),
        b"1" | b"d" => return Extracted::SamplingOnly(true),
        _ => {}
    }
    let parts: Vec<&[u8]> = v.split(|c| *c == b'-').collect();
    if !(2..=4).contains(&parts.len()) {
        return Extracted::Nothing;
    }
    let trace_id = match parts[0].len() {
        16 | 32 => padded_hex::<16>(parts[0]).and_then(nonzero),
        _ => None,
    };
    let span_id = fixed_hex::<8>(parts[1], true).and_then(nonzero);
    let sampled = match parts.get(2).copied() {
        None => None,
        Some(b"1" | b"d") => Some(true),
        Some(b"0") => Some(false),
        Some(_) => return Extracted::Nothing,
    };
    if let Some(p) = parts.get(3) {
        if fixed_hex::<8>(p, true).and_then(nonzero).is_none() {
            return Extracted::Nothing;
        }
    }
    match (trace_id, span_id) {
        (Some(trace_id), Some(span_id)) => Extracted::Trace(Carried {
            trace_id,
            span_id,
            sampled,
        }),
        _ => Extracted::Nothing,
    }
}

/// `{trace}:{span}:{parent}:{flags}` (Jaeger; `%3A` accepted for `:`). Flags bit 1: sampled.
pub fn parse_uber(v: &[u8]) -> Option<Carried> {
    let text = std::str::from_utf8(trim(v)).ok()?;
    let decoded;
    let text = if text.contains('%') {
        decoded = text.replace("%3A", ":").replace("%3a", ":");
        decoded.as_str()
    } else {
        text
    };
    let parts: Vec<&str> = text.split(':').collect();
    let [trace, span, parent, flags] = parts.as_slice() else {
        return None;
    };
    let trace_id = padded_hex::<16>(trace.as_bytes()).and_then(nonzero)?;
    let span_id = padded_hex::<8>(span.as_bytes()).and_then(nonzero)?;
    padded_hex::<8>(parent.as_bytes())?;
    if flags.is_empty() || flags.len() > 2 {
        return None;
    }
    let flags = padded_hex::<1>(flags.as_bytes())?[0];
    Some(Carried {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const S: &str = "00f067aa0ba902b7";

    fn tid() -> TraceId {
        fixed_hex::<16>(T.as_bytes(), false).unwrap()
    }

    #[test]
    fn traceparent_valid_and_invalid() {
        let ok = format!("00-{T}-{S}-01");
        let c = parse_traceparent(ok.as_bytes()).unwrap();
        assert_eq!(c.trace_id, tid());
        assert_eq!(c.sampled, Some(true));
        assert_eq!(
            parse_traceparent(format!("00-{T}-{S}-00").as_bytes())
                .unwrap()
                .sampled,
            Some(false)
        );
        // A later version may add fields after a dash.
        assert!(parse_traceparent(format!("01-{T}-{S}-01-extra").as_bytes()).is_some());
        for bad in [
            format!("00-{}-{S}-01", T.to_uppercase()),
            format!("00-{}-{S}-01", "0".repeat(32)),
            format!("00-{T}-{}-01", "0".repeat(16)),
            format!("ff-{T}-{S}-01"),
            format!("00-{T}-{S}-01-extra"),
            format!("00-{T}-{S}-0g"),
            format!("00-{}-{S}-01", &T[1..]),
            format!("00_{T}-{S}-01"),
            "00".into(),
            String::new(),
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn b3_forms() {
        let single = format!("{T}-{S}-1-{S}");
        assert!(matches!(
            parse_b3_single(single.as_bytes()),
            Extracted::Trace(Carried {
                sampled: Some(true),
                ..
            })
        ));
        let short = format!("{}-{S}", &T[16..]);
        match parse_b3_single(short.as_bytes()) {
            Extracted::Trace(c) => {
                assert_eq!(&c.trace_id[..8], &[0; 8]);
                assert_eq!(c.sampled, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_b3_single(b"0"), Extracted::SamplingOnly(false));
        for bad in [
            format!("{T}-{S}-x"),
            format!("{T}-0000000000000000-1"),
            format!("{}-{S}-1", &T[..20]),
            T.to_string(),
            format!("{T}-{S}-1-{S}-extra"),
        ] {
            assert_eq!(parse_b3_single(bad.as_bytes()), Extracted::Nothing, "{bad}");
        }
        let mut h = HeaderMap::new();
        h.insert(B3_TRACE, HeaderValue::from_static(T));
        h.insert(B3_SPAN, HeaderValue::from_static(S));
        h.insert(B3_SAMPLED, HeaderValue::from_static("0"));
        assert!(matches!(
            b3_multi(&h),
            Extracted::Trace(Carried {
                sampled: Some(false),
                ..
            })
        ));
        h.insert(B3_SPAN, HeaderValue::from_static("xyz"));
        assert_eq!(b3_multi(&h), Extracted::SamplingOnly(false));
    }

    #[test]
    fn uber_forms() {
        let c = parse_uber(format!("{T}:{S}:0:1").as_bytes()).unwrap();
        assert_eq!((c.trace_id, c.sampled), (tid(), Some(true)));
        let c = parse_uber(b"abc%3A1%3A0%3A0").unwrap();
        assert_eq!(c.trace_id[15], 0xbc);
        assert_eq!(c.sampled, Some(false));
        for bad in [
            "0:1:0:1",
            "abc:0:0:1",
            "abc:1:0",
            "abc:1:0:1:2",
            "xyz:1:0:1",
            "abc:1:0:100",
        ] {
            assert!(parse_uber(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn tracestate_limits() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACESTATE,
            HeaderValue::from_static("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"),
        );
        assert_eq!(
            tracestate(&h).unwrap(),
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
        );
        h.insert(TRACESTATE, HeaderValue::from_static("Bad=1"));
        assert!(
            tracestate(&h).is_none(),
            "a malformed member drops the whole value"
        );
        // Over 512: long members go first, then members from the end.
        let long = format!("long={}", "x".repeat(200));
        let many: Vec<String> = (0..30)
            .map(|i| format!("k{i}={}", "v".repeat(14)))
            .collect();
        let value = format!("{},{long}", many.join(","));
        h.insert(TRACESTATE, HeaderValue::try_from(value).unwrap());
        let kept = tracestate(&h).unwrap();
        assert!(kept.len() <= 512);
        assert!(!kept.to_str().unwrap().contains("long="));
        let mut h = HeaderMap::new();
        let too_many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        h.insert(
            TRACESTATE,
            HeaderValue::try_from(too_many.join(",")).unwrap(),
        );
        assert!(tracestate(&h).is_none());
    }

    /// Starts an attempt and returns its headers both ways they are written: the map hyper
    /// sends, checked to be exactly what the wire lines parse to.
    fn attempt_headers(t: &mut Trace) -> HeaderMap {
        t.begin_attempt();
        let mut map = HeaderMap::new();
        t.write_headers(&mut map);
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        t.write_wire(&mut head);
        head.extend_from_slice(b"\r\n");
        let mut parsed = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut parsed);
        assert!(req.parse(&head).unwrap().is_complete());
        let mut from_wire = HeaderMap::new();
        for h in req.headers.iter() {
            from_wire.append(
                HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(h.value).unwrap(),
            );
        }
        assert_eq!(map, from_wire, "wire lines and header map agree");
        map
    }

    fn policy(propagate: Vec<Propagation>, rate: f64) -> Arc<TracePolicy> {
        Arc::new(TracePolicy::new(
            &TracingConfig {
                propagate,
                create: true,
                sample_rate: rate,
            },
            None,
        ))
    }

    /// Each input format to each output format: same trace id, a new span id per attempt,
    /// the sampled flag kept.
    #[test]
    fn propagation_matrix() {
        use Propagation::*;
        let inputs: Vec<(Propagation, Vec<(HeaderName, String)>)> = vec![
            (W3c, vec![(TRACEPARENT, format!("00-{T}-{S}-01"))]),
            (
                B3,
                vec![
                    (B3_TRACE, T.into()),
                    (B3_SPAN, S.into()),
                    (B3_SAMPLED, "1".into()),
                ],
            ),
            (B3Single, vec![(super::B3, format!("{T}-{S}-1"))]),
            (Jaeger, vec![(UBER, format!("{T}:{S}:0:1"))]),
        ];
        for (format, headers) in &inputs {
            for out in [W3c, B3, B3Single, Jaeger] {
                let p = policy(vec![*format, out], 0.0);
                let mut h = HeaderMap::new();
                for (k, v) in headers {
                    h.insert(k.clone(), HeaderValue::try_from(v.as_str()).unwrap());
                }
                let mut t = begin(&p, &mut h).unwrap();
                assert_eq!(t.trace_id, tid(), "{format:?}");
                assert!(t.sampled, "sampled flag kept ({format:?})");
                assert_eq!(t.parent.map(|p| hex(&p)), Some(S.to_string()));
                let first = attempt_headers(&mut t);
                let second = attempt_headers(&mut t);
                for hm in [&first, &second] {
                    for f in [*format, out] {
                        match extract(f, hm) {
                            Extracted::Trace(c) => {
                                assert_eq!(c.trace_id, tid(), "{format:?} -> {f:?}");
                                assert_ne!(hex(&c.span_id), S, "a new span id");
                                assert!(c.sampled.unwrap_or(true));
                            }
                            other => panic!("{format:?} -> {f:?}: {other:?}"),
                        }
                    }
                }
                let span = |hm: &HeaderMap, f| match extract(f, hm) {
                    Extracted::Trace(c) => c.span_id,
                    _ => unreachable!(),
                };
                assert_ne!(
                    span(&first, out),
                    span(&second, out),
                    "one span id per attempt"
                );
            }
        }
    }

    /// All four formats at once fit the wire buffer, and a carried tracestate goes along.
    #[test]
    fn every_format_with_tracestate() {
        use Propagation::*;
        let p = policy(vec![W3c, B3, B3Single, Jaeger], 1.0);
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::try_from(format!("00-{T}-{S}-01")).unwrap(),
        );
        h.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        let mut t = begin(&p, &mut h).unwrap();
        for _ in 0..3 {
            let out = attempt_headers(&mut t);
            assert_eq!(out.len(), 8, "{out:?}");
            assert_eq!(out.get(&TRACESTATE).unwrap(), "congo=t61rcWkgMzE");
            for f in [W3c, B3, B3Single, Jaeger] {
                assert!(
                    matches!(extract(f, &out), Extracted::Trace(c) if c.trace_id == tid()),
                    "{f:?}"
                );
            }
        }
    }

    #[test]
    fn garbage_is_replaced_and_not_forwarded() {
        let p = policy(vec![Propagation::W3c, Propagation::B3], 0.0);
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static("00-zzzz-1-01"));
        h.insert(TRACESTATE, HeaderValue::from_static("a=b"));
        h.insert(B3_TRACE, HeaderValue::from_static("not-hex"));
        h.insert(UBER, HeaderValue::from_static("garbage"));
        let mut t = begin(&p, &mut h).unwrap();
        assert!(h.is_empty(), "every trace header removed: {h:?}");
        assert!(t.parent.is_none(), "a new trace");
        assert!(!t.sampled, "sample_rate 0");
        let out = attempt_headers(&mut t);
        let tp = out.get(&TRACEPARENT).unwrap().to_str().unwrap().to_string();
        assert!(tp.ends_with("-00"), "{tp}");
        assert!(
            out.get(&TRACESTATE).is_none(),
            "no tracestate without a valid traceparent"
        );
        assert!(
            out.get(&UBER).is_none(),
            "only the configured formats are written"
        );
    }

    #[test]
    fn sample_rate_and_create() {
        let all = policy(vec![Propagation::W3c], 1.0);
        assert!((0..100).all(|_| begin(&all, &mut HeaderMap::new()).unwrap().sampled));
        let none = policy(vec![Propagation::W3c], 0.0);
        assert!((0..100).all(|_| !begin(&none, &mut HeaderMap::new()).unwrap().sampled));
        let off = Arc::new(TracePolicy::new(
            &TracingConfig {
                propagate: vec![Propagation::W3c],
                create: false,
                sample_rate: 1.0,
            },
            None,
        ));
        assert!(begin(&off, &mut HeaderMap::new()).is_none());
        // A b3 "do not sample" decision is honoured for the trace legate starts.
        let b3 = policy(vec![Propagation::B3], 1.0);
        let mut h = HeaderMap::new();
        h.insert(B3, HeaderValue::from_static("0"));
        assert!(!begin(&b3, &mut h).unwrap().sampled);
    }
}
