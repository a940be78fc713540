//! Trace context through legate and span export to an OTLP/HTTP receiver that decodes the
//! protobuf with the official definitions: what the upstream sees on each attempt, the span
//! tree the collector gets (retries visible), batching, and a collector that is down or slow
//! (spans dropped and counted, requests unaffected).

mod common;

use bytes::Bytes;
use common::{full, metric, upstream, Client, Legate, Proto};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver: decodes every export request, answers after `delay`.
struct Collector {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

impl Collector {
    async fn start(delay: Duration) -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>> = Arc::default();
        let got = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let got = got.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let got = got.clone();
                        async move {
                            assert_eq!(req.uri().path(), "/v1/traces");
                            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let decoded = ExportTraceServiceRequest::decode(body).unwrap();
                            tokio::time::sleep(delay).await;
                            got.lock().unwrap().push(decoded);
                            Ok::<_, Infallible>(Response::new(full(Bytes::new())))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Self { addr, requests }
    }

    fn spans(&self) -> Vec<Span> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.resource_spans.iter())
            .flat_map(|r| r.scope_spans.iter())
            .flat_map(|s| s.spans.iter().cloned())
            .collect()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
        .and_then(|v| v.value)
}

/// An upstream that fails its first request with 503 and records every request's trace headers.
async fn flaky_recording() -> (SocketAddr, Arc<Mutex<Vec<http::HeaderMap>>>) {
    let seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    let n = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let up = upstream(Proto::H1, move |req: Request<Incoming>| {
        let s = s.clone();
        let n = n.clone();
        async move {
            s.lock().unwrap().push(req.headers().clone());
            let status = if n.fetch_add(1, Ordering::SeqCst) == 0 {
                503
            } else {
                200
            };
            let mut r = Response::new(full("ok"));
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
            r
        }
    })
    .await;
    (up.addr, seen)
}

fn config(up: SocketAddr, collector: SocketAddr, otlp_extra: &str) -> String {
    format!(
        r#"
admin: {{ listen: 127.0.0.1:0 }}
runtime: {{ workers: 1 }}
otlp: {{ endpoint: "http://{collector}/v1/traces", flush_interval: 100ms{otlp_extra} }}
listeners:
  - name: app
    listen: 127.0.0.1:0
    tracing: {{ propagate: [w3c, b3, jaeger], sample_rate: 1.0 }}
    routes:
      - name: api
        upstream: api
        retry: {{ attempts: 2, on: [gateway-error], backoff: {{ base: 1ms, max: 2ms }} }}
upstreams:
  - name: api
    url: http://{up}
"#
    )
}

