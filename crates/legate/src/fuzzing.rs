//! What the fuzz targets in `fuzz/` run, one function per target, shared with
//! `tests/fuzz_corpus.rs`, which replays the checked-in corpora and crash regressions on the
//! stable toolchain in `scripts/test`. Each function takes any bytes. A panic is a finding:
//! either legate's code panicked on input, or one of the properties checked here (which must
//! hold for every input) did not.
//!
//! Not part of legate's interface; public only so that the fuzz crate can call it.

use crate::h1::request::{parse, HeadLimits};
use crate::h1::{Decoded, Decoder};
use bytes::BytesMut;
use http::{HeaderMap, Request};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// The default listener limits (`listeners[].limits`).
const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 8192,
    max_headers: 100,
};

/// How a body decoder read a byte stream: the body, the trailers, and where the message
/// ended (`None`: it wants more).
#[derive(Debug, PartialEq, Eq)]
struct BodyRead {
    data: Vec<u8>,
    trailers: Option<HeaderMap>,
    ended_at: Option<usize>,
}

/// `input` fed to `decoder` in pieces of `step` bytes, as reads from a socket would arrive.
fn read_body(mut decoder: Decoder, input: &[u8], step: usize) -> Result<BodyRead, ()> {
    let mut out = BodyRead {
        data: Vec::new(),
        trailers: None,
        ended_at: None,
    };
    let mut buf = BytesMut::new();
    let mut fed = 0;
    loop {
        match decoder.decode(&mut buf).map_err(|_| ())? {
            Decoded::Data(d) => {
                assert!(!d.is_empty(), "the decoder returned an empty data frame");
                out.data.extend_from_slice(&d);
            }
            Decoded::Trailers(t) => {
                assert!(out.trailers.is_none(), "two trailer sections");
                out.trailers = Some(t);
            }
            Decoded::End => {
                out.ended_at = Some(fed - buf.len());
                return Ok(out);
            }
            Decoded::NeedMore => {
                if fed == input.len() {
                    return Ok(out);
                }
                let next = (fed + step).min(input.len());
                buf.extend_from_slice(&input[fed..next]);
                fed = next;
            }
        }
    }
}

/// A body read whole and read in small pieces must give the same data, the same trailers and
/// the same end: two readers that disagree on where a message ends is how a connection is
/// desynchronised.
fn check_body(decoder: Decoder, input: &[u8], step: usize) {
    let whole = read_body(decoder.clone(), input, input.len().max(1));
    let pieces = read_body(decoder, input, step);
    assert_eq!(
        whole, pieces,
        "a body read whole and in {step}-byte pieces differ"
    );
}

/// 1..=16 bytes per read, chosen by the input so the fuzzer explores the split points.
fn step_from(byte: u8) -> usize {
    usize::from(byte % 16) + 1
}

/// The client-facing request parser (`h1::request`) and the request body decoder.
///
/// Properties: a request legate accepts is forwarded as a head that httparse reads back to the
/// same method, target and header fields (nothing the app sent can smuggle a line into the
/// upstream's head), hyper's server accepts it too (legate is never more lenient than hyper;
/// where it is stricter is listed in `tests/h1_differential.rs`), and its body ends at the same
/// byte however the reads are split.
pub fn h1_request(data: &[u8]) {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let head = match parse(data, &LIMITS) {
        Ok(Some(head)) => head,
        Ok(None) => return,
        Err(e) => {
            let status = e.status();
            assert!(
                status.is_client_error() || status.is_server_error(),
                "a refused head answered {status}"
            );
            return;
        }
    };
    assert!(head.len <= data.len(), "the head is longer than the input");
    check_body(head.body.clone(), &data[head.len..], step_from(first));
    assert!(
        hyper_accepts(&data[..head.len]),
        "legate accepts a head hyper refuses: {:?}",
        String::from_utf8_lossy(&data[..head.len])
    );
    let (parts, ()) = head.request.into_parts();
    let req = Request::from_parts(parts, crate::http::body::ReqBody::Empty);
    let mut wire = Vec::new();
    crate::upstream::h1::encode(&req, &|_| {}, &mut wire);
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut back = httparse::Request::new(&mut slots);
    match back.parse(&wire) {
        Ok(httparse::Status::Complete(n)) => {
            assert_eq!(
                n,
                wire.len(),
                "the forwarded head is followed by more bytes"
            )
        }
        other => panic!(
            "legate forwards a head httparse cannot read ({other:?}): {:?}",
            String::from_utf8_lossy(&wire)
        ),
    }
    assert_eq!(back.method, Some(req.method().as_str()));
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    assert_eq!(back.path, Some(target));
    let sent: Vec<(&str, &[u8])> = req
        .headers()
        .iter()
        .filter(|(n, _)| {
            **n != http::header::CONTENT_LENGTH && **n != http::header::TRANSFER_ENCODING
        })
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let read: Vec<(String, &[u8])> = back
        .headers
        .iter()
        .filter(|h| !h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| (h.name.to_ascii_lowercase(), h.value))
        .collect();
    let read: Vec<(&str, &[u8])> = read.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    assert_eq!(
        sent, read,
        "the forwarded header fields differ from the parsed ones"
    );
}

