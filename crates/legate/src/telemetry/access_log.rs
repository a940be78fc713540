//! The access log: one JSON line per request, written when the response body ends (so byte
//! counts and duration cover the whole exchange, like nginx's log phase).

use crate::config::AccessLogMode;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where access log lines go.
#[derive(Clone, Default)]
pub enum Sink {
    #[default]
    Stdout,
    /// Kept in memory; for tests and the demo.
    Memory(Arc<Mutex<Vec<String>>>),
}

#[derive(Clone, Default)]
pub struct AccessLog {
    pub enabled: bool,
    pub sink: Sink,
}

impl AccessLog {
    pub fn new(mode: AccessLogMode, sink: Sink) -> Self {
        Self {
            enabled: mode == AccessLogMode::Json,
            sink,
        }
    }

    pub fn write(&self, entry: &Entry<'_>) {
        if !self.enabled {
            return;
        }
        self.write_line(entry.to_json());
    }

    /// One closed connection of a TCP listener.
    pub fn write_tcp(&self, entry: &TcpEntry<'_>) {
        if !self.enabled {
            return;
        }
        self.write_line(entry.to_json());
    }

    fn write_line(&self, line: String) {
        match &self.sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                // A closed stdout must not take the proxy down; the line is lost, requests go on.
                let _ = out.write_all(line.as_bytes());
            }
            Sink::Memory(lines) => {
                if let Ok(mut l) = lines.lock() {
                    l.push(line);
                }
            }
        }
    }
}

/// Everything one access log line says.
pub struct Entry<'a> {
    pub ts: SystemTime,
    pub request_id: &'a str,
    pub listener: &'a str,
    pub route: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    pub duration_ms: f64,
    pub upstream: &'a str,
    pub endpoint: Option<std::net::SocketAddr>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub error: Option<&'a str>,
    /// The client went away before the response body ended.
    pub aborted: bool,
    /// Tries sent upstream.
    pub attempts: u32,
    /// A retriable request whose body was too large to replay (so it was not retried).
    pub replay_skipped: bool,
    /// The trace id (32 hex digits) when the route traces.
    pub trace_id: Option<&'a str>,
}

impl Entry<'_> {
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(320);
        s.push_str("{\"ts\":\"");
        write_rfc3339(&mut s, self.ts);
        s.push_str("\",\"type\":\"access\"");
        field(&mut s, "request_id", self.request_id);
        if let Some(t) = self.trace_id {
            field(&mut s, "trace_id", t);
        }
        field(&mut s, "listener", self.listener);
        field(&mut s, "route", self.route);
        field(&mut s, "method", self.method);
        field(&mut s, "path", self.path);
        field(&mut s, "protocol", self.protocol);
        let _ = write!(
            s,
            ",\"status\":{},\"duration_ms\":{:.3}",
            self.status, self.duration_ms
        );
        field(&mut s, "upstream", self.upstream);
        field_addr(&mut s, "endpoint", self.endpoint);
        let _ = write!(
            s,
            ",\"bytes_in\":{},\"bytes_out\":{},\"attempts\":{}",
            self.bytes_in, self.bytes_out, self.attempts
        );
        field_opt(&mut s, "error", self.error);
        if self.aborted {
            s.push_str(",\"aborted\":true");
        }
        if self.replay_skipped {
            s.push_str(",\"retry\":\"body-too-large\"");
        }
        s.push_str("}\n");
        s
    }
}

/// Everything the line for one closed TCP listener connection says.
pub struct TcpEntry<'a> {
    pub ts: SystemTime,
    pub listener: &'a str,
    /// The client's address, or `unix` for a Unix socket.
    pub peer: &'a str,
    pub upstream: &'a str,
    pub endpoint: Option<std::net::SocketAddr>,
    pub duration_ms: f64,
    pub bytes_to_upstream: u64,
    pub bytes_to_client: u64,
    /// `client-closed`, `upstream-closed`, `idle-timeout`, `lifetime`, `reset`, `tls-<reason>`,
    /// `auth-failed`, `connect-refused`, …
    pub close: &'a str,
    pub error: Option<&'a str>,
}

impl TcpEntry<'_> {
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(256);
        s.push_str("{\"ts\":\"");
        write_rfc3339(&mut s, self.ts);
        s.push_str("\",\"type\":\"tcp\"");
        field(&mut s, "listener", self.listener);
        field(&mut s, "peer", self.peer);
        field(&mut s, "upstream", self.upstream);
        field_addr(&mut s, "endpoint", self.endpoint);
        let _ = write!(
            s,
            ",\"duration_ms\":{:.3},\"bytes_to_upstream\":{},\"bytes_to_client\":{}",
            self.duration_ms, self.bytes_to_upstream, self.bytes_to_client
        );
        field(&mut s, "close", self.close);
        field_opt(&mut s, "error", self.error);
        s.push_str("}\n");
        s
    }
}

/// `,"key":"value"` with the value escaped.
fn field(out: &mut String, key: &str, v: &str) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
    json_str(out, v);
}

/// `,"key":"addr"` or `,"key":null`.
fn field_addr(out: &mut String, key: &str, v: Option<std::net::SocketAddr>) {
    let _ = write!(out, ",\"{key}\":");
    match v {
        Some(a) => {
            let _ = write!(out, "\"{a}\"");
        }
        None => out.push_str("null"),
    }
}

/// `,"key":"value"` or `,"key":null`.
fn field_opt(out: &mut String, key: &str, v: Option<&str>) {
    match v {
        Some(v) => field(out, key, v),
        None => {
            let _ = write!(out, ",\"{key}\":null");
        }
    }
}

fn json_str(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `2026-11-26T03:42:39.123Z` without pulling in a date crate.
pub fn write_rfc3339(out: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_timestamps() {
        let mut s = String::new();
        write_rfc3339(
            &mut s,
            UNIX_EPOCH + Duration::from_millis(1_795_664_559_123),
        );
        assert_eq!(s, "2026-11-26T03:42:39.123Z");
        s.clear();
        write_rfc3339(&mut s, UNIX_EPOCH);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn tcp_line_is_valid_json() {
        let e = TcpEntry {
            ts: UNIX_EPOCH,
            listener: "db",
            peer: "unix",
            upstream: "pg",
            endpoint: None,
            duration_ms: 2.0,
            bytes_to_upstream: 7,
            bytes_to_client: 9,
            close: "auth-failed",
            error: Some("FATAL 28P01: password \"x\""),
        };
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["type"], "tcp");
        assert_eq!(v["endpoint"], serde_json::Value::Null);
        assert_eq!(v["bytes_to_client"], 9);
        assert_eq!(v["error"], "FATAL 28P01: password \"x\"");
    }

    #[test]
    fn line_is_valid_json_with_escapes() {
        let e = Entry {
            ts: UNIX_EPOCH,
            request_id: "r1",
            listener: "app",
            route: "default",
            method: "GET",
            path: "/a\"b\n",
            protocol: "HTTP/1.1",
            status: 502,
            duration_ms: 1.5,
            upstream: "api",
            endpoint: Some("127.0.0.1:9".parse().unwrap()),
            bytes_in: 0,
            bytes_out: 10,
            error: Some("connect-refused"),
            aborted: false,
            attempts: 2,
            replay_skipped: false,
            trace_id: None,
        };
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["path"], "/a\"b\n");
        assert_eq!(v["status"], 502);
        assert_eq!(v["endpoint"], "127.0.0.1:9");
        assert_eq!(v["error"], "connect-refused");
    }
}
