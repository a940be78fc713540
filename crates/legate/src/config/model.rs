//! The YAML model. Field names here are the user-facing contract: add, never rename.

use super::duration::ConfigDuration;
use super::resilience::{
    Balance, CircuitBreakerConfig, EndpointEntry, HealthCheckConfig, OutlierConfig,
    RateLimitConfig, RetryConfig,
};
use super::size::ByteSize;
pub use super::telemetry::{OtlpConfig, Propagation, TracingConfig};
pub use super::tls::{
    AllowList, AuthConfig, BasicAuth, FilesConfig, HeaderFromFile, ListenerTls, OAuth2Config,
    Pkcs12, TlsBackend, TlsMode, TlsVersion, UpstreamTls,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

#[derive(Debug, Clone, Deserialize, Serialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub access_log: AccessLogMode,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Watching certificate and credential files.
    #[serde(default)]
    pub files: FilesConfig,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// Where sampled spans are exported (OTLP/HTTP). Without it, trace headers are still
    /// propagated where `tracing:` is set, and nothing is exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `127.0.0.1:9901` by default; `off` disables the admin server.
    #[serde(default = "default_admin_listen")]
    pub listen: AdminListen,
    /// `/ready` also requires every health-checked upstream to have a healthy endpoint.
    #[serde(default)]
    pub ready_requires_healthy_upstreams: bool,
    /// Serve `/config` to peers beyond loopback (the kubelet's network, say). Off: only
    /// loopback peers may read it, as only they may change state.
    #[serde(default, skip_serializing_if = "is_false")]
    pub expose_config: bool,
    /// Accept `GET /quitquitquit` and `GET /quit` too (for tools that cannot POST).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_get_quit: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            ready_requires_healthy_upstreams: false,
            expose_config: false,
            allow_get_quit: false,
        }
    }
}

fn default_admin_listen() -> AdminListen {
    AdminListen::Addr(ListenAddr(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        9901,
    )))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminListen {
    Off,
    Addr(ListenAddr),
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads, each a single-threaded event loop with its own listener socket.
    /// Unset: the CPUs this process may use (cgroup CPU quota and affinity, not the node's cores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
}

#[derive(
    Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogMode {
    Off,
    #[default]
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight requests may take to finish after SIGTERM before they are cut.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: ConfigDuration,
    /// After SIGTERM (or a quit), keep accepting new connections this long, not ready, so the
    /// app's own last calls still get through while the Pod leaves its Services.
    #[serde(default = "zero_duration")]
    pub min_delay: ConfigDuration,
    /// Exit 0 after a SIGTERM drain (the default: a sidecar stopped on purpose is not a
    /// failure); `false` exits 143 (130 after SIGINT), as a plain process killed by it would.
    #[serde(default = "yes")]
    pub exit_zero_on_sigterm: bool,
    /// Drain and exit when this file appears (a Job's main container touches it when done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_when_file: Option<std::path::PathBuf>,
    /// Drain and exit when this process ends: a PID, or a name matched against the processes
    /// legate can see (`shareProcessNamespace: true` in a Pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_with_process: Option<String>,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout: default_drain_timeout(),
            min_delay: zero_duration(),
            exit_zero_on_sigterm: true,
            exit_when_file: None,
            exit_with_process: None,
        }
    }
}

fn zero_duration() -> ConfigDuration {
    ConfigDuration::from_secs(0)
}

fn yes() -> bool {
    true
}

fn default_drain_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    /// `IP:PORT` (or just the port, on loopback); `unix:/path` for a Unix socket (TCP listeners).
    pub listen: ListenOn,
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Terminate TLS (and mTLS) on this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub limits: ListenerLimits,
    /// Most client connections open at once; over it a new connection is closed at once,
    /// logged and counted, and `/ready` answers 503 until one closes. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// `protocol: tcp`: the upstream every connection is carried to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// `protocol: tcp`: how long one connect attempt may take (TCP, and TLS or the PostgreSQL
    /// SSL exchange when the upstream has them). Unset: the upstream's `connect_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<ConfigDuration>,
    /// `protocol: tcp`: endpoints tried before the client is closed (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_attempts: Option<u32>,
    /// `protocol: tcp`: close a connection when no byte has moved either way for this long
    /// (default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<ConfigDuration>,
    /// `protocol: tcp`: close a connection this long after it opened, busy or not. Unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_lifetime: Option<ConfigDuration>,
    /// `unix:` listeners: the socket file's permissions, octal (default `"0660"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_mode: Option<FileMode>,
    /// `protocol: tcp` with `tls:` (a tunnel's server side): allow an upstream that is not on
    /// loopback. Off by default, as in ghostunnel: a TLS-terminating tunnel that forwards
    /// anywhere is an open relay into the network.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_remote_target: bool,
    /// Trace context for the routes of an HTTP listener (a route's own `tracing:` wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConfig>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Defaults of the TCP listener settings.
