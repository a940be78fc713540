//! Credentials the app never sees: headers from files (re-read on change), basic auth from two
//! files, OAuth2 client credentials against an in-test token endpoint (single flight,
//! refresh before expiry, a failed refresh keeps the old token), and secrets kept out of
//! `/config`.

mod common;
#[path = "support/proc.rs"]
mod proc;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use proc::TempDir;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_from_files_follow_the_files_and_stay_out_of_config() {
    let dir = TempDir::new("cred-files");
    let token = dir.write("token", "first-token\n");
    let user = dir.write("user", "svc");
    let pass = dir.write("pass", "p@ss:word\n");
    let echo = echo_upstream(Proto::H1).await;
    let legate = Legate::start(&format!(
        r#"
admin: {{ listen: 127.0.0.1:0 }}
runtime: {{ workers: 1 }}
files: {{ watch_interval: 50ms }}
listeners:
  - name: app
    listen: 127.0.0.1:0
    routes:
      - name: api
        match: {{ path_prefix: /api }}
        upstream: api
        request_headers:
          set: {{ X-Api-Key: literal-secret-value, X-Client: demo }}
          set_from_file:
            Authorization: {{ file: {token}, prefix: "Bearer " }}
      - name: legacy
        upstream: legacy
upstreams:
  - name: api
    endpoints: ["{e}"]
  - name: legacy
    endpoints: ["{e}"]
    auth: {{ basic: {{ username_file: {user}, password_file: {pass} }} }}
"#,
        token = token.display(),
        user = user.display(),
        pass = pass.display(),
        e = echo.addr
    ));
    let r = get(legate.addr, "/api/x").await;
    assert_eq!(
        r.echoed("authorization").as_deref(),
        Some("Bearer first-token")
    );
    let r = get(legate.addr, "/legacy").await;
    // base64("svc:p@ss:word")
    assert_eq!(
        r.echoed("authorization").as_deref(),
        Some("Basic c3ZjOnBAc3M6d29yZA==")
    );

