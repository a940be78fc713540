//! A burst from the app, as a new user would make one: 10,000 concurrent requests on 10,000
//! client connections through legate's default settings to a real nginx, all answered 200.
//! Requests over the upstream's `max_connections` wait for a connection instead of failing.

#[path = "support/proc.rs"]
mod proc;

use proc::{
    free_port, http_get, legate_spawn, local, nginx_ok, parse_metrics, raise_nofile, wait_ready,
    TempDir,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENTS: usize = 10_000;

/// The two bursts run one after the other: together they would share this process's
/// descriptors and the machine's two cores, and each measures what one burst does.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `n` connections opened first, then one request on each at once; their statuses (or why
/// there was none).
fn burst(port: u16, n: usize) -> Vec<Result<(u16, String), String>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let all_connected = Arc::new(tokio::sync::Barrier::new(n));
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let go = all_connected.clone();
                tokio::spawn(async move {
                    // Everyone reaches the barrier, connected or not: a failed connect must
                    // fail the test, not hang it.
                    let connected = tokio::net::TcpStream::connect(local(port)).await;
                    go.wait().await;
                    let mut s = connected.map_err(|e| format!("connect: {e}"))?;
                    s.write_all(b"GET /burst HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
                        .await
                        .map_err(|e| format!("write: {e}"))?;
                    let mut buf = Vec::new();
                    tokio::time::timeout(Duration::from_secs(120), s.read_to_end(&mut buf))
                        .await
                        .map_err(|_| "no answer in 120 s".to_string())?
                        .map_err(|e| format!("read: {e}"))?;
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let status = text
                        .split_whitespace()
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .ok_or(format!("not HTTP: {:?}", &text[..text.len().min(64)]))?;
                    Ok((status, text))
                })
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for t in tasks {
            out.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
        }
        out
    })
}

/// A keep-alive upstream that records how many connections were open at once at most.
fn counting_upstream() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let p = peak.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let (now, peak) = (now.clone(), p.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                // Counted from its first request: a connection that never carries one (a
                // readiness probe, say) is closed at once by its opener, but this thread may
                // start, and see that close, only after later connections began.
                let mut counted = false;
                'conn: loop {
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => break 'conn,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) if !counted => {
                                counted = true;
                                let open = now.fetch_add(1, Ordering::SeqCst) + 1;
                                peak.fetch_max(open, Ordering::SeqCst);
                            }
                            Ok(_) => {}
                        }
                    }
                    if w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                        .is_err()
                    {
                        break;
                    }
                }
                if counted {
                    now.fetch_sub(1, Ordering::SeqCst);
                }
            });
        }
    });
    (port, peak)
}

fn metrics_sum(admin: u16, name: &str) -> f64 {
    let text = http_get(local(admin), "/metrics", Duration::from_secs(5))
        .unwrap()
        .text();
    parse_metrics(&text)
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

#[test]
fn ten_thousand_concurrent_requests_through_defaults_all_served() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    raise_nofile(CLIENTS as u64 + 2_000, "its client connections");
    let dir = TempDir::new("burst");
    let (mut nginx, up_port) = nginx_ok(&dir);
    let (port, admin) = (free_port(), free_port());
    // Defaults everywhere: no circuit_breaker section, no limits.
    let mut lg = proc::legate_http(&format!("http://127.0.0.1:{up_port}"), port, admin, &[]);
    wait_ready(&mut lg, admin);
    let statuses = burst(port, CLIENTS);
    let ok = statuses
        .iter()
        .filter(|s| matches!(s, Ok((200, _))))
        .count();
    let others: Vec<String> = statuses
        .iter()
        .filter(|s| !matches!(s, Ok((200, _))))
        .take(5)
        .map(|s| format!("{:?}", s.as_ref().map(|(c, _)| c)))
        .collect();
    assert_eq!(ok, CLIENTS, "not all served; first others: {others:?}");
    assert_eq!(
        metrics_sum(admin, "legate_upstream_overflow_total"),
        0.0,
        "nothing shed at the defaults"
    );
    // Connections were handed from request to request: far fewer than one per request (the
    // cap itself, which bounds connections open at once, is checked in low_limits_queue_then_shed).
    let opened = metrics_sum(admin, "legate_upstream_connections_opened_total");
    assert!(
        opened < 2_000.0,
        "{opened} upstream connections for {CLIENTS} requests"
    );
    lg.signal("TERM");
    assert_eq!(
        lg.wait_exit(Duration::from_secs(30)).and_then(|s| s.code()),
        Some(0)
    );
    nginx.signal("QUIT");
    let _ = nginx.wait_exit(Duration::from_secs(10));
}

/// Set low, the limits shed what they should: over `max_connections` requests wait; over
/// `max_pending_requests` they fail at once with 503 `overflow`.
#[test]
fn low_limits_queue_then_shed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    raise_nofile(2_000, "its client connections");
    let dir = TempDir::new("burst-limits");
    let (up_port, peak) = counting_upstream();
    let run = |pending: u32| {
        let (port, admin) = (free_port(), free_port());
        let cfg = dir.write(
            &format!("legate-{pending}.yaml"),
            format!(
                "admin: {{ listen: 127.0.0.1:{admin} }}\naccess_log: off\n\
                 listeners:\n  - {{ name: app, listen: 127.0.0.1:{port}, routes: [{{ name: r, upstream: up }}] }}\n\
                 upstreams:\n  - name: up\n    url: http://127.0.0.1:{up_port}\n\
                 \x20   circuit_breaker: {{ max_connections: 2, max_pending_requests: {pending} }}\n"
            ),
        );
        let mut lg = legate_spawn("legate run", &["run", "-c", cfg.to_str().unwrap()]);
        wait_ready(&mut lg, admin);
        let statuses = burst(port, 300);
        lg.signal("TERM");
        assert_eq!(
            lg.wait_exit(Duration::from_secs(30)).and_then(|s| s.code()),
            Some(0)
        );
        statuses
    };
    // 300 at once through 2 connections: they wait their turn.
    let statuses = run(1000);
    assert!(
        statuses.iter().all(|s| matches!(s, Ok((200, _)))),
        "{:?}",
        statuses.iter().find(|s| !matches!(s, Ok((200, _))))
    );
    let most = peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        most <= 2,
        "{most} upstream connections open at once, over max_connections 2"
    );
    // With room for 10 waiting, the rest are shed at once, saying why.
    let statuses = run(10);
    let shed: Vec<&String> = statuses
        .iter()
        .filter_map(|s| s.as_ref().ok())
        .filter(|(c, _)| *c == 503)
        .map(|(_, t)| t)
        .collect();
    assert!(!shed.is_empty(), "some shed");
    assert!(
        shed.iter()
            .all(|t| t.contains("legate-error: overflow") && t.contains("max_pending_requests")),
        "{}",
        shed[0]
    );
    assert!(
        statuses
            .iter()
            .filter(|s| matches!(s, Ok((200, _))))
            .count()
            >= 2
    );
}
