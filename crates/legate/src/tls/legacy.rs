//! TLS 1.0/1.1 upstreams through the system OpenSSL (cargo feature `legacy-tls`). rustls will
//! never speak these versions; old bank and mainframe gateways still do (the seed's legacy
//! mTLS backend). OpenSSL 3 refuses them at its default security level, so a legacy minimum
//! version lowers it to 0 and uses `DEFAULT@SECLEVEL=0` unless `openssl_ciphers` says
//! otherwise. Verification, SNI, client certificates (PEM or PKCS#12) and ALPN work as with
//! rustls; the connector is rebuilt when its files change.

use super::cert_info::CertInfo;
use super::load;
use super::TlsError;
use crate::config::{TlsVersion, UpstreamTls};
use arc_swap::ArcSwap;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::TcpStream;

pub type Stream = tokio_openssl::SslStream<TcpStream>;

pub struct LegacyTls {
    pub name: String,
    settings: UpstreamTls,
    alpn: Vec<u8>,
    pins: Vec<[u8; 32]>,
    connector: ArcSwap<SslConnector>,
    leaf: ArcSwap<Option<CertInfo>>,
}

impl std::fmt::Debug for LegacyTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyTls")
            .field("name", &self.name)
            .finish()
    }
}

fn ossl(what: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Settings(format!("OpenSSL: {what}: {e}"))
}

fn version(v: TlsVersion) -> SslVersion {
    match v {
        TlsVersion::V1_0 => SslVersion::TLS1,
        TlsVersion::V1_1 => SslVersion::TLS1_1,
        TlsVersion::V1_2 => SslVersion::TLS1_2,
        TlsVersion::V1_3 => SslVersion::TLS1_3,
    }
}

fn build(s: &UpstreamTls, alpn: &[u8]) -> Result<(SslConnector, Option<CertInfo>), TlsError> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| ossl("init", e))?;
    b.set_min_proto_version(s.min_version.map(version))
        .map_err(|e| ossl("min_version", e))?;
    b.set_max_proto_version(s.max_version.map(version))
        .map_err(|e| ossl("max_version", e))?;
    let legacy = s.min_version.is_some_and(|v| v < TlsVersion::V1_2);
    match (&s.openssl_ciphers, legacy) {
        (Some(c), _) => b
            .set_cipher_list(c)
            .map_err(|e| ossl(&format!("openssl_ciphers `{c}`"), e))?,
        (None, true) => b
            .set_cipher_list("DEFAULT@SECLEVEL=0")
            .map_err(|e| ossl("cipher list", e))?,
        (None, false) => {}
    }
    if legacy {
        b.set_security_level(0);
    }
    if let Some(ca) = &s.ca {
        // Only the configured CA, not the system roots as well.
        let mut store =
            openssl::x509::store::X509StoreBuilder::new().map_err(|e| ossl("CA store", e))?;
        for f in load::ca_files(ca)? {
            for der in load::read_certs(&f)? {
                let x = openssl::x509::X509::from_der(der.as_ref()).map_err(|e| TlsError::Ca {
                    file: f.clone(),
                    detail: e.to_string(),
                })?;
                store.add_cert(x).map_err(|e| TlsError::Ca {
                    file: f.clone(),
                    detail: e.to_string(),
                })?;
            }
        }
        b.set_cert_store(store.build());
    }
    let mut leaf = None;
    if let Some(src) = super::client::key_source(s) {
        // Same loading and checks as the rustls path (key matches, not expired), then handed
        // to OpenSSL as DER.
        let identity = load::load_identity(&src)?;
        let file = src.cert_file().to_path_buf();
        let chain = &identity.key.cert;
        let x = |der: &[u8]| {
            openssl::x509::X509::from_der(der).map_err(|e| TlsError::Pem {
                file: file.clone(),
                detail: e.to_string(),
            })
        };
        let leaf_cert = x(chain[0].as_ref())?;
        b.set_certificate(&leaf_cert)
            .map_err(|e| ossl("client certificate", e))?;
        for c in &chain[1..] {
            b.add_extra_chain_cert(x(c.as_ref())?)
                .map_err(|e| ossl("client certificate chain", e))?;
        }
        let key_der = match &src {
            load::KeySource::Pem { key, .. } => load::read_key(key)?,
            load::KeySource::Pkcs12 {
                file,
                password_file,
            } => load::read_pkcs12(file, password_file.as_deref())?.1,
        };
        let pkey = openssl::pkey::PKey::private_key_from_der(key_der.secret_der())
            .map_err(|e| ossl("client key", e))?;
        b.set_private_key(&pkey)
            .map_err(|e| ossl("client key", e))?;
        b.check_private_key().map_err(|e| ossl("client key", e))?;
        leaf = Some(identity.leaf);
    }
    if !alpn.is_empty() {
        b.set_alpn_protos(alpn).map_err(|e| ossl("alpn", e))?;
    }
    if s.insecure_skip_verify {
        b.set_verify(SslVerifyMode::NONE);
    }
    Ok((b.build(), leaf))
}

