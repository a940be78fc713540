//! Interop: curl -> legate (real binary) -> httpbin (gunicorn + python3-httpbin).
//!
//! Requires `curl`, `gunicorn` and `python3-httpbin`; `bash scripts/test`
//! installs them. Missing tools make these tests fail, not skip.

#[path = "support/proc.rs"]
mod proc_support;

use std::time::{Duration, Instant};

use proc_support::{
    curl, free_port, local, metric_sum, parse_metrics, truncate, wait_for, Httpbin, Legate, TempDir,
};
use serde_json::Value;

const CLIENT_ID: &str = "microservice-001";

/// httpbin + legate quick mode in front of it, adding X-Client-ID.
struct Stack {
    // Field order matters for drop: stop legate before httpbin.
    legate: Legate,
    httpbin: Httpbin,
}

impl Stack {
    fn start() -> Stack {
        let httpbin = Httpbin::start();
        let set_header = format!("X-Client-ID={CLIENT_ID}");
        let legate = Legate::quick(&httpbin.url(), &["--set-header", &set_header]);
        Stack { legate, httpbin }
    }

    fn url(&self, path: &str) -> String {
        self.legate.url(path)
    }
}

/// Case-insensitive lookup in httpbin's echoed `headers` object.
fn echoed_header<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    echo.get("headers")?
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

/// Deterministic printable-ASCII payload (so httpbin echoes it verbatim as a
/// JSON string) of exactly `len` bytes.
fn payload(len: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ALPHABET[(state >> 58) as usize]
        })
        .collect()
}

/// FNV-1a, to report a compact fingerprint of large bodies.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn assert_same_body(sent: &[u8], echo: &Value) {
    let got = echo.get("data").and_then(Value::as_str).unwrap_or_else(|| {
        panic!(
            "httpbin echo has no string `data`: {}",
            truncate(&echo.to_string(), 1000)
        )
    });
    let got = got.as_bytes();
    if got != sent {
        let first_diff = sent.iter().zip(got).position(|(a, b)| a != b);
        panic!(
            "echoed body differs: sent {} bytes (fnv {:016x}), got {} bytes (fnv {:016x}); \
             first differing offset {first_diff:?}",
            sent.len(),
            fnv1a(sent),
            got.len(),
            fnv1a(got)
        );
    }
}

#[test]
fn http1_get_sets_client_id_upstream_host_and_request_id() {
    let stack = Stack::start();
    // show_env=1: httpbin otherwise hides X-Request-Id (and other proxy headers).
    let resp = curl(&["--http1.1"], &stack.url("/get?show_env=1"));
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    assert_eq!(resp.http_version, "1.1");
    let echo = resp.json();
    assert_eq!(
        echoed_header(&echo, "X-Client-Id"),
        Some(CLIENT_ID),
        "X-Client-ID not set upstream; echo: {echo}"
    );
    let expected_host = stack.httpbin.addr.to_string();
    assert_eq!(
        echoed_header(&echo, "Host"),
        Some(expected_host.as_str()),
        "Host should default to the upstream authority; echo: {echo}"
    );
    let request_id = echoed_header(&echo, "X-Request-Id").unwrap_or_default();
    assert!(
        !request_id.trim().is_empty(),
        "X-Request-Id not added upstream; echo: {echo}"
    );

    // The request shows up as one JSON access-log line on stdout.
    let line = wait_for(
        "access-log line for GET /get",
        Duration::from_secs(10),
        || {
            stack
                .legate
                .access_log()
                .into_iter()
                .find(|l| l["path"].as_str().is_some_and(|p| p.starts_with("/get")))
                .ok_or_else(|| format!("stdout so far: {:?}", stack.legate.proc.stdout_lines()))
        },
    );
    for field in [
        "ts",
        "request_id",
        "method",
        "path",
        "status",
        "duration_ms",
        "upstream",
        "endpoint",
        "bytes_in",
        "bytes_out",
        "error",
    ] {
        assert!(
            line.get(field).is_some(),
            "access-log line lacks `{field}`: {line}"
        );
    }
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["status"], 200, "{line}");
}

#[test]
fn http2_prior_knowledge_get() {
    let stack = Stack::start();
    let resp = curl(&["--http2-prior-knowledge"], &stack.url("/get"));
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    assert_eq!(resp.http_version, "2", "curl did not speak HTTP/2");
    let echo = resp.json();
    assert_eq!(
        echoed_header(&echo, "X-Client-Id"),
        Some(CLIENT_ID),
        "{echo}"
    );
}

#[test]
fn post_one_mib_body_round_trips() {
    let stack = Stack::start();
    let tmp = TempDir::new("post");
    let body = payload(1024 * 1024);
    let file = tmp.write("body.bin", &body);
    let data_arg = format!("@{}", file.display());
    let resp = curl(
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &data_arg,
        ],
        &stack.url("/anything"),
    );
    assert_eq!(resp.status, 200, "body: {}", truncate(&resp.text(), 2000));
    assert_same_body(&body, &resp.json());
}

#[test]
fn chunked_upload_round_trips() {
    let stack = Stack::start();
    let tmp = TempDir::new("chunked");
    let body = payload(300 * 1024 + 7);
    let file = tmp.write("body.bin", &body);
    let data_arg = format!("@{}", file.display());
    let resp = curl(
        &[
            "--http1.1",
            "-X",
            "POST",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &data_arg,
        ],
        &stack.url("/anything"),
    );
    assert_eq!(resp.status, 200, "body: {}", truncate(&resp.text(), 2000));
    assert_same_body(&body, &resp.json());
}

