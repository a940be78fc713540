//! Overload with the real binary:
//! - out of file descriptors: accepting fails (EMFILE) while connections hold every
//!   descriptor; legate must back off instead of spinning on the always-readable listening
//!   socket, say so at a bounded rate, and serve again as soon as descriptors come free;
//! - 10,000 client connections held open at once, each after one request, legate's own
//!   open-files limit raised from a low soft limit;
//! - a listener's `max_connections` reached: new connections refused at once, `/ready` 503,
//!   and both back once connections close.

#[path = "support/proc.rs"]
mod proc;

use proc::{
    free_port, http_get, legate_bin, local, ok_request, ok_upstream, rss_kib, wait_for, wait_ready,
    Proc,
};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// The process's user+system CPU time so far, in clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Accept failures logged so far: one per line plus those each line says it folded.
fn accept_failures(lg: &Proc) -> (usize, u64) {
    let lines: Vec<serde_json::Value> = lg
        .stdout_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "accept failed")
        .collect();
    let folded: u64 = lines.iter().filter_map(|v| v["folded"].as_u64()).sum();
    (lines.len(), lines.len() as u64 + folded)
}

#[test]
fn out_of_file_descriptors_backs_off_and_recovers() {
    // A dead upstream: every request that legate accepts is answered (502) without needing
    // anything else to be up; an answer is what shows that legate accepted.
    let dead = local(free_port());
    let (port, admin) = (free_port(), free_port());
    // Soft and hard limit both (dash's `ulimit` sets both): legate cannot raise it.
    let script = format!(
        "ulimit -n 256 && exec {bin} http --listen 127.0.0.1:{port} --upstream http://{dead} \
         --admin 127.0.0.1:{admin} --access-log off --workers 1",
        bin = legate_bin()
    );
    let mut lg = Proc::spawn(
        "legate (256 fds)",
        Command::new("sh").arg("-c").arg(&script),
    )
    .expect("spawn sh");
    wait_ready(&mut lg, admin);
    let answered = |timeout| {
        http_get(local(port), "/", timeout)
            .map(|r| r.status)
            .map_err(|e| e.to_string())
    };
    assert_eq!(answered(Duration::from_secs(5)), Ok(502));

    // Connections that send nothing: each one accepted takes a descriptor (its HTTP/2 sniff
    // waits up to header_read_timeout), until there are none left; the rest wait in the
    // listen queue.
    let held: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(local(port)).expect("connect (the kernel queues it)"))
        .collect();
    wait_for(
        "an accept failure in the log",
        Duration::from_secs(10),
        || {
            let (lines, _) = accept_failures(&lg);
            (lines > 0).then_some(()).ok_or("none yet".to_string())
        },
    );
    let (pid, t0, ticks0) = (lg.pid(), Instant::now(), cpu_ticks(lg.pid()));
    std::thread::sleep(Duration::from_secs(3));
    let (elapsed, ticks) = (t0.elapsed(), cpu_ticks(pid) - ticks0);
    let (lines, failures) = accept_failures(&lg);
    let hz = 100.0; // USER_HZ on Linux
    eprintln!(
        "saturated for {elapsed:?}: {lines} log lines for {failures} failed accepts; \
         legate used {:.1}% of a core",
        ticks as f64 / hz / elapsed.as_secs_f64() * 100.0
    );
    // Backing off 50 ms between tries is 20 accepts a second; a loop spinning on the readable
    // listening socket makes hundreds of thousands. The bound is a rate, with room for a
    // slow machine; the log is bounded to about one line a second.
    let seconds = (elapsed.as_secs_f64() + 4.0).ceil() as u64; // + the time to the first line
    assert!(
        failures <= 100 * seconds,
        "{failures} failed accepts in about {seconds} s: a busy loop?"
    );
    assert!(
        lines as u64 <= seconds + 1,
        "{lines} log lines in about {seconds} s"
    );
    // Descriptors free up: legate serves again, without a restart.
    drop(held);
    let status = wait_for("a request served again", Duration::from_secs(15), || {
        answered(Duration::from_secs(2))
    });
    assert_eq!(
        status, 502,
        "answered by legate (the upstream is down on purpose)"
    );
    lg.signal("TERM");
    let code = lg.wait_exit(Duration::from_secs(20)).and_then(|s| s.code());
    assert_eq!(code, Some(0), "{}", lg.output_report());
}

