//! TLS origination with certificates made here: the upstream's certificate is verified against
//! the system roots (pointed at a test CA with SSL_CERT_FILE, as rustls-native-certs honours it),
//! ALPN picks HTTP/2 when the server offers it, and a wrong name or an untrusted CA is a 502
//! with `legate-error: tls-hostname-mismatch` / `tls-unknown-ca`.

mod common;

use common::*;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

struct Pki {
    ca_file: std::path::PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

/// One test CA per process, installed as the "system" roots before legate first loads them.
fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "legate test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        // For the whole test process (SSL_CERT_FILE), so it cannot be removed when done: kept
        // under cargo's per-target scratch directory rather than littering /tmp.
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("tls-upstream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        std::env::set_var("SSL_CERT_FILE", &ca_file);
        std::env::remove_var("SSL_CERT_DIR");
        Pki {
            ca_file,
            ca,
            ca_key,
        }
    })
}

fn server_cert(
    names: &[&str],
    signer: Option<(&rcgen::Certificate, &KeyPair)>,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = match signer {
        Some((ca, ca_key)) => params.signed_by(&key, ca, ca_key).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    (
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// A TLS upstream answering with the HTTP version it saw and the SNI it was asked for.
async fn tls_upstream(
    alpn: &[&[u8]],
    cert: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert.0, cert.1)
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("").to_string();
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let svc = service_fn(move |req: hyper::Request<Incoming>| {
                    let body = format!(
                        "{{\"version\":\"{:?}\",\"sni\":\"{sni}\",\"host\":\"{}\"}}",
                        req.version(),
                        req.uri()
                            .authority()
                            .map(|a| a.to_string())
                            .or_else(|| req
                                .headers()
                                .get("host")
                                .map(|h| h.to_str().unwrap_or("").to_string()))
                            .unwrap_or_default()
                    );
                    async move { Ok::<_, Infallible>(hyper::Response::new(full(body))) }
                });
                let io = TokioIo::new(tls);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    addr
}

fn tls_config(addr: SocketAddr, upstream_extra: &str) -> String {
    format!(
        r#"
admin: {{ listen: off }}
runtime: {{ workers: 1 }}
listeners:
  - name: app
    listen: 127.0.0.1:0
    routes: [{{ name: default, upstream: bank }}]
upstreams:
  - name: bank
    url: https://localhost:{}
{upstream_extra}
"#,
        addr.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_negotiates_h2_and_verifies_the_certificate() {
    let p = pki();
    assert!(p.ca_file.exists());
    let addr = tls_upstream(
        &[b"h2", b"http/1.1"],
        server_cert(&["localhost"], Some((&p.ca, &p.ca_key))),
    )
    .await;
    let legate = Legate::start(&tls_config(addr, ""));
    let r = get(legate.addr, "/").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let j = r.json();
    assert_eq!(j["version"], "HTTP/2.0");
    assert_eq!(j["sni"], "localhost");
    assert_eq!(j["host"], format!("localhost:{}", addr.port()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_over_http1_when_alpn_says_so() {
    let p = pki();
    let addr = tls_upstream(
        &[b"http/1.1"],
        server_cert(&["localhost"], Some((&p.ca, &p.ca_key))),
    )
    .await;
    let legate = Legate::start(&tls_config(addr, ""));
    let mut c = Client::h1(legate.addr).await;
    for _ in 0..5 {
        let r = c.get("/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["version"], "HTTP/1.1");
    }
    let m = legate.metrics();
    assert_eq!(
        metric(
            &m,
            "legate_upstream_connections_opened_total",
            &["upstream=\"bank\""]
        ),
        Some(1.0),
        "TLS connections are pooled too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_name_and_untrusted_ca_are_refused() {
    let p = pki();
    let addr = tls_upstream(
        &[b"http/1.1"],
        server_cert(&["other.example"], Some((&p.ca, &p.ca_key))),
    )
    .await;
    let legate = Legate::start(&tls_config(addr, ""));
    let r = get(legate.addr, "/").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("legate-error"), Some("tls-hostname-mismatch"));
    assert!(
        String::from_utf8_lossy(&r.body).contains("other.example"),
        "the body names the certificate's names: {:?}",
        r.body
    );

    // The same certificate is accepted when server_name says which name to verify.
    let named = Legate::start(&tls_config(addr, "    tls: { server_name: other.example }"));
    let r = get(named.addr, "/").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["sni"], "other.example");

    let rogue = tls_upstream(&[b"http/1.1"], server_cert(&["localhost"], None)).await;
    let legate = Legate::start(&tls_config(rogue, ""));
    let r = get(legate.addr, "/").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("legate-error"), Some("tls-unknown-ca"));
}
