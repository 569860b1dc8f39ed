//! The ASCII protocol's authentication (`memcached -Y authfile`): on each new connection, before
//! any other request, `set <key> 0 0 <n>` with `<user> <password>` as the value; the answer is
//! `STORED`. Until then a server that asks for it answers every command `CLIENT_ERROR
//! unauthenticated`; a refused login is `CLIENT_ERROR authentication failure` (checked against
//! 1.6.18 with raw sockets).
//!
//! A server that does not ask for authentication would store that `set` as an ordinary item,
//! the password in it for anyone to read: so the connection asks first (`version`), and logs in
//! only where the server answers that it must.

use std::fmt;
use std::io;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// The longest username and password together that is sent; memcached's own authfile lines are
/// short.
const MAX_TOKEN: usize = 1024;

/// A server's refusal of the connection for a reason of configuration, not of the network: a
/// refused login, a TLS handshake that failed on a certificate or the protocol, a login asked
/// for and not configured. Carried in an `io::Error` ([`io::ErrorKind::PermissionDenied`]), so
/// that the node can tell it from an I/O failure ([`is_refusal`]).
#[derive(Debug)]
pub(crate) struct Refusal(pub(crate) String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

/// An `io::Error` holding a [`Refusal`].
pub(crate) fn refusal(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, Refusal(reason))
}

/// Whether `err` is a server's refusal ([`Refusal`]) rather than an I/O failure.
pub(crate) fn is_refusal(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|inner| inner.is::<Refusal>())
}

/// A username and its password. `Debug` shows the username only.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    username: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Checks what the server can take (`user:password` lines in its authfile, `user password`
    /// as the login): a username of printable ASCII without spaces or `:`, a password of
    /// printable ASCII without spaces (memcached 1.6.18 refuses a login whose password has one).
    /// The reason never repeats the password.
    pub(crate) fn new(username: String, password: String) -> Result<Self, String> {
        let printable = |s: &str| s.bytes().all(|b| (0x20..0x7f).contains(&b));
        if username.is_empty() || password.is_empty() {
            return Err("the username and the password must not be empty".into());
        }
        if !printable(&username) || username.contains([' ', ':']) {
            return Err(format!(
                "the username {username:?} must be printable ASCII without spaces or `:`"
            ));
        }
        if !printable(&password) || password.contains(' ') {
            return Err("the password must be printable ASCII without spaces".into());
        }
        if username.len() + 1 + password.len() > MAX_TOKEN {
            return Err(format!(
                "the username and password are over {MAX_TOKEN} bytes together"
            ));
        }
        Ok(Credentials { username, password })
    }
}

/// Logs in on a new connection, if the server asks for it. A refused login is
/// [`io::ErrorKind::PermissionDenied`], its message saying "authentication" and the username;
/// a server that does not answer as memcached does is [`io::ErrorKind::InvalidData`].
pub(crate) async fn log_in<S>(stream: &mut S, credentials: &Credentials) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(b"version\r\n").await?;
    let answer = line(stream).await?;
    if answer.starts_with("VERSION ") {
        // The server asks for no login: nothing is sent, so the password is stored nowhere.
        return Ok(());
    }
    if answer != "CLIENT_ERROR unauthenticated" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the server answered `version` with {answer:?}"),
        ));
    }
    let token_len = credentials.username.len() + 1 + credentials.password.len();
    let mut request = Vec::with_capacity(token_len + 64);
    request.extend_from_slice(format!("set distcache:auth 0 0 {token_len}\r\n").as_bytes());
    request.extend_from_slice(credentials.username.as_bytes());
    request.push(b' ');
    request.extend_from_slice(credentials.password.as_bytes());
    request.extend_from_slice(b"\r\n");
    stream.write_all(&request).await?;
    match line(stream).await?.as_str() {
        "STORED" => Ok(()),
        refused if refused.starts_with("CLIENT_ERROR") => Err(refusal(format!(
            "authentication failed: the server refused the username {:?} and its password ({})",
            credentials.username,
            refused.trim_start_matches("CLIENT_ERROR ")
        ))),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the server answered the login with {other:?}"),
        )),
    }
}

/// One line of the server's answer, without its `\r\n`, read byte by byte: nothing past it is
/// taken from the stream, and no more than 257 bytes of it.
async fn line<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<String> {
    let mut reader = BufReader::with_capacity(1, stream.take(257));
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).await?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection during the login",
        ));
    }
    if line.len() > 256 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the server's answer to the login is too long",
        ));
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_checked_and_the_password_is_never_shown() {
        let ok = Credentials::new("alice".into(), "s3cret:pass".into()).unwrap();
        let debug = format!("{ok:?}");
        assert!(
            debug.contains("alice") && !debug.contains("s3cret"),
            "{debug}"
        );
        for (user, pass) in [
            ("", "x"),
            ("a", ""),
            ("a b", "x"),
            ("a:b", "x"),
            ("a", "x y"),
        ] {
            assert!(
                Credentials::new(user.into(), pass.into()).is_err(),
                "{user:?}"
            );
        }
        let err = Credentials::new("a".into(), "se\ncret".into()).unwrap_err();
        assert!(
            !err.contains("cret"),
            "the reason does not repeat the password: {err}"
        );
        let long = "p".repeat(MAX_TOKEN);
        assert!(Credentials::new("a".into(), long).is_err());
    }
}