/// Whether hyper's HTTP/1.1 server hands `head` to its service, with the default listener
/// limits (also the reference of `tests/h1_differential.rs`). Not from inside a Tokio runtime:
/// it runs its own.
pub fn hyper_accepts(head: &[u8]) -> bool {
    thread_local! {
        static RT: Option<tokio::runtime::Runtime> =
            tokio::runtime::Builder::new_current_thread().build().ok();
    }
    // A version above 1.1 is processed as 1.1 by legate (RFC 9110 §2.5); hyper is asked about
    // the head as legate reads it.
    let head = as_http_11(head);
    RT.with(|rt| {
        let Some(rt) = rt else {
            return true;
        };
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (client, server) = tokio::io::duplex(64 * 1024);
            let called = Arc::new(AtomicBool::new(false));
            let seen = called.clone();
            let svc = hyper::service::service_fn(move |_req| {
                seen.store(true, Ordering::SeqCst);
                async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Empty::<bytes::Bytes>::new(),
                    ))
                }
            });
            let serve = tokio::spawn(async move {
                let mut b = hyper::server::conn::http1::Builder::new();
                b.max_headers(LIMITS.max_headers)
                    .max_buf_size(LIMITS.max_header_bytes);
                let _ = b
                    .serve_connection(hyper_util::rt::TokioIo::new(server), svc)
                    .await;
            });
            let (mut rd, mut wr) = tokio::io::split(client);
            let _ = wr.write_all(&head).await;
            let _ = wr.shutdown().await;
            let mut answer = Vec::new();
            let _ = rd.read_to_end(&mut answer).await;
            serve.abort();
            called.load(Ordering::SeqCst)
        })
    })
}

/// `head` as legate reads it: an `HTTP/1.x` (x > 1) request line rewritten to `HTTP/1.1`
/// (after the empty lines legate skips).
fn as_http_11(head: &[u8]) -> Vec<u8> {
    let mut skip = 0;
    while head[skip..].starts_with(b"\r\n") || head[skip..].starts_with(b"\n") {
        skip += if head[skip] == b'\r' { 2 } else { 1 };
    }
    match crate::h1::request::as_http_11(&head[skip..]) {
        Some(line) => [&head[..skip], &line[..]].concat(),
        None => head.to_vec(),
    }
}

