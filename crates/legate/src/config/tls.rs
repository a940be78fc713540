//! The `tls:` sections of upstreams (origination) and listeners (termination). Paths, never
//! secrets: certificates, keys and passwords stay in files that legate watches and reloads.

use super::duration::ConfigDuration;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::PathBuf;

/// `upstreams[].tls`: present means the upstream speaks TLS.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Name sent as SNI and checked against the certificate; defaults to the endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// CA bundle (PEM file) or a directory of PEM files; unset: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for mTLS; needs `client_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// Client certificate and key in one PKCS#12 file, instead of `client_cert`/`client_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs12: Option<Pkcs12>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<TlsVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_version: Option<TlsVersion>,
    /// IANA names, e.g. `TLS_AES_128_GCM_SHA256`; unset: the library's safe defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
    /// ALPN protocols to offer (`h2`, `http/1.1`); unset: from the upstream's `protocol`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn: Option<Vec<String>>,
    /// Resume TLS sessions per endpoint (tickets / session ids): most reconnects skip the full
    /// handshake.
    #[serde(default = "yes")]
    pub session_resumption: bool,
    /// Base64 SHA-256 of the server's SubjectPublicKeyInfo; any match passes (on top of the
    /// normal verification).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pin_spki_sha256: Vec<String>,
    /// Accept any server certificate. Only for a test bench; logged loudly.
    #[serde(default, skip_serializing_if = "is_false")]
    pub insecure_skip_verify: bool,
    /// `rustls` (default) or `openssl` (builds with the `legacy-tls` feature; TLS 1.0/1.1).
    #[serde(default)]
    pub backend: TlsBackend,
    /// OpenSSL cipher string for the `openssl` backend, e.g. `DEFAULT@SECLEVEL=0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openssl_ciphers: Option<String>,
    /// `direct` (default): TLS from the first byte. `postgres`: PostgreSQL's SSLRequest first,
    /// then TLS, as libpq does (TCP listeners only).
    #[serde(default, skip_serializing_if = "TlsMode::is_direct")]
    pub mode: TlsMode,
}

#[derive(
    Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    Direct,
    Postgres,
}

impl TlsMode {
    fn is_direct(&self) -> bool {
        *self == TlsMode::Direct
    }
}

impl Default for UpstreamTls {
    fn default() -> Self {
        Self {
            server_name: None,
            ca: None,
            client_cert: None,
            client_key: None,
            pkcs12: None,
            min_version: None,
            max_version: None,
            cipher_suites: Vec::new(),
            alpn: None,
            session_resumption: true,
            pin_spki_sha256: Vec::new(),
            insecure_skip_verify: false,
            backend: TlsBackend::Rustls,
            openssl_ciphers: None,
            mode: TlsMode::Direct,
        }
    }
}

fn yes() -> bool {
    true
}
fn is_false(b: &bool) -> bool {
    !*b
}

impl UpstreamTls {
    /// Whether this needs the OpenSSL backend (TLS below 1.2, or chosen explicitly).
    pub fn needs_openssl(&self) -> bool {
        self.backend == TlsBackend::Openssl
            || self.min_version.is_some_and(|v| v < TlsVersion::V1_2)
            || self.max_version.is_some_and(|v| v < TlsVersion::V1_2)
    }
}

#[derive(
    Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TlsBackend {
    #[default]
    Rustls,
    Openssl,
}

/// `pkcs12: { file, password_file }`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pkcs12 {
    pub file: PathBuf,
    /// A file holding the password (trailing newline ignored); unset: no password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

/// `listeners[].tls`: terminate TLS (and optionally require client certificates).
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Server certificate chain (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Certificate and key in one PKCS#12 file, instead of `cert`/`key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs12: Option<Pkcs12>,
    /// CA bundle (file or directory) that client certificates must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a certificate. Default: true when `client_ca` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_client_cert: Option<bool>,
    /// Which verified client identities may connect; empty: any certificate `client_ca` signed.
    #[serde(default, skip_serializing_if = "AllowList::is_empty")]
    pub allow: AllowList,
    /// Header that carries the verified client identity to the app (Envoy's XFCC format);
    /// any copy of it arriving from outside is removed first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_client_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<TlsVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_version: Option<TlsVersion>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
    /// ALPN protocols offered to clients; unset: `h2`, `http/1.1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn: Option<Vec<String>>,
    /// How long a client may take to finish the handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: ConfigDuration,
}

