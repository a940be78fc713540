//! The seed's mesh data plane (4B) with two real legate processes and the shipped example
//! configs: app A → ambassador A (mTLS origination) → ambassador B (mTLS termination, SAN
//! allow-list) → app B on localhost. Certificates are SPIFFE-style workload certificates made
//! here; a workload with another identity is refused by B.

mod common;
#[path = "support/pki.rs"]
mod pki;
#[path = "support/proc.rs"]
mod proc;

use common::*;
use pki::Ca;
use proc::{free_port, legate_bin, require_tool, wait_for, Proc, TempDir};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

fn curl(args: &[&str]) -> (bool, String, String) {
    let o = Command::new("curl")
        .args(["-sS"])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambassador_a_to_ambassador_b_over_mtls() {
    require_tool("curl", "--version");
    let ca = Ca::new("cluster.local mesh CA");
    let a_dir = TempDir::new("mesh-a");
    let b_dir = TempDir::new("mesh-b");
    let c_dir = TempDir::new("mesh-c");
    for d in [&a_dir, &b_dir, &c_dir] {
        std::fs::write(d.path().join("ca.crt"), ca.pem()).unwrap();
    }
    let write = |dir: &TempDir, issued: pki::Issued| {
        std::fs::write(dir.path().join("tls.crt"), &issued.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &issued.key_pem).unwrap();
    };
    write(
        &a_dir,
        ca.issue(pki::client(
            &["spiffe://cluster.local/ns/shop/sa/service-a"],
            "service-a",
        )),
    );
    write(
        &b_dir,
        ca.issue(pki::server(&["service-b.shop.svc.cluster.local"])),
    );
    write(
        &c_dir,
        ca.issue(pki::client(
            &["spiffe://cluster.local/ns/shop/sa/intruder"],
            "intruder",
        )),
    );

    let app_b = echo_upstream(Proto::H1).await;
    let (b_port, a_port) = (free_port(), free_port());
    let mut b = Proc::spawn(
        "ambassador B",
        Command::new(legate_bin())
            .args(["run", "-c"])
            .arg(example("mesh-b.yaml"))
            .env("MESH_DIR", b_dir.path())
            .env("B_LISTEN", format!("127.0.0.1:{b_port}"))
            .env("B_ADMIN", format!("127.0.0.1:{}", free_port()))
            .env("APP_B_PORT", app_b.addr.port().to_string()),
    )
    .unwrap();
    let mut a = Proc::spawn(
        "ambassador A",
        Command::new(legate_bin())
            .args(["run", "-c"])
            .arg(example("mesh-a.yaml"))
            .env("MESH_DIR", a_dir.path())
            .env("A_LISTEN", format!("127.0.0.1:{a_port}"))
            .env("A_ADMIN", format!("127.0.0.1:{}", free_port()))
            .env("B_ADDR", format!("127.0.0.1:{b_port}")),
    )
    .unwrap();

    // App A speaks plain HTTP to localhost; app B sees plain HTTP plus who called.
    let body = wait_for("A → B → app B", Duration::from_secs(20), || {
        a.ensure_running();
        b.ensure_running();
        let (ok, out, err) = curl(&[&format!("http://127.0.0.1:{a_port}/orders/42")]);
        if ok && out.contains("\"uri\":\"/orders/42\"") {
            Ok(out)
        } else {
            Err(format!("{out} {err}"))
        }
    });
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let xfcc = v["headers"]["x-forwarded-client-cert"][0]
        .as_str()
        .unwrap_or("");
    assert!(
        xfcc.contains("URI=spiffe://cluster.local/ns/shop/sa/service-a"),
        "app B learns the caller's identity: {xfcc}"
    );

    // A workload with a valid certificate but another identity is refused by B...
    let d = c_dir.path().display().to_string();
    let (ok, _, _) = curl(&[
        "--cacert",
        &format!("{d}/ca.crt"),
        "--cert",
        &format!("{d}/tls.crt"),
        "--key",
        &format!("{d}/tls.key"),
        "--resolve",
        &format!("service-b.shop.svc.cluster.local:{b_port}:127.0.0.1"),
        &format!("https://service-b.shop.svc.cluster.local:{b_port}/"),
    ]);
    assert!(!ok, "intruder must be refused");
    // ...and B's log names the refused identity.
    wait_for(
        "B logs the refused identity",
        Duration::from_secs(5),
        || {
            b.stdout_lines()
                .iter()
                .any(|l| {
                    l.contains("spiffe://cluster.local/ns/shop/sa/intruder")
                        && l.contains("allow list")
                })
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        },
    );
    // ...as is a client without any certificate.
    let (ok, _, _) = curl(&[
        "--cacert",
        &format!("{d}/ca.crt"),
        "--resolve",
        &format!("service-b.shop.svc.cluster.local:{b_port}:127.0.0.1"),
        &format!("https://service-b.shop.svc.cluster.local:{b_port}/"),
    ]);
    assert!(!ok, "no client certificate, no entry");
    assert_eq!(
        app_b.connections(),
        1,
        "only ambassador A's connection reached app B"
    );
}
