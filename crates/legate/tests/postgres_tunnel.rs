//! The database tunnel against a real PostgreSQL (Debian's server, a throwaway cluster that
//! accepts only TLS with client certificates or SCRAM), with psql and pgbench as the app, and
//! the real `legate` binary in between: postgres-TLS straight to the server (quick mode), the
//! password the app never sees (SCRAM through TLS, rotation, a wrong password), a Unix socket
//! for psql's `host=/dir`, and the mTLS tunnel pair (app → legate A → legate B → db).

#[path = "support/pg.rs"]
mod pg;
#[path = "support/pki.rs"]
mod pki;
#[path = "support/proc.rs"]
mod proc;

use pg::{pgbench_select, psql, Pg, APP_PASSWORD};
use proc::{free_port, http_get, legate_ready, local, wait_for, Proc, TempDir};
use std::path::Path;
use std::time::Duration;

fn metrics(admin: u16) -> String {
    http_get(local(admin), "/metrics", Duration::from_secs(5))
        .unwrap()
        .text()
}

fn tcp_log(p: &Proc) -> Vec<serde_json::Value> {
    p.stdout_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "tcp")
        .collect()
}

/// Waits until `p` has logged a closed connection that `pred` accepts.
fn wait_logged(p: &Proc, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    wait_for(what, Duration::from_secs(10), || {
        let lines = tcp_log(p);
        lines
            .iter()
            .any(&pred)
            .then_some(())
            .ok_or_else(|| format!("{lines:?}"))
    });
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn postgres_tls_mode_with_a_client_certificate() {
    let pg = Pg::start();
    pg.init_pgbench();
    let dir = TempDir::new("pg-cert");
    let (cert, key) = pg.client_cert("certuser", dir.path(), "certuser");
    let (port, admin) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{port}");
    let upstream = format!("127.0.0.1:{}", pg.port);
    let admin_addr = format!("127.0.0.1:{admin}");
    let lg = legate_ready(
        "legate tcp",
        &[
            "tcp",
            "--listen",
            &listen,
            "--upstream",
            &upstream,
            "--tls-mode",
            "postgres",
            "--ca",
            s(&pg.ca_file),
            "--cert",
            s(&cert),
            "--key",
            s(&key),
            "--server-name",
            "localhost",
            "--admin",
            &admin_addr,
        ],
        admin,
    );
    // The app: libpq's default sslmode=prefer to legate; legate answers N, then does TLS with
    // the client certificate itself.
    let via = format!("host=127.0.0.1 port={port} user=certuser dbname=postgres");
    let out = psql(
        &via,
        "select ssl, client_dn from pg_stat_ssl where pid = pg_backend_pid()",
    )
    .unwrap_or_else(|e| panic!("psql through legate: {e}\n{}", lg.output_report()));
    assert_eq!(
        out, "t|/CN=certuser",
        "the server saw TLS and our certificate"
    );
    // The same psql straight to the server without TLS is refused by the server.
    let direct = format!(
        "host=127.0.0.1 port={} user=certuser dbname=postgres sslmode=disable",
        pg.port
    );
    let err = psql(&direct, "select 1").unwrap_err();
    assert!(err.contains("no pg_hba.conf entry"), "{err}");
    // With TLS but without the client certificate, also refused: legate supplied it.
    let err = psql(
        &format!(
            "host=localhost port={} user=certuser dbname=postgres sslmode=verify-full sslrootcert={}",
            pg.port,
            s(&pg.ca_file)
        ),
        "select 1",
    )
    .unwrap_err();
    assert!(err.contains("certificate"), "{err}");

    // The app's own SCRAM login passes through too (legate drops the -PLUS offer the app
    // cannot take on its plaintext hop), and so does a wrong password's error.
    let own = format!(
        "host=127.0.0.1 port={port} user=app dbname=postgres password={}",
        pg::APP_PASSWORD
    );
    let out =
        psql(&own, "select current_user").unwrap_or_else(|e| panic!("{e}\n{}", lg.output_report()));
    assert_eq!(out, "app");
    let err = psql(
        &format!("host=127.0.0.1 port={port} user=app dbname=postgres password=wrong"),
        "select 1",
    )
    .unwrap_err();
    assert!(err.contains("password authentication failed"), "{err}");

    // A certificate the server does not trust: refused by the server, and legate says so.
    let foreign = pki::Ca::new("foreign CA");
    let (fc, fk) = foreign
        .issue(pki::client(&[], "certuser"))
        .write(dir.path(), "foreign");
    let (f_port, f_admin) = (free_port(), free_port());
    let f_listen = format!("127.0.0.1:{f_port}");
    let f_admin_addr = format!("127.0.0.1:{f_admin}");
    let lf = legate_ready(
        "legate foreign cert",
        &[
            "tcp",
            "--listen",
            &f_listen,
            "--upstream",
            &upstream,
            "--tls-mode",
            "postgres",
            "--ca",
            s(&pg.ca_file),
            "--cert",
            s(&fc),
            "--key",
            s(&fk),
            "--server-name",
            "localhost",
            "--admin",
            &f_admin_addr,
        ],
        f_admin,
    );
    let err = psql(
        &format!("host=127.0.0.1 port={f_port} user=certuser dbname=postgres"),
        "select 1",
    )
    .unwrap_err();
    assert!(!err.is_empty());
    wait_logged(&lf, "the refusal logged", |l| {
        l["close"].as_str().unwrap_or("").starts_with("tls-")
    });

    let report = pgbench_select("127.0.0.1", port, "certuser", 10);
    assert!(report.contains("tps = "), "{report}");
    // A tunnel is counted when it ends, on legate's side, after pgbench has already left.
    wait_for(
        "pgbench's sessions counted",
        Duration::from_secs(10),
        || {
            let m = metrics(admin);
            if m.contains("legate_tcp_connections_total{listener=\"app\",result=\"client-closed\"}")
            {
                Ok(())
            } else {
                Err(m)
            }
        },
    );
    let lines = tcp_log(&lg);
    // Every session ended normally (the app's Terminate reaches the server, which may close
    // its side first), but the one with the wrong password.
    let auth_failed = lines.iter().filter(|l| l["close"] == "auth-failed").count();
    assert_eq!(auth_failed, 1, "{lines:?}");
    assert!(
        lines.iter().all(|l| matches!(
            l["close"].as_str(),
            Some("client-closed" | "upstream-closed" | "auth-failed")
        )),
        "{lines:?}"
    );
    assert!(lines
        .iter()
        .all(|l| l["endpoint"] == format!("127.0.0.1:{}", pg.port)));
}

#[test]
fn the_app_logs_in_without_a_password_tcp_and_unix_socket() {
    let pg = Pg::start();
    let dir = TempDir::new("pg-login");
    let pw = dir.write("password", format!("{APP_PASSWORD}\n"));
    let sock_dir = dir.path().join("cloudsql");
    let (port, admin, md5_port, plain_port) = (free_port(), free_port(), free_port(), free_port());
    let config = format!(
        r#"
admin: {{ listen: 127.0.0.1:{admin} }}
files: {{ watch_interval: 100ms }}
listeners:
  - name: db
    listen: 127.0.0.1:{port}
    protocol: tcp
    upstream: pg
  - name: db-socket
    listen: unix:{sock}/.s.PGSQL.5999
    protocol: tcp
    upstream: pg
  - name: md5
    listen: 127.0.0.1:{md5_port}
    protocol: tcp
    upstream: pg-md5
  - name: plain
    listen: 127.0.0.1:{plain_port}
    protocol: tcp
    upstream: pg-plain
upstreams:
  - name: pg-md5
    endpoints: [127.0.0.1:{pg_port}]
    tls: {{ mode: postgres, ca: {ca}, server_name: localhost }}
    postgres: {{ user: legacy_md5, password_file: {pw} }}
  - name: pg-plain
    endpoints: [127.0.0.1:{pg_port}]
    tls: {{ mode: postgres, ca: {ca}, server_name: localhost }}
    postgres: {{ user: legacy_plain, password_file: {pw} }}
  - name: pg
    endpoints: [127.0.0.1:{pg_port}]
    tls: {{ mode: postgres, ca: {ca}, server_name: localhost }}
    postgres: {{ user: app, password_file: {pw} }}
"#,
        sock = sock_dir.display(),
        pg_port = pg.port,
        ca = pg.ca_file.display(),
        pw = pw.display(),
    );
    let file = dir.write("legate.yaml", &config);
    let check = proc::legate_cmd(&["check", "-c", s(&file)]);
    assert_eq!(check.code(), Some(0), "{}", check.describe());
    // At debug level: the password must not reach the log even there (docs/security.md).
    let lg = legate_ready(
        "legate run",
        &["--log-level", "debug", "run", "-c", s(&file)],
        admin,
    );

    // The app names whatever user it likes and has no password; legate logs in as `app`.
    let who = "select current_user, (select ssl from pg_stat_ssl where pid = pg_backend_pid())";
    let tcp = format!("host=127.0.0.1 port={port} user=anyone dbname=postgres");
    let out = psql(&tcp, who).unwrap_or_else(|e| panic!("{e}\n{}", lg.output_report()));
    assert_eq!(out, "app|t");
    let unix = format!(
        "host={} port=5999 user=anyone dbname=postgres",
        sock_dir.display()
    );
    assert_eq!(
        psql(&unix, who).unwrap(),
        "app|t",
        "psql over the Unix socket"
    );
    let err = psql(
        &format!(
            "host=127.0.0.1 port={} user=app dbname=postgres sslmode=disable",
            pg.port
        ),
        "select 1",
    )
    .unwrap_err();
    assert!(err.contains("no pg_hba.conf entry"), "{err}");

    // A wrong password (a bad rotation): the app gets the server's own error.
    std::fs::write(&pw, "not-the-password\n").unwrap();
    let err = wait_for(
        "the wrong password in use",
        Duration::from_secs(10),
        || match psql(&tcp, "select 1") {
            Ok(_) => Err("still logged in".to_string()),
            Err(e) => Ok(e),
        },
    );
    assert!(
        err.contains("password authentication failed for user \"app\""),
        "{err}"
    );
    // Rotated back: the next connection works, no restart.
    std::fs::write(&pw, format!("{APP_PASSWORD}\n")).unwrap();
    wait_for("the right password again", Duration::from_secs(10), || {
        psql(&tcp, "select 1").map(|_| ())
    });
    let lines = tcp_log(&lg);
    assert!(
        lines.iter().any(|l| l["close"] == "auth-failed"
            && l["error"]
                .as_str()
                .unwrap_or("")
                .contains("password authentication failed")),
        "{lines:?}"
    );
    let m = metrics(admin);
    assert!(m.contains("result=\"auth-failed\""), "{m}");
    // Neither password (the right one, the wrong one) appears in the logs, the metrics, or
    // what the app was told.
    let logs = lg.output_lines();
    assert!(
        logs.iter().any(|l| l.contains("DEBUG")),
        "debug logging was on"
    );
    for secret in [APP_PASSWORD, "not-the-password"] {
        for line in &logs {
            assert!(!line.contains(secret), "secret in log: {line}");
        }
        assert!(!m.contains(secret));
        assert!(!err.contains(secret), "secret in the app's error: {err}");
    }
    let cfg = http_get(local(admin), "/config", Duration::from_secs(5))
        .unwrap()
        .text();
    assert!(!cfg.contains(APP_PASSWORD) && !cfg.contains("not-the-password"));
}

#[test]
fn mtls_tunnel_pair_to_the_database() {
    let pg = Pg::start();
    pg.init_pgbench();
    let dir = TempDir::new("pg-pair");
    let ca = pki::Ca::new("tunnel CA");
    std::fs::write(dir.path().join("tunnel-ca.pem"), ca.pem()).unwrap();
    ca.issue(pki::server(&["legate-b"]))
        .write(dir.path(), "b-server");
    ca.issue(pki::client(&["spiffe://test/legate-a"], "legate-a"))
        .write(dir.path(), "a-client");
    ca.issue(pki::client(&["spiffe://test/intruder"], "intruder"))
        .write(dir.path(), "intruder");
    let (db_cert, db_key) = pg.client_cert("certuser", dir.path(), "b-db");
    let (a_port, a_admin, b_port, b_admin) = (free_port(), free_port(), free_port(), free_port());
    let d = dir.path().display();
    let b = dir.write(
        "b.yaml",
        format!(
            r#"
admin: {{ listen: 127.0.0.1:{b_admin} }}
listeners:
  - name: tunnel-in
    listen: 127.0.0.1:{b_port}
    protocol: tcp
    upstream: db
    tls:
      cert: {d}/b-server.pem
      key: {d}/b-server.key
      client_ca: {d}/tunnel-ca.pem
      allow: {{ uri: ["spiffe://test/legate-a"] }}
upstreams:
  - name: db
    endpoints: [127.0.0.1:{pg}]
    tls: {{ mode: postgres, ca: {ca}, server_name: localhost, client_cert: {c}, client_key: {k} }}
"#,
            pg = pg.port,
            ca = pg.ca_file.display(),
            c = db_cert.display(),
            k = db_key.display(),
        ),
    );
    let a_cfg = |client: &str, port: u16, admin: u16| {
        format!(
            r#"
admin: {{ listen: 127.0.0.1:{admin} }}
listeners:
  - name: db
    listen: 127.0.0.1:{port}
    protocol: tcp
    upstream: legate-b
upstreams:
  - name: legate-b
    endpoints: [127.0.0.1:{b_port}]
    tls: {{ ca: {d}/tunnel-ca.pem, server_name: legate-b, client_cert: {d}/{client}.pem, client_key: {d}/{client}.key }}
"#
        )
    };
    let a = dir.write("a.yaml", a_cfg("a-client", a_port, a_admin));
    let lb = legate_ready("legate B", &["run", "-c", s(&b)], b_admin);
    let la = legate_ready("legate A", &["run", "-c", s(&a)], a_admin);
    let via = format!("host=127.0.0.1 port={a_port} user=certuser dbname=postgres");
    let out = psql(
        &via,
        "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", la.output_report(), lb.output_report()));
    assert_eq!(out, "t");
    pgbench_select("127.0.0.1", a_port, "certuser", 10);

    // An ambassador whose identity B does not allow gets nowhere; B says who it refused.
    let (i_port, i_admin) = (free_port(), free_port());
    let i = dir.write("intruder.yaml", a_cfg("intruder", i_port, i_admin));
    let _li = legate_ready("intruder", &["run", "-c", s(&i)], i_admin);
    let err = psql(
        &format!("host=127.0.0.1 port={i_port} user=certuser dbname=postgres"),
        "select 1",
    )
    .unwrap_err();
    assert!(!err.is_empty());
    wait_logged(&lb, "B logs the refusal", |l| {
        l["close"] == "tls-peer-not-allowed"
    });
    assert!(lb
        .stdout_lines()
        .iter()
        .any(|l| l.contains("spiffe://test/intruder")));
}
