//! Who a TLS client is and whether it may connect: the allow-list over the verified client
//! certificate's SANs and CN (`*` matches any run of characters, so
//! `spiffe://cluster.local/ns/*/sa/orders` admits the orders service account in any
//! namespace), and the `x-forwarded-client-cert` value the local app receives.

use super::cert_info::CertInfo;
use crate::config::AllowList;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;

/// `*` matches any run of characters (including `/` and `.`); everything else is literal and
/// case-sensitive, except DNS names, which compare case-insensitively.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// The compiled `allow:` of a listener.
#[derive(Debug, Clone, Default)]
pub struct Allow {
    list: AllowList,
}

impl Allow {
    pub fn new(list: &AllowList) -> Self {
        Self { list: list.clone() }
    }

    pub fn is_open(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether a verified certificate with these identities may connect.
    pub fn permits(&self, c: &CertInfo) -> bool {
        if self.list.is_empty() {
            return true;
        }
        let dns = |p: &String| {
            c.dns
                .iter()
                .any(|d| glob_match(&p.to_ascii_lowercase(), &d.to_ascii_lowercase()))
        };
        let uri = |p: &String| c.uri.iter().any(|u| glob_match(p, u));
        let cn = |p: &String| c.common_name.as_ref().is_some_and(|n| glob_match(p, n));
        self.list.dns.iter().any(dns)
            || self.list.uri.iter().any(uri)
            || self.list.cn.iter().any(cn)
    }
}

/// Why a client certificate that chains to `client_ca` was still refused.
#[derive(Debug, thiserror::Error)]
#[error("client certificate `{identity}` is not in the listener's allow list")]
pub struct NotAllowed {
    pub identity: String,
}

/// The CA check, then the allow-list, during the handshake: a refused client gets a TLS alert
/// (`access_denied`), not a connection that HTTP later has to turn away.
#[derive(Debug)]
pub struct AllowListVerifier {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub allow: Allow,
}

impl ClientCertVerifier for AllowListVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.allow.is_open() {
            return Ok(verified);
        }
        let info = CertInfo::parse(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if self.allow.permits(&info) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(NotAllowed {
                    identity: info.identity(),
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

/// Envoy's `x-forwarded-client-cert` element for a verified client:
/// `By=<our URI SAN>;Hash=<SHA-256 of the client cert DER, hex>;Subject="…";URI=…;DNS=…`.
pub fn xfcc(by: Option<&str>, client_der: &[u8], c: &CertInfo) -> String {
    let mut out = String::new();
    if let Some(by) = by {
        out.push_str("By=");
        out.push_str(by);
        out.push(';');
    }
    out.push_str("Hash=");
    for b in ring::digest::digest(&ring::digest::SHA256, client_der).as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out.push_str(";Subject=\"");
    out.push_str(&c.subject.replace('\\', "\\\\").replace('"', "\\\""));
    out.push('"');
    for u in &c.uri {
        out.push_str(";URI=");
        out.push_str(u);
    }
    for d in &c.dns {
        out.push_str(";DNS=");
        out.push_str(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(dns: &[&str], uri: &[&str], cn: Option<&str>) -> CertInfo {
        CertInfo {
            not_before: 0,
            not_after: i64::MAX,
            serial: "01".into(),
            subject: "CN=x".into(),
            common_name: cn.map(str::to_string),
            dns: dns.iter().map(|s| s.to_string()).collect(),
            uri: uri.iter().map(|s| s.to_string()).collect(),
            spki_sha256: [0; 32],
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("a", "a"));
        assert!(!glob_match("a", "ab"));
        assert!(glob_match("*", "anything/at.all"));
        assert!(glob_match(
            "spiffe://cluster.local/ns/*/sa/orders",
            "spiffe://cluster.local/ns/shop/sa/orders"
        ));
        assert!(!glob_match(
            "spiffe://cluster.local/ns/*/sa/orders",
            "spiffe://cluster.local/ns/shop/sa/payments"
        ));
        assert!(glob_match(
            "*.svc.cluster.local",
            "orders.shop.svc.cluster.local"
        ));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXcYYb"));
        assert!(
            !glob_match("ab*ba", "aba"),
            "prefix and suffix may not overlap"
        );
    }

    #[test]
    fn allow_list_over_sans_and_cn() {
        let allow = Allow::new(&AllowList {
            dns: vec!["*.example.com".into()],
            uri: vec!["spiffe://cluster.local/ns/*/sa/orders".into()],
            cn: vec!["legacy-client".into()],
        });
        assert!(allow.permits(&cert(&["API.Example.com"], &[], None)));
        assert!(allow.permits(&cert(&[], &["spiffe://cluster.local/ns/a/sa/orders"], None)));
        assert!(allow.permits(&cert(&[], &[], Some("legacy-client"))));
        assert!(!allow.permits(&cert(
            &["example.org"],
            &["spiffe://x/sa/orders"],
            Some("other")
        )));
        assert!(Allow::new(&AllowList::default()).permits(&cert(&[], &[], None)));
    }

    #[test]
    fn xfcc_format() {
        let c = cert(&["a.test"], &["spiffe://t/sa/a"], None);
        let v = xfcc(Some("spiffe://t/sa/b"), b"der", &c);
        assert!(v.starts_with("By=spiffe://t/sa/b;Hash="), "{v}");
        assert!(
            v.ends_with(";Subject=\"CN=x\";URI=spiffe://t/sa/a;DNS=a.test"),
            "{v}"
        );
    }
}