    // A new token file (written aside, renamed in) is used without a restart.
    let fresh = dir.write("token.new", "second-token");
    std::fs::rename(&fresh, &token).unwrap();
    wait_until_async("the new token is picked up", || {
        metric(
            &legate.metrics(),
            "legate_tls_reloads_total",
            &["name=\"route:api:authorization\""],
        )
        .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    let r = get(legate.addr, "/api/x").await;
    assert_eq!(
        r.echoed("authorization").as_deref(),
        Some("Bearer second-token")
    );

    // /config shows where secrets come from, never what they are.
    let admin = legate.admin.unwrap();
    let cfg = String::from_utf8_lossy(&get(admin, "/config").await.body).to_string();
    assert!(cfg.contains("X-Api-Key: <redacted>"), "{cfg}");
    assert!(cfg.contains("X-Client: demo"), "{cfg}");
    assert!(cfg.contains(&token.display().to_string()), "{cfg}");
    for secret in ["literal-secret-value", "second-token", "p@ss"] {
        assert!(
            !cfg.contains(secret),
            "`{secret}` leaked into /config:\n{cfg}"
        );
    }
}

/// An OAuth2 token endpoint: checks the client's credentials, numbers the tokens it issues,
/// and can be slowed down or made to fail.
struct TokenEndpoint {
    addr: std::net::SocketAddr,
    issued: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

async fn token_endpoint(expires_in: u64, delay_ms: u64) -> TokenEndpoint {
    let issued = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let (i, f) = (issued.clone(), failing.clone());
    let up = upstream(Proto::H1, move |req: Request<Incoming>| {
        let (i, f) = (i.clone(), f.clone());
        async move {
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let path = req.uri().path().to_string();
            let body: Bytes = req.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body).to_string();
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            // base64("legate-client:s3cr%2Ft") — the secret `s3cr/t` form-encoded first.
            let ok_auth = auth == "Basic bGVnYXRlLWNsaWVudDpzM2NyJTJGdA==";
            let ok_body = body.contains("grant_type=client_credentials")
                && body.contains("scope=read+write")
                && body.contains("audience=https%3A%2F%2Fapi.test");
            if f.load(Ordering::SeqCst) || path != "/oauth2/token" || !ok_auth || !ok_body {
                return Response::builder()
                    .status(if ok_auth { 500 } else { 401 })
                    .header("content-type", "application/json")
                    .body(full(
                        r#"{"error":"server_error","error_description":"try later"}"#,
                    ))
                    .unwrap();
            }
            let n = i.fetch_add(1, Ordering::SeqCst) + 1;
            Response::builder()
                .header("content-type", "application/json")
                .body(full(format!(
                    r#"{{"access_token":"t{n}","token_type":"Bearer","expires_in":{expires_in}}}"#
                )))
                .unwrap()
        }
    })
    .await;
    TokenEndpoint {
        addr: up.addr,
        issued,
        failing,
    }
}

fn oauth_config(
    dir: &TempDir,
    token: std::net::SocketAddr,
    api: std::net::SocketAddr,
    refresh_before: &str,
) -> String {
    let id = dir.write("client_id", "legate-client\n");
    let secret = dir.write("client_secret", "s3cr/t\n");
    format!(
        r#"
admin: {{ listen: 127.0.0.1:0 }}
runtime: {{ workers: 2 }}
listeners:
  - name: app
    listen: 127.0.0.1:0
    routes: [ {{ name: default, upstream: api }} ]
upstreams:
  - name: api
    endpoints: ["{api}"]
    auth:
      oauth2:
        token_url: http://{token}/oauth2/token
        client_id_file: {id}
        client_secret_file: {secret}
        scope: read write
        audience: https://api.test
        refresh_before: {refresh_before}
"#,
        id = id.display(),
        secret = secret.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oauth2_single_flight_under_a_burst() {
    let dir = TempDir::new("cred-oauth-burst");
    let tokens = token_endpoint(3600, 300).await;
    let echo = echo_upstream(Proto::H1).await;
    let legate = Legate::start(&oauth_config(&dir, tokens.addr, echo.addr, "60s"));
    let mut burst = Vec::new();
    for _ in 0..40 {
        let addr = legate.addr;
        burst.push(tokio::spawn(async move { get(addr, "/").await }));
    }
    for b in burst {
        let r = b.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.echoed("authorization").as_deref(), Some("Bearer t1"));
    }
    assert_eq!(
        tokens.issued.load(Ordering::SeqCst),
        1,
        "one token request for the whole burst"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_refreshes_ahead_and_keeps_the_old_token_through_failures() {
    let dir = TempDir::new("cred-oauth-refresh");
    // Tokens live 2 s and are refreshed 1 s ahead.
    let tokens = token_endpoint(2, 0).await;
    let echo = echo_upstream(Proto::H1).await;
    let legate = Legate::start(&oauth_config(&dir, tokens.addr, echo.addr, "1s"));
    let r = get(legate.addr, "/").await;
    assert_eq!(r.echoed("authorization").as_deref(), Some("Bearer t1"));
    // The background refresh replaces it before it expires, without any request waiting.
    // The endpoint counts a token when it answers; legate stores it after reading the answer,
    // so what to wait for is legate's own count of refreshes that succeeded.
    wait_until_async("a second token is fetched ahead of expiry", || {
        tokens.issued.load(Ordering::SeqCst) >= 2
            && metric(
                &legate.metrics(),
                "legate_oauth2_token_refreshes_total",
                &["result=\"ok\""],
            )
            .unwrap_or(0.0)
                >= 2.0
    })
    .await;
    let r = get(legate.addr, "/").await;
    assert_eq!(r.echoed("authorization").as_deref(), Some("Bearer t2"));

    // The token endpoint breaks: the refresh fails, the current token is still sent...
    tokens.failing.store(true, Ordering::SeqCst);
    let m = || {
        metric(
            &legate.metrics(),
            "legate_oauth2_token_refreshes_total",
            &["result=\"error\""],
        )
        .unwrap_or(0.0)
    };
    wait_until_async("a refresh fails", || m() >= 1.0).await;
    let r = get(legate.addr, "/").await;
    let sent = r.echoed("authorization");
    // ...until it expires; then requests fail fast instead of going out without credentials.
    if r.status == 200 {
        assert_eq!(
            sent.as_deref(),
            Some("Bearer t2"),
            "the old token while it is valid"
        );
    }
    let expired = loop {
        let r = get(legate.addr, "/").await;
        if r.status != 200 {
            break r;
        }
        assert_eq!(r.echoed("authorization").as_deref(), Some("Bearer t2"));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(expired.status, 503);
    assert_eq!(
        expired.header("legate-error"),
        Some("credentials-unavailable")
    );
    assert!(
        !String::from_utf8_lossy(&expired.body).contains("s3cr"),
        "no secret in error bodies"
    );
    // The endpoint recovers: requests get a fresh token again.
    tokens.failing.store(false, Ordering::SeqCst);
    wait_until_async("a new token after recovery", || {
        tokens.issued.load(Ordering::SeqCst) >= 3
    })
    .await;
    let r = get(legate.addr, "/").await;
    assert_eq!(r.status, 200);
    assert!(r.echoed("authorization").unwrap().starts_with("Bearer t"));
}
