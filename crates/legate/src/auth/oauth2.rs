//! OAuth2 client credentials (RFC 6749 §4.4): legate gets the token, caches it, refreshes it
//! in the background before it expires, and adds `Authorization: Bearer …` to every request.
//!
//! - One fetch at a time per upstream (single flight): a burst of requests with no token
//!   waits for the same fetch instead of stampeding the token endpoint.
//! - Refreshes start `refresh_before` ahead of expiry (or at 80% of the token's life if that is
//!   sooner); a failed refresh keeps the old token for as long as it is valid and is retried
//!   with backoff.
//! - The client id and secret are read from their files at each fetch, so rotating them needs
//!   no restart. Neither they nor the token are ever logged.

use crate::config::OAuth2Config;
use crate::telemetry::metrics::{Metrics, TokenLabels};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Without `expires_in` a token is assumed to live this long.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
const MAX_RESPONSE: usize = 64 * 1024;

#[derive(Debug, Clone)]
struct Token {
    header: HeaderValue,
    expires_at: Instant,
    refresh_at: Instant,
}

/// `token_url` taken apart.
pub type TokenUrl = crate::upstream::oneshot::Url;

/// Parses `token_url` with the messages that name it.
pub fn parse_token_url(s: &str) -> Result<TokenUrl, String> {
    TokenUrl::parse("token_url", s, "use client_id_file and client_secret_file")
}

pub struct TokenSource {
    pub upstream: String,
    cfg: OAuth2Config,
    url: TokenUrl,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: ArcSwap<Option<Token>>,
    /// Held while fetching; remembers the last failure so a burst of requests without a token
    /// does not turn into a burst of token requests.
    fetching: tokio::sync::Mutex<Option<(Instant, String)>>,
    metrics: Arc<Metrics>,
}

/// After a failed token request, requests fail fast for this long instead of asking again.
const FAILURE_HOLD: Duration = Duration::from_secs(1);

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("upstream", &self.upstream)
            .field("token_url", &self.cfg.token_url)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token_url: {0}")]
    Url(String),
    #[error("TLS for the token endpoint: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

impl TokenSource {
    pub fn new(
        upstream: &str,
        cfg: &OAuth2Config,
        metrics: Arc<Metrics>,
    ) -> Result<Self, TokenError> {
        let url = parse_token_url(&cfg.token_url).map_err(TokenError::Url)?;
        let tls = if url.tls {
            let settings = crate::config::UpstreamTls {
                ca: cfg.ca.clone(),
                ..Default::default()
            };
            let sessions = Arc::new(rustls::client::ClientSessionMemoryCache::new(4));
            let (c, _) = crate::tls::client::build(&settings, &[b"http/1.1".to_vec()], &sessions)?;
            Some(Arc::new(c))
        } else {
            None
        };
        Ok(Self {
            upstream: upstream.to_string(),
            cfg: cfg.clone(),
            url,
            tls,
            token: ArcSwap::from_pointee(None),
            fetching: tokio::sync::Mutex::new(None),
            metrics,
        })
    }

