//! The `legate` binary as a user drives it: `check`, `--print-config`,
//! `--version`, `run` via LEGATE_CONFIG, SIGTERM drain, and the 502 that a
//! closed upstream port yields.

#[path = "support/proc.rs"]
mod proc_support;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use proc_support::{
    curl, describe_status, free_port, http_get, legate_bin, legate_cmd, local, metric_sum,
    parse_metrics, wait_for, Legate, TempDir,
};

const VALID_CONFIG: &str = "\
admin: { listen: 127.0.0.1:9901 }
listeners:
  - name: app
    listen: 127.0.0.1:8080
    protocol: http
    routes:
      - name: default
        match: { path_prefix: / }
        upstream: httpbin
        timeout: 15s
        request_headers: { set: { X-Client-ID: microservice-001 }, remove: [X-Debug] }
upstreams:
  - name: httpbin
    endpoints: [ \"127.0.0.1:9000\" ]
    connect_timeout: 2s
";

/// 1-based number of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in test fixture"))
}

/// The stderr line reporting `FILE:LINE:COL: ...` for `line`, if any.
fn diagnostic_for<'a>(stderr: &'a str, file: &Path, line: usize) -> Option<&'a str> {
    let prefix = format!("{}:{line}:", file.display());
    stderr.lines().find(|l| {
        l.strip_prefix(&prefix).is_some_and(|rest| {
            let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
            !col.is_empty() && rest[col.len()..].starts_with(':')
        })
    })
}

