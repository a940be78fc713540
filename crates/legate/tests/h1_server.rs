//! legate's own HTTP/1.1 server, spoken to with raw sockets: pipelining answered in order,
//! `Expect: 100-continue`, chunked uploads streamed, HTTP/1.0 and `Connection: close`,
//! refused heads, a slow body past `request_body_timeout`, the keep-alive `idle_timeout`
//! counted from each request, and idle connections closed by the
//! drain while a busy one finishes with `Connection: close`.

mod common;

use common::{config, echo_upstream, read_responses, Legate, Proto};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// legate in front of an echo upstream, with `limits` (a YAML flow map body) on its listener.
async fn with_limits(limits: &str) -> (common::Upstream, Legate) {
    let up = echo_upstream(Proto::H1).await;
    let yaml = config(up.addr, "", "").replace(
        "    routes:",
        &format!("    limits: {{ {limits} }}\n    routes:"),
    );
    let lg = Legate::start(&yaml);
    (up, lg)
}

/// Sends `raw` on a new connection and reads until legate closes it (at most 10 s).
async fn send_until_closed(lg: &Legate, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(lg.addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("legate closes the connection");
    String::from_utf8_lossy(&got).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let up = echo_upstream(Proto::H1).await;
    let lg = Legate::start(&config(up.addr, "", ""));
    let mut s = TcpStream::connect(lg.addr).await.unwrap();
    let mut all = String::new();
    for i in 0..5 {
        all.push_str(&format!("GET /p{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    // Five requests in one write, then a POST with its body.
    all.push_str("POST /p5 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    s.write_all(all.as_bytes()).await.unwrap();
    let got = read_responses(&mut s, 6).await;
    assert_eq!(got.len(), 6);
    for (i, (status, _, body)) in got.iter().enumerate() {
        assert_eq!(*status, 200);
        let j: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(
            j["uri"].as_str().unwrap().ends_with(&format!("/p{i}")),
            "{j}"
        );
    }
    let j: serde_json::Value = serde_json::from_str(&got[5].2).unwrap();
    assert_eq!(j["body"], "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_and_a_chunked_upload() {
    let up = echo_upstream(Proto::H1).await;
    let lg = Legate::start(&config(up.addr, "", ""));
    let mut s = TcpStream::connect(lg.addr).await.unwrap();
    s.write_all(
        b"POST /c HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 6\r\n\r\n",
    )
    .await
    .unwrap();
    // The client waits for 100 Continue before sending its body.
    let first = read_responses(&mut s, 1).await;
    assert_eq!(first[0].0, 100, "{first:?}");
    s.write_all(b"abcdef").await.unwrap();
    let second = read_responses(&mut s, 1).await;
    assert_eq!(second[0].0, 200);
    let j: serde_json::Value = serde_json::from_str(&second[0].2).unwrap();
    assert_eq!(j["body"], "abcdef");

    // A chunked upload on the same connection, sent in pieces with pauses.
    s.write_all(b"POST /u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"2\r\nde\r\n0\r\n\r\n").await.unwrap();
    let third = read_responses(&mut s, 1).await;
    assert_eq!(third[0].0, 200);
    let j: serde_json::Value = serde_json::from_str(&third[0].2).unwrap();
    assert_eq!(j["body"], "abcde");
    assert_eq!(j["headers"]["transfer-encoding"][0], "chunked");
    // And the connection is still good for one more.
    s.write_all(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_responses(&mut s, 1).await[0].0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_and_connection_close() {
    let up = echo_upstream(Proto::H1).await;
    let lg = Legate::start(&config(up.addr, "", ""));
    // HTTP/1.0 without keep-alive: answered, then closed.
    let text = send_until_closed(&lg, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    // HTTP/1.0 asking for keep-alive keeps it, and is told so.
    let mut s = TcpStream::connect(lg.addr).await.unwrap();
    s.write_all(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let r = read_responses(&mut s, 1).await;
    assert!(
        r[0].1
            .to_ascii_lowercase()
            .contains("connection: keep-alive"),
        "{}",
        r[0].1
    );
    s.write_all(b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_responses(&mut s, 1).await[0].0, 200);
    // HTTP/1.1 with Connection: close: answered with connection: close, then closed.
    let text = send_until_closed(
        &lg,
        b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .to_ascii_lowercase();
    assert!(text.contains("connection: close"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_heads_get_their_status_and_the_connection_closes() {
    let (_up, lg) = with_limits("max_header_bytes: 1024, max_headers: 8").await;
    for (raw, want) in [
        ("GET / HTTP/1.1\r\n\r\n".to_string(), 400),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
                "a".repeat(2000)
            ),
            431,
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
                (0..9).map(|i| format!("X-{i}: v\r\n")).collect::<String>()
            ),
            431,
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_string(),
            400,
        ),
        ("GET / HTTP/2.0\r\nHost: x\r\n\r\n".to_string(), 505),
    ] {
        let text = send_until_closed(&lg, raw.as_bytes()).await;
        assert!(
            text.starts_with(&format!("HTTP/1.1 {want} ")),
            "{raw:?} -> {text}"
        );
        assert!(text.contains("legate-error: "), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_cut_at_request_body_timeout() {
    let (_up, lg) = with_limits("request_body_timeout: 200ms").await;
    let text = send_until_closed(
        &lg,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("request-body-error"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_closes_idle_connections_and_lets_a_busy_one_finish() {
    let up = common::upstream(Proto::H1, |_req| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        hyper::Response::new(common::full("slow"))
    })
    .await;
    let mut lg = Legate::start(&config(up.addr, "", ""));
    let mut idle = TcpStream::connect(lg.addr).await.unwrap();
    idle.write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_responses(&mut idle, 1).await[0].0, 200);
    let mut busy = TcpStream::connect(lg.addr).await.unwrap();
    busy.write_all(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopper = std::thread::spawn(move || lg.stop());
    // The busy one gets its answer, told the connection closes.
    let r = read_responses(&mut busy, 1).await;
    assert_eq!(r[0].0, 200);
    assert!(
        r[0].1.to_ascii_lowercase().contains("connection: close"),
        "{}",
        r[0].1
    );
    // The idle one is closed without a word.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut rest))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    stopper.join().unwrap();
}

/// A CRLF after a body (some clients send one) leaves the connection idle, not mid-head: it
/// is not closed by `header_read_timeout` while it waits for its next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crlf_after_a_body_is_not_a_request_being_read() {
    let (_up, lg) = with_limits("header_read_timeout: 300ms").await;
    let mut s = TcpStream::connect(lg.addr).await.unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab\r\n")
        .await
        .unwrap();
    assert_eq!(read_responses(&mut s, 1).await[0].0, 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.write_all(b"GET /later HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_responses(&mut s, 1).await;
    assert_eq!(r.len(), 1, "the idle connection was kept");
    assert_eq!(r[0].0, 200);
}

/// `limits.idle_timeout` counts from the end of the last exchange, not from the connection's
/// start: the connection keeps one timer and each idle wait moves it later (serve_h1). A
/// request made after the first deadline would have passed (had the timer not moved) is
/// answered; the connection is closed once it has been idle for the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_restarts_after_each_request() {
    let (_up, lg) = with_limits("idle_timeout: 1s").await;
    let mut s = TcpStream::connect(lg.addr).await.unwrap();
    for i in 0..3 {
        if i > 0 {
            // 0.7 s, then 1.4 s from the first request: past the first deadline (1 s), within
            // the moved ones (1.7 s, 2.4 s).
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        s.write_all(format!("GET /i{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let got = read_responses(&mut s, 1).await;
        assert_eq!(got.len(), 1, "request {i} on the kept-alive connection");
        assert_eq!(got[0].0, 200, "request {i}: {got:?}");
    }
    // Now idle: legate closes it (EOF, nothing more sent).
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("legate closes an idle connection after idle_timeout")
        .unwrap();
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&rest));
}