#[test]
fn upstream_status_is_passed_through() {
    let stack = Stack::start();
    let resp = curl(&[], &stack.url("/status/418"));
    assert_eq!(resp.status, 418, "body: {}", resp.text());
    assert!(
        resp.header("legate-error").is_none(),
        "an upstream status must not be tagged as a legate error: {:?}",
        resp.headers
    );
}

#[test]
fn hop_by_hop_headers_are_not_forwarded() {
    let stack = Stack::start();
    let resp = curl(
        &[
            "--http1.1",
            "-H",
            "Connection: X-Foo",
            "-H",
            "X-Foo: bar",
            "-H",
            "X-Keep: yes",
            "-H",
            "X-Request-Id: caller-supplied-123",
        ],
        &stack.url("/headers?show_env=1"),
    );
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    let echo = resp.json();
    assert_eq!(
        echoed_header(&echo, "X-Foo"),
        None,
        "X-Foo is named in Connection and must be dropped; echo: {echo}"
    );
    assert_eq!(echoed_header(&echo, "X-Keep"), Some("yes"), "{echo}");
    assert_eq!(
        echoed_header(&echo, "X-Request-Id"),
        Some("caller-supplied-123"),
        "an existing X-Request-Id must be kept; echo: {echo}"
    );
}

#[test]
fn metrics_count_successful_requests() {
    let stack = Stack::start();
    let ok_requests = 5;
    for i in 0..ok_requests {
        let resp = curl(&[], &stack.url(&format!("/get?i={i}")));
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    let samples = stack.legate.metrics();
    let two_xx: Vec<_> = samples
        .iter()
        .filter(|s| s.name == "legate_http_requests_total")
        .filter(|s| s.labels.get("code_class").map(String::as_str) == Some("2xx"))
        .collect();
    assert!(
        !two_xx.is_empty(),
        "no legate_http_requests_total{{code_class=\"2xx\"}} series in /metrics:\n{}",
        stack
            .legate
            .admin_get("/metrics")
            .map(|r| r.text())
            .unwrap_or_default()
    );
    for s in &two_xx {
        for label in ["listener", "route", "upstream"] {
            assert!(
                s.labels.contains_key(label),
                "legate_http_requests_total lacks label `{label}`: {s:?}"
            );
        }
    }
    let total: f64 = two_xx.iter().map(|s| s.value).sum();
    assert!(
        total >= f64::from(ok_requests),
        "2xx count {total} < {ok_requests} OK requests sent"
    );
    assert!(
        metric_sum(&samples, "legate_http_inflight_requests").is_some(),
        "legate_http_inflight_requests missing from /metrics"
    );
    let opened = metric_sum(&samples, "legate_upstream_connections_opened_total");
    assert!(
        opened.is_some_and(|v| v >= 1.0),
        "legate_upstream_connections_opened_total should be >= 1, got {opened:?}"
    );
}

/// Writes a config file for one listener routing everything to httpbin and
/// starts `legate run -c FILE`.
fn start_from_config(httpbin: &Httpbin, tmp: &TempDir, route_extra: &str) -> Legate {
    let listen = local(free_port());
    let admin = local(free_port());
    let config = format!(
        "admin: {{ listen: {admin} }}
listeners:
  - name: app
    listen: {listen}
    protocol: http
    routes:
      - name: default
        match: {{ path_prefix: / }}
        upstream: httpbin
{route_extra}
upstreams:
  - name: httpbin
    endpoints: [ \"{upstream}\" ]
    connect_timeout: 2s
",
        upstream = httpbin.addr
    );
    let path = tmp.write("legate.yaml", config);
    let args = vec![
        "run".to_string(),
        "-c".to_string(),
        path.display().to_string(),
    ];
    Legate::start(&args, listen, admin)
}

#[test]
fn route_timeout_gives_504_with_legate_error() {
    let httpbin = Httpbin::start();
    let tmp = TempDir::new("timeout");
    let legate = start_from_config(&httpbin, &tmp, "        timeout: 1s");
    let started = Instant::now();
    let resp = curl(&[], &legate.url("/delay/3"));
    let elapsed = started.elapsed();
    assert_eq!(resp.status, 504, "body: {}", resp.text());
    assert_eq!(
        resp.header("legate-error"),
        Some("timeout"),
        "{:?}",
        resp.headers
    );
    assert!(
        elapsed < Duration::from_millis(2800),
        "504 took {elapsed:?}; the 1s route timeout should cut the 3s upstream delay"
    );
}

#[test]
fn config_route_request_headers_set_and_remove() {
    let httpbin = Httpbin::start();
    let tmp = TempDir::new("reqheaders");
    let legate = start_from_config(
        &httpbin,
        &tmp,
        "        timeout: 15s
        request_headers: { set: { X-Client-ID: microservice-001 }, remove: [X-Debug] }",
    );
    let resp = curl(&["-H", "X-Debug: 1"], &legate.url("/headers"));
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    let echo = resp.json();
    assert_eq!(
        echoed_header(&echo, "X-Client-Id"),
        Some(CLIENT_ID),
        "{echo}"
    );
    assert_eq!(echoed_header(&echo, "X-Debug"), None, "{echo}");
    let samples = parse_metrics(&legate.admin_get("/metrics").expect("metrics").text());
    assert!(
        samples
            .iter()
            .any(|s| s.name == "legate_http_requests_total"
                && s.labels.get("listener").map(String::as_str) == Some("app")
                && s.labels.get("route").map(String::as_str) == Some("default")
                && s.labels.get("upstream").map(String::as_str) == Some("httpbin")),
        "expected a legate_http_requests_total series labelled listener=app, \
         route=default, upstream=httpbin"
    );
}