#[test]
fn ten_thousand_connections_are_held_with_a_raised_open_files_limit() {
    const HELD: usize = 10_000;
    // This test's own descriptors: its 10,000 client sockets.
    proc::raise_nofile(HELD as u64 + 1000, "10,000 client connections");
    let up = ok_upstream(Duration::ZERO);
    let (port, admin) = (free_port(), free_port());
    // A soft limit of 1024, as many runtimes start with; the hard limit stays: legate raises
    // its soft limit to it.
    let script = format!(
        "ulimit -Sn 1024 && exec {bin} http --listen 127.0.0.1:{port} --upstream http://{up} \
         --admin 127.0.0.1:{admin} --access-log off",
        bin = legate_bin()
    );
    let mut lg = Proc::spawn(
        "legate (soft limit 1024)",
        Command::new("sh").arg("-c").arg(&script),
    )
    .expect("spawn sh");
    wait_ready(&mut lg, admin);
    assert!(
        lg.stdout_lines().iter().any(|l| l
            .contains("raised the open-files limit to its hard limit")
            && l.contains("\"from\":1024")),
        "legate says it raised its limit: {}",
        lg.output_report()
    );
    let before = rss_kib(lg.pid());
    let mut held = Vec::with_capacity(HELD);
    for i in 0..HELD {
        let mut c =
            TcpStream::connect(local(port)).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        assert_eq!(
            ok_request(&mut c).unwrap_or_else(|e| panic!("request {i}: {e}")),
            200
        );
        held.push(c);
    }
    let after = rss_kib(lg.pid());
    let fds = std::fs::read_dir(format!("/proc/{}/fd", lg.pid()))
        .map(|d| d.count())
        .unwrap_or(0);
    // Every held connection still works, and a new one is served.
    for c in held.iter_mut().step_by(997) {
        assert_eq!(ok_request(c).expect("a held connection answers"), 200);
    }
    assert_eq!(
        http_get(local(port), "/", Duration::from_secs(10))
            .map(|r| r.status)
            .ok(),
        Some(200)
    );
    eprintln!(
        "{HELD} idle connections held: RSS {before} KiB before, {after} KiB after \
         ({:.0} B per connection), {fds} descriptors open",
        (after.saturating_sub(before) * 1024) as f64 / HELD as f64
    );
    assert!(fds > HELD, "{fds} descriptors for {HELD} connections");
    drop(held);
    lg.signal("TERM");
    let code = lg.wait_exit(Duration::from_secs(30)).and_then(|s| s.code());
    assert_eq!(code, Some(0), "{}", lg.output_report());
}

#[test]
fn a_listener_at_max_connections_refuses_new_ones_and_is_not_ready() {
    let up = ok_upstream(Duration::ZERO);
    let (port, admin) = (free_port(), free_port());
    let dir = proc::TempDir::new("overload-max-conns");
    let cfg = dir.write(
        "legate.yaml",
        format!(
            "admin: {{ listen: 127.0.0.1:{admin} }}\naccess_log: off\n\
             listeners:\n  - name: app\n    listen: 127.0.0.1:{port}\n    max_connections: 50\n\
             \x20   routes: [{{ name: r, upstream: up }}]\n\
             upstreams:\n  - name: up\n    endpoints: [\"{up}\"]\n"
        ),
    );
    let mut lg = proc::legate_spawn("legate", &["run", "-c", cfg.to_str().unwrap()]);
    wait_ready(&mut lg, admin);
    let ready = || {
        http_get(local(admin), "/ready", Duration::from_secs(5))
            .map(|r| r.status)
            .ok()
    };
    let mut held: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut c = TcpStream::connect(local(port)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            assert_eq!(ok_request(&mut c).unwrap(), 200);
            c
        })
        .collect();
    assert_eq!(
        ready(),
        Some(503),
        "a listener at max_connections is not ready"
    );
    // Over the limit: closed at once, not queued, not answered.
    let mut over = TcpStream::connect(local(port)).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(
        ok_request(&mut over).is_err(),
        "the 51st connection is refused"
    );
    let metrics = http_get(local(admin), "/metrics", Duration::from_secs(5)).unwrap();
    let refused = proc::metric_sum(
        &proc::parse_metrics(&String::from_utf8_lossy(&metrics.body)),
        "legate_listener_connections_refused_total",
    );
    assert!(refused >= Some(1.0), "{refused:?}");
    // The held ones still work; once some close, new ones are taken and /ready recovers.
    assert_eq!(ok_request(&mut held[0]).unwrap(), 200);
    held.truncate(40);
    wait_for("ready again", Duration::from_secs(10), || {
        (ready() == Some(200))
            .then_some(())
            .ok_or("not yet".to_string())
    });
    let mut again = TcpStream::connect(local(port)).unwrap();
    again
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(ok_request(&mut again).unwrap(), 200);
}
