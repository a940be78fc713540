//! PostgreSQL wire framing legate needs around the startup: codes of the untyped first
//! messages, reading one typed server message, and writing an ErrorResponse to the app.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Untyped first messages: length (4 bytes), then this code (4 bytes).
pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// Protocol 3.x: major 3 in the high 16 bits.
pub const PROTOCOL_MAJOR_3: u32 = 3;
/// PostgreSQL's own limit on a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP: usize = 10_000;
/// Messages during authentication are small; a larger one is not a PostgreSQL server.
const MAX_AUTH_MESSAGE: usize = 64 * 1024;

/// One typed message from the server: its type byte and the whole message as received.
pub struct Backend {
    pub tag: u8,
    pub raw: Vec<u8>,
}

impl Backend {
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }
}

pub async fn read_backend<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Backend> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if !(4..=MAX_AUTH_MESSAGE).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("server message of {len} bytes during startup: not a PostgreSQL server?"),
        ));
    }
    let mut raw = Vec::with_capacity(1 + len);
    raw.extend_from_slice(&head);
    raw.resize(1 + len, 0);
    r.read_exact(&mut raw[5..]).await?;
    Ok(Backend { tag: head[0], raw })
}

/// An ErrorResponse (`E`) with severity FATAL, the SQLSTATE `code` and `message`.
pub fn error_response(code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(32 + message.len());
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        body.extend(value.bytes().filter(|b| *b != 0));
        body.push(0);
    }
    body.push(0);
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(b'E');
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The human-readable message (`M` field) of an ErrorResponse or NoticeResponse body.
pub fn error_message(body: &[u8]) -> String {
    let mut fields = body.split(|b| *b == 0);
    let mut severity = String::new();
    let mut code = String::new();
    let mut message = String::new();
    for f in fields.by_ref() {
        let Some((&t, v)) = f.split_first() else {
            break;
        };
        let v = String::from_utf8_lossy(v).into_owned();
        match t {
            b'V' => severity = v,
            b'S' if severity.is_empty() => severity = v,
            b'C' => code = v,
            b'M' => message = v,
            _ => {}
        }
    }
    format!("{severity} {code}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_round_trip() {
        let e = error_response("08001", "legate: server does not support SSL");
        assert_eq!(e[0], b'E');
        let len = u32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize;
        assert_eq!(len + 1, e.len());
        assert_eq!(
            error_message(&e[5..]),
            "FATAL 08001: legate: server does not support SSL"
        );
    }
}
