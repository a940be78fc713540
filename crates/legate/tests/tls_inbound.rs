//! Inbound TLS and mTLS on a listener, with certificates made here: curl and openssl s_client
//! as real clients, the SAN allow-list with wildcards, the forwarded client certificate, every
//! refused-peer case counted by reason, and hot rotation under load (five symlink swaps,
//! Kubernetes style, with zero failed requests).

mod common;
#[path = "support/pki.rs"]
mod pki;
#[path = "support/proc.rs"]
mod proc;
#[path = "support/tls_client.rs"]
mod tls_client;

use common::*;
use pki::{Ca, Issued};
use proc::{require_tool, TempDir};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";

fn listener_config(upstream: std::net::SocketAddr, tls: &str) -> String {
    format!(
        r#"
admin: {{ listen: 127.0.0.1:0 }}
runtime: {{ workers: 1 }}
access_log: off
files: {{ watch_interval: 50ms }}
listeners:
  - name: inbound
    listen: 127.0.0.1:0
    tls:
{tls}
    routes:
      - name: default
        upstream: app
upstreams:
  - name: app
    endpoints: ["{upstream}"]
"#
    )
}

struct Setup {
    dir: TempDir,
    ca: Ca,
    server: Issued,
}

fn setup(tag: &str) -> Setup {
    let dir = TempDir::new(tag);
    let ca = Ca::new("legate test CA");
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let server = ca.issue(pki::server(&["localhost", "127.0.0.1"]));
    server.write(dir.path(), "server");
    Setup { dir, ca, server }
}

fn p(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_curl_over_h1_and_h2_and_shows_its_certificate() {
    require_tool("curl", "--version");
    require_tool("openssl", "version");
    let s = setup("tls-in-basic");
    let echo = echo_upstream(Proto::H1).await;
    let d = s.dir.path();
    // The served chain is leaf + intermediate; clients trust only the root.
    let intermediate = s.ca.intermediate("legate test intermediate");
    let leaf = intermediate.issue(pki::Leaf {
        dns: &["localhost", "127.0.0.1"],
        // Expires in three days: the expiry gauge and the warning must say so.
        validity: Some((
            time::OffsetDateTime::now_utc() - time::Duration::days(1),
            time::OffsetDateTime::now_utc() + time::Duration::days(3),
        )),
        ..Default::default()
    });
    let chain = format!("{}{}", leaf.cert_pem, intermediate.pem());
    std::fs::write(d.join("server.pem"), chain).unwrap();
    std::fs::write(d.join("server.key"), &leaf.key_pem).unwrap();
    let legate = Legate::start(&listener_config(
        echo.addr,
        &format!(
            "      cert: {}\n      key: {}",
            p(d, "server.pem"),
            p(d, "server.key")
        ),
    ));
    let url = format!("https://localhost:{}/hello", legate.addr.port());
    for (flag, version) in [("--http1.1", "HTTP/1.1"), ("--http2", "HTTP/2")] {
        let out = Command::new("curl")
            .args([
                "-sS",
                flag,
                "--cacert",
                &p(d, "ca.pem"),
                "-w",
                "\n%{http_version}",
            ])
            .args([
                "--resolve",
                &format!("localhost:{}:127.0.0.1", legate.addr.port()),
            ])
            .arg(&url)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl {flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("\"uri\":\"/hello\""), "{text}");
        assert!(
            text.ends_with(if version == "HTTP/2" { "2" } else { "1.1" }),
            "{flag}: {text}"
        );
    }
    // openssl s_client sees the server certificate legate loaded.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{} -servername localhost -CAfile {} </dev/null 2>/dev/null | openssl x509 -noout -serial",
            legate.addr.port(),
            p(d, "ca.pem")
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&leaf.serial),
        "serial {} in {text}",
        leaf.serial
    );
    // s_client may leave before legate has read its Finished message, which is when the
    // handshake is counted: wait for the count rather than read it once.
    wait_until_async("three handshakes counted", || {
        metric(
            &legate.metrics(),
            "legate_tls_handshakes_total",
            &["listener=\"inbound\""],
        ) == Some(3.0)
    })
    .await;
    let m = legate.metrics();
    let expiry = metric(
        &m,
        "legate_tls_cert_expiry_timestamp_seconds",
        &["name=\"listener:inbound\""],
    )
    .expect("expiry gauge");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    let days = (expiry - now) / 86_400.0;
    assert!((2.9..3.1).contains(&days), "expires in {days} days");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_allow_list_forwarded_identity_and_every_refusal() {
    require_tool("curl", "--version");
    let s = setup("tls-in-mtls");
    let d = s.dir.path();
    let orders = s.ca.issue(pki::client(&[ORDERS], "orders"));
    orders.write(d, "orders");
    let payments = s.ca.issue(pki::client(&[PAYMENTS], "payments"));
    let stranger_ca = Ca::new("somebody else's CA");
    let stranger = stranger_ca.issue(pki::client(&[ORDERS], "orders"));
    let echo = echo_upstream(Proto::H1).await;
    let legate = Legate::start(&listener_config(
        echo.addr,
        &format!(
            "      cert: {}\n      key: {}\n      client_ca: {}\n      allow: {{ uri: [\"spiffe://cluster.local/ns/*/sa/orders\"] }}\n      forward_client_cert: x-forwarded-client-cert",
            p(d, "server.pem"),
            p(d, "server.key"),
            p(d, "ca.pem")
        ),
    ));
    let ca = s.ca.pem();
    let cfg = |c: Option<&Issued>| {
        tls_client::client_config(
            &ca,
            c.map(|c| (c.cert_pem.as_str(), c.key_pem.as_str())),
            &[b"http/1.1"],
        )
    };

    // Allowed: the app sees who called, and a forged header from outside is replaced.
    let r = tls_client::get(
        legate.addr,
        cfg(Some(&orders)),
        "localhost",
        "/who",
        &[(
            "x-forwarded-client-cert",
            "By=spiffe://evil;URI=spiffe://admin",
        )],
    )
    .await
    .expect("allowed client gets through");
    assert_eq!(r.status, 200);
    let xfcc = r.json()["headers"]["x-forwarded-client-cert"].clone();
    assert_eq!(xfcc.as_array().map(|a| a.len()), Some(1), "{xfcc}");
    let xfcc = xfcc[0].as_str().unwrap();
    assert!(xfcc.contains(&format!("URI={ORDERS}")), "{xfcc}");
    assert!(
        xfcc.contains("Hash=") && xfcc.contains("Subject=\"CN=orders\""),
        "{xfcc}"
    );
    assert!(!xfcc.contains("evil"), "{xfcc}");

    // Refused: a CA-signed certificate not on the allow list, no certificate, a foreign CA.
    for (who, client) in [
        ("payments", Some(&payments)),
        ("no certificate", None),
        ("foreign CA", Some(&stranger)),
    ] {
        let r = tls_client::get(legate.addr, cfg(client), "localhost", "/", &[]).await;
        assert!(r.is_err(), "{who} must be refused, got {r:?}");
    }
    // The server counts a refusal just after sending its alert: wait for the counters.
    for reason in [
        "tls-peer-not-allowed",
        "tls-no-client-cert",
        "tls-unknown-ca",
    ] {
        let label = format!("reason=\"{reason}\"");
        wait_until_async(reason, || {
            metric(
                &legate.metrics(),
                "legate_tls_handshake_failures_total",
                &[&label],
            ) == Some(1.0)
        })
        .await;
    }
    assert_eq!(echo.connections(), 1, "refused clients never reach the app");

    // curl with the allowed client certificate, as a user would test it.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--cacert",
            &p(d, "ca.pem"),
            "--cert",
            &p(d, "orders.pem"),
            "--key",
            &p(d, "orders.key"),
        ])
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", legate.addr.port()),
        ])
        .arg(format!("https://localhost:{}/curl", legate.addr.port()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(ORDERS));
}

