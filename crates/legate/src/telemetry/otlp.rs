//! Span export over OTLP/HTTP (protobuf): workers hand finished spans to a bounded queue and
//! never wait; one exporter task on the control thread sends them in batches.
//!
//! The queue is a vector behind a mutex held for a push, not a channel: a channel wakes the
//! exporter's thread for every span (a futex call each, most of the cost of exporting), where
//! this wakes it only when a batch is full; otherwise the exporter looks every
//! `flush_interval`.
//!
//! Nothing here may slow a request: a full queue drops the new spans and counts them
//! (`legate_spans_dropped_total{reason="queue-full"}`); an unreachable, slow or refusing
//! collector costs the exporter its `timeout` per batch and the batch is dropped and counted
//! (`reason="export-failed"`), while requests go on untouched.

use crate::config::OtlpConfig;
use crate::telemetry::metrics::Metrics;
use crate::upstream::oneshot::{self, Url};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prometheus_client::metrics::counter::Counter;
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
}

impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(s)
    }
}

impl From<i64> for AttrValue {
    fn from(i: i64) -> Self {
        AttrValue::Int(i)
    }
}

/// A finished span, as the request path hands it over.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub kind: SpanKind,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, AttrValue)>,
    pub error: bool,
    pub tracestate: String,
}

/// The request path's end of the queue.
pub struct SpanSink {
    queue: Mutex<Vec<SpanRecord>>,
    capacity: usize,
    batch_size: usize,
    /// Told when the queue holds a full batch.
    full: Notify,
    queue_full: Counter,
}

impl std::fmt::Debug for SpanSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpanSink")
    }
}

impl SpanSink {
    /// Queues `spans`; what does not fit is dropped and counted. Never waits (beyond the
    /// moment another worker holds the lock to push).
    pub fn push(&self, spans: Vec<SpanRecord>) {
        let Ok(mut q) = self.queue.lock() else {
            self.queue_full.inc_by(spans.len() as u64);
            return;
        };
        let room = self.capacity.saturating_sub(q.len());
        let dropped = spans.len().saturating_sub(room);
        let before = q.len();
        q.extend(spans.into_iter().take(room));
        let crossed = before < self.batch_size && q.len() >= self.batch_size;
        drop(q);
        if dropped > 0 {
            self.queue_full.inc_by(dropped as u64);
            if let Some(folded) = QUEUE_FULL.check() {
                tracing::warn!(
                    dropped,
                    folded,
                    queue_size = self.capacity,
                    "otlp: the span queue is full (the collector is slow or down); spans dropped"
                );
            }
        }
        if crossed {
            self.full.notify_one();
        }
    }

    /// Puts a partial batch back at the head of the queue (it waits for more spans or the
    /// next tick); the queue may then hold up to `batch_size - 1` spans over its capacity.
    fn put_back(&self, mut older: Vec<SpanRecord>) {
        let Ok(mut q) = self.queue.lock() else {
            return;
        };
        older.append(&mut q);
        *q = older;
        let full = q.len() >= self.batch_size;
        drop(q);
        if full {
            self.full.notify_one();
        }
    }

    /// Everything queued.
    fn take(&self) -> Vec<SpanRecord> {
        self.queue
            .lock()
            .map(|mut q| std::mem::take(&mut *q))
            .unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("otlp.endpoint: {0}")]
    Endpoint(String),
    #[error("otlp.tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("otlp.headers: `{0}` is not a valid header name or value")]
    Header(String),
}

/// The exporter task's state.
pub struct Exporter {
    sink: Arc<SpanSink>,
    url: Url,
    /// Rebuilt by the file watcher when its certificates change.
    tls: Option<Arc<crate::tls::client::ClientTls>>,
    headers: HeaderMap,
    headers_from_files: Vec<(HeaderName, std::path::PathBuf)>,
    timeout: Duration,
    batch_size: usize,
    flush_interval: Duration,
    resource: Resource,
    exported: Counter,
    failed: Counter,
}

