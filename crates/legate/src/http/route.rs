//! Routes: which requests go to which upstream, with what timeout and header rules. The first
//! route that matches wins, in the order written.

use super::headers::CompiledRules;
use crate::config::{HostRewrite, RouteConfig};
use crate::telemetry::metrics::RouteMetrics;
use crate::upstream::Upstream;
use http::{HeaderName, HeaderValue, Method, Request};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
pub enum PathMatch {
    Any,
    Prefix(String),
    Exact(String),
}

#[derive(Debug)]
pub struct Matcher {
    pub path: PathMatch,
    pub methods: Vec<Method>,
    /// `None` value: the header only has to be present.
    pub headers: Vec<(HeaderName, Option<HeaderValue>)>,
}

impl Matcher {
    pub fn matches<B>(&self, req: &Request<B>) -> bool {
        let path = req.uri().path();
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
        };
        path_ok
            && (self.methods.is_empty() || self.methods.contains(req.method()))
            && self.headers.iter().all(|(n, v)| match v {
                None => req.headers().contains_key(n),
                Some(v) => req.headers().get_all(n).iter().any(|have| have == v),
            })
    }
}

#[derive(Debug)]
pub enum HostPolicy {
    Upstream,
    Keep,
    Literal(HeaderValue),
}

#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub matcher: Matcher,
    pub upstream: Arc<Upstream>,
    pub timeout: Duration,
    /// Longest silence from the upstream in the middle of a response body.
    pub response_body_timeout: Duration,
    pub host: HostPolicy,
    pub request_rules: CompiledRules,
    pub response_rules: CompiledRules,
    pub metrics: RouteMetrics,
    pub retry: Option<super::retry::RetryPolicy>,
    pub rate_limit: Option<super::rate_limit::TokenBucket>,
    /// `request_headers.set_from_file`: values re-read when their files change.
    pub file_headers: Vec<Arc<crate::auth::secret_header::SecretHeader>>,
    /// Trace context (the route's `tracing:`, or its listener's); `None`: headers pass as is.
    pub tracing: Option<Arc<super::trace::TracePolicy>>,
    /// "upstream request failed" at most once a second per route, with a count: a dead
    /// upstream must not write a line per request.
    pub failure_log: crate::telemetry::throttle::Throttle,
    /// `forward_proxy_authorization`: otherwise `Proxy-Authorization` stops at legate.
    pub forward_proxy_authorization: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("route `{route}`: {reason}")]
pub struct RouteError {
    pub route: String,
    pub reason: String,
}

impl Route {
    /// `cfg.tracing` is the effective one (the listener's when the route has none); sampled
    /// spans go to `spans`.
    pub fn compile(
        cfg: &RouteConfig,
        upstream: Arc<Upstream>,
        metrics: RouteMetrics,
        spans: Option<Arc<crate::telemetry::otlp::SpanSink>>,
    ) -> Result<Self, RouteError> {
        let err = |reason: String| RouteError {
            route: cfg.name.clone(),
            reason,
        };
        let m = &cfg.match_;
        let path = match (&m.path, &m.path_prefix) {
            (Some(p), _) => PathMatch::Exact(p.clone()),
            (None, Some(p)) if p != "/" => PathMatch::Prefix(p.clone()),
            _ => PathMatch::Any,
        };
        let methods = m
            .methods
            .iter()
            .map(|s| {
                Method::from_bytes(s.to_ascii_uppercase().as_bytes())
                    .map_err(|_| err(format!("bad method `{s}`")))
            })
            .collect::<Result<_, _>>()?;
        let headers = m
            .headers
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| err(format!("bad header `{k}`")))?;
                let value = if v == "*" {
                    None
                } else {
                    Some(
                        HeaderValue::from_str(v)
                            .map_err(|_| err(format!("bad value for `{k}`")))?,
                    )
                };
                Ok((name, value))
            })
            .collect::<Result<_, RouteError>>()?;
        let host = match &cfg.host_rewrite {
            HostRewrite::Upstream => HostPolicy::Upstream,
            HostRewrite::Keep => HostPolicy::Keep,
            HostRewrite::Literal(h) => HostPolicy::Literal(
                HeaderValue::from_str(h).map_err(|_| err(format!("bad host `{h}`")))?,
            ),
        };
        Ok(Self {
            name: Arc::from(cfg.name.as_str()),
            matcher: Matcher {
                path,
                methods,
                headers,
            },
            upstream,
            timeout: cfg.timeout.get(),
            response_body_timeout: cfg.response_body_timeout.get(),
            host,
            request_rules: CompiledRules::compile(&cfg.request_headers)
                .map_err(|e| err(e.to_string()))?,
            response_rules: CompiledRules::compile(&cfg.response_headers)
                .map_err(|e| err(e.to_string()))?,
            metrics,
            tracing: cfg
                .tracing
                .as_ref()
                .map(|t| Arc::new(super::trace::TracePolicy::new(t, spans))),
            failure_log: crate::telemetry::throttle::Throttle::new(std::time::Duration::from_secs(
                1,
            )),
            forward_proxy_authorization: cfg.forward_proxy_authorization,
            retry: cfg.retry.as_ref().map(super::retry::RetryPolicy::new),
            rate_limit: cfg
                .rate_limit
                .as_ref()
                .map(super::rate_limit::TokenBucket::new),
            file_headers: cfg
                .request_headers
                .set_from_file
                .iter()
                .map(|(k, src)| {
                    let header = HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| err(format!("bad header `{k}`")))?;
                    crate::auth::secret_header::SecretHeader::new(
                        format!("route:{}:{}", cfg.name, k.to_ascii_lowercase()),
                        header,
                        vec![src.file.clone()],
                        crate::auth::secret_header::Render::Prefixed(src.prefix.clone()),
                    )
                    .map(Arc::new)
                    .map_err(|e| err(format!("request_headers.set_from_file.{k}: {e}")))
                })
                .collect::<Result<_, RouteError>>()?,
        })
    }
}
