//! The body decoder: bytes read from a connection in, data and trailers out. It owns no
//! buffer and does no I/O: the caller reads into its own buffer (pooled, or the connection's)
//! and asks again when the decoder says it needs more, so the same decoder serves a response
//! read by the upstream client and a request body read by the server.

use super::FramingError;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::SizeHint;

/// Longest chunk-size line (size, extensions, CRLF).
const MAX_CHUNK_LINE: usize = 8 * 1024;
/// Largest trailer section.
const MAX_TRAILERS: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    UntilClose,
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    Done,
}

/// Where a body is in its framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoder {
    state: State,
    /// How far the buffer was already searched for the end of a chunk-size line or of the
    /// trailers: a peer sending a byte at a time must not make each read rescan it all.
    scanned: usize,
}

/// What the buffer held.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// Read more and call again (at the end of the connection: see `ends_at_close`).
    NeedMore,
    /// The body is complete; what follows in the buffer is the next message's.
    End,
}

impl Decoder {
    pub fn length(n: u64) -> Self {
        Self {
            state: State::Length(n),
            scanned: 0,
        }
    }

    pub fn chunked() -> Self {
        Self {
            state: State::ChunkSize,
            scanned: 0,
        }
    }

    pub fn until_close() -> Self {
        Self {
            state: State::UntilClose,
            scanned: 0,
        }
    }

    /// Nothing (more) to read.
    pub fn is_end(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    /// The end of the connection is the end of this body (not an error).
    pub fn ends_at_close(&self) -> bool {
        self.state == State::UntilClose
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    /// Marks the body complete (the connection ended a close-delimited body).
    pub fn finish(&mut self) {
        self.state = State::Done;
    }

    /// The next piece of the body from `buf`, consuming what it uses.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, FramingError> {
        loop {
            match &mut self.state {
                State::Done | State::Length(0) => {
                    self.state = State::Done;
                    return Ok(Decoded::End);
                }
                State::Length(left) | State::ChunkData(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = (buf.len() as u64).min(*left) as usize;
                    *left -= n as u64;
                    if *left == 0 && matches!(self.state, State::ChunkData(_)) {
                        self.state = State::ChunkDataEnd;
                    }
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                State::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                State::ChunkSize => {
                    // Resume one byte back: the CR of a CRLF may have been the last byte seen.
                    let from = self.scanned.saturating_sub(1);
                    let Some(i) = find_crlf(&buf[from..]).map(|i| i + from) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(FramingError::ChunkLineTooLong(MAX_CHUNK_LINE));
                        }
                        self.scanned = buf.len();
                        return Ok(Decoded::NeedMore);
                    };
                    self.scanned = 0;
                    if i > MAX_CHUNK_LINE {
                        return Err(FramingError::ChunkLineTooLong(MAX_CHUNK_LINE));
                    }
                    let size = chunk_size(&buf[..i])?;
                    buf.advance(i + 2);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkDataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(FramingError::ChunkEnd);
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    // Resume three bytes back: the end is a four-byte CRLFCRLF.
                    let from = self.scanned.saturating_sub(3);
                    let found = if from == 0 {
                        find_trailers_end(buf)
                    } else {
                        buf[from..]
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .map(|i| i + from + 4)
                    };
                    let Some(end) = found else {
                        if buf.len() > MAX_TRAILERS {
                            return Err(FramingError::TrailersTooLarge(MAX_TRAILERS));
                        }
                        self.scanned = buf.len();
                        return Ok(Decoded::NeedMore);
                    };
                    self.scanned = 0;
                    let block = buf.split_to(end);
                    self.state = State::Done;
                    return Ok(match parse_trailers(&block)? {
                        Some(t) => Decoded::Trailers(t),
                        None => Decoded::End,
                    });
                }
            }
        }
    }
}

