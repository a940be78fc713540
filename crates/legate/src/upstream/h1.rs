//! legate's own HTTP/1.1 client for the common request: no upgrade, a body that is empty or
//! already in memory. The connection lives in the request's own task — no dispatch channel,
//! no connection task, no body channel between tasks — and goes back to the worker's pool
//! when the response body has been read to its end. Requests with streamed bodies and
//! upgrades use hyper's client.
//!
//! Response framing (`crate::h1`, shared with the server side) follows RFC 9112 §6.3: no body
//! for HEAD, 1xx, 204 and 304; chunked when the last transfer coding is chunked; else
//! Content-Length (differing duplicates are an error); else the body runs to the end of the
//! connection, which is then not reused.

use super::connect::Io;
use super::pool::FastReturn;
use crate::h1::{Decoded, Decoder};
use bytes::{Buf, Bytes, BytesMut};
use http::header;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
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
        extra: &(dyn Fn(&mut Vec<u8>) + Sync),
        give_back: FastReturn,
    ) -> Result<Response<H1Body>, Failure> {
        let mut head = crate::h1::bufpool::take_write();
        encode(req, extra, &mut head);
        let written = async {
            self.io.write_all(&head).await?;
            self.io.flush().await
        }
        .await;
        crate::h1::bufpool::give_write(head);
        if let Err(e) = written {
            return Err(Failure {
                error: Error::Io(e),
                no_response: true,
                while_writing: true,
            });
        }
        let head_request = req.method() == Method::HEAD;
        loop {
            // Nothing read yet (the usual case at this point): no parse of an empty buffer.
            let parsed = if self.buf.is_empty() {
                Ok(None)
            } else {
                parse_response_head(&mut self.buf, head_request)
            };
            match parsed {
                Ok(Some(Parsed::Informational)) => continue,
                Ok(Some(Parsed::Final(resp, framing, keep_alive))) => {
                    let mut body = H1Body {
                        conn: Some(self),
                        decoder: framing,
                        keep_alive,
                        give_back: Some(give_back),
                        failed: None,
                    };
                    // Nothing to read (HEAD, 204, 304, length 0): the connection is free now.
                    if body.decoder.is_end() {
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
}

/// A complete response head from the start of `buf` (taken out of it), if there is one.
pub(crate) fn parse_response_head(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<Parsed>, Error> {
    // Uninitialised slots: httparse writes those it fills (see `h1::request::parse`).
    let mut slots = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut r = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut r,
        &buf[..],
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
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
        buf.advance(len);
        return Ok(Some(Parsed::Informational));
    }
    // One copy of the head; every header value is a slice of it, not an allocation of its
    // own.
    let head = crate::h1::head_copy::HeadCopy::new(&buf[..len]);
    let (headers, seen) = crate::h1::fields(&head, r.headers, 0).map_err(|e| match e {
        crate::h1::BadField::Name(_) => Error::Protocol("invalid header name".into()),
        crate::h1::BadField::Value(name) => Error::Protocol(format!("invalid value for `{name}`")),
    })?;
    buf.advance(len);
    let (framing, close_delimited) =
        crate::h1::response_framing(head_request, version, status, &headers, &seen)
            .map_err(|e| Error::Protocol(e.to_string()))?;
    let keep_alive = !close_delimited && crate::h1::wants_keep_alive(version, &headers, &seen);
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    *resp.headers_mut() = headers;
    Ok(Some(Parsed::Final(resp, framing, keep_alive)))
}

pub(crate) enum Parsed {
    Informational,
    Final(Response<()>, Decoder, bool),
}

/// The request line, headers and an in-memory body, appended to `out` (a pooled write buffer)
/// to go out in one write; `extra` appends whole `name: value\r\n` lines to the header block
/// (the trace headers).
pub(crate) fn encode(
    req: &Request<crate::http::body::ReqBody>,
    extra: &(dyn Fn(&mut Vec<u8>) + Sync),
    out: &mut Vec<u8>,
) {
    let body: &[u8] = match req.body() {
        crate::http::body::ReqBody::Full { data: Some(d), .. } => d,
        _ => &[],
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.reserve(256 + body.len());
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
    extra(out);
    // A body, or a method whose request normally carries one, gets its length.
    let payload_method = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    if !body.is_empty() || payload_method {
        use std::io::Write as _;
        // Writing into a Vec cannot fail.
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// A response body read straight from the connection.
pub struct H1Body {
    conn: Option<H1Conn>,
    decoder: Decoder,
    keep_alive: bool,
    give_back: Option<FastReturn>,
    /// An error held back for one poll, so what was already passed on (the head, the first
    /// bytes) is flushed to the client before the stream is cut.
    failed: Option<Error>,
}

impl H1Body {
    fn done(&mut self) {
        self.decoder.finish();
        if let (Some(conn), Some(back)) = (self.conn.take(), self.give_back.take()) {
            if self.keep_alive && conn.buf.is_empty() {
                back.give(conn);
            }
        }
    }

    pub fn is_end(&self) -> bool {
        self.decoder.is_end()
    }

    pub fn size_hint(&self) -> SizeHint {
        self.decoder.size_hint()
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
            match this.decoder.decode(&mut conn.buf) {
                Ok(Decoded::Data(data)) => {
                    if this.decoder.is_end() {
                        this.done();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(t)) => {
                    this.done();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Ok(Decoded::End) => {
                    this.done();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => return this.fail(Error::Protocol(e.to_string()), cx),
            }
            let failure = match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => Error::Io(e),
                Poll::Ready(Ok(0)) if this.decoder.ends_at_close() => {
                    // The end of the connection is the end of this body.
                    this.decoder.finish();
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
        let encoded = |r: &Request<crate::http::body::ReqBody>| {
            let mut out = Vec::new();
            encode(r, &|_| {}, &mut out);
            out
        };
        assert_eq!(
            encoded(&r),
            b"POST /p?q=1 HTTP/1.1\r\nhost: up\r\ncontent-length: 2\r\n\r\nhi".to_vec()
        );
        let mut g = Request::new(crate::http::body::ReqBody::Empty);
        *g.uri_mut() = "/".parse().unwrap();
        assert_eq!(encoded(&g), b"GET / HTTP/1.1\r\n\r\n".to_vec());
    }
}
