//! 1 GiB through the mTLS tunnel pair (two real `legate` processes: A originates mTLS, B
//! terminates it with an allow list and forwards to a local sink), with both processes' memory
//! sampled all along: it stays flat, because a tunnel holds at most one pooled buffer per
//! direction and waits for the slower side (the sink stalls for a while in the middle).

#[path = "support/pki.rs"]
mod pki;
#[path = "support/proc.rs"]
mod proc;

use proc::{free_port, legate_ready, local, rss_kib, TempDir};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TOTAL: u64 = 1 << 30;

#[test]
fn one_gib_through_the_mtls_pair_with_flat_memory() {
    let dir = TempDir::new("bulk");
    let ca = pki::Ca::new("tunnel CA");
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    ca.issue(pki::server(&["legate-b"])).write(dir.path(), "b");
    ca.issue(pki::client(&["spiffe://test/a"], "a"))
        .write(dir.path(), "a");

    // The sink counts every byte and sums them; it stops reading for a while after 256 MiB.
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let stalled = Arc::new(AtomicBool::new(false));
    let st = stalled.clone();
    let sink_thread = std::thread::spawn(move || {
        let (mut s, _) = sink.accept().unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let (mut n, mut sum) = (0u64, 0u64);
        let mut paused = false;
        loop {
            let r = s.read(&mut buf).unwrap();
            if r == 0 {
                break;
            }
            sum = buf[..r]
                .iter()
                .fold(sum, |a, b| a.wrapping_add(u64::from(*b)));
            n += r as u64;
            if !paused && n > TOTAL / 4 {
                paused = true;
                st.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1500));
            }
        }
        s.write_all(format!("{n} {sum}").as_bytes()).unwrap();
        (n, sum)
    });

    let (a_port, a_admin, b_port, b_admin) = (free_port(), free_port(), free_port(), free_port());
    let d = dir.path().display();
    let b = dir.write(
        "b.yaml",
        format!(
            r#"
admin: {{ listen: 127.0.0.1:{b_admin} }}
access_log: off
runtime: {{ workers: 1 }}
listeners:
  - name: in
    listen: 127.0.0.1:{b_port}
    protocol: tcp
    upstream: sink
    tls: {{ cert: {d}/b.pem, key: {d}/b.key, client_ca: {d}/ca.pem, allow: {{ uri: ["spiffe://test/a"] }} }}
upstreams:
  - name: sink
    endpoints: [{sink_addr}]
"#
        ),
    );
    let a = dir.write(
        "a.yaml",
        format!(
            r#"
admin: {{ listen: 127.0.0.1:{a_admin} }}
access_log: off
runtime: {{ workers: 1 }}
listeners:
  - name: out
    listen: 127.0.0.1:{a_port}
    protocol: tcp
    upstream: b
upstreams:
  - name: b
    endpoints: [127.0.0.1:{b_port}]
    tls: {{ ca: {d}/ca.pem, server_name: legate-b, client_cert: {d}/a.pem, client_key: {d}/a.key }}
"#
        ),
    );
    let lb = legate_ready("legate B", &["run", "-c", b.to_str().unwrap()], b_admin);
    let la = legate_ready("legate A", &["run", "-c", a.to_str().unwrap()], a_admin);
    let base = (rss_kib(la.pid()), rss_kib(lb.pid()));

    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let (pa, pb) = (la.pid(), lb.pid());
        std::thread::spawn(move || {
            let mut peak = (0, 0);
            while !done.load(Ordering::SeqCst) {
                peak.0 = peak.0.max(rss_kib(pa));
                peak.1 = peak.1.max(rss_kib(pb));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    let mut c = TcpStream::connect(local(a_port)).unwrap();
    let chunk: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    let chunk_sum = chunk
        .iter()
        .fold(0u64, |a, b| a.wrapping_add(u64::from(*b)));
    let mut sent = 0u64;
    while sent < TOTAL {
        c.write_all(&chunk).unwrap();
        sent += chunk.len() as u64;
    }
    // Half-close: the sink sees the end and answers through the same tunnel.
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    done.store(true, Ordering::SeqCst);
    let peak = sampler.join().unwrap();
    let (n, sum) = sink_thread.join().unwrap();
    assert!(stalled.load(Ordering::SeqCst));
    assert_eq!(n, TOTAL, "every byte arrived");
    assert_eq!(sum, chunk_sum.wrapping_mul(TOTAL / chunk.len() as u64));
    assert_eq!(
        answer,
        format!("{n} {sum}"),
        "the answer came back after the half-close"
    );
    // Flat: a GiB moved, and neither process grew by more than a few buffers' worth.
    let grew = (peak.0.saturating_sub(base.0), peak.1.saturating_sub(base.1));
    assert!(
        grew.0 < 8 * 1024 && grew.1 < 8 * 1024,
        "RSS grew by {} KiB (A) and {} KiB (B) while carrying 1 GiB",
        grew.0,
        grew.1
    );
    eprintln!(
        "RSS A {} -> peak {} KiB, B {} -> peak {} KiB",
        base.0, peak.0, base.1, peak.1
    );
}
