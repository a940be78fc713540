//! Helpers for integration tests that drive real processes (the `legate`
//! binary, gunicorn/httpbin, curl) over 127.0.0.1.
//!
//! Only std (and libc) is used here so the helpers compile independently of the crate's
//! own code. Each test binary uses a different subset, hence the allow.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How often condition polls re-check.
pub const POLL_INTERVAL: Duration = Duration::from_millis(30);
/// Default deadline for "the thing should be up by now" conditions.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(20);

/// Path of the `legate` binary built by cargo for this test run.
pub fn legate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_legate")
}

/// A port on 127.0.0.1 that was free a moment ago (bind :0, read, drop).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Fails the test (with a pointer to scripts/test) when an external tool the
/// test depends on is not installed. Never silently skips.
pub fn require_tool(tool: &str, version_arg: &str) {
    match Command::new(tool)
        .arg(version_arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) => panic!(
            "`{tool}` is required by this test but could not be run ({e}); \
             run `bash scripts/test`, which installs the test dependencies \
             (curl, gunicorn, python3-httpbin, ...)"
        ),
    }
}

/// Polls `probe` every [`POLL_INTERVAL`] until it returns `Some`, or panics
/// after `deadline` with `what` and the last probe error in the message.
pub fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        let last_err = match probe() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if start.elapsed() >= deadline {
            panic!("timed out after {deadline:?} waiting for {what}; last observation: {last_err}");
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// A unique scratch directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "legate-test-{tag}-{}-{n}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory and returns the path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

type Lines = Arc<Mutex<Vec<String>>>;

fn drain_into(reader: impl Read + Send + 'static, sink: Lines) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    sink.lock().unwrap().push(line);
                }
            }
        }
    })
}

/// A spawned child process (in its own process group) whose stdout/stderr
/// are continuously drained into memory. The whole group is killed on drop,
/// and captured output is printed if the test is failing.
pub struct Proc {
    name: String,
    child: Child,
    stdout: Lines,
    stderr: Lines,
    drains: Vec<thread::JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> io::Result<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn()?;
        let stdout: Lines = Arc::default();
        let stderr: Lines = Arc::default();
        let drains = vec![
            drain_into(child.stdout.take().expect("piped stdout"), stdout.clone()),
            drain_into(child.stderr.take().expect("piped stderr"), stderr.clone()),
        ];
        Ok(Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
            drains,
            exit: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Every line the process wrote, stdout's then stderr's.
    pub fn output_lines(&self) -> Vec<String> {
        let mut all = self.stdout_lines();
        all.extend(self.stderr_lines());
        all
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Non-blocking: `Some(status)` once the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    /// Panics (with captured output) if the process is no longer running.
    /// Used inside `wait_for` probes so a crashed process fails fast.
    pub fn ensure_running(&mut self) {
        if let Some(status) = self.try_exit() {
            panic!(
                "{} exited early with {}\n{}",
                self.name,
                describe_status(status),
                self.output_report()
            );
        }
    }

    /// Sends `signal` (e.g. "TERM") to the process itself (not its group).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill(1); procps must be installed (run scripts/test)");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits up to `deadline` for the process to exit on its own.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if start.elapsed() >= deadline {
                return None;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    pub fn output_report(&self) -> String {
        let mut out = String::new();
        for (label, lines) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let lines = lines.lock().unwrap();
            let skip = lines.len().saturating_sub(60);
            let _ = writeln!(
                out,
                "---- {} {label} (last {} of {} lines) ----",
                self.name,
                lines.len() - skip,
                lines.len()
            );
            for l in lines.iter().skip(skip) {
                let _ = writeln!(out, "{l}");
            }
        }
        out
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            // Kill the whole process group (gunicorn forks workers).
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.pid())])
                .stderr(Stdio::null())
                .status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("{}", self.output_report());
        }
    }
}

pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => format!("{status:?}"),
    }
}

