//! Hot config reload with the real binary: twenty reloads (valid and broken, by `POST /reload`
//! and SIGHUP) under continuous keep-alive load with no failed request; unchanged upstreams
//! keep their pooled connections and an open circuit; listeners added, rebound and removed; a
//! ConfigMap-style `..data` symlink swap picked up by the watch; the file deleted mid-watch; a
//! storm of SIGHUPs.

#[path = "support/proc.rs"]
mod proc;

use proc::{
    free_port, http_get, legate_spawn, local, parse_metrics, wait_for, wait_ready, TempDir,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(5);

/// A keep-alive HTTP/1.1 upstream answering `200 <name>` to every GET, counting the
/// connections it accepted (what a pool that survives reloads keeps low).
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

fn upstream(name: &'static str) -> Upstream {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                loop {
                    let mut line = String::new();
                    // Read one head; GETs carry no body.
                    loop {
                        line.clear();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let body = format!("{name}\n");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if w.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Upstream { addr, accepted }
}

/// One keep-alive client connection; a response is its status, headers and body.
struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    /// Connections the server closed between requests (each a lost keep-alive).
    reconnects: usize,
}

struct Resp {
    status: u16,
    head: String,
    body: String,
}

impl Client {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            conn: None,
            reconnects: 0,
        }
    }

    fn get(&mut self, path: &str) -> Result<Resp, String> {
        let reused = self.conn.is_some();
        match self.try_get(path) {
            Ok(r) => Ok(r),
            // A pooled connection closed by the server before our request: try once anew,
            // as every HTTP client does, and count it.
            Err(_) if reused => {
                self.reconnects += 1;
                self.conn = None;
                self.try_get(path)
            }
            Err(e) => Err(e),
        }
    }

    fn try_get(&mut self, path: &str) -> Result<Resp, String> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, T).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(T)).unwrap();
            s.set_nodelay(true).unwrap();
            self.conn = Some(BufReader::new(s));
        }
        let c = self.conn.as_mut().unwrap();
        // One write: a request in pieces would wait on Nagle and delayed ACKs.
        let req = format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n");
        c.get_mut()
            .write_all(req.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match c.read_line(&mut line) {
                Ok(0) => return Err("closed before a response".into()),
                Err(e) => return Err(e.to_string()),
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push_str(&line),
            }
        }
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line in {head:?}"))?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or_else(|| format!("no content-length in {head:?}"))?;
        let mut body = vec![0; len];
        c.read_exact(&mut body).map_err(|e| e.to_string())?;
        if head.to_ascii_lowercase().contains("connection: close") {
            self.conn = None;
        }
        Ok(Resp {
            status,
            head: head.to_ascii_lowercase(),
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// Writes `text` to `path` atomically (a watcher never sees half a file).
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn post(admin: u16, path: &str) -> (u16, String) {
    legate::lifecycle::probe::http(local(admin), "POST", path, Duration::from_secs(20)).unwrap()
}

fn metric(admin: u16, name: &str, label: Option<(&str, &str)>) -> f64 {
    let text = http_get(local(admin), "/metrics", T).unwrap().text();
    parse_metrics(&text)
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k).map(String::as_str) == Some(v)))
        .map(|s| s.value)
        .sum()
}

fn sha256(text: &str) -> String {
    legate::config::hash_text(text)
}

struct Cfg {
    port: u16,
    admin: u16,
    a: SocketAddr,
    c: SocketAddr,
}

impl Cfg {
    /// Free ports for legate's listener and admin; upstream `c` on a closed port.
    fn new(a: SocketAddr) -> Self {
        Self {
            port: free_port(),
            admin: free_port(),
            a,
            c: local(free_port()),
        }
    }