/// Kubernetes mounts a Secret as `..data -> ..<timestamp>/` with `tls.crt -> ..data/tls.crt`;
/// an update writes a new timestamped directory and swaps `..data` in one rename.
struct SecretMount {
    root: std::path::PathBuf,
    generation: usize,
}

impl SecretMount {
    fn new(root: &Path, first: &Issued) -> Self {
        std::fs::create_dir_all(root).unwrap();
        let mut m = Self {
            root: root.to_path_buf(),
            generation: 0,
        };
        m.publish(&first.cert_pem, &first.key_pem);
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), root.join(f)).unwrap();
        }
        m
    }

    fn publish(&mut self, cert: &str, key: &str) {
        self.generation += 1;
        let dir = format!("..gen_{}", self.generation);
        let full = self.root.join(&dir);
        std::fs::create_dir_all(&full).unwrap();
        std::fs::write(full.join("tls.crt"), cert).unwrap();
        std::fs::write(full.join("tls.key"), key).unwrap();
        let tmp = self.root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&dir, &tmp).unwrap();
        std::fs::rename(&tmp, self.root.join("..data")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_request() {
    let s = setup("tls-in-rotate");
    let mount_dir = s.dir.path().join("secret");
    let mut mount = SecretMount::new(&mount_dir, &s.server);
    let echo = echo_upstream(Proto::H1).await;
    let legate = Legate::start(&listener_config(
        echo.addr,
        &format!(
            "      cert: {}\n      key: {}",
            mount_dir.join("tls.crt").display(),
            mount_dir.join("tls.key").display()
        ),
    ));
    let cfg = tls_client::client_config(&s.ca.pem(), None, &[b"http/1.1"]);

    // A keep-alive connection made before any rotation keeps working throughout.
    let tcp = tokio::net::TcpStream::connect(legate.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut kept, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);

    // Continuous load on new connections while the files change.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, cfg) = (stop.clone(), ok.clone(), failed.clone(), cfg.clone());
        let addr = legate.addr;
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match tls_client::get(addr, cfg.clone(), "localhost", "/", &[]).await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => failed.lock().unwrap().push(format!("status {}", r.status)),
                    Err(e) => failed.lock().unwrap().push(e),
                }
            }
        }));
    }

    let mut serials = vec![s.server.serial.clone()];
    for _ in 0..5 {
        let next = s.ca.issue(pki::server(&["localhost"]));
        mount.publish(&next.cert_pem, &next.key_pem);
        // New connections present the new certificate once the watcher has seen the swap.
        let want = next.serial.clone();
        let mut seen = String::new();
        for _ in 0..400 {
            let r = tls_client::get(legate.addr, cfg.clone(), "localhost", "/", &[])
                .await
                .unwrap();
            seen = r.server_serial;
            if seen == want {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert_eq!(
            seen,
            want,
            "new connections present the rotated certificate: {}",
            legate
                .metrics()
                .lines()
                .filter(|l| l.contains("tls"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        serials.push(want);
        let r = kept
            .send_request(
                http::Request::get("/kept")
                    .header("host", "localhost")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap(),
            )
            .await
            .expect("the connection from before the rotation still works");
        assert_eq!(r.status(), 200);
    }
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "failed requests during rotation: {failed:?}"
    );
    assert!(ok.load(Ordering::SeqCst) > 0);
    let m = legate.metrics();
    assert!(
        metric(
            &m,
            "legate_tls_reloads_total",
            &["name=\"listener:inbound\""]
        )
        .unwrap_or(0.0)
            >= 5.0,
        "{m}"
    );
    assert_eq!(serials.len(), 6);

    // A bad update (key of another certificate) is refused; the last good one stays.
    let other = s.ca.issue(pki::server(&["localhost"]));
    let last = serials.last().unwrap().clone();
    let bad_key = other.key_pem.clone();
    let cert_now = std::fs::read_to_string(mount_dir.join("tls.crt")).unwrap();
    mount.publish(&cert_now, &bad_key);
    wait_until_async("the bad update is counted", || {
        metric(
            &legate.metrics(),
            "legate_tls_reload_failures_total",
            &["name=\"listener:inbound\""],
        )
        .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    let r = tls_client::get(legate.addr, cfg.clone(), "localhost", "/", &[])
        .await
        .unwrap();
    assert_eq!((r.status, r.server_serial.as_str()), (200, last.as_str()));
}

/// The real binary: a server certificate from PKCS#12, a warning for a certificate about to
/// expire, and SIGHUP reloading at once (the file watch is set to an hour here).
#[test]
fn pkcs12_listener_expiry_warning_and_sighup_reload() {
    require_tool("openssl", "version");
    let s = setup("tls-in-sighup");
    let d = s.dir.path();
    let soon = s.ca.issue(pki::Leaf {
        dns: &["localhost"],
        validity: Some((
            time::OffsetDateTime::now_utc() - time::Duration::days(1),
            time::OffsetDateTime::now_utc() + time::Duration::days(2),
        )),
        ..Default::default()
    });
    let (p12, pass) = soon.write_p12(d, "listener", "listener pass");
    let port = proc::free_port();
    let cfg = d.join("legate.yaml");
    std::fs::write(
        &cfg,
        format!(
            "admin: {{ listen: off }}\nfiles: {{ watch_interval: 1h }}\nlisteners:\n  - name: inbound\n    listen: 127.0.0.1:{port}\n    tls: {{ pkcs12: {{ file: {}, password_file: {} }} }}\n    routes: [ {{ name: r, upstream: app }} ]\nupstreams:\n  - name: app\n    endpoints: [\"127.0.0.1:9\"]\n",
            p12.display(),
            pass.display()
        ),
    )
    .unwrap();
    let mut legate = proc::Proc::spawn(
        "legate",
        Command::new(proc::legate_bin())
            .arg("run")
            .arg("-c")
            .arg(&cfg),
    )
    .unwrap();
    let serial = |legate: &mut proc::Proc| {
        legate.ensure_running();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -serial"
            ))
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.trim()
            .strip_prefix("serial=")
            .map(|s| s.trim_start_matches('0').to_string())
            .ok_or(text)
    };
    let first = proc::wait_for(
        "the listener answers",
        std::time::Duration::from_secs(20),
        || serial(&mut legate),
    );
    assert_eq!(first, soon.serial);
    assert!(
        legate
            .stdout_lines()
            .iter()
            .any(|l| l.contains("certificate expires soon") && l.contains(&soon.serial)),
        "a warning names the certificate that expires in 2 days:\n{}",
        legate.stdout_lines().join("\n")
    );

    // New bundle in place; with an hour between checks only SIGHUP can make it take effect.
    let next = s.ca.issue(pki::server(&["localhost"]));
    let (staged, _) = next.write_p12(d, "staged", "listener pass");
    std::fs::rename(staged, &p12).unwrap();
    legate.signal("HUP");
    let now = proc::wait_for("SIGHUP reload", std::time::Duration::from_secs(10), || {
        let got = serial(&mut legate)?;
        if got == next.serial {
            Ok(got)
        } else {
            Err(got)
        }
    });
    assert_eq!(now, next.serial);
}
