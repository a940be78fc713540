//! Cross-field checks that serde cannot express. Every problem is collected, not just the first.

use super::endpoint::{EndpointSpec, UpstreamUrl};
use super::model::{
    AdminListen, Config, HeaderRules, HostRewrite, ListenOn, ListenerConfig, ListenerProtocol,
    TlsMode,
};
use http::{HeaderName, HeaderValue, Method};
use std::collections::HashMap;
use std::time::Duration;

/// One problem, addressed by its config path (`listeners[0].routes[1].upstream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

struct Issues(Vec<Issue>);

impl Issues {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue {
            path: path.into(),
            message: message.into(),
        });
    }
    fn positive(&mut self, path: impl Into<String>, d: Duration) {
        if d.is_zero() {
            self.add(path, "must be greater than zero");
        }
    }
}

fn check_name(issues: &mut Issues, path: String, name: &str) {
    if name.is_empty() {
        issues.add(path, "must not be empty");
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        issues.add(
            path,
            format!("`{name}` may only use letters, digits, '-', '_' and '.'"),
        );
    }
}

fn check_header_rules(issues: &mut Issues, path: &str, rules: &HeaderRules) {
    for (kind, map) in [("set", &rules.set), ("add", &rules.add)] {
        for (name, value) in map {
            let p = format!("{path}.{kind}.{name}");
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                issues.add(p.clone(), format!("`{name}` is not a valid header name"));
            }
            if HeaderValue::from_str(value).is_err() {
                issues.add(
                    p,
                    "header value contains characters not allowed in HTTP headers",
                );
            }
        }
    }
    for name in rules.set_from_file.keys() {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            issues.add(
                format!("{path}.set_from_file.{name}"),
                format!("`{name}` is not a valid header name"),
            );
        }
    }
    for (i, name) in rules.remove.iter().enumerate() {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            issues.add(
                format!("{path}.remove[{i}]"),
                format!("`{name}` is not a valid header name"),
            );
        }
    }
}

fn check_tracing(issues: &mut Issues, base: &str, t: &super::model::TracingConfig) {
    if t.propagate.is_empty() {
        issues.add(
            format!("{base}.propagate"),
            "name at least one format (w3c, b3, b3-single, jaeger), or remove `tracing:`",
        );
    }
    if !(0.0..=1.0).contains(&t.sample_rate) {
        issues.add(
            format!("{base}.sample_rate"),
            format!("{} is not a share between 0.0 and 1.0", t.sample_rate),
        );
    }
}

fn check_otlp(issues: &mut Issues, o: &super::model::OtlpConfig) {
    match crate::upstream::oneshot::Url::parse(
        "otlp.endpoint",
        &o.endpoint,
        "use headers_from_files",
    ) {
        Err(e) => issues.add("otlp.endpoint", e),
        Ok(u) if !u.tls && o.tls.is_some() => issues.add(
            "otlp.tls",
            "the endpoint is http://: write https:// to use these TLS settings",
        ),
        Ok(_) => {}
    }
    issues.positive("otlp.timeout", o.timeout.get());
    issues.positive("otlp.flush_interval", o.flush_interval.get());
    if o.batch_size == 0 {
        issues.add("otlp.batch_size", "must be at least 1");
    }
    if o.queue_size == 0 {
        issues.add("otlp.queue_size", "must be at least 1");
    }
    for (k, v) in &o.headers {
        if HeaderName::try_from(k.as_str()).is_err() || HeaderValue::try_from(v.as_str()).is_err() {
            issues.add(
                format!("otlp.headers.{k}"),
                "not a valid header name and value",
            );
        }
    }
    for k in o.headers_from_files.keys() {
        if HeaderName::try_from(k.as_str()).is_err() {
            issues.add(
                format!("otlp.headers_from_files.{k}"),
                "not a valid header name",
            );
        }
    }
}

