//! The admin server (default 127.0.0.1:9901): `/startup`, `/live`, `/ready`, `/metrics`,
//! `/config`, `GET`/`PUT /log-level`, `POST /reload` and `POST /quitquitquit` (`/quit`).
//!
//! Admin may bind beyond loopback so the kubelet can probe it; then every endpoint that changes
//! state answers only loopback peers (linkerd's rule), and `/config` too unless
//! `admin.expose_config` — a probe needs no more than `/startup`, `/ready`, `/live`.

use crate::lifecycle::State;
use crate::telemetry::metrics::Metrics;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;

pub struct Admin {
    pub state: Arc<State>,
    pub metrics: Arc<Metrics>,
    /// What the running config says about admin; replaced by each reload.
    pub view: Arc<ArcSwap<AdminView>>,
    /// Asks the control thread to reload the config file; the answer comes back on the
    /// oneshot. `None` in processes that do not reload (tests that build a config in memory).
    pub reload: Option<tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<ReloadOutcome>>>,
}

/// The running config as admin shows it.
#[derive(Default, Clone)]
pub struct AdminView {
    /// The running config; `/config` renders it (redacted) when asked, so a start never pages
    /// in the YAML serializer for a page nobody may read.
    pub config: Arc<crate::config::Config>,
    /// `sha256:<hex>` of the config file's bytes (of the generated YAML in quick mode).
    pub hash: String,
    /// Where the config came from: the file, or `command line`.
    pub source: String,
    /// When the running config was loaded (RFC 3339, UTC).
    pub loaded_at: String,
    /// The last reload that failed since, with when: its errors, one per line.
    pub last_error: Option<String>,
    /// Upstreams whose certificates are not verified (`insecure_skip_verify`): every `/config`
    /// read says so in the log, so the setting cannot hide.
    pub insecure_upstreams: Vec<String>,
    /// `admin.expose_config`: `/config` for peers beyond loopback too.
    pub expose_config: bool,
    /// `admin.allow_get_quit`: the quit endpoints answer GET as well as POST.
    pub allow_get_quit: bool,
}

impl AdminView {
    /// `/config`: a header of YAML comments (hash, load time, last error) over the config, so
    /// the whole answer still parses as the config it shows.
    fn config_text(&self) -> String {
        let mut out = format!(
            "# legate running config\n# hash: {}\n# source: {}\n# loaded_at: {}\n",
            self.hash, self.source, self.loaded_at
        );
        match &self.last_error {
            None => out.push_str("# last_reload_error: none\n"),
            Some(e) => {
                out.push_str("# last_reload_error: |\n");
                for line in e.lines() {
                    out.push_str("#   ");
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out.push_str(&crate::config::to_yaml(&crate::config::redacted(
            &self.config,
        )));
        out
    }
}

/// What a reload did.
#[derive(Debug, Clone)]
pub enum ReloadOutcome {
    /// The new config runs; `notes` says what changed and what needs a restart.
    Applied { hash: String, notes: Vec<String> },
    /// The file's content is what already runs.
    Unchanged { hash: String },
    /// The running config stays; every problem found, one per entry.
    Failed { errors: Vec<String> },
    /// Nothing to reload: legate runs from command-line flags.
    NoFile,
    /// Draining: a reload now would only slow the exit.
    Draining,
}

/// Loopback, including IPv4-mapped IPv6 loopback.
fn is_loopback(peer: std::net::SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

const PLAIN: &str = "text/plain; charset=utf-8";

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', ..) => {
                out.push(b' ');
                i += 1;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `PUT /log-level` with the filter as the body (`debug`, `legate=debug,info`), or as
/// `?level=` for tools that cannot send a body.
async fn set_log_level(
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("level="))
            .map(percent_decode)
    });
    let filter = match from_query {
        Some(f) => f,
        None => match http_body_util::Limited::new(req.into_body(), 1024)
            .collect()
            .await
        {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
            Err(_) => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    PLAIN,
                    "a log filter is at most 1 KiB\n",
                )
            }
        },
    };
    let before = crate::telemetry::logging::current();
    // Said before the change: a change to `error` or `off` would hide its own line.
    tracing::warn!(%peer, from = %before, to = %filter, "log level change requested");
    match crate::telemetry::logging::set(&filter) {
        Ok(()) => text(StatusCode::OK, PLAIN, format!("{filter}\n")),
        Err(e) => text(StatusCode::BAD_REQUEST, PLAIN, format!("{e}\n")),
    }
}

fn forbidden_state_change(peer: std::net::SocketAddr, path: &str) -> Response<Full<Bytes>> {
    tracing::warn!(%peer, path, "refused: state-changing admin endpoint from a non-loopback peer");
    text(
        StatusCode::FORBIDDEN,
        PLAIN,
        "forbidden: only loopback peers may change legate's state\n",
    )
}

