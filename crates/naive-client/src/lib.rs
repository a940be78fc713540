//! The seed's "naive" application: it knows one URL on localhost and nothing about the real
//! service behind the ambassador. Used by the `naive-client` binary and by `legate demo`.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use std::fmt;
use std::time::Duration;
use tokio::net::TcpStream;

/// One call's result, printed the way the seed's Go client prints it.
#[derive(Debug)]
pub enum Outcome {
    Success(StatusCode),
    Status(StatusCode),
    Error(String),
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success(_))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Success(s) => write!(f, "Success! Status: {s}"),
            Outcome::Status(s) => write!(f, "Error reaching ambassador: unexpected status {s}"),
            Outcome::Error(e) => write!(f, "Error reaching ambassador: {e}"),
        }
    }
}

/// A keep-alive HTTP/1.1 client for one URL (like Go's default transport).
pub struct Client {
    uri: Uri,
    authority: String,
    conn: Option<SendRequest<Empty<Bytes>>>,
}

#[derive(Debug)]
pub struct BadUrl(pub String);

impl fmt::Display for BadUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TARGET_URL `{}` must look like http://localhost:8080/get",
            self.0
        )
    }
}

impl std::error::Error for BadUrl {}

impl Client {
    pub fn new(url: &str) -> Result<Self, BadUrl> {
        let uri: Uri = url.parse().map_err(|_| BadUrl(url.to_string()))?;
        if uri.scheme_str() != Some("http") {
            return Err(BadUrl(url.to_string()));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| BadUrl(url.to_string()))?
            .to_string();
        Ok(Self {
            uri,
            authority,
            conn: None,
        })
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>, String> {
        let host = self.uri.host().unwrap_or("localhost");
        let port = self.uri.port_u16().unwrap_or(80);
        let stream = TcpStream::connect((host, port))
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(tx)
    }

    /// One GET; the connection is kept for the next call unless it failed.
    pub async fn call_once(&mut self) -> Outcome {
        let mut tx = match self.conn.take() {
            Some(tx) if !tx.is_closed() => tx,
            _ => match self.connect().await {
                Ok(tx) => tx,
                Err(e) => return Outcome::Error(e),
            },
        };
        if let Err(e) = tx.ready().await {
            return Outcome::Error(e.to_string());
        }
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let req = match Request::get(path)
            .header(hyper::header::HOST, &self.authority)
            .body(Empty::new())
        {
            Ok(r) => r,
            Err(e) => return Outcome::Error(e.to_string()),
        };
        match tx.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                if resp.into_body().collect().await.is_err() {
                    return Outcome::Error("response body cut short".into());
                }
                self.conn = Some(tx);
                if status.is_success() {
                    Outcome::Success(status)
                } else {
                    Outcome::Status(status)
                }
            }
            Err(e) => Outcome::Error(e.to_string()),
        }
    }

    /// The seed's startup wait: retry with exponential backoff until the ambassador answers or
    /// `max_wait` passes. Returns whether it answered.
    pub async fn wait_ready(&mut self, max_wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut backoff = Duration::from_millis(100);
        loop {
            if !matches!(self.call_once().await, Outcome::Error(_)) {
                return true;
            }
            if tokio::time::Instant::now() + backoff > deadline {
                return false;
            }
            println!("Ambassador not ready yet, retrying in {backoff:?}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Parses the INTERVAL variable: `5s`, `500ms`, or plain seconds.
pub fn parse_interval(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    s.strip_suffix('s')
        .unwrap_or(s)
        .parse::<f64>()
        .ok()
        .filter(|v| *v > 0.0)
        .map(Duration::from_secs_f64)
}