pub const DEFAULT_CONNECT_ATTEMPTS: u32 = 3;
pub const DEFAULT_TCP_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
/// Unix socket permissions when `socket_mode` is unset: owner and group (the app's container
/// usually shares a group through `fsGroup`, not the user).
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;

impl ListenerConfig {
    /// A listener with every optional field unset.
    pub fn new(name: &str, listen: ListenOn, protocol: ListenerProtocol) -> Self {
        Self {
            name: name.to_string(),
            listen,
            protocol,
            tls: None,
            routes: Vec::new(),
            limits: ListenerLimits::default(),
            max_connections: None,
            upstream: None,
            connect_timeout: None,
            connect_attempts: None,
            idle_timeout: None,
            max_connection_lifetime: None,
            socket_mode: None,
            allow_remote_target: false,
            tracing: None,
        }
    }
}

#[derive(
    Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    #[default]
    Http,
    /// Carry bytes both ways to one upstream (databases, anything over TCP).
    Tcp,
}

/// Where a listener listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenOn {
    Tcp(ListenAddr),
    Unix(std::path::PathBuf),
}

impl ListenOn {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().strip_prefix("unix:") {
            Some("") => Err("`unix:` needs a path, like unix:/cloudsql/db/.s.PGSQL.5432".into()),
            Some(path) => Ok(Self::Unix(path.into())),
            None => ListenAddr::parse(s).map(Self::Tcp),
        }
    }

    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(a) => Some(a.0),
            Self::Unix(_) => None,
        }
    }
}

impl fmt::Display for ListenOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => a.fmt(f),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl<'de> Deserialize<'de> for ListenOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = StringOrInt::deserialize(d)?;
        ListenOn::parse(&v.0).map_err(serde::de::Error::custom)
    }
}

impl Serialize for ListenOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// File permission bits, written in octal: `"0660"` (a YAML string, or the number 660 read as
/// octal digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl FileMode {
    pub fn parse(s: &str) -> Result<Self, String> {
        let digits = s.trim().trim_start_matches("0o");
        match u32::from_str_radix(digits, 8) {
            Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(Self(m)),
            _ => Err(format!(
                "`{s}` is not a permission mode: write octal digits like \"0660\""
            )),
        }
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = StringOrInt::deserialize(d)?;
        FileMode::parse(&v.0).map_err(serde::de::Error::custom)
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:04o}", self.0))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerLimits {
    /// Largest request head (request line plus headers) accepted; larger gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// Most request headers accepted; more gets 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// How long a client may take to send a request head before the connection is closed.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: ConfigDuration,
    /// How long an HTTP/1.1 keep-alive connection may wait for its next request.
    #[serde(default = "default_keepalive_idle_timeout")]
    pub idle_timeout: ConfigDuration,
    /// The longest wait for the next bytes of a request body (HTTP/1.1); past it the request
    /// fails and the connection closes.
    #[serde(default = "default_request_body_timeout")]
    pub request_body_timeout: ConfigDuration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_keepalive_idle_timeout(),
            request_body_timeout: default_request_body_timeout(),
        }
    }
}

fn default_keepalive_idle_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(3600)
}
fn default_request_body_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(60)
}

fn default_max_header_bytes() -> ByteSize {
    ByteSize(64 * 1024)
}
fn default_max_headers() -> usize {
    100
}
fn default_header_read_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(default, rename = "match")]
    pub match_: MatchConfig,
    pub upstream: String,
    /// Time from the request's arrival until the upstream's response headers; 504 past it.
    #[serde(default = "default_route_timeout")]
    pub timeout: ConfigDuration,
    /// Longest silence from the upstream in the middle of a response body; the client's
    /// connection is cut past it (the head is already sent).
    #[serde(default = "default_response_body_timeout")]
    pub response_body_timeout: ConfigDuration,
    #[serde(default)]
    pub host_rewrite: HostRewrite,
    #[serde(default)]
    pub request_headers: HeaderRules,
    #[serde(default)]
    pub response_headers: HeaderRules,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// Trace context for this route (overrides the listener's `tracing:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConfig>,
    /// Forward the app's `Proxy-Authorization` upstream. By default legate consumes it (it
    /// asks for no proxy credentials itself, and forwarding them would hand the app's proxy
    /// secret to the upstream); set this only when the next hop is a proxy that expects them.
    #[serde(default, skip_serializing_if = "is_false")]
    pub forward_proxy_authorization: bool,
}

fn default_route_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(15)
}