    /// The base config: listener `app` with `/a` to upstream `a` (its response tagged `gen`)
    /// and `/c` to upstream `c` (a closed port, behind a circuit breaker); `extra`: more YAML
    /// under `listeners:`; `c_timeout`: c's connect timeout (changing it rebuilds c).
    fn yaml(&self, gen: u32, extra: &str, c_timeout: &str) -> String {
        format!(
            r#"admin: {{ listen: 127.0.0.1:{admin} }}
runtime: {{ workers: 2 }}
files: {{ watch_interval: 1h }}
listeners:
  - name: app
    listen: 127.0.0.1:{port}
    routes:
      - name: a
        match: {{ path_prefix: /a }}
        upstream: a
        response_headers: {{ set: {{ x-gen: "{gen}" }} }}
      - name: c
        match: {{ path_prefix: /c }}
        upstream: c
{extra}
upstreams:
  - name: a
    url: http://{a}
    pool: {{ max_idle_per_endpoint: 16, idle_timeout: 5m }}
  - name: c
    url: http://{c}
    connect_timeout: {c_timeout}
    circuit_breaker: {{ min_requests: 2, failure_ratio: 0.5, open_for: 10m, max_open_for: 10m }}
"#,
            admin = self.admin,
            port = self.port,
            a = self.a,
            c = self.c,
        )
    }
}

fn extra_listener(port: u16) -> String {
    format!(
        r#"  - name: extra
    listen: 127.0.0.1:{port}
    routes:
      - name: extra
        match: {{ path_prefix: / }}
        upstream: a
"#
    )
}

/// `legate run -c path`, ready.
fn start(path: &Path, admin: u16) -> proc::Proc {
    let mut lg = legate_spawn("legate run", &["run", "-c", path.to_str().unwrap()]);
    wait_ready(&mut lg, admin);
    lg
}

/// SIGTERM, and the drain ends with exit 0.
fn stop(lg: &mut proc::Proc) {
    lg.signal("TERM");
    let code = lg.wait_exit(Duration::from_secs(20)).and_then(|s| s.code());
    assert_eq!(code, Some(0), "{}", lg.output_report());
}

/// A keep-alive client sending `GET /a` until `stop`: (answered 200, failures, reconnects).
fn load(
    app: SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, Vec<String>, usize)> {
    std::thread::spawn(move || {
        let mut c = Client::new(app);
        let (mut ok, mut failed) = (0usize, Vec::new());
        while !stop.load(Ordering::SeqCst) {
            match c.get("/a") {
                Ok(r) if r.status == 200 && r.body == "a\n" => ok += 1,
                Ok(r) => failed.push(format!("{} {}", r.status, r.body)),
                Err(e) => failed.push(e),
            }
        }
        (ok, failed, c.reconnects)
    })
}

