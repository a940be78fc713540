//! Checks of the `tls:`, `auth:` and `set_from_file` settings: first their shape (what serde
//! cannot express), then, for `legate check` and startup, the files they name — each problem
//! at the field that names the file.

use super::model::{Config, ListenerTls, UpstreamTls};
use super::validate::Issue;
use crate::tls::{self, TlsError};
use std::path::Path;

fn add(out: &mut Vec<Issue>, path: impl Into<String>, message: impl Into<String>) {
    out.push(Issue {
        path: path.into(),
        message: message.into(),
    });
}

fn check_versions_and_suites(
    out: &mut Vec<Issue>,
    base: &str,
    min: Option<super::TlsVersion>,
    max: Option<super::TlsVersion>,
    suites: &[String],
    openssl: bool,
) {
    if let (Some(a), Some(b)) = (min, max) {
        if a > b {
            add(
                out,
                format!("{base}.min_version"),
                format!("min_version {a} is above max_version {b}"),
            );
        }
    }
    if !openssl {
        let known = tls::known_suites();
        for (i, s) in suites.iter().enumerate() {
            if tls::provider(std::slice::from_ref(s)).is_err() {
                add(
                    out,
                    format!("{base}.cipher_suites[{i}]"),
                    format!("unknown cipher suite `{s}`; known: {}", known.join(", ")),
                );
            }
        }
    }
}

fn check_alpn(out: &mut Vec<Issue>, base: &str, alpn: &Option<Vec<String>>) {
    for (i, p) in alpn.iter().flatten().enumerate() {
        if p != "h2" && p != "http/1.1" {
            add(
                out,
                format!("{base}.alpn[{i}]"),
                format!("unknown ALPN protocol `{p}`: use `h2` or `http/1.1`"),
            );
        }
    }
}

pub fn upstream_tls(out: &mut Vec<Issue>, base: &str, t: &UpstreamTls) {
    match (&t.client_cert, &t.client_key) {
        (Some(_), None) => add(
            out,
            format!("{base}.client_key"),
            "client_cert needs client_key (the PEM private key for it)",
        ),
        (None, Some(_)) => add(
            out,
            format!("{base}.client_cert"),
            "client_key needs client_cert",
        ),
        _ => {}
    }
    if t.pkcs12.is_some() && (t.client_cert.is_some() || t.client_key.is_some()) {
        add(
            out,
            format!("{base}.pkcs12"),
            "set either pkcs12 or client_cert/client_key, not both",
        );
    }
    let openssl = t.needs_openssl();
    if openssl && !cfg!(feature = "legacy-tls") {
        let (field, what) = match t.min_version.filter(|v| *v < super::TlsVersion::V1_2) {
            Some(v) => ("min_version", format!("TLS {v}")),
            None => match t.max_version.filter(|v| *v < super::TlsVersion::V1_2) {
                Some(v) => ("max_version", format!("TLS {v}")),
                None => ("backend", "the openssl backend".to_string()),
            },
        };
        add(
            out,
            format!("{base}.{field}"),
            format!("{what} needs legate built with `cargo build --release --features legacy-tls` (system OpenSSL); this build has rustls only (TLS 1.2 and 1.3)"),
        );
    }
    if t.openssl_ciphers.is_some() && !openssl {
        add(
            out,
            format!("{base}.openssl_ciphers"),
            "openssl_ciphers applies to the openssl backend only: use cipher_suites (IANA names), or set backend: openssl",
        );
    }
    check_versions_and_suites(
        out,
        base,
        t.min_version,
        t.max_version,
        &t.cipher_suites,
        openssl,
    );
    check_alpn(out, base, &t.alpn);
    if let Err(e) = tls::client::decode_pins(&t.pin_spki_sha256) {
        add(out, format!("{base}.pin_spki_sha256"), e.to_string());
    }
    if t.insecure_skip_verify && !t.pin_spki_sha256.is_empty() {
        add(
            out,
            format!("{base}.insecure_skip_verify"),
            "insecure_skip_verify would ignore pin_spki_sha256: remove one of them",
        );
    }
}

