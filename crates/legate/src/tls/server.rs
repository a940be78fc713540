//! TLS termination for a listener: server certificate, optional client certificates checked
//! against `client_ca` and the `allow` list during the handshake, and the per-connection facts
//! the HTTP layer needs (ALPN, the client's identity for `forward_client_cert`).

use super::cert_info::CertInfo;
use super::identity::{Allow, AllowListVerifier};
use super::load::{self, Identity, KeySource};
use super::TlsError;
use crate::config::ListenerTls;
use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::ServerConfig;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const SESSION_CACHE: usize = 1024;

/// A listener's TLS settings and the config currently in force.
pub struct ServerTls {
    /// `listener:<name>`, for logs and metrics.
    pub name: String,
    settings: ListenerTls,
    current: ArcSwap<ServerConfig>,
    /// Our own URI SAN (SPIFFE ID), the `By=` of the forwarded client certificate.
    own_uri: ArcSwap<Option<String>>,
    leaf: ArcSwap<CertInfo>,
    pub forward_client_cert: Option<HeaderName>,
    pub handshake_timeout: Duration,
}

impl ServerTls {
    pub fn new(name: String, settings: &ListenerTls) -> Result<(Self, CertInfo), TlsError> {
        let (config, leaf) = build(settings)?;
        let forward_client_cert = settings
            .forward_client_cert
            .as_deref()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    TlsError::Settings(format!("forward_client_cert `{h}` is not a header name"))
                })
            })
            .transpose()?;
        Ok((
            Self {
                name,
                settings: settings.clone(),
                current: ArcSwap::from_pointee(config),
                own_uri: ArcSwap::from_pointee(leaf.uri.first().cloned()),
                leaf: ArcSwap::from_pointee(leaf.clone()),
                forward_client_cert,
                handshake_timeout: settings.handshake_timeout.get(),
            },
            leaf,
        ))
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    pub fn reload(&self) -> Result<CertInfo, TlsError> {
        let (config, leaf) = build(&self.settings)?;
        self.current.store(Arc::new(config));
        self.own_uri.store(Arc::new(leaf.uri.first().cloned()));
        self.leaf.store(Arc::new(leaf.clone()));
        Ok(leaf)
    }

    pub fn files(&self) -> Result<Vec<PathBuf>, TlsError> {
        files(&self.settings)
    }

    /// The forwarded-client-cert value for a connection whose client showed `chain`.
    pub fn xfcc(
        &self,
        chain: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    ) -> Option<HeaderValue> {
        self.forward_client_cert.as_ref()?;
        let leaf = chain?.first()?;
        let info = CertInfo::parse(leaf).ok()?;
        let own = self.own_uri.load();
        let value = super::identity::xfcc((**own).as_deref(), leaf.as_ref(), &info);
        HeaderValue::from_str(&value).ok()
    }
}

impl crate::lifecycle::files::Reloadable for ServerTls {
    fn name(&self) -> &str {
        &self.name
    }
    fn files(&self) -> Vec<PathBuf> {
        ServerTls::files(self).unwrap_or_default()
    }
    fn reload(&self) -> Result<Option<CertInfo>, String> {
        ServerTls::reload(self).map(Some).map_err(|e| e.to_string())
    }
    fn leaf(&self) -> Option<CertInfo> {
        Some((**self.leaf.load()).clone())
    }
}

pub fn key_source(s: &ListenerTls) -> Option<KeySource> {
    KeySource::from_settings(&s.cert, &s.key, &s.pkcs12)
}

pub fn files(s: &ListenerTls) -> Result<Vec<PathBuf>, TlsError> {
    let mut out = Vec::new();
    if let Some(src) = key_source(s) {
        out.extend(src.files());
    }
    if let Some(ca) = &s.client_ca {
        out.extend(load::ca_files(ca)?);
    }
    Ok(out)
}

/// Builds the whole server config. Each build gets a fresh session cache: after a rotation
/// every client does one full handshake and sees the new certificate (a rotation may be the
/// answer to a compromised key, so old sessions must not outlive it).
pub fn build(s: &ListenerTls) -> Result<(ServerConfig, CertInfo), TlsError> {
    let provider = super::provider(&s.cipher_suites)?;
    let versions = super::versions(s.min_version, s.max_version)?;
    let src = key_source(s).ok_or_else(|| {
        TlsError::Settings("a TLS listener needs `cert` and `key`, or `pkcs12`".into())
    })?;
    let Identity { key, leaf } = load::load_identity(&src)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| {
            TlsError::Settings(format!(
                "TLS versions and cipher_suites do not fit together: {e}"
            ))
        })?;
    let builder = match &s.client_ca {
        Some(ca) => {
            let roots = Arc::new(load::read_ca(ca)?);
            let mut v = WebPkiClientVerifier::builder_with_provider(roots, provider);
            if !s.requires_client_cert() {
                v = v.allow_unauthenticated();
            }
            let inner = v.build().map_err(|e| TlsError::Ca {
                file: ca.clone(),
                detail: e.to_string(),
            })?;
            builder.with_client_cert_verifier(Arc::new(AllowListVerifier {
                inner,
                allow: Allow::new(&s.allow),
            }))
        }
        None => builder.with_no_client_auth(),
    };
    let mut config =
        builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    config.alpn_protocols = match &s.alpn {
        Some(list) => list.iter().map(|p| p.as_bytes().to_vec()).collect(),
        None => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    Ok((config, leaf))
}

/// The TLS handshake of an inbound connection (HTTP or TCP listener), bounded by
/// `handshake_timeout`. Failures are logged with the peer (and, for a certificate the allow list
/// refused, its identity) and counted by reason, which is returned for the caller's own log.
pub async fn accept<IO>(
    tls: &ServerTls,
    listener: &str,
    metrics: &crate::telemetry::metrics::Metrics,
    peer: Option<std::net::SocketAddr>,
    stream: IO,
) -> Result<tokio_rustls::server::TlsStream<IO>, &'static str>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use crate::telemetry::metrics::{ListenerLabels, TlsFailureLabels};
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
    let failed = |reason: &str| {
        metrics
            .tls_handshake_failures
            .get_or_create(&TlsFailureLabels {
                listener: listener.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    };
    match tokio::time::timeout(tls.handshake_timeout, acceptor.accept(stream)).await {
        Err(_) => {
            failed("tls-handshake-timeout");
            tracing::info!(listener, peer = ?peer, timeout = ?tls.handshake_timeout,
                "TLS handshake not finished in time; closing");
            Err("tls-handshake-timeout")
        }
        Ok(Err(e)) => {
            let reason = super::failure::reason(&e);
            failed(reason);
            let detail =
                super::failure::rustls_error(&e).map_or_else(|| e.to_string(), |r| r.to_string());
            match super::failure::refused_identity(&e) {
                Some(identity) => {
                    tracing::warn!(listener, peer = ?peer, identity, reason,
                    "client certificate refused: identity not in the allow list")
                }
                None => {
                    tracing::warn!(listener, peer = ?peer, reason, error = %detail,
                    "inbound TLS handshake failed")
                }
            }
            Err(reason)
        }
        Ok(Ok(s)) => {
            metrics
                .tls_handshakes
                .get_or_create(&ListenerLabels {
                    listener: listener.to_string(),
                })
                .inc();
            Ok(s)
        }
    }
}
