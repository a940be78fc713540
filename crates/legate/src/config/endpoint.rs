//! Parsing of upstream endpoint spellings (`host:port`, `[v6]:port`, `https://host`).

use std::fmt;
use std::net::IpAddr;

/// Where one configured endpoint lives: an IP literal or a DNS name, and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    pub host: String,
    pub port: u16,
}

impl EndpointSpec {
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// `localhost` or a loopback IP: the same Pod (or machine).
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost" || self.ip().is_some_and(|ip| ip.is_loopback())
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.contains("://") {
            return Err(format!(
                "endpoint `{s}` is a URL: write host:port here, or use `url:` for a URL"
            ));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest
                .split_once("]:")
                .ok_or_else(|| format!("endpoint `{s}` needs a port: write [addr]:port"))?;
            (h, p)
        } else {
            s.rsplit_once(':').ok_or_else(|| {
                format!("endpoint `{s}` needs a port: write host:port, like api.internal:8080")
            })?
        };
        if host.is_empty() || host.contains(':') && host.parse::<IpAddr>().is_err() {
            return Err(format!("endpoint `{s}` has an invalid host"));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            return Err(format!("endpoint `{s}` has an invalid host `{host}`"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| format!("endpoint `{s}` has an invalid port `{port}`"))?;
        if port == 0 {
            return Err(format!("endpoint `{s}` has port 0"));
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for EndpointSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// An upstream `url:`: scheme decides TLS, the default port follows the scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub tls: bool,
    pub endpoint: EndpointSpec,
}

impl UpstreamUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!(
                "upstream URL `{s}` must start with http:// or https://"
            ));
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') || authority.contains('?') {
            return Err(format!(
                "upstream URL `{s}` has a path: legate forwards the client's path as is; write only scheme://host[:port]"
            ));
        }
        if authority.contains('@') {
            return Err(format!(
                "upstream URL `{s}` contains credentials: put them in request_headers instead"
            ));
        }
        let default_port = if tls { 443 } else { 80 };
        let has_port = if authority.starts_with('[') {
            authority.contains("]:")
        } else {
            authority.contains(':')
        };
        let endpoint = if has_port {
            EndpointSpec::parse(authority)?
        } else {
            EndpointSpec::parse(&format!("{authority}:{default_port}"))?
        };
        Ok(Self { tls, endpoint })
    }
}

/// The authority to send as Host for an upstream: the default port for the scheme is left out,
/// as a browser or curl would.
pub fn host_authority(ep: &EndpointSpec, tls: bool) -> String {
    let default_port = if tls { 443 } else { 80 };
    let host = if ep.host.contains(':') {
        format!("[{}]", ep.host)
    } else {
        ep.host.clone()
    };
    if ep.port == default_port {
        host
    } else {
        format!("{host}:{}", ep.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        assert_eq!(
            EndpointSpec::parse("httpbin.org:443").unwrap(),
            EndpointSpec {
                host: "httpbin.org".into(),
                port: 443
            }
        );
        assert_eq!(EndpointSpec::parse("[::1]:80").unwrap().host, "::1");
        assert!(EndpointSpec::parse("httpbin.org").is_err());
        assert!(EndpointSpec::parse("http://x:1").is_err());
        assert!(EndpointSpec::parse("x:99999").is_err());
        assert!(EndpointSpec::parse("bad host:80").is_err());
    }

    #[test]
    fn parses_urls_and_authorities() {
        let u = UpstreamUrl::parse("https://httpbin.org").unwrap();
        assert!(u.tls);
        assert_eq!(u.endpoint.port, 443);
        assert_eq!(host_authority(&u.endpoint, true), "httpbin.org");
        let u = UpstreamUrl::parse("http://127.0.0.1:9000/").unwrap();
        assert_eq!(host_authority(&u.endpoint, false), "127.0.0.1:9000");
        assert!(UpstreamUrl::parse("ftp://x").is_err());
        assert!(UpstreamUrl::parse("http://x/path").is_err());
    }
}