pub fn listener_tls(out: &mut Vec<Issue>, base: &str, t: &ListenerTls) {
    match (&t.cert, &t.key, &t.pkcs12) {
        (Some(_), Some(_), None) | (None, None, Some(_)) => {}
        (Some(_), None, None) => add(
            out,
            format!("{base}.key"),
            "cert needs key (the PEM private key for it)",
        ),
        (None, Some(_), None) => add(out, format!("{base}.cert"), "key needs cert"),
        (None, None, None) => add(
            out,
            base.to_string(),
            "a TLS listener needs `cert` and `key` (PEM), or `pkcs12`",
        ),
        _ => add(
            out,
            format!("{base}.pkcs12"),
            "set either pkcs12 or cert/key, not both",
        ),
    }
    if t.client_ca.is_none() {
        if t.require_client_cert == Some(true) {
            add(
                out,
                format!("{base}.require_client_cert"),
                "requiring client certificates needs client_ca (the CA they must chain to)",
            );
        }
        if !t.allow.is_empty() {
            add(
                out,
                format!("{base}.allow"),
                "allow checks client certificates, which needs client_ca",
            );
        }
        if t.forward_client_cert.is_some() {
            add(
                out,
                format!("{base}.forward_client_cert"),
                "forwarding the client certificate needs client_ca",
            );
        }
    }
    if let Some(h) = &t.forward_client_cert {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            add(
                out,
                format!("{base}.forward_client_cert"),
                format!("`{h}` is not a valid header name"),
            );
        }
    }
    if t.min_version.is_some_and(|v| v < super::TlsVersion::V1_2) {
        add(
            out,
            format!("{base}.min_version"),
            "listeners speak TLS 1.2 and 1.3 only (legacy versions are for old upstreams)",
        );
    }
    check_versions_and_suites(
        out,
        base,
        t.min_version,
        t.max_version,
        &t.cipher_suites,
        false,
    );
    check_alpn(out, base, &t.alpn);
    if t.handshake_timeout.get().is_zero() {
        add(
            out,
            format!("{base}.handshake_timeout"),
            "must be greater than zero",
        );
    }
}

