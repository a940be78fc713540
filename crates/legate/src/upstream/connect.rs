//! Opening a connection to one endpoint: TCP (with connect timeout), TLS when configured, then
//! the HTTP/1.1 or HTTP/2 handshake. The connection is driven by its own task, which keeps the
//! `legate_upstream_connections_active` gauge honest by decrementing it when the task ends.

use super::{Endpoint, Upstream, UpstreamError};
use crate::config::UpstreamProtocol;
use crate::http::body::ReqBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A request sender for one upstream connection.
pub enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
    /// legate's own HTTP/1.1 client, driven in the request's task (see `h1`).
    Fast(super::h1::H1Conn),
}

/// Plain TCP or TLS over TCP.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    #[cfg(feature = "legacy-tls")]
    Openssl(Box<crate::tls::legacy::Stream>),
}

impl Io {
    /// The server's certificate (DER), when the connection is TLS.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        match self {
            Io::Plain(_) => None,
            Io::Tls(s) => s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec()),
            #[cfg(feature = "legacy-tls")]
            Io::Openssl(s) => s.ssl().peer_certificate().and_then(|c| c.to_der().ok()),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(feature = "legacy-tls")]
            Io::Openssl(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(feature = "legacy-tls")]
            Io::Openssl(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            #[cfg(feature = "legacy-tls")]
            Io::Openssl(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
            #[cfg(feature = "legacy-tls")]
            Io::Openssl(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(feature = "legacy-tls")]
            Io::Openssl(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(feature = "legacy-tls")]
            Io::Openssl(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

async fn connect_tcp(up: &Upstream, ep: &Endpoint) -> Result<TcpStream, UpstreamError> {
    let endpoint = ep.addr;
    let stream = match tokio::time::timeout(up.connect_timeout, TcpStream::connect(endpoint)).await
    {
        Err(_) => {
            return Err(UpstreamError::ConnectTimeout {
                endpoint,
                timeout: up.connect_timeout,
            })
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(UpstreamError::ConnectRefused { endpoint })
        }
        Ok(Err(source)) => return Err(UpstreamError::Connect { endpoint, source }),
        Ok(Ok(s)) => s,
    };
    // Requests are small writes that must leave now; Nagle would hold them for the ACK.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn speaks_h2(protocol: UpstreamProtocol, alpn_h2: bool) -> bool {
    match protocol {
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::Http1 => false,
        UpstreamProtocol::Auto => alpn_h2,
    }
}

/// PostgreSQL's `SSLRequest` (length 8, code 1234.5679): the server answers one byte, `S` to go
/// on with a TLS handshake or `N` for no TLS. `N` is an error here: a tunnel configured for TLS
/// never falls back to plaintext.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

async fn postgres_ssl_request(
    tcp: &mut TcpStream,
    endpoint: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> Result<(), UpstreamError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        tcp.write_all(&SSL_REQUEST).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        Ok::<u8, io::Error>(answer[0])
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(UpstreamError::ConnectTimeout { endpoint, timeout }),
        Ok(Err(e)) => Err(UpstreamError::Closed {
            endpoint,
            detail: format!("during SSLRequest: {e}"),
        }),
        Ok(Ok(b'S')) => Ok(()),
        Ok(Ok(b'N')) => Err(UpstreamError::PostgresNoSsl { endpoint }),
        Ok(Ok(answer)) => Err(UpstreamError::PostgresBadSslAnswer { endpoint, answer }),
    }
}

/// Connects (TCP, then TLS when configured) and says whether to speak HTTP/2 on it.
pub async fn dial(up: &Upstream, ep: &Endpoint) -> Result<(Io, bool), UpstreamError> {
    let endpoint = ep.addr;
    let mut tcp = connect_tcp(up, ep).await?;
    if up.postgres_ssl {
        postgres_ssl_request(&mut tcp, endpoint, up.connect_timeout).await?;
    }
    let (io, h2) = match (
        &up.tls,
        up.targets
            .get(ep.target)
            .and_then(|t| t.server_name.clone()),
    ) {
        (Some(super::TlsOrigin::Rustls(tls)), Some(name)) => {
            let connector = tokio_rustls::TlsConnector::from(tls.config());
            // Boxed (in a statement of its own): a TLS handshake's state is 1.2 KB, and a
            // plain connect's future is sized by its largest branch for every connect in flight.
            let handshake = Box::pin(tokio::time::timeout(
                up.connect_timeout,
                connector.connect(name, tcp),
            ));
            let stream = match handshake.await {
                Err(_) => {
                    return Err(UpstreamError::ConnectTimeout {
                        endpoint,
                        timeout: up.connect_timeout,
                    })
                }
                Ok(Err(source)) => return Err(UpstreamError::tls(endpoint, source)),
                Ok(Ok(s)) => s,
            };
            let alpn_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            (Io::Tls(Box::new(stream)), speaks_h2(up.protocol, alpn_h2))
        }
        #[cfg(feature = "legacy-tls")]
        (Some(super::TlsOrigin::Openssl(tls)), Some(name)) => {
            let host = name.to_str();
            let handshake = tls.connect(host.as_ref(), tcp);
            let stream = match tokio::time::timeout(up.connect_timeout, handshake).await {
                Err(_) => {
                    return Err(UpstreamError::ConnectTimeout {
                        endpoint,
                        timeout: up.connect_timeout,
                    })
                }
                Ok(Err((reason, detail))) => {
                    return Err(UpstreamError::Tls {
                        endpoint,
                        reason,
                        detail,
                    })
                }
                Ok(Ok(s)) => s,
            };
            let alpn_h2 = stream.ssl().selected_alpn_protocol() == Some(b"h2");
            (
                Io::Openssl(Box::new(stream)),
                speaks_h2(up.protocol, alpn_h2),
            )
        }
        _ => (Io::Plain(tcp), up.protocol == UpstreamProtocol::Http2),
    };
    Ok((io, h2))
}

/// Opens a new connection to `ep` and performs the HTTP handshake. `permit` (a unit of the
/// upstream's `max_connections`) is held for as long as the connection lives. With `fast`, an
/// HTTP/1.1 connection is returned for legate's own client instead of hyper's.
pub async fn open(
    up: &Upstream,
    ep: &Endpoint,
    fast: bool,
    permit: super::breaker::Permit,
) -> Result<Sender, UpstreamError> {
    let endpoint = ep.addr;
    let (io, h2) = dial(up, ep).await?;
    let metrics = ep.metrics.clone();
    if fast && !h2 {
        metrics.active.inc();
        metrics.opened.inc();
        return Ok(Sender::Fast(super::h1::H1Conn::new(
            io,
            super::h1::Guard {
                active: metrics.active.clone(),
                _permit: permit,
            },
        )));
    }
    let io = TokioIo::new(io);
    let sender = if h2 {
        // Boxed: HTTP/2 upstreams are the rare case; their handshake future is 0.9 KB.
        let handshake = Box::pin(async move {
            http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
        });
        let (tx, conn) = handshake
            .await
            .map_err(|source| UpstreamError::Handshake { endpoint, source })?;
        metrics.active.inc();
        let active = metrics.active.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(%endpoint, error = %e, "upstream h2 connection ended with error");
            }
            active.dec();
        });
        Sender::H2(tx)
    } else {
        let (tx, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| UpstreamError::Handshake { endpoint, source })?;
        metrics.active.inc();
        let active = metrics.active.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%endpoint, error = %e, "upstream connection ended with error");
            }
            active.dec();
        });
        Sender::H1(tx)
    };
    metrics.opened.inc();
    Ok(sender)
}
