//! Secrets never leak: the real binary runs, at debug log level, every feature that handles a
//! secret (basic credentials, OAuth2 client credentials and the tokens they buy, a header
//! value from a file, a client key in PEM, a PKCS#12 bundle and its password), through both
//! their working and their failing paths; then every log line, `/config`, `/metrics` and every
//! error body the app received is searched for each secret: none may appear.

#[path = "support/pki.rs"]
mod pki;
#[path = "support/proc.rs"]
mod proc;

use proc::{free_port, http_get, local, wait_for, wait_ready, TempDir};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const BASIC_PASSWORD: &str = "basic-Pa55-7qRv";
const OAUTH_SECRET: &str = "oauth-S3cret-9zKw";
const ACCESS_TOKEN: &str = "tok-Secret-4hJx";
const HEADER_SECRET: &str = "hdr-Secret-2mNb";
const P12_PASSWORD: &str = "p12-Pa55word-XYZ";

/// An HTTP/1.1 server answering every request on a keep-alive connection with `reply`
/// (a whole response), counting the requests.
fn responder(reply: String) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let (reply, c) = (reply.clone(), c.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                loop {
                    let mut line = String::new();
                    let mut length = 0usize;
                    loop {
                        line.clear();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {
                                let l = line.to_ascii_lowercase();
                                if let Some(v) = l.strip_prefix("content-length:") {
                                    length = v.trim().parse().unwrap_or(0);
                                }
                            }
                        }
                    }
                    let mut body = vec![0u8; length];
                    if std::io::Read::read_exact(&mut r, &mut body).is_err() {
                        return;
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                    if w.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, count)
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn base64(s: &str) -> String {
    legate::tls::client::base64_encode(s.as_bytes())
}

#[test]
fn no_secret_reaches_a_log_line_config_metrics_or_error_body() {
    let dir = TempDir::new("secrets");
    let d = dir.path();
    // The upstreams refuse (401), so the credential paths run to their error handling too.
    let (api, api_requests) = responder(response(
        "401 Unauthorized",
        "application/json",
        r#"{"error":"denied"}"#,
    ));
    let (tokens, token_requests) = responder(response(
        "200 OK",
        "application/json",
        &format!(r#"{{"access_token":"{ACCESS_TOKEN}","token_type":"Bearer","expires_in":3600}}"#),
    ));
    let (bad_tokens, _) = responder(response(
        "400 Bad Request",
        "application/json",
        r#"{"error":"invalid_client","error_description":"client authentication failed"}"#,
    ));
    // A plain-text server where TLS is expected: the client-key paths fail their handshake.
    let (not_tls, _) = responder(response("400 Bad Request", "text/plain", "not TLS\n"));

    let ca = pki::Ca::new("secrets-ca");
    let client = ca.issue(pki::client(&["spiffe://test/app"], "app"));
    let (client_cert, client_key) = client.write(d, "client");
    let (p12, p12_pass) = client.write_p12(d, "bundle", P12_PASSWORD);
    let ca_file = d.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    // A line from the middle of the private key: any part of it in the output is a leak.
    let key_line = client
        .key_pem
        .lines()
        .find(|l| !l.starts_with("-----") && l.len() > 20)
        .unwrap()
        .to_string();

    let user = dir.write("user", "app-user\n");
    let pass = dir.write("pass", format!("{BASIC_PASSWORD}\n"));
    let id = dir.write("client_id", "legate-client\n");
    let secret = dir.write("client_secret", format!("{OAUTH_SECRET}\n"));
    let header = dir.write("api_key", format!("{HEADER_SECRET}\n"));
    let (port, admin) = (free_port(), free_port());
    let route = |name: &str| {
        format!("      - {{ name: {name}, match: {{ path_prefix: /{name} }}, upstream: {name} }}\n")
    };
    let cfg = format!(
        "admin: {{ listen: 127.0.0.1:{admin} }}\n\
         listeners:\n  - name: app\n    listen: 127.0.0.1:{port}\n    routes:\n\
         {basic}{oauth}{refused}{pem}{p12r}\
         \x20     - name: header\n        match: {{ path_prefix: /header }}\n        upstream: header\n\
         \x20       request_headers: {{ set_from_file: {{ x-api-key: {{ file: {header} }} }} }}\n\
         upstreams:\n\
         \x20 - name: basic\n    endpoints: [\"{api}\"]\n\
         \x20   auth: {{ basic: {{ username_file: {user}, password_file: {pass} }} }}\n\
         \x20 - name: oauth\n    endpoints: [\"{api}\"]\n\
         \x20   auth: {{ oauth2: {{ token_url: \"http://{tokens}/token\", client_id_file: {id}, client_secret_file: {secret} }} }}\n\
         \x20 - name: refused\n    endpoints: [\"{api}\"]\n\
         \x20   auth: {{ oauth2: {{ token_url: \"http://{bad_tokens}/token\", client_id_file: {id}, client_secret_file: {secret} }} }}\n\
         \x20 - name: pem\n    endpoints: [\"{not_tls}\"]\n\
         \x20   tls: {{ ca: {ca}, server_name: api.test, client_cert: {cc}, client_key: {ck} }}\n\
         \x20 - name: p12\n    endpoints: [\"{not_tls}\"]\n\
         \x20   tls: {{ ca: {ca}, server_name: api.test, pkcs12: {{ file: {p12}, password_file: {p12_pass} }} }}\n\
         \x20 - name: header\n    endpoints: [\"{api}\"]\n",
        basic = route("basic"),
        oauth = route("oauth"),
        refused = route("refused"),
        pem = route("pem"),
        p12r = route("p12"),
        header = header.display(),
        user = user.display(),
        pass = pass.display(),
        id = id.display(),
        secret = secret.display(),
        ca = ca_file.display(),
        cc = client_cert.display(),
        ck = client_key.display(),
        p12 = p12.display(),
        p12_pass = p12_pass.display(),
    );
    let path = dir.write("legate.yaml", cfg);
    let mut lg = proc::legate_spawn(
        "legate run (debug)",
        &["--log-level", "debug", "run", "-c", path.to_str().unwrap()],
    );
    wait_ready(&mut lg, admin);

    let mut bodies = Vec::new();
    for (p, expect) in [
        ("/basic", 401),
        ("/oauth", 401),
        ("/refused", 503),
        ("/pem", 502),
        ("/p12", 502),
        ("/header", 401),
    ] {
        for _ in 0..2 {
            let r = http_get(local(port), p, Duration::from_secs(10)).unwrap();
            assert_eq!(r.status, expect, "{p}: {}", r.text());
            bodies.push(format!("{p}: {}", r.text()));
        }
    }
    assert!(
        token_requests.load(Ordering::SeqCst) >= 1,
        "the token endpoint was used"
    );
    assert!(
        api_requests.load(Ordering::SeqCst) >= 6,
        "the credential paths reached the API"
    );
    let config = http_get(local(admin), "/config", Duration::from_secs(5))
        .unwrap()
        .text();
    let metrics = http_get(local(admin), "/metrics", Duration::from_secs(5))
        .unwrap()
        .text();
    // The debug lines of the requests above are written before the answers; give the writer
    // a moment to flush, then stop legate so everything it writes is in.
    wait_for("debug output", Duration::from_secs(5), || {
        (lg.stdout_lines().len() + lg.stderr_lines().len() > 20)
            .then_some(())
            .ok_or("few lines".to_string())
    });
    lg.signal("TERM");
    let code = lg.wait_exit(Duration::from_secs(20)).and_then(|s| s.code());
    assert_eq!(code, Some(0), "{}", lg.output_report());

    let secrets = [
        BASIC_PASSWORD.to_string(),
        base64(&format!("app-user:{BASIC_PASSWORD}")),
        OAUTH_SECRET.to_string(),
        base64(&format!("legate-client:{OAUTH_SECRET}")),
        ACCESS_TOKEN.to_string(),
        HEADER_SECRET.to_string(),
        P12_PASSWORD.to_string(),
        key_line,
    ];
    let logs = lg.output_lines();
    assert!(
        logs.iter()
            .any(|l| l.contains("\"DEBUG\"") || l.contains("DEBUG")),
        "debug logging was on"
    );
    let places = [
        ("log", logs.join("\n")),
        ("/config", config),
        ("/metrics", metrics),
        ("error bodies", bodies.join("\n")),
    ];
    for (place, text) in &places {
        for s in &secrets {
            if let Some(line) = text.lines().find(|l| l.contains(s.as_str())) {
                panic!("a secret ({}…) appears in {place}: {line}", &s[..6]);
            }
        }
    }
    if std::env::var_os("SECRETS_SHOW_LOG").is_some() {
        eprintln!("{}", logs.join("\n"));
    }
    eprintln!(
        "searched {} log lines, /config, /metrics and {} error bodies for {} secrets",
        logs.len(),
        bodies.len(),
        secrets.len()
    );
}
