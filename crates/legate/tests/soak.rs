//! Soak: one legate process under mixed traffic for a bounded time, while its config is
//! reloaded 20 times and its certificates rotated 5 times; its memory and open descriptors are
//! sampled all along.
//!
//! - traffic from the app: HTTP/1.1 keep-alive connections, a new connection per request, and
//!   h2c; to a real nginx, to a flaky upstream (every 7th answer a 503, hidden by retries), and
//!   over mTLS to a peer legate that comes back over mTLS into this one's TLS listener (so the
//!   soaked process originates and terminates mTLS on every such request);
//! - 20 config reloads (`POST /reload` after a change to the config file) and 5 rotations of
//!   both its client and its server certificate, spread over the run;
//! - checked: no request fails, RSS after warm-up stays within 1 MiB, and the open descriptors
//!   come back to where they were before the traffic once the clients leave and the pools
//!   close their idle connections.
//!
//! `SOAK_SECONDS` (default 60, as `scripts/test` runs it) sets the length, `SOAK_MAX_REQUESTS`
//! (default 10 million) a cap; `bash bench/soak.sh` runs the long form and records the samples.

mod common;
#[path = "support/pki.rs"]
mod pki;
#[path = "support/proc.rs"]
mod proc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pki::Ca;
use proc::{
    free_port, http_get, legate_spawn, local, nginx_ok, rss_kib, wait_for, wait_ready, TempDir,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const RELOADS: u32 = 20;
const ROTATIONS: u32 = 5;
/// RSS growth allowed between the end of the warm-up and any later sample.
const DRIFT_KIB: u64 = 1024;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// An upstream that answers 503 the first time it sees every 7th request (by the app's
/// `x-soak-id`), and 200 to its retry: every failure is one a retry must hide.
async fn flaky_upstream() -> SocketAddr {
    let failed_once = Arc::new(Mutex::new(std::collections::HashSet::new()));
    common::upstream(
        common::Proto::H1,
        move |req: hyper::Request<hyper::body::Incoming>| {
            let id: u64 = req
                .headers()
                .get("x-soak-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let fail = id % 7 == 0 && failed_once.lock().unwrap().insert(id);
            async move {
                hyper::Response::builder()
                    .status(if fail { 503 } else { 200 })
                    .body(common::full("flaky"))
                    .expect("response")
            }
        },
    )
    .await
    .addr
}

/// A request id for the flaky upstream.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct Ports {
    app: u16,
    admin: u16,
    tls_in: u16,
    peer_in: u16,
    nginx: u16,
    flaky: u16,
}

/// The soaked process's config; `generation` changes with every reload.
fn soaked_config(d: &std::path::Path, p: &Ports, generation: u32) -> String {
    let d = d.display();
    format!(
        r#"admin: {{ listen: "127.0.0.1:{admin}" }}
access_log: off
listeners:
  - name: app
    listen: 127.0.0.1:{app}
    routes:
      - name: flaky
        match: {{ path_prefix: /flaky }}
        upstream: flaky
        retry: {{ attempts: 3, on: [gateway-error] }}
        response_headers: {{ set: {{ x-soak-generation: "{generation}" }} }}
      - name: mesh
        match: {{ path_prefix: /mesh }}
        upstream: peer
      - name: nginx
        upstream: nginx
        response_headers: {{ set: {{ x-soak-generation: "{generation}" }} }}
  - name: inbound
    listen: 127.0.0.1:{tls_in}
    tls: {{ cert: {d}/in.crt, key: {d}/in.key, client_ca: {d}/ca.crt }}
    routes:
      - name: inbound
        upstream: nginx
upstreams:
  - name: nginx
    endpoints: ["127.0.0.1:{nginx}"]
    pool: {{ idle_timeout: 2s }}
  - name: flaky
    endpoints: ["127.0.0.1:{flaky}"]
    pool: {{ idle_timeout: 2s }}
    # Six clients, h2c four at a time: more retries in flight than the default 3.
    circuit_breaker: {{ max_retries: 64 }}
  - name: peer
    endpoints: ["127.0.0.1:{peer_in}"]
    pool: {{ idle_timeout: 2s }}
    tls: {{ server_name: peer.soak.test, ca: {d}/ca.crt, client_cert: {d}/out.crt, client_key: {d}/out.key }}
"#,
        admin = p.admin,
        app = p.app,
        tls_in = p.tls_in,
        peer_in = p.peer_in,
        nginx = p.nginx,
        flaky = p.flaky,
    )
}

fn peer_config(d: &std::path::Path, p: &Ports, admin: u16) -> String {
    let d = d.display();
    format!(
        r#"admin: {{ listen: "127.0.0.1:{admin}" }}
access_log: off
listeners:
  - name: inbound
    listen: 127.0.0.1:{peer_in}
    tls: {{ cert: {d}/tls.crt, key: {d}/tls.key, client_ca: {d}/ca.crt }}
    routes:
      - name: back
        upstream: soaked
upstreams:
  - name: soaked
    endpoints: ["127.0.0.1:{tls_in}"]
    pool: {{ idle_timeout: 2s }}
    tls: {{ server_name: soaked.soak.test, ca: {d}/ca.crt, client_cert: {d}/client.crt, client_key: {d}/client.key }}
"#,
        peer_in = p.peer_in,
        tls_in = p.tls_in,
    )
}

/// New certificates for the soaked process, written as a rotation would (new file, rename).
fn write_soaked_certs(ca: &Ca, dir: &std::path::Path) {
    for (name, leaf) in [
        ("in", ca.issue(pki::server(&["soaked.soak.test"]))),
        (
            "out",
            ca.issue(pki::client(&["spiffe://soak.test/soaked"], "soaked")),
        ),
    ] {
        for (ext, pem) in [("crt", &leaf.cert_pem), ("key", &leaf.key_pem)] {
            let tmp = dir.join(format!(".{name}.{ext}.new"));
            std::fs::write(&tmp, pem).expect("write a certificate");
            std::fs::rename(&tmp, dir.join(format!("{name}.{ext}"))).expect("rename");
        }
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    first_failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_failures.lock().unwrap();
        if f.len() < 10 {
            f.push(what);
        }
    }
}

type Body = Full<Bytes>;

/// A GET with a fresh `x-soak-id` (and `Connection: close` when asked).
fn soak_request(path: &str, close: bool) -> Result<hyper::Request<Body>, String> {
    let mut req = hyper::Request::get(path)
        .header("host", "localhost")
        .header("x-soak-id", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    if close {
        req = req.header("connection", "close");
    }
    req.body(Full::new(Bytes::new())).map_err(|e| e.to_string())
}

/// The response read to its end; an error unless it is a 200.
async fn read_ok(
    path: &str,
    sent: Result<hyper::Response<hyper::body::Incoming>, hyper::Error>,
) -> Result<(), String> {
    let resp = sent.map_err(|e| format!("{path}: send: {e}"))?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("{path}: body: {e}"))?;
    if status != 200 {
        return Err(format!("{path}: status {status}"));
    }
    Ok(())
}

async fn one(
    tx: &mut hyper::client::conn::http1::SendRequest<Body>,
    path: &str,
    close: bool,
) -> Result<(), String> {
    let req = soak_request(path, close)?;
    tx.ready().await.map_err(|e| format!("ready: {e}"))?;
    read_ok(path, tx.send_request(req).await).await
}

async fn h1_conn(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Body>, String> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(tx)
}

const PATHS: [&str; 3] = ["/nginx", "/flaky", "/mesh"];

/// One client: `mode` 0 keeps a connection for 100 requests, 1 opens one per request, 2 is
/// h2c with 4 requests in flight.
async fn client(addr: SocketAddr, mode: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>, cap: u64) {
    let mut i = mode;
    let done = |t: &Tally| t.ok.load(Ordering::Relaxed) + t.failed.load(Ordering::Relaxed) >= cap;
    while !stop.load(Ordering::Relaxed) && !done(&tally) {
        match mode {
            0 | 1 => {
                let keep = if mode == 0 { 100 } else { 1 };
                let mut tx = match h1_conn(addr).await {
                    Ok(tx) => tx,
                    Err(e) => {
                        tally.fail(e);
                        continue;
                    }
                };
                for n in 0..keep {
                    i += 1;
                    match one(&mut tx, PATHS[i % 3], n + 1 == keep).await {
                        Ok(()) => tally.ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            tally.fail(e);
                            break;
                        }
                    };
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
            _ => {
                let s = match TcpStream::connect(addr).await {
                    Ok(s) => s,
                    Err(e) => {
                        tally.fail(format!("h2c connect: {e}"));
                        continue;
                    }
                };
                let (tx, conn) = match hyper::client::conn::http2::handshake(
                    TokioExecutor::new(),
                    TokioIo::new(s),
                )
                .await
                {
                    Ok(x) => x,
                    Err(e) => {
                        tally.fail(format!("h2c handshake: {e}"));
                        continue;
                    }
                };
                tokio::spawn(conn);
                // 1,000 requests per connection, 4 at a time.
                for _ in 0..250 {
                    let mut batch = Vec::new();
                    for k in 0..4 {
                        let mut tx = tx.clone();
                        let path = PATHS[(i + k) % 3];
                        batch.push(tokio::spawn(async move {
                            let req = soak_request(path, false)?;
                            tx.ready().await.map_err(|e| format!("h2 ready: {e}"))?;
                            read_ok(path, tx.send_request(req).await)
                                .await
                                .map_err(|e| format!("h2 {e}"))
                        }));
                    }
                    i += 4;
                    for b in batch {
                        match b.await {
                            Ok(Ok(())) => {
                                tally.ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Err(e)) => tally.fail(e),
                            Err(e) => tally.fail(format!("h2 task: {e}")),
                        }
                    }
                    if stop.load(Ordering::Relaxed) || done(&tally) {
                        break;
                    }
                }
            }
        }
    }
}

fn post(admin: u16, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(local(admin)).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_traffic_reloads_and_rotations() {
    let seconds = env_u64("SOAK_SECONDS", 60);
    let cap = env_u64("SOAK_MAX_REQUESTS", 10_000_000);
    let sample_every = Duration::from_secs(env_u64(
        "SOAK_SAMPLE_SECONDS",
        if seconds > 300 { 10 } else { 5 },
    ));
    let run_for = Duration::from_secs(seconds);
    let warm_up = run_for / 4;

    let dir = TempDir::new("soak");
    let peer_dir = TempDir::new("soak-peer");
    let ng_dir = TempDir::new("soak-nginx");
    let ca = Ca::new("soak CA");
    for d in [dir.path(), peer_dir.path()] {
        std::fs::write(d.join("ca.crt"), ca.pem()).unwrap();
    }
    write_soaked_certs(&ca, dir.path());
    let peer_cert = ca.issue(pki::server(&["peer.soak.test"]));
    std::fs::write(peer_dir.path().join("tls.crt"), &peer_cert.cert_pem).unwrap();
    std::fs::write(peer_dir.path().join("tls.key"), &peer_cert.key_pem).unwrap();
    let peer_client = ca.issue(pki::client(&["spiffe://soak.test/peer"], "peer"));
    std::fs::write(peer_dir.path().join("client.crt"), &peer_client.cert_pem).unwrap();
    std::fs::write(peer_dir.path().join("client.key"), &peer_client.key_pem).unwrap();

    let (_nginx, nginx_port) = nginx_ok(&ng_dir);
    let ports = Ports {
        app: free_port(),
        admin: free_port(),
        tls_in: free_port(),
        peer_in: free_port(),
        nginx: nginx_port,
        flaky: flaky_upstream().await.port(),
    };
    let config = dir.write("legate.yaml", soaked_config(dir.path(), &ports, 0));
    let peer_admin = free_port();
    let peer_file = peer_dir.write(
        "legate.yaml",
        peer_config(peer_dir.path(), &ports, peer_admin),
    );
    let mut peer = legate_spawn("peer legate", &["run", "-c", peer_file.to_str().unwrap()]);
    let mut soaked = legate_spawn("soaked legate", &["run", "-c", config.to_str().unwrap()]);
    wait_ready(&mut peer, peer_admin);
    wait_ready(&mut soaked, ports.admin);
    let pid = soaked.pid();
    let fds_before = open_fds(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let addr = local(ports.app);
    let mut clients = Vec::new();
    for c in 0..6 {
        clients.push(tokio::spawn(client(
            addr,
            c % 3,
            stop.clone(),
            tally.clone(),
            cap,
        )));
    }

    // Reloads and rotations at even steps through the run; samples at `sample_every`.
    let start = Instant::now();
    let mut samples: Vec<(Duration, u64, usize, u64)> = Vec::new();
    let (mut reloads, mut rotations) = (0u32, 0u32);
    let mut next_sample = Duration::ZERO;
    let capped = |t: &Tally| t.ok.load(Ordering::Relaxed) + t.failed.load(Ordering::Relaxed) >= cap;
    while start.elapsed() < run_for && !capped(&tally) {
        let t = start.elapsed();
        if t >= next_sample {
            samples.push((
                t,
                rss_kib(pid),
                open_fds(pid),
                tally.ok.load(Ordering::Relaxed),
            ));
            next_sample += sample_every;
        }
        let due = |n: u32, of: u32| t >= run_for * (n + 1) / (of + 1);
        if reloads < RELOADS && due(reloads, RELOADS) {
            reloads += 1;
            std::fs::write(&config, soaked_config(dir.path(), &ports, reloads)).unwrap();
            let code = tokio::task::spawn_blocking(move || post(ports.admin, "/reload"))
                .await
                .unwrap();
            assert_eq!(code, 200, "reload {reloads}");
        }
        if rotations < ROTATIONS && due(rotations, ROTATIONS) {
            rotations += 1;
            write_soaked_certs(&ca, dir.path());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        soaked.ensure_running();
    }
    let elapsed = start.elapsed();
    samples.push((
        elapsed,
        rss_kib(pid),
        open_fds(pid),
        tally.ok.load(Ordering::Relaxed),
    ));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }
    let (ok, failed) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );

    // The pools close idle connections after 2 s; the app's connections are gone.
    let fds_after = wait_for(
        "descriptors back to the start",
        Duration::from_secs(30),
        || {
            let n = open_fds(pid);
            (n <= fds_before)
                .then_some(n)
                .ok_or(format!("{n} open, {fds_before} before"))
        },
    );

    println!("| t (s) | RSS (KiB) | open fds | requests |");
    println!("|---:|---:|---:|---:|");
    for (t, rss, fds, n) in &samples {
        println!("| {:.0} | {rss} | {fds} | {n} |", t.as_secs_f64());
    }
    let after_warm_up: Vec<u64> = samples
        .iter()
        .filter(|s| s.0 >= warm_up)
        .map(|s| s.1)
        .collect();
    let base = after_warm_up.first().copied().unwrap_or(0);
    let peak = after_warm_up.iter().copied().max().unwrap_or(0);
    println!(
        "soak: {:.0} s, {ok} requests ({:.0}/s), {failed} failed, {reloads} reloads, {rotations} rotations; \
         RSS {base} KiB after warm-up, {peak} KiB peak after it (+{} KiB); fds {fds_before} before, {fds_after} after",
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64(),
        peak.saturating_sub(base)
    );
    if failed > 0 {
        let m = http_get(local(ports.admin), "/metrics", Duration::from_secs(5)).unwrap();
        for l in String::from_utf8_lossy(&m.body).lines() {
            if l.contains("retr") || l.contains("flaky") && l.contains("error") {
                println!("{l}");
            }
        }
    }
    assert_eq!(
        failed,
        0,
        "failed requests, first ones: {:?}",
        tally.first_failures.lock().unwrap()
    );
    assert!(ok > 1000, "only {ok} requests in {elapsed:?}");
    assert!(capped(&tally) || (reloads, rotations) == (RELOADS, ROTATIONS));
    assert!(
        peak <= base + DRIFT_KIB,
        "RSS grew {} KiB after warm-up",
        peak - base
    );
    let metrics = http_get(local(ports.admin), "/metrics", Duration::from_secs(5)).unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("legate_tls_reload_failures_total") && !l.ends_with(" 0")),
        "a certificate rotation was refused"
    );
}
