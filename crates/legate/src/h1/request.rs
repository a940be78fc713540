//! Request heads as the client-facing server reads them: httparse for the syntax, then the
//! rules RFC 9112 adds (one Host for HTTP/1.1, a framing that can be trusted), with the
//! limits a listener sets. What it refuses is answered 400, 431, 501 or 505 and the connection
//! closed; nothing half-parsed goes upstream.

use super::{fields, request_framing, wants_keep_alive, BadField, Decoder, FramingError};
use http::header;
use http::{Method, Request, StatusCode, Uri, Version};
use std::mem::MaybeUninit;

/// A listener's head limits (`listeners[].limits`).
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

/// A complete request head.
#[derive(Debug)]
pub struct RequestHead {
    pub request: Request<()>,
    /// How the body that follows is delimited.
    pub body: Decoder,
    /// The client keeps the connection after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: answer `100 Continue` before reading the body.
    pub expect_continue: bool,
    /// Bytes of the buffer the head took.
    pub len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request head larger than {0} bytes")]
    TooLarge(usize),
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("HTTP version not supported")]
    Version,
    #[error("{0}")]
    Framing(#[from] FramingError),
}

impl HeadError {
    /// What the client is answered (then the connection closes).
    pub fn status(&self) -> StatusCode {
        match self {
            HeadError::TooLarge(_) | HeadError::TooManyHeaders(_) => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            HeadError::Malformed(_) => StatusCode::BAD_REQUEST,
            HeadError::Version => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            HeadError::Framing(f) => f.status(),
        }
    }
}

fn malformed(why: impl Into<String>) -> HeadError {
    HeadError::Malformed(why.into())
}

/// `bytes` with a request line naming `HTTP/1.x`, x > 1, rewritten to `HTTP/1.1`.
pub(crate) fn as_http_11(bytes: &[u8]) -> Option<Vec<u8>> {
    let line_end = bytes.iter().position(|b| *b == b'\r' || *b == b'\n')?;
    let line = &bytes[..line_end];
    let v = line.len().checked_sub(8)?;
    let version = &line[v..];
    let higher_minor = version.starts_with(b"HTTP/1.")
        && version[7].is_ascii_digit()
        && version[7] > b'1'
        && line[..v].ends_with(b" ")
        && line[..v].iter().filter(|b| **b == b' ').count() == 2;
    if !higher_minor {
        return None;
    }
    let mut out = bytes.to_vec();
    out[line_end - 1] = b'1';
    Some(out)
}

/// httparse's version error covers any request line it cannot read to its version: 505 only
/// for a well-formed line naming a version legate does not speak (`HTTP/2.0`), 400 for a
/// malformed line (a space inside the target, `HTTP/1`, `http/1.1`).
fn version_error(bytes: &[u8]) -> HeadError {
    let line_end = bytes
        .iter()
        .position(|b| *b == b'\r' || *b == b'\n')
        .unwrap_or(bytes.len());
    let parts: Vec<&[u8]> = bytes[..line_end].split(|b| *b == b' ').collect();
    let well_formed_version = |v: &[u8]| {
        v.len() == 8
            && v.starts_with(b"HTTP/")
            && v[5].is_ascii_digit()
            && v[6] == b'.'
            && v[7].is_ascii_digit()
    };
    if parts.len() == 3 && well_formed_version(parts[2]) {
        HeadError::Version
    } else {
        malformed("invalid request line")
    }
}

/// The bytes a Host may hold (RFC 3986 host and port characters; no userinfo): one load per
/// byte instead of a search of the list.
const HOST_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric();
        i += 1;
    }
    let extra = b"-._~%!$&'()*+,;=:[]";
    let mut j = 0;
    while j < extra.len() {
        t[extra[j] as usize] = true;
        j += 1;
    }
    t
};

/// Header slots kept on the stack while parsing (4 KiB).
const STACK_HEADERS: usize = 128;

