//! Overload with the real binary: legate out of file descriptors. Accepting fails (EMFILE)
//! while connections hold every descriptor; legate must back off instead of spinning on the
//! always-readable listening socket, say so at a bounded rate, and serve again as soon as
//! descriptors come free.

#[path = "support/proc.rs"]
mod proc;

use proc::{free_port, http_get, legate_bin, local, wait_for, wait_ready, Proc};
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
        "ulimit -n 64 && exec {bin} http --listen 127.0.0.1:{port} --upstream http://{dead} \
         --admin 127.0.0.1:{admin} --access-log off --workers 1",
        bin = legate_bin()
    );
    let mut lg = Proc::spawn("legate (64 fds)", Command::new("sh").arg("-c").arg(&script))
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
    let held: Vec<TcpStream> = (0..100)
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
