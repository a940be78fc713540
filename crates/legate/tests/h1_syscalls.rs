//! The system calls legate's HTTP/1.1 server makes for a keep-alive request, counted with
//! strace on the real binary. While an answer is pending legate watches the client connection
//! (a client that leaves is a 499, and the bytes of a pipelined request are kept); that watch
//! must wait for the event loop, not start with a read of a socket the head's own read left
//! empty — that read can only say EAGAIN, and it cost one system call per request (2.9 reads
//! per request against nginx's 2.0, docs/performance.md).

#[path = "support/proc.rs"]
mod proc;

use proc::{free_port, local, wait_for, wait_ready, TempDir};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// An upstream that answers each request `delay` after its head arrived, so every answer is
/// pending for a while (the watch on the client is armed) and arrives on its own event.
fn slow_upstream(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while conn.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                    if head.ends_with(b"\r\n\r\n") {
                        head.clear();
                        thread::sleep(delay);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if conn.write_all(answer).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Sends `GET /` on `c` and reads the whole answer (`content-length: 2`).
fn get(c: &mut TcpStream) {
    c.write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n").unwrap();
    let mut reader = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    let mut length = None;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0u8; length.expect("a content-length")];
    reader.read_exact(&mut body).unwrap();
    assert_eq!(body, b"ok");
}

#[test]
fn a_keep_alive_request_reads_the_client_only_when_it_sent_something() {
    const REQUESTS: usize = 40;
    let up = slow_upstream(Duration::from_millis(2));
    let (port, admin) = (free_port(), free_port());
    let dir = TempDir::new("h1-syscalls");
    let cfg = dir.write(
        "legate.yaml",
        format!(
            "admin: {{ listen: 127.0.0.1:{admin} }}\naccess_log: off\nruntime: {{ workers: 1 }}\n\
             listeners:\n  - name: app\n    listen: 127.0.0.1:{port}\n\
             \x20   routes: [{{ name: r, upstream: up }}]\n\
             upstreams:\n  - name: up\n    endpoints: [\"{up}\"]\n"
        ),
    );
    let mut lg = proc::legate_spawn("legate", &["run", "-c", cfg.to_str().unwrap()]);
    wait_ready(&mut lg, admin);

    // strace (scripts/test installs it) says on stderr when it is attached to every thread.
    let trace = dir.path().join("recvfrom.trace");
    let mut strace = Command::new("strace")
        .args(["-f", "-e", "trace=recvfrom", "-o"])
        .arg(&trace)
        .args(["-p", &lg.pid().to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .expect("run strace (apt-get install strace; scripts/test installs it)");
    let attached = Arc::new(AtomicBool::new(false));
    let stderr = strace.stderr.take().unwrap();
    let flag = attached.clone();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("attached") {
                flag.store(true, Ordering::SeqCst);
            }
        }
    });
    wait_for("strace attached to legate", Duration::from_secs(10), || {
        if attached.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("no \"attached\" line from strace yet".to_string())
        }
    });

    let mut c = TcpStream::connect(local(port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for _ in 0..REQUESTS {
        get(&mut c);
    }
    let stop = Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status()
        .unwrap();
    assert!(stop.success());
    strace.wait().unwrap();

    let text = std::fs::read_to_string(&trace).unwrap();
    let reads = text.lines().filter(|l| l.contains("recvfrom(")).count();
    let nothing = text.lines().filter(|l| l.contains("EAGAIN")).count();
    // Each request is read from the client and its answer from the upstream: strace saw the
    // traffic.
    assert!(reads >= 2 * REQUESTS, "{reads} reads traced:\n{text}");
    // Before the fix: one EAGAIN read of the client per request. A few may remain (readiness
    // for bytes that an earlier read already took).
    assert!(
        nothing <= REQUESTS / 10,
        "{nothing} of {reads} reads found nothing for {REQUESTS} requests:\n{text}"
    );
}
