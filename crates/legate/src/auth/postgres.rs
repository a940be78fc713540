//! `upstreams[].postgres`: the database login legate performs for the app. The user name and
//! password come from files (a mounted Secret) and are re-read when the files change, so a
//! rotated password is used by the next connection without a restart.

use crate::config::PostgresLogin;
use crate::lifecycle::files::Reloadable;
use crate::tcp::postgres::login::Credentials;
use crate::tls::cert_info::CertInfo;
use crate::tls::load::read_secret;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::Arc;

pub struct PostgresCredentials {
    name: String,
    user: Option<String>,
    user_file: Option<PathBuf>,
    password_file: PathBuf,
    current: ArcSwap<Credentials>,
}

impl std::fmt::Debug for PostgresCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCredentials")
            .field("name", &self.name)
            .finish()
    }
}

impl PostgresCredentials {
    pub fn new(upstream: &str, cfg: &PostgresLogin) -> Result<Self, String> {
        let mut me = Self {
            name: format!("upstream:{upstream}:postgres"),
            user: cfg.user.clone(),
            user_file: cfg.user_file.clone(),
            password_file: cfg.password_file.clone(),
            current: ArcSwap::from_pointee(Credentials {
                user: String::new(),
                password: Vec::new(),
            }),
        };
        let creds = me.read()?;
        me.current = ArcSwap::from_pointee(creds);
        Ok(me)
    }

    fn read(&self) -> Result<Credentials, String> {
        let user = match (&self.user, &self.user_file) {
            (Some(u), _) => u.clone(),
            (None, Some(f)) => read_secret(f).map_err(|e| format!("postgres.user_file: {e}"))?,
            (None, None) => return Err("postgres: no user".into()),
        };
        if user.is_empty() || user.contains('\0') {
            return Err("postgres: the user name is empty or holds a NUL".into());
        }
        let password =
            read_secret(&self.password_file).map_err(|e| format!("postgres.password_file: {e}"))?;
        Ok(Credentials {
            user,
            password: password.into_bytes(),
        })
    }

    pub fn get(&self) -> Arc<Credentials> {
        self.current.load_full()
    }
}

impl Reloadable for PostgresCredentials {
    fn name(&self) -> &str {
        &self.name
    }
    fn files(&self) -> Vec<PathBuf> {
        self.user_file
            .iter()
            .chain(std::iter::once(&self.password_file))
            .cloned()
            .collect()
    }
    fn reload(&self) -> Result<Option<CertInfo>, String> {
        self.current.store(Arc::new(self.read()?));
        Ok(None)
    }
    fn leaf(&self) -> Option<CertInfo> {
        None
    }
}
