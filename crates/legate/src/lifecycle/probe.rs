//! The client side of the lifecycle, for `legate wait` and `legate shutdown`: images without
//! shell tools (distroless, scratch) get a probe and a preStop hook from the same binary.
//! Plain blocking std sockets and HTTP/1.0: nothing to set up, nothing left running.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What `legate wait` waits for.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// A legate admin address: `GET /ready` answers 200.
    Admin(SocketAddr),
    /// Any TCP address: a connection is accepted.
    Tcp(SocketAddr),
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{what} was not ready within {timeout:?} (last: {last})")]
    Timeout {
        what: String,
        timeout: Duration,
        last: String,
    },
    #[error("{0}")]
    Request(String),
}

/// One HTTP/1.0 request; the status code and the body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\nUser-Agent: legate\r\n\r\n"
    )
    .map_err(|e| format!("{addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("{addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn check(target: Target) -> Result<(), String> {
    match target {
        Target::Admin(a) => match http(a, "GET", "/ready", Duration::from_secs(2))? {
            (200, _) => Ok(()),
            (code, body) => Err(format!("/ready answered {code} {body}")),
        },
        Target::Tcp(a) => TcpStream::connect_timeout(&a, Duration::from_secs(2))
            .map(|_| ())
            .map_err(|e| format!("{a}: {e}")),
    }
}

/// Polls `target` with backoff (10 ms doubling to 500 ms) until it is ready or `timeout`.
pub fn wait(target: Target, timeout: Duration) -> Result<Duration, ProbeError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        let last = match check(target) {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) => e,
        };
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            let what = match target {
                Target::Admin(a) => format!("legate at {a}"),
                Target::Tcp(a) => format!("{a}"),
            };
            return Err(ProbeError::Timeout {
                what,
                timeout,
                last,
            });
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// Asks the legate at `admin` to drain and exit (`POST /quitquitquit`).
pub fn quit(admin: SocketAddr) -> Result<String, ProbeError> {
    match http(admin, "POST", "/quitquitquit", Duration::from_secs(5))
        .map_err(ProbeError::Request)?
    {
        (200, body) => Ok(body),
        (code, body) => Err(ProbeError::Request(format!(
            "{admin} answered {code}: {body}"
        ))),
    }
}
