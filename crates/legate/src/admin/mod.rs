//! The admin server (default 127.0.0.1:9901): `/startup`, `/live`, `/ready`, `/metrics`,
//! `/config`, and `POST /quitquitquit` (`/quit`).
//!
//! Admin may bind beyond loopback so the kubelet can probe it; then every endpoint that changes
//! state answers only loopback peers (linkerd's rule), and `/config` too unless
//! `admin.expose_config` — a probe needs no more than `/startup`, `/ready`, `/live`.

use crate::lifecycle::State;
use crate::telemetry::metrics::Metrics;
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
    /// The effective config as YAML, secrets already redacted.
    pub config_yaml: String,
    /// Upstreams whose certificates are not verified (`insecure_skip_verify`): every `/config`
    /// read says so in the log, so the setting cannot hide.
    pub insecure_upstreams: Vec<String>,
    /// `admin.expose_config`: `/config` for peers beyond loopback too.
    pub expose_config: bool,
    /// `admin.allow_get_quit`: the quit endpoints answer GET as well as POST.
    pub allow_get_quit: bool,
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

impl Admin {
    pub fn respond(
        &self,
        req: &Request<Incoming>,
        peer: std::net::SocketAddr,
    ) -> Response<Full<Bytes>> {
        const PLAIN: &str = "text/plain; charset=utf-8";
        let local = is_loopback(peer);
        let path = req.uri().path();
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
                if method == Method::POST || (method == Method::GET && self.allow_get_quit) =>
            {
                if !local {
                    tracing::warn!(%peer, path, "refused: state-changing admin endpoint from a non-loopback peer");
                    return text(
                        StatusCode::FORBIDDEN,
                        PLAIN,
                        "forbidden: only loopback peers may change legate's state\n",
                    );
                }
                tracing::info!(%peer, path, "quit requested");
                self.state.begin_shutdown("quit endpoint");
                text(StatusCode::OK, PLAIN, "draining\n")
            }
            (&Method::GET, "/config") if !local && !self.expose_config => {
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
                for u in &self.insecure_upstreams {
                    tracing::warn!(upstream = %u, "insecure_skip_verify is on: this upstream's TLS certificate is not verified");
                }
                text(StatusCode::OK, "application/yaml", self.config_yaml.clone())
            }
            (
                _,
                "/live" | "/ready" | "/startup" | "/metrics" | "/config" | "/quitquitquit"
                | "/quit",
            ) => text(
                StatusCode::METHOD_NOT_ALLOWED,
                PLAIN,
                "method not allowed\n",
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                PLAIN,
                "not found: try /startup /ready /live /metrics /config, POST /quitquitquit\n",
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
                        let resp = admin.respond(&req, peer);
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    }
}
