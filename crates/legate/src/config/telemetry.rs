//! `tracing:` (trace context on a listener or route) and `otlp:` (where spans go).

use super::duration::ConfigDuration;
use super::tls::UpstreamTls;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A trace header format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Propagation {
    /// W3C Trace Context: `traceparent` and `tracestate`.
    W3c,
    /// Zipkin B3, multi-header (`X-B3-TraceId`, `X-B3-SpanId`, `X-B3-ParentSpanId`,
    /// `X-B3-Sampled`); the single `b3` header is read too.
    B3,
    /// Zipkin B3, the single `b3` header (`{trace}-{span}-{sampled}-{parent}`).
    B3Single,
    /// Jaeger's `uber-trace-id` (`{trace}:{span}:{parent}:{flags}`).
    Jaeger,
}

/// `tracing:` on a listener (all its routes) or on a route (overrides the listener's).
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Formats read from requests (the first valid one in this order wins) and written to
    /// every upstream attempt (all of them, with the same trace id).
    #[serde(default = "default_propagate")]
    pub propagate: Vec<Propagation>,
    /// Start a trace when a request carries none.
    #[serde(default = "default_true")]
    pub create: bool,
    /// Share of the traces legate starts that are sampled (0.0–1.0). A request that arrives
    /// with a trace keeps its sampled flag.
    #[serde(default = "default_sample_rate")]
    pub sample_rate: f64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            propagate: default_propagate(),
            create: true,
            sample_rate: default_sample_rate(),
        }
    }
}

fn default_propagate() -> Vec<Propagation> {
    vec![Propagation::W3c]
}

fn default_true() -> bool {
    true
}

fn default_sample_rate() -> f64 {
    0.01
}

/// `otlp:`: export sampled spans over OTLP/HTTP (protobuf) to a collector.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's traces URL, e.g. `http://otel-collector:4318/v1/traces`.
    pub endpoint: String,
    /// Extra request headers (an API key, a tenant). Secrets: prefer `headers_from_files`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Header name to a file holding its value (a mounted Secret), read at each export.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers_from_files: BTreeMap<String, std::path::PathBuf>,
    /// One export request, connect included.
    #[serde(default = "default_timeout")]
    pub timeout: ConfigDuration,
    /// Spans per export request.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Spans waiting for export; beyond it new spans are dropped (and counted).
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// The longest a span waits before its batch is sent.
    #[serde(default = "default_flush_interval")]
    pub flush_interval: ConfigDuration,
    /// For an `https://` endpoint: CA, client certificate, server name (as for upstreams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// `service.name` of the spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

fn default_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}

fn default_batch_size() -> usize {
    512
}

fn default_queue_size() -> usize {
    2048
}

fn default_flush_interval() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}

fn default_service_name() -> String {
    "legate".to_string()
}
