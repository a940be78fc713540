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

/// The Content-Length of a message: every value (and every comma-separated part) the same
/// decimal number, digits only (no sign, no spaces inside).
fn content_length(h: &HeaderMap) -> Result<Option<u64>, FramingError> {
    let mut length = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        let text = v
            .to_str()
            .map_err(|_| FramingError::InvalidLength("(not text)".into()))?;
        for part in text.split(',') {
            let part = part.trim_matches([' ', '\t']);
            if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(FramingError::InvalidLength(part.to_string()));
            }
            let n: u64 = part
                .parse()
                .map_err(|_| FramingError::InvalidLength(part.to_string()))?;
            if length.is_some_and(|l| l != n) {
                return Err(FramingError::ConflictingLength);
            }
            length = Some(n);
        }
    }
    Ok(length)
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
pub fn request_framing(h: &HeaderMap) -> Result<Decoder, FramingError> {
    let length = content_length(h)?;
    match codings(h) {
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
pub fn response_framing(
    head_request: bool,
    version: Version,
    status: StatusCode,
    h: &HeaderMap,
) -> Result<(Decoder, bool), FramingError> {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Decoder::length(0), false));
    }
    if let Some(codings) = codings(h) {
        // RFC 9112 §6.1: chunked is applied at most once; two parsers that stop at different
        // ones disagree on where the message ends.
        if codings.iter().filter(|c| *c == "chunked").count() > 1 {
            return Err(FramingError::ChunkedTwice(codings.join(", ")));
        }
        let suspicious = h.contains_key(header::CONTENT_LENGTH) || version == Version::HTTP_10;
        return Ok(if codings.last().map(String::as_str) == Some("chunked") {
            (Decoder::chunked(), suspicious)
        } else {
            (Decoder::until_close(), true)
        });
    }
    Ok(match content_length(h)? {
        Some(n) => (Decoder::length(n), false),
        None => (Decoder::until_close(), true),
    })
}

/// Whether the sender of a message with `version` and these headers keeps the connection open.
pub fn wants_keep_alive(version: Version, headers: &HeaderMap) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
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
