//! Interop: retries and timeouts, curl -> legate (`legate run -c FILE`) -> httpbin
//! (gunicorn + python3-httpbin).
//!
//! Requires `curl`, `gunicorn` and `python3-httpbin`; `bash scripts/test`
//! installs them. Missing tools make these tests fail, not skip.
//!
//! Each test starts its own httpbin and legate, so the retry counters read from
//! `/metrics` belong to that test's requests alone.

#[path = "support/proc.rs"]
mod proc_support;

use std::time::{Duration, Instant};

use proc_support::{
    curl, free_port, local, parse_metrics, truncate, wait_for, Httpbin, Legate, Sample, TempDir,
};
use serde_json::Value;

const RETRIES: &str = "legate_http_retries_total";

/// httpbin + legate with the `status` (retry on gateway-error) and `slow`
/// (per-try timeout under a route timeout) routes.
struct Stack {
    // Field order matters for drop: stop legate before httpbin, then remove
    // the config directory.
    legate: Legate,
    _httpbin: Httpbin,
    _tmp: TempDir,
}

impl Stack {
    fn start(tag: &str) -> Stack {
        let httpbin = Httpbin::start();
        let tmp = TempDir::new(tag);
        let listen = local(free_port());
        let admin = local(free_port());
        let config = format!(
            "admin: {{ listen: {admin} }}
runtime: {{ workers: 1 }}
access_log: json
listeners:
  - name: app
    listen: {listen}
    routes:
      - name: status
        match: {{ path_prefix: /status }}
        upstream: httpbin
        timeout: 10s
        retry: {{ attempts: 3, on: [gateway-error], backoff: {{ base: 10ms, max: 50ms }} }}
      - name: slow
        match: {{ path_prefix: /delay }}
        upstream: httpbin
        timeout: 2500ms
        retry: {{ attempts: 3, on: [timeout], per_try_timeout: 1s, backoff: {{ base: 10ms, max: 20ms }} }}
upstreams:
  - name: httpbin
    endpoints: [\"{upstream}\"]
",
            upstream = httpbin.addr
        );
        let path = tmp.write("legate.yaml", config);
        let args = vec![
            "run".to_string(),
            "-c".to_string(),
            path.display().to_string(),
        ];
        let legate = Legate::start(&args, listen, admin);
        Stack {
            legate,
            _httpbin: httpbin,
            _tmp: tmp,
        }
    }

    fn url(&self, path: &str) -> String {
        self.legate.url(path)
    }

    /// The access-log line for `method path`, waiting for it to be written
    /// (legate logs when the response body ends). Exactly one must exist.
    fn access_line(&self, method: &str, path: &str) -> Value {
        let what = format!("access-log line for {method} {path}");
        wait_for(&what, Duration::from_secs(10), || {
            let matching: Vec<Value> = self
                .legate
                .access_log()
                .into_iter()
                .filter(|l| l["method"] == method && l["path"] == path)
                .collect();
            match matching.as_slice() {
                [one] => Ok(one.clone()),
                [] => Err(format!(
                    "none yet; stdout so far: {:?}",
                    self.legate.proc.stdout_lines()
                )),
                many => panic!("expected one access-log line for {method} {path}, got {many:?}"),
            }
        })
    }

    fn metrics_text(&self) -> String {
        let r = self
            .legate
            .admin_get("/metrics")
            .expect("GET admin /metrics");
        assert_eq!(r.status, 200, "admin /metrics status; body: {}", r.text());
        r.text()
    }
}

/// The `legate_http_retries_total` samples of `route` (upstream httpbin),
/// as (reason, value).
fn retries_of(samples: &[Sample], route: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = samples
        .iter()
        .filter(|s| s.name == RETRIES)
        .filter(|s| s.labels.get("route").map(String::as_str) == Some(route))
        .map(|s| {
            assert_eq!(
                s.labels.get("upstream").map(String::as_str),
                Some("httpbin"),
                "retry series with an unexpected upstream label: {s:?}"
            );
            (s.labels.get("reason").cloned().unwrap_or_default(), s.value)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn retry_lines(text: &str) -> String {
    text.lines()
        .filter(|l| l.contains("legate_http_retries"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn get_503_is_retried_three_times_then_passed_through() {
    let stack = Stack::start("resilience-503");
    let resp = curl(&[], &stack.url("/status/503"));
    assert_eq!(resp.status, 503, "body: {}", truncate(&resp.text(), 2000));
    assert!(
        resp.header("legate-error").is_none(),
        "the client must get httpbin's own 503, not a legate error: {:?}",
        resp.headers
    );

    let line = stack.access_line("GET", "/status/503");
    assert_eq!(line["route"], "status", "{line}");
    assert_eq!(line["status"], 503, "{line}");
    assert_eq!(line["attempts"], 3, "3 tries expected: {line}");
    assert_eq!(line["error"], Value::Null, "{line}");

    // The access-log line is written last, so every retry is counted by now.
    let text = stack.metrics_text();
    assert_eq!(
        retries_of(&parse_metrics(&text), "status"),
        vec![("gateway-error".to_string(), 2.0)],
        "expected {RETRIES}{{route=\"status\",upstream=\"httpbin\",reason=\"gateway-error\"}} 2; \
         retry series:\n{}",
        retry_lines(&text)
    );
}

#[test]
fn get_200_is_sent_once_without_retries() {
    let stack = Stack::start("resilience-200");
    let resp = curl(&[], &stack.url("/status/200"));
    assert_eq!(resp.status, 200, "body: {}", truncate(&resp.text(), 2000));
    assert!(resp.header("legate-error").is_none(), "{:?}", resp.headers);

    let line = stack.access_line("GET", "/status/200");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["attempts"], 1, "{line}");

    let text = stack.metrics_text();
    assert_eq!(
        retries_of(&parse_metrics(&text), "status"),
        Vec::<(String, f64)>::new(),
        "a 200 must not add retries; retry series:\n{}",
        retry_lines(&text)
    );
}

#[test]
fn slow_upstream_per_try_timeouts_are_cut_by_route_timeout() {
    let stack = Stack::start("resilience-delay");
    let started = Instant::now();
    let resp = curl(&[], &stack.url("/delay/3"));
    let elapsed = started.elapsed();
    assert_eq!(resp.status, 504, "body: {}", truncate(&resp.text(), 2000));
    assert_eq!(
        resp.header("legate-error"),
        Some("timeout"),
        "{:?}",
        resp.headers
    );
    // A per-try timeout on the last try would also be `504 legate-error:
    // timeout`; the body tells the route timeout apart.
    assert!(
        resp.text().contains("did not answer within 2.5s"),
        "expected the route timeout (2.5s) to answer, body: {}",
        resp.text()
    );
    // Two 1 s tries ran before the 2.5 s route timeout cut the third: never
    // sooner than two tries, never as late as three full tries (3 s).
    assert!(
        elapsed >= Duration::from_secs(2),
        "504 after only {elapsed:?}: two 1 s tries should have run first"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "504 took {elapsed:?}; the 2.5 s route timeout should cut the third try"
    );

    let line = stack.access_line("GET", "/delay/3");
    assert_eq!(line["route"], "slow", "{line}");
    assert_eq!(line["status"], 504, "{line}");
    assert_eq!(line["error"], "timeout", "{line}");
    assert!(
        line["endpoint"]
            .as_str()
            .is_some_and(|e| e.starts_with("127.0.0.1:")),
        "the log names the endpoint of the last try: {line}"
    );
    // Two tries timed out after 1 s each; the third had started (and counts)
    // when the route timeout fired.
    assert_eq!(line["attempts"], 3, "{line}");
    let duration_ms = line["duration_ms"].as_f64().unwrap_or_default();
    assert!(
        (2000.0..3000.0).contains(&duration_ms),
        "logged duration {duration_ms} ms: {line}"
    );

    let text = stack.metrics_text();
    assert_eq!(
        retries_of(&parse_metrics(&text), "slow"),
        vec![("timeout".to_string(), 2.0)],
        "expected {RETRIES}{{route=\"slow\",upstream=\"httpbin\",reason=\"timeout\"}} 2; \
         retry series:\n{}",
        retry_lines(&text)
    );
}

#[test]
fn post_503_is_not_retried() {
    let stack = Stack::start("resilience-post");
    let resp = curl(&["-X", "POST", "--data", "x"], &stack.url("/status/503"));
    assert_eq!(resp.status, 503, "body: {}", truncate(&resp.text(), 2000));
    assert!(
        resp.header("legate-error").is_none(),
        "the client must get httpbin's own 503: {:?}",
        resp.headers
    );

    let line = stack.access_line("POST", "/status/503");
    assert_eq!(line["status"], 503, "{line}");
    assert_eq!(
        line["attempts"], 1,
        "POST is not retried by default: {line}"
    );
    assert_eq!(line["bytes_in"], 1, "{line}");

    let text = stack.metrics_text();
    assert_eq!(
        retries_of(&parse_metrics(&text), "status"),
        Vec::<(String, f64)>::new(),
        "POST must not be retried; retry series:\n{}",
        retry_lines(&text)
    );
}
