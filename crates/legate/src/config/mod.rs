//! Configuration: the YAML model, loading with `${ENV}` expansion, and validation that reports
//! every problem as `FILE:LINE:COL: path.to.field: message`.

pub mod duration;
pub mod endpoint;
pub mod env;
pub mod locate;
pub mod model;
pub mod quick;
pub mod size;
pub mod validate;

pub use duration::ConfigDuration;
pub use model::*;

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.col)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read config file: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{source}")]
    Env { file: String, source: env::EnvError },
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Diagnostic>),
}

fn join_lines(d: &[Diagnostic]) -> String {
    d.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// Every problem, one per line, ready for the terminal.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(d) => d.iter().map(|d| d.to_string()).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// Reads, expands and validates a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    load_str(&file, &text, |k| std::env::var(k).ok())
}

/// Parses config text; `file` only names the source in messages.
pub fn load_str(
    file: &str,
    text: &str,
    env_lookup: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let expanded = env::expand(text, env_lookup).map_err(|source| ConfigError::Env {
        file: file.to_string(),
        source,
    })?;
    let cfg: Config = if expanded.trim().is_empty() {
        Config::default()
    } else {
        serde_yaml_ng::from_str(&expanded)
            .map_err(|e| ConfigError::Invalid(vec![serde_diagnostic(file, &e)]))?
    };
    let issues = validate::validate(&cfg);
    if issues.is_empty() {
        return Ok(cfg);
    }
    let locator = locate::Locator::new(&expanded);
    let diags = issues
        .into_iter()
        .map(|i| {
            let pos = locator
                .find(&i.path)
                .unwrap_or(locate::Position { line: 1, col: 1 });
            Diagnostic {
                file: file.to_string(),
                line: pos.line,
                col: pos.col,
                path: i.path,
                message: i.message,
            }
        })
        .collect();
    Err(ConfigError::Invalid(diags))
}

/// serde_yaml_ng renders `path: message at line L column C`; split that into our format.
fn serde_diagnostic(file: &str, e: &serde_yaml_ng::Error) -> Diagnostic {
    let (line, col) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    let mut text = e.to_string();
    if let Some(cut) = text.rfind(" at line ") {
        text.truncate(cut);
    }
    let (path, message) = match text.split_once(": ") {
        Some((p, m)) if !p.contains(' ') && !p.is_empty() => (p.to_string(), m.to_string()),
        _ => (String::new(), text),
    };
    Diagnostic {
        file: file.to_string(),
        line,
        col,
        path,
        message,
    }
}

/// Where the config came from, for messages and `/config`.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    Flags,
    Demo,
}

/// Renders a config as YAML (for `--print-config` and `GET /config`).
pub fn to_yaml(cfg: &Config) -> String {
    serde_yaml_ng::to_string(cfg).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const GOOD: &str = r#"
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
        host_rewrite: upstream
        request_headers:  { set: { X-Client-ID: microservice-001 }, add: {}, remove: [X-Debug] }
        response_headers: { set: {}, remove: [] }
upstreams:
  - name: httpbin
    endpoints: [ "httpbin.org:443" ]
    tls: {}
    protocol: auto
    connect_timeout: 2s
    pool: { max_idle_per_endpoint: 64, idle_timeout: 60s }
    dns_refresh: 30s
"#;

    #[test]
    fn the_documented_example_loads() {
        let cfg = load_str("legate.yaml", GOOD, no_env).unwrap();
        assert_eq!(cfg.listeners[0].routes[0].timeout.get().as_secs(), 15);
        assert!(cfg.upstreams[0].tls.is_some());
        // And what we print loads again.
        let again = load_str("printed.yaml", &to_yaml(&cfg), no_env).unwrap();
        assert_eq!(again.listeners[0].routes[0].request_headers.set.len(), 1);
    }

    #[test]
    fn unknown_field_names_line_and_path() {
        let src = GOOD.replace(
            "        timeout: 15s\n",
            "        timeout: 15s\n        retries: 3\n",
        );
        let err = load_str("f.yaml", &src, no_env).unwrap_err();
        let lines = err.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("f.yaml:12:"), "{}", lines[0]);
        assert!(lines[0].contains("listeners[0].routes[0]"), "{}", lines[0]);
        assert!(lines[0].contains("unknown field `retries`"), "{}", lines[0]);
    }

    #[test]
    fn bad_duration_is_located() {
        let src = GOOD.replace("connect_timeout: 2s", "connect_timeout: 2 seconds");
        let err = load_str("f.yaml", &src, no_env).unwrap_err();
        let line = &err.lines()[0];
        assert!(line.starts_with("f.yaml:21:"), "{line}");
        assert!(line.contains("upstreams[0].connect_timeout"), "{line}");
        assert!(line.contains("invalid duration"), "{line}");
    }

    #[test]
    fn every_cross_check_is_reported_with_its_line() {
        let src = r#"
listeners:
  - name: app
    listen: 127.0.0.1:8080
    routes:
      - name: a
        upstream: missing
        timeout: 0s
      - name: a
        upstream: api
  - name: app
    listen: 127.0.0.1:8080
    routes:
      - name: b
        upstream: api
upstreams:
  - name: api
    endpoints: ["api.internal"]
  - name: api
    url: ftp://x
"#;
        let err = load_str("c.yaml", src, no_env).unwrap_err();
        let text = err.to_string();
        for want in [
            "c.yaml:7:19: listeners[0].routes[0].upstream: no upstream named `missing`",
            "c.yaml:8:18: listeners[0].routes[0].timeout: must be greater than zero",
            "c.yaml:9:15: listeners[0].routes[1].name: duplicate route name `a`",
            "c.yaml:11:11: listeners[1].name: duplicate listener name `app`",
            "c.yaml:12:13: listeners[1].listen: address 127.0.0.1:8080 is also used by listeners[0].listen",
            "c.yaml:18:17: upstreams[0].endpoints[0]: endpoint `api.internal` needs a port",
            "c.yaml:19:11: upstreams[1].name: duplicate upstream name `api`",
            "c.yaml:20:10: upstreams[1].url: upstream URL `ftp://x` must start with http:// or https://",
        ] {
            assert!(text.contains(want), "missing `{want}` in:\n{text}");
        }
    }

    #[test]
    fn env_expansion_and_its_errors() {
        let src = "listeners:\n  - name: app\n    listen: ${PORT:-127.0.0.1:8080}\n    routes: [{ name: r, upstream: u }]\nupstreams: [{ name: u, url: \"${URL}\" }]\n";
        let cfg = load_str("e.yaml", src, |k| {
            (k == "URL").then(|| "http://127.0.0.1:9".to_string())
        })
        .unwrap();
        assert_eq!(cfg.listeners[0].listen.to_string(), "127.0.0.1:8080");
        let err = load_str("e.yaml", src, no_env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "e.yaml:5:31: environment variable `URL` is not set (write ${URL:-default} to give a default)"
        );
    }

    #[test]
    fn malformed_yaml_names_the_line() {
        let err = load_str(
            "m.yaml",
            "listeners:\n  - name: app\n   listen: [\n",
            no_env,
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("m.yaml:3:"), "{err}");
    }

    #[test]
    fn port_only_listen_means_loopback() {
        let src = "listeners: [{ name: a, listen: 8080, routes: [{ name: r, upstream: u }] }]\nupstreams: [{ name: u, endpoints: [\"127.0.0.1:1\"] }]\n";
        let cfg = load_str("p.yaml", src, no_env).unwrap();
        assert_eq!(cfg.listeners[0].listen.to_string(), "127.0.0.1:8080");
    }
}
