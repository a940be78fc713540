//! legate's own HTTP/1.1 server connection: the loop that reads requests from the app and
//! writes the answers, in the connection's own task.
//!
//! Buffer ownership, the reason this exists (hyper's server keeps an 8 KiB read buffer, a write
//! buffer and its dispatch state for a connection's whole life):
//! - An idle keep-alive connection holds its socket and this loop's small state, no buffer:
//!   it waits for readability, then takes a read buffer from the worker's pool
//!   (`h1::bufpool`). A TLS connection reads its first bytes into a 16-byte array instead
//!   (rustls already holds the record; nothing is read twice from the socket).
//! - The head is parsed from that buffer. A body that arrived whole with its head goes
//!   upstream as a slice of it (in memory: legate's own HTTP/1.1 client sends it with the
//!   head). Any other body is streamed: the connection moves, with its buffer, into the
//!   request body for the exchange, and the response is written through the same lock; the
//!   loop takes the connection back when the body has been read to its end.
//! - The response head and small body frames are gathered in a pooled write buffer and go out
//!   in one `write` per message where the body is ready with the head.
//! - When the exchange is done the read buffer goes back to the pool, unless it holds the
//!   start of the next (pipelined) request; requests are answered in order.
//!
//! The per-request state (the proxy's future, the response body) lives in one allocation per
//! request, not in the connection's task: an async fn is as large as its largest state, and
//! the idle wait is the state a connection spends its life in.

use super::body::{Inbound, RespBody};
use super::headers::is_upgrade_request;
use super::proxy::{self, ConnInfo, ListenerCtx};
use crate::h1::bufpool::{self, READ_SIZE, WRITE_FLUSH};
use crate::h1::futurepool;
use crate::h1::request::{self as request_head, HeadError, HeadLimits, RequestHead};
use crate::h1::{Decoded, Decoder};
use crate::listen::ServingHandle;
use crate::server::drain;
use crate::upstream::pool::Pools;
use bytes::{Buf, Bytes, BytesMut};
use http::{header, Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// A listener's HTTP/1.1 server settings (`listeners[].limits`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub limits: HeadLimits,
    /// From a request's first byte to the end of its head.
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// The longest wait for the next bytes of a request body.
    pub body_timeout: Duration,
}

/// What every request on a connection shares.
pub struct ConnCtx {
    /// The listener as the connection was accepted (its TLS, its protocol settings).
    pub accepted_with: Arc<ListenerCtx>,
    /// The listener's current snapshot: each request reads its routes from it.
    pub current: ServingHandle,
    pub pools: Arc<Pools>,
    pub conn: ConnInfo,
    /// Drained when the listener stops accepting (shutdown, or a reload that removes it).
    pub drain: drain::ListId,
}

impl ConnCtx {
    /// The listener's routes as of this request; a reload never changes its protocol.
    pub fn listener(&self) -> Arc<ListenerCtx> {
        self.current
            .load()
            .http()
            .cloned()
            .unwrap_or_else(|| self.accepted_with.clone())
    }
}