fn default_response_body_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Header name to exact value; `"*"` matches any value as long as the header is present.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HostRewrite {
    /// The upstream's authority, like nginx `proxy_set_header Host upstream.example`.
    #[default]
    Upstream,
    /// The Host the client sent.
    Keep,
    Literal(String),
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    /// Replace (or add) these headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Append these headers, keeping any existing values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// Replace (or add) these headers with a file's content (a token, an API key), re-read
    /// when the file changes. The value never appears in logs or `/config`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set_from_file: BTreeMap<String, HeaderFromFile>,
}

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    /// `host:port` entries; names are resolved and re-resolved in the background.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointEntry>,
    /// Alternative to `endpoints`: `http://host[:port]` or `https://host[:port]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Present means the upstream speaks TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: ConfigDuration,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default = "default_dns_refresh")]
    pub dns_refresh: ConfigDuration,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    #[serde(default)]
    pub outlier_detection: OutlierConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    /// Credentials added to every request: basic auth or OAuth2 client credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// PostgreSQL behind a TCP listener: legate logs in with these credentials on the app's
    /// behalf (SCRAM-SHA-256, MD5 or cleartext), so the app connects without a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresLogin>,
}

/// `upstreams[].postgres`: the database login legate performs for the app.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresLogin {
    /// The database user; the app's own `user` is replaced with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A file holding the user name instead of `user` (trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_file: Option<std::path::PathBuf>,
    /// A file holding the password; re-read when it changes (rotation).
    pub password_file: std::path::PathBuf,
}

impl UpstreamConfig {
    /// An upstream with every optional field at its default.
    pub fn with_endpoints(name: &str, endpoints: Vec<String>) -> Self {
        Self {
            name: name.to_string(),
            endpoints: endpoints.into_iter().map(EndpointEntry::from).collect(),
            url: None,
            tls: None,
            protocol: UpstreamProtocol::default(),
            connect_timeout: default_connect_timeout(),
            pool: PoolConfig::default(),
            dns_refresh: default_dns_refresh(),
            balance: Balance::default(),
            circuit_breaker: None,
            outlier_detection: OutlierConfig::default(),
            health_check: None,
            auth: None,
            postgres: None,
        }
    }
}

fn default_connect_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(2)
}
fn default_dns_refresh() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}

#[derive(
    Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    /// HTTP/2 when TLS ALPN agrees on it, HTTP/1.1 otherwise.
    #[default]
    Auto,
}

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default = "default_max_idle")]
    pub max_idle_per_endpoint: usize,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: ConfigDuration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_idle_per_endpoint: default_max_idle(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

/// As many as the upstream's default `max_connections`: an idle cap below the concurrency a
/// worker sees makes every response over the cap close its connection and the next burst open
/// one (measured at 1,000 busy client connections with a cap of 64: a new upstream connection
/// per 2.6 requests, in legate and in nginx with `keepalive 64`). Envoy and HAProxy do not cap
/// idle connections by count either; `idle_timeout` lets them go.
fn default_max_idle() -> usize {
    1024
}
fn default_idle_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(60)
}

/// A listening address. `8080` and `:8080` mean `127.0.0.1:8080`: a sidecar serves its own Pod,
/// so binding every interface must be written out explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenAddr(pub SocketAddr);

impl ListenAddr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let port_only = s.strip_prefix(':').unwrap_or(s);
        if let Ok(port) = port_only.parse::<u16>() {
            return Ok(Self(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)));
        }
        if let Some(port) = s.strip_prefix("localhost:") {
            if let Ok(port) = port.parse::<u16>() {
                return Ok(Self(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)));
            }
        }
        s.parse::<SocketAddr>().map(Self).map_err(|_| {
            format!("invalid listen address `{s}`: write IP:PORT like 127.0.0.1:8080 (or just the port)")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = StringOrInt::deserialize(d)?;
        ListenAddr::parse(&v.0).map_err(serde::de::Error::custom)
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AdminListen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = StringOrInt::deserialize(d)?;
        if v.0 == "off" {
            return Ok(AdminListen::Off);
        }
        ListenAddr::parse(&v.0)
            .map(AdminListen::Addr)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for AdminListen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AdminListen::Off => s.serialize_str("off"),
            AdminListen::Addr(a) => a.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for HostRewrite {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "upstream" => HostRewrite::Upstream,
            "keep" => HostRewrite::Keep,
            _ => HostRewrite::Literal(s),
        })
    }
}

impl Serialize for HostRewrite {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HostRewrite::Upstream => s.serialize_str("upstream"),
            HostRewrite::Keep => s.serialize_str("keep"),
            HostRewrite::Literal(h) => s.serialize_str(h),
        }
    }
}

/// Accepts `8080` as well as `"127.0.0.1:8080"` for address-like fields.
struct StringOrInt(String);

impl<'de> Deserialize<'de> for StringOrInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = StringOrInt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address like 127.0.0.1:8080")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StringOrInt(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(StringOrInt(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(StringOrInt(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}