fn check_route_policies(issues: &mut Issues, rb: &str, r: &super::model::RouteConfig) {
    if let Some(t) = &r.tracing {
        check_tracing(issues, &format!("{rb}.tracing"), t);
    }
    if let Some(retry) = &r.retry {
        let p = format!("{rb}.retry");
        if retry.attempts == 0 {
            issues.add(
                format!("{p}.attempts"),
                "must be at least 1 (1 means no retries); remove `retry` to turn retries off",
            );
        } else if retry.attempts > 10 {
            issues.add(
                format!("{p}.attempts"),
                "at most 10: more tries only hide an outage longer",
            );
        }
        if retry.on.is_empty() {
            issues.add(
                format!("{p}.on"),
                "name at least one condition, e.g. [connect-failure, gateway-error]",
            );
        }
        if let Some(t) = retry.per_try_timeout {
            if t.get().is_zero() {
                issues.add(format!("{p}.per_try_timeout"), "must be greater than zero");
            } else if t.get() > r.timeout.get() {
                issues.add(
                    format!("{p}.per_try_timeout"),
                    format!(
                        "{t} is longer than the route timeout {}: no second try could ever start",
                        r.timeout
                    ),
                );
            }
        }
        issues.positive(format!("{p}.backoff.base"), retry.backoff.base.get());
        if retry.backoff.max < retry.backoff.base {
            issues.add(
                format!("{p}.backoff.max"),
                format!("must be at least backoff.base ({})", retry.backoff.base),
            );
        }
        if !(0.0..=1.0).contains(&retry.budget.ratio) {
            issues.add(
                format!("{p}.budget.ratio"),
                format!(
                    "{} is outside 0..1 (0.2 allows retries for 20% of requests)",
                    retry.budget.ratio
                ),
            );
        }
        if retry.max_replay_body.0 > 16 * 1024 * 1024 {
            issues.add(
                format!("{p}.max_replay_body"),
                "at most 16MiB: each retried request holds this much memory",
            );
        }
    }
    if let Some(rl) = &r.rate_limit {
        if rl.burst == Some(0) {
            issues.add(format!("{rb}.rate_limit.burst"), "must be at least 1");
        }
    }
}

fn check_upstream_policies(issues: &mut Issues, base: &str, u: &super::model::UpstreamConfig) {
    if let Some(cb) = &u.circuit_breaker {
        let p = format!("{base}.circuit_breaker");
        for (name, v) in [
            ("max_connections", cb.max_connections),
            ("max_pending_requests", cb.max_pending_requests),
            ("max_requests", cb.max_requests),
            ("min_requests", cb.min_requests),
            ("probes", cb.probes),
        ] {
            if v == 0 {
                issues.add(format!("{p}.{name}"), "must be at least 1");
            }
        }
        if !(cb.failure_ratio > 0.0 && cb.failure_ratio <= 1.0) {
            issues.add(
                format!("{p}.failure_ratio"),
                format!("{} is outside (0, 1]", cb.failure_ratio),
            );
        }
        issues.positive(format!("{p}.window"), cb.window.get());
        issues.positive(format!("{p}.open_for"), cb.open_for.get());
        if cb.max_open_for < cb.open_for {
            issues.add(
                format!("{p}.max_open_for"),
                format!("must be at least open_for ({})", cb.open_for),
            );
        }
    }
    let od = &u.outlier_detection;
    if od.enabled {
        let p = format!("{base}.outlier_detection");
        if od.consecutive_failures == 0 {
            issues.add(
                format!("{p}.consecutive_failures"),
                "must be at least 1 (or set enabled: false)",
            );
        }
        if od.consecutive_connect_failures == 0 {
            issues.add(
                format!("{p}.consecutive_connect_failures"),
                "must be at least 1",
            );
        }
        issues.positive(format!("{p}.base_ejection"), od.base_ejection.get());
        if od.max_ejection < od.base_ejection {
            issues.add(
                format!("{p}.max_ejection"),
                format!("must be at least base_ejection ({})", od.base_ejection),
            );
        }
        if od.max_ejected_percent > 100 {
            issues.add(
                format!("{p}.max_ejected_percent"),
                "must be between 0 and 100",
            );
        }
    }
    if let Some(hc) = &u.health_check {
        let p = format!("{base}.health_check");
        match (&hc.http, &hc.tcp) {
            (Some(_), Some(_)) => issues.add(p.clone(), "set either `http` or `tcp`, not both"),
            (None, None) => issues.add(p.clone(), "set `http: { path: /healthz }` or `tcp: {}`"),
            (Some(h), None) if !h.path.starts_with('/') => issues.add(
                format!("{p}.http.path"),
                format!("`{}` must start with '/'", h.path),
            ),
            _ => {}
        }
        issues.positive(format!("{p}.interval"), hc.interval.get());
        issues.positive(format!("{p}.timeout"), hc.timeout.get());
        if hc.timeout > hc.interval {
            issues.add(
                format!("{p}.timeout"),
                format!("must not exceed interval ({})", hc.interval),
            );
        }
        if hc.healthy_threshold == 0 {
            issues.add(format!("{p}.healthy_threshold"), "must be at least 1");
        }
        if hc.unhealthy_threshold == 0 {
            issues.add(format!("{p}.unhealthy_threshold"), "must be at least 1");
        }
    }
}

