//! Shared helpers for the in-process tests: start legate from YAML, run upstreams with exact
//! behaviour, and talk HTTP over real sockets on 127.0.0.1.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use legate::server::{Options, Running};
use legate::telemetry::access_log::Sink;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// A running legate plus the access log lines it wrote.
pub struct Legate {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Legate {
    pub fn start(yaml: &str) -> Self {
        let cfg = legate::config::load_str("test.yaml", yaml, |_| None)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{yaml}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let running = legate::server::start(
            cfg,
            Options {
                access_log_sink: Sink::Memory(log.clone()),
                handle_signals: false,
                config_file: None,
            },
        )
        .expect("legate starts");
        // A config with only Unix listeners has no TCP address to offer.
        let addr = running
            .listeners
            .first()
            .map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)), |l| l.1);
        let admin = running.admin_addr;
        let l = Self {
            running: Some(running),
            addr,
            admin,
            log,
        };
        let state = l
            .running
            .as_ref()
            .map(|r| r.state.clone())
            .expect("running");
        wait_until("legate ready", || state.is_ready());
        l
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn metrics(&self) -> String {
        self.running
            .as_ref()
            .map(|r| r.metrics.encode())
            .unwrap_or_default()
    }

    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).expect("access log is JSON"))
            .collect()
    }

    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
            r.wait();
        }
    }
}

impl Drop for Legate {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads one metric sample's value from Prometheus text: `name{labels...}` matched by
/// substring on each given label.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `cond` until true, failing the test after 10 s. For conditions, never timing.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub async fn wait_until_async(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An upstream with a handler; counts the TCP connections it accepted.
pub struct Upstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

pub async fn upstream<F, Fut>(proto: Proto, handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let c = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let io = TokioIo::new(stream);
                match proto {
                    Proto::H1 => {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .with_upgrades()
                            .await;
                    }
                    Proto::H2 => {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    }
                }
            });
        }
    });
    Upstream { addr, connections }
}

/// An upstream that echoes what it received as JSON: method, uri, version, headers, body length.
pub async fn echo_upstream(proto: Proto) -> Upstream {
    upstream(proto, |req: Request<Incoming>| async move {
        let method = req.method().to_string();
        let uri = req.uri().to_string();
        let version = format!("{:?}", req.version());
        let mut headers = serde_json::Map::new();
        for (k, v) in req.headers() {
            let entry = headers
                .entry(k.as_str().to_string())
                .or_insert_with(|| serde_json::Value::Array(vec![]));
            if let serde_json::Value::Array(a) = entry {
                a.push(serde_json::Value::String(
                    v.to_str().unwrap_or("").to_string(),
                ));
            }
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let v = serde_json::json!({
            "method": method, "uri": uri, "version": version, "headers": headers,
            "body_len": body.len(), "body": String::from_utf8_lossy(&body),
        });
        Response::builder()
            .header("content-type", "application/json")
            .header("x-upstream", "echo")
            .body(full(v.to_string()))
            .unwrap()
    })
    .await
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The upstream-seen value of a header, from an echo upstream's JSON.
    pub fn echoed(&self, name: &str) -> Option<String> {
        self.json()["headers"][name]
            .get(0)
            .and_then(|v| v.as_str())
            .map(String::from)
    }
}

/// A keep-alive HTTP/1.1 or h2c client bound to one address.
pub struct Client {
    h1: Option<hyper::client::conn::http1::SendRequest<Body>>,
    h2: Option<hyper::client::conn::http2::SendRequest<Body>>,
}

impl Client {
    pub async fn h1(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).await.unwrap();
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        Self {
            h1: Some(tx),
            h2: None,
        }
    }

    pub async fn h2(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).await.unwrap();
        let (tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                .await
                .unwrap();
        tokio::spawn(conn);
        Self {
            h1: None,
            h2: Some(tx),
        }
    }

    /// Another handle on the same HTTP/2 connection.
    pub fn clone_h2(&self) -> Self {
        Self {
            h1: None,
            h2: self.h2.clone(),
        }
    }

    pub async fn send_raw(
        &mut self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        if let Some(tx) = &mut self.h1 {
            tx.ready().await?;
            tx.send_request(req).await
        } else {
            let tx = self.h2.as_mut().unwrap();
            tx.ready().await?;
            tx.send_request(req).await
        }
    }

    pub async fn send(&mut self, req: Request<Body>) -> Reply {
        let resp = self.send_raw(req).await.expect("request through legate");
        let status = resp.status().as_u16();
        let version = resp.version();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("response body")
            .to_bytes();
        Reply {
            status,
            headers,
            body,
            version,
        }
    }

    fn get_request(path: &str) -> Request<Body> {
        Request::get(path)
            .header("host", "localhost")
            .body(full(Bytes::new()))
            .expect("valid request")
    }

    /// A GET whose response body the caller reads (or drops) itself.
    pub async fn get_raw(&mut self, path: &str) -> Result<Response<Incoming>, hyper::Error> {
        self.send_raw(Self::get_request(path)).await
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.send(Self::get_request(path)).await
    }
}

/// One request on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    Client::h1(addr).await.get(path).await
}

/// A standard one-route config in front of `upstream_addr` with extra YAML spliced in.
pub fn config(upstream_addr: SocketAddr, route_extra: &str, upstream_extra: &str) -> String {
    format!(
        r#"
admin: {{ listen: 127.0.0.1:0 }}
runtime: {{ workers: 1 }}
listeners:
  - name: app
    listen: 127.0.0.1:0
    routes:
      - name: default
        upstream: api
{route_extra}
upstreams:
  - name: api
    endpoints: ["{upstream_addr}"]
{upstream_extra}
"#
    )
}

/// Reads until `n` complete responses (by content-length or chunked end) or EOF.
pub async fn read_responses(s: &mut tokio::net::TcpStream, n: usize) -> Vec<(u16, String, String)> {
    let mut raw = Vec::new();
    let mut out = Vec::new();
    loop {
        while out.len() < n {
            let Some((resp, used)) = parse_one(&raw) else {
                break;
            };
            out.push(resp);
            raw.drain(..used);
        }
        if out.len() == n {
            return out;
        }
        let mut chunk = [0u8; 4096];
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(s, &mut chunk),
        )
        .await
        .expect("legate answers")
        .unwrap_or(0);
        if got == 0 {
            return out;
        }
        raw.extend_from_slice(&chunk[..got]);
    }
}

/// One response from the start of `raw`: (status, head, body) and the bytes it took.
pub fn parse_one(raw: &[u8]) -> Option<((u16, String, String), usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let head_len = match r.parse(raw).ok()? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let status = r.code?;
    let head = String::from_utf8_lossy(&raw[..head_len]).to_string();
    let get = |name: &str| {
        r.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_string())
    };
    if status == 100 || status == 204 || status == 304 {
        return Some(((status, head, String::new()), head_len));
    }
    if let Some(len) = get("content-length") {
        let len: usize = len.parse().ok()?;
        let end = head_len + len;
        if raw.len() < end {
            return None;
        }
        let body = String::from_utf8_lossy(&raw[head_len..end]).to_string();
        return Some(((status, head, body), end));
    }
    if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut at = head_len;
        let mut body = Vec::new();
        loop {
            let line_end = raw[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size =
                usize::from_str_radix(std::str::from_utf8(&raw[at..line_end]).ok()?, 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                let end = raw[at..].windows(2).position(|w| w == b"\r\n")? + at + 2;
                return Some((
                    (status, head, String::from_utf8_lossy(&body).to_string()),
                    end,
                ));
            }
            if raw.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&raw[at..at + size]);
            at += size + 2;
        }
    }
    None
}