#[test]
fn twenty_reloads_under_load_lose_nothing_and_keep_unchanged_upstreams() {
    let dir = TempDir::new("reload-load");
    let a = upstream("a");
    let cfg = Cfg::new(a.addr);
    let path = dir.write("legate.yaml", cfg.yaml(0, "", "1s"));
    let mut lg = start(&path, cfg.admin);
    let (admin, app) = (cfg.admin, local(cfg.port));

    // Open c's circuit: connects to a closed port fail until the breaker trips.
    let mut c = Client::new(app);
    wait_for("c's circuit opens", T, || {
        let r = c.get("/c")?;
        (r.status == 503 && r.head.contains("legate-error: circuit-open"))
            .then_some(())
            .ok_or_else(|| format!("{} {}", r.status, r.body))
    });

    // Continuous load on /a from two keep-alive clients.
    let halt = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = (0..2).map(|_| load(app, halt.clone())).collect();
    wait_for("load flows", T, || {
        (metric(admin, "legate_http_requests_total", Some(("route", "a"))) > 50.0)
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    });

    let (mut applied, mut refused) = (0, 0);
    let extra_ports = [free_port(), free_port()];
    for i in 0..20u32 {
        match i % 5 {
            // A changed response header: the route is rebuilt, the upstream kept.
            0 => {
                write_atomic(&path, &cfg.yaml(i, "", "1s"));
                let (code, body) = post(admin, "/reload");
                assert_eq!(code, 200, "{body}");
                assert!(body.contains(&sha256(&cfg.yaml(i, "", "1s"))), "{body}");
                applied += 1;
                let mut probe = Client::new(app);
                let r = probe.get("/a").unwrap();
                assert!(r.head.contains(&format!("x-gen: {i}")), "{}", r.head);
            }
            // Not YAML: refused with the position, the running config stays.
            1 => {
                write_atomic(&path, "listeners: [\n  - name: app\n    listen: {\n");
                let (code, body) = post(admin, "/reload");
                assert_eq!(code, 400, "{body}");
                assert!(body.contains("legate.yaml:"), "{body}");
                refused += 1;
                let out = proc::legate_cmd(&["reload", "--admin", &format!("127.0.0.1:{admin}")]);
                assert_eq!(out.code(), Some(1), "{}", out.describe());
                assert!(out.stderr.contains("legate.yaml:"), "{}", out.describe());
                refused += 1;
            }
            // A listener added (and, the next time, rebound to another port) by SIGHUP.
            2 => {
                let port = extra_ports[(i / 5 % 2) as usize];
                write_atomic(&path, &cfg.yaml(i, &extra_listener(port), "1s"));
                let before = metric(
                    admin,
                    "legate_config_reloads_total",
                    Some(("result", "success")),
                );
                lg.signal("HUP");
                wait_for("SIGHUP reload", T, || {
                    (metric(
                        admin,
                        "legate_config_reloads_total",
                        Some(("result", "success")),
                    ) > before)
                        .then_some(())
                        .ok_or_else(|| "not yet".to_string())
                });
                applied += 1;
                let r = Client::new(local(port)).get("/a").unwrap();
                assert_eq!((r.status, r.body.as_str()), (200, "a\n"));
                if i / 5 % 2 == 1 {
                    // Rebound: the old port no longer accepts.
                    let old = local(extra_ports[0]);
                    wait_for("old port closed", T, || {
                        TcpStream::connect_timeout(&old, T)
                            .err()
                            .map(|_| ())
                            .ok_or_else(|| "still accepting".to_string())
                    });
                }
            }
            // Every problem reported at once, each at its place (the issue's example).
            3 => {
                let bad = cfg
                    .yaml(i, "", "1s")
                    .replace(
                        &format!("listen: 127.0.0.1:{}", cfg.port),
                        "listen: 127.0.0.1:808O",
                    )
                    .replace("upstream: c\n", "upstream: c\n        retires: 3\n");
                write_atomic(&path, &bad);
                let (code, body) = post(admin, "/reload");
                assert_eq!(code, 400, "{body}");
                assert!(
                    body.contains("legate.yaml:6:13"),
                    "the bad port at its field: {body}"
                );
                assert!(body.contains("retires"), "the unknown field too: {body}");
                refused += 1;
                let shown = http_get(local(admin), "/config", T).unwrap().text();
                assert!(shown.contains("# last_reload_error: |"), "{shown}");
                assert!(shown.contains("legate.yaml:6:13"), "{shown}");
            }
            // The extra listener removed, with `legate reload` (what `kubectl exec` runs).
            _ => {
                write_atomic(&path, &cfg.yaml(i, "", "1s"));
                let out = proc::legate_cmd(&["reload", "--admin", &format!("127.0.0.1:{admin}")]);
                assert_eq!(out.code(), Some(0), "{}", out.describe());
                assert!(
                    out.describe().contains("listener `extra` removed"),
                    "{}",
                    out.describe()
                );
                applied += 1;
            }
        }
        assert!(
            lg.try_exit().is_none(),
            "legate still runs after reload {i}"
        );
    }
    halt.store(true, Ordering::SeqCst);
    let mut total = 0;
    for l in loaders {
        let (ok, failed, reconnects) = l.join().unwrap();
        assert!(
            failed.is_empty(),
            "failed requests during reloads: {failed:?}"
        );
        assert_eq!(
            reconnects, 0,
            "keep-alive connections to a kept listener survive reloads"
        );
        total += ok;
    }
    assert!(total > 100, "the load ran ({total} requests)");

    // Counted and shown.
    assert_eq!(
        metric(
            admin,
            "legate_config_reloads_total",
            Some(("result", "success"))
        ),
        applied as f64
    );
    assert_eq!(
        metric(
            admin,
            "legate_config_reloads_total",
            Some(("result", "error"))
        ),
        refused as f64
    );
    let running = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        metric(
            admin,
            "legate_config_info",
            Some(("hash", &sha256(&running)))
        ),
        1.0
    );
    let config = http_get(local(admin), "/config", T).unwrap();
    assert_eq!(
        config.header("legate-config-hash"),
        Some(sha256(&running).as_str())
    );
    // The last reload succeeded: no error shown any more.
    assert!(
        config.text().contains("# last_reload_error: none"),
        "{}",
        config.text()
    );

    // Twelve rebuilds would have opened twelve connections: the pool was kept.
    let pooled = a.accepted.load(Ordering::SeqCst);
    assert!(
        pooled <= 4,
        "upstream a saw {pooled} connections for 2 clients"
    );
    // The circuit stayed open through twenty reloads...
    let r = c.get("/c").unwrap();
    assert_eq!(r.status, 503);
    assert!(r.head.contains("legate-error: circuit-open"), "{}", r.head);
    // ...and a reload that changes c starts it afresh (connects are tried again).
    write_atomic(&path, &cfg.yaml(99, "", "2s"));
    let (code, body) = post(admin, "/reload");
    assert_eq!(code, 200, "{body}");
    let r = c.get("/c").unwrap();
    assert_eq!(
        r.status, 502,
        "a new breaker lets the request try: {}",
        r.head
    );

    stop(&mut lg);
}

