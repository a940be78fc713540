//! The Pod lifecycle with the real binary: `/startup` and `/ready`, `legate wait` (success and
//! timeout) and `legate shutdown`, the quit endpoint draining a request in flight, SIGTERM with
//! `min_delay` still serving and the exit code, ending with a file or a process (Jobs), and
//! state-changing admin endpoints refused to a peer in another network namespace.

#[path = "support/proc.rs"]
mod proc;

use proc::{free_port, http_get, legate_cmd, legate_spawn, local, wait_for, wait_ready, TempDir};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

/// An upstream that answers every request after `delay`, telling `arrived` when one comes in.
fn slow_upstream(delay: Duration) -> (SocketAddr, mpsc::Receiver<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(());
                std::thread::sleep(delay);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nslow\n",
                );
            });
        }
    });
    (addr, rx)
}

/// `legate http` on a free port in front of `upstream`, admin on `admin`, plus `extra` flags.
fn http_legate(_name: &str, upstream: &str, admin: u16, extra: &[&str]) -> proc::Proc {
    proc::legate_http(upstream, free_port(), admin, extra)
}

fn status(admin: SocketAddr, path: &str) -> u16 {
    http_get(admin, path, Duration::from_secs(2))
        .map(|r| r.status)
        .unwrap_or(0)
}

fn post(admin: SocketAddr, path: &str) -> (u16, String) {
    legate::lifecycle::probe::http(admin, "POST", path, Duration::from_secs(5)).unwrap()
}

#[test]
fn wait_startup_ready_and_shutdown() {
    let (up, _) = slow_upstream(Duration::ZERO);
    let (port, admin) = (free_port(), free_port());
    let admin_s = format!("127.0.0.1:{admin}");
    // The app's entrypoint starts first and waits for legate.
    let mut waiter = legate_spawn(
        "legate wait",
        &["wait", "--admin", &admin_s, "--timeout", "30s"],
    );
    let mut lg = legate_spawn(
        "legate http",
        &[
            "http",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            &format!("http://{up}"),
            "--admin",
            &admin_s,
        ],
    );
    let code = waiter
        .wait_exit(Duration::from_secs(30))
        .expect("wait ends");
    assert_eq!(code.code(), Some(0), "{}", waiter.output_report());
    assert_eq!(status(local(admin), "/startup"), 200);
    assert_eq!(status(local(admin), "/ready"), 200);
    assert_eq!(status(local(port), "/x"), 200);

    let out = legate_cmd(&["shutdown", "--admin", &admin_s]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let code = lg.wait_exit(Duration::from_secs(20)).expect("legate exits");
    assert_eq!(code.code(), Some(0), "{}", lg.output_report());

    // Nobody there: a clear message and exit 1.
    let out = legate_cmd(&["wait", "--admin", &admin_s, "--timeout", "300ms"]);
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr.contains("was not ready within 300ms"),
        "{}",
        out.describe()
    );
    let out = legate_cmd(&["wait", "--tcp", &format!("127.0.0.1:{}", up.port())]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
}

#[test]
fn quit_drains_a_request_in_flight_then_exits_zero() {
    let (up, arrived) = slow_upstream(Duration::from_millis(800));
    let (port, admin) = (free_port(), free_port());
    let mut lg = proc::legate_http(&format!("http://{up}"), port, admin, &[]);
    wait_ready(&mut lg, admin);
    // GET does not quit unless allowed.
    assert_eq!(status(local(admin), "/quitquitquit"), 405);
    let client =
        std::thread::spawn(move || http_get(local(port), "/slow", Duration::from_secs(20)));
    arrived
        .recv_timeout(Duration::from_secs(10))
        .expect("the request reached the upstream");
    let (code, body) = post(local(admin), "/quitquitquit");
    assert_eq!((code, body.as_str()), (200, "draining"));
    assert_eq!(status(local(admin), "/ready"), 503);
    assert_eq!(
        status(local(admin), "/startup"),
        200,
        "startup never goes back"
    );
    let resp = client
        .join()
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "slow\n");
    let exit = lg.wait_exit(Duration::from_secs(20)).expect("legate exits");
    assert_eq!(exit.code(), Some(0), "{}", lg.output_report());
}