/// Output of a finished one-shot command.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn describe(&self) -> String {
        format!(
            "{}\n---- stdout ----\n{}\n---- stderr ----\n{}",
            describe_status(self.status),
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `cmd` to completion, killing it and failing the test if it is still
/// running after `deadline`.
pub fn run_with_deadline(name: &str, cmd: &mut Command, deadline: Duration) -> Finished {
    let mut proc =
        Proc::spawn(name, cmd).unwrap_or_else(|e| panic!("failed to spawn {name} ({cmd:?}): {e}"));
    let Some(status) = proc.wait_exit(deadline) else {
        panic!(
            "{name} was still running after {deadline:?} (expected it to exit)\n{}",
            proc.output_report()
        );
    };
    for handle in proc.drains.drain(..) {
        let _ = handle.join();
    }
    Finished {
        status,
        stdout: proc.stdout_lines().join("\n"),
        stderr: proc.stderr_lines().join("\n"),
    }
}

/// Runs the legate binary with `args` (must exit within 20 s).
/// Starts the real binary with `args` (not waiting for anything).
pub fn legate_spawn(name: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new(legate_bin());
    cmd.args(args);
    Proc::spawn(name, &mut cmd).expect("spawn the legate binary")
}

/// `legate http` (quick mode) on 127.0.0.1:`port` in front of `upstream` (a URL), admin on
/// 127.0.0.1:`admin`, plus `extra` flags; not waited for.
pub fn legate_http(upstream: &str, port: u16, admin: u16, extra: &[&str]) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let admin = format!("127.0.0.1:{admin}");
    let mut args = vec![
        "http",
        "--listen",
        &listen,
        "--upstream",
        upstream,
        "--admin",
        &admin,
    ];
    args.extend_from_slice(extra);
    legate_spawn("legate http", &args)
}

/// Waits until the legate whose admin listens on 127.0.0.1:`admin` answers `/ready` 200,
/// failing fast (with its output) if the process died.
pub fn wait_ready(p: &mut Proc, admin: u16) {
    wait_for("legate /ready", STARTUP_DEADLINE, || {
        p.ensure_running();
        let r =
            http_get(local(admin), "/ready", Duration::from_secs(2)).map_err(|e| e.to_string())?;
        (r.status == 200)
            .then_some(())
            .ok_or_else(|| format!("status {}", r.status))
    });
}

/// `legate_spawn`, then `wait_ready`.
pub fn legate_ready(name: &str, args: &[&str], admin: u16) -> Proc {
    let mut p = legate_spawn(name, args);
    wait_ready(&mut p, admin);
    p
}

pub fn legate_cmd(args: &[&str]) -> Finished {
    let mut cmd = Command::new(legate_bin());
    cmd.args(args);
    run_with_deadline("legate", &mut cmd, Duration::from_secs(20))
}

/// The final response of a curl invocation.
#[derive(Debug)]
pub struct CurlResponse {
    pub status: u16,
    /// As curl's `%{http_version}`: "1.1", "2", ...
    pub http_version: String,
    /// Header names lower-cased; headers of the last response only.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl CurlResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {} body: {}",
                self.status,
                truncate(&self.text(), 2000)
            )
        })
    }
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes total)", &s[..end], s.len())
}

/// Runs `curl <args> <url>` (never through a proxy) and returns the final
/// response. Panics if curl is missing or fails at the transport level.
pub fn curl(args: &[&str], url: &str) -> CurlResponse {
    require_tool("curl", "--version");
    let tmp = TempDir::new("curl");
    let head_file = tmp.path().join("headers");
    let body_file = tmp.path().join("body");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--noproxy", "*", "--max-time", "30"])
        .arg("-D")
        .arg(&head_file)
        .arg("-o")
        .arg(&body_file)
        .args(["-w", "%{http_code} %{http_version}"])
        .args(args)
        .arg(url);
    let out = run_with_deadline("curl", &mut cmd, Duration::from_secs(40));
    assert!(
        out.status.success(),
        "curl {args:?} {url} failed: {}",
        out.describe()
    );
    let mut written = out.stdout.split_whitespace();
    let status = written
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected curl -w output {:?}", out.stdout));
    let http_version = written.next().unwrap_or_default().to_string();
    let raw_headers = std::fs::read_to_string(&head_file).unwrap_or_default();
    // -D holds every response head (e.g. a 100 Continue first); keep the last.
    let last_block = raw_headers
        .replace("\r\n", "\n")
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap_or_default()
        .to_string();
    let mut headers = HashMap::new();
    for line in last_block.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let body = std::fs::read(&body_file).unwrap_or_default();
    CurlResponse {
        status,
        http_version,
        headers,
        body,
    }
}

