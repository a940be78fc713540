//! TLS 1.0 to a legacy mTLS backend through the system OpenSSL (`--features legacy-tls`),
//! against a real `openssl s_server -tls1` that requires our PKCS#12 client certificate.
//! Run by scripts/test as `cargo test -p legate --features legacy-tls --test legacy_tls`.
#![cfg(feature = "legacy-tls")]

mod common;
#[path = "support/pki.rs"]
mod pki;
#[path = "support/proc.rs"]
mod proc;

use common::*;
use pki::Ca;
use proc::{free_port, local, require_tool, wait_for, Proc, TempDir};
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_0_mtls_with_pkcs12_through_openssl() {
    require_tool("openssl", "version");
    let dir = TempDir::new("legacy-tls");
    let d = dir.path();
    let ca = Ca::new("old bank CA");
    std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();
    ca.issue(pki::server(&["bank.test"])).write(d, "server");
    let client = ca.issue(pki::client(&[], "legacy-gateway"));
    let (p12, pass) = client.write_p12(d, "client", "bank password");
    let port = free_port();
    let mut server = Proc::spawn(
        "openssl s_server -tls1",
        Command::new("openssl")
            .args(["s_server", "-www", "-tls1", "-cipher", "DEFAULT@SECLEVEL=0"])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(d.join("server.pem"))
            .arg("-key")
            .arg(d.join("server.key"))
            .args(["-Verify", "1", "-CAfile"])
            .arg(d.join("ca.pem")),
    )
    .unwrap();
    wait_for("s_server -tls1", Duration::from_secs(10), || {
        server.ensure_running();
        std::net::TcpStream::connect(local(port))
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let cfg = |tls: &str| {
        format!(
            r#"
admin: {{ listen: 127.0.0.1:0 }}
runtime: {{ workers: 1 }}
listeners:
  - name: app
    listen: 127.0.0.1:0
    routes: [ {{ name: default, upstream: bank }} ]
upstreams:
  - name: bank
    endpoints: ["127.0.0.1:{port}"]
    tls:
      server_name: bank.test
      ca: {ca}
{tls}
"#,
            ca = d.join("ca.pem").display()
        )
    };
    let legacy = Legate::start(&cfg(&format!(
        "      min_version: \"1.0\"\n      pkcs12: {{ file: {}, password_file: {} }}",
        p12.display(),
        pass.display()
    )));
    let r = get(legacy.addr, "/").await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let page = String::from_utf8_lossy(&r.body);
    assert!(
        page.contains("TLSv1\n") || page.contains("Protocol  : TLSv1\n"),
        "{page}"
    );

    // rustls (the default for a 1.2+ minimum) cannot talk to it, and says why.
    let modern = Legate::start(&cfg(&format!(
        "      pkcs12: {{ file: {}, password_file: {} }}",
        p12.display(),
        pass.display()
    )));
    let r = get(modern.addr, "/").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("legate-error"), Some("tls-version-mismatch"));

    // Pins hold on the OpenSSL path too.
    let pinned = Legate::start(&cfg(&format!(
        "      min_version: \"1.0\"\n      pkcs12: {{ file: {}, password_file: {} }}\n      pin_spki_sha256: [\"{}=\"]",
        p12.display(),
        pass.display(),
        "A".repeat(43)
    )));
    let r = get(pinned.addr, "/").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("legate-error"), Some("tls-pin-mismatch"));

    // The OpenSSL path verifies too: a wrong name is refused with its own reason.
    let wrong = Legate::start(
        &cfg("      min_version: \"1.0\"\n")
            .replace("server_name: bank.test", "server_name: other.test"),
    );
    let r = get(wrong.addr, "/").await;
    assert_eq!(r.status, 502);
    assert_eq!(
        r.header("legate-error"),
        Some("tls-hostname-mismatch"),
        "{:?}",
        r.body
    );
}
