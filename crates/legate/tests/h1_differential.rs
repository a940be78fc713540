//! Differential test of legate's request head parser (`legate::h1::request`, the client-facing
//! codec's) against hyper's HTTP/1.1 server: a generated corpus of valid and invalid heads is
//! fed to both, and their accept/reject decisions compared. Every disagreement must be listed
//! below as deliberately stricter on legate's side, with the reason; anything else fails.

use legate::h1::request::{parse, HeadLimits};

const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 8192,
    max_headers: 100,
};

/// Where legate refuses what hyper takes, on purpose (see docs/security.md;
/// each is a request-smuggling or ambiguity pattern).
const STRICTER: &[(&str, &str)] = &[
    (
        "te+cl",
        "Transfer-Encoding with Content-Length: refused, not resolved (smuggling)",
    ),
    (
        "te-gzip-chunked",
        "a coding under chunked cannot be carried as is: 501",
    ),
    ("no-host-11", "RFC 9112 §3.2: HTTP/1.1 requires Host"),
    ("two-hosts", "RFC 9112 §3.2: exactly one Host"),
    (
        "target-not-origin",
        "a target that is no request-target form",
    ),
    ("star-not-options", "`*` is only for OPTIONS"),
];

/// (name, head). Names with a `STRICTER` entry may disagree.
fn corpus() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut add = |name: &str, head: String| out.push((name.to_string(), head));
    // Request lines.
    for (name, line) in [
        ("get", "GET / HTTP/1.1"),
        ("get-query", "GET /a/b?c=d&e HTTP/1.1"),
        ("post", "POST /submit HTTP/1.1"),
        ("options-star", "OPTIONS * HTTP/1.1"),
        ("absolute", "GET http://example.test/x HTTP/1.1"),
        ("http10", "GET / HTTP/1.0"),
        ("lower-method", "get / HTTP/1.1"),
        ("custom-method", "PURGE /x HTTP/1.1"),
        ("double-space", "GET  / HTTP/1.1"),
        ("tab-sep", "GET\t/ HTTP/1.1"),
        ("no-version", "GET /"),
        ("http2", "GET / HTTP/2.0"),
        ("http09", "GET / HTTP/0.9"),
        ("bad-method", "G@T / HTTP/1.1"),
        ("target-not-origin", "GET x HTTP/1.1"),
        ("star-not-options", "GET * HTTP/1.1"),
        ("space-in-target", "GET /a b HTTP/1.1"),
        ("lf-only", "GET / HTTP/1.1\n"),
    ] {
        let sep = if line.ends_with('\n') { "" } else { "\r\n" };
        add(name, format!("{line}{sep}Host: h\r\n\r\n"));
    }
    // Header sections, on `POST / HTTP/1.1`.
    for (name, headers) in [
        ("cl", "Content-Length: 0\r\n"),
        ("cl-dup-same", "Content-Length: 0\r\nContent-Length: 0\r\n"),
        ("cl-dup-diff", "Content-Length: 0\r\nContent-Length: 1\r\n"),
        ("cl-list-diff", "Content-Length: 0, 1\r\n"),
        ("cl-plus", "Content-Length: +0\r\n"),
        ("cl-minus", "Content-Length: -0\r\n"),
        ("cl-hex", "Content-Length: 0x0\r\n"),
        ("cl-space-inside", "Content-Length: 0 0\r\n"),
        ("cl-huge", "Content-Length: 99999999999999999999\r\n"),
        ("te", "Transfer-Encoding: chunked\r\n"),
        ("te-caps", "Transfer-Encoding: CHUNKED\r\n"),
        (
            "te+cl",
            "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
        ),
        ("te-gzip-chunked", "Transfer-Encoding: gzip, chunked\r\n"),
        (
            "te-chunked-identity",
            "Transfer-Encoding: chunked, identity\r\n",
        ),
        ("te-gzip", "Transfer-Encoding: gzip\r\n"),
        ("obs-fold", "X-A: a\r\n b\r\n"),
        ("space-before-colon", "X-A : a\r\n"),
        ("no-colon", "X-A a\r\n"),
        ("empty-name", ": a\r\n"),
        ("bare-cr", "X-A: a\rb\r\n"),
        ("nul", "X-A: a\0b\r\n"),
        ("ctl", "X-A: a\x01b\r\n"),
        ("del", "X-A: a\x7fb\r\n"),
        ("high-bytes", "X-A: caf\u{e9}\r\n"),
        ("tab-value", "X-A: a\tb\r\n"),
        ("two-hosts", "Host: other\r\n"),
        ("expect", "Expect: 100-continue\r\nContent-Length: 0\r\n"),
        ("connection-close", "Connection: close\r\n"),
        (
            "long-value",
            "X-A: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        ),
    ] {
        add(name, format!("POST / HTTP/1.1\r\nHost: h\r\n{headers}\r\n"));
    }
    add("no-host-11", "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n".into());
    add("no-host-10", "GET / HTTP/1.0\r\nAccept: */*\r\n\r\n".into());
    add(
        "leading-crlf",
        "\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n".into(),
    );
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    add(
        "too-many-headers",
        format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n"),
    );
    add(
        "too-large",
        format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX-A: {}\r\n\r\n",
            "a".repeat(9000)
        ),
    );
    out
}

/// hyper's decision (did its server hand the request to the service?) is the one the fuzz
/// target `h1_request` checks against: `legate::fuzzing::hyper_accepts`.
#[test]
fn legate_and_hyper_agree_or_legate_is_deliberately_stricter() {
    let corpus = corpus();
    assert!(corpus.len() >= 50, "{} cases", corpus.len());
    let mut unexplained = Vec::new();
    let mut stricter_seen = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    for (name, head) in &corpus {
        let ours = matches!(parse(head.as_bytes(), &LIMITS), Ok(Some(_)));
        let theirs = legate::fuzzing::hyper_accepts(head.as_bytes());
        if ours {
            accepted += 1;
        } else {
            refused += 1;
        }
        if ours == theirs {
            continue;
        }
        match STRICTER.iter().find(|(n, _)| n == name) {
            Some(_) if !ours => stricter_seen.push(name.clone()),
            _ => unexplained.push(format!(
                "{name}: legate {}, hyper {} — {head:?}",
                if ours { "accepts" } else { "refuses" },
                if theirs { "accepts" } else { "refuses" }
            )),
        }
    }
    assert!(
        unexplained.is_empty(),
        "disagreements with no reason on file:\n{}",
        unexplained.join("\n")
    );
    // Both kinds are in the corpus: a parser that accepted or refused everything would fail.
    assert!(
        accepted >= 10 && refused >= 20,
        "{accepted} accepted, {refused} refused"
    );
    // A reason on file whose case no longer disagrees is stale: keep the list honest.
    for (name, _) in STRICTER {
        assert!(
            stricter_seen.iter().any(|s| s == name),
            "`{name}` is listed as stricter but legate and hyper now agree on it"
        );
    }
}