    /// `Bearer <token>`, fetching one first if there is no valid token.
    pub async fn header(&self) -> Result<HeaderValue, String> {
        if let Some(t) = self.valid(Instant::now()) {
            return Ok(t.header);
        }
        let mut last_failure = self.fetching.lock().await;
        // Whoever held the lock may have fetched one meanwhile.
        let now = Instant::now();
        if let Some(t) = self.valid(now) {
            return Ok(t.header);
        }
        if let Some((at, why)) = last_failure.as_ref() {
            if now.duration_since(*at) < FAILURE_HOLD {
                return Err(format!("the last token request failed: {why}"));
            }
        }
        match self.fetch().await {
            Ok(t) => {
                *last_failure = None;
                Ok(t.header)
            }
            Err(e) => {
                *last_failure = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// The current token's header, if one is valid now.
    pub fn cached(&self) -> Option<HeaderValue> {
        self.valid(Instant::now()).map(|t| t.header)
    }

    fn valid(&self, now: Instant) -> Option<Token> {
        (**self.token.load())
            .as_ref()
            .filter(|t| now < t.expires_at)
            .cloned()
    }

    /// Keeps the token fresh until `stop`: refreshes ahead of expiry, retries failures with
    /// backoff (1 s doubling to 30 s) while the old token stays in use.
    pub async fn keep_fresh(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let due = (**self.token.load()).as_ref().map(|t| t.refresh_at);
            let wait = due.map_or(Duration::ZERO, |d| {
                d.saturating_duration_since(Instant::now())
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let result = {
                let mut last_failure = self.fetching.lock().await;
                // A request-driven fetch may have renewed it while this task slept.
                match (**self.token.load()).as_ref() {
                    Some(t) if Instant::now() < t.refresh_at => Ok(()),
                    _ => match self.fetch().await {
                        Ok(_) => {
                            *last_failure = None;
                            Ok(())
                        }
                        Err(e) => {
                            *last_failure = Some((Instant::now(), e.clone()));
                            Err(e)
                        }
                    },
                }
            };
            match result {
                Ok(()) => backoff = Duration::from_secs(1),
                Err(e) => {
                    let keeps = self.valid(Instant::now()).is_some();
                    tracing::warn!(upstream = %self.upstream, token_url = %self.cfg.token_url, error = %e,
                        keeping_old_token = keeps, retry_in = ?backoff, "OAuth2 token refresh failed");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    fn count(&self, result: &str) {
        self.metrics
            .oauth2_refreshes
            .get_or_create(&TokenLabels {
                upstream: self.upstream.clone(),
                result: result.to_string(),
            })
            .inc();
    }

    async fn fetch(&self) -> Result<Token, String> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.cfg.timeout.get(), self.request())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.cfg.timeout.get())));
        match result {
            Ok((access_token, lifetime)) => {
                let mut header =
                    HeaderValue::from_str(&format!("Bearer {access_token}")).map_err(|_| {
                        "the token holds characters not allowed in a header".to_string()
                    })?;
                header.set_sensitive(true);
                // Whichever comes first: `refresh_before` ahead of expiry, or 80% of the life.
                let ahead = self
                    .cfg
                    .refresh_before
                    .get()
                    .max(lifetime.mul_f64(0.2))
                    .min(lifetime);
                let t = Token {
                    header,
                    expires_at: started + lifetime,
                    refresh_at: started + (lifetime - ahead),
                };
                self.token.store(Arc::new(Some(t.clone())));
                self.count("ok");
                tracing::info!(upstream = %self.upstream, expires_in = ?lifetime, "OAuth2 token obtained");
                Ok(t)
            }
            Err(e) => {
                self.count("error");
                Err(e)
            }
        }
    }

    /// One token request; the access token and its lifetime.
    async fn request(&self) -> Result<(String, Duration), String> {
        let id =
            crate::tls::load::read_secret(&self.cfg.client_id_file).map_err(|e| e.to_string())?;
        let secret = crate::tls::load::read_secret(&self.cfg.client_secret_file)
            .map_err(|e| e.to_string())?;
        let mut form = String::from("grant_type=client_credentials");
        for (k, v) in [("scope", &self.cfg.scope), ("audience", &self.cfg.audience)] {
            if let Some(v) = v {
                form.push_str(&format!("&{k}={}", form_encode(v)));
            }
        }
        // RFC 6749 §2.3.1: client_secret_basic, with the parts form-encoded first.
        let basic = crate::tls::client::base64_encode(
            format!("{}:{}", form_encode(&id), form_encode(&secret)).as_bytes(),
        );
        let mut headers = http::HeaderMap::new();
        let basic = HeaderValue::try_from(format!("Basic {basic}")).map_err(|e| e.to_string())?;
        headers.insert(http::header::AUTHORIZATION, basic);
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        let resp = crate::upstream::oneshot::post(
            &self.url,
            self.tls.as_ref(),
            headers,
            Bytes::from(form),
            MAX_RESPONSE,
        )
        .await?;
        parse_token(resp.0, &resp.1)
    }
}

/// The access token and lifetime from a token response.
fn parse_token(status: StatusCode, body: &[u8]) -> Result<(String, Duration), String> {
    let json: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| format!("token endpoint answered {status} with a body that is not JSON"))?;
    if !status.is_success() {
        // `error` and `error_description` are meant for the client's operator (RFC 6749 §5.2).
        let err = json.get("error").and_then(|v| v.as_str()).unwrap_or("?");
        let desc = json
            .get("error_description")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        return Err(format!("token endpoint answered {status}: {err} {desc}"));
    }
    let token = json
        .get("access_token")
        .and_then(|v| v.as_str())
        .ok_or("token response has no access_token")?;
    let lifetime = json
        .get("expires_in")
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .map_or(DEFAULT_LIFETIME, Duration::from_secs);
    Ok((token.to_string(), lifetime))
}

/// `application/x-www-form-urlencoded` for one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_urls() {
        let u = parse_token_url("https://auth.example/oauth2/token?x=1").unwrap();
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port), ("auth.example", 443));
        assert_eq!(u.path, "/oauth2/token?x=1");
        let u = parse_token_url("http://127.0.0.1:9000/token").unwrap();
        assert_eq!((u.port, u.authority.as_str()), (9000, "127.0.0.1:9000"));
        assert!(parse_token_url("ftp://x/token").is_err());
        assert!(parse_token_url("https://user:pw@x/token").is_err());
    }

    #[test]
    fn token_responses() {
        let (t, life) = parse_token(
            StatusCode::OK,
            br#"{"access_token":"abc","token_type":"Bearer","expires_in":120}"#,
        )
        .unwrap();
        assert_eq!((t.as_str(), life), ("abc", Duration::from_secs(120)));
        let e = parse_token(
            StatusCode::UNAUTHORIZED,
            br#"{"error":"invalid_client","error_description":"bad secret"}"#,
        )
        .unwrap_err();
        assert!(e.contains("invalid_client") && e.contains("401"), "{e}");
        assert!(parse_token(StatusCode::OK, b"<html>").is_err());
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }
}
