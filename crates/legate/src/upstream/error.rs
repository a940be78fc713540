//! Why reaching an upstream failed, and how each failure is answered.

use super::UpstreamName;
use http::StatusCode;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream `{upstream}` has no endpoint to send to (targets: {targets}; check that the names resolve)")]
    NoEndpoint {
        upstream: UpstreamName,
        targets: String,
    },
    #[error("reading the request body from the client failed: {source}")]
    RequestBody { source: crate::http::body::BoxError },
    #[error("upstream `{upstream}` is at its {limit} limit (circuit_breaker); failing fast")]
    Overflow {
        upstream: UpstreamName,
        limit: &'static str,
    },
    #[error("upstream `{upstream}`: circuit open after repeated failures; failing fast")]
    CircuitOpen { upstream: UpstreamName },
    #[error("upstream `{upstream}`: no credentials to send: {detail}")]
    Credentials {
        upstream: UpstreamName,
        detail: String,
    },
    #[error("upstream `{upstream}` did not answer within {timeout:?} (the route timeout)")]
    RouteTimeout {
        upstream: UpstreamName,
        timeout: std::time::Duration,
    },
    #[error("{endpoint} did not answer within the per-try timeout {timeout:?}")]
    TryTimeout {
        endpoint: SocketAddr,
        timeout: std::time::Duration,
    },
    #[error("connection to {endpoint} refused: is the service listening there?")]
    ConnectRefused { endpoint: SocketAddr },
    #[error("connecting to {endpoint} timed out after {timeout:?} (upstream connect_timeout)")]
    ConnectTimeout {
        endpoint: SocketAddr,
        timeout: std::time::Duration,
    },
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS with {endpoint} failed ({reason}): {detail}")]
    Tls {
        endpoint: SocketAddr,
        /// `tls-unknown-ca`, `tls-hostname-mismatch`, … (see `tls::failure`).
        reason: &'static str,
        detail: String,
    },
    #[error("PostgreSQL at {endpoint} does not support SSL (it answered N to SSLRequest): turn `ssl = on` in the server, or remove `tls.mode: postgres`")]
    PostgresNoSsl { endpoint: SocketAddr },
    #[error("{endpoint} answered SSLRequest with {answer:#04x}, not S or N: is this a PostgreSQL server?")]
    PostgresBadSslAnswer { endpoint: SocketAddr, answer: u8 },
    #[error("HTTP handshake with {endpoint} failed: {source}")]
    Handshake {
        endpoint: SocketAddr,
        source: hyper::Error,
    },
    #[error("{endpoint} closed or reset the connection before answering: {source}")]
    Reset {
        endpoint: SocketAddr,
        source: hyper::Error,
    },
    #[error("{endpoint} closed or reset the connection before answering: {detail}")]
    Closed {
        endpoint: SocketAddr,
        detail: String,
    },
    #[error("{endpoint} sent a response that is not valid HTTP: {detail}")]
    BadResponse {
        endpoint: SocketAddr,
        detail: String,
    },
    #[error("{endpoint} sent a response that is not valid HTTP: {source}")]
    Protocol {
        endpoint: SocketAddr,
        source: hyper::Error,
    },
    #[error("{endpoint} speaks HTTP/2, which cannot carry an HTTP/1.1 Upgrade (WebSocket); set the upstream's protocol to http1")]
    UpgradeUnsupported { endpoint: SocketAddr },
    #[error("request to {endpoint} failed: {source}")]
    Request {
        endpoint: SocketAddr,
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// The status and `legate-error` reason the client sees.
    pub fn reply(&self) -> (StatusCode, &'static str) {
        match self {
            UpstreamError::NoEndpoint { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no-endpoint"),
            UpstreamError::Overflow { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overflow"),
            UpstreamError::RequestBody { .. } => (StatusCode::BAD_REQUEST, "request-body-error"),
            UpstreamError::CircuitOpen { .. } => (StatusCode::SERVICE_UNAVAILABLE, "circuit-open"),
            UpstreamError::Credentials { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "credentials-unavailable")
            }
            UpstreamError::TryTimeout { .. } | UpstreamError::RouteTimeout { .. } => {
                (StatusCode::GATEWAY_TIMEOUT, "timeout")
            }
            UpstreamError::ConnectRefused { .. } => (StatusCode::BAD_GATEWAY, "connect-refused"),
            UpstreamError::ConnectTimeout { .. } => {
                (StatusCode::GATEWAY_TIMEOUT, "connect-timeout")
            }
            UpstreamError::Connect { .. } => (StatusCode::BAD_GATEWAY, "connect-failed"),
            UpstreamError::Tls { reason, .. } => (StatusCode::BAD_GATEWAY, reason),
            UpstreamError::PostgresNoSsl { .. } => (StatusCode::BAD_GATEWAY, "tls-not-supported"),
            UpstreamError::PostgresBadSslAnswer { .. } => {
                (StatusCode::BAD_GATEWAY, "upstream-protocol-error")
            }
            UpstreamError::Handshake { .. } => (StatusCode::BAD_GATEWAY, "upstream-handshake"),
            UpstreamError::Reset { .. } | UpstreamError::Closed { .. } => {
                (StatusCode::BAD_GATEWAY, "upstream-reset")
            }
            UpstreamError::BadResponse { .. } => {
                (StatusCode::BAD_GATEWAY, "upstream-protocol-error")
            }
            UpstreamError::Protocol { .. } => (StatusCode::BAD_GATEWAY, "upstream-protocol-error"),
            UpstreamError::UpgradeUnsupported { .. } => {
                (StatusCode::BAD_GATEWAY, "upgrade-unsupported")
            }
            UpstreamError::Request { .. } => (StatusCode::BAD_GATEWAY, "upstream-error"),
        }
    }

    pub fn endpoint(&self) -> Option<SocketAddr> {
        match self {
            UpstreamError::NoEndpoint { .. }
            | UpstreamError::Overflow { .. }
            | UpstreamError::CircuitOpen { .. }
            | UpstreamError::RouteTimeout { .. }
            | UpstreamError::Credentials { .. }
            | UpstreamError::RequestBody { .. } => None,
            UpstreamError::TryTimeout { endpoint, .. } => Some(*endpoint),
            UpstreamError::ConnectRefused { endpoint }
            | UpstreamError::ConnectTimeout { endpoint, .. }
            | UpstreamError::Connect { endpoint, .. }
            | UpstreamError::Tls { endpoint, .. }
            | UpstreamError::PostgresNoSsl { endpoint }
            | UpstreamError::PostgresBadSslAnswer { endpoint, .. }
            | UpstreamError::Handshake { endpoint, .. }
            | UpstreamError::Reset { endpoint, .. }
            | UpstreamError::Closed { endpoint, .. }
            | UpstreamError::BadResponse { endpoint, .. }
            | UpstreamError::Protocol { endpoint, .. }
            | UpstreamError::UpgradeUnsupported { endpoint }
            | UpstreamError::Request { endpoint, .. } => Some(*endpoint),
        }
    }

    /// The failure kind for retry conditions, outlier detection and the breaker.
    pub fn kind(&self) -> FailureKind {
        match self {
            UpstreamError::ConnectRefused { .. }
            | UpstreamError::ConnectTimeout { .. }
            | UpstreamError::Connect { .. }
            | UpstreamError::Tls { .. }
            | UpstreamError::PostgresNoSsl { .. }
            | UpstreamError::PostgresBadSslAnswer { .. }
            | UpstreamError::Handshake { .. } => FailureKind::Connect,
            UpstreamError::Reset { source, .. } if is_refused_stream(source) => {
                FailureKind::RefusedStream
            }
            UpstreamError::Reset { .. }
            | UpstreamError::Closed { .. }
            | UpstreamError::BadResponse { .. }
            | UpstreamError::Protocol { .. }
            | UpstreamError::Request { .. } => FailureKind::Reset,
            UpstreamError::TryTimeout { .. } | UpstreamError::RouteTimeout { .. } => {
                FailureKind::Timeout
            }
            UpstreamError::NoEndpoint { .. }
            | UpstreamError::Overflow { .. }
            | UpstreamError::CircuitOpen { .. }
            | UpstreamError::RequestBody { .. }
            | UpstreamError::Credentials { .. }
            | UpstreamError::UpgradeUnsupported { .. } => FailureKind::Local,
        }
    }

    /// A failed TLS handshake.
    pub fn tls(endpoint: SocketAddr, e: std::io::Error) -> Self {
        UpstreamError::Tls {
            endpoint,
            reason: crate::tls::failure::reason(&e),
            detail: match crate::tls::failure::rustls_error(&e) {
                Some(r) => r.to_string(),
                None => e.to_string(),
            },
        }
    }

    /// Classifies a failure of legate's own HTTP/1.1 client.
    pub fn from_h1(endpoint: SocketAddr, e: super::h1::Error) -> Self {
        match e {
            super::h1::Error::Io(io) => match crate::tls::failure::rustls_error(&io) {
                Some(r) => UpstreamError::Tls {
                    endpoint,
                    reason: crate::tls::failure::reason_of(r),
                    detail: r.to_string(),
                },
                None => UpstreamError::Closed {
                    endpoint,
                    detail: io.to_string(),
                },
            },
            super::h1::Error::Closed => UpstreamError::Closed {
                endpoint,
                detail: e.to_string(),
            },
            super::h1::Error::Protocol(detail) => UpstreamError::BadResponse { endpoint, detail },
        }
    }

    /// Classifies an error from sending a request on an established connection.
    pub fn from_send(endpoint: SocketAddr, e: hyper::Error) -> Self {
        // TLS 1.3 finishes the client's side of the handshake before the server has checked
        // the client certificate: a refusal arrives as an alert on the first read.
        if let Some(r) = rustls_cause(&e) {
            return UpstreamError::Tls {
                endpoint,
                reason: crate::tls::failure::reason_of(r),
                detail: r.to_string(),
            };
        }
        // The request body failed on the client's side (it left, stalled past
        // request_body_timeout, or sent bad chunked framing): the client's fault, not the
        // upstream's.
        if e.is_user() {
            return UpstreamError::RequestBody {
                source: Box::new(e),
            };
        }
        if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
            UpstreamError::Protocol {
                endpoint,
                source: e,
            }
        } else if e.is_incomplete_message() || e.is_canceled() || e.is_closed() || is_io_reset(&e) {
            UpstreamError::Reset {
                endpoint,
                source: e,
            }
        } else {
            UpstreamError::Request {
                endpoint,
                source: e,
            }
        }
    }
}

fn rustls_cause(e: &hyper::Error) -> Option<&rustls::Error> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return crate::tls::failure::rustls_error(io);
        }
        src = s.source();
    }
    None
}

fn is_io_reset(e: &hyper::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        src = s.source();
    }
    false
}

/// How a try failed, as the resilience policies see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Connect,
    Reset,
    RefusedStream,
    Timeout,
    /// legate's own refusal (no endpoint, overflow, open circuit): says nothing about an endpoint.
    Local,
}

fn is_refused_stream(e: &hyper::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        src = s.source();
    }
    false
}
