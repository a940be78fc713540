//! Credentials legate adds on the app's behalf: headers from files (tokens, API keys, basic
//! auth), OAuth2 client-credentials tokens, and database logins. The app never holds a secret.

pub mod oauth2;
pub mod postgres;
pub mod secret_header;

use std::sync::Arc;

/// An upstream's `auth:`.
#[derive(Debug, Clone)]
pub enum UpstreamAuth {
    Basic(Arc<secret_header::SecretHeader>),
    OAuth2(Arc<oauth2::TokenSource>),
}

impl UpstreamAuth {
    /// Sets `Authorization` if no waiting is needed (basic auth, a valid cached token): the
    /// common case, with no timer or future on the request path.
    pub fn apply_now(&self, headers: &mut http::HeaderMap) -> bool {
        let value = match self {
            UpstreamAuth::Basic(h) => Some(h.value()),
            UpstreamAuth::OAuth2(t) => t.cached(),
        };
        match value {
            Some(v) => {
                headers.insert(http::header::AUTHORIZATION, v);
                true
            }
            None => false,
        }
    }

    /// Sets `Authorization` on a request to this upstream.
    pub async fn apply(&self, headers: &mut http::HeaderMap) -> Result<(), String> {
        let value = match self {
            UpstreamAuth::Basic(h) => h.value(),
            UpstreamAuth::OAuth2(t) => t.header().await?,
        };
        headers.insert(http::header::AUTHORIZATION, value);
        Ok(())
    }
}