/// A request head from the start of `buf`: `Ok(None)` while incomplete (read more, unless the
/// buffer already holds `max_header_bytes`).
pub fn parse(buf: &[u8], limits: &HeadLimits) -> Result<Option<RequestHead>, HeadError> {
    // RFC 9112 §2.2: empty lines (CRLF, or a bare LF) before the request line are ignored. A
    // bare CR is no line ending: it stays and is refused with the line it starts (found by
    // fuzzing against hyper, which refuses it too).
    let mut skip = 0;
    while let Some(rest) = buf.get(skip..) {
        if rest.starts_with(b"\r\n") {
            skip += 2;
        } else if rest.starts_with(b"\n") {
            skip += 1;
        } else {
            break;
        }
    }
    let bytes = &buf[skip..];
    // The header slots on the stack for the usual limits (the default is 100): a heap
    // allocation per parse only for a listener that allows more. Left uninitialised: httparse
    // writes the slots it fills, and filling 4 KiB of empty slots first was a measurable part
    // of every request (perf: a 32-byte store loop in the hottest function).
    let mut stack = [MaybeUninit::<httparse::Header<'_>>::uninit(); STACK_HEADERS];
    let mut heap;
    let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if limits.max_headers <= STACK_HEADERS {
        &mut stack[..limits.max_headers.max(1)]
    } else {
        heap = Vec::with_capacity(limits.max_headers);
        heap.resize_with(limits.max_headers, MaybeUninit::uninit);
        &mut heap
    };
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(bytes, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_header_bytes {
                return Err(HeadError::TooLarge(limits.max_header_bytes));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::TooManyHeaders(limits.max_headers))
        }
        Err(httparse::Error::Version) => {
            // RFC 9110 §2.5: a higher minor version of HTTP/1 is processed as HTTP/1.1 (the
            // head is parsed again with its version rewritten; rare, so the copy is too).
            if let Some(as_11) = as_http_11(bytes) {
                return parse(&as_11, limits).map(|h| {
                    h.map(|mut h| {
                        h.len += skip;
                        h
                    })
                });
            }
            return Err(version_error(bytes));
        }
        Err(e) => return Err(malformed(e.to_string())),
    };
    if skip + len > limits.max_header_bytes {
        return Err(HeadError::TooLarge(limits.max_header_bytes));
    }
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| malformed("invalid method"))?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(HeadError::Version),
    };
    let target = req.path.unwrap_or("");
    // RFC 3986: a URI is visible ASCII; anything else is refused, not guessed at (RFC 9112
    // §3.2: an "autocorrected" target is how security filters are bypassed).
    if !target.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(malformed(
            "request target holds characters a URI may not carry",
        ));
    }
    // One copy of the head; the target and every header value are slices of it (a target
    // parsed from a `&str` would be a copy of its own per request).
    let head = super::head_copy::HeadCopy::new(&bytes[..len]);
    let uri = Uri::from_maybe_shared(head.slice_of(target.as_bytes()))
        .map_err(|_| malformed(format!("invalid request target `{target}`")))?;
    // origin-form, absolute-form, authority-form only for CONNECT, `*` only for OPTIONS.
    let form_ok = match (&method, target.as_bytes().first()) {
        (_, Some(b'/')) => true,
        (&Method::OPTIONS, Some(b'*')) => target == "*",
        (&Method::CONNECT, _) => uri.authority().is_some() && uri.scheme().is_none(),
        _ => uri.scheme().is_some() && uri.authority().is_some(),
    };
    if !form_ok {
        return Err(malformed(format!(
            "request target `{target}` is not valid for {method}"
        )));
    }
    // Room for the two fields legate usually adds (x-request-id, and a Host where HTTP/1.0
    // had none). More room costs memory in every request in flight (each slot ~100 B, rounded
    // up to a power of two).
    let (headers, seen) = fields(&head, req.headers, 2).map_err(|e| match e {
        BadField::Name(n) => malformed(format!("invalid header name `{n}`")),
        BadField::Value(name) => malformed(format!("invalid value for `{name}`")),
    })?;
    // RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host.
    let hosts = seen.hosts;
    if hosts > 1 || (version == Version::HTTP_11 && hosts == 0) {
        return Err(malformed(if hosts > 1 {
            "more than one Host"
        } else {
            "HTTP/1.1 request without Host"
        }));
    }
    // RFC 9112 §3.2: a Host with an invalid value is a 400, like a missing or repeated one.
    // A byte-class check (RFC 3986 host and port characters; no userinfo), not a parse into an
    // `Authority`, which would copy the value for every request.
    if let Some(h) = (hosts == 1).then(|| headers.get(header::HOST)).flatten() {
        if !h.as_bytes().iter().all(|b| HOST_BYTES[usize::from(*b)]) {
            return Err(malformed("invalid Host"));
        }
    }
    // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means its framing is faulty.
    if version == Version::HTTP_10 && seen.transfer_encoding {
        return Err(malformed("Transfer-Encoding in an HTTP/1.0 request"));
    }
    let body = request_framing(&headers, &seen)?;
    let keep_alive = wants_keep_alive(version, &headers, &seen);
    let expect_continue = version == Version::HTTP_11
        && seen.expect
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(RequestHead {
        request,
        body,
        keep_alive,
        expect_continue,
        len: skip + len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_header_bytes: 8192,
        max_headers: 100,
    };

    fn ok(raw: &str) -> RequestHead {
        parse(raw.as_bytes(), &LIMITS)
            .unwrap_or_else(|e| panic!("{raw:?}: {e}"))
            .unwrap_or_else(|| panic!("{raw:?}: incomplete"))
    }

    fn err(raw: &str) -> StatusCode {
        match parse(raw.as_bytes(), &LIMITS) {
            Err(e) => e.status(),
            Ok(r) => panic!("{raw:?} accepted: {r:?}"),
        }
    }

    #[test]
    fn a_higher_http_1_minor_version_is_read_as_1_1() {
        let raw = b"\r\nGET /v HTTP/1.3\r\nHost: x\r\n\r\nrest";
        let h = parse(raw, &LIMITS).unwrap().unwrap();
        assert_eq!(h.request.version(), Version::HTTP_11);
        assert_eq!(h.request.uri(), "/v");
        assert_eq!(&raw[h.len..], b"rest");
        assert_eq!(
            parse(b"GET /v HTTP/2.0\r\nHost: x\r\n\r\n", &LIMITS).unwrap_err(),
            HeadError::Version
        );
        assert!(matches!(
            parse(b"GET /v HTTP/1.x\r\nHost: x\r\n\r\n", &LIMITS).unwrap_err(),
            HeadError::Malformed(_)
        ));
    }

    #[test]
    fn only_empty_lines_are_skipped_before_the_request_line() {
        let h = ok("\r\n\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(h.len, "\r\n\nGET / HTTP/1.1\r\nHost: x\r\n\r\n".len());
        // A bare CR ends no line (found by fuzzing; hyper refuses it too).
        assert_eq!(
            err("\r\rGET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            err("\rGET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn valid_heads() {
        let h = ok("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\nNEXT");
        assert_eq!(h.request.uri(), "/a?b=1");
        assert_eq!(
            h.len,
            "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n".len()
        );
        assert!(h.keep_alive && !h.expect_continue && h.body.is_end());
        let h = ok(
            "\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
        );
        assert!(h.expect_continue);
        assert_eq!(h.body, Decoder::length(3));
        let h = ok("GET / HTTP/1.0\r\n\r\n");
        assert!(!h.keep_alive, "HTTP/1.0 closes unless asked");
        ok("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
        ok("GET http://x/y HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n", &LIMITS)
            .unwrap()
            .is_none());
    }

    /// A listener allowing more headers than the stack slots parses on the heap.
    #[test]
    fn more_headers_than_the_stack_slots() {
        let many: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        let wide = HeadLimits {
            max_header_bytes: 8192,
            max_headers: 200,
        };
        let h = parse(raw.as_bytes(), &wide).unwrap().unwrap();
        assert_eq!(h.request.headers().len(), 151);
        let narrow = HeadLimits {
            max_header_bytes: 8192,
            max_headers: 140,
        };
        assert_eq!(
            parse(raw.as_bytes(), &narrow).unwrap_err().status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn refused_heads() {
        let bad = StatusCode::BAD_REQUEST;
        for (raw, want) in [
            ("GET / HTTP/1.1\r\n\r\n", bad),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", bad),
            ("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", bad),
            ("GET / HTTP/1.1\r\nHost : x\r\n\r\n", bad),
            ("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", bad),
            ("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n", bad),
            ("GET  / HTTP/1.1\r\nHost: x\r\n\r\n", bad),
            ("GET x HTTP/1.1\r\nHost: x\r\n\r\n", bad),
            ("GET * HTTP/1.1\r\nHost: x\r\n\r\n", bad),
            ("G@T / HTTP/1.1\r\nHost: x\r\n\r\n", bad),
            ("GET / HTTP/2.0\r\nHost: x\r\n\r\n", StatusCode::HTTP_VERSION_NOT_SUPPORTED),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", bad),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", bad),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n", bad),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", bad),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", StatusCode::NOT_IMPLEMENTED),
        ] {
            assert_eq!(err(raw), want, "{raw:?}");
        }
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "a".repeat(9000)
        );
        assert_eq!(err(&big), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let partial = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000));
        assert_eq!(err(&partial), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            err(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }
}