/// A client connection, plain or TLS (boxed: a rustls connection is large, a plain one is
/// the common case and stays small).
pub enum ClientIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl ClientIo {
    /// Called right after a read that returned less than it had room for: the socket held
    /// nothing more at that instant, so the readiness that read used is forgotten now. The next
    /// wait for the client's bytes (while the answer is pending, and the idle wait after it)
    /// then waits for the event loop instead of starting with a read that can only say
    /// `EAGAIN` — one system call per request that nginx does not make either.
    ///
    /// Safe only in the same poll as the short read and on a current-thread runtime (legate's
    /// workers): no event can have been recorded for the socket in between, so bytes that came
    /// after the read still wake the connection (their event is processed later), and a close
    /// already seen is kept (tokio never clears the read-closed state).
    fn drained(&self) {
        let ClientIo::Plain(s) = self else { return };
        let current_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        if current_thread {
            let _ = s.try_io(tokio::io::Interest::READABLE, || {
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What the upgrade bridge gets after a 101: the client's connection and whatever the client
/// sent after its request head.
pub struct Upgraded {
    pub io: ClientIo,
    pub read_ahead: BytesMut,
}

/// Resolves to the client's connection once the 101 has been written to it.
pub type ClientUpgrade = oneshot::Receiver<Upgraded>;

enum Waited {
    /// The socket is readable; nothing was read yet.
    Readable,
    /// These first bytes were read (TLS).
    Read(usize),
    Closed,
}

/// Polls for the next request without holding a buffer: readiness for a plain socket (the
/// waker lives in the socket's registration, no waiter state here), the first bytes for TLS.
fn poll_next_request(
    io: &mut ClientIo,
    first: &mut [u8; 16],
    cx: &mut Context<'_>,
) -> Poll<io::Result<Waited>> {
    match io {
        ClientIo::Plain(s) => s.poll_read_ready(cx).map_ok(|()| Waited::Readable),
        ClientIo::Tls(s) => {
            let mut read = ReadBuf::new(first);
            std::task::ready!(Pin::new(s.as_mut()).poll_read(cx, &mut read))?;
            Poll::Ready(Ok(match read.filled().len() {
                0 => Waited::Closed,
                n => Waited::Read(n),
            }))
        }
    }
}

#[allow(clippy::large_enum_variant)] // one per request, on the stack, moved once
enum HeadRead {
    Head(RequestHead),
    /// The client closed before sending anything (a keep-alive connection ending).
    Closed,
    Refused(HeadError),
    Failed,
}

/// Reads until the head that `buf` holds the start of (parsed and found partial by the caller)
/// is whole: each read is followed by one parse.
async fn read_rest_of_head(io: &mut ClientIo, buf: &mut BytesMut, limits: &HeadLimits) -> HeadRead {
    loop {
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(READ_SIZE);
        }
        let room = buf.capacity() - buf.len();
        match io.read_buf(buf).await {
            Ok(0) if buf.iter().all(|b| matches!(b, b'\r' | b'\n')) => return HeadRead::Closed,
            Ok(0) | Err(_) => return HeadRead::Failed,
            // Still the poll that read: see `ClientIo::drained`.
            Ok(n) if n < room => io.drained(),
            Ok(_) => {}
        }
        match request_head::parse(buf, limits) {
            Ok(Some(head)) => return HeadRead::Head(head),
            Ok(None) => {}
            Err(e) => return HeadRead::Refused(e),
        }
    }
}

/// Waits, holding no buffer, until the next request's first bytes are in one: `None` when
/// the connection should end instead (closed, drain, `idle_timeout`).
///
/// This is the state a keep-alive connection spends its life in, so it is kept small: the
/// drain is learnt from the worker's drain list (`server::drain`), not from a watch
/// receiver's waiter, and the idle timer is the connection's (see `serve_conn`).
// Not an `async fn`: an async fn keeps its arguments twice in its state (rust-lang/rust#62958),
// and this state is what every idle connection holds.
#[allow(clippy::manual_async_fn)]
fn idle<'a>(
    io: &'a mut ClientIo,
    settings: &'a Settings,
    list: drain::ListId,
    mut timer: Pin<&'a mut tokio::time::Sleep>,
) -> impl std::future::Future<Output = Option<BytesMut>> + Send + 'a {
    async move {
        if drain::is_draining(list) {
            return None;
        }
        timer
            .as_mut()
            .reset(tokio::time::Instant::now() + settings.idle_timeout);
        let mut listed = drain::Listed::new(list);
        loop {
            let mut first = [0u8; 16];
            // A request that arrived with the drain is served (with `Connection: close`): closing
            // with it unread would reset the connection under a request the client already sent.
            let waited = poll_fn(|cx| {
                if let Poll::Ready(w) = poll_next_request(io, &mut first, cx) {
                    return Poll::Ready(Some(w));
                }
                if listed.poll_draining(cx) {
                    return Poll::Ready(None);
                }
                timer.as_mut().poll(cx).map(|()| None)
            })
            .await?;
            let mut buf = bufpool::take_read();
            match (waited, &*io) {
                (Ok(Waited::Read(n)), _) => buf.extend_from_slice(&first[..n]),
                // Readiness can outlive the bytes that caused it (a read that filled its buffer
                // exactly leaves it set): read now, and wait again if there was nothing after all,
                // rather than start the head timer on an idle connection.
                (Ok(Waited::Readable), ClientIo::Plain(s)) => match s.try_read_buf(&mut buf) {
                    Ok(0) => {
                        bufpool::give_read(buf);
                        return None;
                    }
                    // Still the poll that read: see `ClientIo::drained`.
                    Ok(n) if n < READ_SIZE => io.drained(),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        bufpool::give_read(buf);
                        continue;
                    }
                    Err(_) => {
                        bufpool::give_read(buf);
                        return None;
                    }
                },
                (Ok(Waited::Readable), ClientIo::Tls(_)) => {}
                (Ok(Waited::Closed) | Err(_), _) => {
                    bufpool::give_read(buf);
                    return None;
                }
            }
            return Some(buf);
        }
    }
}

/// Serves HTTP/1.1 requests on `io` until the client closes, a request asks to close, an
/// error ends the connection, or shutdown begins (an idle connection closes at once; one
/// mid-exchange answers with `Connection: close`).
///
/// `keep` (the connection's accounting) is held until the connection ends. Not an `async fn`:
/// an async fn moves its arguments into locals, and the generator keeps both copies
/// (rust-lang/rust#62958); the block below works on its captures in place.
pub fn serve<K: Send>(
    io: ClientIo,
    settings: Arc<Settings>,
    ctx: ConnCtx,
    keep: K,
) -> impl std::future::Future<Output = ()> + Send {
    let mut io = Some(io);
    async move {
        let _ = &keep;
        serve_conn(&mut io, &settings, &ctx).await;
    }
}

/// The connection loop behind `serve`, on state its caller owns (a plain connection's task
/// runs it after the HTTP/2 sniff, in the same task). `io` is `None` once the connection
/// ended; while a request is answered the connection lives in the request's future.
///
/// The drain is learnt from the worker's drain list (`server::drain`) rather than a watch
/// receiver, so the connection's task carries no receiver.
///
/// Not an `async fn` either (see `serve`).
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn serve_conn<'a>(
    io: &'a mut Option<ClientIo>,
    settings: &'a Settings,
    ctx: &'a ConnCtx,
) -> impl std::future::Future<Output = ()> + Send + 'a {
    async move {
        // One idle timer for the connection's life, moved later at each idle wait: tokio moves
        // a registered timer to a later instant without touching its wheel (the wheel finds
        // the new instant when the old one comes), where a timer per wait was put in the wheel
        // and taken out again for every request.
        let timer = tokio::time::sleep(settings.idle_timeout);
        tokio::pin!(timer);
        loop {
            let Some(conn) = io.as_mut() else { return };
            let Some(buf) = idle(conn, settings, ctx.drain, timer.as_mut()).await else {
                return;
            };
            let Some(conn) = io.take() else { return };
            // Everything a request needs while it is read and answered lives in this one
            // block, not in the connection's task: the idle wait above is the state a
            // connection spends its life in. The block comes from the worker's pool (reused
            // request after request, see `futurepool`). Made in its own statement: a temporary
            // lives to the end of its statement, so in `Pooled::new(f()).await` the unboxed
            // `f()` would be part of the task too.
            let requests = futurepool::Pooled::new(serve_buffered(conn, buf, ctx, settings));
            *io = requests.await;
        }
    }
}

