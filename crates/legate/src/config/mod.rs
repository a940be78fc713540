//! Configuration: the YAML model, loading with `${ENV}` expansion, and validation that reports
//! every problem as `FILE:LINE:COL: path.to.field: message`.

pub mod duration;
pub mod endpoint;
pub mod env;
pub mod locate;
pub mod model;
pub mod quick;
pub mod resilience;
pub mod schema;
pub mod size;
pub mod telemetry;
pub mod tls;
pub mod validate;
pub mod validate_tls;

pub use duration::ConfigDuration;
pub use model::*;

use std::fmt;
use std::path::Path;

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

/// Reads, expands and validates a config file, including the certificate, key and
/// credential files it names.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    load_file_with(path, Files::Check)
}

/// Whether validation also reads the files a config names (certificates, keys, secrets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Files {
    Check,
    /// For a config whose files live elsewhere (a manifest checked in CI).
    Skip,
}

pub fn load_file_with(path: &Path, files: Files) -> Result<Config, ConfigError> {
    load_file_hashed(path, files).map(|(cfg, _)| cfg)
}

/// `sha256:<hex>` of a config's text: what `/config` and `legate_config_info` show, and what
/// `sha256sum` prints for the file.
pub fn hash_text(text: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in d.as_ref() {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// As `load_file_with`, with the hash of the bytes that were read (one read: the hash is of
/// exactly what was validated).
pub fn load_file_hashed(path: &Path, files: Files) -> Result<(Config, String), ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    let hash = hash_text(&text);
    let cfg = load_text(&file, &text, files)?;
    Ok((cfg, hash))
}

fn load_text(file: &str, text: &str, files: Files) -> Result<Config, ConfigError> {
    let file = file.to_string();
    let cfg = load_str(&file, text, |k| std::env::var(k).ok())?;
    if files == Files::Skip {
        return Ok(cfg);
    }
    let issues = validate_tls::files(&cfg);
    if issues.is_empty() {
        return Ok(cfg);
    }
    let expanded = env::expand(text, |k| std::env::var(k).ok()).unwrap_or_default();
    let locator = locate::Lazy::new(&expanded);
    let mut diags: Vec<Diagnostic> = issues
        .into_iter()
        .map(|i| {
            let pos = locator
                .find(&i.path)
                .unwrap_or(locate::Position { line: 1, col: 1 });
            Diagnostic {
                file: file.clone(),
                line: pos.line,
                col: pos.col,
                path: i.path,
                message: i.message,
            }
        })
        .collect();
    diags.sort_by_key(|d| (d.line, d.col));
    Err(ConfigError::Invalid(diags))
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
    if expanded.trim().is_empty() {
        return finish(
            file,
            Config::default(),
            Vec::new(),
            &[],
            &locate::Lazy::new(""),
        );
    }
    let locator = locate::Lazy::new(&expanded);
    let (cfg, diags, removed) = deserialize_all(file, &expanded, &locator);
    match cfg {
        Some(cfg) => finish(file, cfg, diags, &removed, &locator),
        None => Err(ConfigError::Invalid(diags)),
    }
}

/// Runs the cross-checks and returns the config, or every problem sorted by position.
fn finish(
    file: &str,
    cfg: Config,
    mut diags: Vec<Diagnostic>,
    removed: &[String],
    locator: &locate::Lazy<'_>,
) -> Result<Config, ConfigError> {
    for i in validate::validate(&cfg) {
        // A field we dropped to keep reading may make a cross-check fire spuriously.
        if removed
            .iter()
            .any(|r| i.path.starts_with(r.as_str()) || r.starts_with(i.path.as_str()))
        {
            continue;
        }
        let pos = locator
            .find(&i.path)
            .unwrap_or(locate::Position { line: 1, col: 1 });
        diags.push(Diagnostic {
            file: file.to_string(),
            line: pos.line,
            col: pos.col,
            path: i.path,
            message: i.message,
        });
    }
    if diags.is_empty() {
        return Ok(cfg);
    }
    diags.sort_by_key(|d| (d.line, d.col));
    diags.dedup();
    Err(ConfigError::Invalid(diags))
}

/// Deserialises, and when a field is unknown or malformed, drops it and reads on, so one run of
/// `legate check` reports every problem rather than the first. Returns the config if one could
/// be read after the drops, the problems found, and the paths that were dropped.
fn deserialize_all(
    file: &str,
    text: &str,
    locator: &locate::Lazy<'_>,
) -> (Option<Config>, Vec<Diagnostic>, Vec<String>) {
    let first = match serde_yaml_ng::from_str::<Config>(text) {
        Ok(cfg) => return (Some(cfg), Vec::new(), Vec::new()),
        Err(e) => serde_diagnostic(file, &e),
    };
    let Ok(mut value) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) else {
        // Not even YAML: the syntax error is all there is to say.
        return (None, vec![first], Vec::new());
    };
    let mut diags = vec![first];
    let mut removed = Vec::new();
    for _ in 0..100 {
        let Some(last) = diags.last_mut() else { break };
        // A value the field's own parser refused (an address, a duration) is reported by
        // serde_yaml_ng at the mapping holding the field (`listeners[0]`, `admin`): find the
        // field, so the message points at it and the rest of the file is still read.
        if is_mapping(&value, &last.path) && !last.message.starts_with("missing field") {
            if let Some(field) = culprit(&value, &last.path, &last.message) {
                let pos = locator
                    .find(&field)
                    .unwrap_or(locate::Position { line: 1, col: 1 });
                (last.line, last.col) = (pos.line, pos.col);
                last.path = field;
            }
        }
        let target = last.path.clone();
        let unknown = last.message.starts_with("unknown field");
        // A malformed value is replaced by a harmless one of the right shape (a required field
        // cannot just be dropped: the mapping around it would stop parsing); an unknown field
        // is dropped.
        let fixed = !unknown && substitute(&mut value, &target);
        if target.is_empty() || (!fixed && !remove_path(&mut value, &target)) {
            break;
        }
        removed.push(target);
        let Ok(again) = serde_yaml_ng::to_string(&value) else {
            break;
        };
        match serde_yaml_ng::from_str::<Config>(&again) {
            Ok(cfg) => return (Some(cfg), diags, removed),
            Err(e) => {
                let mut d = serde_diagnostic(file, &e);
                // Positions in the re-rendered text mean nothing to the user: use the path.
                let pos = locator
                    .find(&d.path)
                    .unwrap_or(locate::Position { line: 1, col: 1 });
                (d.line, d.col) = (pos.line, pos.col);
                // A required field we dropped ourselves: already reported.
                if d.message.starts_with("missing field")
                    && removed
                        .iter()
                        .any(|r| missing_field_path(&d).as_deref() == Some(r.as_str()))
                {
                    break;
                }
                diags.push(d);
            }
        }
    }
    (None, diags, removed)
}

