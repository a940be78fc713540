//! The resilience policies against upstreams that fail exactly as told: retries (conditions,
//! counts, replayed bodies, budgets, Retry-After, per-try timeouts), the circuit breaker,
//! outlier ejection, health checks, balancing and rate limiting.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the fault upstream does with one request.
#[derive(Clone, Debug)]
enum Act {
    Status(u16, &'static str),
    Reset,
    Delay(Duration),
    /// 200 with a Content-Length it does not honour: the connection drops mid-body.
    PartialBody,
}

/// A raw-TCP upstream: each request gets `script(n)` for its index n (0-based). Every
/// connection carries one request and closes, so there is no pooling to reason about.
struct Faulty {
    addr: SocketAddr,
    seen: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Faulty {
    fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

async fn faulty(script: impl Fn(usize) -> Act + Send + Sync + 'static) -> Faulty {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(script);
    let (s2, b2) = (seen.clone(), bodies.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (seen, bodies, script) = (s2.clone(), b2.clone(), script.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let head_end = loop {
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let n = seen.fetch_add(1, Ordering::SeqCst);
                bodies
                    .lock()
                    .unwrap()
                    .push(buf[head_end..head_end + len].to_vec());
                let reply = |code: u16, extra: &str| {
                    format!("HTTP/1.1 {code} X\r\ncontent-length: 2\r\nconnection: close\r\n{extra}\r\nok")
                };
                match script(n) {
                    Act::Status(code, extra) => {
                        let _ = sock.write_all(reply(code, extra).as_bytes()).await;
                    }
                    Act::Reset => {
                        let _ = socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
                        drop(sock);
                        return;
                    }
                    Act::Delay(d) => {
                        tokio::time::sleep(d).await;
                        let _ = sock.write_all(reply(200, "").as_bytes()).await;
                    }
                    Act::PartialBody => {
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial")
                            .await;
                        let _ = socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
                        drop(sock);
                        return;
                    }
                }
                let _ = sock.shutdown().await;
            });
        }
    });
    Faulty { addr, seen, bodies }
}

/// Answers the first `n` requests with `fail`, then 200s.
async fn fails_first(n: usize, fail: Act) -> Faulty {
    faulty(move |i| {
        if i < n {
            fail.clone()
        } else {
            Act::Status(200, "")
        }
    })
    .await
}

fn retry_config(addrs: &[SocketAddr], retry: &str, upstream_extra: &str) -> String {
    let eps: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
admin: {{ listen: off }}
runtime: {{ workers: 1 }}
listeners:
  - name: app
    listen: 127.0.0.1:0
    routes:
      - name: default
        upstream: api
        timeout: 10s
{retry}
upstreams:
  - name: api
    endpoints: [{}]
{upstream_extra}
"#,
        eps.join(", ")
    )
}

const RETRY3: &str = "        retry: { attempts: 3, on: [connect-failure, reset, gateway-error, timeout], backoff: { base: 1ms, max: 5ms } }";