impl Admin {
    pub async fn respond(
        &self,
        req: Request<Incoming>,
        peer: std::net::SocketAddr,
    ) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::POST, "/reload") => {
                if !is_loopback(peer) {
                    return forbidden_state_change(peer, "/reload");
                }
                self.reload(peer).await
            }
            (&Method::PUT, "/log-level") => {
                if !is_loopback(peer) {
                    return forbidden_state_change(peer, "/log-level");
                }
                set_log_level(req, peer).await
            }
            (&Method::GET, "/log-level") => text(
                StatusCode::OK,
                PLAIN,
                format!("{}\n", crate::telemetry::logging::current()),
            ),
            _ => self.respond_now(&req, peer),
        }
    }

    async fn reload(&self, peer: std::net::SocketAddr) -> Response<Full<Bytes>> {
        tracing::info!(%peer, "reload requested");
        let Some(tx) = &self.reload else {
            return text(
                StatusCode::BAD_REQUEST,
                PLAIN,
                "nothing to reload: this legate was not started from a config file\n",
            );
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if tx.send(reply).await.is_err() {
            return text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "stopping\n");
        }
        match answer.await {
            Ok(ReloadOutcome::Applied { hash, notes }) => {
                let mut body = format!("reloaded: {hash}\n");
                for n in notes {
                    body.push_str(&n);
                    body.push('\n');
                }
                text(StatusCode::OK, PLAIN, body)
            }
            Ok(ReloadOutcome::Unchanged { hash }) => {
                text(StatusCode::OK, PLAIN, format!("unchanged: {hash}\n"))
            }
            Ok(ReloadOutcome::Failed { errors }) => {
                let mut body = String::from("reload failed; the running config stays:\n");
                for e in errors {
                    body.push_str(&e);
                    body.push('\n');
                }
                text(StatusCode::BAD_REQUEST, PLAIN, body)
            }
            Ok(ReloadOutcome::NoFile) => text(
                StatusCode::BAD_REQUEST,
                PLAIN,
                "nothing to reload: legate runs from command-line flags, not a config file\n",
            ),
            Ok(ReloadOutcome::Draining) | Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                "draining: not reloading\n",
            ),
        }
    }

    fn respond_now(
        &self,
        req: &Request<Incoming>,
        peer: std::net::SocketAddr,
    ) -> Response<Full<Bytes>> {
        let local = is_loopback(peer);
        let path = req.uri().path();
        let view = self.view.load();
        match (req.method(), path) {
            (&Method::GET | &Method::HEAD, "/live") => text(StatusCode::OK, PLAIN, "live\n"),
            (&Method::GET | &Method::HEAD, "/startup") => {
                if self.state.is_started() {
                    text(StatusCode::OK, PLAIN, "started\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "starting\n")
                }
            }
            (method, "/quitquitquit" | "/quit")
                if method == Method::POST || (method == Method::GET && view.allow_get_quit) =>
            {
                if !local {
                    return forbidden_state_change(peer, path);
                }
                tracing::info!(%peer, path, "quit requested");
                self.state.begin_shutdown("quit endpoint");
                text(StatusCode::OK, PLAIN, "draining\n")
            }
            (&Method::GET, "/config") if !local && !view.expose_config => {
                tracing::warn!(%peer, "refused: /config from a non-loopback peer (admin.expose_config is off)");
                text(
                    StatusCode::FORBIDDEN,
                    PLAIN,
                    "forbidden: /config is for loopback peers unless admin.expose_config is on\n",
                )
            }
            (&Method::GET | &Method::HEAD, "/ready") => {
                if self.state.is_draining() {
                    text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "draining\n")
                } else if self.state.saturated() > 0 {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        PLAIN,
                        "saturated: a listener is at its max_connections\n",
                    )
                } else if self.state.is_ready() {
                    text(StatusCode::OK, PLAIN, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "starting\n")
                }
            }
            (&Method::GET, "/metrics") => text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.encode(),
            ),
            (&Method::GET, "/config") => {
                for u in &view.insecure_upstreams {
                    tracing::warn!(upstream = %u, "insecure_skip_verify is on: this upstream's TLS certificate is not verified");
                }
                let mut r = text(StatusCode::OK, "application/yaml", view.config_text());
                if let Ok(h) = header::HeaderValue::from_str(&view.hash) {
                    r.headers_mut().insert("legate-config-hash", h);
                }
                r
            }
            (
                _,
                "/live" | "/ready" | "/startup" | "/metrics" | "/config" | "/quitquitquit"
                | "/quit" | "/reload" | "/log-level",
            ) => text(
                StatusCode::METHOD_NOT_ALLOWED,
                PLAIN,
                "method not allowed\n",
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                PLAIN,
                "not found: try /startup /ready /live /metrics /config /log-level, POST /reload, PUT /log-level, POST /quitquitquit\n",
            ),
        }
    }
}

/// Serves admin requests until `shutdown_done` fires (after the workers have drained, so
/// `/ready` keeps saying 503 for the whole drain).
pub async fn serve(
    listener: std::net::TcpListener,
    admin: Arc<Admin>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register admin listener");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let admin = admin.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let admin = admin.clone();
                        async move { Ok::<_, Infallible>(admin.respond(req, peer).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    }
}