fn missing_field_path(d: &Diagnostic) -> Option<String> {
    let field = d
        .message
        .strip_prefix("missing field `")?
        .split('`')
        .next()?;
    Some(if d.path.is_empty() {
        field.to_string()
    } else {
        format!("{}.{field}", d.path)
    })
}

/// Placeholders tried, in order, for a value its parser refused: one of them has the shape
/// of every field type (an address, a duration, a number, a name, a size, a flag).
const PLACEHOLDERS: [&str; 6] = ["127.0.0.1:1", "1s", "1", "x", "1KiB", "true"];

/// Replaces the value at `path` with the first placeholder that the config parser accepts
/// there; false if none does.
fn substitute(value: &mut serde_yaml_ng::Value, path: &str) -> bool {
    let Some(original) = get_path(value, path).cloned() else {
        return false;
    };
    if original.is_mapping() || original.is_sequence() {
        return false;
    }
    for p in PLACEHOLDERS {
        let candidate: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(p).unwrap_or_else(|_| serde_yaml_ng::Value::String(p.into()));
        if !set_path(value, path, candidate) {
            return false;
        }
        let accepted = match serde_yaml_ng::to_string(&*value)
            .ok()
            .map(|t| serde_yaml_ng::from_str::<Config>(&t))
        {
            Some(Ok(_)) => true,
            Some(Err(e)) => {
                let text = strip_positions(&e.to_string());
                !text.starts_with(&format!("{path}: "))
            }
            None => false,
        };
        if accepted {
            return true;
        }
    }
    set_path(value, path, original);
    false
}

/// Replaces the node at `path`; false if there is no such node.
fn set_path(value: &mut serde_yaml_ng::Value, path: &str, new: serde_yaml_ng::Value) -> bool {
    let mut node = value;
    for seg in path.split('.') {
        let (key, indices) = split_indices(seg);
        let next = if key.is_empty() {
            Some(node)
        } else {
            node.as_mapping_mut().and_then(|m| m.get_mut(key))
        };
        let Some(mut next) = next else {
            return false;
        };
        for i in indices {
            let Some(n) = next.as_sequence_mut().and_then(|s| s.get_mut(i)) else {
                return false;
            };
            next = n;
        }
        node = next;
    }
    *node = new;
    true
}