#[test]
fn version_flag_prints_version() {
    let out = legate_cmd(&["--version"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "`legate --version` should print {}; {}",
        env!("CARGO_PKG_VERSION"),
        out.describe()
    );
}

#[test]
fn check_accepts_valid_config() {
    let tmp = TempDir::new("check-valid");
    let file = tmp.write("legate.yaml", VALID_CONFIG);
    let out = legate_cmd(&["check", "-c", &file.display().to_string()]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected a one-line summary on stdout; {}",
        out.describe()
    );
}

const UNKNOWN_FIELD: &str = "        retires: 3\n";
const MISSING_UPSTREAM: &str = "upstream: no-such-upstream";

/// VALID_CONFIG with an unknown route field and/or a route naming an
/// upstream that does not exist.
fn broken_config(unknown_field: bool, missing_upstream: bool) -> String {
    let mut config = VALID_CONFIG.to_string();
    if unknown_field {
        config = config.replace(
            "        timeout: 15s\n",
            &format!("        timeout: 15s\n{UNKNOWN_FIELD}"),
        );
    }
    if missing_upstream {
        config = config.replace("upstream: httpbin", MISSING_UPSTREAM);
    }
    config
}

/// Writes `config` to a temp file, runs `legate check` on it, expects exit 1
/// and returns (temp dir to keep alive, file, stderr).
fn check_fails(tag: &str, config: &str) -> (TempDir, PathBuf, String) {
    let tmp = TempDir::new(tag);
    let file = tmp.write("bad.yaml", config);
    let out = legate_cmd(&["check", "-c", &file.display().to_string()]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    (tmp, file, out.stderr)
}

fn assert_unknown_field_reported(config: &str, file: &Path, stderr: &str) {
    let line = line_of(config, UNKNOWN_FIELD.trim());
    let diag = diagnostic_for(stderr, file, line).unwrap_or_else(|| {
        panic!(
            "no `{}:{line}:COL:` diagnostic for the unknown field; stderr:\n{stderr}",
            file.display()
        )
    });
    assert!(
        diag.contains("retires") && diag.contains("routes"),
        "unknown-field diagnostic should name the field path \
         (listeners..routes..retires): {diag}"
    );
}

fn assert_missing_upstream_reported(config: &str, file: &Path, stderr: &str) {
    let line = line_of(config, MISSING_UPSTREAM);
    let diag = diagnostic_for(stderr, file, line).unwrap_or_else(|| {
        panic!(
            "no `{}:{line}:COL:` diagnostic for the missing upstream; stderr:\n{stderr}",
            file.display()
        )
    });
    assert!(
        diag.contains("routes") && diag.contains("upstream"),
        "missing-upstream diagnostic should name the field path \
         (listeners..routes..upstream): {diag}"
    );
}

#[test]
fn check_reports_unknown_field_with_location_and_path() {
    let config = broken_config(true, false);
    let (_tmp, file, stderr) = check_fails("check-unknown", &config);
    assert_unknown_field_reported(&config, &file, &stderr);
}

#[test]
fn check_reports_missing_upstream_with_location_and_path() {
    let config = broken_config(false, true);
    let (_tmp, file, stderr) = check_fails("check-missing", &config);
    assert_missing_upstream_reported(&config, &file, &stderr);
}

#[test]
fn check_reports_every_problem_in_one_run() {
    let config = broken_config(true, true);
    let (_tmp, file, stderr) = check_fails("check-both", &config);
    assert_unknown_field_reported(&config, &file, &stderr);
    assert_missing_upstream_reported(&config, &file, &stderr);
}

#[test]
fn check_rejects_malformed_yaml_with_line_number() {
    let config = "admin: { listen: 127.0.0.1:9901 }\nlisteners:\n  - name: app\n    listen: 127.0.0.1:8080: oops\n";
    let bad_line = line_of(config, ": oops");
    let tmp = TempDir::new("check-malformed");
    let file = tmp.write("malformed.yaml", config);
    let out = legate_cmd(&["check", "-c", &file.display().to_string()]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(
        diagnostic_for(&out.stderr, &file, bad_line).is_some(),
        "expected `{}:{bad_line}:COL: ...` on stderr; {}",
        file.display(),
        out.describe()
    );
}

#[test]
fn print_config_output_passes_check() {
    let listen = local(free_port()).to_string();
    let admin = local(free_port()).to_string();
    let upstream = format!("http://{}", local(free_port()));
    let out = legate_cmd(&[
        "http",
        "--listen",
        &listen,
        "--upstream",
        &upstream,
        "--set-header",
        "X-Client-ID=microservice-001",
        "--admin",
        &admin,
        "--print-config",
    ]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains("listeners") && out.stdout.contains(&listen),
        "--print-config should print the YAML config; {}",
        out.describe()
    );
    let tmp = TempDir::new("print-config");
    let file = tmp.write("printed.yaml", format!("{}\n", out.stdout));
    let checked = legate_cmd(&["check", "-c", &file.display().to_string()]);
    assert_eq!(
        checked.code(),
        Some(0),
        "printed config fails `legate check`:\n{}\n{}",
        out.stdout,
        checked.describe()
    );
}

#[test]
fn run_reads_legate_config_env_and_serves_admin() {
    let listen = local(free_port());
    let admin = local(free_port());
    let config = VALID_CONFIG
        .replace("127.0.0.1:9901", &admin.to_string())
        .replace("127.0.0.1:8080", &listen.to_string())
        .replace("127.0.0.1:9000", &local(free_port()).to_string());
    let tmp = TempDir::new("run-env");
    let file = tmp.write("legate.yaml", config);
    let mut cmd = Command::new(legate_bin());
    cmd.arg("run").env("LEGATE_CONFIG", &file);
    let mut proc = proc_support::Proc::spawn("legate", &mut cmd).expect("spawn legate");
    wait_for(
        "/ready 200 (config from LEGATE_CONFIG)",
        Duration::from_secs(20),
        || {
            proc.ensure_running();
            match http_get(admin, "/ready", Duration::from_secs(2)) {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("status {}", r.status)),
                Err(e) => Err(e.to_string()),
            }
        },
    );
    let live = http_get(admin, "/live", Duration::from_secs(5)).expect("GET /live");
    assert_eq!(live.status, 200, "/live");
    let config = http_get(admin, "/config", Duration::from_secs(5)).expect("GET /config");
    assert_eq!(config.status, 200, "/config");
    assert!(
        config.text().contains("listeners") && config.text().contains("httpbin"),
        "/config should return the YAML config: {}",
        config.text()
    );
    let metrics = http_get(admin, "/metrics", Duration::from_secs(5)).expect("GET /metrics");
    assert_eq!(metrics.status, 200, "/metrics");
    assert!(
        metric_sum(
            &parse_metrics(&metrics.text()),
            "legate_http_inflight_requests"
        )
        .is_some(),
        "legate_http_inflight_requests missing:\n{}",
        metrics.text()
    );
}

#[test]
fn closed_upstream_port_gives_502_connect_refused() {
    // Nothing listens on this port once the probe listener is dropped.
    let upstream = format!("http://{}", local(free_port()));
    let legate = Legate::quick(&upstream, &[]);
    let resp = curl(&[], &legate.url("/anything"));
    assert_eq!(resp.status, 502, "body: {}", resp.text());
    assert_eq!(
        resp.header("legate-error"),
        Some("connect-refused"),
        "headers: {:?}",
        resp.headers
    );
    let line = wait_for(
        "access-log line for the 502",
        Duration::from_secs(10),
        || {
            legate
                .access_log()
                .into_iter()
                .find(|l| l["status"] == 502)
                .ok_or_else(|| format!("stdout so far: {:?}", legate.proc.stdout_lines()))
        },
    );
    assert!(
        line.get("error").is_some_and(|e| !e.is_null()),
        "access-log line for a 502 should carry an error: {line}"
    );
}

/// A one-route upstream that answers every request with 200 "hello" after
/// `delay`, reporting each received request on the returned channel.
fn slow_upstream(delay: Duration) -> (SocketAddr, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind slow upstream");
    let addr = listener.local_addr().expect("local_addr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let tx = tx.clone();
            thread::spawn(move || -> io::Result<()> {
                conn.set_read_timeout(Some(Duration::from_secs(30)))?;
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = conn.read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let _ = tx.send(());
                thread::sleep(delay);
                conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                )?;
                conn.flush()
            });
        }
    });
    (addr, rx)
}

