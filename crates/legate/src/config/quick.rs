//! Quick mode: the flags of `legate http` turned into the same `Config` a file would give, so
//! both paths share one validator and `--print-config` can show the equivalent YAML.

use super::endpoint::UpstreamUrl;
use super::model::*;

/// The flags of `legate http`, already split.
#[derive(Debug, Clone)]
pub struct QuickHttp {
    pub listen: ListenAddr,
    pub upstreams: Vec<String>,
    pub set_headers: Vec<(String, String)>,
    pub admin: AdminListen,
    pub access_log: AccessLogMode,
    pub workers: Option<usize>,
    pub timeout: Option<ConfigDurationArg>,
    /// `--ca`, `--cert`/`--key`, `--pkcs12`, `--server-name`: the upstream's TLS settings.
    pub tls: UpstreamTls,
}

pub type ConfigDurationArg = super::ConfigDuration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuickError {
    #[error("--upstream is required: give the URL of the real service, like --upstream https://httpbin.org")]
    NoUpstream,
    #[error("--upstream {url}: {reason}")]
    BadUpstream { url: String, reason: String },
    #[error(
        "--upstream: all upstream URLs must use the same scheme (found both http:// and https://)"
    )]
    MixedSchemes,
    #[error("--ca, --cert, --key, --pkcs12 and --server-name need an https:// upstream")]
    TlsFlagsWithoutHttps,
}

pub fn build(q: &QuickHttp) -> Result<Config, QuickError> {
    if q.upstreams.is_empty() {
        return Err(QuickError::NoUpstream);
    }
    let mut endpoints = Vec::new();
    let mut tls = None;
    for url in &q.upstreams {
        let parsed = UpstreamUrl::parse(url).map_err(|reason| QuickError::BadUpstream {
            url: url.clone(),
            reason,
        })?;
        if tls.is_some_and(|t| t != parsed.tls) {
            return Err(QuickError::MixedSchemes);
        }
        tls = Some(parsed.tls);
        endpoints.push(parsed.endpoint.to_string());
    }
    let mut request_headers = HeaderRules::default();
    for (k, v) in &q.set_headers {
        request_headers.set.insert(k.clone(), v.clone());
    }
    let mut route = RouteConfig {
        name: "default".into(),
        match_: MatchConfig {
            path_prefix: Some("/".into()),
            ..Default::default()
        },
        upstream: "upstream".into(),
        timeout: ConfigDurationArg::from_secs(15),
        response_body_timeout: ConfigDurationArg::from_secs(300),
        host_rewrite: HostRewrite::Upstream,
        request_headers,
        response_headers: HeaderRules::default(),
        retry: None,
        rate_limit: None,
        tracing: None,
        forward_proxy_authorization: false,
    };
    if let Some(t) = q.timeout {
        route.timeout = t;
    }
    let mut upstream = UpstreamConfig::with_endpoints("upstream", endpoints);
    if tls == Some(true) {
        upstream.tls = Some(q.tls.clone());
    } else if q.tls != UpstreamTls::default() {
        return Err(QuickError::TlsFlagsWithoutHttps);
    }
    let listener = ListenerConfig {
        routes: vec![route],
        ..ListenerConfig::new("app", ListenOn::Tcp(q.listen), ListenerProtocol::Http)
    };
    Ok(one_to_one(
        q.admin,
        q.workers,
        q.access_log,
        listener,
        upstream,
    ))
}