/// Answers the requests that start in `buf` (more than one when the client pipelines), and
/// gives the connection back for the idle wait once nothing of a next request is buffered.
// Not an `async fn`: an async fn keeps its arguments twice in its state (rust-lang/rust#62958);
// the block works on its captures in place (see `serve`).
#[allow(clippy::manual_async_fn)]
fn serve_buffered<'a>(
    mut io: ClientIo,
    mut buf: BytesMut,
    ctx: &'a ConnCtx,
    settings: &'a Settings,
) -> impl std::future::Future<Output = Option<ClientIo>> + Send + 'a {
    async move {
        loop {
            match serve_one(io, buf, ctx, settings).await {
                Next::KeepAlive(kept, mut rest) => {
                    // A CRLF some clients send after a body is not the start of a request
                    // (RFC 9112 §2.2): the connection is idle, not mid-head.
                    if rest.iter().all(|b| matches!(b, b'\r' | b'\n')) {
                        rest.clear();
                    }
                    if rest.is_empty() {
                        bufpool::give_read(rest);
                        return Some(kept);
                    }
                    io = kept;
                    buf = rest;
                }
                Next::Close => return None,
            }
        }
    }
}

/// Reads one request head from `buf` and the connection, and answers it.
// Not an `async fn`: an async fn keeps its arguments twice in its state (rust-lang/rust#62958);
// the block works on its captures in place (see `serve`).
#[allow(clippy::manual_async_fn)]
fn serve_one<'a>(
    mut io: ClientIo,
    mut buf: BytesMut,
    ctx: &'a ConnCtx,
    settings: &'a Settings,
) -> impl std::future::Future<Output = Next> + Send + 'a {
    async move {
        // A head already whole in the buffer (the usual case: it came in the idle wait's
        // read, or pipelined) needs no timer; only the rest of a partial one is read under it.
        let read = match request_head::parse(&buf, &settings.limits) {
            Ok(Some(head)) => Ok(HeadRead::Head(head)),
            Err(e) => Ok(HeadRead::Refused(e)),
            Ok(None) => {
                tokio::time::timeout(
                    settings.header_read_timeout,
                    read_rest_of_head(&mut io, &mut buf, &settings.limits),
                )
                .await
            }
        };
        let head = match read {
            Ok(HeadRead::Head(head)) => head,
            Ok(HeadRead::Refused(e)) => {
                refuse(&mut io, &e).await;
                return Next::Close;
            }
            Ok(HeadRead::Closed) => {
                buf.clear();
                bufpool::give_read(buf);
                return Next::Close;
            }
            // A head that did not arrive in time (slowloris) or a broken connection: closed
            // without an answer, as nginx does for client_header_timeout.
            Ok(HeadRead::Failed) | Err(_) => return Next::Close,
        };
        buf.advance(head.len);
        exchange(io, buf, head, ctx, settings).await
    }
}

