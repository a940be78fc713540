//! What legate needs to know about a certificate: validity (to refuse expired material and
//! publish the expiry gauge), serial, and the identities it carries (for the allow-list and
//! the forwarded client-certificate header).

use rustls_pki_types::CertificateDer;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// Colon-separated hex, as `openssl x509 -serial` prints it (without the colons there).
    pub serial: String,
    pub subject: String,
    pub common_name: Option<String>,
    pub dns: Vec<String>,
    pub uri: Vec<String>,
    /// SHA-256 of the DER SubjectPublicKeyInfo, the value `pin_spki_sha256` is compared with.
    pub spki_sha256: [u8; 32],
}

impl CertInfo {
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
        let validity = cert.validity();
        let mut dns = Vec::new();
        let mut uri = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(d) => dns.push(d.to_string()),
                    x509_parser::extensions::GeneralName::URI(u) => uri.push(u.to_string()),
                    _ => {}
                }
            }
        }
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
        let mut spki_sha256 = [0u8; 32];
        spki_sha256.copy_from_slice(digest.as_ref());
        Ok(Self {
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            serial: cert
                .raw_serial()
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect(),
            subject: cert.subject().to_string(),
            common_name,
            dns,
            uri,
            spki_sha256,
        })
    }

    /// Why this certificate cannot be used now, if it cannot.
    pub fn validity_problem(&self, now: SystemTime) -> Option<String> {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if now > self.not_after {
            Some(format!(
                "certificate `{}` expired at {} (unix {})",
                self.subject,
                super::format_unix(self.not_after),
                self.not_after
            ))
        } else if now < self.not_before {
            Some(format!(
                "certificate `{}` is not valid before {} (unix {})",
                self.subject,
                super::format_unix(self.not_before),
                self.not_before
            ))
        } else {
            None
        }
    }

    /// A one-line identity for logs: the URI SAN (SPIFFE ID), else DNS SAN, else CN.
    pub fn identity(&self) -> String {
        self.uri
            .first()
            .or(self.dns.first())
            .or(self.common_name.as_ref())
            .cloned()
            .unwrap_or_else(|| self.subject.clone())
    }
}

/// RFC 5929 `tls-server-end-point` channel binding: the certificate hashed with its signature's
/// hash algorithm (SHA-256 when that is MD5 or SHA-1). `None` for algorithms without one
/// (Ed25519) or certificates that do not parse: the login then goes without binding.
pub fn end_point_hash(der: &[u8]) -> Option<Vec<u8>> {
    use ring::digest;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let oid = cert.signature_algorithm.algorithm.to_id_string();
    let alg = match oid.as_str() {
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => &digest::SHA384,
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => &digest::SHA512,
        // sha256 RSA/ECDSA, RSASSA-PSS (SHA-256 in practice), and MD5/SHA-1 per RFC 5929
        "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.3.2"
        | "1.2.840.113549.1.1.10"
        | "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.10045.4.1" => &digest::SHA256,
        _ => return None,
    };
    Some(digest::digest(alg, der).as_ref().to_vec())
}
