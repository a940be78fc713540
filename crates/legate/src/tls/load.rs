//! Reading TLS material from files: PEM certificate chains, PEM private keys (PKCS#8, PKCS#1
//! RSA, SEC1 EC), CA bundles (a file or a directory), PKCS#12 bundles, and one-line secrets.
//! Every error names the file and says what was wrong with it.

use super::cert_info::CertInfo;
use super::TlsError;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        file: path.to_path_buf(),
        source,
    })
}

/// A secret kept in a file (password, token, client id): its content without the trailing
/// newline editors and `kubectl create secret --from-file` leave.
pub fn read_secret(path: &Path) -> Result<String, TlsError> {
    let bytes = read(path)?;
    let text = String::from_utf8(bytes).map_err(|_| TlsError::Secret {
        file: path.to_path_buf(),
        problem: "is not UTF-8 text",
    })?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

/// Every certificate in a PEM file, in order (leaf first for a chain).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_certs(&read(path)?, path)
}

/// Every certificate in PEM text; `file` names the source in errors.
pub fn parse_certs(bytes: &[u8], file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            file: file.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            file: file.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    parse_key(&read(path)?, path)
}

/// The first private key in PEM text; `file` names the source in errors.
pub fn parse_key(bytes: &[u8], file: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            file: file.to_path_buf(),
        },
        other => TlsError::Pem {
            file: file.to_path_buf(),
            detail: other.to_string(),
        },
    })
}

/// The CA certificates in a PEM file, or in every file of a directory (as a Kubernetes Secret
/// or ConfigMap mounts them; hidden entries such as `..data` are skipped).
pub fn read_ca(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let files = ca_files(path)?;
    let mut store = rustls::RootCertStore::empty();
    for f in &files {
        let certs = match read_certs(f) {
            Ok(c) => c,
            // In a directory, a file without certificates (a README, a key) is not an error.
            Err(TlsError::NoCertificate { .. }) if files.len() > 1 || f != path => continue,
            Err(e) => return Err(e),
        };
        for c in certs {
            store.add(c).map_err(|e| TlsError::Ca {
                file: f.clone(),
                detail: e.to_string(),
            })?;
        }
    }
    if store.is_empty() {
        return Err(TlsError::NoCertificate {
            file: path.to_path_buf(),
        });
    }
    Ok(store)
}

/// The files a CA setting names: the file itself, or a directory's visible files.
pub fn ca_files(path: &Path) -> Result<Vec<PathBuf>, TlsError> {
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|source| TlsError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Certificate chain and key from a PKCS#12 file.
pub fn read_pkcs12(
    path: &Path,
    password_file: Option<&Path>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let bytes = read(path)?;
    let password = match password_file {
        Some(p) => read_secret(p)?,
        None => String::new(),
    };
    parse_pkcs12(&bytes, &password, path)
}

/// Certificate chain and key from PKCS#12 bytes; `file` names the source in errors.
pub fn parse_pkcs12(
    bytes: &[u8],
    password: &str,
    file: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let store = p12_keystore::KeyStore::from_pkcs12(bytes, password).map_err(|e| match e {
        p12_keystore::error::Error::MacError(_) => TlsError::Pkcs12Password {
            file: file.to_path_buf(),
        },
        other => TlsError::Pkcs12 {
            file: file.to_path_buf(),
            detail: other.to_string(),
        },
    })?;
    let Some((_, chain)) = store.private_key_chain() else {
        return Err(TlsError::NoKey {
            file: file.to_path_buf(),
        });
    };
    let certs: Vec<CertificateDer<'static>> = chain
        .chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_der().to_vec()))
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            file: file.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(chain.key().to_vec()));
    Ok((certs, key))
}

/// Where a certificate and its key come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Pem {
        cert: PathBuf,
        key: PathBuf,
    },
    Pkcs12 {
        file: PathBuf,
        password_file: Option<PathBuf>,
    },
}

