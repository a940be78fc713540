//! Event logs: one JSON object per line on stdout, level from `--log-level` or `RUST_LOG`,
//! changeable at runtime (`PUT /log-level` on admin) without a restart.
//!
//! Field names are stable: `timestamp`, `level`, `message` (tracing-subscriber's JSON), then
//! the event's own fields (`listener`, `route`, `upstream`, `endpoint`, `error`, `reason`,
//! `folded` for repeats folded into one line, ...).

use std::sync::{Mutex, OnceLock};
use tracing_subscriber::EnvFilter;

type Apply = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Swaps the installed filter; set once by `init`.
static RELOAD: OnceLock<Apply> = OnceLock::new();
static CURRENT: Mutex<String> = Mutex::new(String::new());

/// Installs the global JSON logger. Safe to call more than once (later calls do nothing).
/// `--log-level` must be a level or `target=level` directives (a typo is an error, not a
/// silent `info`); a `RUST_LOG` that is not falls back to `info`, and says so.
pub fn init(level: Option<&str>) -> Result<(), LevelError> {
    let invalid = |filter: &str, reason: String| LevelError::Invalid {
        filter: filter.to_string(),
        reason,
    };
    let mut fallback = None;
    let text = match level {
        Some(l) => {
            check_directives(l.trim()).map_err(|r| invalid(l, r))?;
            l.trim().to_string()
        }
        None => match std::env::var("RUST_LOG") {
            Ok(v) if check_directives(v.trim()).is_ok() => v.trim().to_string(),
            Ok(v) => {
                fallback = Some(v);
                "info".to_string()
            }
            Err(_) => "info".to_string(),
        },
    };
    let filter = EnvFilter::try_new(&text).map_err(|e| invalid(&text, e.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_filter_reloading();
    let handle = builder.reload_handle();
    if builder.try_init().is_ok() {
        let _ = RELOAD.set(Box::new(move |f| {
            handle.reload(f).map_err(|e| e.to_string())
        }));
        if let Ok(mut c) = CURRENT.lock() {
            *c = text;
        }
        if let Some(v) = fallback {
            tracing::warn!(rust_log = %v, "RUST_LOG is not a log level or filter; using info");
        }
    }
    Ok(())
}

/// The filter in force (`info`, `legate=debug,info`, ...); empty before `init`.
pub fn current() -> String {
    CURRENT.lock().map(|c| c.clone()).unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    #[error("`{filter}` is not a log level or filter ({reason}); try `debug`, `info`, `warn`, `error` or `legate=debug,info`")]
    Invalid { filter: String, reason: String },
    #[error("this process has no runtime-adjustable logger")]
    NotInstalled,
    #[error("cannot change the log level: {0}")]
    Reload(String),
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// EnvFilter takes a bare word as a target name, so `verbose` would silently mean "everything
/// from a target called verbose": each directive must be a level or `target=level`.
fn check_directives(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("empty".into());
    }
    for d in filter.split(',') {
        let level = d.rsplit_once('=').map_or(d, |(_, l)| l).trim();
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!("`{level}` is not one of {}", LEVELS.join(", ")));
        }
    }
    Ok(())
}

/// Replaces the filter; the old one stays if `filter` does not parse.
pub fn set(filter: &str) -> Result<(), LevelError> {
    let filter = filter.trim();
    check_directives(filter).map_err(|reason| LevelError::Invalid {
        filter: filter.to_string(),
        reason,
    })?;
    let parsed = EnvFilter::try_new(filter).map_err(|e| LevelError::Invalid {
        filter: filter.to_string(),
        reason: e.to_string(),
    })?;
    let apply = RELOAD.get().ok_or(LevelError::NotInstalled)?;
    apply(parsed).map_err(LevelError::Reload)?;
    if let Ok(mut c) = CURRENT.lock() {
        *c = filter.to_string();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn directives_are_levels() {
        for ok in [
            "debug",
            "INFO",
            "legate=debug,info",
            "legate::tcp=trace,warn",
            "off",
        ] {
            assert!(super::check_directives(ok).is_ok(), "{ok}");
        }
        for bad in ["", "verbose", "lots please", "legate=loud", "debug,"] {
            assert!(super::check_directives(bad).is_err(), "{bad}");
        }
    }
}
