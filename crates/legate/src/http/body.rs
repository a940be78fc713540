//! Request and response bodies as they cross legate. Both stream frame by frame (no buffering),
//! so a 1 GiB upload or download passes in constant memory.

use super::observe::Observe;
use crate::upstream::pool::PoolReturn;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

/// A request body as the client sent it: read by legate's own HTTP/1.1 server, or by hyper's
/// HTTP/2 server.
pub enum Inbound {
    Empty,
    /// The whole body, read with the head.
    Full(Bytes),
    Own(super::serve_h1::ClientBody),
    Hyper(Incoming),
}

impl Body for Inbound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Inbound::Empty => Poll::Ready(None),
            Inbound::Full(d) => {
                Poll::Ready((!d.is_empty()).then(|| Ok(Frame::data(std::mem::take(d)))))
            }
            Inbound::Own(b) => Pin::new(b).poll_frame(cx),
            Inbound::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inbound::Empty => true,
            Inbound::Full(d) => d.is_empty(),
            Inbound::Own(b) => b.is_end_stream(),
            Inbound::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inbound::Empty => SizeHint::with_exact(0),
            Inbound::Full(d) => SizeHint::with_exact(d.len() as u64),
            Inbound::Own(b) => b.size_hint(),
            Inbound::Hyper(b) => b.size_hint(),
        }
    }
}

/// What legate sends upstream.
pub enum ReqBody {
    Empty,
    /// The client's body, streamed through; `counted` feeds the access log's `bytes_in`.
    Stream {
        inner: Inbound,
        counted: Arc<AtomicU64>,
    },
    /// A body read whole for replay: the same bytes (and trailers) go out on every try.
    Full {
        data: Option<Bytes>,
        trailers: Option<http::HeaderMap>,
    },
    /// A body too large to replay: what was read while trying, then the rest as it streams.
    Prefixed {
        prefix: Option<Bytes>,
        inner: Inbound,
        counted: Arc<AtomicU64>,
    },
}

/// The result of trying to read a body whole.
pub enum Buffered {
    /// All of it: replayable.
    Whole {
        data: Bytes,
        trailers: Option<http::HeaderMap>,
    },
    /// More than the limit: stream it once.
    TooLarge(ReqBody),
}

impl ReqBody {
    pub fn replay(data: &Bytes, trailers: &Option<http::HeaderMap>) -> Self {
        ReqBody::Full {
            data: (!data.is_empty()).then(|| data.clone()),
            trailers: trailers.clone(),
        }
    }
}

/// Reads `body` whole if it fits in `max` bytes. A declared length over `max` is not read at all.
pub async fn buffer(body: ReqBody, max: usize) -> Result<Buffered, BoxError> {
    use http_body_util::BodyExt;
    let (mut inner, counted) = match body {
        ReqBody::Empty => {
            return Ok(Buffered::Whole {
                data: Bytes::new(),
                trailers: None,
            })
        }
        ReqBody::Full { data, trailers } => {
            return Ok(Buffered::Whole {
                data: data.unwrap_or_default(),
                trailers,
            })
        }
        ReqBody::Stream { inner, counted } => (inner, counted),
        other => return Ok(Buffered::TooLarge(other)),
    };
    if inner.size_hint().lower() > max as u64 {
        return Ok(Buffered::TooLarge(ReqBody::Stream { inner, counted }));
    }
    let mut buf = bytes::BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = inner.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(d) => {
                counted.fetch_add(d.len() as u64, Ordering::Relaxed);
                buf.extend_from_slice(&d);
                if buf.len() > max {
                    let prefix = Some(buf.freeze());
                    return Ok(Buffered::TooLarge(ReqBody::Prefixed {
                        prefix,
                        inner,
                        counted,
                    }));
                }
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok(Buffered::Whole {
        data: buf.freeze(),
        trailers,
    })
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Stream { inner, counted }
            | ReqBody::Prefixed {
                prefix: None,
                inner,
                counted,
            } => {
                let frame = ready!(Pin::new(inner).poll_frame(cx));
                if let Some(Ok(f)) = &frame {
                    if let Some(d) = f.data_ref() {
                        counted.fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                }
                Poll::Ready(frame)
            }
            ReqBody::Prefixed { prefix, .. } => {
                Poll::Ready(prefix.take().map(|p| Ok(Frame::data(p))))
            }
            ReqBody::Full { data, trailers } => Poll::Ready(match data.take() {
                Some(d) => Some(Ok(Frame::data(d))),
                None => trailers.take().map(|t| Ok(Frame::trailers(t))),
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Stream { inner, .. } => inner.is_end_stream(),
            ReqBody::Full { data, trailers } => data.is_none() && trailers.is_none(),
            ReqBody::Prefixed { prefix, inner, .. } => prefix.is_none() && inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Stream { inner, .. } => inner.size_hint(),
            ReqBody::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ReqBody::Prefixed { prefix, inner, .. } => {
                let p = prefix.as_ref().map_or(0, |d| d.len() as u64);
                let h = inner.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + p);
                if let Some(u) = h.upper() {
                    out.set_upper(u + p);
                }
                out
            }
        }
    }
}

/// An upstream response body: hyper's, or legate's own HTTP/1.1 client's.
pub enum UpBody {
    Hyper(Incoming),
    Fast(crate::upstream::h1::H1Body),
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl UpBody {
    fn is_end(&self) -> bool {
        match self {
            UpBody::Hyper(b) => b.is_end_stream(),
            UpBody::Fast(b) => b.is_end(),
        }
    }

    fn hint(&self) -> SizeHint {
        match self {
            UpBody::Hyper(b) => b.size_hint(),
            UpBody::Fast(b) => b.size_hint(),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            UpBody::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
            UpBody::Fast(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
        }
    }
}

// The upstream variant is the common one; boxing it would cost an allocation per response.
#[allow(clippy::large_enum_variant)]
enum Kind {
    Upstream {
        inner: UpBody,
        pool: Option<PoolReturn>,
        stall: Stall,
    },
    Local(Option<Bytes>),
}

/// The route's `response_body_timeout`: the longest the upstream may leave a started body
/// without a new byte (nginx's `proxy_read_timeout`, Envoy's stream idle timeout). Without it an
/// upstream that sends the head and stalls holds the app's request forever.
///
/// The timer is armed the first time the body is not ready and re-armed only when it fires
/// after progress, not on every frame: a large body pays one timer per period, not one reset
/// per read. A client that reads slowly cannot trip it: the upstream's bytes wait in the socket
/// meanwhile, and the first poll after the client catches up finds them.
struct Stall {
    timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    progressed: bool,
}

/// The upstream sent nothing for `response_body_timeout` in the middle of a body.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent no body bytes for {0:?} (response_body_timeout)")]
pub struct BodyStalled(Duration);

impl Stall {
    fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            timer: None,
            progressed: false,
        }
    }

    /// Called when the body is not ready: `Ready` once the upstream has been silent too long.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<BodyStalled> {
        loop {
            let timeout = self.timeout;
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
            ready!(timer.as_mut().poll(cx));
            if !std::mem::take(&mut self.progressed) {
                return Poll::Ready(BodyStalled(self.timeout));
            }
            timer
                .as_mut()
                .reset(tokio::time::Instant::now() + self.timeout);
        }
    }
}

