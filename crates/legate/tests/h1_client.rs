//! legate's own HTTP/1.1 upstream client (requests without upgrade whose body is in memory)
//! against a raw-TCP upstream that answers each request with exact bytes: informational
//! responses, bodies delimited every way RFC 9112 allows, connection reuse and its refusal,
//! and malformed answers.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Each connection reads request heads and answers the i-th request overall with
/// `answers[i]`; a `None` answer closes the connection instead.
struct Raw {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn raw(answers: Vec<Option<&'static [u8]>>) -> Raw {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(answers);
    let (c, r) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let (r, next, answers) = (r.clone(), next.clone(), answers.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let n = match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            break;
                        }
                        let body =
                            String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                        buf.drain(..end + 4 + len);
                        r.lock().unwrap().push(format!("{head}{body}"));
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        match answers.get(i).copied().flatten() {
                            Some(a) => {
                                if sock.write_all(a).await.is_err() {
                                    return;
                                }
                            }
                            None => return,
                        }
                    }
                }
            });
        }
    });
    Raw {
        addr,
        connections,
        requests,
    }
}

fn cfg(up: SocketAddr) -> String {
    config(up, "", "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_delimited_every_way_and_connections_reused_when_allowed() {
    let up = raw(vec![
        // Informational responses are skipped.
        Some(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"),
        // Chunked, with an extension and trailers.
        Some(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-checksum: 1\r\n\r\n"),
        // No body: 204 and 304 whatever the headers say.
        Some(b"HTTP/1.1 204 No Content\r\n\r\n"),
        Some(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 99\r\n\r\n"),
        // HEAD: the length describes the GET's body, none follows.
        Some(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"),
        // The same length twice is fine.
        Some(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok"),
    ])
    .await;
    let legate = Legate::start(&cfg(up.addr));
    let mut c = Client::h1(legate.addr).await;
    let r = c.get("/a").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
    let r = c.get("/b").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"abcde"[..]));
    assert_eq!(c.get("/c").await.status, 204);
    let r = c.get("/d").await;
    assert_eq!((r.status, r.body.len()), (304, 0));
    let head = http::Request::head("/e")
        .header("host", "x")
        .body(full(bytes::Bytes::new()))
        .unwrap();
    let r = c.send(head).await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.header("content-length"), Some("1234"));
    let r = c.get("/f").await;
    assert_eq!(&r.body[..], b"ok");
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "every answer was complete and keep-alive: one upstream connection"
    );
    let reqs = up.requests.lock().unwrap();
    assert!(reqs[0].starts_with("GET /a HTTP/1.1\r\n"), "{}", reqs[0]);
    assert!(reqs[4].starts_with("HEAD /e HTTP/1.1\r\n"), "{}", reqs[4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_and_http_1_0_answers_are_not_reused() {
    let up = raw(vec![
        Some(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\na"),
        Some(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\nb"),
        Some(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),
    ])
    .await;
    let legate = Legate::start(&cfg(up.addr));
    let mut c = Client::h1(legate.addr).await;
    assert_eq!(&c.get("/1").await.body[..], b"a");
    assert_eq!(&c.get("/2").await.body[..], b"b");
    // A body without length runs to the end of the connection; the upstream here keeps the
    // socket open, so the client reads it as it streams and the test closes it by dropping.
    let resp = c.get_raw("/3").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        3,
        "no reuse after close, 1.0 or a close-delimited body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_upstream_closed_is_not_used() {
    // The upstream answers one request per connection and closes (keep-alive advertised).
    let up = raw(vec![
        Some(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1"),
        None,
        Some(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n2"),
    ])
    .await;
    let legate = Legate::start(&cfg(up.addr));
    let mut c = Client::h1(legate.addr).await;
    assert_eq!(&c.get("/1").await.body[..], b"1");
    // The second request's connection closes without an answer: a GET that got no byte back
    // on a reused connection goes out once more on a new one.
    let r = c.get("/2").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"2"[..]));
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_are_502_with_their_reason() {
    let up = raw(vec![Some(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
    )])
    .await;
    let legate = Legate::start(&cfg(up.addr));
    let r = get(legate.addr, "/").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("legate-error"), Some("upstream-protocol-error"));
    assert!(
        String::from_utf8_lossy(&r.body).contains("Content-Length"),
        "{:?}",
        r.body
    );

    let cut = raw(vec![Some(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    )])
    .await;
    let legate = Legate::start(&cfg(cut.addr));
    let resp = Client::h1(legate.addr).await.get_raw("/").await.unwrap();
    assert_eq!(resp.status(), 200);
    use http_body_util::BodyExt;
    assert!(
        resp.into_body().collect().await.is_err(),
        "a bad chunk cuts the body for the client"
    );
}
