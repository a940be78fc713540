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
use std::future::Future;
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
    /// legate is draining and the tunnel was idle for `DRAIN_IDLE`.
    Drain,
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
            Close::Drain => "drain",
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
    /// The last read filled its buffer: more is likely waiting, read it in a large one.
    bulk: bool,
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
            let mut buf = buffers::take(self.bulk);
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
                    self.bulk = n == buf.len();
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

/// Both directions of one tunnel, owning its two ends. A plain struct rather than an async
/// fn: it lives as long as the connection, so its size is what an idle tunnel costs (the
/// timer is boxed so the struct stays `Unpin` and small).
pub struct Tunnel<C, U> {
    client: C,
    upstream: U,
    up: Half,
    down: Half,
    /// Which side ended first, once one has.
    first_eof_client: Option<bool>,
    last: Instant,
    deadlines: Deadlines,
    timer: Pin<Box<tokio::time::Sleep>>,
    draining: bool,
}

/// While legate drains, a tunnel with no byte either way for this long is closed (FIN), so a
/// pool of idle database connections does not hold the drain for `drain_timeout`.
pub const DRAIN_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

impl<C: Conn, U: Conn> Tunnel<C, U> {
    pub fn new(client: C, upstream: U, deadlines: Deadlines) -> Self {
        let last = Instant::now();
        Self {
            client,
            upstream,
            up: Half::default(),
            down: Half::default(),
            first_eof_client: None,
            last,
            deadlines,
            timer: Box::pin(tokio::time::sleep_until(deadlines.next(last))),
            draining: false,
        }
    }

    /// legate is draining: from now on the idle deadline is `DRAIN_IDLE` at most.
    pub fn drain(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        self.deadlines.idle = self.deadlines.idle.min(DRAIN_IDLE);
        let next = self.deadlines.next(self.last);
        self.timer.as_mut().reset(next);
    }

    pub fn moved(&self) -> Moved {
        Moved {
            to_upstream: self.up.bytes,
            to_client: self.down.bytes,
        }
    }

    /// Carries bytes until both directions end, a side fails, or a deadline passes.
    pub fn poll_carry(
        &mut self,
        cx: &mut Context<'_>,
        to_upstream: &Counter,
        to_client: &Counter,
    ) -> Poll<Close> {
        let mut moved = false;
        if !self.up.done() {
            match self.up.poll(
                cx,
                &mut self.client,
                &mut self.upstream,
                &mut moved,
                to_upstream,
            ) {
                Poll::Ready(Err(Failed::Read(error))) => {
                    self.upstream.abort();
                    return Poll::Ready(Close::Reset {
                        by_client: true,
                        error,
                    });
                }
                Poll::Ready(Err(Failed::Write(error))) => {
                    self.client.abort();
                    return Poll::Ready(Close::Reset {
                        by_client: false,
                        error,
                    });
                }
                Poll::Ready(Ok(())) => {
                    self.first_eof_client.get_or_insert(true);
                }
                Poll::Pending => {}
            }
        }
        if !self.down.done() {
            match self.down.poll(
                cx,
                &mut self.upstream,
                &mut self.client,
                &mut moved,
                to_client,
            ) {
                Poll::Ready(Err(Failed::Read(error))) => {
                    self.client.abort();
                    return Poll::Ready(Close::Reset {
                        by_client: false,
                        error,
                    });
                }
                Poll::Ready(Err(Failed::Write(error))) => {
                    self.upstream.abort();
                    return Poll::Ready(Close::Reset {
                        by_client: true,
                        error,
                    });
                }
                Poll::Ready(Ok(())) => {
                    self.first_eof_client.get_or_insert(false);
                }
                Poll::Pending => {}
            }
        }
        if self.up.done() && self.down.done() {
            return Poll::Ready(if self.first_eof_client == Some(false) {
                Close::UpstreamClosed
            } else {
                Close::ClientClosed
            });
        }
        if moved {
            // The timer is not moved on every byte: when it fires, it is checked against the
            // last activity and set again if the tunnel was busy.
            self.last = Instant::now();
        }
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let now = Instant::now();
            if self.deadlines.end_of_life.is_some_and(|e| now >= e) {
                return Poll::Ready(Close::Lifetime);
            }
            if now >= self.last + self.deadlines.idle {
                return Poll::Ready(if self.draining {
                    Close::Drain
                } else {
                    Close::IdleTimeout
                });
            }
            let next = self.deadlines.next(self.last);
            self.timer.as_mut().reset(next);
        }
    }
}

impl Deadlines {
    /// When the timer must look next: the idle deadline from `last`, or the end of life.
    fn next(&self, last: Instant) -> Instant {
        let idle = last + self.idle;
        self.end_of_life.map_or(idle, |e| e.min(idle))
    }
}
