//! Event logs from the real binary: JSON lines with stable fields, and a dead upstream that
//! does not write a line per request (repeats are folded into the next line with a count).

#[path = "support/proc.rs"]
mod proc;

use proc::{free_port, http_get, local, wait_for, wait_ready};
use std::time::Duration;

#[test]
fn a_dead_upstream_is_logged_once_a_second_with_a_count() {
    let dead = local(free_port());
    let (port, admin) = (free_port(), free_port());
    let mut lg = proc::legate_http(
        &format!("http://{dead}"),
        port,
        admin,
        &["--access-log", "off"],
    );
    wait_ready(&mut lg, admin);
    let failures = |lg: &proc::Proc| -> Vec<serde_json::Value> {
        lg.stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "upstream request failed")
            .collect()
    };
    for _ in 0..50 {
        let r = http_get(local(port), "/", Duration::from_secs(5)).unwrap();
        assert_eq!(r.status, 502);
    }
    wait_for("the first line", Duration::from_secs(5), || {
        (!failures(&lg).is_empty())
            .then_some(())
            .ok_or_else(|| "none yet".to_string())
    });
    let first = failures(&lg);
    assert!(first.len() <= 2, "50 failures, {} lines", first.len());
    // Stable fields: level, message, and the event's own.
    let line = &first[0];
    for field in [
        "timestamp",
        "level",
        "message",
        "route",
        "upstream",
        "endpoint",
        "reason",
        "error",
        "folded",
    ] {
        assert!(line.get(field).is_some(), "`{field}` in {line}");
    }
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["reason"], "connect-refused");
    // Keep failing until the next line: it carries how many were folded into it.
    wait_for("a later line with a count", Duration::from_secs(10), || {
        let _ = http_get(local(port), "/", Duration::from_secs(5));
        let all = failures(&lg);
        let folded: u64 = all.iter().filter_map(|l| l["folded"].as_u64()).sum();
        (all.len() >= 2 && folded >= 48)
            .then_some(())
            .ok_or(format!("{} lines, {folded} folded", all.len()))
    });
    lg.signal("TERM");
    assert_eq!(
        lg.wait_exit(Duration::from_secs(20)).and_then(|s| s.code()),
        Some(0)
    );
}