/// The node at `a.b[0].c` (the root for an empty path).
fn get_path<'v>(value: &'v serde_yaml_ng::Value, path: &str) -> Option<&'v serde_yaml_ng::Value> {
    let mut node = value;
    if path.is_empty() {
        return Some(node);
    }
    for seg in path.split('.') {
        let (key, indices) = split_indices(seg);
        node = node.as_mapping()?.get(key)?;
        for i in indices {
            node = node.as_sequence()?.get(i)?;
        }
    }
    Some(node)
}

fn is_mapping(value: &serde_yaml_ng::Value, path: &str) -> bool {
    get_path(value, path).is_some_and(|n| n.is_mapping())
}

/// Which field of the mapping at `path` makes parsing fail with `message`: the first whose
/// removal makes that message go away (without merely making the field missing).
fn culprit(value: &serde_yaml_ng::Value, path: &str, message: &str) -> Option<String> {
    let keys: Vec<String> = get_path(value, path)?
        .as_mapping()?
        .keys()
        .filter_map(|k| k.as_str().map(String::from))
        .collect();
    for key in keys {
        let field = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        let mut without = value.clone();
        if !remove_path(&mut without, &field) {
            continue;
        }
        let Ok(text) = serde_yaml_ng::to_string(&without) else {
            continue;
        };
        match serde_yaml_ng::from_str::<Config>(&text) {
            Ok(_) => return Some(field),
            Err(e) => {
                let again = strip_positions(&e.to_string());
                let missing_it = again.contains(&format!("missing field `{key}`"));
                if !again.contains(message) && !missing_it {
                    return Some(field);
                }
                // A required field: without it the mapping fails for another reason, so try
                // it with a well-formed value instead.
                if missing_it && well_formed_value_clears(value, &field, message) {
                    return Some(field);
                }
            }
        }
    }
    None
}

/// Whether some placeholder at `field` makes the error `message` go away.
fn well_formed_value_clears(value: &serde_yaml_ng::Value, field: &str, message: &str) -> bool {
    if get_path(value, field).is_none_or(|v| v.is_mapping() || v.is_sequence()) {
        return false;
    }
    PLACEHOLDERS.iter().any(|p| {
        let mut fixed = value.clone();
        let candidate: serde_yaml_ng::Value = serde_yaml_ng::from_str(p)
            .unwrap_or_else(|_| serde_yaml_ng::Value::String((*p).into()));
        set_path(&mut fixed, field, candidate)
            && match serde_yaml_ng::to_string(&fixed)
                .ok()
                .map(|t| serde_yaml_ng::from_str::<Config>(&t))
            {
                Some(Ok(_)) => true,
                Some(Err(e)) => !strip_positions(&e.to_string()).contains(message),
                None => false,
            }
    })
}

/// Removes the node at `a.b[0].c` (or the list item at `a.b[0]`) from a YAML value; false if
/// there is no such node. Other keys and items keep their order, so the next error found is the
/// next one in the file.
fn remove_path(value: &mut serde_yaml_ng::Value, path: &str) -> bool {
    enum Step<'p> {
        Key(&'p str),
        Index(usize),
    }
    let mut steps = Vec::new();
    for seg in path.split('.') {
        let (key, indices) = split_indices(seg);
        if !key.is_empty() {
            steps.push(Step::Key(key));
        }
        steps.extend(indices.into_iter().map(Step::Index));
    }
    let Some(last) = steps.pop() else {
        return false;
    };
    let mut node = value;
    for step in steps {
        let next = match step {
            Step::Key(k) => node.as_mapping_mut().and_then(|m| m.get_mut(k)),
            Step::Index(i) => node.as_sequence_mut().and_then(|s| s.get_mut(i)),
        };
        let Some(next) = next else {
            return false;
        };
        node = next;
    }
    match last {
        Step::Key(k) => node
            .as_mapping_mut()
            .and_then(|m| m.shift_remove(k))
            .is_some(),
        Step::Index(i) => match node.as_sequence_mut() {
            Some(seq) if i < seq.len() => {
                seq.remove(i);
                true
            }
            _ => false,
        },
    }
}

fn split_indices(seg: &str) -> (&str, Vec<usize>) {
    let key_end = seg.find('[').unwrap_or(seg.len());
    let indices = seg[key_end..]
        .split(['[', ']'])
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    (&seg[..key_end], indices)
}

