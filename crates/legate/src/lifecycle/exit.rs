//! Ending with the main work, for Jobs on clusters without native sidecars: drain and exit when
//! a file appears (`shutdown.exit_when_file`), or when a process ends
//! (`shutdown.exit_with_process`, with `shareProcessNamespace: true`). The process is found by
//! PID or by name in /proc at start, never guessed (PID 1 is the pause container, not the app).

use super::State;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ExitError {
    #[error("shutdown.exit_with_process: no process named `{name}` is visible (legate sees: {seen}); in Kubernetes set `shareProcessNamespace: true` and start legate after the app, or give a PID")]
    NoProcess { name: String, seen: String },
    #[error("shutdown.exit_with_process: no process with PID {pid}")]
    NoPid { pid: u32 },
    #[error("shutdown.exit_with_process: `{0}` is neither a PID nor a process name")]
    Invalid(String),
}

/// One process to outlive: its PID and its start time, so a reused PID is not mistaken for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub pid: u32,
    pub name: String,
    start: u64,
}

fn proc_dir() -> &'static Path {
    Path::new("/proc")
}

/// The start time (field 22 of /proc/PID/stat), after the command name in parentheses.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_dir().join(pid.to_string()).join("stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(proc_dir().join(pid.to_string()).join("comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// The base name of argv[0] (comm is cut at 15 bytes).
fn argv0(pid: u32) -> Option<String> {
    let raw = std::fs::read(proc_dir().join(pid.to_string()).join("cmdline")).ok()?;
    let first = raw.split(|b| *b == 0).next()?;
    let s = String::from_utf8_lossy(first);
    Some(s.rsplit('/').next().unwrap_or(&s).to_string())
}

fn pids() -> Vec<u32> {
    std::fs::read_dir(proc_dir())
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Finds the processes `spec` names (a PID, or a name matched against comm and argv[0]).
pub fn find(spec: &str) -> Result<Vec<Watched>, ExitError> {
    let spec = spec.trim();
    if spec.is_empty() || spec.contains('/') {
        return Err(ExitError::Invalid(spec.to_string()));
    }
    if let Ok(pid) = spec.parse::<u32>() {
        let start = start_time(pid).ok_or(ExitError::NoPid { pid })?;
        return Ok(vec![Watched {
            pid,
            name: comm(pid).unwrap_or_default(),
            start,
        }]);
    }
    let me = std::process::id();
    let mut seen = std::collections::BTreeSet::new();
    let mut found = Vec::new();
    for pid in pids() {
        if pid == me {
            continue;
        }
        let c = comm(pid).unwrap_or_default();
        let a = argv0(pid).unwrap_or_default();
        if c == spec || a == spec {
            if let Some(start) = start_time(pid) {
                found.push(Watched {
                    pid,
                    name: spec.to_string(),
                    start,
                });
            }
        } else if !c.is_empty() {
            seen.insert(c);
        }
    }
    if found.is_empty() {
        let mut list: Vec<String> = seen.into_iter().take(40).collect();
        if list.is_empty() {
            list.push("nothing".into());
        }
        return Err(ExitError::NoProcess {
            name: spec.to_string(),
            seen: list.join(", "),
        });
    }
    Ok(found)
}

fn alive(w: &Watched) -> bool {
    start_time(w.pid) == Some(w.start)
}

/// Drains when every watched process has ended.
pub async fn with_processes(watched: Vec<Watched>, state: Arc<State>) {
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        if state.is_draining() {
            return;
        }
        if !watched.iter().any(alive) {
            let names: Vec<String> = watched
                .iter()
                .map(|w| format!("{} ({})", w.name, w.pid))
                .collect();
            tracing::info!(process = %names.join(", "), "the watched process ended: draining to exit");
            state.begin_shutdown("exit_with_process");
            return;
        }
    }
}

/// Drains once `path` exists.
pub async fn when_file(path: PathBuf, state: Arc<State>) {
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        if state.is_draining() {
            return;
        }
        if path.exists() {
            tracing::info!(file = %path.display(), "exit file appeared: draining to exit");
            state.begin_shutdown("exit_when_file");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_by_pid_and_name_and_lists_what_it_saw() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let by_pid = find(&child.id().to_string()).unwrap();
        assert_eq!(by_pid[0].pid, child.id());
        assert!(alive(&by_pid[0]));
        let by_name = find("sleep").unwrap();
        assert!(by_name.iter().any(|w| w.pid == child.id()));
        let err = find("no-such-process-xyz").unwrap_err().to_string();
        assert!(err.contains("legate sees:"), "{err}");
        assert!(matches!(find("/bin/x"), Err(ExitError::Invalid(_))));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!alive(&by_pid[0]));
    }
}