#[test]
fn sigterm_min_delay_still_serves_and_exit_codes() {
    let (up, _) = slow_upstream(Duration::ZERO);
    let dir = TempDir::new("lifecycle");
    for (exit_zero, want) in [(false, 143), (true, 0)] {
        let (port, admin) = (free_port(), free_port());
        let cfg = dir.write(
            &format!("l{exit_zero}.yaml"),
            format!(
                r#"
admin: {{ listen: 127.0.0.1:{admin} }}
shutdown: {{ min_delay: 1500ms, exit_zero_on_sigterm: {exit_zero} }}
listeners:
  - name: app
    listen: 127.0.0.1:{port}
    routes: [{{ name: all, upstream: up }}]
upstreams:
  - {{ name: up, endpoints: ["{up}"] }}
"#
            ),
        );
        let mut lg = legate_spawn("legate run", &["run", "-c", cfg.to_str().unwrap()]);
        wait_ready(&mut lg, admin);
        lg.signal("TERM");
        wait_for("not ready after SIGTERM", Duration::from_secs(10), || {
            (status(local(admin), "/ready") == 503)
                .then_some(())
                .ok_or_else(|| "still ready".to_string())
        });
        // Not ready, but the app's own last calls still go through during min_delay.
        let r = http_get(local(port), "/last-call", Duration::from_secs(5))
            .expect("a new connection during min_delay is served");
        assert_eq!(r.status, 200);
        let exit = lg.wait_exit(Duration::from_secs(20)).expect("legate exits");
        assert_eq!(exit.code(), Some(want), "{}", lg.output_report());
    }
}

#[test]
fn exit_with_the_main_work_file_or_process() {
    let (up, _) = slow_upstream(Duration::ZERO);
    let dir = TempDir::new("jobs");
    let upstream = format!("http://{up}");
    let done = dir.path().join("done");
    let admin = free_port();
    let mut lg = http_legate(
        "legate exit-when-file",
        &upstream,
        admin,
        &["--exit-when-file", done.to_str().unwrap()],
    );
    wait_ready(&mut lg, admin);
    std::fs::write(&done, b"").unwrap();
    let exit = lg
        .wait_exit(Duration::from_secs(20))
        .expect("exits once the file appears");
    assert_eq!(exit.code(), Some(0), "{}", lg.output_report());

    // The Job's main process, found by name (a name of its own: a symlink to sleep).
    let name = format!("lgt-job-{}", std::process::id());
    let job_bin = dir.path().join(&name);
    std::os::unix::fs::symlink("/bin/sleep", &job_bin).unwrap();
    let mut job = Command::new(&job_bin).arg("60").spawn().unwrap();
    wait_for("the job visible", Duration::from_secs(10), || {
        legate::lifecycle::exit::find(&name)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let admin = free_port();
    let mut lg = http_legate(
        "legate exit-with-process",
        &upstream,
        admin,
        &["--exit-with-process", &name],
    );
    wait_ready(&mut lg, admin);
    job.kill().unwrap();
    job.wait().unwrap();
    let exit = lg
        .wait_exit(Duration::from_secs(20))
        .expect("exits with the job");
    assert_eq!(exit.code(), Some(0), "{}", lg.output_report());

    // A name that matches nothing: a clear error listing what legate saw, before binding.
    let out = legate_cmd(&[
        "http",
        "--upstream",
        &upstream,
        "--admin",
        "off",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--exit-with-process",
        "no-such-app-xyz",
    ]);
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr.contains("no process named `no-such-app-xyz`")
            && out.stderr.contains("legate sees:"),
        "{}",
        out.describe()
    );
}

/// A network namespace with a veth pair: the host side gets `10.213.<n>.1`, the namespace
/// `10.213.<n>.2`. Removed on drop.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
}

