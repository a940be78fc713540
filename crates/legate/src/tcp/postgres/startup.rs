//! The app's first messages. libpq with `sslmode=prefer` (its default) asks for TLS first; the
//! local hop stays plaintext, so legate answers `N` and reads on. A CancelRequest (sent on a
//! connection of its own) is carried to the server as it is.

use super::message::{CANCEL_REQUEST, GSSENC_REQUEST, MAX_STARTUP, PROTOCOL_MAJOR_3, SSL_REQUEST};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("startup packet length {0} is outside 8..{MAX_STARTUP}: not a PostgreSQL client?")]
    Length(usize),
    #[error(
        "protocol version {major}.{minor} is not supported (legate speaks PostgreSQL protocol 3)"
    )]
    Version { major: u32, minor: u32 },
    #[error("malformed startup packet: {0}")]
    Malformed(&'static str),
    #[error("the client asked for encryption more than twice")]
    TooManyRequests,
}

/// The app's StartupMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    pub version: u32,
    pub params: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Startup {
    pub fn param(&self, key: &str) -> Option<&[u8]> {
        self.params
            .iter()
            .find(|(k, _)| k == key.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    /// The message to send to the server, with `user` replaced when legate logs in itself.
    pub fn encode(&self, user: Option<&str>) -> Vec<u8> {
        let mut body = Vec::with_capacity(128);
        body.extend_from_slice(&self.version.to_be_bytes());
        let mut user_written = false;
        for (k, v) in &self.params {
            body.extend_from_slice(k);
            body.push(0);
            match user {
                Some(u) if k == b"user" => {
                    body.extend_from_slice(u.as_bytes());
                    user_written = true;
                }
                _ => body.extend_from_slice(v),
            }
            body.push(0);
        }
        if let (Some(u), false) = (user, user_written) {
            body.extend_from_slice(b"user\0");
            body.extend_from_slice(u.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }
}

#[derive(Debug)]
pub enum First {
    Startup(Startup),
    /// The whole CancelRequest packet (16 bytes).
    Cancel(Vec<u8>),
}

/// Parses a StartupMessage body after the length: version, then `key\0value\0`… `\0`.
pub fn parse_startup(body: &[u8]) -> Result<Startup, StartupError> {
    let (version, mut rest) = body
        .split_first_chunk::<4>()
        .ok_or(StartupError::Malformed("shorter than its version"))?;
    let version = u32::from_be_bytes(*version);
    let (major, minor) = (version >> 16, version & 0xffff);
    if major != PROTOCOL_MAJOR_3 {
        return Err(StartupError::Version { major, minor });
    }
    let mut params = Vec::new();
    loop {
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or(StartupError::Malformed(
                "a parameter name is not terminated",
            ))?;
        if end == 0 {
            if rest.len() != 1 {
                return Err(StartupError::Malformed("bytes after the final terminator"));
            }
            break;
        }
        let key = rest[..end].to_vec();
        rest = &rest[end + 1..];
        let vend = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or(StartupError::Malformed(
                "a parameter value is not terminated",
            ))?;
        params.push((key, rest[..vend].to_vec()));
        rest = &rest[vend + 1..];
    }
    Ok(Startup { version, params })
}

async fn read_packet<C: AsyncRead + Unpin>(c: &mut C) -> Result<(u32, Vec<u8>), StartupError> {
    let mut len = [0u8; 4];
    c.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if !(8..=MAX_STARTUP).contains(&len) {
        return Err(StartupError::Length(len));
    }
    let mut packet = vec![0u8; len];
    packet[..4].copy_from_slice(&(len as u32).to_be_bytes());
    c.read_exact(&mut packet[4..]).await?;
    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    Ok((code, packet))
}

/// Reads the app's first message, answering `N` to requests for TLS or GSS encryption.
pub async fn read_first<C>(client: &mut C) -> Result<First, StartupError>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    for _ in 0..3 {
        let (code, packet) = read_packet(client).await?;
        match code {
            SSL_REQUEST | GSSENC_REQUEST => {
                client.write_all(b"N").await?;
            }
            CANCEL_REQUEST if packet.len() == 16 => return Ok(First::Cancel(packet)),
            CANCEL_REQUEST => return Err(StartupError::Malformed("CancelRequest of wrong length")),
            _ => return parse_startup(&packet[4..]).map(First::Startup),
        }
    }
    Err(StartupError::TooManyRequests)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(params: &[(&str, &str)]) -> Vec<u8> {
        let s = Startup {
            version: 196608,
            params: params
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
        };
        s.encode(None)[4..].to_vec()
    }

    #[test]
    fn parses_and_rewrites_the_user() {
        let b = body(&[("user", "app"), ("database", "orders")]);
        let s = parse_startup(&b).unwrap();
        assert_eq!(s.param("user"), Some(&b"app"[..]));
        let re = s.encode(Some("svc"));
        let s2 = parse_startup(&re[4..]).unwrap();
        assert_eq!(s2.param("user"), Some(&b"svc"[..]));
        assert_eq!(s2.param("database"), Some(&b"orders"[..]));
        // A startup without a user gets one.
        let s3 = parse_startup(&body(&[("database", "d")])).unwrap();
        let s4 = parse_startup(&s3.encode(Some("svc"))[4..]).unwrap();
        assert_eq!(s4.param("user"), Some(&b"svc"[..]));
    }

    #[test]
    fn rejects_malformed() {
        assert!(matches!(
            parse_startup(&[0, 2, 0, 0, 0]),
            Err(StartupError::Version { major: 2, .. })
        ));
        assert!(parse_startup(&[0, 3, 0, 0]).is_err());
        assert!(parse_startup(&[0, 3, 0, 0, b'u', 0]).is_err());
        assert!(parse_startup(&[0, 3, 0, 0, b'u', 0, b'v', 0, 0, 9]).is_err());
    }

    #[tokio::test]
    async fn answers_n_then_reads_startup() {
        let (mut app, mut legate) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move { read_first(&mut legate).await });
        app.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await
            .unwrap();
        let mut n = [0u8; 1];
        app.read_exact(&mut n).await.unwrap();
        assert_eq!(&n, b"N");
        let mut msg = Vec::new();
        let b = body(&[("user", "u")]);
        msg.extend_from_slice(&((b.len() + 4) as u32).to_be_bytes());
        msg.extend_from_slice(&b);
        app.write_all(&msg).await.unwrap();
        match task.await.unwrap().unwrap() {
            First::Startup(s) => assert_eq!(s.param("user"), Some(&b"u"[..])),
            other => panic!("{other:?}"),
        }
    }
}