async fn request(legate: &Legate, method: &str, body: &'static [u8]) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri("/r")
        .header("host", "x")
        .body(full(Bytes::from_static(body)))
        .unwrap();
    Client::h1(legate.addr).await.send(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_errors_are_retried_an_exact_number_of_times() {
    let up = fails_first(2, Act::Status(503, "")).await;
    let legate = Legate::start(&retry_config(&[up.addr], RETRY3, ""));
    let r = request(&legate, "GET", b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.seen(), 3, "two 503s, then the success");
    let m = legate.metrics();
    assert_eq!(
        metric(
            &m,
            "legate_http_retries_total",
            &["reason=\"gateway-error\""]
        ),
        Some(2.0),
        "{m}"
    );
    wait_until_async("access log", || !legate.log.lock().unwrap().is_empty()).await;
    assert_eq!(legate.log_lines()[0]["attempts"], 3);

    // Out of tries: the last upstream answer goes to the client, untouched.
    let up = faulty(|_| Act::Status(502, "x-last: yes\r\n")).await;
    let legate = Legate::start(&retry_config(&[up.addr], RETRY3, ""));
    let r = request(&legate, "GET", b"").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-last"), Some("yes"));
    assert_eq!(
        r.header("legate-error"),
        None,
        "the upstream's own 502, not legate's"
    );
    assert_eq!(up.seen(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_condition_only_retries_its_own_failures() {
    // Resets are retried under `reset` ...
    let up = fails_first(1, Act::Reset).await;
    let legate = Legate::start(&retry_config(&[up.addr], RETRY3, ""));
    assert_eq!(request(&legate, "GET", b"").await.status, 200);
    assert_eq!(up.seen(), 2);
    // ... but not when only gateway errors are named.
    let up = fails_first(1, Act::Reset).await;
    let only_gw =
        "        retry: { attempts: 3, on: [gateway-error], backoff: { base: 1ms, max: 2ms } }";
    let legate = Legate::start(&retry_config(&[up.addr], only_gw, ""));
    let r = request(&legate, "GET", b"").await;
    assert_eq!(
        (r.status, r.header("legate-error")),
        (502, Some("upstream-reset"))
    );
    assert_eq!(up.seen(), 1);
    // A 500 is not a gateway error.
    let up = faulty(|_| Act::Status(500, "")).await;
    let legate = Legate::start(&retry_config(&[up.addr], RETRY3, ""));
    assert_eq!(request(&legate, "GET", b"").await.status, 500);
    assert_eq!(up.seen(), 1);
    // Explicit codes work.
    let up = fails_first(1, Act::Status(409, "")).await;
    let codes = "        retry: { attempts: 2, on: [409], backoff: { base: 1ms, max: 2ms } }";
    let legate = Legate::start(&retry_config(&[up.addr], codes, ""));
    assert_eq!(request(&legate, "GET", b"").await.status, 200);
    assert_eq!(up.seen(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_retry_on_another_endpoint() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let live = faulty(|_| Act::Status(200, "")).await;
    let cfg = retry_config(
        &[dead, live.addr],
        RETRY3,
        "    balance: round-robin\n    outlier_detection: { enabled: false }",
    );
    let legate = Legate::start(&cfg);
    for _ in 0..10 {
        assert_eq!(request(&legate, "GET", b"").await.status, 200);
    }
    assert_eq!(live.seen(), 10);
    let m = legate.metrics();
    assert_eq!(
        metric(
            &m,
            "legate_http_retries_total",
            &["reason=\"connect-failure\""]
        ),
        Some(5.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_gives_up_on_a_slow_try_and_retries() {
    let up = fails_first(1, Act::Delay(Duration::from_secs(5))).await;
    let retry = "        retry: { attempts: 2, on: [timeout], per_try_timeout: 200ms, backoff: { base: 1ms, max: 2ms } }";
    let legate = Legate::start(&retry_config(&[up.addr], retry, ""));
    assert_eq!(request(&legate, "GET", b"").await.status, 200);
    assert_eq!(up.seen(), 2);
    // Without tries left the per-try timeout is a 504 with legate-error: timeout.
    let up = faulty(|_| Act::Delay(Duration::from_secs(5))).await;
    let legate = Legate::start(&retry_config(&[up.addr], retry, ""));
    let r = request(&legate, "GET", b"").await;
    assert_eq!((r.status, r.header("legate-error")), (504, Some("timeout")));
    assert_eq!(up.seen(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_not_retried_unless_allowed_and_then_replays_the_same_bytes() {
    let up = fails_first(1, Act::Status(503, "")).await;
    let legate = Legate::start(&retry_config(&[up.addr], RETRY3, ""));
    assert_eq!(request(&legate, "POST", b"order-42").await.status, 503);
    assert_eq!(up.seen(), 1, "POST is not idempotent");

    let up = fails_first(2, Act::Status(503, "")).await;
    let allowed = "        retry: { attempts: 3, on: [gateway-error], retry_non_idempotent: true, backoff: { base: 1ms, max: 2ms } }";
    let legate = Legate::start(&retry_config(&[up.addr], allowed, ""));
    let body: &'static [u8] = b"{\"order\": 42, \"items\": [1, 2, 3]}";
    assert_eq!(request(&legate, "POST", body).await.status, 200);
    let bodies = up.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 3);
    assert!(
        bodies.iter().all(|b| b == body),
        "every try carries the same bytes: {bodies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_replay_limit_streams_once_and_is_not_retried() {
    let up = faulty(|_| Act::Status(503, "")).await;
    let small = "        retry: { attempts: 3, on: [gateway-error], max_replay_body: 1KiB, backoff: { base: 1ms, max: 2ms } }";
    let legate = Legate::start(&retry_config(&[up.addr], small, ""));
    let big = vec![7u8; 100 * 1024];
    let req = Request::put("/big")
        .header("host", "x")
        .body(full(big.clone()))
        .unwrap();
    let r = Client::h1(legate.addr).await.send(req).await;
    assert_eq!(r.status, 503);
    assert_eq!(up.seen(), 1);
    assert_eq!(up.bodies.lock().unwrap()[0], big, "the body arrived whole");
    wait_until_async("access log", || !legate.log.lock().unwrap().is_empty()).await;
    let line = &legate.log_lines()[0];
    assert_eq!(
        line["retry"], "body-too-large",
        "the access log says why it was not retried: {line}"
    );
    assert_eq!(line["attempts"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_retried_once_the_response_started() {
    let up = faulty(|_| Act::PartialBody).await;
    let legate = Legate::start(&retry_config(&[up.addr], RETRY3, ""));
    let resp = Client::h1(legate.addr).await.get_raw("/").await.unwrap();
    assert_eq!(resp.status(), 200);
    use http_body_util::BodyExt;
    assert!(
        resp.into_body().collect().await.is_err(),
        "the body is cut, the client sees it"
    );
    assert_eq!(up.seen(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_caps_retries_when_everything_fails() {
    let up = faulty(|_| Act::Status(503, "")).await;
    let retry = "        retry: { attempts: 3, on: [gateway-error], backoff: { base: 1ms, max: 1ms }, budget: { ratio: 0.2, min_per_second: 0 } }";
    let legate = Legate::start(&retry_config(&[up.addr], retry, ""));
    let mut c = Client::h1(legate.addr).await;
    for _ in 0..100 {
        assert_eq!(c.get("/").await.status, 503);
    }
    let retries = up.seen() - 100;
    assert!(
        retries <= 20,
        "at most 20% extra load, got {retries} retries for 100 requests"
    );
    assert!(retries >= 18, "the budget is used, got {retries}");
    let m = legate.metrics();
    assert!(
        metric(
            &m,
            "legate_http_retry_budget_exhausted_total",
            &["route=\"default\""]
        )
        .unwrap_or(0.0)
            >= 75.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_up_to_its_cap() {
    let up = fails_first(1, Act::Status(503, "retry-after: 1\r\n")).await;
    let legate = Legate::start(&retry_config(&[up.addr], RETRY3, ""));
    let started = Instant::now();
    assert_eq!(request(&legate, "GET", b"").await.status, 200);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for Retry-After"
    );
    assert_eq!(up.seen(), 2);

    let up = fails_first(1, Act::Status(503, "retry-after: 120\r\n")).await;
    let legate = Legate::start(&retry_config(&[up.addr], RETRY3, ""));
    let r = request(&legate, "GET", b"").await;
    assert_eq!(
        r.status, 503,
        "a Retry-After beyond retry_after_max goes to the client"
    );
    assert_eq!(r.header("retry-after"), Some("120"));
    assert_eq!(up.seen(), 1);
}

/// A hyper upstream whose health and answers are switched by the test.
struct Switch {
    up: Upstream,
    failing: Arc<std::sync::atomic::AtomicBool>,
    hits: Arc<AtomicUsize>,
}

async fn switch(start_failing: bool) -> Switch {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(start_failing));
    let hits = Arc::new(AtomicUsize::new(0));
    let (f, h) = (failing.clone(), hits.clone());
    let up = upstream(Proto::H1, move |req: Request<hyper::body::Incoming>| {
        let (f, h) = (f.clone(), h.clone());
        async move {
            let bad = f.load(Ordering::SeqCst);
            if req.uri().path() != "/healthz" {
                h.fetch_add(1, Ordering::SeqCst);
            }
            let code = if bad { 503 } else { 200 };
            http::Response::builder()
                .status(code)
                .body(full("s"))
                .unwrap()
        }
    })
    .await;
    Switch { up, failing, hits }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_fails_fast_half_opens_and_closes() {
    let s = switch(true).await;
    let cb = "    outlier_detection: { enabled: false }\n    circuit_breaker: { min_requests: 5, failure_ratio: 0.5, window: 10s, open_for: 300ms, probes: 2 }";
    let legate = Legate::start(&retry_config(&[s.up.addr], "", cb));
    let mut c = Client::h1(legate.addr).await;
    for _ in 0..5 {
        assert_eq!(c.get("/").await.status, 503);
    }
    assert_eq!(
        metric(
            &legate.metrics(),
            "legate_circuit_state",
            &["upstream=\"api\""]
        ),
        Some(1.0)
    );
    let before = s.hits.load(Ordering::SeqCst);
    let r = c.get("/").await;
    assert_eq!(
        (r.status, r.header("legate-error")),
        (503, Some("circuit-open"))
    );
    assert_eq!(
        s.hits.load(Ordering::SeqCst),
        before,
        "open: the upstream is not called"
    );

    s.failing.store(false, Ordering::SeqCst);
    // Once open_for has passed, probes go through; both succeed and the circuit closes.
    let mut statuses = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(
        &legate.metrics(),
        "legate_circuit_state",
        &["upstream=\"api\""],
    ) != Some(0.0)
    {
        assert!(
            Instant::now() < deadline,
            "circuit never closed: {statuses:?}"
        );
        statuses.push(c.get("/").await.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "exactly the two probes reached the upstream: {statuses:?}"
    );
    assert_eq!(c.get("/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_fail_fast_with_overflow() {
    let slow = upstream(Proto::H1, |_| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        http::Response::new(full("slow"))
    })
    .await;
    let legate = Legate::start(&retry_config(
        &[slow.addr],
        "",
        "    circuit_breaker: { max_requests: 1 }",
    ));
    let addr = legate.addr;
    let first = tokio::spawn(async move { get(addr, "/").await.status });
    let m = legate.running.as_ref().unwrap().metrics.clone();
    wait_until_async("first request in flight", || {
        metric(&m.encode(), "legate_http_inflight_requests", &[]) == Some(1.0)
    })
    .await;
    let second = get(addr, "/").await;
    assert_eq!(
        (second.status, second.header("legate-error")),
        (503, Some("overflow"))
    );
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(
        metric(
            &legate.metrics(),
            "legate_upstream_overflow_total",
            &["limit=\"max_requests\""]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_and_returns_an_endpoint() {
    let bad = switch(true).await;
    let good = switch(false).await;
    let od = "    balance: round-robin\n    outlier_detection: { consecutive_failures: 3, base_ejection: 400ms, max_ejection: 1s }";
    let legate = Legate::start(&retry_config(&[bad.up.addr, good.up.addr], "", od));
    let mut c = Client::h1(legate.addr).await;
    for _ in 0..6 {
        c.get("/").await;
    }
    assert_eq!(
        bad.hits.load(Ordering::SeqCst),
        3,
        "three failures, then ejected"
    );
    let m = legate.metrics();
    assert_eq!(
        metric(
            &m,
            "legate_outlier_ejections_total",
            &[&format!("endpoint=\"{}\"", bad.up.addr)]
        ),
        Some(1.0),
        "{m}"
    );
    for _ in 0..20 {
        assert_eq!(
            c.get("/").await.status,
            200,
            "while ejected only the good endpoint answers"
        );
    }
    assert_eq!(bad.hits.load(Ordering::SeqCst), 3);
    bad.failing.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while bad.hits.load(Ordering::SeqCst) == 3 {
        assert!(
            Instant::now() < deadline,
            "the ejected endpoint never came back"
        );
        c.get("/").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_never_ejects_more_than_the_cap() {
    let (a, b, c3) = (switch(true).await, switch(true).await, switch(true).await);
    let od = "    balance: round-robin\n    outlier_detection: { consecutive_failures: 1, base_ejection: 10s, max_ejected_percent: 50 }";
    let legate = Legate::start(&retry_config(&[a.up.addr, b.up.addr, c3.up.addr], "", od));
    let mut c = Client::h1(legate.addr).await;
    for _ in 0..30 {
        c.get("/").await;
    }
    let m = legate.metrics();
    let ejected: f64 = [a.up.addr, b.up.addr, c3.up.addr]
        .iter()
        .filter_map(|addr| {
            metric(
                &m,
                "legate_outlier_ejected",
                &[&format!("endpoint=\"{addr}\"")],
            )
        })
        .sum();
    assert_eq!(ejected, 1.0, "50% of 3 endpoints is 1: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_move_endpoints_out_and_back() {
    let sick = switch(true).await;
    let well = switch(false).await;
    let hc = "    balance: round-robin\n    outlier_detection: { enabled: false }\n    health_check: { http: { path: /healthz, expect: 200-399 }, interval: 100ms, timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 2 }";
    let legate = Legate::start(&retry_config(&[sick.up.addr, well.up.addr], "", hc));
    let m = legate.running.as_ref().unwrap().metrics.clone();
    let label = format!("endpoint=\"{}\"", sick.up.addr);
    wait_until_async("sick endpoint marked unhealthy", || {
        metric(&m.encode(), "legate_endpoint_healthy", &[&label]) == Some(0.0)
    })
    .await;
    let mut c = Client::h1(legate.addr).await;
    for _ in 0..20 {
        assert_eq!(c.get("/").await.status, 200);
    }
    assert_eq!(sick.hits.load(Ordering::SeqCst), 0);
    sick.failing.store(false, Ordering::SeqCst);
    wait_until_async("sick endpoint healthy again", || {
        metric(&m.encode(), "legate_endpoint_healthy", &[&label]) == Some(1.0)
    })
    .await;
    for _ in 0..20 {
        c.get("/").await;
    }
    assert!(sick.hits.load(Ordering::SeqCst) >= 5, "back in rotation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_can_require_a_healthy_upstream() {
    let s = switch(true).await;
    let mut cfg = retry_config(
        &[s.up.addr],
        "",
        "    health_check: { tcp: {}, interval: 50ms, timeout: 40ms, healthy_threshold: 1 }",
    );
    cfg = cfg.replace(
        "admin: { listen: off }",
        "admin: { listen: 127.0.0.1:0, ready_requires_healthy_upstreams: true }",
    );
    let cfg_loaded = legate::config::load_str("t", &cfg, |_| None).unwrap();
    let running = legate::server::start(cfg_loaded, Default::default()).unwrap();
    let admin = running.admin_addr.unwrap();
    wait_until_async("ready after a passing TCP check", || {
        running.state.is_ready()
    })
    .await;
    assert_eq!(get(admin, "/ready").await.status, 200);
    running.shutdown();
    tokio::task::spawn_blocking(move || running.wait())
        .await
        .unwrap();

    // An HTTP check that keeps failing keeps /ready at 503.
    let cfg = retry_config(&[s.up.addr], "", "    health_check: { http: { path: /healthz }, interval: 50ms, timeout: 40ms, healthy_threshold: 1 }")
        .replace("admin: { listen: off }", "admin: { listen: 127.0.0.1:0, ready_requires_healthy_upstreams: true }");
    let running = legate::server::start(
        legate::config::load_str("t", &cfg, |_| None).unwrap(),
        Default::default(),
    )
    .unwrap();
    let admin = running.admin_addr.unwrap();
    let m = running.metrics.clone();
    wait_until_async("a few failed checks", || {
        metric(
            &m.encode(),
            "legate_health_checks_total",
            &["result=\"failure\""],
        )
        .unwrap_or(0.0)
            >= 3.0
    })
    .await;
    assert_eq!(get(admin, "/ready").await.status, 503);
    s.failing.store(false, Ordering::SeqCst);
    wait_until_async("ready once healthy", || running.state.is_ready()).await;
    running.shutdown();
    tokio::task::spawn_blocking(move || running.wait())
        .await
        .unwrap();
}

async fn slow_share(balance: &str) -> f64 {
    let slow = upstream(Proto::H1, |_| async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        http::Response::new(full("slow"))
    })
    .await;
    let fast = upstream(Proto::H1, |_| async { http::Response::new(full("fast")) }).await;
    let cfg = retry_config(
        &[slow.addr, fast.addr],
        "",
        &format!("    balance: {balance}\n    outlier_detection: {{ enabled: false }}"),
    );
    let legate = Legate::start(&cfg);
    let mut slow_hits = 0;
    let mut c = Client::h1(legate.addr).await;
    for _ in 0..60 {
        if c.get("/").await.body == "slow" {
            slow_hits += 1;
        }
    }
    f64::from(slow_hits) / 60.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_sends_less_to_a_slow_endpoint_than_round_robin() {
    let rr = slow_share("round-robin").await;
    let p2c = slow_share("p2c-ewma").await;
    assert!((rr - 0.5).abs() < 0.05, "round-robin alternates: {rr}");
    assert!(
        p2c < 0.2,
        "p2c-ewma avoids the slow endpoint: {p2c} vs round-robin {rr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_skew_round_robin() {
    let a = switch(false).await;
    let b = switch(false).await;
    let cfg = retry_config(&[a.up.addr], "", "    balance: round-robin").replace(
        &format!("[\"{}\"]", a.up.addr),
        &format!(
            "[\"{}\", {{ address: \"{}\", weight: 3 }}]",
            a.up.addr, b.up.addr
        ),
    );
    let legate = Legate::start(&cfg);
    let mut c = Client::h1(legate.addr).await;
    for _ in 0..40 {
        c.get("/").await;
    }
    assert_eq!(
        (a.hits.load(Ordering::SeqCst), b.hits.load(Ordering::SeqCst)),
        (10, 30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_admits_rate_times_time_plus_burst() {
    let up = upstream(Proto::H1, |_| async { http::Response::new(full("ok")) }).await;
    let legate = Legate::start(&retry_config(
        &[up.addr],
        "        rate_limit: { rate: 50/s, burst: 10 }",
        "",
    ));
    let mut c = Client::h1(legate.addr).await;
    let started = Instant::now();
    let (mut ok, mut limited) = (0u32, 0u32);
    let mut last_limited = None;
    while started.elapsed() < Duration::from_millis(1000) {
        let r = c.get("/").await;
        match r.status {
            200 => ok += 1,
            429 => {
                limited += 1;
                last_limited = Some(r);
            }
            s => panic!("unexpected {s}"),
        }
    }
    let expected = 10.0 + 50.0 * started.elapsed().as_secs_f64();
    assert!(
        (f64::from(ok) - expected).abs() <= expected * 0.05 + 1.0,
        "admitted {ok}, expected ≈ {expected:.0}"
    );
    let r = last_limited.expect("some requests were limited");
    assert_eq!(r.header("legate-error"), Some("rate-limited"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        metric(
            &legate.metrics(),
            "legate_http_rate_limited_total",
            &["route=\"default\""]
        ),
        Some(f64::from(limited))
    );
}
