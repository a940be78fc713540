//! HTTP/1.1 message framing (RFC 9112 §6), shared by both directions: how long a body is
//! (`request_framing`, `response_framing`), whether a connection stays open
//! (`wants_keep_alive`), and the body decoder (`Decoder`) that turns bytes read from a
//! connection into data and trailers. One module for the upstream client and the client-facing
//! server, so a framing rule is decided once.
//!
//! What each side does with a bad message differs (the server answers 400/501, the client
//! fails the request with 502 `upstream-protocol-error`); the rules are the same.

pub mod bufpool;
mod decode;
pub mod futurepool;
pub mod head_copy;
pub mod request;

pub use decode::{Decoded, Decoder};

use http::header::{self, HeaderMap};
use http::{StatusCode, Version};

/// Why a message's body length cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("invalid Content-Length `{0}`")]
    InvalidLength(String),
    #[error("conflicting Content-Length values")]
    ConflictingLength,
    #[error("both Transfer-Encoding and Content-Length (a request smuggling pattern)")]
    LengthAndEncoding,
    #[error("Transfer-Encoding `{0}` does not end in chunked")]
    NotChunked(String),
    #[error("Transfer-Encoding `{0}` has an empty list element")]
    EmptyCoding(String),
    #[error("Transfer-Encoding `{0}` has parameters (chunked takes none)")]
    CodingParameters(String),
    #[error("Transfer-Encoding `{0}` applies chunked more than once")]
    ChunkedTwice(String),
    #[error("unsupported transfer coding `{0}` (only chunked is)")]
    UnsupportedCoding(String),
    #[error("invalid chunk size line")]
    ChunkSize,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("chunk size line longer than {0} bytes")]
    ChunkLineTooLong(usize),
    #[error("trailer section larger than {0} bytes")]
    TrailersTooLarge(usize),
    #[error("invalid trailer field")]
    Trailer,
}

