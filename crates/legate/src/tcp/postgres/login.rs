//! Logging in to the server on the app's behalf: SCRAM-SHA-256 (with channel binding when the
//! server offers it over TLS), MD5 and cleartext password, with the SCRAM and MD5 computations
//! from the `postgres-protocol` crate. The app never sees a password request: it gets the
//! server's AuthenticationOk, or the server's ErrorResponse when the login is refused.

use super::message::{error_message, read_backend};
use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// The login legate performs.
pub struct Credentials {
    pub user: String,
    pub password: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The server's own words, already forwarded to the app.
    #[error("the server refused the login: {0}")]
    Refused(String),
    #[error("the server asks for {0} authentication; legate logs in with SCRAM-SHA-256, MD5 or a password")]
    Unsupported(&'static str),
    #[error("SCRAM exchange failed: {0}")]
    Scram(std::io::Error),
    #[error("connection to the server failed during login: {0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected message {0:?} from the server during login")]
    Protocol(char),
}

impl LoginError {
    /// The close reason: `tls-<reason>` when the server's TLS refused legate (TLS 1.3 reports a
    /// refused client certificate only on the first read), `auth-failed` otherwise.
    pub fn reason(&self) -> &'static str {
        match self {
            LoginError::Io(e) => match crate::tls::failure::rustls_error(e) {
                Some(r) => crate::tls::failure::reason_of(r),
                None => "auth-failed",
            },
            _ => "auth-failed",
        }
    }
}

/// Which SCRAM flavour to use and with what channel binding: `-PLUS` when the server offers it
/// and the TLS certificate gives a binding; otherwise plain SCRAM, telling the server whether
/// legate could have bound (`n`) or believes the server cannot (`y`).
fn choose(mechanisms: &[&str], binding: Option<Vec<u8>>) -> Option<(&'static str, ChannelBinding)> {
    let plus = mechanisms.contains(&SCRAM_SHA_256_PLUS);
    let plain = mechanisms.contains(&SCRAM_SHA_256);
    match binding {
        Some(b) if plus => Some((SCRAM_SHA_256_PLUS, ChannelBinding::tls_server_end_point(b))),
        _ if plain && plus => Some((SCRAM_SHA_256, ChannelBinding::unsupported())),
        _ if plain => Some((SCRAM_SHA_256, ChannelBinding::unrequested())),
        _ => None,
    }
}

async fn send<S: AsyncWrite + Unpin>(server: &mut S, buf: &mut BytesMut) -> std::io::Result<()> {
    server.write_all(buf).await?;
    buf.clear();
    Ok(())
}

/// Answers the server's authentication requests until AuthenticationOk (forwarded to the app)
/// or an ErrorResponse (forwarded to the app, then an error here).
pub async fn login<S, C>(
    server: &mut S,
    client: &mut C,
    creds: &Credentials,
    binding: Option<Vec<u8>>,
) -> Result<(), LoginError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(256);
    let mut scram: Option<ScramSha256> = None;
    let mut binding = binding;
    loop {
        let msg = read_backend(server).await?;
        match msg.tag {
            b'R' => {
                let body = msg.body();
                let Some((code, data)) = body.split_first_chunk::<4>() else {
                    return Err(LoginError::Protocol('R'));
                };
                match u32::from_be_bytes(*code) {
                    0 => {
                        client.write_all(&msg.raw).await?;
                        return Ok(());
                    }
                    3 => {
                        postgres_protocol::message::frontend::password_message(
                            &creds.password,
                            &mut buf,
                        )?;
                        send(server, &mut buf).await?;
                    }
                    5 => {
                        let salt: [u8; 4] = data
                            .get(..4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or(LoginError::Protocol('R'))?;
                        let hash = postgres_protocol::authentication::md5_hash(
                            creds.user.as_bytes(),
                            &creds.password,
                            salt,
                        );
                        postgres_protocol::message::frontend::password_message(
                            hash.as_bytes(),
                            &mut buf,
                        )?;
                        send(server, &mut buf).await?;
                    }
                    10 => {
                        let mechanisms: Vec<&str> = data
                            .split(|b| *b == 0)
                            .filter(|m| !m.is_empty())
                            .filter_map(|m| std::str::from_utf8(m).ok())
                            .collect();
                        let (mechanism, cb) = choose(&mechanisms, binding.take())
                            .ok_or(LoginError::Unsupported("an unknown SASL"))?;
                        let s = ScramSha256::new(&creds.password, cb);
                        postgres_protocol::message::frontend::sasl_initial_response(
                            mechanism,
                            s.message(),
                            &mut buf,
                        )?;
                        send(server, &mut buf).await?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram.as_mut().ok_or(LoginError::Protocol('R'))?;
                        s.update(data).map_err(LoginError::Scram)?;
                        postgres_protocol::message::frontend::sasl_response(s.message(), &mut buf)?;
                        send(server, &mut buf).await?;
                    }
                    12 => {
                        // Checks the server's signature: a server that does not know the
                        // password cannot pretend to.
                        let s = scram.as_mut().ok_or(LoginError::Protocol('R'))?;
                        s.finish(data).map_err(LoginError::Scram)?;
                    }
                    2 => return Err(LoginError::Unsupported("Kerberos V5")),
                    7 | 8 => return Err(LoginError::Unsupported("GSSAPI")),
                    9 => return Err(LoginError::Unsupported("SSPI")),
                    _ => return Err(LoginError::Unsupported("an unknown")),
                }
            }
            b'E' => {
                client.write_all(&msg.raw).await?;
                return Err(LoginError::Refused(error_message(msg.body())));
            }
            // Notices, and a server's counter-offer of protocol version, are the app's business.
            b'N' | b'v' => client.write_all(&msg.raw).await?,
            other => return Err(LoginError::Protocol(other as char)),
        }
    }
}