/// The flags of `legate tcp`, already split.
#[derive(Debug, Clone)]
pub struct QuickTcp {
    pub listen: ListenOn,
    /// `HOST:PORT`; repeat for more endpoints of the same service.
    pub upstreams: Vec<String>,
    /// `--tls` or `--tls-mode postgres`: the upstream's TLS settings (`--ca`, `--cert`, …).
    pub tls: Option<UpstreamTls>,
    pub admin: AdminListen,
    pub access_log: AccessLogMode,
    pub workers: Option<usize>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuickTcpError {
    #[error("--upstream is required: give HOST:PORT of the real service, like --upstream db.internal:5432")]
    NoUpstream,
    #[error("--upstream {0}")]
    BadUpstream(String),
}

pub fn build_tcp(q: &QuickTcp) -> Result<Config, QuickTcpError> {
    if q.upstreams.is_empty() {
        return Err(QuickTcpError::NoUpstream);
    }
    for u in &q.upstreams {
        super::endpoint::EndpointSpec::parse(u).map_err(QuickTcpError::BadUpstream)?;
    }
    let mut upstream = UpstreamConfig::with_endpoints("upstream", q.upstreams.clone());
    upstream.tls = q.tls.clone();
    let listener = ListenerConfig {
        upstream: Some("upstream".into()),
        ..ListenerConfig::new("app", q.listen.clone(), ListenerProtocol::Tcp)
    };
    Ok(one_to_one(
        q.admin,
        q.workers,
        q.access_log,
        listener,
        upstream,
    ))
}

/// The config of both quick modes: one listener, one upstream, defaults elsewhere.
fn one_to_one(
    admin: AdminListen,
    workers: Option<usize>,
    access_log: AccessLogMode,
    listener: ListenerConfig,
    upstream: UpstreamConfig,
) -> Config {
    Config {
        admin: AdminConfig {
            listen: admin,
            ..AdminConfig::default()
        },
        runtime: RuntimeConfig { workers },
        access_log,
        shutdown: ShutdownConfig::default(),
        files: FilesConfig::default(),
        listeners: vec![listener],
        upstreams: vec![upstream],
        otlp: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_quick_mode_round_trips() {
        let q = QuickTcp {
            listen: ListenOn::parse("unix:/tmp/x/.s.PGSQL.5432").unwrap(),
            upstreams: vec!["db.internal:5432".into()],
            tls: Some(UpstreamTls {
                mode: TlsMode::Postgres,
                ..Default::default()
            }),
            admin: AdminListen::Off,
            access_log: AccessLogMode::Json,
            workers: Some(1),
        };
        let cfg = build_tcp(&q).unwrap();
        assert!(super::super::validate::validate(&cfg).is_empty());
        let yaml = super::super::to_yaml(&cfg);
        assert!(yaml.contains("mode: postgres"), "{yaml}");
        assert!(yaml.contains("unix:/tmp/x/.s.PGSQL.5432"), "{yaml}");
        assert!(
            super::super::load_str("p", &yaml, |_| None).is_ok(),
            "{yaml}"
        );
        let bad = QuickTcp {
            upstreams: vec!["http://x".into()],
            ..q
        };
        assert!(matches!(
            build_tcp(&bad),
            Err(QuickTcpError::BadUpstream(_))
        ));
    }

    fn q(upstreams: &[&str]) -> QuickHttp {
        QuickHttp {
            listen: ListenAddr::parse("127.0.0.1:8080").unwrap(),
            upstreams: upstreams.iter().map(|s| s.to_string()).collect(),
            set_headers: vec![("X-Client-ID".into(), "microservice-001".into())],
            admin: AdminListen::Off,
            access_log: AccessLogMode::Json,
            workers: None,
            timeout: None,
            tls: UpstreamTls::default(),
        }
    }

    #[test]
    fn https_upstream_turns_tls_on_and_validates() {
        let cfg = build(&q(&["https://httpbin.org"])).unwrap();
        assert!(cfg.upstreams[0].tls.is_some());
        assert_eq!(
            cfg.upstreams[0].endpoints,
            vec![super::super::resilience::EndpointEntry::from(
                "httpbin.org:443".to_string()
            )]
        );
        assert!(super::super::validate::validate(&cfg).is_empty());
        let yaml = super::super::to_yaml(&cfg);
        assert!(
            super::super::load_str("p", &yaml, |_| None).is_ok(),
            "{yaml}"
        );
    }

    #[test]
    fn rejects_mixed_and_missing() {
        assert_eq!(build(&q(&[])).unwrap_err(), QuickError::NoUpstream);
        assert_eq!(
            build(&q(&["http://a:1", "https://b"])).unwrap_err(),
            QuickError::MixedSchemes
        );
        assert!(matches!(
            build(&q(&["httpbin.org"])),
            Err(QuickError::BadUpstream { .. })
        ));
    }
}
