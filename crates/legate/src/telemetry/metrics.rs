//! The metrics registry. Label sets are resolved once when the config is compiled, so the
//! request path only touches atomics (`RouteMetrics`), never the families' maps.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: String,
    pub route: String,
    pub upstream: String,
    pub code_class: CodeClass,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CodeClass {
    C1xx,
    C2xx,
    C3xx,
    C4xx,
    C5xx,
}

impl EncodeLabelValue for CodeClass {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            CodeClass::C1xx => "1xx",
            CodeClass::C2xx => "2xx",
            CodeClass::C3xx => "3xx",
            CodeClass::C4xx => "4xx",
            CodeClass::C5xx => "5xx",
        })
    }
}

impl CodeClass {
    pub const ALL: [CodeClass; 5] = [
        CodeClass::C1xx,
        CodeClass::C2xx,
        CodeClass::C3xx,
        CodeClass::C4xx,
        CodeClass::C5xx,
    ];

    /// Index into `ALL` for a status code (codes outside 100..600 count as 5xx).
    pub fn index(status: u16) -> usize {
        match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub listener: String,
    pub route: String,
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestRouteLabels {
    pub listener: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub upstream: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub listener: String,
    pub route: String,
    pub upstream: String,
    pub reason: String,
}

/// From 100 µs: a sidecar's own added latency is a few hundred microseconds, and the buckets
/// must tell 150 µs from 900 µs.
fn duration_histogram() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0,
    ])
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverflowLabels {
    pub upstream: String,
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub route: String,
    pub upstream: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteOnlyLabels {
    pub route: String,
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthCheckLabels {
    pub upstream: String,
    pub endpoint: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `success` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigLabels {
    pub hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabels {
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsFailureLabels {
    pub listener: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub upstream: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpResultLabels {
    pub listener: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpBytesLabels {
    pub listener: String,
    /// `to_upstream` (what the client sent) or `to_client`.
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectFailureLabels {
    pub upstream: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub listener: String,
    pub reason: &'static str,
}

/// Tunnels live from milliseconds (a health probe) to hours (a connection pool).
fn connection_duration_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 86400.0,
    ])
}

pub struct Metrics {
    pub registry: Registry,
    pub tcp_active: Family<ListenerLabels, Gauge>,
    pub tcp_connections: Family<TcpResultLabels, Counter>,
    pub tcp_bytes: Family<TcpBytesLabels, Counter>,
    pub tcp_duration: Family<ListenerLabels, Histogram, fn() -> Histogram>,
    pub tcp_connect_failures: Family<ConnectFailureLabels, Counter>,
    pub refused: Family<RefusedLabels, Counter>,
    pub spans_exported: Counter,
    pub spans_dropped_family: Family<ReasonLabels, Counter>,
    pub config_reloads: Family<ReloadLabels, Counter>,
    pub config_info: Family<ConfigLabels, Gauge>,
    pub config_last_reload_successful: Gauge,
    pub config_last_reload_success_time: Gauge,
    pub tls_reloads: Family<NameLabels, Counter>,
    pub tls_reload_failures: Family<NameLabels, Counter>,
    pub tls_cert_expiry: Family<NameLabels, Gauge>,
    pub tls_handshake_failures: Family<TlsFailureLabels, Counter>,
    pub tls_handshakes: Family<ListenerLabels, Counter>,
    pub oauth2_refreshes: Family<TokenLabels, Counter>,
    pub retries: Family<RetryLabels, Counter>,
    pub retry_budget_exhausted: Family<RouteOnlyLabels, Counter>,
    pub rate_limited: Family<RequestRouteLabels, Counter>,
    pub circuit_state: Family<UpstreamLabels, Gauge>,
    pub circuit_trips: Family<UpstreamLabels, Counter>,
    pub overflow: Family<OverflowLabels, Counter>,
    pub ejections: Family<EndpointLabels, Counter>,
    pub ejected: Family<EndpointLabels, Gauge>,
    pub healthy: Family<EndpointLabels, Gauge>,
    pub health_checks: Family<HealthCheckLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub inflight: Family<ListenerLabels, Gauge>,
    pub errors: Family<ErrorLabels, Counter>,
    pub connections_active: Family<EndpointLabels, Gauge>,
    pub connections_opened: Family<EndpointLabels, Counter>,
    pub connections_reused: Family<EndpointLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        // Standard names, no prefix, so stock process dashboards work.
        root.register_collector(Box::new(super::process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("legate");
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "1, labelled with the running legate's version",
            build_info,
        );
        let spans_exported = Counter::default();
        let spans_dropped_family = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "spans_exported",
            "Spans the OTLP collector accepted",
            spans_exported.clone(),
        );
        registry.register(
            "spans_dropped",
            "Spans not exported, by reason (queue-full: the export queue was full; export-failed: the collector refused or did not answer)",
            spans_dropped_family.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let inflight = Family::<ListenerLabels, Gauge>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let connections_active = Family::<EndpointLabels, Gauge>::default();
        let connections_opened = Family::<EndpointLabels, Counter>::default();
        let connections_reused = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by status class",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request arrival to the end of the response body",
            duration.clone(),
        );
        registry.register(
            "http_inflight_requests",
            "Requests being served now",
            inflight.clone(),
        );
        registry.register(
            "http_local_errors",
            "Responses legate answered itself, by legate-error reason",
            errors.clone(),
        );
        registry.register(
            "upstream_connections_active",
            "Open connections to upstream endpoints",
            connections_active.clone(),
        );
        registry.register(
            "upstream_connections_opened",
            "Connections opened to upstream endpoints",
            connections_opened.clone(),
        );
        registry.register(
            "upstream_connections_reused",
            "Requests sent on a pooled (reused) upstream connection",
            connections_reused.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        let retry_budget_exhausted = Family::<RouteOnlyLabels, Counter>::default();
        let rate_limited = Family::<RequestRouteLabels, Counter>::default();
        let circuit_state = Family::<UpstreamLabels, Gauge>::default();
        let circuit_trips = Family::<UpstreamLabels, Counter>::default();
        let overflow = Family::<OverflowLabels, Counter>::default();
        let ejections = Family::<EndpointLabels, Counter>::default();
        let ejected = Family::<EndpointLabels, Gauge>::default();
        let healthy = Family::<EndpointLabels, Gauge>::default();
        let health_checks = Family::<HealthCheckLabels, Counter>::default();
        registry.register(
            "http_retries",
            "Retries sent, by the condition that caused them",
            retries.clone(),
        );
        registry.register(
            "http_retry_budget_exhausted",
            "Retries not sent because the route's retry budget was spent",
            retry_budget_exhausted.clone(),
        );
        registry.register(
            "http_rate_limited",
            "Requests refused with 429 by a route's rate limit",
            rate_limited.clone(),
        );
        registry.register(
            "circuit_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open",
            circuit_state.clone(),
        );
        registry.register(
            "circuit_trips",
            "Times the circuit breaker opened",
            circuit_trips.clone(),
        );
        registry.register(
            "upstream_overflow",
            "Requests failed fast because a circuit-breaker limit was reached",
            overflow.clone(),
        );
        registry.register(
            "outlier_ejections",
            "Times an endpoint was ejected by outlier detection",
            ejections.clone(),
        );
        registry.register(
            "outlier_ejected",
            "1 while an endpoint is ejected",
            ejected.clone(),
        );
        registry.register(
            "endpoint_healthy",
            "Active health check verdict: 1 healthy, 0 unhealthy",
            healthy.clone(),
        );
        registry.register(
            "health_checks",
            "Active health checks, by result",
            health_checks.clone(),
        );
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        let config_info = Family::<ConfigLabels, Gauge>::default();
        let config_last_reload_successful = Gauge::default();
        let config_last_reload_success_time = Gauge::default();
        registry.register(
            "config_reloads",
            "Config reloads tried (file change, SIGHUP, POST /reload), by result",
            config_reloads.clone(),
        );
        registry.register(
            "config_info",
            "1 for the hash (sha256 of the file) of the config that runs now",
            config_info.clone(),
        );
        registry.register(
            "config_last_reload_successful",
            "1 if the last config reload succeeded (or none was tried), 0 if it failed",
            config_last_reload_successful.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the running config was loaded (Unix time)",
            config_last_reload_success_time.clone(),
        );
        let tls_reloads = Family::<NameLabels, Counter>::default();
        let tls_reload_failures = Family::<NameLabels, Counter>::default();
        let tls_cert_expiry = Family::<NameLabels, Gauge>::default();
        let tls_handshake_failures = Family::<TlsFailureLabels, Counter>::default();
        let tls_handshakes = Family::<ListenerLabels, Counter>::default();
        let oauth2_refreshes = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "Certificate, key, CA or credential files reloaded after a change",
            tls_reloads.clone(),
        );
        registry.register(
            "tls_reload_failures",
            "Reloads refused (bad new files); the previous material stays in use",
            tls_reload_failures.clone(),
        );
        registry.register(
            "tls_cert_expiry_timestamp_seconds",
            "When the certificate legate presents expires (Unix time)",
            tls_cert_expiry.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Inbound TLS handshakes that failed, by reason",
            tls_handshake_failures.clone(),
        );
        registry.register(
            "tls_handshakes",
            "Inbound TLS handshakes completed",
            tls_handshakes.clone(),
        );
        registry.register(
            "oauth2_token_refreshes",
            "OAuth2 token requests, by result",
            oauth2_refreshes.clone(),
        );
        let tcp_active = Family::<ListenerLabels, Gauge>::default();
        let tcp_connections = Family::<TcpResultLabels, Counter>::default();
        let tcp_bytes = Family::<TcpBytesLabels, Counter>::default();
        let tcp_duration =
            Family::<ListenerLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                connection_duration_histogram as fn() -> Histogram,
            );
        let tcp_connect_failures = Family::<ConnectFailureLabels, Counter>::default();
        let refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "tcp_connections_active",
            "Client connections open on TCP listeners",
            tcp_active.clone(),
        );
        registry.register(
            "tcp_connections",
            "Client connections on TCP listeners that ended, by result (close reason)",
            tcp_connections.clone(),
        );
        registry.register(
            "tcp_bytes",
            "Bytes carried by TCP listeners, by direction (to_upstream, to_client)",
            tcp_bytes.clone(),
        );
        registry.register(
            "tcp_connection_duration_seconds",
            "How long TCP listener connections lasted",
            tcp_duration.clone(),
        );
        registry.register(
            "tcp_connect_failures",
            "Failed connects to an upstream's endpoints for TCP listeners, by reason",
            tcp_connect_failures.clone(),
        );
        registry.register(
            "listener_connections_refused",
            "Client connections closed at accept, by reason (max-connections)",
            refused.clone(),
        );
        Self {
            registry: root,
            spans_exported,
            spans_dropped_family,
            tcp_active,
            tcp_connections,
            tcp_bytes,
            tcp_duration,
            tcp_connect_failures,
            refused,
            config_reloads,
            config_info,
            config_last_reload_successful,
            config_last_reload_success_time,
            tls_reloads,
            tls_reload_failures,
            tls_cert_expiry,
            tls_handshake_failures,
            tls_handshakes,
            oauth2_refreshes,
            retries,
            retry_budget_exhausted,
            rate_limited,
            circuit_state,
            circuit_trips,
            overflow,
            ejections,
            ejected,
            healthy,
            health_checks,
            requests,
            duration,
            inflight,
            errors,
            connections_active,
            connections_opened,
            connections_reused,
        }
    }

    /// The running config is now `hash`, loaded at `unix_time` (`previous`: the one it
    /// replaced, whose info series goes).
    pub fn config_loaded(&self, previous: Option<&str>, hash: &str, unix_time: i64) {
        if let Some(p) = previous.filter(|p| *p != hash) {
            self.config_info.remove(&ConfigLabels {
                hash: p.to_string(),
            });
        }
        self.config_info
            .get_or_create(&ConfigLabels {
                hash: hash.to_string(),
            })
            .set(1);
        self.config_last_reload_successful.set(1);
        self.config_last_reload_success_time.set(unix_time);
    }

    pub fn spans_dropped(&self, reason: &'static str) -> Counter {
        self.spans_dropped_family
            .get_or_create(&ReasonLabels { reason })
            .clone()
    }

    pub fn config_reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&ReloadLabels {
                result: if ok { "success" } else { "error" },
            })
            .inc();
        self.config_last_reload_successful.set(i64::from(ok));
    }

    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.push_str("# encoding failed\n");
        }
        out
    }

    /// Handles for one route, resolved once at config compile time.
    pub fn route(&self, listener: &str, route: &str, upstream: &str) -> RouteMetrics {
        let by_class = CodeClass::ALL.map(|code_class| {
            self.requests
                .get_or_create(&RequestLabels {
                    listener: listener.to_string(),
                    route: route.to_string(),
                    upstream: upstream.to_string(),
                    code_class,
                })
                .clone()
        });
        let labels = RouteLabels {
            listener: listener.to_string(),
            route: route.to_string(),
            upstream: upstream.to_string(),
        };
        let rate_limited = self
            .rate_limited
            .get_or_create(&RequestRouteLabels {
                listener: listener.to_string(),
                route: route.to_string(),
            })
            .clone();
        RouteMetrics {
            rate_limited,
            by_class,
            duration: self.duration.get_or_create(&labels).clone(),
            labels,
        }
    }

    pub fn listener_inflight(&self, listener: &str) -> Gauge {
        self.inflight
            .get_or_create(&ListenerLabels {
                listener: listener.to_string(),
            })
            .clone()
    }

    pub fn local_error(&self, route: &RouteLabels, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                listener: route.listener.clone(),
                route: route.route.clone(),
                upstream: route.upstream.clone(),
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn retry(&self, route: &str, upstream: &str, reason: &str) {
        self.retries
            .get_or_create(&RetryLabels {
                route: route.to_string(),
                upstream: upstream.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn budget_exhausted(&self, route: &str, upstream: &str) {
        self.retry_budget_exhausted
            .get_or_create(&RouteOnlyLabels {
                route: route.to_string(),
                upstream: upstream.to_string(),
            })
            .inc();
    }

    pub fn overflowed(&self, upstream: &str, limit: &str) {
        self.overflow
            .get_or_create(&OverflowLabels {
                upstream: upstream.to_string(),
                limit: limit.to_string(),
            })
            .inc();
    }

    /// Handles for one TCP listener, resolved once.
    pub fn tcp_listener(&self, listener: &str) -> TcpListenerMetrics {
        let l = ListenerLabels {
            listener: listener.to_string(),
        };
        let bytes = |direction| {
            self.tcp_bytes
                .get_or_create(&TcpBytesLabels {
                    listener: listener.to_string(),
                    direction,
                })
                .clone()
        };
        TcpListenerMetrics {
            active: self.tcp_active.get_or_create(&l).clone(),
            to_upstream: bytes("to_upstream"),
            to_client: bytes("to_client"),
            duration: self.tcp_duration.get_or_create(&l).clone(),
        }
    }

    pub fn tcp_closed(&self, listener: &str, result: &str) {
        self.tcp_connections
            .get_or_create(&TcpResultLabels {
                listener: listener.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    pub fn tcp_connect_failed(&self, upstream: &str, reason: &str) {
        self.tcp_connect_failures
            .get_or_create(&ConnectFailureLabels {
                upstream: upstream.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn refused_handle(&self, listener: &str, reason: &'static str) -> Counter {
        self.refused
            .get_or_create(&RefusedLabels {
                listener: listener.to_string(),
                reason,
            })
            .clone()
    }

    /// An endpoint DNS no longer returns: its gauges go, so a dashboard or an alert does not
    /// keep reading the last value of an address that is not there (its counters stay: a
    /// counter that vanishes is a rate that lies).
    pub fn forget_endpoint(&self, labels: &EndpointLabels) {
        self.connections_active.remove(labels);
        self.ejected.remove(labels);
        self.healthy.remove(labels);
    }

    pub fn endpoint(&self, upstream: &str, endpoint: &str) -> EndpointMetrics {
        let labels = EndpointLabels {
            upstream: upstream.to_string(),
            endpoint: endpoint.to_string(),
        };
        EndpointMetrics {
            active: self.connections_active.get_or_create(&labels).clone(),
            opened: self.connections_opened.get_or_create(&labels).clone(),
            reused: self.connections_reused.get_or_create(&labels).clone(),
        }
    }
}

/// Per-route metric handles: plain atomics on the request path.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    pub rate_limited: Counter,
    pub by_class: [Counter; 5],
    pub duration: Histogram,
    pub labels: RouteLabels,
}

impl RouteMetrics {
    pub fn record(&self, status: u16, seconds: f64) {
        self.by_class[CodeClass::index(status)].inc();
        self.duration.observe(seconds);
    }
}

#[derive(Clone, Debug)]
pub struct EndpointMetrics {
    pub active: Gauge,
    pub opened: Counter,
    pub reused: Counter,
}

/// Per-TCP-listener handles: plain atomics while bytes move.
#[derive(Clone, Debug)]
pub struct TcpListenerMetrics {
    pub active: Gauge,
    pub to_upstream: Counter,
    pub to_client: Counter,
    pub duration: Histogram,
}