/// The upstream client's response parser (`upstream::h1`) and the response body decoder.
///
/// Properties: any 1xx before the final head is skipped, the body ends at the same byte
/// however the reads are split, and a head legate accepts has a valid status.
pub fn h1_response(data: &[u8]) {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let head_request = first & 0x80 != 0;
    let mut buf = BytesMut::from(data);
    loop {
        match crate::upstream::h1::parse_response_head(&mut buf, head_request) {
            Ok(Some(crate::upstream::h1::Parsed::Informational)) => continue,
            Ok(Some(crate::upstream::h1::Parsed::Final(resp, framing, _))) => {
                assert!(
                    resp.status().as_u16() >= 101,
                    "final status {}",
                    resp.status()
                );
                check_body(framing, &buf, step_from(first));
                return;
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// The config loader, as `legate check` runs it.
///
/// Properties: every problem names the file and a line; a config that loads is rendered (as
/// `/config` shows it) into YAML that loads again to the same config.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name == "FUZZ_SET").then(|| "value".to_string());
    match crate::config::load_str("fuzz.yaml", text, env) {
        Ok(cfg) => {
            let rendered = crate::config::to_yaml(&cfg);
            // A rendered value holding `${` would be expanded again on the way back in.
            if rendered.contains('$') {
                return;
            }
            match crate::config::load_str("rendered.yaml", &rendered, |_| None) {
                Ok(again) => assert_eq!(
                    rendered,
                    crate::config::to_yaml(&again),
                    "a rendered config loads to a different config"
                ),
                Err(e) => panic!("a rendered config does not load: {e}\n{rendered}"),
            }
        }
        Err(e) => {
            for line in e.lines() {
                assert!(
                    line.starts_with("fuzz.yaml:"),
                    "a config error that does not name the file: {line}"
                );
            }
        }
    }
}

/// The TLS material loaders: PEM certificates, PEM keys, PKCS#12 bundles (the first byte picks
/// the password, empty or `secret`), and the identity check on what loads.
pub fn tls(data: &[u8]) {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let file = Path::new("fuzz.pem");
    let named = |e: crate::tls::TlsError| {
        assert!(
            e.to_string().contains("fuzz.pem"),
            "a TLS loading error that does not name the file: {e}"
        );
    };
    match first % 4 {
        0 => match crate::tls::load::parse_certs(data, file) {
            Ok(chain) => {
                for cert in &chain {
                    let _ = crate::tls::cert_info::CertInfo::parse(cert);
                }
            }
            Err(e) => named(e),
        },
        1 => match crate::tls::load::parse_key(data, file) {
            Ok(key) => {
                let _ = rustls::crypto::ring::sign::any_supported_type(&key);
            }
            Err(e) => named(e),
        },
        2 | 3 => {
            let password = if first % 4 == 2 { "" } else { "secret" };
            match crate::tls::load::parse_pkcs12(data, password, file) {
                Ok((chain, key)) => {
                    if let Err(e) = crate::tls::load::identity(chain, &key, file, file) {
                        named(e);
                    }
                }
                Err(e) => named(e),
            }
        }
        _ => unreachable!("a value modulo 4"),
    }
}

/// The database tunnel's startup: the app's first messages (the first byte's low bit clear),
/// or a server's answers to legate's login (set).
///
/// Properties: with input that is always ready, each finishes without waiting (no hang), and
/// never answers the app with anything but `N` to an encryption request.
pub fn postgres(data: &[u8]) {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let mut io = Scripted {
        input: data,
        output: Vec::new(),
    };
    if first & 1 == 0 {
        let result = run_ready(crate::tcp::postgres::startup::read_first(&mut io));
        assert!(
            io.output.iter().all(|b| *b == b'N'),
            "legate answered the app's startup with {:?}",
            io.output
        );
        if let Ok(crate::tcp::postgres::startup::First::Startup(s)) = result {
            let encoded = s.encode(None);
            let again = crate::tcp::postgres::startup::parse_startup(&encoded[4..]);
            assert_eq!(
                again.ok(),
                Some(s),
                "a startup message re-encodes differently"
            );
        }
    } else {
        let creds = crate::tcp::postgres::login::Credentials {
            user: "app".into(),
            password: b"secret".to_vec(),
        };
        let mut app = Vec::new();
        let _ = run_ready(crate::tcp::postgres::login::login(
            &mut io, &mut app, &creds, None,
        ));
    }
}

/// The trace-header parsers: W3C `traceparent`, B3 (single and multi-header) and Jaeger's
/// `uber-trace-id`, each given the input as its header's value.
///
/// Property: a `traceparent` legate reads, written back as legate writes it, reads the same.
pub fn trace_headers(data: &[u8]) {
    use crate::http::trace::{extract, parse_b3_single, parse_traceparent, parse_uber};
    if let Some(c) = parse_traceparent(data) {
        assert!(
            c.trace_id != [0; 16] && c.span_id != [0; 8],
            "an all-zero id was read"
        );
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let flags = if c.sampled == Some(true) { "01" } else { "00" };
        let written = format!("00-{}-{}-{flags}", hex(&c.trace_id), hex(&c.span_id));
        let again = parse_traceparent(written.as_bytes()).map(|a| (a.trace_id, a.span_id));
        assert_eq!(again, Some((c.trace_id, c.span_id)));
    }
    let _ = parse_b3_single(data);
    let _ = parse_uber(data);
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for name in [
        "traceparent",
        "b3",
        "uber-trace-id",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-sampled",
        "x-b3-flags",
    ] {
        headers.insert(http::HeaderName::from_static(name), value.clone());
    }
    for format in [
        crate::config::telemetry::Propagation::W3c,
        crate::config::telemetry::Propagation::B3,
        crate::config::telemetry::Propagation::B3Single,
        crate::config::telemetry::Propagation::Jaeger,
    ] {
        let _ = extract(format, &headers);
    }
}

/// Input that is always ready (then at its end), output kept: what a peer sent, all at once.
struct Scripted<'a> {
    input: &'a [u8],
    output: Vec<u8>,
}

impl tokio::io::AsyncRead for Scripted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = buf.remaining().min(self.input.len());
        let (now, rest) = self.input.split_at(n);
        buf.put_slice(now);
        self.input = rest;
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Scripted<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.output.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Polls `fut` once: with I/O that is always ready it must finish, or it would wait forever on
/// a real peer that has sent everything.
fn run_ready<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("waits with all input already there (a hang)"),
    }
}