// ---------------------------------------------------------------------------
// Minimal blocking HTTP/1.1 client (one request per connection).
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `GET path` to `addr` with `Connection: close` and reads the full
/// response. `timeout` bounds connect and each read.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: legate-tests\r\nConnection: close\r\n\r\n"
    )?;
    stream.flush()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let _ = stream.shutdown(Shutdown::Both);
    parse_response(&raw)
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub fn parse_response(raw: &[u8]) -> io::Result<HttpResponse> {
    let head_end =
        find(raw, b"\r\n\r\n").ok_or_else(|| invalid("no end of response head in reply"))?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| invalid("non-UTF-8 head"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let mut headers = HashMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let rest = &raw[head_end + 4..];
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some(len) = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        if rest.len() < len {
            return Err(invalid(format!(
                "body truncated: content-length {len}, got {}",
                rest.len()
            )));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn decode_chunked(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or_else(|| invalid("truncated chunk size"))?;
        let size_str = std::str::from_utf8(&data[..line_end]).map_err(|_| invalid("chunk"))?;
        let size_str = size_str.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_str:?}")))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(invalid("truncated chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

// ---------------------------------------------------------------------------
// Prometheus text parsing.
// ---------------------------------------------------------------------------

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// Parses sample lines (comments skipped). Label values may not contain
/// `,` or `"` escapes beyond what legate emits; good enough for tests.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, rest) = match line.find('{') {
            Some(open) => match line[open..].find('}') {
                Some(close) => (&line[..open + close + 1], &line[open + close + 1..]),
                None => continue,
            },
            None => match line.split_once(char::is_whitespace) {
                Some((s, r)) => (s, r),
                None => continue,
            },
        };
        let value = match rest.split_whitespace().next().and_then(parse_prom_f64) {
            Some(v) => v,
            None => continue,
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, parse_labels(l.trim_end_matches('}'))),
            None => (series, HashMap::new()),
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

fn parse_prom_f64(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

fn parse_labels(s: &str) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        let Some(after) = after.strip_prefix('"') else {
            break;
        };
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                _ => value.push(c),
            }
        }
        labels.insert(key, value);
        rest = &after[end..];
    }
    labels
}

/// Sum of all samples named `name` (any labels).
pub fn metric_sum(samples: &[Sample], name: &str) -> Option<f64> {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .collect();
    if matching.is_empty() {
        None
    } else {
        Some(matching.iter().sum())
    }
}

// ---------------------------------------------------------------------------
// Process fixtures.
// ---------------------------------------------------------------------------

/// A running legate process plus the addresses it was told to use.
pub struct Legate {
    pub proc: Proc,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

impl Legate {
    /// Spawns `legate <args>` and waits until admin `/ready` answers 200.
    pub fn start(args: &[String], listen: SocketAddr, admin: SocketAddr) -> Legate {
        let mut cmd = Command::new(legate_bin());
        cmd.args(args).env("RUST_BACKTRACE", "1");
        let proc = Proc::spawn("legate", &mut cmd)
            .unwrap_or_else(|e| panic!("spawn {}: {e}", legate_bin()));
        let mut legate = Legate {
            proc,
            listen,
            admin,
        };
        legate.wait_ready();
        legate
    }

