//! Upstream clusters: where a service's endpoints are (`discovery`), which one a request goes
//! to (`balance`), and the connections to them (`connect`, `pool`).

pub mod balance;
pub mod breaker;
pub mod connect;
pub mod discovery;
pub mod error;
pub mod h1;
pub mod health;
pub mod load;
pub mod oneshot;
pub mod outcome;
pub mod outlier;
pub mod pool;

pub use error::UpstreamError;

use crate::config::endpoint::{host_authority, EndpointSpec, UpstreamUrl};
use crate::config::resilience::{Balance, CircuitBreakerConfig, HealthCheckConfig};
use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::telemetry::metrics::{EndpointMetrics, Metrics};
use arc_swap::ArcSwap;
use http::HeaderValue;
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

/// An upstream's name; cheap to clone into logs and labels.
pub type UpstreamName = Arc<str>;

/// One configured `host:port` entry with what requests to it need.
#[derive(Debug)]
pub struct Target {
    pub spec: EndpointSpec,
    /// Sent as Host when the route rewrites Host to the upstream (the default).
    pub authority: HeaderValue,
    /// SNI and certificate name for TLS.
    pub server_name: Option<ServerName<'static>>,
    pub weight: u32,
}

/// One resolved address of a target. Kept in an `Arc` so state attached to it (metrics now,
/// health and outlier state later) survives re-resolution when the address stays.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub target: usize,
    pub weight: u32,
    pub metrics: EndpointMetrics,
    pub load: load::Load,
    pub outlier: outlier::EndpointOutlier,
    pub health: health::EndpointHealth,
    /// Labels resolved once for the per-endpoint resilience metrics.
    pub label: crate::telemetry::metrics::EndpointLabels,
}

impl Endpoint {
    /// Can the balancer send here now (not ejected, not failing its health checks)?
    pub fn available(&self, now: std::time::Instant) -> bool {
        !self.outlier.is_ejected(now) && self.health.routable()
    }
}

/// How an upstream's TLS is originated.
#[derive(Debug)]
pub enum TlsOrigin {
    Rustls(Arc<crate::tls::client::ClientTls>),
    /// TLS 1.0/1.1 and OpenSSL cipher strings (`legacy-tls` feature).
    #[cfg(feature = "legacy-tls")]
    Openssl(Arc<crate::tls::legacy::LegacyTls>),
}

/// What an upstream carries: HTTP requests from routes, or a TCP listener's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carries {
    Http,
    Tcp,
}

#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_idle_per_endpoint: usize,
    pub idle_timeout: Duration,
}

/// An upstream cluster as compiled from config; shared by every worker.
#[derive(Debug)]
pub struct Upstream {
    pub index: usize,
    pub name: UpstreamName,
    pub tls: Option<TlsOrigin>,
    /// PostgreSQL's SSLRequest comes before the TLS handshake (`tls.mode: postgres`).
    pub postgres_ssl: bool,
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    pub pool: PoolSettings,
    pub dns_refresh: Duration,
    pub targets: Vec<Target>,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    rr: AtomicUsize,
    pub metrics: Arc<Metrics>,
    pub balance: Balance,
    pub limits: Arc<breaker::Limits>,
    pub breaker: Option<breaker::Breaker>,
    pub outlier: Option<outlier::OutlierPolicy>,
    pub health_check: Option<HealthCheckConfig>,
    /// Credentials added to every request (basic auth, OAuth2).
    pub auth: Option<crate::auth::UpstreamAuth>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("upstream `{upstream}`: {reason}")]
    Invalid { upstream: String, reason: String },
    #[error("upstream `{upstream}`: tls: {source}")]
    Tls {
        upstream: String,
        source: crate::tls::TlsError,
    },
}

fn build_auth(
    cfg: &UpstreamConfig,
    metrics: &Arc<Metrics>,
) -> Result<Option<crate::auth::UpstreamAuth>, String> {
    use crate::auth::{oauth2::TokenSource, secret_header, UpstreamAuth};
    let Some(auth) = &cfg.auth else {
        return Ok(None);
    };
    if let Some(b) = &auth.basic {
        let h = secret_header::SecretHeader::new(
            format!("upstream:{}:basic-auth", cfg.name),
            http::header::AUTHORIZATION,
            vec![b.username_file.clone(), b.password_file.clone()],
            secret_header::Render::Basic,
        )
        .map_err(|e| format!("auth.basic: {e}"))?;
        return Ok(Some(UpstreamAuth::Basic(Arc::new(h))));
    }
    if let Some(o) = &auth.oauth2 {
        let t = TokenSource::new(&cfg.name, o, metrics.clone())
            .map_err(|e| format!("auth.oauth2: {e}"))?;
        return Ok(Some(UpstreamAuth::OAuth2(Arc::new(t))));
    }
    Ok(None)
}

