//! An httpbin-like upstream that fails on purpose: `GET /get` echoes args, headers, origin and
//! url as JSON; `/status/{code}` answers that code; `/delay/{secs}` waits first. A configured
//! fraction of requests fails, half with 503 and half with a dropped connection.

use crate::http::request_id;
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub failure_rate: f64,
    /// Fraction of requests answered only after `spike`.
    pub spike_rate: f64,
    pub spike: Duration,
}

#[derive(Default)]
struct Counters {
    total: AtomicU64,
    failed: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub total: u64,
    pub failed: u64,
}

pub struct Flaky {
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    killed: Arc<std::sync::atomic::AtomicBool>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Flaky {
    /// Takes the endpoint down hard: new connections are refused, open ones reset.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.acceptor.abort();
    }

    pub fn stats(&self) -> Stats {
        Stats {
            total: self.counters.total.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("injected connection reset")]
struct InjectedReset;

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn answer(req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let mut args = BTreeMap::new();
    for pair in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        args.insert(k.to_string(), serde_json::Value::String(v.to_string()));
    }
    let mut headers = BTreeMap::new();
    for (k, v) in req.headers() {
        headers.insert(
            title_case(k.as_str()),
            serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        );
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let url = format!(
        "http://{host}{}",
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let method = req.method().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let echo = serde_json::json!({
        "args": args, "headers": headers, "origin": peer.ip().to_string(), "url": url,
        "method": method, "data": String::from_utf8_lossy(&body),
    });
    if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = status;
        return r;
    }
    if let Some(secs) = path.strip_prefix("/delay/") {
        let secs: f64 = secs.parse().unwrap_or(0.0);
        tokio::time::sleep(Duration::from_secs_f64(secs.clamp(0.0, 10.0))).await;
        return json(StatusCode::OK, &echo);
    }
    match path.as_str() {
        "/get" | "/anything" | "/post" | "/headers" => json(StatusCode::OK, &echo),
        p if p.starts_with("/anything/") => json(StatusCode::OK, &echo),
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": "not found" }),
        ),
    }
}

fn title_case(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Starts the upstream on 127.0.0.1 with an ephemeral port, on the current runtime.
pub async fn spawn(faults: Faults) -> std::io::Result<Flaky> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let counters = Arc::new(Counters::default());
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let c = counters.clone();
    let k = killed.clone();
    let acceptor = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let c = c.clone();
            let k = k.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let c = c.clone();
                    let k = k.clone();
                    async move {
                        if k.load(Ordering::SeqCst) {
                            return Err(InjectedReset);
                        }
                        c.total.fetch_add(1, Ordering::Relaxed);
                        let roll = (request_id::next() >> 11) as f64 / (1u64 << 53) as f64;
                        if roll < faults.failure_rate {
                            c.failed.fetch_add(1, Ordering::Relaxed);
                            if roll < faults.failure_rate / 2.0 {
                                let mut r = Response::new(Full::new(Bytes::from_static(
                                    b"injected failure\n",
                                )));
                                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                                return Ok(r);
                            }
                            return Err(InjectedReset);
                        }
                        let spike = (request_id::next() >> 11) as f64 / (1u64 << 53) as f64;
                        if spike < faults.spike_rate {
                            tokio::time::sleep(faults.spike).await;
                        }
                        Ok(answer(req, peer).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(Flaky {
        addr,
        counters,
        killed,
        acceptor,
    })
}
