//! TLS for both directions, one module for the HTTP and TCP paths: origination to upstreams
//! (`client`), termination on listeners (`server`), the material they load (`load`,
//! `cert_info`), who a peer is and whether it may connect (`identity`), and what a failed
//! handshake means (`failure`). Configs are rebuilt whole when their files change and swapped
//! in atomically: new handshakes use the new material, established connections keep theirs.

pub mod cert_info;
pub mod client;
pub mod failure;
pub mod identity;
#[cfg(feature = "legacy-tls")]
pub mod legacy;
pub mod load;
pub mod server;

use crate::config::TlsVersion;
use rustls::crypto::CryptoProvider;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// Why TLS material could not be loaded or a TLS config built. Each names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not valid PEM: {detail}", file.display())]
    Pem { file: PathBuf, detail: String },
    #[error("{} holds no certificate (expected a PEM `BEGIN CERTIFICATE` block)", file.display())]
    NoCertificate { file: PathBuf },
    #[error("{} holds no private key (expected PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`)", file.display())]
    NoKey { file: PathBuf },
    #[error("the private key in {} does not belong to the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: {problem}", file.display())]
    Validity { file: PathBuf, problem: String },
    #[error("{}: unsupported private key: {detail}", file.display())]
    UnsupportedKey { file: PathBuf, detail: String },
    #[error("{}: wrong PKCS#12 password (check password_file)", file.display())]
    Pkcs12Password { file: PathBuf },
    #[error("{} is not a usable PKCS#12 file: {detail}", file.display())]
    Pkcs12 { file: PathBuf, detail: String },
    #[error("{}: CA certificate rejected: {detail}", file.display())]
    Ca { file: PathBuf, detail: String },
    #[error("{}: {problem}", file.display())]
    Secret {
        file: PathBuf,
        problem: &'static str,
    },
    #[error("{0}")]
    Settings(String),
    #[error("TLS {version} needs legate built with `--features legacy-tls` (OpenSSL); this build has rustls only, which supports TLS 1.2 and 1.3")]
    LegacyNeedsFeature { version: String },
}

/// The crypto provider, with `cipher_suites` (IANA names) if given.
pub fn provider(cipher_suites: &[String]) -> Result<Arc<CryptoProvider>, TlsError> {
    let mut p = rustls::crypto::ring::default_provider();
    if !cipher_suites.is_empty() {
        let wanted: Vec<String> = cipher_suites.iter().map(|s| canonical_suite(s)).collect();
        p.cipher_suites
            .retain(|s| wanted.iter().any(|w| *w == suite_name(s)));
        if p.cipher_suites.is_empty() {
            return Err(TlsError::Settings(format!(
                "none of the cipher_suites {cipher_suites:?} is supported; known: {}",
                known_suites().join(", ")
            )));
        }
    }
    Ok(Arc::new(p))
}

/// The IANA name of a suite (rustls spells TLS 1.3 suites `TLS13_…`, IANA `TLS_…`).
fn suite_name(s: &rustls::SupportedCipherSuite) -> String {
    canonical_suite(s.suite().as_str().unwrap_or("unknown"))
}

fn canonical_suite(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    match upper.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => upper,
    }
}

/// Cipher suites legate can offer, by IANA name.
pub fn known_suites() -> Vec<String> {
    rustls::crypto::ring::default_provider()
        .cipher_suites
        .iter()
        .map(suite_name)
        .collect()
}

/// The rustls protocol versions between `min` and `max` (TLS 1.2 and 1.3 only).
pub fn versions(
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, TlsError> {
    let min = min.unwrap_or(TlsVersion::V1_2);
    let max = max.unwrap_or(TlsVersion::V1_3);
    if min < TlsVersion::V1_2 {
        return Err(TlsError::LegacyNeedsFeature {
            version: min.to_string(),
        });
    }
    let mut out = Vec::new();
    if min <= TlsVersion::V1_2 && max >= TlsVersion::V1_2 {
        out.push(&rustls::version::TLS12);
    }
    if max >= TlsVersion::V1_3 {
        out.push(&rustls::version::TLS13);
    }
    if out.is_empty() {
        return Err(TlsError::Settings(format!(
            "min_version {min} is above max_version {max}"
        )));
    }
    Ok(out)
}

/// The system's CA certificates, read once.
pub fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for err in &found.errors {
                tracing::warn!(error = %err, "could not read some system CA certificates");
            }
            let (added, ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    ignored,
                    "no system CA certificates found: TLS upstreams will fail to verify"
                );
            }
            Arc::new(store)
        })
        .clone()
}

/// `2026-11-26T06:15:51Z` for a Unix time, without a date library.
pub fn format_unix(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_unix_times() {
        assert_eq!(format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(784_111_777), "1994-11-06T08:49:37Z");
        assert_eq!(format_unix(1_795_500_000), "2026-11-24T06:00:00Z");
    }

    #[test]
    fn cipher_suites_by_iana_name() {
        let p = provider(&["TLS_AES_128_GCM_SHA256".into()]).unwrap();
        assert_eq!(p.cipher_suites.len(), 1);
        let p = provider(&["tls13_aes_256_gcm_sha384".into()]).unwrap();
        assert_eq!(p.cipher_suites.len(), 1);
        let e = provider(&["TLS_RSA_WITH_RC4_128_MD5".into()]).unwrap_err();
        assert!(e.to_string().contains("TLS_AES_128_GCM_SHA256"), "{e}");
    }

    #[test]
    fn versions_between_min_and_max() {
        assert_eq!(versions(None, None).unwrap().len(), 2);
        assert_eq!(
            versions(Some(TlsVersion::V1_3), None).unwrap(),
            vec![&rustls::version::TLS13]
        );
        assert!(matches!(
            versions(Some(TlsVersion::V1_0), None),
            Err(TlsError::LegacyNeedsFeature { .. })
        ));
        assert!(versions(Some(TlsVersion::V1_3), Some(TlsVersion::V1_2)).is_err());
    }
}
