//! The HTTP data path end to end over real sockets: pass-through, header rules, Host, routes,
//! h2c, WebSocket, pooling, the keep-alive race, and the errors legate answers itself.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_headers_and_bodies_pass_through() {
    let up = echo_upstream(Proto::H1).await;
    let legate = Legate::start(&config(up.addr, "", ""));
    let mut c = Client::h1(legate.addr).await;
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let body = if method == "GET" {
            Bytes::new()
        } else {
            Bytes::from(format!("payload for {method}"))
        };
        let req = Request::builder()
            .method(method)
            .uri("/things/42?x=1&y=two")
            .header("host", "localhost:8080")
            .header("x-custom", "a")
            .header("x-multi", "1")
            .header("x-multi", "2")
            .body(full(body.clone()))
            .unwrap();
        let r = c.send(req).await;
        assert_eq!(r.status, 200, "{method}");
        let j = r.json();
        assert_eq!(j["method"], method);
        assert_eq!(j["uri"], "/things/42?x=1&y=two");
        assert_eq!(j["body"], String::from_utf8_lossy(&body).as_ref());
        assert_eq!(j["headers"]["x-custom"][0], "a");
        assert_eq!(j["headers"]["x-multi"].as_array().unwrap().len(), 2);
        assert_eq!(r.header("x-upstream"), Some("echo"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_rewritten_to_the_upstream_by_default_and_can_be_kept_or_set() {
    let up = echo_upstream(Proto::H1).await;
    let legate = Legate::start(&config(up.addr, "", ""));
    let r = get(legate.addr, "/").await;
    assert_eq!(r.echoed("host").unwrap(), up.addr.to_string());

    let kept = Legate::start(&config(up.addr, "        host_rewrite: keep", ""));
    let r = get(kept.addr, "/").await;
    assert_eq!(r.echoed("host").unwrap(), "localhost");

    let lit = Legate::start(&config(
        up.addr,
        "        host_rewrite: api.example.com",
        "",
    ));
    let r = get(lit.addr, "/").await;
    assert_eq!(r.echoed("host").unwrap(), "api.example.com");
}

/// The app's `Proxy-Authorization` is for legate, which asks for none: it is not passed on
/// (that would hand the app's proxy secret to the upstream), unless the route says the next
/// hop is a proxy that expects it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_authorization_stops_at_legate_unless_forwarded() {
    let up = echo_upstream(Proto::H1).await;
    let send = |addr| async move {
        let mut c = Client::h1(addr).await;
        let req = Request::builder()
            .uri("/")
            .header("host", "localhost")
            .header("proxy-authorization", "Basic YXBwOnByb3h5LXNlY3JldA==")
            .header("authorization", "Bearer end-to-end")
            .body(full(Bytes::new()))
            .unwrap();
        c.send(req).await
    };
    let legate = Legate::start(&config(up.addr, "", ""));
    let r = send(legate.addr).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("proxy-authorization"), None, "consumed by default");
    assert_eq!(
        r.echoed("authorization").as_deref(),
        Some("Bearer end-to-end")
    );

    let fwd = Legate::start(&config(
        up.addr,
        "        forward_proxy_authorization: true",
        "",
    ));
    let r = send(fwd.addr).await;
    assert_eq!(
        r.echoed("proxy-authorization").as_deref(),
        Some("Basic YXBwOnByb3h5LXNlY3JldA==")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_apply_both_ways() {
    let up = echo_upstream(Proto::H1).await;
    let legate = Legate::start(&config(
        up.addr,
        r#"        request_headers: { set: { X-Client-ID: microservice-001 }, add: { Via: legate }, remove: [X-Debug] }
        response_headers: { set: { X-Served-By: legate }, remove: [X-Upstream] }"#,
        "",
    ));
    let req = Request::get("/")
        .header("host", "localhost")
        .header("x-debug", "secret")
        .header("x-client-id", "spoofed")
        .header("via", "1.1 app")
        .body(full(Bytes::new()))
        .unwrap();
    let r = Client::h1(legate.addr).await.send(req).await;
    let j = r.json();
    assert_eq!(
        j["headers"]["x-client-id"],
        serde_json::json!(["microservice-001"])
    );
    assert!(j["headers"].get("x-debug").is_none());
    assert_eq!(j["headers"]["via"].as_array().unwrap().len(), 2);
    assert_eq!(r.header("x-served-by"), Some("legate"));
    assert_eq!(r.header("x-upstream"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded() {
    let up = echo_upstream(Proto::H1).await;
    let legate = Legate::start(&config(up.addr, "", ""));
    let req = Request::get("/")
        .header("host", "localhost")
        .header("connection", "keep-alive, X-Foo")
        .header("x-foo", "bar")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "gzip")
        .header("x-end-to-end", "yes")
        .body(full(Bytes::new()))
        .unwrap();
    let r = Client::h1(legate.addr).await.send(req).await;
    let h = &r.json()["headers"];
    for gone in ["x-foo", "keep-alive", "proxy-connection", "te"] {
        assert!(h.get(gone).is_none(), "{gone} was forwarded: {h}");
    }
    assert_eq!(h["x-end-to-end"][0], "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_added_when_absent_and_kept_when_present() {
    let up = echo_upstream(Proto::H1).await;
    let legate = Legate::start(&config(up.addr, "", ""));
    let r = get(legate.addr, "/").await;
    let id = r.echoed("x-request-id").expect("x-request-id added");
    assert_eq!(id.len(), 36);
    let req = Request::get("/")
        .header("host", "h")
        .header("x-request-id", "abc-123")
        .body(full(Bytes::new()))
        .unwrap();
    let r = Client::h1(legate.addr).await.send(req).await;
    assert_eq!(r.echoed("x-request-id").unwrap(), "abc-123");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_by_prefix_exact_path_method_and_header() {
    let a = upstream(Proto::H1, |_| async { http::Response::new(full("a")) }).await;
    let b = upstream(Proto::H1, |_| async { http::Response::new(full("b")) }).await;
    let c = upstream(Proto::H1, |_| async { http::Response::new(full("c")) }).await;
    let d = upstream(Proto::H1, |_| async { http::Response::new(full("d")) }).await;
    let yaml = format!(
        r#"
admin: {{ listen: off }}
runtime: {{ workers: 1 }}
listeners:
  - name: app
    listen: 127.0.0.1:0
    routes:
      - {{ name: exact, match: {{ path: /health }}, upstream: c }}
      - {{ name: canary, match: {{ path_prefix: /api, headers: {{ x-canary: "1" }} }}, upstream: d }}
      - {{ name: writes, match: {{ path_prefix: /api, methods: [POST, PUT] }}, upstream: b }}
      - {{ name: api, match: {{ path_prefix: /api }}, upstream: a }}
upstreams:
  - {{ name: a, endpoints: ["{}"] }}
  - {{ name: b, endpoints: ["{}"] }}
  - {{ name: c, endpoints: ["{}"] }}
  - {{ name: d, endpoints: ["{}"] }}
"#,
        a.addr, b.addr, c.addr, d.addr
    );
    let legate = Legate::start(&yaml);
    let mut cl = Client::h1(legate.addr).await;
    let send = |m: &str, p: &str, canary: bool| {
        let mut b = Request::builder().method(m).uri(p).header("host", "x");
        if canary {
            b = b.header("x-canary", "1");
        }
        b.body(full(Bytes::new())).unwrap()
    };
    assert_eq!(cl.send(send("GET", "/api/users", false)).await.body, "a");
    assert_eq!(cl.send(send("POST", "/api/users", false)).await.body, "b");
    assert_eq!(cl.send(send("GET", "/api/users", true)).await.body, "d");
    assert_eq!(cl.send(send("GET", "/health", false)).await.body, "c");
    let miss = cl.send(send("GET", "/healthz", false)).await;
    assert_eq!(miss.status, 404);
    assert_eq!(miss.header("legate-error"), Some("no-route"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_on_both_sides() {
    let up = echo_upstream(Proto::H2).await;
    let legate = Legate::start(&config(up.addr, "", "    protocol: http2"));
    let mut c = Client::h2(legate.addr).await;
    let req = Request::post("http://localhost/h2?q=1")
        .body(full("over h2"))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    let j = r.json();
    assert_eq!(j["version"], "HTTP/2.0");
    assert_eq!(j["body"], "over h2");
    assert!(j["uri"].as_str().unwrap().ends_with("/h2?q=1"), "{j}");
    // Many concurrent streams share one upstream connection.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = c.clone_h2();
        tasks.push(tokio::spawn(async move {
            c.send(
                Request::get(format!("http://localhost/{i}"))
                    .body(full(Bytes::new()))
                    .unwrap(),
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(up.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_client_to_h2_upstream_and_h2_client_to_h1_upstream() {
    let h2 = echo_upstream(Proto::H2).await;
    let legate = Legate::start(&config(h2.addr, "", "    protocol: http2"));
    let r = get(legate.addr, "/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], "HTTP/2.0");

    let h1 = echo_upstream(Proto::H1).await;
    let legate = Legate::start(&config(h1.addr, "", ""));
    let r = Client::h2(legate.addr)
        .await
        .send(
            Request::get("http://localhost/y")
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["version"], "HTTP/1.1");
    assert_eq!(j["uri"], "/y");
    assert_eq!(j["headers"]["host"][0], h1.addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_to_the_upstream_are_reused() {
    let up = echo_upstream(Proto::H1).await;
    let legate = Legate::start(&config(up.addr, "", ""));
    for _ in 0..50 {
        assert_eq!(get(legate.addr, "/").await.status, 200);
    }
    assert_eq!(
        up.connections(),
        1,
        "50 sequential requests should share one upstream connection"
    );
    let m = legate.metrics();
    assert_eq!(
        metric(
            &m,
            "legate_upstream_connections_opened_total",
            &["upstream=\"api\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "legate_upstream_connections_reused_total",
            &["upstream=\"api\""]
        ),
        Some(49.0)
    );
    assert_eq!(
        metric(
            &m,
            "legate_upstream_connections_active",
            &["upstream=\"api\""]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_respects_max_idle_and_idle_timeout() {
    let up = echo_upstream(Proto::H1).await;
    let legate = Legate::start(&config(
        up.addr,
        "",
        "    pool: { max_idle_per_endpoint: 0, idle_timeout: 1s }",
    ));
    for _ in 0..3 {
        assert_eq!(get(legate.addr, "/").await.status, 200);
    }
    assert_eq!(
        up.connections(),
        3,
        "max_idle_per_endpoint: 0 disables reuse"
    );
}

/// With default settings, a burst of concurrent requests leaves its upstream connections in the
/// pool and the next burst of the same size reuses every one (a cap on idle connections below
/// the concurrency made each burst close and reopen what was over the cap). The upstream holds
/// each request until the whole burst has arrived, so a burst of 100 needs 100 connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_64_reuses_its_upstream_connections_by_default() {
    const BURST: usize = 100;
    let all_in = Arc::new(tokio::sync::Barrier::new(BURST));
    let up = upstream(Proto::H1, move |_req| {
        let all_in = all_in.clone();
        async move {
            all_in.wait().await;
            Response::new(full("ok"))
        }
    })
    .await;
    let legate = Legate::start(&config(up.addr, "", ""));
    let burst = || async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..BURST {
            let addr = legate.addr;
            set.spawn(async move { get(addr, "/").await.status });
        }
        let statuses = set.join_all().await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        burst().await;
        assert_eq!(up.connections(), BURST, "the first burst opens one each");
        burst().await;
    })
    .await
    .expect("the bursts did not finish (hang guard)");
    assert_eq!(
        up.connections(),
        BURST,
        "the second burst found all {BURST} connections in the pool"
    );
}

/// An upstream that closes each connection right after answering (without `Connection: close`):
/// every pooled connection is dead by the time it is reused. Clients must never see that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_idle_connections_never_fails_a_request() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    let legate = Legate::start(&config(addr, "", ""));
    let mut c = Client::h1(legate.addr).await;
    for i in 0..100 {
        let r = c.get("/").await;
        assert_eq!(r.status, 200, "request {i}: {:?}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_legate_answers_carry_legate_error() {
    // Connection refused: bind then drop to get a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let legate = Legate::start(&config(closed, "", ""));
    let r = get(legate.addr, "/").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("legate-error"), Some("connect-refused"));
    assert!(String::from_utf8_lossy(&r.body).contains(&closed.to_string()));

    // Timeout: an upstream slower than the route timeout.
    let slow = upstream(Proto::H1, |_| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        http::Response::new(full("late"))
    })
    .await;
    let legate = Legate::start(&config(slow.addr, "        timeout: 200ms", ""));
    let r = get(legate.addr, "/").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.header("legate-error"), Some("timeout"));

    // Garbage instead of HTTP.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbage = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"SSH-2.0-OpenSSH_9.2\r\n\x00\x01garbage\r\n\r\n")
                .await;
        }
    });
    let legate = Legate::start(&config(garbage, "", ""));
    let r = get(legate.addr, "/").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("legate-error"), Some("upstream-protocol-error"));

    // A reset after reading the request.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let resetter = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let legate = Legate::start(&config(resetter, "", ""));
    let r = get(legate.addr, "/").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("legate-error"), Some("upstream-reset"));
    let m = legate.metrics();
    assert_eq!(
        metric(
            &m,
            "legate_http_local_errors_total",
            &["reason=\"upstream-reset\""]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_upstream_gives_503_and_startup_continues() {
    let yaml = r#"
admin: { listen: off }
runtime: { workers: 1 }
listeners:
  - name: app
    listen: 127.0.0.1:0
    routes: [{ name: r, upstream: nowhere }]
upstreams:
  - { name: nowhere, endpoints: ["does-not-exist.invalid:80"], dns_refresh: 1h }
"#;
    let legate = Legate::start(yaml);
    let r = get(legate.addr, "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("legate-error"), Some("no-endpoint"));
    assert!(String::from_utf8_lossy(&r.body).contains("does-not-exist.invalid:80"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_names_resolve() {
    let up = echo_upstream(Proto::H1).await;
    let yaml = config(up.addr, "", "").replace(
        &format!("\"{}\"", up.addr),
        &format!("\"localhost:{}\"", up.addr.port()),
    );
    let legate = Legate::start(&yaml);
    let r = get(legate.addr, "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.echoed("host").unwrap(),
        format!("localhost:{}", up.addr.port())
    );
}

async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_an_open_proxy() {
    let up = echo_upstream(Proto::H1).await;
    let legate = Legate::start(&config(up.addr, "", ""));
    let out = raw_exchange(legate.addr, b"GET http://evil.example/steal HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("legate-error: open-proxy-refused"),
        "{out}"
    );
    let out = raw_exchange(
        legate.addr,
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("legate-error: connect-refused"),
        "{out}"
    );
    // Absolute-form naming legate itself is just an odd spelling of origin-form.
    let own = format!(
        "GET http://{}/ok HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        legate.addr, legate.addr
    );
    let out = raw_exchange(legate.addr, own.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(up.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_are_refused_and_others_continue() {
    let up = echo_upstream(Proto::H1).await;
    let legate = Legate::start(&config(up.addr, "", ""));
    let mut keep = Client::h1(legate.addr).await;
    assert_eq!(keep.get("/before").await.status, 200);

    let out = raw_exchange(
        legate.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let out = raw_exchange(legate.addr, big.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let out = raw_exchange(legate.addr, many.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    assert_eq!(
        keep.get("/after").await.status,
        200,
        "an unrelated keep-alive connection is unaffected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        ws.send(msg).await.unwrap();
                    }
                }
            });
        }
    });
    let legate = Legate::start(&config(ws_addr, "", ""));
    let stream = tokio::net::TcpStream::connect(legate.addr).await.unwrap();
    let (mut ws, resp) =
        tokio_tungstenite::client_async(format!("ws://{}/echo", legate.addr), stream)
            .await
            .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..10 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), format!("hello {i}"));
    }
    ws.send(Message::binary(vec![7u8; 100_000])).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_data().len(), 100_000);
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request() {
    let up = echo_upstream(Proto::H1).await;
    let legate = Legate::start(&config(up.addr, "", ""));
    let mut c = Client::h1(legate.addr).await;
    let req = Request::post("/submit?a=1")
        .header("host", "x")
        .body(full(vec![1u8; 1234]))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 200);
    wait_until_async("access log line", || !legate.log.lock().unwrap().is_empty()).await;
    let lines = legate.log_lines();
    assert_eq!(lines.len(), 1);
    let l = &lines[0];
    assert_eq!(l["method"], "POST");
    assert_eq!(l["path"], "/submit?a=1");
    assert_eq!(l["status"], 200);
    assert_eq!(l["listener"], "app");
    assert_eq!(l["route"], "default");
    assert_eq!(l["upstream"], "api");
    assert_eq!(l["endpoint"], up.addr.to_string());
    assert_eq!(l["bytes_in"], 1234);
    assert_eq!(l["bytes_out"], r.body.len());
    assert!(l["error"].is_null());
    assert_eq!(l["request_id"].as_str().unwrap().len(), 36);
    assert!(l["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(l["ts"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_bodies_flow_both_ways_chunk_by_chunk() {
    // The upstream answers with a body that arrives in pieces; the client must see the first
    // piece before the upstream sends the last (no buffering in legate).
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let up = upstream(Proto::H1, move |_| {
        let rx = rx.clone();
        async move {
            let rx = rx.lock().await.take().unwrap();
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| {
                    (
                        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b)),
                        rx,
                    )
                })
            });
            http::Response::new(http_body_util::StreamBody::new(stream).boxed())
        }
    })
    .await;
    let legate = Legate::start(&config(up.addr, "", ""));
    let mut c = Client::h1(legate.addr).await;
    let resp = c.get_raw("/stream").await.unwrap();
    assert!(
        resp.headers().get("transfer-encoding").is_some(),
        "chunked response"
    );
    let mut body = resp.into_body();
    tx.send(Bytes::from_static(b"first")).await.unwrap();
    let f = body.frame().await.unwrap().unwrap();
    assert_eq!(f.into_data().unwrap(), "first");
    tx.send(Bytes::from_static(b"second")).await.unwrap();
    let f = body.frame().await.unwrap().unwrap();
    assert_eq!(f.into_data().unwrap(), "second");
    drop(tx);
    assert!(body.frame().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_arrives_intact() {
    let up = echo_upstream(Proto::H1).await;
    let legate = Legate::start(&config(up.addr, "", ""));
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> = (0..100)
        .map(|i| Ok(hyper::body::Frame::data(Bytes::from(format!("{i:04}")))))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks)).boxed();
    let r = Client::h1(legate.addr)
        .await
        .send(Request::post("/up").header("host", "x").body(body).unwrap())
        .await;
    let j = r.json();
    assert_eq!(j["body_len"], 400);
    assert_eq!(j["headers"]["transfer-encoding"][0], "chunked");
    assert!(j["body"].as_str().unwrap().starts_with("000000010002"));
}

/// A client that leaves while legate waits for the upstream: the request is still accounted
/// for (access log 499 `aborted`, metrics), and the in-flight gauge goes back to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_request_is_accounted_for() {
    let arrived = Arc::new(tokio::sync::Notify::new());
    let a = arrived.clone();
    let up = upstream(Proto::H1, move |_req: Request<Incoming>| {
        let a = a.clone();
        async move {
            a.notify_one();
            tokio::time::sleep(Duration::from_secs(30)).await;
            Response::new(full("late"))
        }
    })
    .await;
    let lg = Legate::start(&config(up.addr, "", ""));
    let mut client = Client::h1(lg.addr).await;
    let pending = tokio::spawn(async move { client.get_raw("/slow").await.map(|_| ()) });
    arrived.notified().await;
    assert_eq!(
        metric(&lg.metrics(), "legate_http_inflight_requests", &[]),
        Some(1.0)
    );
    pending.abort();
    let _ = pending.await;
    // The access log line is written last when a request is accounted for (after the
    // in-flight gauge and the request counter): wait for it.
    wait_until_async("the request is accounted for", || {
        metric(&lg.metrics(), "legate_http_inflight_requests", &[]) == Some(0.0)
            && !lg.log_lines().is_empty()
    })
    .await;
    let log = lg.log_lines();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["status"], 499);
    assert_eq!(log[0]["aborted"], true);
    assert_eq!(
        metric(
            &lg.metrics(),
            "legate_http_requests_total",
            &["route=\"default\"", "code_class=\"4xx\""]
        ),
        Some(1.0)
    );
}
