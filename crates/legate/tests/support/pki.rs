//! Certificates made in the tests (rcgen): a CA, an intermediate, servers, clients with SPIFFE
//! URIs, expired and not-yet-valid ones, written as PEM files (and PKCS#12 through the real
//! `openssl pkcs12`) into a directory.
#![allow(dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
    SerialNumber,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static SERIAL: AtomicU64 = AtomicU64::new(0x1000);

pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

/// A certificate and key as PEM text, with its serial in upper-case hex.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: String,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Self { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `dns` names (IPs become IP SANs), plus `uris`, with CN `cn`.
    pub fn issue(&self, spec: Leaf<'_>) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(spec.dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        for u in spec.uris {
            p.subject_alt_names
                .push(SanType::URI((*u).try_into().unwrap()));
        }
        if let Some(cn) = spec.cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        let serial = SERIAL.fetch_add(1, Ordering::SeqCst);
        p.serial_number = Some(SerialNumber::from(serial));
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if let Some((a, b)) = spec.validity {
            p.not_before = a;
            p.not_after = b;
        }
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: format!("{serial:X}"),
        }
    }
}

#[derive(Default, Clone, Copy)]
pub struct Leaf<'a> {
    pub dns: &'a [&'a str],
    pub uris: &'a [&'a str],
    pub cn: Option<&'a str>,
    pub validity: Option<(time::OffsetDateTime, time::OffsetDateTime)>,
}

pub fn server<'a>(dns: &'a [&'a str]) -> Leaf<'a> {
    Leaf {
        dns,
        ..Default::default()
    }
}

pub fn client<'a>(uris: &'a [&'a str], cn: &'a str) -> Leaf<'a> {
    Leaf {
        uris,
        cn: Some(cn),
        ..Default::default()
    }
}

pub fn expired() -> Option<(time::OffsetDateTime, time::OffsetDateTime)> {
    Some((
        rcgen::date_time_ymd(2000, 1, 1),
        rcgen::date_time_ymd(2001, 1, 1),
    ))
}

pub fn not_yet_valid() -> Option<(time::OffsetDateTime, time::OffsetDateTime)> {
    Some((
        rcgen::date_time_ymd(2090, 1, 1),
        rcgen::date_time_ymd(2091, 1, 1),
    ))
}

impl Issued {
    /// Writes `<name>.pem` and `<name>.key` into `dir`; returns (cert, key).
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = dir.join(format!("{name}.pem"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, &self.cert_pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        (c, k)
    }

    /// A PKCS#12 bundle made by `openssl pkcs12 -export` with `password`.
    pub fn write_p12(&self, dir: &Path, name: &str, password: &str) -> (PathBuf, PathBuf) {
        let (c, k) = self.write(dir, name);
        let p12 = dir.join(format!("{name}.p12"));
        let pw = dir.join(format!("{name}.p12.pass"));
        std::fs::write(&pw, format!("{password}\n")).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["pkcs12", "-export", "-in"])
            .arg(&c)
            .arg("-inkey")
            .arg(&k)
            .arg("-out")
            .arg(&p12)
            .arg("-passout")
            .arg(format!("file:{}", pw.display()))
            .output()
            .expect("openssl pkcs12 runs");
        assert!(
            out.status.success(),
            "openssl pkcs12 -export: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (p12, pw)
    }
}