/// `chunk-size [ BWS ; chunk-ext ]` (RFC 9112 §7.1): 1 to 16 hex digits, nothing before them
/// (no sign, no space: a parser that skips them and one that does not disagree on lengths).
fn chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(FramingError::ChunkSize);
    }
    let rest = &line[digits..];
    let rest_ok = rest.is_empty() || {
        let ext = rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t'))
            .map(|i| &rest[i..]);
        ext.is_some_and(|e| e[0] == b';' && e.iter().all(|b| *b != b'\r' && *b != b'\n' && *b != 0))
    };
    if !rest_ok {
        return Err(FramingError::ChunkSize);
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| FramingError::ChunkSize)?;
    u64::from_str_radix(hex, 16).map_err(|_| FramingError::ChunkSize)
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

/// Trailer fields; `None` for an empty section. A malformed field is an error rather than
/// dropped: half-read trailers are not forwarded.
fn parse_trailers(block: &[u8]) -> Result<Option<HeaderMap>, FramingError> {
    let text = std::str::from_utf8(block).map_err(|_| FramingError::Trailer)?;
    let mut map = HeaderMap::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':').ok_or(FramingError::Trailer)?;
        if k.is_empty() || k.ends_with([' ', '\t']) {
            return Err(FramingError::Trailer);
        }
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| FramingError::Trailer)?;
        let value = HeaderValue::from_str(v.trim_matches([' ', '\t']))
            .map_err(|_| FramingError::Trailer)?;
        map.append(name, value);
    }
    Ok((!map.is_empty()).then_some(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data, the trailers, and what was left in the buffer after the body.
    type Run = (Vec<u8>, Option<HeaderMap>, Vec<u8>);

    /// Feeds `input` in pieces of `step` bytes until the body ends.
    fn run(mut d: Decoder, input: &[u8], step: usize) -> Result<Run, FramingError> {
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let (mut data, mut trailers) = (Vec::new(), None);
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => data.extend_from_slice(&b),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((data, trailers, buf.to_vec())),
                Decoded::NeedMore => {
                    if fed >= input.len() {
                        return Err(FramingError::ChunkEnd);
                    }
                    let n = step.min(input.len() - fed);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn lengths_and_leftovers() {
        for step in [1, 3, 100] {
            let (data, _, rest) = run(Decoder::length(5), b"helloGET /next", step).unwrap();
            assert_eq!(data, b"hello");
            assert!(
                b"GET /next".starts_with(&rest),
                "the next message stays: {rest:?}"
            );
        }
        let (data, _, _) = run(Decoder::length(0), b"x", 1).unwrap();
        assert!(data.is_empty());
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let body = b"5;ext=1\r\nhello\r\n6 ; q\r\n world\r\n0\r\nx-sum: 9\r\n\r\nNEXT";
        for step in [1, 2, 7, 1000] {
            let (data, trailers, rest) = run(Decoder::chunked(), body, step).unwrap();
            assert_eq!(data, b"hello world");
            assert_eq!(trailers.unwrap()["x-sum"], "9");
            assert!(b"NEXT".starts_with(&rest));
        }
        let (data, trailers, _) = run(Decoder::chunked(), b"0\r\n\r\n", 1).unwrap();
        assert!(data.is_empty() && trailers.is_none());
    }

    #[test]
    fn chunked_refuses_what_parsers_disagree_on() {
        for bad in [
            &b"+5\r\nhello\r\n0\r\n\r\n"[..],
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5x\r\nhello\r\n0\r\n\r\n",
            b"fffffffffffffffff\r\n",
            b"\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            b"0\r\nx-a : b\r\n\r\n",
        ] {
            assert!(
                run(Decoder::chunked(), bad, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"1;".to_vec(), vec![b'a'; 9000]].concat();
        assert_eq!(
            run(Decoder::chunked(), &long, 4096).unwrap_err(),
            FramingError::ChunkLineTooLong(MAX_CHUNK_LINE)
        );
    }

    #[test]
    fn until_close_takes_everything() {
        let mut d = Decoder::until_close();
        let mut buf = BytesMut::from(&b"abc"[..]);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"abc"))
        );
        assert_eq!(d.decode(&mut buf).unwrap(), Decoded::NeedMore);
        assert!(d.ends_at_close());
        d.finish();
        assert_eq!(d.decode(&mut buf).unwrap(), Decoded::End);
    }
}
