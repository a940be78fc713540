//! The Grafana dashboard and the Prometheus alerting rules in `deploy/observability/` may only
//! name metrics legate really exports. A legate with every feature that owns a metric family
//! (HTTP routes with retry, rate limit, circuit breaker, outlier detection, health checks, and
//! a TCP tunnel) serves a little traffic; its admin `/metrics` is scraped, and every metric name
//! in the dashboard's queries and the rules' expressions must be a series name of that scrape.
//! The files' shape is checked too: unique panel ids, and every alert with `for`, a severity
//! and a summary.

mod common;

use common::*;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DASHBOARD: &str = "deploy/observability/grafana-dashboard.json";
const RULES: &str = "deploy/observability/prometheus-rules.yaml";

/// Metric-name prefixes legate exports: its own families and the standard process metrics.
const PREFIXES: [&str; 2] = ["legate_", "process_"];

/// Names from outside legate an expression may select: Prometheus's own scrape health series.
/// (PromQL functions such as `time()` are never selectors, so they need no entry.)
const EXTERNAL: [&str; 1] = ["up"];

/// Suffixes that make an unprefixed name look like a metric from some other exporter.
const METRIC_SUFFIXES: [&str; 7] = [
    "_total", "_bucket", "_sum", "_count", "_seconds", "_bytes", "_info",
];

fn repo_file(rel: &str) -> (PathBuf, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    (path, text)
}

// ---------------------------------------------------------------- what legate exports

/// Every series name a Prometheus scrape of this exposition text stores.
///
/// `prometheus-client` writes `# HELP`/`# TYPE` for every registered family even when it has no
/// series yet, with the family name (a counter `foo` has samples `foo_total`, a histogram `foo`
/// has `foo_bucket`, `foo_sum`, `foo_count`). So the names come from the `# TYPE` lines, expanded
/// by type into the sample names the family produces, plus every sample line actually present.
/// The bare family name of a counter or histogram is not a series, so it is not accepted.
fn exported_series_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(family), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" if family.ends_with("_total") => &[""],
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "gaugehistogram" => &["_bucket", "_gsum", "_gcount"],
                "summary" => &["", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            for s in suffixes {
                names.insert(format!("{family}{s}"));
            }
        } else if line.is_empty() || line.starts_with('#') {
            continue;
        } else {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

// ---------------------------------------------------------------- names in PromQL

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

/// Identifiers (`[a-zA-Z_:][a-zA-Z0-9_:]*`) in an expression, with the byte after each (past
/// spaces). Runs that start with a digit (`5m`, `1e-9`) are numbers or durations, not names.
fn identifiers(expr: &str) -> Vec<(&str, Option<u8>)> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !is_word_byte(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_word_byte(b[i]) {
            i += 1;
        }
        if !b[start].is_ascii_digit() {
            let next = b[i..].iter().copied().find(|c| !c.is_ascii_whitespace());
            out.push((&expr[start..i], next));
        }
    }
    out
}