/// What legate sends back to the client. When it ends (or is dropped early because the client
/// left) the request is accounted for exactly once, and an HTTP/1.1 upstream connection whose
/// response was read to the end goes back to the pool.
pub struct RespBody {
    kind: Kind,
    observe: Option<Observe>,
    bytes: u64,
    complete: bool,
}

impl RespBody {
    pub fn upstream(
        inner: UpBody,
        pool: Option<PoolReturn>,
        observe: Observe,
        body_timeout: Duration,
    ) -> Self {
        let mut b = Self {
            kind: Kind::Upstream {
                inner,
                pool,
                stall: Stall::new(body_timeout),
            },
            observe: Some(observe),
            bytes: 0,
            complete: false,
        };
        if b.kind_is_end() {
            b.finish();
        }
        b
    }

    pub fn local(data: Bytes, observe: Option<Observe>) -> Self {
        Self {
            kind: Kind::Local(Some(data)),
            observe,
            bytes: 0,
            complete: false,
        }
    }

    fn kind_is_end(&self) -> bool {
        match &self.kind {
            Kind::Upstream { inner, .. } => inner.is_end(),
            Kind::Local(d) => d.is_none(),
        }
    }

    fn finish(&mut self) {
        if self.complete {
            return;
        }
        self.complete = true;
        if let Kind::Upstream { pool, .. } = &mut self.kind {
            if let Some(p) = pool.take() {
                p.give_back();
            }
        }
        if let Some(o) = self.observe.take() {
            o.finish(self.bytes, false);
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = match &mut this.kind {
            Kind::Local(data) => data.take().map(|d| Ok(Frame::data(d))),
            Kind::Upstream { inner, stall, .. } => match inner.poll(cx) {
                Poll::Ready(frame) => {
                    stall.progressed = true;
                    frame
                }
                Poll::Pending => {
                    let stalled = ready!(stall.poll_expired(cx));
                    if let Some(o) = this.observe.as_mut() {
                        o.body_error_reason = "response-body-timeout";
                    }
                    Some(Err(stalled.into()))
                }
            },
        };
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if this.kind_is_end() {
                    this.finish();
                }
            }
            Some(Err(e)) => {
                if let Some(o) = this.observe.as_mut() {
                    o.body_error = Some(e.to_string());
                }
            }
            None => this.finish(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.complete || self.kind_is_end()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { inner, .. } => inner.hint(),
            Kind::Local(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Kind::Local(None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        if self.complete {
            return;
        }
        // A body already at its end counts as complete even if nobody polled it (HEAD, 204).
        if self.kind_is_end() {
            self.finish();
        } else if let Some(o) = self.observe.take() {
            o.finish(self.bytes, true);
        }
    }
}