fn origin(
    upstream: &str,
    settings: &crate::config::UpstreamTls,
    alpn: &[&[u8]],
) -> Result<TlsOrigin, crate::tls::TlsError> {
    let name = format!("upstream:{upstream}");
    if settings.needs_openssl() {
        #[cfg(feature = "legacy-tls")]
        return Ok(TlsOrigin::Openssl(Arc::new(
            crate::tls::legacy::LegacyTls::new(name, settings, alpn)?,
        )));
        #[cfg(not(feature = "legacy-tls"))]
        return Err(crate::tls::TlsError::LegacyNeedsFeature {
            version: settings.min_version.map_or_else(
                || "via OpenSSL (backend: openssl)".into(),
                |v| v.to_string(),
            ),
        });
    }
    Ok(TlsOrigin::Rustls(Arc::new(
        crate::tls::client::ClientTls::new(name, settings, alpn)?,
    )))
}

impl Upstream {
    /// Whether a request to this upstream may go through hyper's client, which consumes it:
    /// HTTP/2 configured, or TLS where ALPN may choose it.
    pub fn may_use_hyper(&self) -> bool {
        self.protocol == UpstreamProtocol::Http2
            || (self.protocol == UpstreamProtocol::Auto && self.tls.is_some())
    }

    pub fn build(
        index: usize,
        cfg: &UpstreamConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BuildError> {
        Self::build_for(index, cfg, metrics, Carries::Http)
    }

    pub fn build_for(
        index: usize,
        cfg: &UpstreamConfig,
        metrics: Arc<Metrics>,
        carries: Carries,
    ) -> Result<Self, BuildError> {
        let invalid = |reason: String| BuildError::Invalid {
            upstream: cfg.name.clone(),
            reason,
        };
        let (specs, tls) = match &cfg.url {
            Some(url) => {
                let u = UpstreamUrl::parse(url).map_err(invalid)?;
                (vec![(u.endpoint, 1)], u.tls || cfg.tls.is_some())
            }
            None => {
                let specs = cfg
                    .endpoints
                    .iter()
                    .map(|e| EndpointSpec::parse(&e.address).map(|s| (s, e.weight.max(1))))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(invalid)?;
                (specs, cfg.tls.is_some())
            }
        };
        let server_name_override = cfg.tls.as_ref().and_then(|t| t.server_name.clone());
        let mut targets = Vec::with_capacity(specs.len());
        for (spec, weight) in specs {
            let authority = HeaderValue::from_str(&host_authority(&spec, tls))
                .map_err(|_| invalid(format!("`{spec}` is not a valid Host")))?;
            let server_name = if tls {
                let name = server_name_override
                    .clone()
                    .unwrap_or_else(|| spec.host.clone());
                Some(
                    ServerName::try_from(name.clone())
                        .map_err(|_| invalid(format!("`{name}` is not a valid TLS server name")))?,
                )
            } else {
                None
            };
            targets.push(Target {
                spec,
                authority,
                server_name,
                weight,
            });
        }
        let tls = if tls {
            let postgres = cfg
                .tls
                .as_ref()
                .is_some_and(|t| t.mode == crate::config::TlsMode::Postgres);
            // A tunnel offers no ALPN unless told to; PostgreSQL 17+ accepts only its own.
            let alpn: &[&[u8]] = match (carries, cfg.protocol) {
                (Carries::Tcp, _) if postgres => &[b"postgresql"],
                (Carries::Tcp, _) => &[],
                (Carries::Http, UpstreamProtocol::Http1) => &[b"http/1.1"],
                (Carries::Http, UpstreamProtocol::Http2) => &[b"h2"],
                (Carries::Http, UpstreamProtocol::Auto) => &[b"h2", b"http/1.1"],
            };
            let settings = cfg.tls.clone().unwrap_or_default();
            let tls_err = |source| BuildError::Tls {
                upstream: cfg.name.clone(),
                source,
            };
            Some(origin(&cfg.name, &settings, alpn).map_err(tls_err)?)
        } else {
            None
        };
        let up = Self {
            index,
            name: Arc::from(cfg.name.as_str()),
            postgres_ssl: tls.is_some()
                && cfg
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.mode == crate::config::TlsMode::Postgres),
            tls,
            protocol: if carries == Carries::Tcp {
                UpstreamProtocol::Http1
            } else {
                cfg.protocol
            },
            connect_timeout: cfg.connect_timeout.get(),
            pool: PoolSettings {
                max_idle_per_endpoint: cfg.pool.max_idle_per_endpoint,
                idle_timeout: cfg.pool.idle_timeout.get(),
            },
            dns_refresh: cfg.dns_refresh.get(),
            targets,
            endpoints: ArcSwap::from_pointee(Vec::new()),
            rr: AtomicUsize::new(0),
            balance: cfg.balance,
            limits: Arc::new(breaker::Limits::new(
                cfg.circuit_breaker
                    .as_ref()
                    .unwrap_or(&CircuitBreakerConfig::default()),
            )),
            breaker: cfg.circuit_breaker.as_ref().map(|c| {
                let gauge = metrics
                    .circuit_state
                    .get_or_create(&crate::telemetry::metrics::UpstreamLabels {
                        upstream: cfg.name.clone(),
                    })
                    .clone();
                let trips = metrics
                    .circuit_trips
                    .get_or_create(&crate::telemetry::metrics::UpstreamLabels {
                        upstream: cfg.name.clone(),
                    })
                    .clone();
                breaker::Breaker::new(Arc::from(cfg.name.as_str()), c, gauge, trips)
            }),
            outlier: outlier::OutlierPolicy::from_config(&cfg.outlier_detection),
            health_check: cfg.health_check.clone(),
            auth: build_auth(cfg, &metrics).map_err(invalid)?,
            metrics,
        };
        // IP literals need no discovery: they are endpoints from the start.
        let literal: Vec<(usize, SocketAddr)> = up
            .targets
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.spec.ip().map(|ip| (i, SocketAddr::new(ip, t.spec.port))))
            .collect();
        up.update_endpoints(literal.iter().map(|&(i, a)| (i, vec![a])).collect());
        Ok(up)
    }

    /// The endpoints requests can go to now.
    pub fn endpoints(&self) -> arc_swap::Guard<Arc<Vec<Arc<Endpoint>>>> {
        self.endpoints.load()
    }

    /// Replaces the addresses of the given targets, keeping the other targets' endpoints and
    /// reusing `Endpoint`s whose address did not change.
    pub fn update_endpoints(&self, resolved: Vec<(usize, Vec<SocketAddr>)>) {
        let current = self.endpoints.load_full();
        let mut next: Vec<Arc<Endpoint>> = current
            .iter()
            .filter(|e| !resolved.iter().any(|(t, _)| *t == e.target))
            .cloned()
            .collect();
        for (target, addrs) in resolved {
            for addr in addrs {
                if let Some(existing) = current
                    .iter()
                    .find(|e| e.target == target && e.addr == addr)
                {
                    next.push(existing.clone());
                } else {
                    let metrics = self.metrics.endpoint(&self.name, &addr.to_string());
                    let label = crate::telemetry::metrics::EndpointLabels {
                        upstream: self.name.to_string(),
                        endpoint: addr.to_string(),
                    };
                    let weight = self.targets.get(target).map(|t| t.weight).unwrap_or(1);
                    next.push(Arc::new(Endpoint {
                        addr,
                        target,
                        weight,
                        metrics,
                        load: load::Load::default(),
                        outlier: outlier::EndpointOutlier::default(),
                        health: health::EndpointHealth::new(self.health_check.is_some()),
                        label,
                    }));
                }
            }
        }
        next.sort_by_key(|e| (e.target, e.addr));
        for gone in current
            .iter()
            .filter(|e| !next.iter().any(|n| Arc::ptr_eq(n, e)))
        {
            self.metrics.forget_endpoint(&gone.label);
        }
        self.endpoints.store(Arc::new(next));
    }

    /// Names that need DNS, with their target index.
    pub fn dns_targets(&self) -> Vec<(usize, EndpointSpec)> {
        self.targets
            .iter()
            .enumerate()
            .filter(|(_, t)| t.spec.ip().is_none())
            .map(|(i, t)| (i, t.spec.clone()))
            .collect()
    }

    pub fn rr_counter(&self) -> &AtomicUsize {
        &self.rr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_dns_drops_takes_its_gauges_with_it() {
        let metrics = Arc::new(Metrics::new());
        let cfg = UpstreamConfig::with_endpoints("api", vec!["api.test:80".into()]);
        let up = Upstream::build(0, &cfg, metrics.clone()).unwrap();
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        up.update_endpoints(vec![(0, vec![a, b])]);
        for ep in up.endpoints().iter() {
            metrics.healthy.get_or_create(&ep.label).set(1);
        }
        let before = metrics.encode();
        assert!(before.contains("endpoint=\"10.0.0.1:80\""), "{before}");
        up.update_endpoints(vec![(0, vec![b])]);
        let after = metrics.encode();
        let healthy_a = after
            .lines()
            .any(|l| l.starts_with("legate_endpoint_healthy") && l.contains("10.0.0.1:80"));
        assert!(!healthy_a, "{after}");
        assert!(after
            .lines()
            .any(|l| l.starts_with("legate_endpoint_healthy") && l.contains("10.0.0.2:80")));
        // Counters stay: a vanishing counter would read as a reset.
        assert!(after.contains(
            "legate_upstream_connections_opened_total{upstream=\"api\",endpoint=\"10.0.0.1:80\"}"
        ));
    }
}