impl Netns {
    fn new() -> Netns {
        let n = std::process::id() % 250 + 1;
        let name = format!("lgt{}", std::process::id());
        let host_if = format!("lgth{}", std::process::id() % 100_000);
        let ns_if = format!("lgtn{}", std::process::id() % 100_000);
        let host_ip = format!("10.213.{n}.1");
        let ns_ip = format!("10.213.{n}.2");
        let run = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("run ip (iproute2)");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["netns", "add", &name]);
        let ns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: host_ip.clone(),
        };
        run(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        run(&["link", "set", &ns_if, "netns", &name]);
        run(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        run(&["link", "set", &host_if, "up"]);
        run(&[
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ]);
        run(&["netns", "exec", &name, "ip", "link", "set", &ns_if, "up"]);
        run(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        ns
    }

    /// curl from inside the namespace; the HTTP status.
    fn curl(&self, method: &str, url: &str) -> u16 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "curl", "-s", "-o", "/dev/null"])
            .args(["-w", "%{http_code}", "-X", method, "--max-time", "5", url])
            .output()
            .expect("run curl in the namespace");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn state_changing_admin_endpoints_refuse_other_hosts() {
    proc::require_tool("curl", "--version");
    let ns = Netns::new();
    let (up, _) = slow_upstream(Duration::ZERO);
    let admin = free_port();
    let admin_addr = format!("{}:{admin}", ns.host_ip);
    let mut lg = legate_spawn(
        "legate http",
        &[
            "http",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--upstream",
            &format!("http://{up}"),
            "--admin",
            &admin_addr,
        ],
    );
    let base = format!("http://{admin_addr}");
    wait_for("ready from the namespace", Duration::from_secs(20), || {
        lg.ensure_running();
        match ns.curl("GET", &format!("{base}/ready")) {
            200 => Ok(()),
            c => Err(format!("status {c}")),
        }
    });
    // The kubelet's probes work from another host; changing state and reading the config do not.
    assert_eq!(ns.curl("GET", &format!("{base}/startup")), 200);
    assert_eq!(ns.curl("GET", &format!("{base}/live")), 200);
    assert_eq!(ns.curl("POST", &format!("{base}/quitquitquit")), 403);
    assert_eq!(ns.curl("POST", &format!("{base}/quit")), 403);
    assert_eq!(ns.curl("POST", &format!("{base}/reload")), 403);
    assert_eq!(
        ns.curl("PUT", &format!("{base}/log-level?level=trace")),
        403
    );
    assert_eq!(ns.curl("GET", &format!("{base}/config")), 403);
    assert_eq!(
        ns.curl("GET", &format!("{base}/ready")),
        200,
        "still running"
    );
    assert!(lg.try_exit().is_none());
    assert!(lg
        .stdout_lines()
        .iter()
        .any(|l| l.contains("refused: state-changing admin endpoint")));
    lg.signal("TERM");
    let exit = lg.wait_exit(Duration::from_secs(20)).expect("exits");
    assert_eq!(exit.code(), Some(0));
}

#[test]
fn log_level_changes_at_runtime() {
    let (up, _) = slow_upstream(Duration::ZERO);
    let admin = free_port();
    let mut lg = http_legate("legate http", &format!("http://{up}"), admin, &[]);
    wait_ready(&mut lg, admin);
    let a = local(admin);
    let level = || {
        http_get(a, "/log-level", Duration::from_secs(2))
            .unwrap()
            .text()
    };
    assert_eq!(level().trim(), "info");
    let requested = |lg: &proc::Proc| {
        lg.stdout_lines()
            .iter()
            .filter(|l| l.contains("reload requested"))
            .count()
    };
    // At `error`, an info event (a reload request) is not written...
    assert_eq!(
        legate::lifecycle::probe::http(a, "PUT", "/log-level?level=error", Duration::from_secs(2))
            .unwrap()
            .0,
        200
    );
    assert_eq!(level().trim(), "error");
    post(a, "/reload");
    // ...a bad filter is refused and changes nothing...
    let (code, body) = legate::lifecycle::probe::http(
        a,
        "PUT",
        "/log-level?level=lots%20please",
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("not a log level"), "{body}");
    assert_eq!(level().trim(), "error");
    // ...and back at `info` it is.
    legate::lifecycle::probe::http(a, "PUT", "/log-level?level=info", Duration::from_secs(2))
        .unwrap();
    post(a, "/reload");
    wait_for("the info line", Duration::from_secs(5), || {
        (requested(&lg) == 1)
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    });
    assert!(
        lg.stdout_lines()
            .iter()
            .any(|l| l.contains("log level change requested")),
        "the change itself is logged"
    );
    lg.signal("TERM");
    assert_eq!(
        lg.wait_exit(Duration::from_secs(20)).and_then(|s| s.code()),
        Some(0)
    );
}