/// Builds the queue and its exporter from `otlp:`.
pub fn new(cfg: &OtlpConfig, metrics: &Metrics) -> Result<(Arc<SpanSink>, Exporter), OtlpError> {
    let mut url = Url::parse(
        "otlp.endpoint",
        &cfg.endpoint,
        "use otlp.headers_from_files",
    )
    .map_err(OtlpError::Endpoint)?;
    let tls = if url.tls {
        let settings = cfg.tls.clone().unwrap_or_default();
        if let Some(name) = &settings.server_name {
            url.tls_name = name.clone();
        }
        // Only HTTP/1.1 is spoken to the collector, whatever `alpn` says.
        let client = crate::tls::client::ClientTls::new("otlp".into(), &settings, &[b"http/1.1"])?;
        Some(Arc::new(client))
    } else {
        None
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    for (k, v) in &cfg.headers {
        let name = HeaderName::try_from(k.as_str()).map_err(|_| OtlpError::Header(k.clone()))?;
        let value = HeaderValue::try_from(v.as_str()).map_err(|_| OtlpError::Header(k.clone()))?;
        headers.insert(name, value);
    }
    let headers_from_files = cfg
        .headers_from_files
        .iter()
        .map(|(k, p)| {
            HeaderName::try_from(k.as_str())
                .map(|n| (n, p.clone()))
                .map_err(|_| OtlpError::Header(k.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let sink = Arc::new(SpanSink {
        queue: Mutex::new(Vec::new()),
        capacity: cfg.queue_size.max(1),
        batch_size: cfg.batch_size.max(1),
        full: Notify::new(),
        queue_full: metrics.spans_dropped("queue-full"),
    });
    let resource = Resource {
        attributes: vec![
            kv("service.name", AttrValue::Str(cfg.service_name.clone())),
            kv(
                "service.version",
                AttrValue::Str(env!("CARGO_PKG_VERSION").to_string()),
            ),
        ],
        ..Default::default()
    };
    Ok((
        sink.clone(),
        Exporter {
            sink,
            url,
            tls,
            headers,
            headers_from_files,
            timeout: cfg.timeout.get(),
            batch_size: cfg.batch_size.max(1),
            flush_interval: cfg.flush_interval.get(),
            resource,
            exported: metrics.spans_exported.clone(),
            failed: metrics.spans_dropped("export-failed"),
        },
    ))
}

fn kv(key: &str, v: AttrValue) -> KeyValue {
    let value = match v {
        AttrValue::Str(s) => any_value::Value::StringValue(s),
        AttrValue::Int(i) => any_value::Value::IntValue(i),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// One span in OTLP's terms.
pub fn to_proto(s: SpanRecord) -> Span {
    Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        trace_state: s.tracestate,
        parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
        // The W3C sampled flag: only sampled spans are exported.
        flags: 0x01,
        name: s.name,
        kind: match s.kind {
            SpanKind::Server => span::SpanKind::Server as i32,
            SpanKind::Client => span::SpanKind::Client as i32,
        },
        start_time_unix_nano: nanos(s.start),
        end_time_unix_nano: nanos(s.end),
        attributes: s.attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
        status: Some(Status {
            message: String::new(),
            code: if s.error {
                status::StatusCode::Error as i32
            } else {
                status::StatusCode::Unset as i32
            },
        }),
        ..Default::default()
    }
}

impl Exporter {
    /// The collector's TLS, for the file watcher.
    pub fn tls(&self) -> Option<Arc<crate::tls::client::ClientTls>> {
        self.tls.clone()
    }

    /// How long one export may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The export request for `spans`, protobuf-encoded.
    pub fn encode(&self, spans: Vec<SpanRecord>) -> Bytes {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "legate".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: spans.into_iter().map(to_proto).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        Bytes::from(req.encode_to_vec())
    }

    /// Sends batches until `stop` flips, then flushes what is queued (bounded by `timeout`).
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (stopping, ticked) = tokio::select! {
                _ = self.sink.full.notified() => (false, false),
                _ = tick.tick() => (false, true),
                _ = stop.wait_for(|s| *s) => (true, false),
            };
            let mut queued = self.sink.take();
            if stopping {
                // At shutdown everything goes in one request: the process waits for one
                // `timeout`, not one per batch.
                if !queued.is_empty() {
                    self.export(queued).await;
                }
                return;
            }
            // In batches of batch_size. Woken by a full batch, a partial one left over goes
            // back to wait for more spans (or the tick); at a tick it goes too.
            while queued.len() >= self.batch_size || (ticked && !queued.is_empty()) {
                let rest = queued.split_off(queued.len().min(self.batch_size));
                self.export(queued).await;
                queued = rest;
            }
            if !queued.is_empty() {
                self.sink.put_back(queued);
            }
        }
    }

    async fn export(&self, spans: Vec<SpanRecord>) {
        let n = spans.len() as u64;
        let body = self.encode(spans);
        let mut headers = self.headers.clone();
        for (name, path) in &self.headers_from_files {
            match crate::tls::load::read_secret(path)
                .ok()
                .and_then(|v| HeaderValue::try_from(v).ok())
            {
                Some(v) => {
                    headers.insert(name.clone(), v);
                }
                None => {
                    tracing::warn!(header = %name, file = %path.display(), "otlp: cannot read a header's file; sending without it")
                }
            }
        }
        let sent = tokio::time::timeout(
            self.timeout,
            oneshot::post(
                &self.url,
                self.tls.as_ref().map(|t| t.config()).as_ref(),
                headers,
                body,
                64 * 1024,
            ),
        )
        .await;
        let failure = match sent {
            Ok(Ok((status, _))) if status.is_success() => {
                self.exported.inc_by(n);
                return;
            }
            Ok(Ok((status, body))) => format!(
                "collector answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        self.failed.inc_by(n);
        if let Some(folded) = EXPORT_FAILED.check() {
            tracing::warn!(endpoint = %self.url.authority, spans = n, error = %failure, folded,
                "otlp: span export failed; the batch is dropped (requests are not affected)");
        }
    }
}

static QUEUE_FULL: std::sync::LazyLock<crate::telemetry::throttle::Throttle> =
    std::sync::LazyLock::new(|| crate::telemetry::throttle::Throttle::new(Duration::from_secs(10)));

static EXPORT_FAILED: std::sync::LazyLock<crate::telemetry::throttle::Throttle> =
    std::sync::LazyLock::new(|| crate::telemetry::throttle::Throttle::new(Duration::from_secs(10)));
