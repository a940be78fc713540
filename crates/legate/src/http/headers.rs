//! Header handling between the two hops: hop-by-hop removal (RFC 9110 §7.6.1), the route's
//! set/add/remove rules, and the Host the upstream sees.

use crate::config::HeaderRules;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection and must not be forwarded.
const HOP_COUNT: usize = 6;
const HOP_BY_HOP: [HeaderName; HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
];

/// Removes hop-by-hop headers, including those named in `Connection`. For an upgrade
/// (WebSocket) request or a 101 response, `Connection: upgrade` and `Upgrade` are the point of
/// the message and stay. `consume_proxy_auth`: a request's `Proxy-Authorization` is for the
/// proxy it reaches (legate), not for the upstream (RFC 9110 §11.7.2).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool, consume_proxy_auth: bool) {
    // Most messages carry none of these, and most of the rest only `Connection` (every nginx
    // response says `Connection: keep-alive`): one pass over the names notes which are there,
    // and only those are looked up and removed (each lookup hashes the name).
    const TE_BIT: u32 = 1 << HOP_COUNT;
    const PROXY_AUTH_BIT: u32 = TE_BIT << 1;
    let mut present = 0u32;
    for n in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == n) {
            present |= 1 << i;
        } else if n == header::TE {
            present |= TE_BIT;
        } else if consume_proxy_auth && n == header::PROXY_AUTHORIZATION {
            present |= PROXY_AUTH_BIT;
        }
    }
    if present == 0 {
        return;
    }
    if present & PROXY_AUTH_BIT != 0 {
        headers.remove(header::PROXY_AUTHORIZATION);
    }
    // HOP_BY_HOP[0] is Connection: the names it lists go too.
    if present & 1 != 0 {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .filter(|t| !(t.is_empty() || keep_upgrade && t.eq_ignore_ascii_case("upgrade")))
            // `keep-alive` and `close` are what nearly every Connection says: no lookup for
            // `close` (no such header), the fixed list covers `keep-alive`.
            .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) == 0
            || keep_upgrade && (name == header::CONNECTION || name == header::UPGRADE)
        {
            continue;
        }
        headers.remove(name);
    }
    // `TE: trailers` is end-to-end meaningful (gRPC needs it); other TE values are not.
    if present & TE_BIT != 0 {
        if let Some(te) = headers.get(header::TE) {
            if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
                headers.remove(header::TE);
            }
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// True for an HTTP/1.1 request asking to switch protocols (WebSocket and friends).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// A route's header rules, parsed once.
#[derive(Debug, Default, Clone)]
pub struct CompiledRules {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid header `{0}` in rules")]
pub struct RuleError(String);

impl CompiledRules {
    pub fn compile(rules: &HeaderRules) -> Result<Self, RuleError> {
        let pair = |k: &String, v: &String| -> Result<(HeaderName, HeaderValue), RuleError> {
            Ok((
                HeaderName::from_bytes(k.as_bytes()).map_err(|_| RuleError(k.clone()))?,
                HeaderValue::from_str(v).map_err(|_| RuleError(k.clone()))?,
            ))
        };
        Ok(Self {
            set: rules
                .set
                .iter()
                .map(|(k, v)| pair(k, v))
                .collect::<Result<_, _>>()?,
            add: rules
                .add
                .iter()
                .map(|(k, v)| pair(k, v))
                .collect::<Result<_, _>>()?,
            remove: rules
                .remove
                .iter()
                .map(|k| HeaderName::from_bytes(k.as_bytes()).map_err(|_| RuleError(k.clone())))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Remove first, then set, then add: `remove: [X]` plus `set: {X: v}` leaves exactly `X: v`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_and_standard_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Foo"),
        );
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false, true);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn proxy_authorization_is_consumed_unless_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic c2VjcmV0"),
        );
        h.insert("x-keep", HeaderValue::from_static("1"));
        let mut forwarded = h.clone();
        strip_hop_by_hop(&mut h, false, true);
        assert!(!h.contains_key(header::PROXY_AUTHORIZATION), "{h:?}");
        assert!(h.contains_key("x-keep"));
        strip_hop_by_hop(&mut forwarded, false, false);
        assert_eq!(
            forwarded.get(header::PROXY_AUTHORIZATION).unwrap(),
            "Basic c2VjcmV0"
        );
    }

    #[test]
    fn keeps_upgrade_and_te_trailers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
    }

    #[test]
    fn rules_apply_in_order() {
        let mut cfg = HeaderRules::default();
        cfg.remove.push("X-Debug".into());
        cfg.set
            .insert("X-Client-ID".into(), "microservice-001".into());
        cfg.add.insert("Via".into(), "legate".into());
        let r = CompiledRules::compile(&cfg).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-debug", HeaderValue::from_static("1"));
        h.insert("x-client-id", HeaderValue::from_static("spoofed"));
        h.insert("via", HeaderValue::from_static("1.1 other"));
        r.apply(&mut h);
        assert!(!h.contains_key("x-debug"));
        assert_eq!(h.get("x-client-id").unwrap(), "microservice-001");
        assert_eq!(h.get_all("via").iter().count(), 2);
    }
}
