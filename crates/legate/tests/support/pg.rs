//! A throwaway PostgreSQL cluster for the database-tunnel tests: `initdb` in a temp dir, a
//! free port on 127.0.0.1, `ssl = on` with a certificate from the test CA, and a `pg_hba.conf`
//! that accepts only TLS over TCP (`hostssl`): client-certificate logins for `certuser`,
//! SCRAM-SHA-256 for `app`. Plain TCP connections are refused by the server itself.
//!
//! PostgreSQL refuses to run as root, so as root (CI) the cluster runs as the `postgres` user.
#![allow(dead_code)]

use super::pki::{self, Ca};
use super::proc::{free_port, require_tool, wait_for, Proc, TempDir};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const APP_PASSWORD: &str = "s3cret-app-pw";

/// `/usr/lib/postgresql/<newest>/bin`.
pub fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let v: u32 = e.file_name().to_str()?.parse().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").exists().then_some((v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().map(|(_, p)| p).unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries not found under /usr/lib/postgresql; \
             run `bash scripts/test`, which installs postgresql"
        )
    })
}

/// `(uid, gid)` of the `postgres` user when running as root.
fn run_as() -> Option<(u32, u32)> {
    // SAFETY-free check: geteuid through `id -u`.
    let me = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let id = |flag: &str| -> Option<u32> {
        let o = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    };
    Some((
        id("-u").expect("a `postgres` user (the postgresql package creates it)"),
        id("-g")?,
    ))
}

fn as_pg(cmd: &mut Command) -> &mut Command {
    if let Some((uid, gid)) = run_as() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Runs `cmd` to completion; fails the test with its stderr if it did not succeed.
fn run_ok(what: &str, cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chown_r(path: &Path) {
    if let Some((uid, gid)) = run_as() {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

pub struct Pg {
    pub port: u16,
    pub dir: TempDir,
    pub ca: Ca,
    /// The CA certificate (PEM) clients verify the server with.
    pub ca_file: PathBuf,
    proc: Option<Proc>,
}

impl Pg {
    pub fn start() -> Pg {
        require_tool("psql", "--version");
        let bin = bin_dir();
        let dir = TempDir::new("pg");
        let data = dir.path().join("data");
        chown_r(dir.path());
        run_ok(
            "initdb",
            as_pg(Command::new(bin.join("initdb")).args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ])),
        );
        let ca = Ca::new("legate test db CA");
        let server = ca.issue(pki::server(&["localhost", "127.0.0.1"]));
        let (cert, key) = server.write(&data, "server");
        let ca_file = dir.write("ca.pem", ca.pem());
        std::fs::copy(&ca_file, data.join("ca.pem")).unwrap();
        let port = free_port();
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\n\
             password_encryption = 'scram-sha-256'\nfsync = off\nmax_connections = 50\n",
            data.display(),
            cert.display(),
            key.display(),
            data.join("ca.pem").display()
        );
        let mut pc = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        pc.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), pc).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all certuser 127.0.0.1/32 cert\n\
             hostssl all app 127.0.0.1/32 scram-sha-256\n\
             hostssl all legacy_md5 127.0.0.1/32 md5\n\
             hostssl all legacy_plain 127.0.0.1/32 password\n",
        )
        .unwrap();
        chown_r(&data);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.args(["-D", data.to_str().unwrap()]);
        let proc = Proc::spawn("postgres", as_pg(&mut cmd)).unwrap();
        let mut pg = Pg {
            port,
            dir,
            ca,
            ca_file,
            proc: Some(proc),
        };
        wait_for("postgres accepting", Duration::from_secs(30), || {
            if let Some(p) = pg.proc.as_mut() {
                p.ensure_running();
            }
            let o = pg.psql_local("select 1").map_err(|e| e.to_string())?;
            if o.trim() == "1" {
                Ok(())
            } else {
                Err(o)
            }
        });
        pg.psql_local(&format!(
            "create user certuser; create user app password '{APP_PASSWORD}'; \
             set password_encryption = 'md5'; create user legacy_md5 password '{APP_PASSWORD}'; \
             create user legacy_plain password '{APP_PASSWORD}'; \
             grant all on schema public to app, certuser;"
        ))
        .expect("create users");
        pg
    }

    /// `pgbench -i` tables, readable by the test users.
    pub fn init_pgbench(&self) {
        run_ok(
            "pgbench -i",
            Command::new("pgbench").args([
                "-i",
                "-q",
                "-h",
                self.data().to_str().unwrap(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "postgres",
            ]),
        );
        self.psql_local("grant select on all tables in schema public to app, certuser")
            .expect("grant");
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// psql as the superuser over the server's Unix socket (trust).
    pub fn psql_local(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args([
                "-h",
                self.data().to_str().unwrap(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-Atc",
                sql,
            ])
            .env_remove("PGPASSWORD")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A client certificate for `cert` authentication as `user` (its CN), from this CA.
    pub fn client_cert(&self, user: &str, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        self.ca.issue(pki::client(&[], user)).write(dir, name)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            // Fast shutdown; the Proc's own drop kills whatever is left.
            p.signal("INT");
            let _ = p.wait_exit(Duration::from_secs(10));
        }
    }
}

/// Runs psql with a connection string; `Ok(stdout)` or `Err(stderr)`.
pub fn psql(conninfo: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([conninfo, "-v", "ON_ERROR_STOP=1", "-Atc", sql])
        .env_remove("PGPASSWORD")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `pgbench -S -c 8 -j 2 -T secs` against `conninfo` (already initialised); returns its output
/// after checking it finished with no failed transaction.
pub fn pgbench_select(host: &str, port: u16, user: &str, secs: u32) -> String {
    require_tool("pgbench", "--version");
    let out = Command::new("pgbench")
        .args([
            "-h",
            host,
            "-p",
            &port.to_string(),
            "-U",
            user,
            "-S",
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            &secs.to_string(),
            "postgres",
        ])
        .env("PGSSLMODE", "disable")
        .env_remove("PGPASSWORD")
        .output()
        .expect("run pgbench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench failed:\n{text}");
    assert!(
        text.contains("number of failed transactions: 0 (0.000%)"),
        "pgbench reported failures:\n{text}"
    );
    text
}
