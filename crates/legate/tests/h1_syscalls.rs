//! The system calls legate's HTTP/1.1 server makes for a keep-alive request, counted with
//! strace on the real binary. While an answer is pending legate watches the client connection
//! (a client that leaves is a 499, and the bytes of a pipelined request are kept); that watch
//! must wait for the event loop, not start with a read of a socket the head's own read left
//! empty — that read can only say EAGAIN, and it cost one system call per request (2.9 reads
//! per request against nginx's 2.0, docs/performance.md).

#[path = "support/proc.rs"]
mod proc;

use proc::{free_port, local, ok_request, ok_upstream, wait_for, wait_ready, TempDir};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

#[test]
fn a_keep_alive_request_reads_the_client_only_when_it_sent_something() {
    const REQUESTS: usize = 40;
    // Each answer is pending for a while (the watch on the client is armed) and arrives on its
    // own event.
    let up = ok_upstream(Duration::from_millis(2));
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
    for i in 0..REQUESTS {
        assert_eq!(ok_request(&mut c).unwrap(), 200, "request {i}");
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
