//! TCP listeners over real sockets on 127.0.0.1: bytes both ways, half-close, server-speaks-
//! first, idle timeout, lifetime, max_connections with readiness, failover on connect, reset
//! propagation, Unix sockets, and the PostgreSQL-aware front (SSLRequest answered `N`, a server
//! without SSL reported to the app in its own protocol, a client that is not PostgreSQL).

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that reads until the client's end of stream, then answers with everything it
/// read, reversed, and closes: a client that half-closes must still get the whole answer.
async fn reverse_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                if s.read_to_end(&mut all).await.is_ok() {
                    all.reverse();
                    let _ = s.write_all(&all).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    addr
}

/// An upstream that speaks first (like MySQL or SMTP), then echoes lines.
async fn greeting_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 hello from upstream\r\n").await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn tcp_config(upstream: &str, listener_extra: &str, upstream_extra: &str) -> String {
    format!(
        r#"
admin: {{ listen: 127.0.0.1:0 }}
runtime: {{ workers: 1 }}
listeners:
  - name: db
    listen: 127.0.0.1:0
    protocol: tcp
    upstream: svc
{listener_extra}
upstreams:
  - name: svc
    endpoints: [{upstream}]
{upstream_extra}
"#
    )
}

fn tcp_lines(l: &Legate) -> Vec<serde_json::Value> {
    l.log_lines()
        .into_iter()
        .filter(|v| v["type"] == "tcp")
        .collect()
}

