//! legate's own HTTP/1.1 client for the common request: no upgrade, a body that is empty or
//! already in memory. The connection lives in the request's own task — no dispatch channel,
//! no connection task, no body channel between tasks — and goes back to the worker's pool
//! when the response body has been read to its end. Requests with streamed bodies and
//! upgrades use hyper's client.
//!
//! Response framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; chunked when
//! the last transfer coding is chunked; else Content-Length (differing duplicates are an
//! error); else the body runs to the end of the connection, which is then not reused.

use super::connect::Io;
use super::pool::FastReturn;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
const MAX_LINE: usize = 8 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// Keeps `legate_upstream_connections_active` and `max_connections` honest for as long as the
/// connection exists.
pub struct Guard {
    pub active: Gauge,
    pub _permit: super::breaker::Permit,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// One upstream HTTP/1.1 connection and what has been read from it but not used yet.
pub struct H1Conn {
    io: Io,
    buf: BytesMut,
    _guard: Guard,
}

/// Why a request on this connection failed, and whether the request is known not to have
/// been processed (so it may go out again on a new connection).
#[derive(Debug)]
pub struct Failure {
    pub error: Error,
    /// Nothing of a response arrived before the connection failed.
    pub no_response: bool,
    /// The failure happened while writing the request.
    pub while_writing: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connection closed before a complete response")]
    Closed,
    #[error("response is not valid HTTP/1.1: {0}")]
    Protocol(String),
}

impl H1Conn {
    pub fn new(io: Io, guard: Guard) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            _guard: guard,
        }
    }

    /// Whether an idle connection can take a request: the peer has not closed it and has sent
    /// nothing unasked. Looks without waiting.
    pub fn is_reusable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut rb = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // Uninitialised: ReadBuf tracks what the read filled, so no zeroing per read.
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut rb = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                self.buf.extend_from_slice(rb.filled());
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Sends `req` (whose body is empty or in memory) and reads the response head; the body
    /// is read as the returned response's body is polled.
    pub async fn request(
        mut self,
        req: &Request<crate::http::body::ReqBody>,
        give_back: FastReturn,
    ) -> Result<Response<H1Body>, Failure> {
        let head = encode(req);
        let written = async {
            self.io.write_all(&head).await?;
            self.io.flush().await
        }
        .await;
        if let Err(e) = written {
            return Err(Failure {
                error: Error::Io(e),
                no_response: true,
                while_writing: true,
            });
        }
        let head_request = req.method() == Method::HEAD;
        loop {
            match self.parse_head(head_request) {
                Ok(Some(Parsed::Informational)) => continue,
                Ok(Some(Parsed::Final(resp, framing, keep_alive))) => {
                    let mut body = H1Body {
                        conn: Some(self),
                        state: framing,
                        keep_alive,
                        give_back: Some(give_back),
                        failed: None,
                    };
                    // Nothing to read (HEAD, 204, 304, length 0): the connection is free now.
                    if matches!(body.state, State::Length(0)) {
                        body.done();
                    }
                    return Ok(resp.map(|()| body));
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(Failure {
                        error: e,
                        no_response: false,
                        while_writing: false,
                    })
                }
            }
            let before = self.buf.len();
            match self.fill().await {
                Ok(0) => {
                    return Err(Failure {
                        error: Error::Closed,
                        no_response: before == 0,
                        while_writing: false,
                    })
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(Failure {
                        error: Error::Io(e),
                        no_response: before == 0,
                        while_writing: false,
                    })
                }
            }
        }
    }

    /// A complete response head from the buffer, if there is one.
    fn parse_head(&mut self, head_request: bool) -> Result<Option<Parsed>, Error> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut slots);
        let len = match r.parse(&self.buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                if self.buf.len() > MAX_HEAD {
                    return Err(Error::Protocol(format!(
                        "response head larger than {MAX_HEAD} bytes"
                    )));
                }
                return Ok(None);
            }
            Err(e) => return Err(Error::Protocol(e.to_string())),
        };
        let code = r.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| Error::Protocol(format!("status {code}")))?;
        let version = if r.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            self.buf.advance(len);
            return Ok(Some(Parsed::Informational));
        }
        // One copy of the head; every header value is a slice of it, not an allocation of its
        // own.
        let head = Bytes::copy_from_slice(&self.buf[..len]);
        let base = self.buf.as_ptr() as usize;
        let mut headers = HeaderMap::with_capacity(r.headers.len());
        for h in r.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| Error::Protocol("invalid header name".into()))?;
            let at = h.value.as_ptr() as usize - base;
            let value = HeaderValue::from_maybe_shared(head.slice(at..at + h.value.len()))
                .map_err(|_| Error::Protocol(format!("invalid value for `{name}`")))?;
            headers.append(name, value);
        }
        self.buf.advance(len);
        let (framing, close_delimited) = framing(head_request, status, &headers)?;
        let keep_alive = !close_delimited && wants_keep_alive(version, &headers);
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        Ok(Some(Parsed::Final(resp, framing, keep_alive)))
    }
}