/// Problems with the metric names of one expression.
fn check_expr(
    exported: &BTreeSet<String>,
    file: &str,
    context: &str,
    expr: &str,
    used: &mut BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (word, next) in identifiers(expr) {
        if PREFIXES.iter().any(|p| word.starts_with(p)) {
            used.insert(word.to_string());
            if !exported.contains(word) {
                problems.push(format!(
                    "{file}: {context}: metric `{word}` is not exported by legate\n    expr: {}",
                    one_line(expr)
                ));
            }
        } else if EXTERNAL.contains(&word) {
            continue;
        } else if matches!(next, Some(b'{') | Some(b'['))
            || METRIC_SUFFIXES.iter().any(|s| word.ends_with(s))
        {
            problems.push(format!(
                "{file}: {context}: `{word}` looks like a metric but is not one of legate's \
                 (prefixes {PREFIXES:?}) nor allowed ({EXTERNAL:?})\n    expr: {}",
                one_line(expr)
            ));
        }
    }
    problems
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------- the dashboard

/// Every panel, rows' nested panels included.
fn all_panels(list: &Json, out: &mut Vec<Json>) {
    for p in list.as_array().into_iter().flatten() {
        out.push(p.clone());
        all_panels(&p["panels"], out);
    }
}

fn panel_name(p: &Json) -> String {
    format!(
        "panel {:?} (id {})",
        p["title"].as_str().unwrap_or("<untitled>"),
        p["id"]
    )
}

/// Every query string anywhere in the dashboard: `expr` of panel targets and annotations,
/// `query`/`definition` of template variables (the `query` may be an object with `query`).
/// Each comes with where it was found: the panel, variable or annotation around it.
fn dashboard_queries(v: &Json, context: &str, out: &mut Vec<(String, String)>) {
    match v {
        Json::Object(map) => {
            let context = if map.contains_key("gridPos") || map.contains_key("targets") {
                panel_name(v)
            } else if let Some(name) = map.get("name").and_then(Json::as_str) {
                if map.contains_key("expr") {
                    format!("annotation {name:?}")
                } else {
                    format!("variable {name:?}")
                }
            } else {
                context.to_string()
            };
            for (k, child) in map {
                match (k.as_str(), child) {
                    ("expr" | "query" | "definition", Json::String(s)) => {
                        let where_ = match map.get("refId").and_then(Json::as_str) {
                            Some(r) if k == "expr" => format!("{context}, target {r}"),
                            _ => format!("{context}, {k}"),
                        };
                        out.push((where_, s.clone()));
                    }
                    _ => dashboard_queries(child, &context, out),
                }
            }
        }
        Json::Array(items) => {
            for item in items {
                dashboard_queries(item, context, out);
            }
        }
        _ => {}
    }
}

fn check_dashboard(exported: &BTreeSet<String>, used: &mut BTreeSet<String>) -> Vec<String> {
    let (path, text) = repo_file(DASHBOARD);
    let dash: Json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not valid JSON: {e}", path.display()));
    let mut problems = Vec::new();

    let inputs = dash["__inputs"].as_array().cloned().unwrap_or_default();
    if !inputs
        .iter()
        .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus")
    {
        problems.push(format!(
            "{DASHBOARD}: __inputs has no DS_PROMETHEUS prometheus data source"
        ));
    }

    let mut panels = Vec::new();
    all_panels(&dash["panels"], &mut panels);
    assert!(
        panels.len() > 20,
        "{DASHBOARD}: only {} panels found; is `panels` still the top-level list?",
        panels.len()
    );
    let mut ids: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for p in &panels {
        match p["id"].as_i64() {
            Some(id) => ids.entry(id).or_default().push(panel_name(p)),
            None => problems.push(format!("{DASHBOARD}: {} has no numeric id", panel_name(p))),
        }
        if p["type"] == "row" {
            continue;
        }
        let exprs: Vec<&str> = p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["expr"].as_str())
            .collect();
        if exprs.is_empty() {
            problems.push(format!("{DASHBOARD}: {} has no query", panel_name(p)));
        } else if !exprs.iter().any(|e| {
            identifiers(e)
                .iter()
                .any(|(w, _)| PREFIXES.iter().any(|p| w.starts_with(p)))
        }) {
            problems.push(format!(
                "{DASHBOARD}: {} queries no legate metric",
                panel_name(p)
            ));
        }
    }
    for (id, names) in &ids {
        if names.len() > 1 {
            problems.push(format!(
                "{DASHBOARD}: panel id {id} is used {} times: {}",
                names.len(),
                names.join(", ")
            ));
        }
    }

    let mut queries = Vec::new();
    dashboard_queries(&dash, "dashboard", &mut queries);
    for (context, q) in &queries {
        problems.extend(check_expr(exported, DASHBOARD, context, q, used));
    }
    problems
}

// ---------------------------------------------------------------- the rules

