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

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    async fn server(status: u16) -> (String, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/get", l.local_addr().unwrap());
        let conns = Arc::new(AtomicUsize::new(0));
        let c = conns.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| async move {
                        let mut r = hyper::Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"{}"),
                        ));
                        *r.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(r)
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (url, conns)
    }

    #[tokio::test]
    async fn prints_the_seed_lines_and_keeps_the_connection() {
        let (url, conns) = server(200).await;
        let mut c = Client::new(&url).unwrap();
        for _ in 0..3 {
            assert_eq!(c.call_once().await.to_string(), "Success! Status: 200 OK");
        }
        assert_eq!(
            conns.load(Ordering::SeqCst),
            1,
            "keep-alive like Go's default transport"
        );
        let (url, _) = server(503).await;
        let out = Client::new(&url).unwrap().call_once().await;
        assert!(!out.is_success());
        assert_eq!(
            out.to_string(),
            "Error reaching ambassador: unexpected status 503 Service Unavailable"
        );
    }

    #[tokio::test]
    async fn reports_errors_and_gives_up_waiting() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut c = Client::new(&format!("http://{closed}/get")).unwrap();
        let out = c.call_once().await;
        assert!(
            out.to_string().starts_with("Error reaching ambassador: "),
            "{out}"
        );
        assert!(!c.wait_ready(Duration::from_millis(300)).await);
        let (url, _) = server(200).await;
        assert!(
            Client::new(&url)
                .unwrap()
                .wait_ready(Duration::from_secs(5))
                .await
        );
    }

    #[test]
    fn parses_settings() {
        assert_eq!(parse_interval("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_interval("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_interval("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_interval("soon"), None);
        assert!(Client::new("https://x/").is_err());
        assert!(Client::new("not a url").is_err());
    }
}