fn default_handshake_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}

impl ListenerTls {
    pub fn requires_client_cert(&self) -> bool {
        self.require_client_cert.unwrap_or(self.client_ca.is_some())
    }
}

/// `allow: { dns: [...], uri: [...], cn: [...] }`; `*` matches any run of characters.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowList {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uri: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cn: Vec<String>,
}

impl AllowList {
    pub fn is_empty(&self) -> bool {
        self.dns.is_empty() && self.uri.is_empty() && self.cn.is_empty()
    }
}

/// Global TLS and credential-file settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// How often watched files (certificates, keys, CAs, credentials) are checked for changes.
    /// SIGHUP checks at once.
    #[serde(default = "default_watch_interval")]
    pub watch_interval: ConfigDuration,
    /// Warn (log) when a certificate legate presents or trusts expires within this long.
    #[serde(default = "default_expiry_warning")]
    pub expiry_warning: ConfigDuration,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            watch_interval: default_watch_interval(),
            expiry_warning: default_expiry_warning(),
        }
    }
}

fn default_watch_interval() -> ConfigDuration {
    ConfigDuration::from_secs(1)
}
fn default_expiry_warning() -> ConfigDuration {
    ConfigDuration::from_secs(7 * 24 * 3600)
}

/// A TLS protocol version. YAML reads `1.2` as a number, so both `1.2` and `"1.2"` work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_0,
    V1_1,
    V1_2,
    V1_3,
}

impl TlsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::V1_0 => "1.0",
            TlsVersion::V1_1 => "1.1",
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s
            .trim()
            .trim_start_matches("TLSv")
            .trim_start_matches("tls")
        {
            "1.0" | "1" => Some(TlsVersion::V1_0),
            "1.1" => Some(TlsVersion::V1_1),
            "1.2" => Some(TlsVersion::V1_2),
            "1.3" => Some(TlsVersion::V1_3),
            _ => None,
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            F(f64),
        }
        let text = match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::F(f) => format!("{f:.1}"),
        };
        TlsVersion::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown TLS version `{text}`: use \"1.0\", \"1.1\", \"1.2\" or \"1.3\""
            ))
        })
    }
}

impl Serialize for TlsVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// `request_headers.set_from_file` values: a path, or `{ file, prefix }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderFromFile {
    pub file: PathBuf,
    /// Put before the file's content, e.g. `"Bearer "`.
    pub prefix: String,
}

impl<'de> Deserialize<'de> for HeaderFromFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            file: PathBuf,
            #[serde(default)]
            prefix: String,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Path(PathBuf),
            Full(Full),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Path(file)) => Ok(Self {
                file,
                prefix: String::new(),
            }),
            Ok(Raw::Full(f)) => Ok(Self {
                file: f.file,
                prefix: f.prefix,
            }),
            Err(_) => Err(serde::de::Error::custom(
                "expected a file path or `{ file: PATH, prefix: \"Bearer \" }`",
            )),
        }
    }
}

impl Serialize for HeaderFromFile {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("file", &self.file)?;
        if !self.prefix.is_empty() {
            m.serialize_entry("prefix", &self.prefix)?;
        }
        m.end()
    }
}

/// `upstreams[].auth`: credentials legate adds to every request to this upstream.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Config>,
}

/// HTTP basic auth from two files.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username_file: PathBuf,
    pub password_file: PathBuf,
}

/// OAuth2 client credentials grant (RFC 6749 §4.4).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// `https://auth.example/oauth2/token` (or `http://` for a local token service).
    pub token_url: String,
    pub client_id_file: PathBuf,
    pub client_secret_file: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Refresh this long before the token expires (or at 80% of its life if that is sooner).
    #[serde(default = "default_refresh_before")]
    pub refresh_before: ConfigDuration,
    /// CA for the token endpoint; unset: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Bound on one token request.
    #[serde(default = "default_token_timeout")]
    pub timeout: ConfigDuration,
}

fn default_refresh_before() -> ConfigDuration {
    ConfigDuration::from_secs(60)
}
fn default_token_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}