impl LegacyTls {
    pub fn new(name: String, s: &UpstreamTls, alpn: &[&[u8]]) -> Result<Self, TlsError> {
        let protos: Vec<&[u8]> = match &s.alpn {
            Some(list) => list.iter().map(|p| p.as_bytes()).collect(),
            None => alpn.to_vec(),
        };
        let mut wire = Vec::new();
        for p in protos {
            wire.push(p.len() as u8);
            wire.extend_from_slice(p);
        }
        let (connector, leaf) = build(s, &wire)?;
        let pins = super::client::decode_pins(&s.pin_spki_sha256)?;
        tracing::info!(tls = %name, min_version = ?s.min_version.map(|v| v.as_str()), "TLS via OpenSSL (legacy-tls)");
        Ok(Self {
            name,
            settings: s.clone(),
            alpn: wire,
            pins,
            connector: ArcSwap::from_pointee(connector),
            leaf: ArcSwap::from_pointee(leaf),
        })
    }

    /// Handshake with `host` (SNI and name check) over `tcp`; on failure, the reason and
    /// OpenSSL's own words.
    pub async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> Result<Stream, (&'static str, String)> {
        let verify = !self.settings.insecure_skip_verify;
        let ssl = self
            .connector
            .load()
            .configure()
            .and_then(|c| c.verify_hostname(verify).into_ssl(host))
            .map_err(|e| ("tls-handshake", e.to_string()))?;
        let mut stream = Stream::new(ssl, tcp).map_err(|e| ("tls-handshake", e.to_string()))?;
        match Pin::new(&mut stream).connect().await {
            Ok(()) if self.pins.is_empty() => Ok(stream),
            Ok(()) => {
                let spki = stream
                    .ssl()
                    .peer_certificate()
                    .and_then(|c| c.public_key().ok())
                    .and_then(|k| k.public_key_to_der().ok())
                    .unwrap_or_default();
                let digest = ring::digest::digest(&ring::digest::SHA256, &spki);
                if self.pins.iter().any(|p| p.as_slice() == digest.as_ref()) {
                    Ok(stream)
                } else {
                    Err((
                        "tls-pin-mismatch",
                        super::failure::PinMismatch {
                            got: super::client::base64_encode(digest.as_ref()),
                        }
                        .to_string(),
                    ))
                }
            }
            Err(e) => {
                let v = stream.ssl().verify_result();
                let reason = match v.as_raw() {
                    0 => version_or_generic(&e.to_string()),
                    9 => "tls-cert-not-yet-valid",
                    10 => "tls-cert-expired",
                    18 | 19 | 20 | 21 | 7 => "tls-unknown-ca",
                    23 => "tls-cert-revoked",
                    62 | 64 => "tls-hostname-mismatch",
                    _ => "tls-bad-certificate",
                };
                let detail = if v.as_raw() == 0 {
                    e.to_string()
                } else {
                    format!("{}: {e}", v.error_string())
                };
                Err((reason, detail))
            }
        }
    }

    pub fn files(&self) -> Result<Vec<PathBuf>, TlsError> {
        super::client::files(&self.settings)
    }
}

fn version_or_generic(msg: &str) -> &'static str {
    let m = msg.to_ascii_lowercase();
    if m.contains("protocol version") || m.contains("unsupported protocol") {
        "tls-version-mismatch"
    } else if m.contains("handshake failure")
        || m.contains("no ciphers")
        || m.contains("no shared cipher")
    {
        "tls-no-shared-cipher"
    } else {
        "tls-handshake"
    }
}

impl crate::lifecycle::files::Reloadable for LegacyTls {
    fn name(&self) -> &str {
        &self.name
    }
    fn files(&self) -> Vec<PathBuf> {
        LegacyTls::files(self).unwrap_or_default()
    }
    fn reload(&self) -> Result<Option<CertInfo>, String> {
        let (c, leaf) = build(&self.settings, &self.alpn).map_err(|e| e.to_string())?;
        self.connector.store(Arc::new(c));
        self.leaf.store(Arc::new(leaf.clone()));
        Ok(leaf)
    }
    fn leaf(&self) -> Option<CertInfo> {
        (**self.leaf.load()).clone()
    }
}
