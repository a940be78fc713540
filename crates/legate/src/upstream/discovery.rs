//! DNS discovery: names in `endpoints` are resolved before serving and again in the background,
//! at the record's TTL (bounded by `dns_refresh`). A failed lookup keeps the last good addresses.

use super::Upstream;
use crate::config::endpoint::EndpointSpec;
use hickory_resolver::TokioResolver;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIN_REFRESH: Duration = Duration::from_secs(1);

pub struct Resolver {
    dns: Option<TokioResolver>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot resolve `{host}`: {reason}")]
pub struct ResolveError {
    pub host: String,
    pub reason: String,
}

impl Resolver {
    pub fn from_system() -> Self {
        let dns = match TokioResolver::builder_tokio() {
            Ok(b) => Some(b.build()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the system DNS configuration; using the system resolver without TTLs");
                None
            }
        };
        Self { dns }
    }

    /// Addresses for `spec` and how long they may be trusted.
    pub async fn resolve(
        &self,
        spec: &EndpointSpec,
        fallback_ttl: Duration,
    ) -> Result<(Vec<SocketAddr>, Duration), ResolveError> {
        if spec.host == "localhost" {
            return Ok((
                vec![SocketAddr::from(([127, 0, 0, 1], spec.port))],
                fallback_ttl,
            ));
        }
        let mut last_err = String::new();
        if let Some(dns) = &self.dns {
            match dns.lookup_ip(spec.host.as_str()).await {
                Ok(found) => {
                    let ttl = found
                        .valid_until()
                        .saturating_duration_since(Instant::now());
                    let addrs: Vec<SocketAddr> = found
                        .iter()
                        .map(|ip| SocketAddr::new(ip, spec.port))
                        .collect();
                    if !addrs.is_empty() {
                        return Ok((addrs, ttl));
                    }
                }
                Err(e) => last_err = e.to_string(),
            }
        }
        // /etc/hosts entries and resolvers hickory cannot read go through getaddrinfo.
        match tokio::net::lookup_host((spec.host.as_str(), spec.port)).await {
            Ok(it) => {
                let addrs: Vec<SocketAddr> = it.collect();
                if addrs.is_empty() {
                    Err(ResolveError {
                        host: spec.host.clone(),
                        reason: "no addresses".into(),
                    })
                } else {
                    Ok((addrs, fallback_ttl))
                }
            }
            Err(e) => Err(ResolveError {
                host: spec.host.clone(),
                reason: if last_err.is_empty() {
                    e.to_string()
                } else {
                    format!("{last_err}; {e}")
                },
            }),
        }
    }
}

/// Resolves every name once; failures are logged and left to the background loop.
pub async fn resolve_initial(resolver: &Resolver, upstreams: &[Arc<Upstream>], deadline: Duration) {
    let work = async {
        for up in upstreams {
            for (target, spec) in up.dns_targets() {
                match resolver.resolve(&spec, up.dns_refresh).await {
                    Ok((addrs, _)) => up.update_endpoints(vec![(target, addrs)]),
                    Err(e) => {
                        tracing::warn!(upstream = %up.name, host = %e.host, reason = %e.reason,
                        "cannot resolve upstream endpoint; requests get 503 until it resolves")
                    }
                }
            }
        }
    };
    if tokio::time::timeout(deadline, work).await.is_err() {
        tracing::warn!(
            "initial DNS resolution did not finish in {deadline:?}; continuing in the background"
        );
    }
}

/// Keeps re-resolving one target for as long as the task lives.
pub async fn refresh_loop(
    resolver: Arc<Resolver>,
    up: Arc<Upstream>,
    target: usize,
    spec: EndpointSpec,
) {
    let mut backoff = MIN_REFRESH;
    loop {
        let wait = match resolver.resolve(&spec, up.dns_refresh).await {
            Ok((addrs, ttl)) => {
                backoff = MIN_REFRESH;
                let before: Vec<SocketAddr> = up
                    .endpoints()
                    .iter()
                    .filter(|e| e.target == target)
                    .map(|e| e.addr)
                    .collect();
                if before != addrs {
                    tracing::info!(upstream = %up.name, host = %spec.host, addrs = ?addrs, "endpoints changed");
                }
                up.update_endpoints(vec![(target, addrs)]);
                ttl.clamp(MIN_REFRESH, up.dns_refresh.max(MIN_REFRESH))
            }
            Err(e) => {
                tracing::warn!(upstream = %up.name, host = %e.host, reason = %e.reason, "DNS refresh failed; keeping the last good addresses");
                let w = backoff;
                backoff = (backoff * 2).min(up.dns_refresh.max(MIN_REFRESH));
                w
            }
        };
        tokio::time::sleep(wait).await;
    }
}