#[test]
fn sigterm_drains_in_flight_request_then_exits_zero() {
    let (upstream, requests_seen) = slow_upstream(Duration::from_millis(1500));
    let mut legate = Legate::quick(&format!("http://{upstream}"), &[]);
    let listen = legate.listen;
    let admin = legate.admin;

    let client = thread::spawn(move || {
        let resp = http_get(listen, "/slow", Duration::from_secs(30));
        (resp, Instant::now())
    });

    requests_seen
        .recv_timeout(Duration::from_secs(15))
        .expect("the request never reached the upstream through legate");
    wait_for(
        "legate_http_inflight_requests >= 1",
        Duration::from_secs(10),
        || {
            let text = http_get(admin, "/metrics", Duration::from_secs(2))
                .map_err(|e| e.to_string())?
                .text();
            match metric_sum(&parse_metrics(&text), "legate_http_inflight_requests") {
                Some(v) if v >= 1.0 => Ok(()),
                other => Err(format!("legate_http_inflight_requests = {other:?}")),
            }
        },
    );

    legate.proc.signal("TERM");
    let signalled = Instant::now();

    // /ready turns 503 (or the admin server is already gone) and the
    // listener stops accepting new connections.
    let mut saw_not_ready = None;
    let mut saw_refused = None;
    let deadline = Duration::from_secs(10);
    while saw_not_ready.is_none() || saw_refused.is_none() {
        assert!(
            signalled.elapsed() < deadline,
            "after SIGTERM within {deadline:?}: /ready not-ready observed: {saw_not_ready:?}, \
             listener refusing observed: {saw_refused:?}"
        );
        if saw_not_ready.is_none() {
            match http_get(admin, "/ready", Duration::from_secs(2)) {
                Ok(r) if r.status == 503 => saw_not_ready = Some("503"),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    saw_not_ready = Some("admin closed")
                }
                Err(_) => {}
            }
        }
        if saw_refused.is_none() {
            match TcpStream::connect_timeout(&listen, Duration::from_secs(1)) {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    saw_refused = Some(signalled.elapsed())
                }
                _ => {}
            }
        }
        thread::sleep(proc_support::POLL_INTERVAL);
    }

    let (resp, done_at) = client.join().expect("client thread");
    let resp = resp.expect("in-flight request failed during drain");
    assert_eq!(resp.status, 200, "in-flight request during drain");
    assert_eq!(resp.text(), "hello");
    assert!(
        done_at > signalled,
        "the in-flight request finished before SIGTERM; the drain was not exercised"
    );
    let refused_after = saw_refused.expect("observed above");
    assert!(
        refused_after < done_at - signalled,
        "the listener kept accepting until the in-flight request finished \
         ({refused_after:?} after SIGTERM); it should stop accepting while draining"
    );

    let status = legate
        .proc
        .wait_exit(Duration::from_secs(20))
        .expect("legate did not exit within 20 s of SIGTERM");
    assert!(
        status.success(),
        "legate should exit 0 after draining, got {}",
        describe_status(status)
    );
}