#[test]
fn configmap_symlink_swap_and_a_deleted_file() {
    let dir = TempDir::new("reload-configmap");
    let a = upstream("a");
    let cfg = Cfg::new(a.addr);
    let fast = |gen: u32| {
        cfg.yaml(gen, "", "1s")
            .replace("watch_interval: 1h", "watch_interval: 100ms")
    };
    // The layout the kubelet writes for a ConfigMap volume.
    let root = dir.path();
    std::fs::create_dir(root.join("..2026_12_02_v1")).unwrap();
    std::fs::write(root.join("..2026_12_02_v1/legate.yaml"), fast(1)).unwrap();
    std::os::unix::fs::symlink("..2026_12_02_v1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/legate.yaml", root.join("legate.yaml")).unwrap();
    let path = root.join("legate.yaml");
    let mut lg = start(&path, cfg.admin);
    let app = local(cfg.port);
    let gen_of = || Client::new(app).get("/a").map(|r| r.head);
    assert!(gen_of().unwrap().contains("x-gen: 1"));

    // The update: a new timestamped directory, then `..data` swapped by rename.
    std::fs::create_dir(root.join("..2026_12_02_v2")).unwrap();
    std::fs::write(root.join("..2026_12_02_v2/legate.yaml"), fast(2)).unwrap();
    std::os::unix::fs::symlink("..2026_12_02_v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..2026_12_02_v1")).unwrap();
    wait_for("the swap is picked up", T, || {
        lg.ensure_running();
        let h = gen_of()?;
        h.contains("x-gen: 2").then_some(()).ok_or(h)
    });
    assert_eq!(
        metric(
            cfg.admin,
            "legate_config_info",
            Some(("hash", &sha256(&fast(2))))
        ),
        1.0
    );

    // Deleted mid-watch: said once, counted, shown, and nothing stops.
    std::fs::remove_file(&path).unwrap();
    wait_for("the loss is reported", T, || {
        (metric(
            cfg.admin,
            "legate_config_reloads_total",
            Some(("result", "error")),
        ) == 1.0)
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    });
    let shown = http_get(local(cfg.admin), "/config", T).unwrap().text();
    assert!(shown.contains("the config file is gone"), "{shown}");
    assert_eq!(
        metric(cfg.admin, "legate_config_last_reload_successful", None),
        0.0
    );
    for _ in 0..20 {
        assert!(gen_of().unwrap().contains("x-gen: 2"), "still serving");
    }
    assert_eq!(
        metric(
            cfg.admin,
            "legate_config_reloads_total",
            Some(("result", "error"))
        ),
        1.0,
        "a missing file is reported once, not every tick"
    );
    // Back, changed: reloaded.
    std::os::unix::fs::symlink("..data/legate.yaml", &path).unwrap();
    std::fs::write(root.join("..2026_12_02_v2/legate.yaml"), fast(3)).unwrap();
    wait_for("the file's return is picked up", T, || {
        let h = gen_of()?;
        h.contains("x-gen: 3").then_some(()).ok_or(h)
    });
    assert_eq!(
        metric(cfg.admin, "legate_config_last_reload_successful", None),
        1.0
    );
    stop(&mut lg);
}