pub fn validate(cfg: &Config) -> Vec<Issue> {
    let mut issues = Issues(Vec::new());

    if cfg.runtime.workers == Some(0) {
        issues.add(
            "runtime.workers",
            "must be at least 1 (leave it unset to follow the CPU limit)",
        );
    }
    issues.positive("shutdown.drain_timeout", cfg.shutdown.drain_timeout.get());
    issues.positive("files.watch_interval", cfg.files.watch_interval.get());
    if let Some(o) = &cfg.otlp {
        check_otlp(&mut issues, o);
    }

    let mut upstream_names: HashMap<&str, usize> = HashMap::new();
    for (i, u) in cfg.upstreams.iter().enumerate() {
        let base = format!("upstreams[{i}]");
        check_name(&mut issues, format!("{base}.name"), &u.name);
        if let Some(first) = upstream_names.insert(&u.name, i) {
            issues.add(
                format!("{base}.name"),
                format!(
                    "duplicate upstream name `{}` (also upstreams[{first}])",
                    u.name
                ),
            );
        }
        match (&u.url, u.endpoints.is_empty()) {
            (Some(_), false) => issues.add(
                format!("{base}.url"),
                "set either `url` or `endpoints`, not both",
            ),
            (None, true) => issues.add(
                format!("{base}.endpoints"),
                "an upstream needs `endpoints: [host:port, ...]` or `url: http(s)://host`",
            ),
            (Some(url), true) => {
                if let Err(e) = UpstreamUrl::parse(url) {
                    issues.add(format!("{base}.url"), e);
                }
            }
            (None, false) => {
                for (j, ep) in u.endpoints.iter().enumerate() {
                    if let Err(e) = EndpointSpec::parse(&ep.address) {
                        issues.add(format!("{base}.endpoints[{j}]"), e);
                    }
                    if ep.weight == 0 {
                        issues.add(
                            format!("{base}.endpoints[{j}].weight"),
                            "must be at least 1",
                        );
                    }
                }
            }
        }
        issues.positive(format!("{base}.connect_timeout"), u.connect_timeout.get());
        issues.positive(
            format!("{base}.pool.idle_timeout"),
            u.pool.idle_timeout.get(),
        );
        issues.positive(format!("{base}.dns_refresh"), u.dns_refresh.get());
        check_upstream_policies(&mut issues, &base, u);
        if let Some(name) = u.tls.as_ref().and_then(|t| t.server_name.as_ref()) {
            if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                issues.add(
                    format!("{base}.tls.server_name"),
                    format!("`{name}` is not a valid DNS name or IP"),
                );
            }
        }
        if let Some(t) = &u.tls {
            super::validate_tls::upstream_tls(&mut issues.0, &format!("{base}.tls"), t);
        }
        if let Some(auth) = &u.auth {
            if auth.basic.is_some() && auth.oauth2.is_some() {
                issues.add(
                    format!("{base}.auth"),
                    "choose one of `basic` and `oauth2`: both set Authorization",
                );
            }
            if let Some(o) = &auth.oauth2 {
                if let Err(e) = crate::auth::oauth2::parse_token_url(&o.token_url) {
                    issues.add(format!("{base}.auth.oauth2.token_url"), e);
                }
                issues.positive(format!("{base}.auth.oauth2.timeout"), o.timeout.get());
            }
        }
    }

    if cfg.listeners.is_empty() {
        issues.add(
            "listeners",
            "no listeners: add at least one under `listeners:`",
        );
    }
    let mut listener_names: HashMap<&str, usize> = HashMap::new();
    let mut addrs = HashMap::new();
    let mut unix_paths = HashMap::new();
    // Which upstreams carry HTTP and which carry TCP tunnels: one upstream cannot do both
    // (its TLS ALPN, its credentials and its health checks differ).
    let mut http_upstreams: HashMap<&str, String> = HashMap::new();
    let mut tcp_upstreams: HashMap<&str, String> = HashMap::new();
    if let AdminListen::Addr(a) = cfg.admin.listen {
        addrs.insert(a.0, "admin.listen".to_string());
    }
    for (i, l) in cfg.listeners.iter().enumerate() {
        let base = format!("listeners[{i}]");
        check_name(&mut issues, format!("{base}.name"), &l.name);
        if let Some(first) = listener_names.insert(&l.name, i) {
            issues.add(
                format!("{base}.name"),
                format!(
                    "duplicate listener name `{}` (also listeners[{first}])",
                    l.name
                ),
            );
        }
        match &l.listen {
            ListenOn::Tcp(a) if a.0.port() != 0 => {
                if let Some(other) = addrs.insert(a.0, format!("{base}.listen")) {
                    issues.add(
                        format!("{base}.listen"),
                        format!("address {} is also used by {other}", l.listen),
                    );
                }
            }
            ListenOn::Tcp(_) => {}
            ListenOn::Unix(p) => {
                if let Some(other) = unix_paths.insert(p.clone(), format!("{base}.listen")) {
                    issues.add(
                        format!("{base}.listen"),
                        format!("socket {} is also used by {other}", p.display()),
                    );
                }
            }
        }
        if l.max_connections == Some(0) {
            issues.add(
                format!("{base}.max_connections"),
                "must be at least 1 (remove it for no limit)",
            );
        }
        if l.socket_mode.is_some() && !matches!(l.listen, ListenOn::Unix(_)) {
            issues.add(format!("{base}.socket_mode"), "only for `unix:` listeners");
        }
        if let (Some(t), ListenerProtocol::Http) = (&l.tracing, l.protocol) {
            check_tracing(&mut issues, &format!("{base}.tracing"), t);
        }
        if l.protocol == ListenerProtocol::Tcp {
            check_tcp_listener(&mut issues, &base, l, cfg, &mut tcp_upstreams);
            continue;
        }
        for (field, set) in [
            ("upstream", l.upstream.is_some()),
            ("connect_timeout", l.connect_timeout.is_some()),
            ("connect_attempts", l.connect_attempts.is_some()),
            ("idle_timeout", l.idle_timeout.is_some()),
            (
                "max_connection_lifetime",
                l.max_connection_lifetime.is_some(),
            ),
            ("allow_remote_target", l.allow_remote_target),
        ] {
            if set {
                let hint = if field == "upstream" {
                    "; an HTTP listener sends to upstreams through `routes`"
                } else {
                    ""
                };
                issues.add(
                    format!("{base}.{field}"),
                    format!("only for `protocol: tcp` listeners{hint}"),
                );
            }
        }
        if matches!(l.listen, ListenOn::Unix(_)) {
            issues.add(
                format!("{base}.listen"),
                "Unix sockets are for `protocol: tcp` listeners; HTTP listeners take IP:PORT",
            );
        }
        if l.limits.max_header_bytes.0 < 1024 {
            issues.add(
                format!("{base}.limits.max_header_bytes"),
                "must be at least 1KiB",
            );
        }
        if l.limits.max_headers == 0 {
            issues.add(format!("{base}.limits.max_headers"), "must be at least 1");
        }
        issues.positive(
            format!("{base}.limits.header_read_timeout"),
            l.limits.header_read_timeout.get(),
        );
        if let Some(t) = &l.tls {
            super::validate_tls::listener_tls(&mut issues.0, &format!("{base}.tls"), t);
        }
        if l.routes.is_empty() {
            issues.add(
                format!("{base}.routes"),
                "an HTTP listener needs at least one route",
            );
        }
        let mut route_names: HashMap<&str, usize> = HashMap::new();
        for (j, r) in l.routes.iter().enumerate() {
            let rb = format!("{base}.routes[{j}]");
            check_name(&mut issues, format!("{rb}.name"), &r.name);
            if let Some(first) = route_names.insert(&r.name, j) {
                issues.add(
                    format!("{rb}.name"),
                    format!("duplicate route name `{}` (also routes[{first}])", r.name),
                );
            }
            http_upstreams.insert(r.upstream.as_str(), format!("{rb}.upstream"));
            if !upstream_names.contains_key(r.upstream.as_str()) {
                let known: Vec<&str> = cfg.upstreams.iter().map(|u| u.name.as_str()).collect();
                issues.add(
                    format!("{rb}.upstream"),
                    format!(
                        "no upstream named `{}` (known: {})",
                        r.upstream,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
            issues.positive(format!("{rb}.timeout"), r.timeout.get());
            let m = &r.match_;
            if m.path.is_some() && m.path_prefix.is_some() {
                issues.add(
                    format!("{rb}.match"),
                    "set `path` or `path_prefix`, not both",
                );
            }
            for (key, v) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
                if let Some(p) = v {
                    if !p.starts_with('/') {
                        issues.add(
                            format!("{rb}.match.{key}"),
                            format!("`{p}` must start with '/'"),
                        );
                    }
                }
            }
            for (k, method) in m.methods.iter().enumerate() {
                if Method::from_bytes(method.as_bytes()).is_err() {
                    issues.add(
                        format!("{rb}.match.methods[{k}]"),
                        format!("`{method}` is not an HTTP method"),
                    );
                }
            }
            for (name, value) in &m.headers {
                if HeaderName::from_bytes(name.as_bytes()).is_err() {
                    issues.add(
                        format!("{rb}.match.headers.{name}"),
                        format!("`{name}` is not a valid header name"),
                    );
                } else if HeaderValue::from_str(value).is_err() {
                    issues.add(
                        format!("{rb}.match.headers.{name}"),
                        "value contains characters not allowed in HTTP headers",
                    );
                }
            }
            if let HostRewrite::Literal(h) = &r.host_rewrite {
                if h.is_empty() || HeaderValue::from_str(h).is_err() || h.contains(['/', ' ']) {
                    issues.add(
                        format!("{rb}.host_rewrite"),
                        format!("`{h}` is not `upstream`, `keep` or a valid host"),
                    );
                }
            }
            check_route_policies(&mut issues, &rb, r);
            check_header_rules(
                &mut issues,
                &format!("{rb}.request_headers"),
                &r.request_headers,
            );
            check_header_rules(
                &mut issues,
                &format!("{rb}.response_headers"),
                &r.response_headers,
            );
        }
    }
    for (name, path) in &tcp_upstreams {
        if let Some(http) = http_upstreams.get(name) {
            issues.add(
                path.clone(),
                format!("upstream `{name}` is also used by HTTP ({http}): give the TCP listener an upstream of its own"),
            );
        }
    }
    for (i, u) in cfg.upstreams.iter().enumerate() {
        let base = format!("upstreams[{i}]");
        let tcp = tcp_upstreams.contains_key(u.name.as_str());
        if u.postgres.is_some() && !tcp {
            issues.add(
                format!("{base}.postgres"),
                "only for an upstream of a `protocol: tcp` listener",
            );
        }
        if u.tls.as_ref().is_some_and(|t| t.mode == TlsMode::Postgres) && !tcp {
            issues.add(
                format!("{base}.tls.mode"),
                "`postgres` is only for an upstream of a `protocol: tcp` listener",
            );
        }
        if let Some(pg) = &u.postgres {
            match (&pg.user, &pg.user_file) {
                (Some(_), Some(_)) => issues.add(
                    format!("{base}.postgres.user_file"),
                    "set `user` or `user_file`, not both",
                ),
                (None, None) => issues.add(
                    format!("{base}.postgres"),
                    "name the database user: `user` or `user_file`",
                ),
                (Some(u), None) if u.is_empty() || u.contains('\0') => issues.add(
                    format!("{base}.postgres.user"),
                    "must be a non-empty name without NUL",
                ),
                _ => {}
            }
        }
        if tcp {
            if u.auth.is_some() {
                issues.add(
                    format!("{base}.auth"),
                    "HTTP credentials mean nothing on a TCP tunnel; for PostgreSQL use `postgres:`",
                );
            }
            if u.health_check.as_ref().is_some_and(|h| h.http.is_some()) {
                issues.add(
                    format!("{base}.health_check.http"),
                    "an upstream of a TCP listener is checked by connecting; remove `http`",
                );
            }
        }
    }
    issues.0
}

/// A `protocol: tcp` listener: one upstream, no routes, and a server side that forwards only
/// to loopback unless told otherwise.
fn check_tcp_listener<'a>(
    issues: &mut Issues,
    base: &str,
    l: &'a ListenerConfig,
    cfg: &'a Config,
    tcp_upstreams: &mut HashMap<&'a str, String>,
) {
    if !l.routes.is_empty() {
        issues.add(
            format!("{base}.routes"),
            "a TCP listener has no routes: name its `upstream` directly",
        );
    }
    if l.tracing.is_some() {
        issues.add(
            format!("{base}.tracing"),
            "trace context is carried in HTTP headers: a TCP listener cannot propagate it",
        );
    }
    let Some(name) = &l.upstream else {
        issues.add(
            format!("{base}.upstream"),
            "a TCP listener needs `upstream:` (the upstream its connections go to)",
        );
        return;
    };
    tcp_upstreams.insert(name.as_str(), format!("{base}.upstream"));
    if l.tls
        .as_ref()
        .is_some_and(|t| t.forward_client_cert.is_some())
    {
        issues.add(
            format!("{base}.tls.forward_client_cert"),
            "a TCP listener has no headers to forward the client certificate in",
        );
    }
    if let Some(t) = l.connect_timeout {
        issues.positive(format!("{base}.connect_timeout"), t.get());
    }
    if let Some(t) = l.idle_timeout {
        issues.positive(format!("{base}.idle_timeout"), t.get());
    }
    if let Some(t) = l.max_connection_lifetime {
        issues.positive(format!("{base}.max_connection_lifetime"), t.get());
    }
    if let Some(n) = l.connect_attempts {
        if n == 0 || n > 10 {
            issues.add(
                format!("{base}.connect_attempts"),
                format!("{n} is outside 1..10"),
            );
        }
    }
    let Some(up) = cfg.upstreams.iter().find(|u| &u.name == name) else {
        let known: Vec<&str> = cfg.upstreams.iter().map(|u| u.name.as_str()).collect();
        issues.add(
            format!("{base}.upstream"),
            format!(
                "no upstream named `{name}` (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        );
        return;
    };
    if l.tls.is_some() && !l.allow_remote_target {
        let remote: Vec<String> = upstream_hosts(up)
            .into_iter()
            .filter(|h| !h.is_loopback())
            .map(|h| h.to_string())
            .collect();
        if !remote.is_empty() {
            issues.add(
                format!("{base}.upstream"),
                format!(
                    "this listener terminates TLS and forwards to `{name}` at {}, which is not loopback; \
                     set `allow_remote_target: true` if that is intended",
                    remote.join(", ")
                ),
            );
        }
    }
}

/// The hosts of an upstream's endpoints (or URL).
fn upstream_hosts(u: &super::model::UpstreamConfig) -> Vec<EndpointSpec> {
    let mut out: Vec<EndpointSpec> = u
        .endpoints
        .iter()
        .filter_map(|e| EndpointSpec::parse(&e.address).ok())
        .collect();
    if let Some(url) = &u.url {
        if let Ok(p) = UpstreamUrl::parse(url) {
            out.push(p.endpoint);
        }
    }
    out
}