impl FramingError {
    /// The status a server answers a request framed this way with (RFC 9112 §6.1: an
    /// unknown transfer coding is 501; anything else that hides the length is 400).
    pub fn status(&self) -> StatusCode {
        match self {
            FramingError::UnsupportedCoding(_) => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Which of the fields that decide framing and keep-alive a head has, noted while its
/// headers are built: a head without them (most requests have none; most responses only
/// `Content-Length` and `Connection`) costs no lookup for them (each hashes the name).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    pub hosts: u8,
    pub content_length: bool,
    pub transfer_encoding: bool,
    pub connection: bool,
    pub expect: bool,
}

impl Seen {
    pub fn note(&mut self, name: &http::HeaderName) {
        if name == header::HOST {
            self.hosts = self.hosts.saturating_add(1);
        } else if name == header::CONTENT_LENGTH {
            self.content_length = true;
        } else if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if name == header::CONNECTION {
            self.connection = true;
        } else if name == header::EXPECT {
            self.expect = true;
        }
    }

    /// What a finished map has (the tests state heads as maps).
    #[cfg(test)]
    pub fn of(h: &HeaderMap) -> Self {
        let mut seen = Seen::default();
        for name in h.keys() {
            // `keys` gives each name once: count the Host values.
            if name == header::HOST {
                seen.hosts = h.get_all(header::HOST).iter().count().min(255) as u8;
            } else {
                seen.note(name);
            }
        }
        seen
    }
}

/// A field httparse read that `http` refuses.
#[derive(Debug)]
pub enum BadField {
    /// The name, as it came.
    Name(String),
    /// The value of this field.
    Value(http::HeaderName),
}

/// A parsed head's fields as a map, each value a slice of the head's one copy (`head`, made
/// from the bytes httparse parsed), so no value allocates.
/// `spare`: room for the fields the caller will add (growing a map reallocates and rehashes
/// it). What the framing and keep-alive checks need is noted on the way ([`Seen`]). Both
/// directions build their maps here.
pub fn fields(
    head: &head_copy::HeadCopy,
    parsed: &[httparse::Header<'_>],
    spare: usize,
) -> Result<(HeaderMap, Seen), BadField> {
    let mut headers = bufpool::take_map(parsed.len() + spare);
    let mut seen = Seen::default();
    for h in parsed {
        let name = http::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| BadField::Name(h.name.to_string()))?;
        seen.note(&name);
        let value = http::HeaderValue::from_maybe_shared(head.slice_of(h.value))
            .map_err(|_| BadField::Value(name.clone()))?;
        headers.append(name, value);
    }
    Ok((headers, seen))
}

/// The Content-Length of a message: every value (and every comma-separated part) the same
/// decimal number, digits only (no sign, no spaces inside).
fn content_length(h: &HeaderMap) -> Result<Option<u64>, FramingError> {
    let mut length = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let part = trim_ows(part);
            let invalid =
                || FramingError::InvalidLength(String::from_utf8_lossy(part).into_owned());
            // 19 digits always fit in a u64 (20 may not): longer is refused, not wrapped.
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(invalid());
            }
            let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if length.is_some_and(|l| l != n) {
                return Err(FramingError::ConflictingLength);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// `bytes` without leading and trailing spaces and tabs (RFC 9110 §5.6.3 OWS).
fn trim_ows(bytes: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !ows(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !ows(b)).map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// The transfer codings named, in order, lower-cased.
fn codings(h: &HeaderMap) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut any = false;
    for v in h.get_all(header::TRANSFER_ENCODING) {
        any = true;
        for c in v.to_str().unwrap_or("\u{0}").split(',') {
            // A coding's parameters (`;q=`) do not change what it is.
            let c = c.split(';').next().unwrap_or("").trim_matches([' ', '\t']);
            if !c.is_empty() {
                out.push(c.to_ascii_lowercase());
            }
        }
    }
    any.then_some(out)
}

/// How a request's body is delimited (RFC 9112 §6.3). Stricter than the RFC requires where it
/// allows a choice: Transfer-Encoding with Content-Length is refused rather than resolved, as
/// a front end and a back end that resolve it differently is how requests are smuggled.
/// `seen`: the framing fields the head has, noted as its map was built ([`fields`]).
pub fn request_framing(h: &HeaderMap, seen: &Seen) -> Result<Decoder, FramingError> {
    if !seen.content_length && !seen.transfer_encoding {
        return Ok(Decoder::length(0));
    }
    let length = if seen.content_length {
        content_length(h)?
    } else {
        None
    };
    let codings = if seen.transfer_encoding {
        codings(h)
    } else {
        None
    };
    match codings {
        Some(codings) => {
            if length.is_some() {
                return Err(FramingError::LengthAndEncoding);
            }
            // RFC 9110 §5.6.1 lets a recipient ignore empty list elements (`chunked,`), but
            // hyper and nginx refuse them in a request's Transfer-Encoding, and a value two
            // parsers may read differently is how requests are smuggled: refused (found by
            // fuzzing against hyper).
            if let Some(v) = h.get_all(header::TRANSFER_ENCODING).iter().find(|v| {
                v.as_bytes()
                    .split(|b| *b == b',')
                    .any(|e| e.iter().all(|b| *b == b' ' || *b == b'\t'))
            }) {
                return Err(FramingError::EmptyCoding(
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                ));
            }
            // Nor `chunked;` or `chunked;x=1`: chunked has no parameters, hyper and nginx refuse
            // them (found by fuzzing against hyper).
            if let Some(v) = h
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .find(|v| v.as_bytes().contains(&b';'))
            {
                return Err(FramingError::CodingParameters(
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                ));
            }
            let text = codings.join(", ");
            if codings.last().map(String::as_str) != Some("chunked") {
                return Err(FramingError::NotChunked(text));
            }
            // legate carries bodies as they are: a coding under chunked (gzip) it would have
            // to forward without chunked, which no longer frames the body for the next hop.
            if codings.len() > 1 {
                return Err(FramingError::UnsupportedCoding(text));
            }
            Ok(Decoder::chunked())
        }
        None => Ok(Decoder::length(length.unwrap_or(0))),
    }
}

/// How a response's body is delimited (RFC 9112 §6.3), and whether the connection must not be
/// reused after it: only the end of the connection ends the body, or the framing was one a
/// message splitter could exploit (Transfer-Encoding with Content-Length, or Transfer-Encoding
/// in HTTP/1.0, §6.1: "the connection MUST be closed").
/// `seen` as for [`request_framing`].
pub fn response_framing(
    head_request: bool,
    version: Version,
    status: StatusCode,
    h: &HeaderMap,
    seen: &Seen,
) -> Result<(Decoder, bool), FramingError> {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Decoder::length(0), false));
    }
    if let Some(codings) = seen.transfer_encoding.then(|| codings(h)).flatten() {
        // RFC 9112 §6.1: chunked is applied at most once; two parsers that stop at different
        // ones disagree on where the message ends.
        if codings.iter().filter(|c| *c == "chunked").count() > 1 {
            return Err(FramingError::ChunkedTwice(codings.join(", ")));
        }
        let suspicious = seen.content_length || version == Version::HTTP_10;
        return Ok(if codings.last().map(String::as_str) == Some("chunked") {
            (Decoder::chunked(), suspicious)
        } else {
            (Decoder::until_close(), true)
        });
    }
    let length = if seen.content_length {
        content_length(h)?
    } else {
        None
    };
    Ok(match length {
        Some(n) => (Decoder::length(n), false),
        None => (Decoder::until_close(), true),
    })
}