async fn wait_log(l: &Legate, n: usize) -> Vec<serde_json::Value> {
    wait_until_async("tcp log lines", || tcp_lines(l).len() >= n).await;
    tcp_lines(l)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_still_gets_the_whole_answer() {
    let up = reverse_upstream().await;
    let legate = Legate::start(&tcp_config(&up.to_string(), "", ""));
    let mut c = TcpStream::connect(legate.addr).await.unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    c.write_all(&payload).await.unwrap();
    c.shutdown().await.unwrap();
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).await.unwrap();
    let mut expected = payload.clone();
    expected.reverse();
    assert_eq!(answer.len(), expected.len());
    assert!(
        answer == expected,
        "answer differs from the reversed payload"
    );
    let lines = wait_log(&legate, 1).await;
    let line = &lines[0];
    assert_eq!(line["close"], "client-closed", "{line}");
    assert_eq!(line["bytes_to_upstream"], 300_000);
    assert_eq!(line["bytes_to_client"], 300_000);
    assert_eq!(line["endpoint"], up.to_string());
    let m = legate.metrics();
    assert_eq!(
        metric(
            &m,
            "legate_tcp_bytes_total",
            &["listener=\"db\"", "direction=\"to_upstream\""]
        ),
        Some(300_000.0)
    );
    assert_eq!(
        metric(
            &m,
            "legate_tcp_connections_total",
            &["result=\"client-closed\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "legate_tcp_connections_active", &["listener=\"db\""]),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_speaks_first_without_waiting_for_the_client() {
    let up = greeting_upstream().await;
    let legate = Legate::start(&tcp_config(&up.to_string(), "", ""));
    let mut c = TcpStream::connect(legate.addr).await.unwrap();
    let mut greeting = [0u8; 25];
    c.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"220 hello from upstream\r\n");
    c.write_all(b"EHLO x\r\n").await.unwrap();
    let mut echo = [0u8; 8];
    c.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"EHLO x\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_and_lifetime_close_connections() {
    let up = greeting_upstream().await;
    let legate = Legate::start(&tcp_config(&up.to_string(), "    idle_timeout: 300ms", ""));
    let mut c = TcpStream::connect(legate.addr).await.unwrap();
    let mut buf = vec![0u8; 64];
    let n = c.read(&mut buf).await.unwrap();
    assert!(n > 0);
    // Silent both ways: legate closes it.
    assert_eq!(c.read(&mut buf).await.unwrap(), 0);
    let lines = wait_log(&legate, 1).await;
    assert_eq!(lines[0]["close"], "idle-timeout", "{}", lines[0]);

    // A busy connection is closed by its lifetime, not by the idle timeout.
    let legate = Legate::start(&tcp_config(
        &up.to_string(),
        "    idle_timeout: 10s\n    max_connection_lifetime: 400ms",
        "",
    ));
    let mut c = TcpStream::connect(legate.addr).await.unwrap();
    let _ = c.read(&mut buf).await.unwrap();
    let closed = async {
        loop {
            if c.write_all(b"ping\n").await.is_err() {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(50), c.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the lifetime ends the connection");
    let lines = wait_log(&legate, 1).await;
    assert_eq!(lines[0]["close"], "lifetime", "{}", lines[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_and_reports_not_ready() {
    let up = greeting_upstream().await;
    let legate = Legate::start(&tcp_config(&up.to_string(), "    max_connections: 2", ""));
    let admin = legate.admin.unwrap();
    let ready = || async {
        let r = get(admin, "/ready").await;
        r.status
    };
    assert_eq!(ready().await, 200);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(legate.addr).await.unwrap();
        let mut g = [0u8; 25];
        c.read_exact(&mut g).await.unwrap();
        held.push(c);
    }
    assert_eq!(ready().await, 503, "saturated listener must not be ready");
    let mut third = TcpStream::connect(legate.addr).await.unwrap();
    let mut buf = [0u8; 8];
    let r = third.read(&mut buf).await;
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "over the limit the connection is closed at once: {r:?}"
    );
    let m = legate.metrics();
    assert_eq!(
        metric(
            &m,
            "legate_listener_connections_refused_total",
            &["reason=\"max-connections\""]
        ),
        Some(1.0)
    );
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ready().await != 200 {
        assert!(tokio::time::Instant::now() < deadline, "ready again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = TcpStream::connect(legate.addr).await.unwrap();
    let mut g = [0u8; 25];
    again.read_exact(&mut g).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_tries_the_next_endpoint() {
    let up = greeting_upstream().await;
    // A port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let legate = Legate::start(&tcp_config(
        &format!("{dead}, {up}"),
        "    connect_attempts: 2",
        "    balance: round-robin\n    outlier_detection: { enabled: false }",
    ));
    for _ in 0..6 {
        let mut c = TcpStream::connect(legate.addr).await.unwrap();
        let mut g = [0u8; 25];
        c.read_exact(&mut g).await.unwrap();
        assert_eq!(&g[..3], b"220");
    }
    let m = legate.metrics();
    let refused = metric(
        &m,
        "legate_tcp_connect_failures_total",
        &["upstream=\"svc\"", "reason=\"connect-refused\""],
    )
    .unwrap_or(0.0);
    assert!(
        refused >= 1.0,
        "the dead endpoint was tried and counted\n{m}"
    );

    // Nothing to connect to: the client is closed at once, the log names the endpoint.
    let legate = Legate::start(&tcp_config(&dead.to_string(), "", ""));
    let mut c = TcpStream::connect(legate.addr).await.unwrap();
    let mut buf = [0u8; 8];
    let r = c.read(&mut buf).await;
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    let lines = wait_log(&legate, 1).await;
    assert_eq!(lines[0]["close"], "connect-refused", "{}", lines[0]);
    assert_eq!(lines[0]["endpoint"], dead.to_string());
    assert!(lines[0]["error"]
        .as_str()
        .unwrap()
        .contains(&dead.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_upstream_resets_the_client() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut b = [0u8; 4];
            let _ = s.read_exact(&mut b).await;
            let _ = s.set_zero_linger();
            drop(s);
        }
    });
    let legate = Legate::start(&tcp_config(&up.to_string(), "", ""));
    let mut c = TcpStream::connect(legate.addr).await.unwrap();
    c.write_all(b"boom").await.unwrap();
    let mut buf = [0u8; 8];
    let r = c.read(&mut buf).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the upstream's reset reaches the client as a reset: {r:?}"
    );
    let lines = wait_log(&legate, 1).await;
    assert_eq!(lines[0]["close"], "reset", "{}", lines[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_listener() {
    let up = greeting_upstream().await;
    let dir = std::env::temp_dir().join(format!("legate-tcp-unix-{}", std::process::id()));
    let path = dir.join("cloudsql/db/.s.PGSQL.5432");
    let yaml = format!(
        r#"
admin: {{ listen: 127.0.0.1:0 }}
runtime: {{ workers: 2 }}
listeners:
  - name: db
    listen: unix:{}
    socket_mode: "0600"
    protocol: tcp
    upstream: svc
upstreams:
  - name: svc
    endpoints: [{up}]
"#,
        path.display()
    );
    let mut legate = Legate::start(&yaml);
    for _ in 0..3 {
        let mut c = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut g = [0u8; 25];
        c.read_exact(&mut g).await.unwrap();
        assert_eq!(&g, b"220 hello from upstream\r\n");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let lines = wait_log(&legate, 3).await;
    assert_eq!(lines[0]["peer"], "unix");
    legate.stop();
    assert!(!path.exists(), "the socket file is removed at stop");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fake PostgreSQL server that answers `N` to SSLRequest: legate must refuse to go on in
/// plaintext and tell the app why, as a PostgreSQL ErrorResponse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_server_without_ssl_is_an_error_for_the_app() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut req = [0u8; 8];
            if s.read_exact(&mut req).await.is_ok() {
                let _ = s.write_all(b"N").await;
            }
        }
    });
    let legate = Legate::start(&tcp_config(
        &up.to_string(),
        "",
        "    tls: { mode: postgres, server_name: localhost }",
    ));
    let mut c = TcpStream::connect(legate.addr).await.unwrap();
    // libpq's default sslmode=prefer: SSLRequest first; legate answers N for the local hop.
    c.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut n = [0u8; 1];
    c.read_exact(&mut n).await.unwrap();
    assert_eq!(&n, b"N");
    let mut startup = Vec::new();
    let body = b"\x00\x03\x00\x00user\x00app\x00database\x00app\x00\x00";
    startup.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    startup.extend_from_slice(body);
    c.write_all(&startup).await.unwrap();
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer.first(), Some(&b'E'), "an ErrorResponse");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("does not support SSL"), "{text}");
    assert!(text.contains("08001"), "{text}");
    let lines = wait_log(&legate, 1).await;
    assert_eq!(lines[0]["close"], "tls-not-supported", "{}", lines[0]);

    // A client that does not speak PostgreSQL is closed and logged, nothing is sent upstream.
    let mut c = TcpStream::connect(legate.addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf).await;
    assert!(buf.is_empty());
    let lines = wait_log(&legate, 2).await;
    assert_eq!(lines[1]["close"], "client-protocol-error", "{}", lines[1]);
    assert!(lines[1]["endpoint"].is_null());
}

#[test]
fn check_reports_tcp_listener_mistakes() {
    let yaml = r#"
listeners:
  - name: db
    listen: unix:/tmp/x.sock
    protocol: http
    routes: [{ name: r, upstream: pg }]
    idle_timeout: 5s
  - name: tunnel
    listen: 127.0.0.1:6000
    protocol: tcp
    tls: { cert: /c, key: /k }
  - name: server
    listen: 127.0.0.1:6001
    protocol: tcp
    upstream: remote
    tls: { cert: /c, key: /k, forward_client_cert: x-forwarded-client-cert }
    socket_mode: "0660"
upstreams:
  - name: pg
    endpoints: [127.0.0.1:5432]
    postgres: { password_file: /pw }
  - name: remote
    endpoints: [db.internal:5432]
    auth: { basic: { username_file: /u, password_file: /p } }
"#;
    let err = legate::config::load_str("c.yaml", yaml, |_| None)
        .unwrap_err()
        .lines()
        .join("\n");
    for want in [
        "listeners[0].listen: Unix sockets are for `protocol: tcp` listeners",
        "listeners[0].idle_timeout: only for `protocol: tcp` listeners",
        "listeners[1].upstream: a TCP listener needs `upstream:`",
        "listeners[2].upstream: this listener terminates TLS and forwards to `remote` at db.internal:5432, which is not loopback",
        "listeners[2].socket_mode: only for `unix:` listeners",
        "listeners[2].tls.forward_client_cert: a TCP listener has no headers",
        "upstreams[0].postgres: only for an upstream of a `protocol: tcp` listener",
        "upstreams[0].postgres: name the database user",
        "upstreams[1].auth: HTTP credentials mean nothing on a TCP tunnel",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
    // Every line names the file and a position.
    for line in err.lines() {
        assert!(line.starts_with("c.yaml:"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_idle_tunnels_and_lets_busy_ones_finish() {
    let up = greeting_upstream().await;
    let yaml = tcp_config(&up.to_string(), "", "").replace(
        "runtime: { workers: 1 }",
        "runtime: { workers: 1 }\nshutdown: { drain_timeout: 1h }",
    );
    let mut legate = Legate::start(&yaml);
    let mut idle = TcpStream::connect(legate.addr).await.unwrap();
    let mut g = [0u8; 25];
    idle.read_exact(&mut g).await.unwrap();
    // stop() blocks until the drain is over: without the drain's idle close it would hold
    // the idle tunnel for the whole drain_timeout (1h).
    let stopper = std::thread::spawn(move || {
        legate.stop();
        legate
    });
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(30), idle.read(&mut buf))
        .await
        .expect("the idle tunnel is closed by the drain, well before drain_timeout");
    assert!(matches!(r, Ok(0)), "closed with a FIN: {r:?}");
    let legate = tokio::task::spawn_blocking(move || stopper.join().unwrap())
        .await
        .unwrap();
    let lines = tcp_lines(&legate);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["close"], "drain", "{}", lines[0]);
}