enum Parsed {
    Informational,
    Final(Response<()>, State, bool),
}

fn wants_keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &str| {
        headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if version == Version::HTTP_10 {
        has("keep-alive")
    } else {
        !has("close")
    }
}

/// How the body is delimited, and whether only the end of the connection ends it.
fn framing(head_request: bool, status: StatusCode, h: &HeaderMap) -> Result<(State, bool), Error> {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((State::Length(0), false));
    }
    if let Some(te) = h.get_all(header::TRANSFER_ENCODING).iter().next_back() {
        let last = te
            .to_str()
            .ok()
            .and_then(|s| s.rsplit(',').next())
            .map(|s| s.trim().to_ascii_lowercase());
        return Ok(if last.as_deref() == Some("chunked") {
            (State::Chunked(Chunk::Size), false)
        } else {
            (State::Close, true)
        });
    }
    let mut length = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        for part in v.to_str().unwrap_or("x").split(',') {
            let n: u64 = part
                .trim()
                .parse()
                .map_err(|_| Error::Protocol("invalid Content-Length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Protocol("conflicting Content-Length values".into()));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (State::Length(n), false),
        None => (State::Close, true),
    })
}

/// The request line, headers and (in-memory) body as one buffer: one write.
fn encode(req: &Request<crate::http::body::ReqBody>) -> Vec<u8> {
    let body: &[u8] = match req.body() {
        crate::http::body::ReqBody::Full { data: Some(d), .. } => d,
        _ => &[],
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // A body, or a method whose request normally carries one, gets its length.
    let payload_method = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    if !body.is_empty() || payload_method {
        use std::io::Write as _;
        // Writing into a Vec cannot fail.
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

enum State {
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// A response body read straight from the connection.
pub struct H1Body {
    conn: Option<H1Conn>,
    state: State,
    keep_alive: bool,
    give_back: Option<FastReturn>,
    /// An error held back for one poll, so what was already passed on (the head, the first
    /// bytes) is flushed to the client before the stream is cut.
    failed: Option<Error>,
}

impl H1Body {
    fn done(&mut self) {
        self.state = State::Done;
        if let (Some(conn), Some(back)) = (self.conn.take(), self.give_back.take()) {
            if self.keep_alive && conn.buf.is_empty() {
                back.give(conn);
            }
        }
    }

    pub fn is_end(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    /// Ends the body with `e`, one poll late: what was already passed on (the head, the first
    /// bytes) reaches the client before the stream is cut. The connection is not reused.
    fn fail(
        &mut self,
        e: Error,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.conn = None;
        self.failed = Some(e);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Takes up to `max` buffered bytes.
    fn take(conn: &mut H1Conn, max: u64) -> Bytes {
        let n = (conn.buf.len() as u64).min(max) as usize;
        conn.buf.split_to(n).freeze()
    }

    pub fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Length(0) => {
                    this.done();
                    return Poll::Ready(None);
                }
                State::Length(left) => {
                    if !conn.buf.is_empty() {
                        let data = Self::take(conn, *left);
                        *left -= data.len() as u64;
                        if *left == 0 {
                            this.done();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Close => {
                    if !conn.buf.is_empty() {
                        let data = Self::take(conn, u64::MAX);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Chunked(Chunk::Size) => {
                    if let Some(i) = find_crlf(&conn.buf) {
                        let line = conn.buf.split_to(i + 2);
                        let text = std::str::from_utf8(&line[..i]).unwrap_or("");
                        let hex = text.split(';').next().unwrap_or("").trim();
                        let size = u64::from_str_radix(hex, 16)
                            .map_err(|_| Error::Protocol(format!("bad chunk size `{hex}`")));
                        match size {
                            Err(e) => return this.fail(e, cx),
                            Ok(0) => this.state = State::Chunked(Chunk::Trailers),
                            Ok(n) => this.state = State::Chunked(Chunk::Data(n)),
                        }
                        continue;
                    }
                    if conn.buf.len() > MAX_LINE {
                        return this.fail(Error::Protocol("chunk size line too long".into()), cx);
                    }
                }
                State::Chunked(Chunk::Data(left)) => {
                    if !conn.buf.is_empty() {
                        let data = Self::take(conn, *left);
                        *left -= data.len() as u64;
                        if *left == 0 {
                            this.state = State::Chunked(Chunk::DataEnd);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Chunked(Chunk::DataEnd) => {
                    if conn.buf.len() >= 2 {
                        if &conn.buf[..2] != b"\r\n" {
                            return this
                                .fail(Error::Protocol("chunk not followed by CRLF".into()), cx);
                        }
                        conn.buf.advance(2);
                        this.state = State::Chunked(Chunk::Size);
                        continue;
                    }
                }
                State::Chunked(Chunk::Trailers) => {
                    if let Some(end) = find_trailers_end(&conn.buf) {
                        let block = conn.buf.split_to(end);
                        let trailers = parse_trailers(&block);
                        this.done();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    if conn.buf.len() > MAX_HEAD {
                        return this.fail(Error::Protocol("trailers too large".into()), cx);
                    }
                }
            }
            // Need more bytes.
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let failure = match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => Error::Io(e),
                Poll::Ready(Ok(0)) if matches!(this.state, State::Close) => {
                    // The end of the connection is the end of this body.
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => Error::Closed,
                Poll::Ready(Ok(_)) => continue,
            };
            return this.fail(failure, cx);
        }
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// The end of the trailer section: the empty line after zero or more trailer fields.
fn find_trailers_end(b: &[u8]) -> Option<usize> {
    if b.starts_with(b"\r\n") {
        return Some(2);
    }
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn parse_trailers(block: &[u8]) -> Option<HeaderMap> {
    let text = std::str::from_utf8(block).ok()?;
    let mut map = HeaderMap::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':')?;
        let name = HeaderName::from_bytes(k.trim().as_bytes()).ok()?;
        let value = HeaderValue::from_str(v.trim()).ok()?;
        map.append(name, value);
    }
    (!map.is_empty()).then_some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_rules() {
        let mut h = HeaderMap::new();
        assert!(matches!(
            framing(true, StatusCode::OK, &h),
            Ok((State::Length(0), false))
        ));
        assert!(matches!(
            framing(false, StatusCode::NO_CONTENT, &h),
            Ok((State::Length(0), false))
        ));
        assert!(matches!(
            framing(false, StatusCode::OK, &h),
            Ok((State::Close, true))
        ));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert!(matches!(
            framing(false, StatusCode::OK, &h),
            Ok((State::Length(12), false))
        ));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("13"));
        assert!(framing(false, StatusCode::OK, &h).is_err());
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        assert!(matches!(
            framing(false, StatusCode::OK, &h),
            Ok((State::Chunked(_), false))
        ));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        assert!(matches!(
            framing(false, StatusCode::OK, &h),
            Ok((State::Close, true))
        ));
    }

    #[test]
    fn keep_alive_rules() {
        let mut h = HeaderMap::new();
        assert!(wants_keep_alive(Version::HTTP_11, &h));
        assert!(!wants_keep_alive(Version::HTTP_10, &h));
        h.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        assert!(wants_keep_alive(Version::HTTP_10, &h));
        h.insert(header::CONNECTION, HeaderValue::from_static("foo, close"));
        assert!(!wants_keep_alive(Version::HTTP_11, &h));
    }

    #[test]
    fn trailers() {
        assert_eq!(find_trailers_end(b"\r\nrest"), Some(2));
        assert_eq!(find_trailers_end(b"grpc-status: 0\r\n\r\nx"), Some(18));
        let t = parse_trailers(b"grpc-status: 0\r\nx-a: b\r\n\r\n").unwrap();
        assert_eq!(t["grpc-status"], "0");
        assert!(parse_trailers(b"\r\n").is_none());
    }

    #[test]
    fn request_encoding() {
        let mut r = Request::new(crate::http::body::ReqBody::Full {
            data: Some(Bytes::from_static(b"hi")),
            trailers: None,
        });
        *r.method_mut() = Method::POST;
        *r.uri_mut() = "/p?q=1".parse().unwrap();
        r.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("up"));
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        assert_eq!(
            encode(&r),
            b"POST /p?q=1 HTTP/1.1\r\nhost: up\r\ncontent-length: 2\r\n\r\nhi".to_vec()
        );
        let mut g = Request::new(crate::http::body::ReqBody::Empty);
        *g.uri_mut() = "/".parse().unwrap();
        assert_eq!(encode(&g), b"GET / HTTP/1.1\r\n\r\n".to_vec());
    }
}
