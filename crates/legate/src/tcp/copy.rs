//! Carrying bytes both ways between the client and the upstream.
//!
//! Each direction reads into a pooled buffer only when it can read (a poll that finds nothing
//! gives the buffer straight back), writes all of it on, and returns the buffer: an idle tunnel
//! holds no buffer. A direction whose source ends shuts the other side's write half (a FIN, or
//! TLS close_notify then FIN) and the other direction goes on, so a client that half-closes
//! still receives the whole answer. A reset or error on one side resets the other. Writes wait
//! for the destination (backpressure): a slow reader slows the writer, and legate buffers no
//! more than one buffer per direction.

use super::buffers::{self, Buf};
use super::stream::Conn;
use prometheus_client::metrics::counter::Counter;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Why a tunnel ended. `reason()` is the `result` label and the log's `close` field.
#[derive(Debug)]
pub enum Close {
    /// Both directions ended; the client's side ended first.
    ClientClosed,
    UpstreamClosed,
    IdleTimeout,
    Lifetime,
    /// A side reset the connection or failed; the other side was reset too.
    Reset {
        by_client: bool,
        error: io::Error,
    },
}

impl Close {
    pub fn reason(&self) -> &'static str {
        match self {
            Close::ClientClosed => "client-closed",
            Close::UpstreamClosed => "upstream-closed",
            Close::IdleTimeout => "idle-timeout",
            Close::Lifetime => "lifetime",
            Close::Reset { by_client, error } => {
                if !by_client {
                    if let Some(r) = crate::tls::failure::rustls_error(error) {
                        return crate::tls::failure::reason_of(r);
                    }
                }
                "reset"
            }
        }
    }
}

/// Bytes carried each way.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    pub to_upstream: u64,
    pub to_client: u64,
}

/// Deadlines of one tunnel.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// No byte either way for this long closes the tunnel.
    pub idle: Duration,
    /// The tunnel closes at this instant, busy or not.
    pub end_of_life: Option<Instant>,
}

enum Failed {
    Read(io::Error),
    Write(io::Error),
}

/// One direction.
#[derive(Default)]
struct Half {
    /// Held only while bytes read are not yet written on.
    buf: Option<Buf>,
    pos: usize,
    len: usize,
    eof: bool,
    shut: bool,
    bytes: u64,
}

impl Half {
    fn done(&self) -> bool {
        self.shut && self.buf.is_none()
    }

    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
        moved: &mut bool,
        counter: &Counter,
    ) -> Poll<Result<(), Failed>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if let Some(buf) = self.buf.as_deref() {
                while self.pos < self.len {
                    let n = ready!(Pin::new(&mut *dst).poll_write(cx, &buf[self.pos..self.len]))
                        .map_err(Failed::Write)?;
                    if n == 0 {
                        return Poll::Ready(Err(Failed::Write(io::ErrorKind::WriteZero.into())));
                    }
                    self.pos += n;
                    *moved = true;
                }
                ready!(Pin::new(&mut *dst).poll_flush(cx)).map_err(Failed::Write)?;
                counter.inc_by(self.len as u64);
                self.bytes += self.len as u64;
                if let Some(b) = self.buf.take() {
                    buffers::give(b);
                }
                continue;
            }
            if self.eof {
                if !self.shut {
                    // The peer may be gone already; its own direction reports that.
                    let _ = ready!(Pin::new(&mut *dst).poll_shutdown(cx));
                    self.shut = true;
                }
                return Poll::Ready(Ok(()));
            }
            let mut buf = buffers::take();
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut *src).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    buffers::give(buf);
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    buffers::give(buf);
                    return Poll::Ready(Err(Failed::Read(e)));
                }
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        buffers::give(buf);
                        self.eof = true;
                    } else {
                        self.buf = Some(buf);
                        self.pos = 0;
                        self.len = n;
                        *moved = true;
                    }
                }
            }
        }
    }
}

/// Carries bytes until both directions end, a side fails, or a deadline passes.
pub async fn tunnel<C: Conn, U: Conn>(
    client: &mut C,
    upstream: &mut U,
    deadlines: Deadlines,
    to_upstream: &Counter,
    to_client: &Counter,
) -> (Close, Moved) {
    let mut up = Half::default();
    let mut down = Half::default();
    let mut first_eof_client: Option<bool> = None;
    let mut last = Instant::now();
    let next = |last: Instant| {
        let idle = last + deadlines.idle;
        deadlines.end_of_life.map_or(idle, |e| e.min(idle))
    };
    let timer = tokio::time::sleep_until(next(last));
    tokio::pin!(timer);
    let close = poll_fn(|cx| {
        let mut moved = false;
        if !up.done() {
            match up.poll(cx, client, upstream, &mut moved, to_upstream) {
                Poll::Ready(Err(Failed::Read(error))) => {
                    upstream.abort();
                    return Poll::Ready(Close::Reset {
                        by_client: true,
                        error,
                    });
                }
                Poll::Ready(Err(Failed::Write(error))) => {
                    client.abort();
                    return Poll::Ready(Close::Reset {
                        by_client: false,
                        error,
                    });
                }
                Poll::Ready(Ok(())) => {
                    first_eof_client.get_or_insert(true);
                }
                Poll::Pending => {}
            }
        }
        if !down.done() {
            match down.poll(cx, upstream, client, &mut moved, to_client) {
                Poll::Ready(Err(Failed::Read(error))) => {
                    client.abort();
                    return Poll::Ready(Close::Reset {
                        by_client: false,
                        error,
                    });
                }
                Poll::Ready(Err(Failed::Write(error))) => {
                    upstream.abort();
                    return Poll::Ready(Close::Reset {
                        by_client: true,
                        error,
                    });
                }
                Poll::Ready(Ok(())) => {
                    first_eof_client.get_or_insert(false);
                }
                Poll::Pending => {}
            }
        }
        if up.done() && down.done() {
            return Poll::Ready(if first_eof_client == Some(false) {
                Close::UpstreamClosed
            } else {
                Close::ClientClosed
            });
        }
        if moved {
            // The timer is not moved on every byte: when it fires, it is checked against the
            // last activity and set again if the tunnel was busy.
            last = Instant::now();
        }
        loop {
            ready!(timer.as_mut().poll(cx));
            let now = Instant::now();
            if deadlines.end_of_life.is_some_and(|e| now >= e) {
                return Poll::Ready(Close::Lifetime);
            }
            if now >= last + deadlines.idle {
                return Poll::Ready(Close::IdleTimeout);
            }
            timer.as_mut().reset(next(last));
        }
    })
    .await;
    (
        close,
        Moved {
            to_upstream: up.bytes,
            to_client: down.bytes,
        },
    )
}