#[test]
fn a_storm_of_sighups_under_load() {
    let dir = TempDir::new("reload-storm");
    let a = upstream("a");
    let cfg = Cfg::new(a.addr);
    let path = dir.write("legate.yaml", cfg.yaml(1, "", "1s"));
    let mut lg = start(&path, cfg.admin);
    let app = local(cfg.port);
    let halt = Arc::new(AtomicBool::new(false));
    let loader = load(app, halt.clone());
    write_atomic(&path, &cfg.yaml(2, "", "1s"));
    for i in 0..50 {
        lg.signal("HUP");
        if i == 25 {
            write_atomic(&path, &cfg.yaml(3, "", "1s"));
        }
    }
    wait_for("the last config runs", T, || {
        lg.ensure_running();
        let h = Client::new(app).get("/a")?.head;
        h.contains("x-gen: 3").then_some(()).ok_or(h)
    });
    halt.store(true, Ordering::SeqCst);
    let (_, failed, _) = loader.join().unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        metric(
            cfg.admin,
            "legate_config_reloads_total",
            Some(("result", "error"))
        ),
        0.0
    );
    stop(&mut lg);
}

#[test]
fn renaming_a_unix_listener_keeps_its_socket() {
    use std::os::unix::net::UnixStream;
    let dir = TempDir::new("reload-unix-rename");
    let a = upstream("a");
    let admin = free_port();
    let sock = dir.path().join("app.sock");
    let yaml = |name: &str| {
        format!(
            "admin: {{ listen: 127.0.0.1:{admin} }}\nfiles: {{ watch_interval: 1h }}\n\
             listeners:\n  - {{ name: {name}, listen: \"unix:{}\", protocol: tcp, upstream: a }}\n\
             upstreams:\n  - {{ name: a, endpoints: [\"{}\"] }}\n",
            sock.display(),
            a.addr
        )
    };
    let path = dir.write("legate.yaml", yaml("db"));
    let mut lg = start(&path, admin);
    let get = || {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(get().starts_with("HTTP/1.1 200"));
    write_atomic(&path, &yaml("db2"));
    let (code, body) = post(admin, "/reload");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("renamed to `db2`"), "{body}");
    assert!(get().starts_with("HTTP/1.1 200"), "the socket still serves");
    stop(&mut lg);
    assert!(!sock.exists(), "removed at stop");
}

/// A reload that removes an HTTP listener tells its connections to finish: an idle keep-alive
/// connection on it is closed (the app's pool reconnects to whatever now listens), while an
/// idle connection on a kept listener stays open and serves its next request.
#[test]
fn a_removed_listener_closes_its_idle_connections() {
    let dir = TempDir::new("reload-remove-idle");
    let a = upstream("a");
    let cfg = Cfg::new(a.addr);
    let extra_port = free_port();
    let path = dir.write(
        "legate.yaml",
        cfg.yaml(1, &extra_listener(extra_port), "1s"),
    );
    let mut lg = start(&path, cfg.admin);
    let get = |s: &mut TcpStream, path: &str| -> String {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        // Each answer ends with the upstream's body, "a\n".
        while !got.ends_with(b"\r\n\r\na\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "closed mid-answer: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    // Two idle connections on each listener (two workers: they may land on either).
    let mut on_extra: Vec<TcpStream> = Vec::new();
    let mut on_app: Vec<TcpStream> = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(local(extra_port)).unwrap();
        assert!(get(&mut s, "/x").starts_with("HTTP/1.1 200"));
        on_extra.push(s);
        let mut s = TcpStream::connect(local(cfg.port)).unwrap();
        assert!(get(&mut s, "/a").starts_with("HTTP/1.1 200"));
        on_app.push(s);
    }
    write_atomic(&path, &cfg.yaml(2, "", "1s"));
    let (code, body) = post(cfg.admin, "/reload");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("listener `extra` removed"), "{body}");
    for s in &mut on_extra {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(
            s.read(&mut buf).unwrap(),
            0,
            "an idle connection on the removed listener is closed without a word"
        );
    }
    for s in &mut on_app {
        assert!(
            get(s, "/a").starts_with("HTTP/1.1 200"),
            "a kept listener keeps its idle connections"
        );
    }
    stop(&mut lg);
}
