//! Faults in the network and in upstreams, each with what the app sees, what legate reports
//! (error reason and metric) and the recovery once the fault is gone. The network faults run
//! against a real nginx in a network namespace this test creates (veth pair, addresses in
//! 10.2xx.0.0/16 that exist only inside this machine); the upstream faults that need exact
//! timing use in-process upstreams on 127.0.0.1.
//!
//! This machine's kernel has no `sch_netem` (`tc qdisc add ... netem` answers "Specified qdisc
//! kind is unknown"), so latency is added by a relay inside the namespace that holds every
//! segment 50 ms each way, and packet loss and blackholes are real: iptables `statistic` and
//! `DROP` rules on the namespace's input. Needs root (as `scripts/test` runs).

#[path = "support/proc.rs"]
mod proc;

use proc::{
    free_port, http_get, legate_spawn, local, metric_sum, parse_metrics, require_tool, rss_kib,
    wait_for, wait_ready, Proc, TempDir,
};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A network namespace with a veth pair to this one (this side `.1`, the namespace `.2`, the
/// namespace's address is `peer`). Removed (with its processes' network) on drop.
struct Netns {
    name: String,
    peer: String,
    procs: Vec<Proc>,
}

static NEXT_NS: AtomicUsize = AtomicUsize::new(0);

fn run(cmd: &str) {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("run a shell command");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn new() -> Netns {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the network fault tests create network namespaces: run them as root"
        );
        require_tool("ip", "-V");
        require_tool("iptables", "-V");
        let n = NEXT_NS.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let name = format!("lgt{pid}-{n}");
        let (h, p) = (format!("lg{pid}h{n}"), format!("lg{pid}p{n}"));
        let net = format!("10.{}.{}", 200 + n, pid % 250);
        let host = format!("{net}.1");
        let peer = format!("{net}.2");
        run(&format!(
            "ip netns add {name} && ip link add {h} type veth peer name {p} && \
             ip link set {p} netns {name} && ip addr add {host}/30 dev {h} && ip link set {h} up && \
             ip -n {name} addr add {peer}/30 dev {p} && ip -n {name} link set {p} up && \
             ip -n {name} link set lo up"
        ));
        Netns {
            name,
            peer,
            procs: Vec::new(),
        }
    }

    fn iptables(&self, rule: &str) {
        run(&format!("ip netns exec {} iptables {rule}", self.name));
    }

    fn spawn(&mut self, what: &str, args: &[&str]) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        let p = Proc::spawn(what, &mut cmd).expect("start a process in the namespace");
        self.procs.push(p);
    }

    /// nginx in the namespace: one server per `(port, body)`, on the namespace's address.
    fn nginx(&mut self, dir: &TempDir, servers: &[(u16, &str)]) {
        require_tool("nginx", "-v");
        let d = dir.path().display();
        let mut conf = format!(
            "worker_processes 1; master_process off; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d};\n"
        );
        for (port, body) in servers {
            conf.push_str(&format!(
                "server {{ listen {}:{port}; location / {{ return 200 \"{body}\"; }} }}\n",
                self.peer
            ));
        }
        conf.push('}');
        let file = dir.write("nginx.conf", conf);
        let (p, c) = (dir.path().to_str().unwrap(), file.to_str().unwrap());
        self.spawn("nginx", &["nginx", "-p", p, "-c", c]);
        for (port, _) in servers {
            let addr: SocketAddr = format!("{}:{port}", self.peer).parse().unwrap();
            wait_for("nginx in the namespace", Duration::from_secs(10), || {
                http_get(addr, "/", Duration::from_secs(1))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Dropping a Proc kills its process group.
        self.procs.clear();
        // Deleting the namespace deletes its end of the veth pair, and with it this end.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// legate from a config file; returns it with its app port and admin port.
fn legate(dir: &TempDir, listener: &str, upstream: &str) -> (Proc, u16, u16) {
    let (port, admin) = (free_port(), free_port());
    let cfg = format!(
        "admin: {{ listen: 127.0.0.1:{admin} }}\n\
         runtime: {{ workers: 1 }}\n\
         listeners:\n  - name: app\n    listen: 127.0.0.1:{port}\n    routes:\n      - name: default\n        upstream: api\n{listener}\n\
         upstreams:\n  - name: api\n{upstream}\n"
    );
    let file = dir.write("legate.yaml", cfg);
    let mut p = legate_spawn("legate", &["run", "--config", file.to_str().unwrap()]);
    wait_ready(&mut p, admin);
    (p, port, admin)
}

fn metrics(admin: u16) -> Vec<proc::Sample> {
    let r = http_get(local(admin), "/metrics", Duration::from_secs(5)).expect("GET /metrics");
    parse_metrics(&String::from_utf8_lossy(&r.body))
}

/// `legate_http_local_errors_total` for one reason.
fn local_errors(admin: u16, reason: &str) -> f64 {
    metrics(admin)
        .iter()
        .filter(|s| {
            s.name == "legate_http_local_errors_total"
                && s.labels.get("reason").map(String::as_str) == Some(reason)
        })
        .map(|s| s.value)
        .sum()
}

/// One request on a keep-alive-less connection, bounded so that a hang fails the test
/// instead of stalling it.
fn get(port: u16) -> Result<proc::HttpResponse, String> {
    http_get(local(port), "/", Duration::from_secs(20)).map_err(|e| e.to_string())
}

/// A relay that holds every segment `delay` before passing it on, in each direction.
const RELAY: &str = r#"
import asyncio, sys
listen, port, target, tport, delay = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
async def pipe(r, w):
    loop = asyncio.get_running_loop()
    q = asyncio.Queue()
    async def send():
        while True:
            due, data = await q.get()
            await asyncio.sleep(max(0, due - loop.time()))
            if data is None:
                w.close()
                return
            w.write(data)
            await w.drain()
    sender = asyncio.create_task(send())
    while True:
        data = await r.read(65536)
        q.put_nowait((loop.time() + delay, data or None))
        if not data:
            break
    await sender
async def serve(cr, cw):
    ur, uw = await asyncio.open_connection(target, tport)
    await asyncio.gather(pipe(cr, uw), pipe(ur, cw), return_exceptions=True)
async def main():
    s = await asyncio.start_server(serve, listen, port)
    async with s:
        await s.serve_forever()
asyncio.run(main())
"#;

/// +100 ms round trip and 1% packet loss between legate and its upstream: requests are slower
/// and none is lost (TCP retransmits what the network drops; legate's timeouts are far above
/// it); legate counts no error.
#[test]
fn latency_and_loss_slow_requests_but_lose_none() {
    let dir = TempDir::new("faults-latency");
    let mut ns = Netns::new();
    ns.nginx(&dir, &[(18080, "direct")]);
    let relay = dir.write("relay.py", RELAY);
    let peer = ns.peer.clone();
    ns.spawn(
        "relay",
        &[
            "python3",
            relay.to_str().unwrap(),
            &peer,
            "18081",
            &peer,
            "18080",
            "0.05",
        ],
    );
    let relayed: SocketAddr = format!("{peer}:18081").parse().unwrap();
    wait_for("the relay", Duration::from_secs(10), || {
        http_get(relayed, "/", Duration::from_secs(2))
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    ns.iptables("-A INPUT -p tcp -m statistic --mode random --probability 0.01 -j DROP");
    let (_lg, port, admin) = legate(&dir, "", &format!("    endpoints: [\"{relayed}\"]"));
    let mut took = Vec::new();
    for _ in 0..60 {
        let start = Instant::now();
        let r = get(port).expect("a request through the lossy, slow path");
        took.push(start.elapsed());
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"direct");
    }
    took.sort();
    println!(
        "60 requests, +100 ms RTT and 1% loss: p50 {:?}, max {:?}",
        took[30], took[59]
    );
    let errors: f64 = metrics(admin)
        .iter()
        .filter(|s| s.name == "legate_http_local_errors_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(errors, 0.0, "legate reported errors on a slow, lossy path");
}

/// An endpoint whose packets vanish (no RST, no ICMP): each connect to it ends at
/// `connect_timeout` instead of hanging, the balancer steers away from it, outlier detection
/// ejects it after `consecutive_connect_failures`, the other endpoint serves everything
/// meanwhile, and once the blackhole is lifted and the ejection expires it serves again.
#[test]
fn a_blackholed_endpoint_times_out_is_ejected_and_comes_back() {
    let dir = TempDir::new("faults-blackhole");
    let mut ns = Netns::new();
    ns.nginx(&dir, &[(18080, "A"), (18081, "B")]);
    ns.iptables("-A INPUT -p tcp --dport 18080 -j DROP");
    let upstream = format!(
        "    endpoints: [\"{p}:18080\", \"{p}:18081\"]\n    connect_timeout: 300ms\n    \
         outlier_detection: {{ consecutive_connect_failures: 2, base_ejection: 5s }}",
        p = ns.peer
    );
    let (_lg, port, admin) = legate(&dir, "", &upstream);
    let ejections = || metric_sum(&metrics(admin), "legate_outlier_ejections_total").unwrap_or(0.0);
    // The balancer sends a share of requests to an endpoint that failed only after a while,
    // so the second failure (the ejection) may take some requests to come.
    let mut answers = Vec::new();
    while ejections() < 1.0 {
        assert!(
            answers.len() < 2000,
            "not ejected after {} requests",
            answers.len()
        );
        let r = get(port).expect("every request is answered, none hangs");
        answers.push((
            r.status,
            r.headers.get("legate-error").cloned().unwrap_or_default(),
        ));
    }
    let failed: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert_eq!(
        failed,
        vec![&(504, "connect-timeout".to_string()); 2],
        "exactly the two connects that eject it fail"
    );
    // Ejected: everything goes to B.
    for _ in 0..20 {
        let r = get(port).expect("answered");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"B"[..]));
    }
    assert_eq!(local_errors(admin, "connect-timeout"), 2.0);
    println!(
        "blackhole: ejected after {} requests, 2 of them failed (504 connect-timeout)",
        answers.len()
    );

    // Lifted: A serves again once its ejection ends.
    ns.iptables("-F INPUT");
    wait_for(
        "the blackholed endpoint back",
        Duration::from_secs(30),
        || match get(port) {
            Ok(r) if r.body == b"A" => Ok(()),
            Ok(r) => Err(format!(
                "{} {:?}",
                r.status,
                String::from_utf8_lossy(&r.body)
            )),
            Err(e) => Err(e),
        },
    );
}

/// An in-process upstream: each connection is handed to `handle` on its own thread.
fn upstream(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let handle = Arc::new(handle);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let h = handle.clone();
            std::thread::spawn(move || h(s));
        }
    });
    addr
}

/// Reads one request head (the tests send no bodies).
fn read_head(s: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return false,
        }
    }
    true
}

