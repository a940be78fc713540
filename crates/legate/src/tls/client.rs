//! TLS origination: the client config for one upstream, built from `upstreams[].tls` and
//! rebuilt when its files change. Verification is on unless `insecure_skip_verify` is written
//! out; `pin_spki_sha256` adds a public-key pin on top of it. Resumed sessions survive a
//! rebuild (the session cache is shared), so a certificate rotation costs no full handshakes.

use super::cert_info::CertInfo;
use super::failure::PinMismatch;
use super::load::{self, Identity, KeySource};
use super::TlsError;
use crate::config::UpstreamTls;
use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::path::PathBuf;
use std::sync::Arc;

/// Sessions kept per upstream (one per endpoint and server name in practice).
const SESSION_CACHE: usize = 256;

/// An upstream's TLS client settings and the config currently in force.
pub struct ClientTls {
    /// `upstream:<name>`, for logs and metrics.
    pub name: String,
    settings: UpstreamTls,
    alpn: Vec<Vec<u8>>,
    sessions: Arc<ClientSessionMemoryCache>,
    current: ArcSwap<ClientConfig>,
    leaf: ArcSwap<Option<CertInfo>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("name", &self.name)
            .finish()
    }
}

impl ClientTls {
    /// Loads everything `settings` names; errors name the file.
    pub fn new(name: String, settings: &UpstreamTls, alpn: &[&[u8]]) -> Result<Self, TlsError> {
        let sessions = Arc::new(ClientSessionMemoryCache::new(SESSION_CACHE));
        let alpn: Vec<Vec<u8>> = match &settings.alpn {
            Some(list) => list.iter().map(|p| p.as_bytes().to_vec()).collect(),
            None => alpn.iter().map(|p| p.to_vec()).collect(),
        };
        let (config, leaf) = build(settings, &alpn, &sessions)?;
        if settings.insecure_skip_verify {
            tracing::warn!(tls = %name, "insecure_skip_verify is on: the upstream's certificate is NOT verified; anyone on the path can impersonate it");
        }
        Ok(Self {
            name,
            settings: settings.clone(),
            alpn,
            sessions,
            current: ArcSwap::from_pointee(config),
            leaf: ArcSwap::from_pointee(leaf),
        })
    }

    pub fn config(&self) -> Arc<ClientConfig> {
        self.current.load_full()
    }

    pub fn settings(&self) -> &UpstreamTls {
        &self.settings
    }

    /// The client certificate's details, if one is configured (for the expiry gauge).
    pub fn reload(&self) -> Result<Option<CertInfo>, TlsError> {
        let (config, leaf) = build(&self.settings, &self.alpn, &self.sessions)?;
        self.current.store(Arc::new(config));
        self.leaf.store(Arc::new(leaf.clone()));
        Ok(leaf)
    }

    /// Files whose change means a rebuild.
    pub fn files(&self) -> Result<Vec<PathBuf>, TlsError> {
        files(&self.settings)
    }
}

impl crate::lifecycle::files::Reloadable for ClientTls {
    fn name(&self) -> &str {
        &self.name
    }
    fn files(&self) -> Vec<PathBuf> {
        ClientTls::files(self).unwrap_or_default()
    }
    fn reload(&self) -> Result<Option<CertInfo>, String> {
        ClientTls::reload(self).map_err(|e| e.to_string())
    }
    fn leaf(&self) -> Option<CertInfo> {
        (**self.leaf.load()).clone()
    }
}

pub fn files(s: &UpstreamTls) -> Result<Vec<PathBuf>, TlsError> {
    let mut out = Vec::new();
    if let Some(ca) = &s.ca {
        out.extend(load::ca_files(ca)?);
    }
    if let Some(src) = key_source(s) {
        out.extend(src.files());
    }
    Ok(out)
}

/// Where the client certificate comes from, if there is one.
pub fn key_source(s: &UpstreamTls) -> Option<KeySource> {
    KeySource::from_settings(&s.client_cert, &s.client_key, &s.pkcs12)
}

/// Builds the whole client config (and loads the client certificate, if any).
pub fn build(
    s: &UpstreamTls,
    alpn: &[Vec<u8>],
    sessions: &Arc<ClientSessionMemoryCache>,
) -> Result<(ClientConfig, Option<CertInfo>), TlsError> {
    let provider = super::provider(&s.cipher_suites)?;
    let versions = super::versions(s.min_version, s.max_version)?;
    let verifier: Arc<dyn ServerCertVerifier> = if s.insecure_skip_verify {
        Arc::new(AcceptAny {
            provider: provider.clone(),
        })
    } else {
        let roots = match &s.ca {
            Some(ca) => Arc::new(load::read_ca(ca)?),
            None => super::system_roots(),
        };
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| {
                TlsError::Settings(format!("cannot build the certificate verifier: {e}"))
            })?;
        if s.pin_spki_sha256.is_empty() {
            webpki
        } else {
            Arc::new(Pinned {
                inner: webpki,
                pins: decode_pins(&s.pin_spki_sha256)?,
            })
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| {
            TlsError::Settings(format!(
                "TLS versions and cipher_suites do not fit together: {e}"
            ))
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let (mut config, leaf) = match key_source(s) {
        Some(src) => {
            let Identity { key, leaf } = load::load_identity(&src)?;
            let resolver = Arc::new(rustls::sign::SingleCertAndKey::from(key));
            (builder.with_client_cert_resolver(resolver), Some(leaf))
        }
        None => (builder.with_no_client_auth(), None),
    };
    config.alpn_protocols = alpn.to_vec();
    config.resumption = if s.session_resumption {
        Resumption::store(sessions.clone())
    } else {
        Resumption::disabled()
    };
    Ok((config, leaf))
}

/// Base64 (standard alphabet, padding optional) SHA-256 pins.
pub fn decode_pins(pins: &[String]) -> Result<Vec<[u8; 32]>, TlsError> {
    pins.iter()
        .map(|p| {
            base64_decode(p.trim())
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    TlsError::Settings(format!(
                        "pin_spki_sha256 `{p}` is not the base64 of a SHA-256 digest (44 characters, e.g. from `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`)"
                    ))
                })
        })
        .collect()
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

pub fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Normal verification, then the public key must be one of the pins.
#[derive(Debug)]
struct Pinned {
    inner: Arc<WebPkiServerVerifier>,
    pins: Vec<[u8; 32]>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        let info = CertInfo::parse(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if self.pins.contains(&info.spki_sha256) {
            Ok(ok)
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch {
                    got: base64_encode(&info.spki_sha256),
                }))),
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecure_skip_verify: true`: any certificate, any name. Handshake signatures are still
/// checked, so the peer must at least hold the key of the certificate it shows.
#[derive(Debug)]
struct AcceptAny {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", &[0xffu8; 32]] {
            let e = base64_encode(data);
            assert_eq!(base64_decode(&e).unwrap(), data, "{e}");
        }
        assert_eq!(base64_encode(b"foob"), "Zm9vYg==");
        assert!(decode_pins(&["not base64!".into()]).is_err());
        assert!(decode_pins(&[base64_encode(&[7; 32])]).is_ok());
        assert!(decode_pins(&[base64_encode(&[7; 31])]).is_err());
    }
}
