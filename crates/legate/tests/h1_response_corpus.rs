//! Response-side framing corpus: what an upstream may answer, held to RFC 9110/9112. Each case
//! is sent by a raw upstream as its answer to the first request; the case says what the app
//! must see (a forwarded answer, `502 upstream-protocol-error`, or a body cut short), and for
//! every case the next request must be answered correctly: a connection that carried a bad or
//! ambiguous answer is never reused, so nothing left over on it can become the next request's
//! answer (response splitting, desync).

mod common;

use common::*;
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const GOOD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfine\n";

/// What the app must see for the bad answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Forwarded: status and body.
    Forward(u16, &'static str),
    /// Refused: `502` with `legate-error: upstream-protocol-error`.
    Refused,
    /// The head is forwarded, the body then fails (the client sees its connection cut).
    Cut,
    /// The upstream closed before a whole head: `502` with `legate-error: upstream-reset`.
    Reset,
    /// The RFC allows either forwarding (with this status) or refusing.
    ForwardOrRefuse(u16),
}

#[derive(Debug, PartialEq)]
enum Seen {
    Answer(u16, Option<String>, String),
    Cut(u16),
    Failed(String),
}

/// A raw upstream: answers the first request with `bad` (then closes if `close`), and every
/// later request with `GOOD`; counts its connections.
async fn raw(bad: &'static [u8], close: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let answered = answered.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    // GETs only: a request ends at its blank line.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let first = answered.fetch_add(1, Ordering::SeqCst) == 0;
                        let answer = if first { bad } else { GOOD };
                        if sock.write_all(answer).await.is_err() {
                            return;
                        }
                        if first && close {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, conns)
}

async fn fetch(addr: SocketAddr) -> Seen {
    let mut c = Client::h1(addr).await;
    match c.get_raw("/").await {
        Err(e) => Seen::Failed(e.to_string()),
        Ok(resp) => {
            let status = resp.status().as_u16();
            let err = resp
                .headers()
                .get("legate-error")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            match resp.into_body().collect().await {
                Ok(b) => Seen::Answer(
                    status,
                    err,
                    String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                ),
                Err(_) => Seen::Cut(status),
            }
        }
    }
}

fn matches(expect: Expect, seen: &Seen) -> bool {
    let refused = matches!(seen, Seen::Answer(502, Some(e), _) if e == "upstream-protocol-error");
    match expect {
        Expect::Forward(s, body) => {
            matches!(seen, Seen::Answer(st, None, b) if *st == s && b == body)
        }
        Expect::Refused => refused,
        Expect::Cut => matches!(seen, Seen::Cut(_)),
        Expect::Reset => matches!(seen, Seen::Answer(502, Some(e), _) if e == "upstream-reset"),
        Expect::ForwardOrRefuse(s) => {
            refused || matches!(seen, Seen::Answer(st, None, _) if *st == s)
        }
    }
}