/// The app's own login, carried through. One thing is changed: the server offers
/// `SCRAM-SHA-256-PLUS` because its side is TLS, but the app's hop to legate is plaintext, and
/// libpq refuses a `-PLUS` offer there ("server offered SCRAM-SHA-256-PLUS authentication over a
/// non-SSL connection"). legate removes it from the offer; the app then uses SCRAM-SHA-256
/// without binding (it says `n`, "client does not support binding", which the server accepts).
/// Returns once the server says AuthenticationOk (or anything legate does not need to see).
pub async fn relay<S, C>(server: &mut S, client: &mut C) -> Result<(), LoginError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let msg = read_backend(server).await?;
        if msg.tag == b'E' {
            client.write_all(&msg.raw).await?;
            return Err(LoginError::Refused(error_message(msg.body())));
        }
        if msg.tag != b'R' {
            // Notices and protocol negotiation pass; anything else means the login is over.
            client.write_all(&msg.raw).await?;
            if matches!(msg.tag, b'N' | b'v') {
                continue;
            }
            return Ok(());
        }
        let code = msg
            .body()
            .first_chunk::<4>()
            .map(|c| u32::from_be_bytes(*c))
            .ok_or(LoginError::Protocol('R'))?;
        match code {
            10 => client.write_all(&without_plus(&msg.raw)).await?,
            _ => client.write_all(&msg.raw).await?,
        }
        match code {
            // The server waits for the app's answer: carry exactly one message back.
            3 | 5 | 10 | 11 => {
                let answer = read_backend(client).await?;
                server.write_all(&answer.raw).await?;
            }
            12 => {}
            // AuthenticationOk, or a method legate does not follow (GSS): copy from here on.
            _ => return Ok(()),
        }
    }
}

/// An AuthenticationSASL message with `SCRAM-SHA-256-PLUS` taken out of the mechanism list.
fn without_plus(raw: &[u8]) -> Vec<u8> {
    let list = &raw[9..];
    let mut body: Vec<u8> = raw[5..9].to_vec();
    for m in list.split(|b| *b == 0).filter(|m| !m.is_empty()) {
        if m != SCRAM_SHA_256_PLUS.as_bytes() {
            body.extend_from_slice(m);
            body.push(0);
        }
    }
    body.push(0);
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(b'R');
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn plus_is_taken_out_of_the_offer() {
        let mut body = 10u32.to_be_bytes().to_vec();
        body.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        let mut raw = vec![b'R'];
        raw.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        raw.extend_from_slice(&body);
        let out = super::without_plus(&raw);
        let mut want = 10u32.to_be_bytes().to_vec();
        want.extend_from_slice(b"SCRAM-SHA-256\0\0");
        assert_eq!(&out[5..], &want[..]);
        assert_eq!(
            u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize,
            out.len() - 1
        );
    }

    use super::*;

    #[test]
    fn chooses_binding_only_when_it_can() {
        let (m, _) = choose(&[SCRAM_SHA_256_PLUS, SCRAM_SHA_256], Some(vec![1])).unwrap();
        assert_eq!(m, SCRAM_SHA_256_PLUS);
        let (m, _) = choose(&[SCRAM_SHA_256_PLUS, SCRAM_SHA_256], None).unwrap();
        assert_eq!(m, SCRAM_SHA_256);
        let (m, _) = choose(&[SCRAM_SHA_256], Some(vec![1])).unwrap();
        assert_eq!(m, SCRAM_SHA_256);
        assert!(choose(&["OTHER"], None).is_none());
    }

    #[tokio::test]
    async fn md5_then_ok_reaches_the_app() {
        let (mut server_side, mut legate_side) = tokio::io::duplex(4096);
        let mut app = Vec::new();
        let creds = Credentials {
            user: "u".into(),
            password: b"p".to_vec(),
        };
        let server = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            // AuthenticationMD5Password with salt 1,2,3,4
            server_side
                .write_all(&[b'R', 0, 0, 0, 12, 0, 0, 0, 5, 1, 2, 3, 4])
                .await
                .unwrap();
            let mut head = [0u8; 5];
            server_side.read_exact(&mut head).await.unwrap();
            let mut body =
                vec![0u8; u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4];
            server_side.read_exact(&mut body).await.unwrap();
            server_side
                .write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0])
                .await
                .unwrap();
            (head[0], body)
        });
        login(&mut legate_side, &mut app, &creds, None)
            .await
            .unwrap();
        let (tag, body) = server.await.unwrap();
        assert_eq!(tag, b'p');
        let expected = postgres_protocol::authentication::md5_hash(b"u", b"p", [1, 2, 3, 4]);
        assert_eq!(&body[..body.len() - 1], expected.as_bytes());
        assert_eq!(app, vec![b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
    }
}
