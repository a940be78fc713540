//! `legate top` against a real legate: exact totals per upstream after a known number of
//! requests, the refreshing view, and a clear failure when the admin cannot be reached.

#[path = "support/proc.rs"]
mod proc;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

/// A tiny upstream: answers every request with `200 ok` and `Connection: close`.
fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || answer(stream));
        }
    });
    addr
}

fn answer(mut s: TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    );
    let _ = s.flush();
    let _ = s.shutdown(Shutdown::Write);
    // Wait for the peer to close, so nothing unread turns into a reset.
    while matches!(s.read(&mut chunk), Ok(n) if n > 0) {}
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    proc::free_port()
}

/// The whitespace-separated words of the totals line of `upstream` in a `legate top` frame.
fn totals(frame: &str, upstream: &str) -> Option<Vec<String>> {
    frame
        .lines()
        .map(|l| l.trim_start_matches("\x1b[H\x1b[2J"))
        .find(|l| l.split_whitespace().next() == Some(upstream) && l.contains("requests="))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
}

#[test]
fn top_once_shows_exact_totals_per_upstream() {
    const GOOD: usize = 7;
    const BAD: usize = 3;
    let upstream = start_upstream();
    let listen = proc::free_port();
    let admin = proc::free_port();
    let dead = closed_port();
    let dir = proc::TempDir::new("top");
    let config = dir.write(
        "legate.yaml",
        format!(
            "admin: {{ listen: 127.0.0.1:{admin} }}
runtime: {{ workers: 1 }}
access_log: off
listeners:
  - name: app
    listen: 127.0.0.1:{listen}
    routes:
      - name: broken
        match: {{ path_prefix: /broken }}
        upstream: dead
      - name: main
        match: {{ path_prefix: / }}
        upstream: good
upstreams:
  - name: good
    endpoints: [ \"{upstream}\" ]
  - name: dead
    endpoints: [ \"127.0.0.1:{dead}\" ]
"
        ),
    );
    let config = config.to_str().expect("utf-8 temp path");
    let _legate = proc::legate_ready("legate run", &["run", "-c", config], admin);

    let to = proc::local(listen);
    for i in 0..GOOD {
        let r = proc::http_get(to, &format!("/ok/{i}"), Duration::from_secs(10))
            .expect("request through legate");
        assert_eq!(r.status, 200, "request {i} to `good`: {}", r.text());
    }
    for i in 0..BAD {
        let r = proc::http_get(to, &format!("/broken/{i}"), Duration::from_secs(10))
            .expect("request through legate");
        assert!(
            r.status >= 500,
            "request {i} to the closed port must fail with a 5xx, got {} {}",
            r.status,
            r.text()
        );
    }
    // Metrics are recorded at the end of each response: wait until all are counted.
    proc::wait_for("all requests in /metrics", proc::STARTUP_DEADLINE, || {
        let r = proc::http_get(proc::local(admin), "/metrics", Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let n = proc::metric_sum(
            &proc::parse_metrics(&r.text()),
            "legate_http_requests_total",
        )
        .unwrap_or(0.0);
        (n == (GOOD + BAD) as f64)
            .then_some(())
            .ok_or_else(|| format!("legate_http_requests_total is {n}"))
    });

    let admin_addr = format!("127.0.0.1:{admin}");
    let out = proc::legate_cmd(&[
        "top",
        "--once",
        "--admin",
        &admin_addr,
        "--interval",
        "200ms",
    ]);
    assert_eq!(out.code(), Some(0), "legate top --once: {}", out.describe());
    let frame = &out.stdout;
    assert!(
        !frame.contains('\x1b'),
        "--once prints plain text:\n{frame:?}"
    );
    assert!(frame.contains("legate top"), "{}", out.describe());
    let good = totals(frame, "good").unwrap_or_else(|| panic!("no totals for `good`:\n{frame}"));
    assert_eq!(
        good,
        ["good", "requests=7", "errors=0", "legate-errors=0"],
        "{frame}"
    );
    let bad = totals(frame, "dead").unwrap_or_else(|| panic!("no totals for `dead`:\n{frame}"));
    assert_eq!(
        bad,
        ["dead", "requests=3", "errors=3", "legate-errors=3"],
        "{frame}"
    );
    // And each upstream has its row in the table (name first, then req/s).
    for name in ["good", "dead"] {
        let rows = frame
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(name))
            .count();
        assert_eq!(
            rows, 2,
            "a table row and a totals line for `{name}`:\n{frame}"
        );
    }

    // Without --once: frames keep coming, each clearing the screen first.
    let mut live = proc::legate_spawn(
        "legate top",
        &["top", "--admin", &admin_addr, "--interval", "100ms"],
    );
    proc::wait_for(
        "a refreshed frame with the totals",
        proc::STARTUP_DEADLINE,
        || {
            live.ensure_running();
            let lines = live.stdout_lines();
            let frame = lines.join("\n");
            let cleared = frame.matches("\x1b[H\x1b[2J").count();
            match totals(&frame, "good") {
                Some(words) if cleared >= 2 && words[1] == "requests=7" => Ok(()),
                other => Err(format!("{cleared} frames, good: {other:?}")),
            }
        },
    );
}

#[test]
fn top_names_an_unreachable_admin() {
    let addr = format!("127.0.0.1:{}", closed_port());
    let out = proc::legate_cmd(&["top", "--once", "--admin", &addr, "--interval", "200ms"]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(out.stderr.contains(&addr), "{}", out.describe());
    assert!(out.stdout.trim().is_empty(), "{}", out.describe());

    // The refreshing view shows the error and keeps trying.
    let mut live = proc::legate_spawn(
        "legate top",
        &["top", "--admin", &addr, "--interval", "100ms"],
    );
    proc::wait_for("two error frames", proc::STARTUP_DEADLINE, || {
        live.ensure_running();
        let frame = live.stdout_lines().join("\n");
        let errors = frame.matches("cannot reach").count();
        (errors >= 2 && frame.contains(&addr))
            .then_some(())
            .ok_or_else(|| format!("{errors} error frames so far: {frame:?}"))
    });
}