    /// Quick mode: `legate http --listen L --upstream U --admin A <extra>`.
    pub fn quick(upstream: &str, extra: &[&str]) -> Legate {
        let listen = local(free_port());
        let admin = local(free_port());
        let mut args: Vec<String> = vec![
            "http".into(),
            "--listen".into(),
            listen.to_string(),
            "--upstream".into(),
            upstream.to_string(),
            "--admin".into(),
            admin.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Legate::start(&args, listen, admin)
    }

    pub fn wait_ready(&mut self) {
        let admin = self.admin;
        wait_for(
            "legate admin /ready to return 200",
            STARTUP_DEADLINE,
            || {
                self.proc.ensure_running();
                match http_get(admin, "/ready", Duration::from_secs(2)) {
                    Ok(r) if r.status == 200 => Ok(()),
                    Ok(r) => Err(format!("/ready returned {}", r.status)),
                    Err(e) => Err(format!("/ready: {e}")),
                }
            },
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    pub fn admin_get(&self, path: &str) -> io::Result<HttpResponse> {
        http_get(self.admin, path, Duration::from_secs(5))
    }

    pub fn metrics(&self) -> Vec<Sample> {
        let r = self.admin_get("/metrics").expect("GET admin /metrics");
        assert_eq!(r.status, 200, "admin /metrics status; body: {}", r.text());
        parse_metrics(&r.text())
    }

    /// JSON access-log objects printed on stdout so far.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.proc
            .stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("status").is_some() && v.get("path").is_some())
            .collect()
    }
}

/// A real httpbin (python3-httpbin served by gunicorn) on 127.0.0.1.
pub struct Httpbin {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Httpbin {
    pub fn start() -> Httpbin {
        require_tool("gunicorn", "--version");
        let addr = local(free_port());
        let mut cmd = Command::new("gunicorn");
        cmd.args([
            "--bind",
            &addr.to_string(),
            "--workers",
            "2",
            "--timeout",
            "60",
            "httpbin:app",
        ])
        // Run from a neutral directory so nothing local shadows the module.
        .current_dir(std::env::temp_dir());
        let mut proc = Proc::spawn("gunicorn-httpbin", &mut cmd).unwrap_or_else(|e| {
            panic!(
                "could not start gunicorn ({e}); run `bash scripts/test`, which installs \
                 gunicorn and python3-httpbin"
            )
        });
        wait_for(
            "httpbin (gunicorn) to answer /get",
            STARTUP_DEADLINE,
            || {
                if let Some(status) = proc.try_exit() {
                    panic!(
                        "gunicorn httpbin:app exited with {} (is python3-httpbin installed? \
                     run `bash scripts/test`)\n{}",
                        describe_status(status),
                        proc.output_report()
                    );
                }
                match http_get(addr, "/get", Duration::from_secs(2)) {
                    Ok(r) if r.status == 200 => Ok(()),
                    Ok(r) => Err(format!("status {}", r.status)),
                    Err(e) => Err(e.to_string()),
                }
            },
        );
        Httpbin { proc, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A process's resident set (`VmRSS`), in KiB; 0 once it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// This test process's soft open-files limit raised to its hard limit, which must be at least
/// `need` (`what` says what the descriptors are for).
pub fn raise_nofile(need: u64, what: &str) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_max >= need,
        "this test holds {what}: it needs `ulimit -Hn` ≥ {need} (it is {})",
        lim.rlim_max
    );
}

/// A real nginx (two workers, 4,096 connections each) answering `200 ok` on a free port.
pub fn nginx_ok(dir: &TempDir) -> (Proc, u16) {
    require_tool("nginx", "-v");
    let up_port = free_port();
    let conf = dir.write(
        "nginx.conf",
        format!(
            "worker_processes 2; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             worker_rlimit_nofile 8192;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; keepalive_requests 1000000;\n\
               server {{ listen 127.0.0.1:{up_port}; location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            d = dir.path().display()
        ),
    );
    let mut nginx = Proc::spawn(
        "nginx",
        Command::new("nginx").args([
            "-p",
            &dir.path().display().to_string(),
            "-c",
            &conf.display().to_string(),
        ]),
    )
    .expect("start nginx");
    wait_for("nginx", Duration::from_secs(10), || {
        nginx.ensure_running();
        http_get(local(up_port), "/", Duration::from_secs(1))
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    (nginx, up_port)
}

/// A keep-alive HTTP/1.1 upstream on its own threads: every request head it reads is answered
/// `200` with the body `ok`, `delay` after the head arrived (zero: at once).
pub fn ok_upstream(delay: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = l.local_addr().expect("local_addr");
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                let mut pending = Vec::new();
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        if !delay.is_zero() {
                            thread::sleep(delay);
                        }
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// One keep-alive `GET /` on `c` to an `ok_upstream` behind legate; the status.
pub fn ok_request(c: &mut TcpStream) -> io::Result<u16> {
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")?;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"ok")) {
        let n = c.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&got[9..12]).parse().unwrap_or(0))
}
