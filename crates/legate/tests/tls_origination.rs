//! TLS origination to real peers: `openssl s_server` requiring our client certificate (PEM and
//! PKCS#12), each handshake failure as its own `legate-error: tls-<reason>`, public-key pins,
//! config errors that name the file and line, quick-mode flags, `insecure_skip_verify` warnings,
//! and client-certificate rotation seen by the upstream.

mod common;
#[path = "support/pki.rs"]
mod pki;
#[path = "support/proc.rs"]
mod proc;

use common::*;
use pki::{Ca, Issued};
use proc::{free_port, legate_bin, local, require_tool, wait_for, Proc, TempDir};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn p(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// `openssl s_server -www` on a free port with `args`; returns the process and its address.
fn s_server(dir: &Path, server: &str, args: &[&str]) -> (Proc, std::net::SocketAddr) {
    require_tool("openssl", "version");
    let port = free_port();
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-www", "-accept", &format!("127.0.0.1:{port}")])
        .args([
            "-cert",
            &p(dir, &format!("{server}.pem")),
            "-key",
            &p(dir, &format!("{server}.key")),
        ])
        .args(args);
    let mut proc = Proc::spawn("openssl s_server", &mut cmd).unwrap();
    wait_for("s_server listening", Duration::from_secs(10), || {
        proc.ensure_running();
        std::net::TcpStream::connect(local(port))
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    (proc, local(port))
}

fn upstream_config(addr: std::net::SocketAddr, tls: &str) -> String {
    format!(
        r#"
admin: {{ listen: 127.0.0.1:0 }}
runtime: {{ workers: 1 }}
access_log: off
listeners:
  - name: app
    listen: 127.0.0.1:0
    routes:
      - name: default
        upstream: bank
upstreams:
  - name: bank
    endpoints: ["{addr}"]
    pool: {{ max_idle_per_endpoint: 0 }}
    tls:
      server_name: bank.test
{tls}
"#
    )
}

struct Pki {
    dir: TempDir,
    ca: Ca,
    client: Issued,
}

fn pki(tag: &str) -> Pki {
    let dir = TempDir::new(tag);
    let d = dir.path();
    let ca = Ca::new("bank CA");
    std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();
    ca.issue(pki::server(&["bank.test"])).write(d, "server");
    ca.issue(Leaf {
        dns: &["bank.test"],
        validity: pki::expired(),
        ..Default::default()
    })
    .write(d, "expired");
    let client = ca.issue(pki::client(
        &["spiffe://legacy/ns/pay/sa/gateway"],
        "gateway",
    ));
    client.write(d, "client");
    Pki { dir, ca, client }
}

use pki::Leaf;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_to_openssl_s_server_with_pem_and_pkcs12_and_without_a_cert() {
    let k = pki("tls-out-mtls");
    let d = k.dir.path();
    let ca = p(d, "ca.pem");
    let (_server, addr) = s_server(d, "server", &["-Verify", "1", "-CAfile", &ca]);
    let pem = Legate::start(&upstream_config(
        addr,
        &format!(
            "      ca: {ca}\n      client_cert: {}\n      client_key: {}",
            p(d, "client.pem"),
            p(d, "client.key")
        ),
    ));
    let r = get(pem.addr, "/").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        String::from_utf8_lossy(&r.body).contains("TLSv1.3"),
        "s_server's status page"
    );

    let (p12, pass) = k.client.write_p12(d, "client-bundle", "s3cret pass");
    let bundle = Legate::start(&upstream_config(
        addr,
        &format!(
            "      ca: {ca}\n      pkcs12: {{ file: {}, password_file: {} }}",
            p12.display(),
            pass.display()
        ),
    ));
    assert_eq!(get(bundle.addr, "/").await.status, 200);

    let none = Legate::start(&upstream_config(addr, &format!("      ca: {ca}")));
    let r = get(none.addr, "/").await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    let reason = r.header("legate-error").unwrap_or("").to_string();
    assert!(
        reason == "tls-client-cert-required" || reason == "tls-client-cert-rejected",
        "the server refusing us is told apart from other failures: {reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_handshake_failure_has_its_own_reason() {
    let k = pki("tls-out-reasons");
    let d = k.dir.path();
    let ca = p(d, "ca.pem");
    let other = TempDir::new("tls-out-other-ca");
    std::fs::write(other.path().join("ca.pem"), Ca::new("unrelated CA").pem()).unwrap();

    let (_ok, ok_addr) = s_server(d, "server", &[]);
    let (_expired, expired_addr) = s_server(d, "expired", &[]);
    let (_v13, v13_addr) = s_server(d, "server", &["-tls1_3"]);
    let (_aes256, aes256_addr) = s_server(
        d,
        "server",
        &["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"],
    );

    // The pin openssl computes for the server's key, as docs/tls.md shows.
    let pin = String::from_utf8(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl x509 -in {} -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
                p(d, "server.pem")
            ))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();

    let cases: Vec<(&str, std::net::SocketAddr, String, &str)> = vec![
        ("trusted", ok_addr, format!("      ca: {ca}"), ""),
        ("untrusted CA", ok_addr, format!("      ca: {}", p(other.path(), "ca.pem")), "tls-unknown-ca"),
        ("expired server cert", expired_addr, format!("      ca: {ca}"), "tls-cert-expired"),
        ("TLS 1.2 only vs a 1.3-only server", v13_addr, format!("      ca: {ca}\n      max_version: 1.2"), "tls-version-mismatch"),
        ("no shared cipher", aes256_addr, format!("      ca: {ca}\n      min_version: \"1.3\"\n      cipher_suites: [TLS_AES_128_GCM_SHA256]"), "tls-no-shared-cipher"),
        ("right pin", ok_addr, format!("      ca: {ca}\n      pin_spki_sha256: [\"{pin}\"]"), ""),
        ("wrong pin", ok_addr, format!("      ca: {ca}\n      pin_spki_sha256: [\"{}\"]", "A".repeat(43) + "="), "tls-pin-mismatch"),
    ];
    for (what, addr, tls, want) in cases {
        let legate = Legate::start(&upstream_config(addr, &tls));
        let r = get(legate.addr, "/").await;
        if want.is_empty() {
            assert_eq!(r.status, 200, "{what}: {:?}", r.body);
        } else {
            assert_eq!(r.status, 502, "{what}");
            assert_eq!(r.header("legate-error"), Some(want), "{what}: {:?}", r.body);
        }
    }
}

/// `legate check` on configs whose files are wrong: one line per problem, at the field's line,
/// naming the file.
#[test]
fn bad_tls_files_are_config_errors_that_name_the_file() {
    require_tool("openssl", "version");
    let k = pki("tls-out-check");
    let d = k.dir.path();
    let other = k.ca.issue(pki::client(&[], "other"));
    other.write(d, "other");
    std::fs::write(d.join("nokey.key"), k.ca.pem()).unwrap();
    std::fs::write(
        d.join("garbage.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n",
    )
    .unwrap();
    let soon = k.ca.issue(Leaf {
        cn: Some("future"),
        validity: pki::not_yet_valid(),
        ..Default::default()
    });
    soon.write(d, "future");
    let (p12, _) = k.client.write_p12(d, "bundle", "right");
    std::fs::write(d.join("wrong.pass"), "wrong\n").unwrap();

    let cases = [
        (
            format!(
                "client_cert: {0}/missing.pem, client_key: {0}/client.key",
                d.display()
            ),
            "client_cert",
            "missing.pem: No such file",
        ),
        (
            format!(
                "client_cert: {0}/client.pem, client_key: {0}/nokey.key",
                d.display()
            ),
            "client_key",
            "holds no private key",
        ),
        (
            format!(
                "client_cert: {0}/client.pem, client_key: {0}/other.key",
                d.display()
            ),
            "client_key",
            "does not belong to the certificate",
        ),
        (
            format!(
                "client_cert: {0}/expired.pem, client_key: {0}/expired.key",
                d.display()
            ),
            "client_cert",
            "expired at",
        ),
        (
            format!(
                "client_cert: {0}/future.pem, client_key: {0}/future.key",
                d.display()
            ),
            "client_cert",
            "is not valid before",
        ),
        (
            format!(
                "pkcs12: {{ file: {}, password_file: {}/wrong.pass }}",
                p12.display(),
                d.display()
            ),
            "pkcs12.file",
            "wrong PKCS#12 password",
        ),
        (
            format!("ca: {}/garbage.pem", d.display()),
            "ca",
            "not valid PEM",
        ),
    ];
    for (tls, field, want) in cases {
        let cfg = format!(
            "listeners:\n  - name: app\n    listen: 127.0.0.1:0\n    routes: [ {{ name: r, upstream: bank }} ]\nupstreams:\n  - name: bank\n    endpoints: [\"127.0.0.1:1\"]\n    tls: {{ {tls} }}\n"
        );
        let file = d.join("legate.yaml");
        std::fs::write(&file, &cfg).unwrap();
        let out = Command::new(legate_bin())
            .args(["check", "-c"])
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{tls}: {err}");
        assert!(
            err.contains("legate.yaml:8:")
                && err.contains(&format!("upstreams[0].tls.{field}: "))
                && err.contains(want),
            "{tls}\nwant line 8, field {field}, `{want}`; got:\n{err}"
        );
        // --skip-files is for manifests whose Secrets exist only in the cluster.
        let out = Command::new(legate_bin())
            .args(["check", "--skip-files", "-c"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn quick_mode_flags_and_insecure_skip_verify_warnings() {
    require_tool("curl", "--version");
    let k = pki("tls-out-quick");
    let d = k.dir.path();
    let (_server, addr) = s_server(d, "server", &["-Verify", "1", "-CAfile", &p(d, "ca.pem")]);
    let port = free_port();
    let mut legate = Proc::spawn(
        "legate http",
        Command::new(legate_bin()).args([
            "http",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin",
            "off",
            "--upstream",
            &format!("https://{addr}"),
            "--ca",
            &p(d, "ca.pem"),
            "--cert",
            &p(d, "client.pem"),
            "--key",
            &p(d, "client.key"),
            "--server-name",
            "bank.test",
        ]),
    )
    .unwrap();
    let out = wait_for("quick mode answers", Duration::from_secs(20), || {
        legate.ensure_running();
        let o = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .map_err(|e| e.to_string())?;
        let code = String::from_utf8_lossy(&o.stdout).to_string();
        if code == "200" {
            Ok(code)
        } else {
            Err(code)
        }
    });
    assert_eq!(out, "200");

    // insecure_skip_verify: only when written out, and loudly.
    let cfg = format!(
        "admin: {{ listen: 127.0.0.1:{admin} }}\nlisteners:\n  - name: app\n    listen: 127.0.0.1:{port}\n    routes: [ {{ name: r, upstream: lab }} ]\nupstreams:\n  - name: lab\n    endpoints: [\"{addr}\"]\n    tls: {{ insecure_skip_verify: true, client_cert: {c}, client_key: {k} }}\n",
        admin = free_port(),
        port = free_port(),
        c = p(d, "client.pem"),
        k = p(d, "client.key"),
    );
    let file = d.join("insecure.yaml");
    std::fs::write(&file, &cfg).unwrap();
    drop(legate);
    let admin_port: u16 = cfg
        .split("127.0.0.1:")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let app_port: u16 = cfg
        .split("127.0.0.1:")
        .nth(2)
        .unwrap()
        .split('\n')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut insecure = Proc::spawn(
        "legate insecure",
        Command::new(legate_bin()).arg("run").arg("-c").arg(&file),
    )
    .unwrap();
    wait_for("insecure legate answers", Duration::from_secs(20), || {
        insecure.ensure_running();
        let o = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://127.0.0.1:{app_port}/"))
            .output()
            .map_err(|e| e.to_string())?;
        (String::from_utf8_lossy(&o.stdout) == "200")
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    });
    // Event logs are JSON lines on stdout.
    let warnings = |p: &Proc| {
        p.stdout_lines()
            .iter()
            .filter(|l| l.contains("insecure_skip_verify") && l.contains("WARN"))
            .count()
    };
    assert_eq!(warnings(&insecure), 1, "one warning at startup");
    let o = Command::new("curl")
        .args(["-sS"])
        .arg(format!("http://127.0.0.1:{admin_port}/config"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("insecure_skip_verify: true"));
    wait_for("a warning per /config read", Duration::from_secs(5), || {
        (warnings(&insecure) == 2)
            .then_some(())
            .ok_or_else(|| format!("{} warnings", warnings(&insecure)))
    });
}

/// The upstream sees the new client certificate once the files change (new connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_rotation_reaches_the_upstream() {
    require_tool("openssl", "version");
    let k = pki("tls-out-rotate");
    let d = k.dir.path();
    let (_server, addr) = s_server(d, "server", &["-Verify", "1", "-CAfile", &p(d, "ca.pem")]);
    let cfg = upstream_config(
        addr,
        &format!(
            "      ca: {}\n      client_cert: {}\n      client_key: {}",
            p(d, "ca.pem"),
            p(d, "client.pem"),
            p(d, "client.key")
        ),
    )
    .replace(
        "access_log: off",
        "access_log: off\nfiles: { watch_interval: 50ms }",
    );
    let legate = Legate::start(&cfg);
    let r = get(legate.addr, "/").await;
    assert_eq!(r.status, 200);
    // s_server -www prints the client certificate it saw; its serial changes after rotation.
    let next = k.ca.issue(pki::client(
        &["spiffe://legacy/ns/pay/sa/gateway"],
        "gateway-2",
    ));
    let tmp = d.join("rotating");
    std::fs::create_dir_all(&tmp).unwrap();
    let (c, key) = next.write(&tmp, "client");
    // Key first, then the certificate, each by rename: a reader never sees half a file.
    std::fs::rename(&key, d.join("client.key")).unwrap();
    std::fs::rename(&c, d.join("client.pem")).unwrap();
    wait_until_async("legate reloads the client certificate", || {
        metric(
            &legate.metrics(),
            "legate_tls_reloads_total",
            &["name=\"upstream:bank\""],
        )
        .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    let r = get(legate.addr, "/").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        String::from_utf8_lossy(&r.body).contains("gateway-2"),
        "s_server saw the new client certificate:\n{}",
        String::from_utf8_lossy(&r.body)
    );
}

/// A default (rustls-only) build explains what a TLS 1.0 upstream needs.
#[cfg(not(feature = "legacy-tls"))]
#[test]
fn legacy_versions_on_a_default_build_name_the_feature() {
    let dir = TempDir::new("tls-out-legacy-check");
    let file = dir.write(
        "bank.yaml",
        "listeners:\n  - name: app\n    listen: 127.0.0.1:0\n    routes: [ { name: r, upstream: bank } ]\nupstreams:\n  - name: bank\n    endpoints: [\"127.0.0.1:1\"]\n    tls:\n      min_version: \"1.0\"\n",
    );
    let out = Command::new(legate_bin())
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("bank.yaml:9:")
            && err.contains("upstreams[0].tls.min_version")
            && err.contains("--features legacy-tls"),
        "{err}"
    );
}