/// Answers a head legate refuses (400, 431, 501, 505) and closes.
async fn refuse(io: &mut ClientIo, e: &HeadError) {
    let status = e.status();
    let reason = match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "request-header-too-large",
        StatusCode::NOT_IMPLEMENTED => "not-implemented",
        StatusCode::HTTP_VERSION_NOT_SUPPORTED => "version-not-supported",
        _ => "bad-request",
    };
    let body = format!("{} {reason}: {e}\n", status.as_u16()).replace(['\r'], " ");
    let mut out = bufpool::take_write();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\n");
    out.extend_from_slice(super::local::ERROR_HEADER.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    let _ = io.write_all(&out).await;
    let _ = io.shutdown().await;
    bufpool::give_write(out);
}

enum Next {
    KeepAlive(ClientIo, BytesMut),
    Close,
}

/// How the response body is delimited on the client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutFraming {
    /// No body may follow (HEAD, 1xx, 204, 304): the head goes out as the upstream framed it.
    None,
    Length(u64),
    Chunked,
    /// HTTP/1.0 client, length unknown: the end of the connection ends the body.
    Close,
}

/// The connection while a streamed request body is being read from it: shared by the body
/// (reading, in whichever task sends it upstream) and the exchange (writing the response).
struct Streaming {
    /// Taken back by the exchange once the body is complete.
    io: Option<ClientIo>,
    buf: BytesMut,
    decoder: Decoder,
    /// Bytes of `100 Continue` still to write before the body is read.
    continue_left: usize,
    done: bool,
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

type Shared = Arc<Mutex<Streaming>>;

fn lock(s: &Shared) -> MutexGuard<'_, Streaming> {
    // A panic while holding it cannot leave the stream half-updated in a way that matters
    // more than the connection, which is closed after such an exchange anyway.
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes the response through the shared connection.
struct SharedWriter(Shared);

impl AsyncRead for SharedWriter {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match lock(&self.0).io.as_mut() {
            Some(io) => Pin::new(io).poll_read(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for SharedWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match lock(&self.0).io.as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, b),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match lock(&self.0).io.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match lock(&self.0).io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

/// A request body read from the client connection as the upstream side asks for it.
pub struct ClientBody {
    shared: Shared,
    timeout: Duration,
    /// Armed while waiting for the client's next bytes.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ClientBody {
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, super::body::BoxError>>> {
        let mut s = lock(&self.shared);
        let s = &mut *s;
        if s.done {
            return Poll::Ready(None);
        }
        let Some(io) = s.io.as_mut() else {
            return Poll::Ready(Some(Err("the client connection is gone".into())));
        };
        while s.continue_left > 0 {
            let from = CONTINUE.len() - s.continue_left;
            match Pin::new(&mut *io).poll_write(cx, &CONTINUE[from..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Some(Err("client connection closed".into())))
                }
                Poll::Ready(Ok(n)) => s.continue_left -= n.min(s.continue_left),
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Pending => return Poll::Pending,
            }
            if s.continue_left == 0 {
                if let Poll::Ready(Err(e)) = Pin::new(&mut *io).poll_flush(cx) {
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
        loop {
            match s.decoder.decode(&mut s.buf) {
                Ok(Decoded::Data(d)) => {
                    self.idle = None;
                    // The last bytes of a sized body: a sender that trusts the length polls
                    // no further, so the body is complete now, not at the next poll.
                    if s.decoder.is_end() {
                        s.done = true;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Ok(Decoded::Trailers(t)) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                Ok(Decoded::End) => {
                    s.done = true;
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
            }
            match poll_read_into(&mut *io, cx, &mut s.buf) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Some(Err(
                        "the client closed the connection before the end of the request body"
                            .into(),
                    )))
                }
                Poll::Ready(Ok(_)) => self.idle = None,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Pending => {
                    let timeout = self.timeout;
                    let idle = self
                        .idle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    if idle.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(format!(
                            "no request body bytes from the client for {timeout:?} (request_body_timeout)"
                        )
                        .into())));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = super::body::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.get_mut().poll_next(cx)
    }

    fn is_end_stream(&self) -> bool {
        lock(&self.shared).done
    }

    fn size_hint(&self) -> SizeHint {
        let s = lock(&self.shared);
        let mut hint = s.decoder.size_hint();
        // What is already buffered counts toward an exact length, not against it.
        if let Some(n) = hint.exact() {
            hint = SizeHint::with_exact(n);
        }
        hint
    }
}

use std::future::Future as _;

/// Reads what is available into `buf` (a stack chunk copied in: `poll_read` cannot fill a
/// `BytesMut`'s spare room without unsafe code, and request bodies are the minority).
fn poll_read_into<R: AsyncRead + Unpin>(
    io: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
    let mut rb = ReadBuf::uninit(&mut chunk);
    match Pin::new(io).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => {
            if buf.capacity() == 0 && !rb.filled().is_empty() {
                // The exchange gave its buffer back while it waited: take a pooled one.
                *buf = bufpool::take_read();
            }
            buf.extend_from_slice(rb.filled());
            Poll::Ready(Ok(rb.filled().len()))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// Reads what the client sends while its request is being answered: `true` when it closed.
/// Holds no buffer until bytes arrive (the exchange gave its read buffer back: most clients
/// send nothing while they wait, and a thousand requests in flight would otherwise hold a
/// thousand buffers).
async fn client_gone(io: &mut ClientIo, buf: &mut BytesMut) -> bool {
    if buf.capacity() == 0 {
        if let ClientIo::Plain(s) = io {
            // Readiness can be left over from reading the head (a read that filled its buffer
            // exactly; `ClientIo::drained` forgets it after a short one): read into the stack
            // until the socket says it is drained, and take a buffer only for bytes that came.
            loop {
                if s.readable().await.is_err() {
                    return true;
                }
                let mut first = [0u8; 256];
                match s.try_read(&mut first) {
                    Ok(0) => return true,
                    Ok(n) => {
                        *buf = bufpool::take_read();
                        buf.extend_from_slice(&first[..n]);
                        return false;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return true,
                }
            }
        }
        *buf = bufpool::take_read();
    }
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_SIZE);
    }
    !matches!(io.read_buf(buf).await, Ok(n) if n > 0)
}

/// The read buffer an exchange keeps while the answer is pending: none when nothing of a next
/// request is in it (the buffer goes back to the pool now; `client_gone` takes one if the
/// client sends more).
fn spare(buf: BytesMut) -> BytesMut {
    if buf.is_empty() {
        bufpool::give_read(buf);
        BytesMut::new()
    } else {
        buf
    }
}

/// The connection as one exchange holds it.
enum Held {
    Own(ClientIo, BytesMut),
    Streaming(Shared),
}

/// One request and its response.
// Not an `async fn`: an async fn keeps its arguments twice in its state (rust-lang/rust#62958);
// the block works on its captures in place (see `serve`).
#[allow(clippy::manual_async_fn)]
fn exchange<'a>(
    io: ClientIo,
    mut buf: BytesMut,
    head: RequestHead,
    ctx: &'a ConnCtx,
    settings: &'a Settings,
) -> impl std::future::Future<Output = Next> + Send + 'a {
    async move {
        let RequestHead {
            request,
            body: decoder,
            keep_alive,
            expect_continue,
            ..
        } = head;
        let version = request.version();
        let head_request = request.method() == Method::HEAD;
        let upgrade = version == Version::HTTP_11 && is_upgrade_request(request.headers());
        let whole = decoder
            .size_hint()
            .exact()
            .filter(|n| *n <= buf.len() as u64);
        let (inbound, mut held) = if decoder.is_end() {
            (Inbound::Empty, Held::Own(io, spare(buf)))
        } else if let Some(n) = whole {
            // The whole body came with the head: it goes upstream as a slice of this buffer.
            let data = buf.split_to(n as usize).freeze();
            (Inbound::Full(data), Held::Own(io, spare(buf)))
        } else {
            let shared = Arc::new(Mutex::new(Streaming {
                io: Some(io),
                buf,
                decoder,
                continue_left: if expect_continue { CONTINUE.len() } else { 0 },
                done: false,
            }));
            let body = ClientBody {
                shared: shared.clone(),
                timeout: settings.body_timeout,
                idle: None,
            };
            (Inbound::Own(body), Held::Streaming(shared))
        };
        let (upgrade_tx, upgrade_rx) = if upgrade {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let listener = ctx.listener();
        let handled = proxy::handle(
            &listener,
            &ctx.pools,
            &ctx.conn,
            request.map(|()| inbound),
            upgrade_rx,
        );
        let resp = match &mut held {
            Held::Own(io, buf) => {
                // While the answer is pending, a client that closes its connection has left: the
                // request is dropped (and accounted for as 499), as hyper's server did. Bytes
                // that arrive meanwhile are the next pipelined request's, kept for later.
                let mut handled = std::pin::pin!(handled);
                let mut watching = true;
                loop {
                    tokio::select! {
                        biased;
                        r = &mut handled => break r,
                        gone = client_gone(io, buf), if watching => {
                            if gone {
                                return Next::Close;
                            }
                            watching = buf.len() < settings.limits.max_header_bytes;
                        }
                    }
                }
            }
            Held::Streaming(_) => handled.await,
        };
        drop(listener);
        let (parts, mut body) = resp.into_parts();
        let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS && upgrade_tx.is_some();
        let no_body = head_request
            || parts.status.is_informational()
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED;
        let mut keep = keep_alive && !drain::is_draining(ctx.drain) && !switching;
        let framing = if no_body {
            OutFraming::None
        } else if let Some(n) = body.size_hint().exact() {
            OutFraming::Length(n)
        } else if version == Version::HTTP_11 {
            OutFraming::Chunked
        } else {
            keep = false;
            OutFraming::Close
        };
        if let Held::Streaming(s) = &held {
            // A body the upstream did not read to its end leaves the next request's start
            // unknown: this connection ends after the response (as hyper and nginx do).
            if !lock(s).done {
                keep = false;
            }
        }
        let mut out = bufpool::take_write();
        if let Held::Streaming(s) = &held {
            // A `100 Continue` not yet (fully) written must not land inside the final response:
            // what is left of it goes first, and the body reader writes no more of it.
            let mut st = lock(s);
            let left = st.continue_left;
            if left > 0 && left < CONTINUE.len() {
                out.extend_from_slice(&CONTINUE[CONTINUE.len() - left..]);
            }
            st.continue_left = 0;
        }
        encode_head(&mut out, version, &parts, framing, keep, switching);
        let limit = settings.limits.max_header_bytes;
        let written = match &mut held {
            Held::Own(io, buf) => {
                write_body(io, &mut out, &mut body, framing, Some((buf, limit))).await
            }
            Held::Streaming(s) => {
                let mut w = SharedWriter(s.clone());
                write_body(&mut w, &mut out, &mut body, framing, None).await
            }
        };
        bufpool::give_write(out);
        // The response is complete (or failed): account for it before anything else.
        drop(body);
        bufpool::give_map(parts.headers);
        if written.is_err() {
            return Next::Close;
        }
        let (mut io, buf) = match held {
            Held::Own(io, buf) => (io, buf),
            Held::Streaming(s) => {
                // Read to its end, the body answers `None` from now on without touching the
                // connection, so the connection can leave it even while the upstream side still
                // holds the body (hyper's client drops it when it gets to it).
                let taken = {
                    let mut st = lock(&s);
                    let buf = std::mem::take(&mut st.buf);
                    (st.done, st.io.take(), buf)
                };
                match taken {
                    (true, Some(io), buf) => (io, buf),
                    (false, Some(mut io), _) => {
                        let _ = io.shutdown().await;
                        return Next::Close;
                    }
                    (_, None, _) => return Next::Close,
                }
            }
        };
        if switching {
            if let Some(tx) = upgrade_tx {
                let _ = tx.send(Upgraded {
                    io,
                    read_ahead: buf,
                });
            }
            return Next::Close;
        }
        if !keep {
            let _ = io.shutdown().await;
            return Next::Close;
        }
        Next::KeepAlive(io, buf)
    }
}

fn encode_head(
    out: &mut Vec<u8>,
    version: Version,
    parts: &http::response::Parts,
    framing: OutFraming,
    keep: bool,
    switching: bool,
) {
    out.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        let skip = !switching
            && (name == header::CONNECTION
                || name == header::TRANSFER_ENCODING
                || (name == header::CONTENT_LENGTH && framing != OutFraming::None));
        if skip {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        OutFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa(n, &mut [0u8; 20]));
            out.extend_from_slice(b"\r\n");
        }
        OutFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        OutFraming::None | OutFraming::Close => {}
    }
    if !switching {
        if !keep && version == Version::HTTP_11 {
            out.extend_from_slice(b"connection: close\r\n");
        } else if keep && version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, in `buf`.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// A data frame this large is written from its own buffer rather than copied into `out`.
const COPY_MAX: usize = 4096;

/// Writes `out` (the head) and the body. The first frame, when the body has it ready, goes in
/// the same `write` as the head.
///
/// `reads`: while waiting for the upstream's next bytes, the client connection is read too
/// (into the read buffer, up to the limit: a pipelined next request), so a client that
/// closes is noticed and the exchange ends instead of waiting for an upstream that may never
/// finish (a close-delimited body).
async fn write_body<W: AsyncRead + AsyncWrite + Unpin>(
    w: &mut W,
    out: &mut Vec<u8>,
    body: &mut RespBody,
    framing: OutFraming,
    mut reads: Option<(&mut BytesMut, usize)>,
) -> io::Result<()> {
    let chunked = framing == OutFraming::Chunked;
    let mut trailers = None;
    loop {
        if body.is_end_stream() {
            break;
        }
        // Ready now: append. Not ready with bytes waiting: write them first, then wait.
        let polled = poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(f) => Poll::Ready(Some(f)),
            Poll::Pending if !out.is_empty() => Poll::Ready(None),
            Poll::Pending => {
                while let Some((buf, limit)) = reads.as_mut() {
                    match poll_read_into(w, cx, buf) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                            return Poll::Ready(Some(Some(Err(
                                "the client closed the connection".into()
                            ))))
                        }
                        Poll::Ready(Ok(_)) if buf.len() >= *limit => reads = None,
                        Poll::Ready(Ok(_)) => {}
                        Poll::Pending => break,
                    }
                }
                Poll::Pending
            }
        })
        .await;
        let frame = match polled {
            None => {
                w.write_all(out).await?;
                out.clear();
                continue;
            }
            Some(None) => break,
            Some(Some(Ok(f))) => f,
            Some(Some(Err(e))) => {
                // The upstream body failed mid-way: what was sent stands, the rest cannot
                // be framed; the client sees the connection end early.
                let _ = w.write_all(out).await;
                return Err(io::Error::other(e));
            }
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        if data.is_empty() || framing == OutFraming::None {
            continue;
        }
        if chunked {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if data.len() > COPY_MAX {
            w.write_all(out).await?;
            out.clear();
            w.write_all(&data).await?;
        } else {
            out.extend_from_slice(&data);
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= WRITE_FLUSH {
            w.write_all(out).await?;
            out.clear();
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n");
        if let Some(t) = &trailers {
            for (name, value) in t {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    if !out.is_empty() {
        w.write_all(out).await?;
        out.clear();
    }
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal() {
        for n in [0u64, 7, 10, 12345, u64::MAX] {
            assert_eq!(itoa(n, &mut [0u8; 20]), n.to_string().as_bytes());
        }
    }
}

#[cfg(test)]
pub(crate) mod size_tests {
    use super::{serve, ClientIo, ConnCtx, Settings};
    use std::sync::Arc;

    /// The size of the future a four-argument function returns, without calling it.
    pub(crate) fn future_size<A, B, C, D, F: std::future::Future>(
        _: impl FnOnce(A, B, C, D) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    /// What an idle keep-alive connection's task holds is this future (plus tokio's task
    /// header and the socket's registration): printed for docs/performance.md, bounded so
    /// per-request state that creeps back into the idle wait is noticed (it once held the
    /// whole 6.6 KB request future).
    #[test]
    fn an_idle_connection_future_is_small() {
        type Keep = (crate::listen::Tracked, Option<crate::listen::ConnSlot>);
        let n = future_size(serve::<Keep>);
        eprintln!(
            "connection future: {n} bytes (ClientIo {}, ConnCtx {}, Settings behind an Arc, a Sleep {})",
            std::mem::size_of::<ClientIo>(),
            std::mem::size_of::<ConnCtx>(),
            std::mem::size_of::<tokio::time::Sleep>(),
        );
        let _ = std::mem::size_of::<Arc<Settings>>();
        assert!(n <= 512, "the idle connection future grew to {n} bytes");
    }

    /// A request in flight costs this future (plus its buffers): printed for
    /// docs/performance.md, bounded so that a new phase inlined into every request is noticed
    /// (1,000 busy connections are 1,000 of these).
    #[test]
    fn a_request_future_stays_bounded() {
        fn size5<A, B, C, D, E, F: std::future::Future>(
            _: impl FnOnce(A, B, C, D, E) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        fn size6<A, B, C, D, E, G, F: std::future::Future>(
            _: impl FnOnce(A, B, C, D, E, G) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        let n = future_size(super::serve_buffered);
        eprintln!(
            "request future: {n} bytes; inside it: exchange {}, proxy::handle {}, forward {}, \
             send {}; a Response<RespBody> {}, a Request<ReqBody> {}",
            size5(super::exchange),
            size5(crate::http::proxy::handle),
            size6(crate::http::forward::forward),
            size6(crate::http::proxy::send),
            std::mem::size_of::<http::Response<crate::http::body::RespBody>>(),
            std::mem::size_of::<http::Request<crate::http::body::ReqBody>>(),
        );
        assert!(n <= 6144, "the request future grew to {n} bytes");
    }
}
