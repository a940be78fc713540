//! One request on its own connection, for legate's own calls beside the data path: an OAuth2
//! token endpoint, an OTLP collector. They are rare (a token per hour, a batch every few
//! seconds), so a connection each keeps them simple and leaves no idle socket behind.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use std::sync::Arc;

/// An `http(s)://host[:port]/path` URL taken apart.
#[derive(Debug, Clone)]
pub struct Url {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub authority: String,
    pub path: String,
    /// The name sent as SNI and verified in the certificate: the host, unless overridden.
    pub tls_name: String,
}

impl Url {
    /// `field` names the setting in messages (`token_url`, `otlp.endpoint`); `credentials`
    /// says where credentials go instead of the URL.
    pub fn parse(field: &str, s: &str, credentials: &str) -> Result<Self, String> {
        let uri: Uri = s.parse().map_err(|_| format!("`{s}` is not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(format!(
                    "{field} `{s}` must start with https:// (or http://)"
                ))
            }
        };
        let auth = uri
            .authority()
            .ok_or_else(|| format!("{field} `{s}` has no host"))?;
        if auth.as_str().contains('@') {
            return Err(format!("{field} `{s}` contains credentials: {credentials}"));
        }
        let host = auth.host().trim_matches(['[', ']']).to_string();
        Ok(Self {
            tls,
            tls_name: host.clone(),
            host,
            port: auth.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: auth.as_str().to_string(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        })
    }
}

/// POSTs `body` to `url` (TLS with `tls` for https) and reads at most `max_response` bytes of
/// the answer. Errors are one line for the log, naming the peer.
pub async fn post(
    url: &Url,
    tls: Option<&Arc<rustls::ClientConfig>>,
    headers: HeaderMap,
    body: Bytes,
    max_response: usize,
) -> Result<(StatusCode, Bytes), String> {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(url.path.as_str())
        .header(http::header::HOST, url.authority.as_str())
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    req.headers_mut().extend(headers);
    let tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", url.authority))?;
    let _ = tcp.set_nodelay(true);
    match tls {
        Some(cfg) => {
            let name = rustls_pki_types::ServerName::try_from(url.tls_name.clone())
                .map_err(|_| format!("`{}` is not a valid TLS name", url.tls_name))?;
            let stream = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    format!(
                        "TLS with {} failed ({}): {e}",
                        url.authority,
                        crate::tls::failure::reason(&e)
                    )
                })?;
            send(TokioIo::new(stream), req, max_response).await
        }
        None => send(TokioIo::new(tcp), req, max_response).await,
    }
}

async fn send<I>(
    io: TokioIo<I>,
    req: Request<Full<Bytes>>,
    max_response: usize,
) -> Result<(StatusCode, Bytes), String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), max_response)
        .collect()
        .await
        .map_err(|e| format!("reading the response: {e}"))?
        .to_bytes();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parts() {
        let u = Url::parse("token_url", "https://auth.example/oauth2/token?x=1", "-").unwrap();
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port), ("auth.example", 443));
        assert_eq!(u.path, "/oauth2/token?x=1");
        let u = Url::parse("token_url", "http://127.0.0.1:9000/token", "-").unwrap();
        assert_eq!((u.tls, u.port), (false, 9000));
        assert!(Url::parse("token_url", "ftp://x/token", "-").is_err());
        let e = Url::parse(
            "otlp.endpoint",
            "https://user:pw@x/v1/traces",
            "use headers",
        )
        .unwrap_err();
        assert!(
            e.contains("otlp.endpoint") && e.contains("use headers"),
            "{e}"
        );
    }
}
