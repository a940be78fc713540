//! A TLS client for tests: rustls with a chosen CA and optional client certificate, one
//! request per connection, reporting what the server presented.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;

pub fn client_config(
    ca_pem: &str,
    client: Option<(&str, &str)>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match client {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(|c| c.unwrap())
                    .collect();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// What one TLS request saw.
#[derive(Debug)]
pub struct TlsReply {
    pub status: u16,
    pub body: Bytes,
    pub headers: http::HeaderMap,
    /// The server certificate's serial, upper-case hex without leading zero bytes.
    pub server_serial: String,
    pub alpn: Option<Vec<u8>>,
}

impl TlsReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

pub fn serial_of(der: &[u8]) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    let hex: String = c.raw_serial().iter().map(|b| format!("{b:02X}")).collect();
    hex.trim_start_matches('0').to_string()
}

/// A GET over a new TLS connection; `Err` carries the handshake or request error text.
pub async fn get(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    name: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<TlsReply, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, conn) = tls.get_ref();
    let server_serial = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| serial_of(c.as_ref()))
        .unwrap_or_default();
    let alpn = conn.alpn_protocol().map(|p| p.to_vec());
    let h2 = alpn.as_deref() == Some(b"h2");
    let mut req = http::Request::get(path);
    if !h2 {
        req = req.header("host", name);
    } else {
        req = http::Request::get(format!("https://{name}{path}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    let resp = if h2 {
        let (mut tx, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(tls),
        )
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        tx.send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("h1 handshake: {e}"))?;
        tokio::spawn(conn);
        tx.send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(TlsReply {
        status,
        body,
        headers,
        server_serial,
        alpn,
    })
}