/// Whether the sender of a message with `version` and these headers keeps the connection open.
/// `seen` as for [`request_framing`]: without a `Connection` field the version decides.
pub fn wants_keep_alive(version: Version, headers: &HeaderMap, seen: &Seen) -> bool {
    if !seen.connection {
        return version != Version::HTTP_10;
    }
    let has = |token: &[u8]| {
        headers.get_all(header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| trim_ows(t).eq_ignore_ascii_case(token))
        })
    };
    if version == Version::HTTP_10 {
        has(b"keep-alive")
    } else {
        !has(b"close")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The tests state heads as finished maps: note their fields the way `fields` does.
    fn request_framing(h: &HeaderMap) -> Result<Decoder, FramingError> {
        super::request_framing(h, &Seen::of(h))
    }

    fn response_framing(
        head_request: bool,
        version: Version,
        status: StatusCode,
        h: &HeaderMap,
    ) -> Result<(Decoder, bool), FramingError> {
        super::response_framing(head_request, version, status, h, &Seen::of(h))
    }

    fn wants_keep_alive(version: Version, h: &HeaderMap) -> bool {
        super::wants_keep_alive(version, h, &Seen::of(h))
    }
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn response_framing_rules() {
        let mut h = HeaderMap::new();
        assert_eq!(
            response_framing(true, Version::HTTP_11, StatusCode::OK, &h)
                .unwrap()
                .0,
            Decoder::length(0)
        );
        assert_eq!(
            response_framing(false, Version::HTTP_11, StatusCode::NO_CONTENT, &h)
                .unwrap()
                .0,
            Decoder::length(0)
        );
        assert_eq!(
            response_framing(false, Version::HTTP_11, StatusCode::OK, &h).unwrap(),
            (Decoder::until_close(), true)
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(
            response_framing(false, Version::HTTP_11, StatusCode::OK, &h).unwrap(),
            (Decoder::length(12), false)
        );
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("13"));
        assert!(response_framing(false, Version::HTTP_11, StatusCode::OK, &h).is_err());
        h.remove(header::CONTENT_LENGTH);
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        assert_eq!(
            response_framing(false, Version::HTTP_11, StatusCode::OK, &h).unwrap(),
            (Decoder::chunked(), false)
        );
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(
            response_framing(false, Version::HTTP_11, StatusCode::OK, &h).unwrap(),
            (Decoder::until_close(), true)
        );
        // Chunked, but with a Content-Length beside it, or in HTTP/1.0: read, then not reused.
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(
            response_framing(false, Version::HTTP_11, StatusCode::OK, &h).unwrap(),
            (Decoder::chunked(), true)
        );
        h.remove(header::CONTENT_LENGTH);
        assert_eq!(
            response_framing(false, Version::HTTP_10, StatusCode::OK, &h).unwrap(),
            (Decoder::chunked(), true)
        );
        assert_eq!(
            response_framing(false, Version::HTTP_11, StatusCode::OK, &h).unwrap(),
            (Decoder::chunked(), false)
        );
    }

    #[test]
    fn request_framing_rules() {
        assert_eq!(request_framing(&headers(&[])).unwrap(), Decoder::length(0));
        assert_eq!(
            request_framing(&headers(&[("content-length", "5")])).unwrap(),
            Decoder::length(5)
        );
        assert_eq!(
            request_framing(&headers(&[
                ("content-length", "5"),
                ("content-length", "5")
            ]))
            .unwrap(),
            Decoder::length(5),
            "identical duplicates are one length (RFC 9110 §8.6)"
        );
        assert_eq!(
            request_framing(&headers(&[("transfer-encoding", "Chunked")])).unwrap(),
            Decoder::chunked()
        );
        for (pairs, want) in [
            (
                vec![("content-length", "5"), ("content-length", "6")],
                FramingError::ConflictingLength,
            ),
            (
                vec![("content-length", "+5")],
                FramingError::InvalidLength("+5".into()),
            ),
            (
                vec![("content-length", "-1")],
                FramingError::InvalidLength("-1".into()),
            ),
            (
                vec![("content-length", "5 5")],
                FramingError::InvalidLength("5 5".into()),
            ),
            (
                vec![("content-length", "0x10")],
                FramingError::InvalidLength("0x10".into()),
            ),
            (
                vec![("content-length", "99999999999999999999")],
                FramingError::InvalidLength("99999999999999999999".into()),
            ),
            (
                vec![("transfer-encoding", "chunked"), ("content-length", "5")],
                FramingError::LengthAndEncoding,
            ),
            (
                vec![("transfer-encoding", "gzip")],
                FramingError::NotChunked("gzip".into()),
            ),
            (
                vec![("transfer-encoding", "chunked, gzip")],
                FramingError::NotChunked("chunked, gzip".into()),
            ),
            (
                vec![("transfer-encoding", "gzip, chunked")],
                FramingError::UnsupportedCoding("gzip, chunked".into()),
            ),
            (
                vec![
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "identity"),
                ],
                FramingError::NotChunked("chunked, identity".into()),
            ),
        ] {
            let h = headers(&pairs);
            assert_eq!(request_framing(&h).unwrap_err(), want, "{pairs:?}");
        }
        assert_eq!(
            FramingError::UnsupportedCoding("x".into()).status(),
            StatusCode::NOT_IMPLEMENTED
        );
        assert_eq!(
            FramingError::LengthAndEncoding.status(),
            StatusCode::BAD_REQUEST
        );
        let twice = headers(&[("transfer-encoding", "chunked, chunked")]);
        assert_eq!(
            response_framing(false, Version::HTTP_11, StatusCode::OK, &twice).unwrap_err(),
            FramingError::ChunkedTwice("chunked, chunked".into())
        );
        assert!(request_framing(&twice).is_err());
    }

    #[test]
    fn a_request_coding_list_with_an_empty_element_or_parameters_is_refused() {
        for v in [
            "chunked,",
            ", chunked",
            "chunked, ,chunked",
            "gzip,,chunked",
        ] {
            let h = headers(&[("transfer-encoding", v)]);
            assert_eq!(
                request_framing(&h).unwrap_err(),
                FramingError::EmptyCoding(v.into()),
                "{v}"
            );
        }
        for v in ["chunked;", "chunked;a=b", "gzip;q=1, chunked"] {
            let h = headers(&[("transfer-encoding", v)]);
            assert_eq!(
                request_framing(&h).unwrap_err(),
                FramingError::CodingParameters(v.into()),
                "{v}"
            );
        }
        // A response's is read as the RFC allows (empty elements ignored).
        let h = headers(&[("transfer-encoding", "chunked, ")]);
        let (framing, _) = response_framing(false, Version::HTTP_11, StatusCode::OK, &h).unwrap();
        assert_eq!(framing, Decoder::chunked());
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
}