/// Switches an in-process upstream from its fault to healthy answers.
fn healthy(s: &mut TcpStream) {
    while read_head(s) {
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

/// An in-process upstream that runs `fault` on each connection until the returned switch is
/// set, then answers every request `200 ok`.
fn faulty_upstream(
    fault: impl Fn(TcpStream) + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicBool>) {
    let fixed = Arc::new(AtomicBool::new(false));
    let f = fixed.clone();
    let addr = upstream(move |mut s| {
        if f.load(Ordering::SeqCst) {
            healthy(&mut s)
        } else {
            fault(s)
        }
    });
    (addr, fixed)
}

/// The fault counted once under `reason`; then, with the upstream fixed, a request through
/// legate is answered whole again.
fn counted_then_recovers(admin: u16, port: u16, reason: &str, fixed: &AtomicBool) {
    wait_for(
        &format!("{reason} counted"),
        Duration::from_secs(10),
        || {
            let n = local_errors(admin, reason);
            (n == 1.0).then_some(()).ok_or(format!("{n}"))
        },
    );
    fixed.store(true, Ordering::SeqCst);
    wait_for("answered again", Duration::from_secs(10), || {
        match get(port) {
            Ok(r) if (r.status, r.body.as_slice()) == (200, &b"ok"[..]) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

/// An upstream that accepts and reads the request but never answers: the route `timeout`
/// answers 504 `timeout`; once the upstream answers again, so does legate.
#[test]
fn an_upstream_that_never_answers_is_cut_by_the_route_timeout() {
    let (addr, fixed) = faulty_upstream(move |mut s| {
        read_head(&mut s);
        std::thread::sleep(Duration::from_secs(30));
    });
    let dir = TempDir::new("faults-silent");
    let (_lg, port, admin) = legate(
        &dir,
        "        timeout: 500ms",
        &format!("    endpoints: [\"{addr}\"]"),
    );
    let r = get(port).expect("answered");
    assert_eq!(r.status, 504);
    assert_eq!(
        r.headers.get("legate-error").map(String::as_str),
        Some("timeout")
    );
    counted_then_recovers(admin, port, "timeout", &fixed);
}

/// A raw request, and everything that comes back until the connection ends (or 20 s).
fn raw_exchange(port: u16) -> Vec<u8> {
    let mut c = TcpStream::connect(local(port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// An upstream that sends the head and part of the body, then stalls: the route's
/// `response_body_timeout` cuts the app's connection (the head is already sent, so the app
/// sees a body shorter than its Content-Length), counted as `response-body-timeout`.
#[test]
fn a_body_that_stalls_is_cut_by_response_body_timeout() {
    let (addr, fixed) = faulty_upstream(move |mut s| {
        read_head(&mut s);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
        std::thread::sleep(Duration::from_secs(30));
    });
    let dir = TempDir::new("faults-stall");
    let (_lg, port, admin) = legate(
        &dir,
        "        response_body_timeout: 500ms",
        &format!("    endpoints: [\"{addr}\"]"),
    );
    let got = raw_exchange(port);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("content-length: 100"), "{text}");
    assert!(text.ends_with("\r\n\r\n0123456789"), "{text}");
    counted_then_recovers(admin, port, "response-body-timeout", &fixed);
}

/// An upstream that resets its connection in the middle of a body: the app's connection is cut
/// (never ended as if the body were complete), counted as `response-body-error`; the next
/// request gets a fresh upstream connection and a whole answer.
#[test]
fn a_reset_mid_body_cuts_the_app_connection() {
    let (addr, fixed) = faulty_upstream(move |mut s| {
        read_head(&mut s);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
        let _ = s.write_all(&[b'x'; 1000]);
        std::thread::sleep(Duration::from_millis(100));
        // SO_LINGER 0: close sends RST, not FIN.
        let sock = socket2::SockRef::from(&s);
        let _ = sock.set_linger(Some(Duration::ZERO));
        drop(s);
    });
    let dir = TempDir::new("faults-reset");
    let (_lg, port, admin) = legate(&dir, "", &format!("    endpoints: [\"{addr}\"]"));
    let got = raw_exchange(port);
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the head reached the app")
        + 4;
    assert_eq!(
        got.len() - head_end,
        1000,
        "the body was cut where the upstream reset"
    );
    counted_then_recovers(admin, port, "response-body-error", &fixed);
}

/// An app that stops reading a large response: legate stops reading the upstream (the
/// socket buffers fill and TCP flow control holds the upstream), so its memory stays flat
/// instead of growing by the body, and the body arrives whole once the app reads again.
#[test]
fn a_client_that_stops_reading_holds_legate_memory_flat() {
    const BODY: usize = 256 << 20;
    let addr = upstream(|mut s| {
        read_head(&mut s);
        let _ =
            s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n").as_bytes());
        let chunk = vec![b'z'; 1 << 20];
        for _ in 0..BODY >> 20 {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let dir = TempDir::new("faults-slow-reader");
    let (lg, port, _admin) = legate(&dir, "", &format!("    endpoints: [\"{addr}\"]"));
    let before = rss_kib(lg.pid());
    let mut c = TcpStream::connect(local(port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::new();
    let mut body = 0usize;
    while body < 4 << 20 {
        let n = c.read(&mut buf).expect("read");
        assert!(n > 0, "legate closed the connection");
        if head.ends_with(b"\r\n\r\n") {
            body += n;
        } else {
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                body += head.len() - end - 4;
                head.truncate(end + 4);
            }
        }
    }
    // The app stalls; legate has had time to read all 256 MiB if it did not hold back.
    let mut peak = before;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        peak = peak.max(rss_kib(lg.pid()));
    }
    while body < BODY {
        let n = c.read(&mut buf).expect("read the rest of the body");
        assert!(
            n > 0,
            "legate closed the connection after {body} body bytes"
        );
        body += n;
    }
    let _ = c.shutdown(Shutdown::Both);
    println!(
        "slow reader: RSS {before} KiB before, {peak} KiB at most while the app stalled on a {} MiB body",
        BODY >> 20
    );
    assert_eq!(body, BODY, "the whole body arrived, nothing more");
    assert!(
        peak < before + 16 * 1024,
        "legate grew by {} KiB while the app did not read",
        peak - before
    );
}
