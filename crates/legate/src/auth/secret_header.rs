//! A request header whose value comes from files: a token or API key
//! (`request_headers.set_from_file`), or basic auth from a username and a password file. The
//! value is re-read when the files change and is marked sensitive, so HTTP/2 never puts it in
//! a compression table; it never appears in logs or `/config`.

use crate::lifecycle::files::Reloadable;
use crate::tls::cert_info::CertInfo;
use crate::tls::load::read_secret;
use crate::tls::TlsError;
use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub enum Render {
    /// `prefix` + the file's content.
    Prefixed(String),
    /// `Basic base64(username:password)` from two files.
    Basic,
}

pub struct SecretHeader {
    name: String,
    pub header: HeaderName,
    sources: Vec<PathBuf>,
    render: Render,
    current: ArcSwap<HeaderValue>,
}

impl std::fmt::Debug for SecretHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretHeader")
            .field("name", &self.name)
            .field("header", &self.header)
            .field("value", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(transparent)]
    File(#[from] TlsError),
    #[error("{} holds characters not allowed in an HTTP header (a newline in the middle?)", .0.display())]
    NotAHeaderValue(PathBuf),
}

impl SecretHeader {
    pub fn new(
        name: String,
        header: HeaderName,
        sources: Vec<PathBuf>,
        render: Render,
    ) -> Result<Self, SecretError> {
        let value = read_value(&sources, &render)?;
        Ok(Self {
            name,
            header,
            sources,
            render,
            current: ArcSwap::from_pointee(value),
        })
    }

    pub fn value(&self) -> HeaderValue {
        (**self.current.load()).clone()
    }
}

fn read_value(sources: &[PathBuf], render: &Render) -> Result<HeaderValue, SecretError> {
    let parts = sources
        .iter()
        .map(|p| read_secret(p))
        .collect::<Result<Vec<_>, _>>()?;
    let text = match render {
        Render::Prefixed(prefix) => format!("{prefix}{}", parts.join("")),
        Render::Basic => format!(
            "Basic {}",
            crate::tls::client::base64_encode(parts.join(":").as_bytes())
        ),
    };
    let mut v = HeaderValue::from_str(&text)
        .map_err(|_| SecretError::NotAHeaderValue(sources.last().cloned().unwrap_or_default()))?;
    v.set_sensitive(true);
    Ok(v)
}

impl Reloadable for SecretHeader {
    fn name(&self) -> &str {
        &self.name
    }
    fn files(&self) -> Vec<PathBuf> {
        self.sources.clone()
    }
    fn reload(&self) -> Result<Option<CertInfo>, String> {
        let v = read_value(&self.sources, &self.render).map_err(|e| e.to_string())?;
        self.current.store(Arc::new(v));
        Ok(None)
    }
    fn leaf(&self) -> Option<CertInfo> {
        None
    }
}
