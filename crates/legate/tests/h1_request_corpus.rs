//! Request-side framing corpus, end to end with raw sockets: what an app may send, held to RFC
//! 9110/9112. Each case is written on a fresh connection to legate (echo upstream behind it);
//! the case says what the app must get: the request forwarded (the upstream's echo shows the
//! target it saw), refused with the RFC's status and the connection closed (nothing after a
//! refused head can be trusted to be a request), or a local answer. The parser-level
//! differential against hyper's server is `h1_differential`.

mod common;

use common::{config, echo_upstream, parse_one, read_responses, Legate, Proto};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Forwarded: 200 from the echo upstream, which saw this target.
    Forward(&'static str),
    /// These many requests forwarded, answered in order.
    Pipelined(usize),
    /// Refused with this status, and the connection closed.
    Refuse(u16),
    /// Answered by legate itself with this status (the connection may stay).
    Local(u16),
    /// The RFC leaves a choice: forwarded (200), or refused with this status and closed.
    ForwardOrRefuse(u16),
}

/// A generated case as the `'static` bytes the table holds.
fn leak(text: String) -> &'static [u8] {
    Box::leak(text.into_bytes().into_boxed_slice())
}

fn cases(port: u16) -> Vec<(&'static str, &'static [u8], Expect)> {
    let own = leak(format!(
        "GET http://127.0.0.1:{port}/own HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    ));
    let big_header = leak(format!(
        "GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    ));
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    let many_headers = leak(format!("GET /many HTTP/1.1\r\nHost: x\r\n{many}\r\n"));
    let huge_chunk_extension = leak(format!(
        "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2;{}\r\nok\r\n0\r\n\r\n",
        "x".repeat(8 * 1024)
    ));
    use Expect::*;
    vec![
        // Valid requests, forwarded.
        ("get", b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", Forward("/a")),
        ("query", b"GET /a?b=1&c=%20 HTTP/1.1\r\nHost: x\r\n\r\n", Forward("/a?b=1&c=%20")),
        ("post-length", b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok", Forward("/p")),
        ("post-chunked", b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", Forward("/p")),
        ("chunk-extension", b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2;a=b\r\nok\r\n0\r\n\r\n", Forward("/p")),
        ("chunk-trailer", b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-t: 1\r\n\r\n", Forward("/p")),
        ("te-case-and-space", b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:  Chunked \r\n\r\n2\r\nok\r\n0\r\n\r\n", Forward("/p")),
        ("http-1.0-no-host", b"GET /old HTTP/1.0\r\n\r\n", Forward("/old")),
        ("tab-in-value", b"GET /t HTTP/1.1\r\nHost: x\r\nX-A: a\tb\r\n\r\n", Forward("/t")),
        ("obs-text-in-value", b"GET /o HTTP/1.1\r\nHost: x\r\nX-A: caf\xc3\xa9\r\n\r\n", Forward("/o")),
        ("empty-value", b"GET /e HTTP/1.1\r\nHost: x\r\nX-A:\r\n\r\n", Forward("/e")),
        ("leading-crlf", b"\r\nGET /l HTTP/1.1\r\nHost: x\r\n\r\n", Forward("/l")),
        ("absolute-form-own", own, Forward("/own")),
        ("length-zero", b"POST /z HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", Forward("/z")),
        ("same-length-twice", b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", ForwardOrRefuse(400)),
        ("bare-lf", b"GET /lf HTTP/1.1\nHost: x\n\n", ForwardOrRefuse(400)),
        ("version-1.2", b"GET /v HTTP/1.2\r\nHost: x\r\n\r\n", Forward("/v")),
        ("pipelined-3", b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\nGET /3 HTTP/1.1\r\nHost: x\r\n\r\n", Pipelined(3)),
        ("body-then-request", b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n", Pipelined(2)),
        // Framing fields that disagree or cannot be read (RFC 9112 §6.3): 400, or 501 for a
        // coding legate does not implement.
        ("te-and-length", b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", Refuse(400)),
        ("te-cl-smuggle", b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", Refuse(400)),
        ("cl-te-smuggle", b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", Refuse(400)),
        ("two-lengths", b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk", Refuse(400)),
        ("length-list", b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 3\r\n\r\nokk", Refuse(400)),
        ("length-plus", b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\nok", Refuse(400)),
        ("length-minus", b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: -2\r\n\r\nok", Refuse(400)),
        ("length-hex", b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 0x2\r\n\r\nok", Refuse(400)),
        ("length-space-inside", b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 1 1\r\n\r\nok", Refuse(400)),
        ("length-empty", b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\nok", Refuse(400)),
        ("length-overflow", b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\nok", Refuse(400)),
        ("te-chunked-twice", b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", Refuse(501)),
        ("te-gzip", b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nok", Refuse(400)),
        ("te-gzip-chunked", b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", Refuse(501)),
        ("te-unknown", b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", Refuse(400)),
        ("te-empty-element", b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked,\r\n\r\n2\r\nok\r\n0\r\n\r\n", Refuse(400)),
        ("te-parameter", b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked;x=1\r\n\r\n2\r\nok\r\n0\r\n\r\n", Refuse(400)),
        ("bare-cr-first", b"\r\rGET / HTTP/1.1\r\nHost: x\r\n\r\n", Refuse(400)),
        ("te-vertical-tab", b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \x0bchunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", Refuse(400)),
        ("te-in-http-1.0", b"POST /p HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", Refuse(400)),
        ("te-space-before-colon", b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 2\r\n\r\nok", Refuse(400)),
        // Header lines.
        ("obs-fold", b"GET /f HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n", Refuse(400)),
        ("space-before-colon", b"GET /s HTTP/1.1\r\nHost : x\r\n\r\n", Refuse(400)),
        ("space-in-name", b"GET /s HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", Refuse(400)),
        ("no-colon", b"GET /s HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", Refuse(400)),
        ("empty-name", b"GET /s HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n", Refuse(400)),
        ("nul-in-value", b"GET /s HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n", Refuse(400)),
        ("bare-cr-in-value", b"GET /s HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", Refuse(400)),
        ("control-in-value", b"GET /s HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", Refuse(400)),
        ("del-in-name", b"GET /s HTTP/1.1\r\nHost: x\r\nX\x7fA: v\r\n\r\n", Refuse(400)),
        ("no-host", b"GET /h HTTP/1.1\r\n\r\n", Refuse(400)),
        ("two-hosts", b"GET /h HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Refuse(400)),
        ("host-bad-chars", b"GET /h HTTP/1.1\r\nHost: a b\r\n\r\n", Refuse(400)),
        ("header-too-large", big_header, Refuse(431)),
        ("too-many-headers", many_headers, Refuse(431)),
        // The request line.
        ("method-bad-char", b"G(T /m HTTP/1.1\r\nHost: x\r\n\r\n", Refuse(400)),
        ("space-in-target", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", Refuse(400)),
        ("non-ascii-target", b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", Refuse(400)),
        ("target-not-origin", b"GET a HTTP/1.1\r\nHost: x\r\n\r\n", Refuse(400)),
        ("version-2", b"GET /v HTTP/2.0\r\nHost: x\r\n\r\n", Refuse(505)),
        ("version-short", b"GET /v HTTP/1\r\nHost: x\r\n\r\n", Refuse(400)),
        ("version-lowercase", b"GET /v http/1.1\r\nHost: x\r\n\r\n", Refuse(400)),
        ("no-version", b"GET /v\r\nHost: x\r\n\r\n", Refuse(400)),
        ("double-space", b"GET  /v HTTP/1.1\r\nHost: x\r\n\r\n", Refuse(400)),
        // Chunked bodies: the head was good, the body is not.
        ("chunk-size-overflow", b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nok\r\n0\r\n\r\n", Refuse(400)),
        ("chunk-size-plus", b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n+2\r\nok\r\n0\r\n\r\n", Refuse(400)),
        ("chunk-size-letters", b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n", Refuse(400)),
        ("chunk-no-crlf", b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n", Refuse(400)),
        ("chunk-extension-huge", huge_chunk_extension, Refuse(400)),
        // Things an ambassador does not do.
        ("connect", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", Local(405)),
        ("absolute-form-other", b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n", Local(403)),
    ]
}

async fn run_case(
    addr: std::net::SocketAddr,
    bytes: &[u8],
    expect: Expect,
) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let n = match expect {
        Expect::Pipelined(n) => n,
        _ => 1,
    };
    let got = read_responses(&mut s, n).await;
    let Some((status, head, body)) = got.first().cloned() else {
        return Err("no answer".into());
    };
    let seen = format!(
        "{status} {}",
        body.lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(80)
            .collect::<String>()
    );
    let target_ok = |path: &str| body.contains(&format!("\"uri\":\"{path}\""));
    let ok = match expect {
        Expect::Forward(path) => status == 200 && target_ok(path),
        Expect::Pipelined(n) => got.len() == n && got.iter().all(|r| r.0 == 200),
        Expect::Refuse(code) => {
            status == code && head.contains("legate-error") && closed(&mut s).await
        }
        Expect::Local(code) => status == code,
        Expect::ForwardOrRefuse(code) => status == 200 || (status == code && closed(&mut s).await),
    };
    if ok {
        Ok(seen)
    } else {
        Err(seen)
    }
}

/// Whether legate closed the connection (after its answer, nothing more comes).
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// What any proxy at `addr` does with `bytes`: its answers (`fwd` for the upstream's 200,
/// else the status) and whether it then closed the connection. For bench/framing.sh.
async fn observe(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return "connect-failed".into();
    };
    if s.write_all(bytes).await.is_err() {
        return "write-failed".into();
    }
    let (mut raw, mut closed) = (Vec::new(), false);
    loop {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => raw.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    let mut seen = Vec::new();
    let mut at = 0;
    while let Some(((status, _, body), used)) = parse_one(&raw[at..]) {
        at += used;
        seen.push(if status == 200 && body.contains("\"uri\"") {
            "fwd".to_string()
        } else {
            status.to_string()
        });
    }
    if seen.is_empty() {
        seen.push("none".into());
    }
    format!("{}{}", seen.join(","), if closed { " closed" } else { "" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_case() {
    // bench/framing.sh: run the corpus against another proxy and print what it did.
    if let Ok(proxy) = std::env::var("CORPUS_PROXY") {
        let addr: std::net::SocketAddr = proxy.parse().expect("CORPUS_PROXY is host:port");
        for (name, bytes, _) in cases(addr.port()) {
            println!("CASE\t{name}\t{}", observe(addr, bytes).await);
        }
        return;
    }
    let up = echo_upstream(Proto::H1).await;
    let legate = Legate::start(&config(up.addr, "", ""));
    let cases = cases(legate.addr.port());
    let mut table = String::from("| case | expected | seen |\n|---|---|---|\n");
    let mut failures = Vec::new();
    for (name, bytes, expect) in &cases {
        let r = run_case(legate.addr, bytes, *expect).await;
        let seen = match &r {
            Ok(s) | Err(s) => s.clone(),
        };
        table.push_str(&format!("| {name} | {expect:?} | {seen} |\n"));
        if r.is_err() {
            failures.push(format!("{name}: expected {expect:?}, saw {seen}"));
        }
    }
    eprintln!("{table}");
    assert!(cases.len() >= 60, "the corpus has {} cases", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