/// (name, the upstream's answer, close the connection after it, what the app sees)
const CASES: &[(&str, &[u8], bool, Expect)] = &[
    // Valid framing, forwarded as is.
    ("content-length", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false, Expect::Forward(200, "ok")),
    ("chunked", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false, Expect::Forward(200, "ok")),
    ("chunked-ext", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;name=value\r\nok\r\n0\r\n\r\n", false, Expect::Forward(200, "ok")),
    ("chunked-trailer", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-t: 1\r\n\r\n", false, Expect::Forward(200, "ok")),
    ("close-delimited", b"HTTP/1.1 200 OK\r\n\r\nok", true, Expect::Forward(200, "ok")),
    ("http-1.0", b"HTTP/1.0 200 OK\r\n\r\nok", true, Expect::Forward(200, "ok")),
    ("informational-first", b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false, Expect::Forward(200, "ok")),
    ("204-no-body", b"HTTP/1.1 204 No Content\r\n\r\n", false, Expect::Forward(204, "")),
    ("304-no-body", b"HTTP/1.1 304 Not Modified\r\n\r\n", false, Expect::Forward(304, "")),
    ("empty-reason", b"HTTP/1.1 200 \r\ncontent-length: 2\r\n\r\nok", false, Expect::Forward(200, "ok")),
    ("same-length-twice", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok", false, Expect::ForwardOrRefuse(200)),
    ("length-list-same", b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok", false, Expect::ForwardOrRefuse(200)),
    // Framing fields that disagree or cannot be read: refused (RFC 9112 §6.3).
    ("two-lengths", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nokk", false, Expect::Refused),
    ("length-list-differs", b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nokk", false, Expect::Refused),
    ("length-plus", b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok", false, Expect::Refused),
    ("length-minus", b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\nok", false, Expect::Refused),
    ("length-hex", b"HTTP/1.1 200 OK\r\ncontent-length: 0x2\r\n\r\nok", false, Expect::Refused),
    ("length-space-inside", b"HTTP/1.1 200 OK\r\ncontent-length: 1 1\r\n\r\nok", false, Expect::Refused),
    ("length-empty", b"HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\nok", false, Expect::Refused),
    ("length-overflow", b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\nok", false, Expect::Refused),
    ("te-and-length", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false, Expect::ForwardOrRefuse(200)),
    ("te-chunked-twice", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false, Expect::Refused),
    ("te-unknown", b"HTTP/1.1 200 OK\r\ntransfer-encoding: foo\r\n\r\nok", true, Expect::ForwardOrRefuse(200)),
    ("te-chunked-not-last", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\nok", true, Expect::ForwardOrRefuse(200)),
    // The status line.
    ("status-4-digits", b"HTTP/1.1 2000 OK\r\ncontent-length: 2\r\n\r\nok", false, Expect::Refused),
    ("status-2-digits", b"HTTP/1.1 20 OK\r\ncontent-length: 2\r\n\r\nok", false, Expect::Refused),
    ("status-letters", b"HTTP/1.1 2x0 OK\r\ncontent-length: 2\r\n\r\nok", false, Expect::Refused),
    ("status-099", b"HTTP/1.1 099 Odd\r\ncontent-length: 2\r\n\r\nok", false, Expect::Refused),
    ("version-2", b"HTTP/2.0 200 OK\r\ncontent-length: 2\r\n\r\nok", false, Expect::Refused),
    ("version-lowercase", b"http/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false, Expect::Refused),
    ("not-http", b"hello there\r\n\r\n", true, Expect::Refused),
    ("nothing-then-close", b"", true, Expect::Reset),
    ("head-cut-short", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n", true, Expect::Reset),
    ("unsolicited-101", b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n", false, Expect::Refused),
    // Header lines.
    ("obs-fold", b"HTTP/1.1 200 OK\r\nx-a: 1\r\n  2\r\ncontent-length: 2\r\n\r\nok", false, Expect::ForwardOrRefuse(200)),
    ("space-before-colon", b"HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\nok", false, Expect::ForwardOrRefuse(200)),
    ("name-with-space", b"HTTP/1.1 200 OK\r\nbad name: x\r\ncontent-length: 2\r\n\r\nok", false, Expect::Refused),
    ("no-colon", b"HTTP/1.1 200 OK\r\nnocolon\r\ncontent-length: 2\r\n\r\nok", false, Expect::Refused),
    ("empty-name", b"HTTP/1.1 200 OK\r\n: x\r\ncontent-length: 2\r\n\r\nok", false, Expect::Refused),
    ("nul-in-value", b"HTTP/1.1 200 OK\r\nx-a: a\0b\r\ncontent-length: 2\r\n\r\nok", false, Expect::Refused),
    ("bare-cr-in-value", b"HTTP/1.1 200 OK\r\nx-a: a\rb\r\ncontent-length: 2\r\n\r\nok", false, Expect::Refused),
    ("bare-lf-lines", b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok", false, Expect::ForwardOrRefuse(200)),
    // Bodies: the head went out, the body fails.
    ("chunk-size-letters", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n", false, Expect::Cut),
    ("chunk-size-overflow", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffffff\r\nok\r\n0\r\n\r\n", false, Expect::Cut),
    ("chunk-size-plus", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n+2\r\nok\r\n0\r\n\r\n", false, Expect::Cut),
    ("chunk-no-crlf-after-data", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n", false, Expect::Cut),
    ("chunked-cut-by-close", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n", true, Expect::Cut),
    ("length-cut-by-close", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok", true, Expect::Cut),
    // More on the connection than the answer said: the extra bytes must not become the next
    // request's answer.
    ("bytes-after-length", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nevil\n", false, Expect::Forward(200, "ok")),
    ("body-on-204", b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nevil\n", false, Expect::Forward(204, "")),
    ("body-on-304", b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\nevil\n", false, Expect::Forward(304, "")),
    ("bytes-after-chunked", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nevil\n", false, Expect::Forward(200, "ok")),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_case_and_no_desync_after_it() {
    let mut failures = Vec::new();
    let mut table = String::from("| case | expected | seen | next request |\n|---|---|---|---|\n");
    for &(name, bad, close, expect) in CASES {
        let (up, _conns) = raw(bad, close).await;
        let legate = Legate::start(&config(up, "", ""));
        let seen = fetch(legate.addr).await;
        let next = fetch(legate.addr).await;
        let next_ok = next == Seen::Answer(200, None, "fine\n".into());
        table.push_str(&format!(
            "| {name} | {expect:?} | {seen:?} | {} |\n",
            if next_ok { "ok" } else { "WRONG" }
        ));
        if !matches(expect, &seen) {
            failures.push(format!("{name}: expected {expect:?}, saw {seen:?}"));
        }
        if !next_ok {
            failures.push(format!("{name}: the next request saw {next:?}"));
        }
    }
    eprintln!("{table}");
    assert!(CASES.len() >= 40, "the corpus has {} cases", CASES.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}