fn get_with(path: &str, headers: &[(&str, &str)]) -> Request<common::Body> {
    let mut b = Request::get(path).header("host", "localhost");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(full(Bytes::new())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_is_one_server_span_with_two_client_spans() {
    let collector = Collector::start(Duration::ZERO).await;
    let (up, seen) = flaky_recording().await;
    let lg = Legate::start(&config(up, collector.addr, ""));
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let reply = Client::h1(lg.addr)
        .await
        .send(get_with(
            "/orders/7?x=1",
            &[("traceparent", &traceparent), ("tracestate", "vendor=abc")],
        ))
        .await;
    assert_eq!(reply.status, 200);

    // The upstream saw two attempts, each in all three formats with the caller's trace id and
    // its own span id; the caller's tracestate kept.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let mut attempt_spans = Vec::new();
    for h in &seen {
        let tp = h["traceparent"].to_str().unwrap();
        assert!(
            tp.starts_with(&format!("00-{TRACE}-")) && tp.ends_with("-01"),
            "{tp}"
        );
        let span = tp[36..52].to_string();
        assert_ne!(span, CALLER_SPAN);
        assert_eq!(h["x-b3-traceid"], TRACE);
        assert_eq!(h["x-b3-spanid"].to_str().unwrap(), span);
        assert_eq!(h["x-b3-sampled"], "1");
        assert_eq!(
            h["uber-trace-id"].to_str().unwrap(),
            format!(
                "{TRACE}:{span}:{}:01",
                h["x-b3-parentspanid"].to_str().unwrap()
            )
        );
        assert_eq!(h["tracestate"], "vendor=abc");
        attempt_spans.push(span);
    }
    assert_ne!(attempt_spans[0], attempt_spans[1], "a span id per attempt");
    let log = lg.log_lines();
    assert_eq!(log[0]["trace_id"], TRACE, "the access log names the trace");

    // The collector: a server span under the caller's, and two client spans under it.
    common::wait_until_async("three spans exported", || collector.spans().len() >= 3).await;
    let spans = collector.spans();
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let server = spans.iter().find(|s| s.kind == 2).expect("a server span");
    assert_eq!(hex(&server.trace_id), TRACE);
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN);
    assert_eq!(server.name, "GET api");
    assert_eq!(server.trace_state, "vendor=abc");
    assert_eq!(
        attr(server, "http.request.method"),
        Some(Value::StringValue("GET".into()))
    );
    assert_eq!(
        attr(server, "url.path"),
        Some(Value::StringValue("/orders/7".into()))
    );
    assert_eq!(
        attr(server, "http.response.status_code"),
        Some(Value::IntValue(200))
    );
    assert_eq!(
        attr(server, "legate.route"),
        Some(Value::StringValue("api".into()))
    );
    assert_eq!(
        attr(server, "legate.upstream"),
        Some(Value::StringValue("api".into()))
    );
    assert_eq!(attr(server, "legate.attempts"), Some(Value::IntValue(2)));
    assert!(
        matches!(attr(server, "legate.request_id"), Some(Value::StringValue(id)) if !id.is_empty())
    );
    let mut clients: Vec<&Span> = spans.iter().filter(|s| s.kind == 3).collect();
    clients.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(clients.len(), 2);
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(hex(&c.trace_id), TRACE);
        assert_eq!(
            c.parent_span_id, server.span_id,
            "attempts are children of the server span"
        );
        assert_eq!(
            hex(&c.span_id),
            attempt_spans[i],
            "the span id the upstream saw"
        );
        assert_eq!(
            attr(c, "server.address"),
            Some(Value::StringValue("127.0.0.1".into())),
            "the configured host (an IP here)"
        );
        assert_eq!(
            attr(c, "network.peer.address"),
            Some(Value::StringValue("127.0.0.1".into()))
        );
        assert!(c.start_time_unix_nano >= server.start_time_unix_nano);
        assert!(c.end_time_unix_nano <= server.end_time_unix_nano);
    }
    assert_eq!(
        attr(clients[0], "http.response.status_code"),
        Some(Value::IntValue(503))
    );
    assert_eq!(
        attr(clients[0], "error.type"),
        Some(Value::StringValue("503".into()))
    );
    assert_eq!(
        clients[0].status.as_ref().map(|s| s.code),
        Some(2),
        "error status"
    );
    assert_eq!(
        attr(clients[1], "http.response.status_code"),
        Some(Value::IntValue(200))
    );
    assert_eq!(
        attr(clients[1], "http.request.resend_count"),
        Some(Value::IntValue(1))
    );
    // The collector's lock is let go before the wait below: its handler takes it too.
    let service = {
        let requests = collector.requests.lock().unwrap();
        requests[0].resource_spans[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
    };
    assert_eq!(service, Some(Value::StringValue("legate".into())));
    // The counter moves when the collector's answer reaches legate, which is after the
    // collector recorded the spans: wait for it rather than read it once.
    common::wait_until_async("legate_spans_exported_total = 3", || {
        metric(&lg.metrics(), "legate_spans_exported_total", &[]) == Some(3.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_and_garbage_traces() {
    let collector = Collector::start(Duration::ZERO).await;
    let (up, seen) = flaky_recording().await;
    let lg = Legate::start(
        &config(up, collector.addr, "").replace("sample_rate: 1.0", "sample_rate: 0.0"),
    );
    let mut c = Client::h1(lg.addr).await;
    // The caller said "not sampled": propagated as such, nothing exported.
    let unsampled = format!("00-{TRACE}-{CALLER_SPAN}-00");
    assert_eq!(
        c.send(get_with("/", &[("traceparent", &unsampled)]))
            .await
            .status,
        200
    );
    // Garbage in every format: replaced by a new trace, never forwarded.
    let r = c
        .send(get_with(
            "/",
            &[
                (
                    "traceparent",
                    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                ),
                ("x-b3-traceid", "zz"),
                ("x-b3-spanid", "1"),
                ("uber-trace-id", "nope"),
                ("tracestate", "a=b"),
            ],
        ))
        .await;
    assert_eq!(r.status, 200);
    let seen = seen.lock().unwrap().clone();
    // First request: 503 then 200 (two attempts); second: one attempt.
    assert_eq!(seen.len(), 3);
    for h in &seen[..2] {
        assert!(h["traceparent"]
            .to_str()
            .unwrap()
            .starts_with(&format!("00-{TRACE}-")));
        assert!(h["traceparent"].to_str().unwrap().ends_with("-00"));
        assert_eq!(h["x-b3-sampled"], "0");
    }
    let h = &seen[2];
    let tp = h["traceparent"].to_str().unwrap();
    assert!(!tp.contains("00000000000000000000000000000000"), "{tp}");
    assert_eq!(
        h["x-b3-traceid"].to_str().unwrap(),
        &tp[3..35],
        "one trace id in all formats"
    );
    assert!(
        h.get("tracestate").is_none(),
        "no tracestate without the traceparent it belonged to"
    );
    assert_ne!(h["uber-trace-id"], "nope");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        collector.spans().is_empty(),
        "nothing sampled, nothing exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_in_batches() {
    let collector = Collector::start(Duration::ZERO).await;
    let ok = upstream(Proto::H1, |_req: Request<Incoming>| async {
        Response::new(full("ok"))
    })
    .await;
    let lg = Legate::start(
        &config(ok.addr, collector.addr, ", batch_size: 4")
            .replace("flush_interval: 100ms", "flush_interval: 1h"),
    );
    let mut c = Client::h1(lg.addr).await;
    for _ in 0..6 {
        assert_eq!(c.get("/").await.status, 200);
    }
    // Six requests, one attempt each: twelve spans, in three full batches of four (the flush
    // interval is an hour, so only a full batch is sent).
    common::wait_until_async("twelve spans", || collector.spans().len() == 12).await;
    let sizes: Vec<usize> = collector
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.resource_spans[0].scope_spans[0].spans.len())
        .collect();
    assert_eq!(sizes, vec![4, 4, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_down_or_slow_costs_spans_not_requests() {
    let ok = upstream(Proto::H1, |_req: Request<Incoming>| async {
        Response::new(full("ok"))
    })
    .await;
    // Down: a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let lg = Legate::start(&config(ok.addr, closed, ", batch_size: 2"));
    let mut c = Client::h1(lg.addr).await;
    for _ in 0..10 {
        assert_eq!(c.get("/").await.status, 200);
    }
    common::wait_until_async("export failures counted", || {
        metric(
            &lg.metrics(),
            "legate_spans_dropped_total",
            &["reason=\"export-failed\""],
        )
        .unwrap_or(0.0)
            >= 2.0
    })
    .await;

    // Slow: every export takes 5 s against a 200 ms timeout, with a queue of 4 spans.
    let slow = Collector::start(Duration::from_secs(5)).await;
    let lg = Legate::start(&config(
        ok.addr,
        slow.addr,
        ", batch_size: 2, queue_size: 4, timeout: 200ms",
    ));
    let mut c = Client::h1(lg.addr).await;
    for _ in 0..50 {
        assert_eq!(c.get("/").await.status, 200);
    }
    // All fifty answered while the collector still sat on the first export: requests never
    // wait for the exporter.
    assert!(slow.requests.lock().unwrap().is_empty());
    common::wait_until_async("both kinds of drops counted", || {
        let m = lg.metrics();
        metric(&m, "legate_spans_dropped_total", &["reason=\"queue-full\""]).unwrap_or(0.0) > 0.0
            && metric(
                &m,
                "legate_spans_dropped_total",
                &["reason=\"export-failed\""],
            )
            .unwrap_or(0.0)
                > 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_flushes_what_is_queued() {
    let collector = Collector::start(Duration::ZERO).await;
    let ok = upstream(Proto::H1, |_req: Request<Incoming>| async {
        Response::new(full("ok"))
    })
    .await;
    // An hour between flushes and room for 512: nothing would go out before the drain.
    let mut lg = Legate::start(
        &config(ok.addr, collector.addr, "").replace("flush_interval: 100ms", "flush_interval: 1h"),
    );
    let mut c = Client::h1(lg.addr).await;
    for _ in 0..3 {
        assert_eq!(c.get("/").await.status, 200);
    }
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        collector.spans().is_empty(),
        "nothing sent before the drain"
    );
    tokio::task::spawn_blocking(move || lg.stop())
        .await
        .unwrap();
    assert_eq!(
        collector.spans().len(),
        6,
        "three requests, two spans each, sent at the drain"
    );
}

/// Requests legate's own HTTP/1.1 client does not carry (a streamed body; an HTTP/2
/// upstream) go through hyper with the trace headers in their header map: the upstream sees
/// the same headers, once each, as on the fast path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_headers_reach_hyper_paths_once() {
    for (proto, upstream_extra, streamed) in [
        (Proto::H1, "", false),
        (Proto::H1, "", true),
        (Proto::H2, "    protocol: http2\n", false),
    ] {
        let seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
        let s = seen.clone();
        let up = upstream(proto, move |req: Request<Incoming>| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push(req.headers().clone());
                let _ = req.into_body().collect().await;
                Response::new(full("ok"))
            }
        })
        .await;
        let yaml = format!(
            r#"
runtime: {{ workers: 1 }}
listeners:
  - name: app
    listen: 127.0.0.1:0
    tracing: {{ propagate: [w3c, b3, b3-single, jaeger], sample_rate: 1.0 }}
    routes:
      - name: api
        upstream: api
upstreams:
  - name: api
    url: http://{}
{upstream_extra}"#,
            up.addr
        );
        let lg = Legate::start(&yaml);
        let body = if streamed {
            let chunks: Vec<Result<hyper::body::Frame<Bytes>, Infallible>> = (0..3)
                .map(|i| Ok(hyper::body::Frame::data(Bytes::from(format!("{i}")))))
                .collect();
            http_body_util::StreamBody::new(futures_util::stream::iter(chunks)).boxed()
        } else {
            full(Bytes::new())
        };
        let req = Request::post("/x")
            .header("host", "localhost")
            .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
            .header("tracestate", "vendor=abc")
            .body(body)
            .unwrap();
        let reply = Client::h1(lg.addr).await.send(req).await;
        assert_eq!(reply.status, 200, "{proto:?} streamed={streamed}");
        let seen = seen.lock().unwrap().clone();
        let h = &seen[0];
        let what = format!("{proto:?} streamed={streamed}: {h:?}");
        for name in [
            "traceparent",
            "tracestate",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-parentspanid",
            "x-b3-sampled",
            "b3",
            "uber-trace-id",
        ] {
            assert_eq!(h.get_all(name).iter().count(), 1, "{name} once: {what}");
        }
        let tp = h["traceparent"].to_str().unwrap();
        assert!(tp.starts_with(&format!("00-{TRACE}-")), "{what}");
        let span = &tp[36..52];
        assert_ne!(span, CALLER_SPAN, "{what}");
        assert_eq!(h["x-b3-spanid"].to_str().unwrap(), span, "{what}");
        assert_eq!(h["tracestate"], "vendor=abc", "{what}");
        assert!(
            h["b3"]
                .to_str()
                .unwrap()
                .starts_with(&format!("{TRACE}-{span}-1-")),
            "{what}"
        );
    }
}
