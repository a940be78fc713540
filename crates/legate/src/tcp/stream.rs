//! The two ends of a tunnel: TCP or Unix client sockets, plain or TLS, and the upstream
//! connection (`upstream::connect::Io`). `abort` makes the next close a reset (RST), so a reset
//! on one side reaches the other as a reset, not as a clean end of stream.

use crate::upstream::connect::Io;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

pub trait Conn: AsyncRead + AsyncWrite + Unpin {
    /// Arrange for the coming close to reset the connection.
    fn abort(&self);
}

impl Conn for TcpStream {
    fn abort(&self) {
        let _ = self.set_zero_linger();
    }
}

impl Conn for UnixStream {
    /// A Unix socket has no reset; closing it is all the peer can see.
    fn abort(&self) {}
}

impl<IO: Conn> Conn for tokio_rustls::server::TlsStream<IO> {
    fn abort(&self) {
        self.get_ref().0.abort();
    }
}

impl Conn for Io {
    fn abort(&self) {
        match self {
            Io::Plain(s) => s.abort(),
            Io::Tls(s) => s.get_ref().0.abort(),
            #[cfg(feature = "legacy-tls")]
            Io::Openssl(s) => s.get_ref().abort(),
        }
    }
}