fn yaml_str(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn check_rules(exported: &BTreeSet<String>, used: &mut BTreeSet<String>) -> Vec<String> {
    let (path, text) = repo_file(RULES);
    let doc: Yaml = serde_yaml_ng::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()));
    let mut problems = Vec::new();
    let groups = doc["groups"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{RULES}: no `groups:` list"));
    let mut alerts = BTreeSet::new();
    let mut count = 0;
    for group in groups {
        let gname = group["name"].as_str().unwrap_or("<unnamed group>");
        let rules = group["rules"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{RULES}: group {gname:?} has no `rules:` list"));
        for rule in rules {
            count += 1;
            let (kind, name) = match (rule["alert"].as_str(), rule["record"].as_str()) {
                (Some(a), _) => ("alert", a),
                (None, Some(r)) => ("record", r),
                (None, None) => ("rule", "<no alert or record name>"),
            };
            let context = format!("group {gname:?}, {kind} {name:?}");
            match rule.get("expr").and_then(yaml_str) {
                Some(expr) => problems.extend(check_expr(exported, RULES, &context, &expr, used)),
                None => problems.push(format!("{RULES}: {context}: no `expr`")),
            }
            if kind != "alert" {
                continue;
            }
            if !alerts.insert(name.to_string()) {
                problems.push(format!("{RULES}: {context}: alert name used twice"));
            }
            if rule
                .get("for")
                .and_then(yaml_str)
                .is_none_or(|f| f.is_empty())
            {
                problems.push(format!("{RULES}: {context}: no `for`"));
            }
            let severity = rule["labels"]["severity"].as_str();
            if !matches!(severity, Some("critical" | "warning" | "info")) {
                problems.push(format!(
                    "{RULES}: {context}: labels.severity is {severity:?}, want critical, warning or info"
                ));
            }
            for key in ["summary", "description"] {
                if rule["annotations"][key]
                    .as_str()
                    .is_none_or(|s| s.trim().is_empty())
                {
                    problems.push(format!("{RULES}: {context}: no annotations.{key}"));
                }
            }
        }
    }
    assert!(count >= 10, "{RULES}: only {count} rules found");
    problems
}

// ---------------------------------------------------------------- the running legate

/// 200 everywhere, 503 under `/fail`: enough to produce answers of two classes and retries.
async fn app_upstream() -> Upstream {
    upstream(Proto::H1, |req: Request<Incoming>| async move {
        let status = if req.uri().path().starts_with("/fail") {
            503
        } else {
            200
        };
        Response::builder()
            .status(status)
            .body(full("ok\n"))
            .unwrap()
    })
    .await
}

/// A TCP upstream that echoes until the client closes.
async fn echo_tcp() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Scrapes a legate that has served HTTP and TCP traffic through every metric-owning feature.
async fn scrape_busy_legate() -> String {
    let api = app_upstream().await;
    let db = echo_tcp().await;
    let yaml = format!(
        r#"
admin: {{ listen: 127.0.0.1:0 }}
runtime: {{ workers: 1 }}
listeners:
  - name: app
    listen: 127.0.0.1:0
    routes:
      - name: limited
        match: {{ path_prefix: /limited }}
        upstream: api
        rate_limit: {{ rate: 1/s, burst: 1 }}
      - name: default
        match: {{ path_prefix: / }}
        upstream: api
        timeout: 10s
        retry: {{ attempts: 2, on: [gateway-error], backoff: {{ base: 1ms, max: 2ms }} }}
  - name: db
    listen: 127.0.0.1:0
    protocol: tcp
    upstream: tunnel
    max_connections: 16
upstreams:
  - name: api
    endpoints: ["{api}"]
    circuit_breaker: {{ min_requests: 50, failure_ratio: 0.9, window: 10s, open_for: 300ms, probes: 1 }}
    outlier_detection: {{ consecutive_failures: 50, base_ejection: 100ms, max_ejection: 1s }}
    health_check: {{ http: {{ path: /healthz }}, interval: 50ms, timeout: 40ms, healthy_threshold: 1 }}
  - name: tunnel
    endpoints: ["{db}"]
"#,
        api = api.addr
    );
    let legate = Legate::start(&yaml);
    let admin = legate.admin.expect("admin listener");

    assert_eq!(get(legate.addr, "/ok").await.status, 200);
    let mut c = Client::h1(legate.addr).await;
    for _ in 0..3 {
        c.get("/ok").await;
    }
    // The first /limited is admitted; the bucket (1/s, burst 1) refuses the next.
    let mut limited = Vec::new();
    for _ in 0..3 {
        limited.push(get(legate.addr, "/limited").await.status);
    }
    assert!(limited.contains(&429), "rate limit answers: {limited:?}");
    // A 503 is retried once, then passed on.
    assert_eq!(get(legate.addr, "/fail").await.status, 503);

    let tcp = legate
        .running
        .as_ref()
        .and_then(|r| r.listener_addr("db"))
        .expect("db listener");
    let mut s = TcpStream::connect(tcp).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    s.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"ping");
    drop(s);

    let scrape = || legate.metrics();
    wait_until_async("tunnel closed and counted", || {
        scrape().contains("legate_tcp_connections_total{")
    })
    .await;
    wait_until_async("a health check counted", || {
        scrape().contains("legate_health_checks_total{")
    })
    .await;

    // What Prometheus scrapes: the admin endpoint.
    let reply = get(admin, "/metrics").await;
    assert_eq!(reply.status, 200, "GET /metrics on the admin listener");
    String::from_utf8(reply.body.to_vec()).expect("metrics are UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_name_only_exported_metrics() {
    let text = scrape_busy_legate().await;
    let exported = exported_series_names(&text);
    // The parser saw both kinds of line: a family's TYPE-derived names and live samples.
    for name in [
        "legate_http_requests_total",
        "legate_http_request_duration_seconds_bucket",
        "legate_http_retries_total",
        "legate_tcp_bytes_total",
    ] {
        assert!(
            exported.contains(name),
            "{name} missing from the scrape:\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("legate_http_retries_total{") && l.contains("gateway-error")),
        "the retry left no sample:\n{text}"
    );

    let mut used = BTreeSet::new();
    let mut problems = check_dashboard(&exported, &mut used);
    problems.extend(check_rules(&exported, &mut used));

    let unused: Vec<&String> = exported
        .iter()
        .filter(|n| n.starts_with("legate_") && !used.contains(*n))
        .collect();
    if !unused.is_empty() {
        eprintln!("exported but used by neither the dashboard nor the rules: {unused:?}");
    }

    assert!(
        problems.is_empty(),
        "{} problem(s) in deploy/observability:\n  {}\n\nseries names legate exports:\n  {}",
        problems.len(),
        problems.join("\n  "),
        exported.iter().cloned().collect::<Vec<_>>().join("\n  ")
    );
}

#[test]
fn the_metric_name_checks_work() {
    let text = "# HELP legate_reqs Requests.\n# TYPE legate_reqs counter\n\
                legate_reqs_total{a=\"b\"} 1\n# TYPE legate_lat_seconds histogram\n\
                # TYPE legate_g gauge\n# TYPE legate_build info\n\
                process_open_fds 7\n# EOF\n";
    let exported = exported_series_names(text);
    let mut used = BTreeSet::new();
    let ok = "sum(rate(legate_reqs_total{x=~\"$x\"}[5m])) / legate_g + process_open_fds \
              + histogram_quantile(0.9, rate(legate_lat_seconds_bucket[$__rate_interval])) \
              + legate_lat_seconds_sum + legate_build_info + on() up{job=\"l\"} - time()";
    assert_eq!(
        check_expr(&exported, "f", "c", ok, &mut used),
        Vec::<String>::new()
    );
    for bad in [
        "legate_reqs",                 // a counter family is not a series
        "legate_lat_seconds",          // nor is a histogram family
        "legate_g_bucket",             // a gauge has no buckets
        "rate(legate_nope_total[5m])", // not exported at all
        "http_requests_total",         // another exporter's name
        "rate(requests[5m])",          // an unprefixed selector
        "process_max_fds",             // not in this exposition
    ] {
        assert_eq!(
            check_expr(&exported, "f", "c", bad, &mut used).len(),
            1,
            "{bad} should be one problem"
        );
    }
}