/// The two files of a `pkcs12:` setting, password first (its path may share a prefix).
fn pkcs12_fields(p: Option<&super::Pkcs12>) -> [(&'static str, Option<&Path>); 2] {
    [
        (
            "pkcs12.password_file",
            p.and_then(|p| p.password_file.as_deref()),
        ),
        ("pkcs12.file", p.map(|p| p.file.as_path())),
    ]
}

/// The config field that names `file`, for an error about it.
fn field_for(file: &Path, fields: &[(&str, Option<&Path>)]) -> Option<String> {
    fields
        .iter()
        .find(|(_, p)| p.is_some_and(|p| file.starts_with(p)))
        .map(|(f, _)| f.to_string())
}

fn tls_issue(out: &mut Vec<Issue>, base: &str, e: &TlsError, fields: &[(&str, Option<&Path>)]) {
    let file = match e {
        TlsError::Read { file, .. }
        | TlsError::Pem { file, .. }
        | TlsError::NoCertificate { file }
        | TlsError::NoKey { file }
        | TlsError::Validity { file, .. }
        | TlsError::UnsupportedKey { file, .. }
        | TlsError::Pkcs12Password { file }
        | TlsError::Pkcs12 { file, .. }
        | TlsError::Ca { file, .. }
        | TlsError::Secret { file, .. } => Some(file.as_path()),
        TlsError::KeyMismatch { key, .. } => Some(key.as_path()),
        TlsError::Settings(_) | TlsError::LegacyNeedsFeature { .. } => None,
    };
    let path = file
        .and_then(|f| field_for(f, fields))
        .map_or_else(|| base.to_string(), |f| format!("{base}.{f}"));
    add(out, path, e.to_string());
}

/// Loads every file the config names, as startup would.
pub fn files(cfg: &Config) -> Vec<Issue> {
    let mut out = Vec::new();
    for (i, u) in cfg.upstreams.iter().enumerate() {
        let base = format!("upstreams[{i}].tls");
        if let Some(t) = &u.tls {
            if let Err(e) = load_upstream_tls(t) {
                tls_issue(
                    &mut out,
                    &base,
                    &e,
                    &[
                        ("ca", t.ca.as_deref()),
                        ("client_cert", t.client_cert.as_deref()),
                        ("client_key", t.client_key.as_deref()),
                    ]
                    .into_iter()
                    .chain(pkcs12_fields(t.pkcs12.as_ref()))
                    .collect::<Vec<_>>(),
                );
            }
        }
        if let Some(pg) = &u.postgres {
            let base = format!("upstreams[{i}].postgres");
            if let Some(f) = &pg.user_file {
                secret(&mut out, &format!("{base}.user_file"), f);
            }
            secret(
                &mut out,
                &format!("{base}.password_file"),
                &pg.password_file,
            );
        }
        if let Some(auth) = &u.auth {
            let base = format!("upstreams[{i}].auth");
            if let Some(b) = &auth.basic {
                secret(
                    &mut out,
                    &format!("{base}.basic.username_file"),
                    &b.username_file,
                );
                secret(
                    &mut out,
                    &format!("{base}.basic.password_file"),
                    &b.password_file,
                );
            }
            if let Some(o) = &auth.oauth2 {
                secret(
                    &mut out,
                    &format!("{base}.oauth2.client_id_file"),
                    &o.client_id_file,
                );
                secret(
                    &mut out,
                    &format!("{base}.oauth2.client_secret_file"),
                    &o.client_secret_file,
                );
                if let Some(ca) = &o.ca {
                    if let Err(e) = tls::load::read_ca(ca) {
                        add(&mut out, format!("{base}.oauth2.ca"), e.to_string());
                    }
                }
            }
        }
    }
    for (i, l) in cfg.listeners.iter().enumerate() {
        if let Some(t) = &l.tls {
            let base = format!("listeners[{i}].tls");
            if let Err(e) = tls::server::build(t) {
                tls_issue(
                    &mut out,
                    &base,
                    &e,
                    &[
                        ("cert", t.cert.as_deref()),
                        ("key", t.key.as_deref()),
                        ("client_ca", t.client_ca.as_deref()),
                    ]
                    .into_iter()
                    .chain(pkcs12_fields(t.pkcs12.as_ref()))
                    .collect::<Vec<_>>(),
                );
            }
        }
        for (j, r) in l.routes.iter().enumerate() {
            for (name, src) in &r.request_headers.set_from_file {
                secret(
                    &mut out,
                    &format!("listeners[{i}].routes[{j}].request_headers.set_from_file.{name}"),
                    &src.file,
                );
            }
        }
    }
    out
}

/// Builds an upstream's TLS client as startup would (OpenSSL for legacy versions in a
/// `legacy-tls` build; a default build has already said it cannot).
fn load_upstream_tls(t: &UpstreamTls) -> Result<(), TlsError> {
    if t.needs_openssl() {
        #[cfg(feature = "legacy-tls")]
        tls::legacy::LegacyTls::new("check".into(), t, &[])?;
        return Ok(());
    }
    let sessions = std::sync::Arc::new(rustls::client::ClientSessionMemoryCache::new(1));
    tls::client::build(t, &[], &sessions).map(|_| ())
}

fn secret(out: &mut Vec<Issue>, path: &str, file: &Path) {
    if let Err(e) = tls::load::read_secret(file) {
        add(out, path, e.to_string());
    }
}
