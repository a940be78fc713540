//! The binary's runtime shape and the embedded demo: worker threads follow the CPUs the process
//! may use (affinity and cgroup CPU quota), never the node's core count; `legate demo` runs its
//! whole scenario and prints the summary.

#[path = "support/proc.rs"]
mod proc_support;

use proc_support::{free_port, legate_bin, run_with_deadline, wait_for, Proc};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Starts quick mode under `wrapper` (e.g. taskset) and returns the worker count it reports.
fn workers_reported(mut cmd: Command) -> u64 {
    let mut p = Proc::spawn("legate", &mut cmd).expect("spawn legate");
    let mut workers = 0;
    wait_for("the `listening` log line", Duration::from_secs(20), || {
        p.ensure_running();
        for line in p.stdout_lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["message"] == "listening" {
                    workers = v["workers"].as_u64().unwrap_or(0);
                    return Ok(());
                }
            }
        }
        Err("not yet".to_string())
    });
    workers
}

fn quick_args(cmd: &mut Command) {
    cmd.args([
        "http",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--upstream",
        "http://127.0.0.1:9",
        "--admin",
        "off",
    ]);
}

#[test]
fn workers_follow_cpu_affinity_and_the_flag() {
    let mut pinned = Command::new("taskset");
    pinned.args(["-c", "0", legate_bin()]);
    quick_args(&mut pinned);
    assert_eq!(workers_reported(pinned), 1, "pinned to one CPU: one worker");

    let mut flagged = Command::new(legate_bin());
    quick_args(&mut flagged);
    flagged.args(["--workers", "3"]);
    assert_eq!(workers_reported(flagged), 3);
}

/// A container limited to half a CPU gets one worker even on a bigger machine. Needs a writable
/// cgroup v1 `cpu` hierarchy (as on the CI machines); elsewhere it says so and checks nothing.
#[test]
fn workers_follow_the_cgroup_cpu_quota() {
    let root = Path::new("/sys/fs/cgroup/cpu");
    let group = root.join(format!("legate-test-{}", std::process::id()));
    if std::fs::create_dir(&group).is_err() {
        eprintln!("no writable cgroup v1 cpu controller here; quota not tested");
        return;
    }
    let guard = scopeguard(group.clone());
    std::fs::write(group.join("cpu.cfs_period_us"), "100000").unwrap();
    std::fs::write(group.join("cpu.cfs_quota_us"), "50000").unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
            group.display()
        ))
        .arg(legate_bin());
    quick_args(&mut cmd);
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    assert!(n >= 2, "this check needs a machine with 2+ CPUs");
    assert_eq!(
        workers_reported(cmd),
        1,
        "a 500m quota gives one worker, not {n}"
    );
    drop(guard);
}

struct CgroupGuard(std::path::PathBuf);

fn scopeguard(p: std::path::PathBuf) -> CgroupGuard {
    CgroupGuard(p)
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        // The child has exited (Proc's drop kills it) so the group is empty and can go.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn demo_runs_and_summarises() {
    let mut cmd = Command::new(legate_bin());
    cmd.args([
        "demo",
        "--duration",
        "1s",
        "--interval",
        "20ms",
        "--failure-rate",
        "0.5",
        "--no-resilience",
    ]);
    let out = run_with_deadline("legate demo", &mut cmd, Duration::from_secs(30));
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let text = out.describe();
    assert!(text.contains("Success! Status: 200 OK"), "{text}");
    assert!(
        text.contains("Error reaching ambassador"),
        "with 50% injected failures some calls fail: {text}"
    );
    for want in [
        "requests sent by the client",
        "client-seen success rate",
        "upstream-injected failures",
        "latency p50 / p99",
    ] {
        assert!(text.contains(want), "summary lacks `{want}`: {text}");
    }

    // With the policies the same faults are masked, and the summary says what did it.
    let mut resilient = Command::new(legate_bin());
    resilient.args([
        "demo",
        "--duration",
        "2s",
        "--interval",
        "20ms",
        "--failure-rate",
        "0.3",
        "--quiet",
    ]);
    let out = run_with_deadline("legate demo", &mut resilient, Duration::from_secs(30));
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let text = out.describe();
    for want in [
        "retries sent by legate",
        "outlier ejections",
        "circuit breaker trips",
    ] {
        assert!(text.contains(want), "summary lacks `{want}`: {text}");
    }
    let retries: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("retries sent by legate"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(retries > 0.0, "30% failures need retries: {text}");

    let mut clean = Command::new(legate_bin());
    clean.args([
        "demo",
        "--duration",
        "1s",
        "--interval",
        "20ms",
        "--failure-rate",
        "0",
        "--quiet",
    ]);
    let out = run_with_deadline("legate demo", &mut clean, Duration::from_secs(30));
    let text = out.describe();
    assert!(
        text.contains("client-seen success rate      100.0%"),
        "{text}"
    );
    assert!(
        !text.contains("Success! Status"),
        "--quiet prints only the summary: {text}"
    );
}
