//! Files legate re-reads when they change: certificates, keys, CAs and credentials.
//!
//! Every `interval` each file's identity (device, inode, size, modification time, following
//! symlinks) is compared with the last one seen; SIGHUP reloads everything at once. Kubernetes
//! updates a mounted Secret by swapping the `..data` symlink, which changes the inode of every
//! file behind it at the same moment. A reload that fails (unparseable PEM, a key that does not
//! match, an expired certificate) keeps the old material in use, is logged with the reason and
//! counted in `legate_tls_reload_failures_total`; it is tried once more on the next tick, in
//! case the files were caught half-written.

use crate::telemetry::metrics::{Metrics, NameLabels};
use crate::tls::cert_info::CertInfo;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Something built from files.
pub trait Reloadable: Send + Sync {
    /// `listener:<name>`, `upstream:<name>`, `route:<name>:<header>`: logs and metric labels.
    fn name(&self) -> &str;
    /// The files it was built from (a directory setting expands to its files).
    fn files(&self) -> Vec<PathBuf>;
    /// Rebuild from the files; the certificate it now presents, if it presents one.
    fn reload(&self) -> Result<Option<CertInfo>, String>;
    /// The certificate it presents now.
    fn leaf(&self) -> Option<CertInfo>;
}

/// What identifies a file's content without reading it; `None` inside while the file is
/// missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp(Option<(u64, u64, u64, SystemTime)>);

impl Stamp {
    pub fn exists(&self) -> bool {
        self.0.is_some()
    }
}

pub fn stamp(path: &std::path::Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp(std::fs::metadata(path).ok().map(|m| {
        (
            m.dev(),
            m.ino(),
            m.len(),
            m.modified().unwrap_or(UNIX_EPOCH),
        )
    }))
}

struct Watched {
    item: Arc<dyn Reloadable>,
    files: Vec<PathBuf>,
    stamps: Vec<Stamp>,
    /// The last reload failed: try once more on the next tick.
    retry: bool,
}

pub struct Watcher {
    items: Vec<Watched>,
    metrics: Arc<Metrics>,
    expiry_warning: Duration,
}

impl Watcher {
    pub fn new(
        items: Vec<Arc<dyn Reloadable>>,
        metrics: Arc<Metrics>,
        expiry_warning: Duration,
    ) -> Self {
        let items = items
            .into_iter()
            .map(|item| {
                let files = item.files();
                let stamps = files.iter().map(|f| stamp(f)).collect();
                Watched {
                    item,
                    files,
                    stamps,
                    retry: false,
                }
            })
            .collect();
        let w = Self {
            items,
            metrics,
            expiry_warning,
        };
        for i in &w.items {
            if let Some(leaf) = i.item.leaf() {
                w.publish(i.item.name(), &leaf);
            }
        }
        w
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// After a config reload: watch `items`, keeping what was known of those already watched
    /// (the same objects, kept by the reload).
    pub fn set_items(&mut self, items: Vec<Arc<dyn Reloadable>>, expiry_warning: Duration) {
        self.expiry_warning = expiry_warning;
        let mut old = std::mem::take(&mut self.items);
        for item in items {
            if let Some(i) = old.iter().position(|w| Arc::ptr_eq(&w.item, &item)) {
                self.items.push(old.swap_remove(i));
                continue;
            }
            let files = item.files();
            let stamps = files.iter().map(|f| stamp(f)).collect();
            if let Some(leaf) = item.leaf() {
                self.publish(item.name(), &leaf);
            }
            self.items.push(Watched {
                item,
                files,
                stamps,
                retry: false,
            });
        }
    }

    /// Reloads what changed (everything when `force`).
    pub fn check(&mut self, force: bool) {
        for idx in 0..self.items.len() {
            let (changed, retry) = {
                let w = &self.items[idx];
                let now: Vec<Stamp> = w.files.iter().map(|f| stamp(f)).collect();
                (now != w.stamps, w.retry)
            };
            if !(force || changed || retry) {
                continue;
            }
            let w = &mut self.items[idx];
            let name = w.item.name().to_string();
            match w.item.reload() {
                Ok(leaf) => {
                    // A directory of CAs may have gained or lost files.
                    w.files = w.item.files();
                    w.stamps = w.files.iter().map(|f| stamp(f)).collect();
                    w.retry = false;
                    self.metrics
                        .tls_reloads
                        .get_or_create(&NameLabels { name: name.clone() })
                        .inc();
                    match &leaf {
                        Some(l) => {
                            tracing::info!(name, serial = %l.serial, expires = %crate::tls::format_unix(l.not_after), "reloaded certificate")
                        }
                        None => tracing::info!(name, "reloaded"),
                    }
                    if let Some(l) = leaf {
                        self.publish(&name, &l);
                    }
                }
                Err(reason) => {
                    w.stamps = w.files.iter().map(|f| stamp(f)).collect();
                    let again = !w.retry;
                    w.retry = again;
                    self.metrics
                        .tls_reload_failures
                        .get_or_create(&NameLabels { name: name.clone() })
                        .inc();
                    tracing::error!(name, error = %reason, will_retry = again,
                        "reload failed; still using the previous certificate/credentials");
                }
            }
        }
    }

    fn publish(&self, name: &str, leaf: &CertInfo) {
        self.metrics
            .tls_cert_expiry
            .get_or_create(&NameLabels {
                name: name.to_string(),
            })
            .set(leaf.not_after);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let left = leaf.not_after - now;
        if left < self.expiry_warning.as_secs() as i64 {
            tracing::warn!(name, serial = %leaf.serial, expires = %crate::tls::format_unix(leaf.not_after),
                days_left = left / 86_400, "certificate expires soon: rotate it");
        }
    }
}