impl KeySource {
    /// From the `cert`/`key` pair or the `pkcs12` setting of a `tls:` section (the pair wins;
    /// validation rejects both at once).
    pub fn from_settings(
        cert: &Option<PathBuf>,
        key: &Option<PathBuf>,
        pkcs12: &Option<crate::config::Pkcs12>,
    ) -> Option<Self> {
        match (cert, key, pkcs12) {
            (Some(cert), Some(key), _) => Some(KeySource::Pem {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (_, _, Some(p)) => Some(KeySource::Pkcs12 {
                file: p.file.clone(),
                password_file: p.password_file.clone(),
            }),
            _ => None,
        }
    }

    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            KeySource::Pem { cert, key } => vec![cert.clone(), key.clone()],
            KeySource::Pkcs12 {
                file,
                password_file,
            } => std::iter::once(file.clone())
                .chain(password_file.clone())
                .collect(),
        }
    }

    /// The file that holds the certificate, for messages.
    pub fn cert_file(&self) -> &Path {
        match self {
            KeySource::Pem { cert, .. } => cert,
            KeySource::Pkcs12 { file, .. } => file,
        }
    }
}

/// A certificate and key, checked: the key belongs to the certificate and the certificate is
/// valid now.
#[derive(Debug)]
pub struct Identity {
    pub key: Arc<CertifiedKey>,
    pub leaf: CertInfo,
}

pub fn load_identity(src: &KeySource) -> Result<Identity, TlsError> {
    let (chain, key, key_file) = match src {
        KeySource::Pem { cert, key } => (read_certs(cert)?, read_key(key)?, key.clone()),
        KeySource::Pkcs12 {
            file,
            password_file,
        } => {
            let (c, k) = read_pkcs12(file, password_file.as_deref())?;
            (c, k, file.clone())
        }
    };
    identity(chain, &key, src.cert_file(), &key_file)
}

/// A chain and key checked as `load_identity` checks them; the paths name them in errors.
pub fn identity(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
    cert_file: &Path,
    key_file: &Path,
) -> Result<Identity, TlsError> {
    let (cert_file, key_file) = (cert_file.to_path_buf(), key_file.to_path_buf());
    let Some(first) = chain.first() else {
        return Err(TlsError::NoCertificate { file: cert_file });
    };
    let leaf = CertInfo::parse(first).map_err(|detail| TlsError::Pem {
        file: cert_file.clone(),
        detail,
    })?;
    if let Some(problem) = leaf.validity_problem(SystemTime::now()) {
        return Err(TlsError::Validity {
            file: cert_file,
            problem,
        });
    }
    let signer = rustls::crypto::ring::sign::any_supported_type(key).map_err(|e| {
        TlsError::UnsupportedKey {
            file: key_file.clone(),
            detail: e.to_string(),
        }
    })?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(TlsError::KeyMismatch {
                cert: cert_file,
                key: key_file,
            })
        }
    }
    Ok(Identity {
        key: Arc::new(certified),
        leaf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn ca_directory_as_kubernetes_mounts_it() {
        let dir = std::env::temp_dir().join(format!("legate-ca-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("..2026_11_26")).unwrap();
        std::fs::write(dir.join("..2026_11_26/ca.crt"), ca_pem()).unwrap();
        std::fs::write(dir.join("..2026_11_26/extra.crt"), ca_pem() + &ca_pem()).unwrap();
        std::fs::write(dir.join("..2026_11_26/README"), "not a certificate").unwrap();
        std::os::unix::fs::symlink("..2026_11_26", dir.join("..data")).unwrap();
        for f in ["ca.crt", "extra.crt", "README"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
        }
        let store = read_ca(&dir).unwrap();
        assert_eq!(store.len(), 3, "hidden entries skipped, the README ignored");
        assert_eq!(ca_files(&dir).unwrap().len(), 3);
        // A single file without certificates is an error naming it.
        let e = read_ca(&dir.join("README")).unwrap_err();
        assert!(e.to_string().contains("README"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_lose_only_the_trailing_newline() {
        let f = std::env::temp_dir().join(format!("legate-secret-{}", std::process::id()));
        std::fs::write(&f, "  tok en \r\n\n").unwrap();
        assert_eq!(read_secret(&f).unwrap(), "  tok en ");
        std::fs::remove_file(&f).unwrap();
        assert!(matches!(read_secret(&f), Err(TlsError::Read { .. })));
    }
}