/// serde_yaml_ng renders `path: message at line L column C`; split that into our format.
fn serde_diagnostic(file: &str, e: &serde_yaml_ng::Error) -> Diagnostic {
    let (line, col) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    let text = strip_positions(&e.to_string());
    let (mut path, message) = match text.split_once(": ") {
        Some((p, m)) if !p.contains(' ') && !p.is_empty() => (p.to_string(), m.to_string()),
        _ => (String::new(), text),
    };
    // serde names the mapping that holds an unknown field; name the field itself.
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split('`').next())
    {
        path = if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
    }
    Diagnostic {
        file: file.to_string(),
        line,
        col,
        path,
        message,
    }
}

/// Removes libyaml's inline ` at line L column C` (we print the position up front).
fn strip_positions(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " at line ".len()..];
        let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let n = digits(after);
        match after[n..].strip_prefix(" column ") {
            Some(col) if n > 0 => rest = &col[digits(col)..],
            _ => {
                out.push_str(" at line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Renders a config as YAML (for `--print-config` and `GET /config`).
/// Header names whose configured values are secrets: shown as `<redacted>` in `/config`.
pub fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) || [
        "token",
        "secret",
        "password",
        "api-key",
        "apikey",
        "auth",
        "session",
        "signature",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// The config with secret header values replaced by `<redacted>`. (Certificates, keys and
/// credentials are files; only their paths are in the config.)
pub fn redacted(cfg: &Config) -> Config {
    let mut cfg = cfg.clone();
    let hide = |rules: &mut HeaderRules| {
        for map in [&mut rules.set, &mut rules.add] {
            for (k, v) in map.iter_mut() {
                if is_secret_header(k) {
                    *v = "<redacted>".into();
                }
            }
        }
    };
    for l in &mut cfg.listeners {
        for r in &mut l.routes {
            hide(&mut r.request_headers);
            hide(&mut r.response_headers);
        }
    }
    // A collector's headers are API keys and tenant tokens more often than not: all hidden.
    if let Some(o) = &mut cfg.otlp {
        for v in o.headers.values_mut() {
            *v = "<redacted>".into();
        }
    }
    cfg
}

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
        assert!(
            lines[0].contains("listeners[0].routes[0].retries: unknown field `retries`"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("unknown field `retries`"), "{}", lines[0]);
    }

    /// As a new user hit it: one malformed address used to be the only error reported, at the
    /// list item instead of the field, hiding five other problems until it was fixed.
    #[test]
    fn a_malformed_value_does_not_hide_the_rest() {
        let yaml = "listeners:\n  - name: app\n    listen: 127.0.0.1:808O\n    routes:\n      - name: r\n        upstream: nope\n        timeout: 5x\nupstreams:\n  - name: api\n    endpoints: [localhost]\n    connect_timeout: -1s\nadmin:\n  listen: 127.0.0.1:99999\n";
        let err = load_str("c.yaml", yaml, |_| None).unwrap_err().lines();
        let want = [
            "c.yaml:3:13: listeners[0].listen: invalid listen address",
            "c.yaml:6:19: listeners[0].routes[0].upstream: no upstream named `nope`",
            "c.yaml:7:18: listeners[0].routes[0].timeout: invalid duration `5x`",
            "c.yaml:10:17: upstreams[0].endpoints[0]: endpoint `localhost` needs a port",
            "c.yaml:11:22: upstreams[0].connect_timeout: negative duration",
            "c.yaml:13:11: admin.listen: invalid listen address `127.0.0.1:99999`",
        ];
        assert_eq!(err.len(), want.len(), "{err:#?}");
        for (line, w) in err.iter().zip(want) {
            assert!(line.starts_with(w), "{line}\n  wanted: {w}");
        }
    }

    /// The issue's first report: alone in an otherwise valid file, a malformed required field
    /// was located at its list item (2:5), not at the field (3:13).
    #[test]
    fn a_lone_malformed_required_field_is_located_at_the_field() {
        let yaml = "listeners:\n  - name: app\n    listen: 127.0.0.1:808O\n    routes: [{ name: r, upstream: u }]\nupstreams:\n  - { name: u, url: http://127.0.0.1:1 }\n";
        let err = load_str("c.yaml", yaml, |_| None).unwrap_err().lines();
        assert_eq!(err.len(), 1, "{err:#?}");
        assert!(
            err[0].starts_with("c.yaml:3:13: listeners[0].listen: invalid listen address"),
            "{err:#?}"
        );
    }

    #[test]
    fn parse_errors_and_cross_checks_are_all_reported_in_order() {
        let src = GOOD
            .replace(
                "        timeout: 15s\n",
                "        timeout: 15s\n        retires: 3\n",
            )
            .replace("upstream: httpbin\n", "upstream: nope\n")
            .replace("connect_timeout: 2s", "connect_timeout: 2 seconds")
            .replace(
                "    dns_refresh: 30s",
                "    dns_refresh: 30s\n    colour: blue",
            );
        let err = load_str("all.yaml", &src, no_env).unwrap_err();
        let lines = err.lines();
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(
            lines[0].starts_with(
                "all.yaml:10:19: listeners[0].routes[0].upstream: no upstream named `nope`"
            ),
            "{lines:#?}"
        );
        assert!(lines[1].starts_with("all.yaml:12:"), "{lines:#?}");
        assert!(
            lines[1].contains("listeners[0].routes[0].retires: unknown field `retires`"),
            "{lines:#?}"
        );
        assert!(lines[2].starts_with("all.yaml:21:"), "{lines:#?}");
        assert!(
            lines[2].contains("upstreams[0].connect_timeout: invalid duration"),
            "{lines:#?}"
        );
        assert!(
            lines[3].contains("upstreams[0].colour: unknown field `colour`"),
            "{lines:#?}"
        );
    }

    #[test]
    fn a_broken_required_field_stops_without_spurious_errors() {
        let src = "listeners:\n  - name: app\n    listen: nowhere\n    routes: [{ name: r, upstream: u }]\nupstreams: [{ name: u, endpoints: [\"127.0.0.1:1\"] }]\n";
        let err = load_str("r.yaml", src, no_env).unwrap_err();
        let lines = err.lines();
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].contains("invalid listen address `nowhere`"),
            "{lines:#?}"
        );
    }

    #[test]
    fn invalid_policies_are_config_errors_with_lines() {
        let src = r#"
listeners:
  - name: app
    listen: 127.0.0.1:8080
    routes:
      - name: r
        upstream: api
        timeout: 1s
        retry: { attempts: 0, per_try_timeout: 2s, budget: { ratio: 1.5 } }
        rate_limit: { rate: 10/s, burst: 0 }
upstreams:
  - name: api
    endpoints: ["127.0.0.1:1"]
    circuit_breaker: { failure_ratio: 0, probes: 0 }
    outlier_detection: { max_ejected_percent: 150 }
    health_check: { interval: 1s, timeout: 2s }
"#;
        let text = load_str("p.yaml", src, no_env).unwrap_err().to_string();
        for want in [
            "p.yaml:9:28: listeners[0].routes[0].retry.attempts: must be at least 1",
            "listeners[0].routes[0].retry.per_try_timeout: 2s is longer than the route timeout 1s",
            "listeners[0].routes[0].retry.budget.ratio: 1.5 is outside 0..1",
            "p.yaml:10:42: listeners[0].routes[0].rate_limit.burst: must be at least 1",
            "upstreams[0].circuit_breaker.failure_ratio: 0 is outside (0, 1]",
            "upstreams[0].circuit_breaker.probes: must be at least 1",
            "upstreams[0].outlier_detection.max_ejected_percent: must be between 0 and 100",
            "upstreams[0].health_check: set `http: { path: /healthz }` or `tcp: {}`",
            "upstreams[0].health_check.timeout: must not exceed interval (1s)",
        ] {
            assert!(text.contains(want), "missing `{want}` in:\n{text}");
        }
        let bad_condition = src.replace("attempts: 0,", "attempts: 2, on: [sometimes],");
        let text = load_str("p.yaml", &bad_condition, no_env)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("unknown retry condition `sometimes`"),
            "{text}"
        );
    }

    #[test]
    fn bad_duration_is_located() {
        let src = GOOD.replace("connect_timeout: 2s", "connect_timeout: 2 seconds");
        let err = load_str("f.yaml", &src, no_env).unwrap_err();
        let line = &err.lines()[0];
        assert!(line.starts_with("f.yaml:20:"), "{line}");
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
            "e.yaml:5:30: environment variable `URL` is not set (write ${URL:-default} to give a default)"
        );
    }

    #[test]
    fn malformed_yaml_names_the_line() {
        let err = load_str(
            "m.yaml",
            "listeners:\n  - name: app\n    listen: \"127.0.0.1:80\n",
            no_env,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("m.yaml:4:1: "), "{text}");
        assert!(
            text.contains("while scanning a quoted scalar") && !text.contains("at line"),
            "{text}"
        );
    }

    #[test]
    fn port_only_listen_means_loopback() {
        let src = "listeners: [{ name: a, listen: 8080, routes: [{ name: r, upstream: u }] }]\nupstreams: [{ name: u, endpoints: [\"127.0.0.1:1\"] }]\n";
        let cfg = load_str("p.yaml", src, no_env).unwrap();
        assert_eq!(cfg.listeners[0].listen.to_string(), "127.0.0.1:8080");
    }
}
