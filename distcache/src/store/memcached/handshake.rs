//! What a new connection asks the server before any request: `stats` and `stats settings`.
//!
//! - **The version.** distcache speaks the meta protocol as memcached 1.6.10 made it stable (it
//!   renamed the reply `OK` to `HD`): an older server would answer every request `ERROR` (before
//!   1.6), or answer in a form we do not parse, and close every connection we make with a message
//!   about a refused request or a protocol error. It is refused here, once, with its version in
//!   the error.
//! - **CAS.** A server started with `-C` gives every item CAS 0 and refuses every fill under a
//!   lease: refused here, saying so.
//! - **The instance.** `pid` and the start time (`time - uptime`, which memcached derives from one
//!   clock, so it is the same on every connection) tell one run of the server from the next. A
//!   lease is the CAS of a stub; CAS values start again at 1 when memcached restarts, so a lease
//!   won before a restart may equal another client's lease after it. Leases carry their instance,
//!   and a fill or release on another instance is not sent (`Node::execute`).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest answer read: `stats` and `stats settings` are a few kilobytes.
const MAX_ANSWER: usize = 256 * 1024;

/// Which run of the server a connection talks to; 0 when the server did not say.
pub(crate) type Instance = u64;

/// What a server said of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Greeting {
    pub(crate) instance: Instance,
    /// Its largest item (`-I`, `item_size_max`), key and header included; 0 if it did not say.
    pub(crate) item_size_max: usize,
}

impl Greeting {
    /// A server that said nothing (scripted peers in tests).
    pub(crate) const SILENT: Greeting = Greeting {
        instance: 0,
        item_size_max: 0,
    };
}

/// Asks the server about itself within `timeout`; fails, with the reason, if distcache cannot
/// use it.
pub(crate) async fn greet<S>(stream: &mut S, timeout: Duration) -> io::Result<Greeting>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        stream.write_all(b"stats\r\nstats settings\r\n").await?;
        let mut answer = Vec::with_capacity(8 * 1024);
        let mut ends = 0;
        while ends < 2 {
            if answer.len() > MAX_ANSWER {
                return Err(invalid("the answer to `stats` is too long"));
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection before answering `stats`",
                ));
            }
            answer.extend_from_slice(&chunk[..n]);
            ends = count_ends(&answer);
            if let Some(refused) = refused(&answer) {
                if refused == "CLIENT_ERROR unauthenticated" {
                    return Err(super::auth::refusal(
                        "the server requires a login (memcached -Y): set CacheBuilder::credentials"
                            .into(),
                    ));
                }
                // A proxy may answer `stats` and not `stats settings`: what it said is enough.
                if ends == 1 {
                    break;
                }
                return Err(invalid(format!(
                    "the server refused `stats` ({refused}): is it memcached 1.6.10 or later?"
                )));
            }
        }
        check(&String::from_utf8_lossy(&answer)).map_err(invalid)
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer to `stats` within {timeout:?}"),
        )
    })?
}

/// The first error line of `answer`, if any.
fn refused(answer: &[u8]) -> Option<String> {
    answer
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .find(|line| {
            line.starts_with(b"ERROR")
                || line.starts_with(b"CLIENT_ERROR")
                || line.starts_with(b"SERVER_ERROR")
        })
        .map(|line| String::from_utf8_lossy(line).into_owned())
}

fn invalid(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

/// How many complete `END` lines `answer` holds. Only whole lines count: a read may end between
/// the CR and the LF of the last one, whose LF must then be read here, not by the connection.
fn count_ends(answer: &[u8]) -> usize {
    let Some(last) = answer.iter().rposition(|&b| b == b'\n') else {
        return 0;
    };
    answer[..=last]
        .split(|&b| b == b'\n')
        .filter(|line| *line == b"END\r")
        .count()
}

/// Checks the `stats` and `stats settings` answers; the server's instance, or why it cannot be
/// used.
fn check(answer: &str) -> Result<Greeting, String> {
    let stat = |name: &str| {
        answer.lines().find_map(|line| {
            let mut words = line.trim_end().split(' ');
            (words.next() == Some("STAT") && words.next() == Some(name))
                .then(|| words.next())
                .flatten()
        })
    };
    if let Some(version) = stat("version") {
        // "1.6.18", or "1.6.9-rc1": the leading digits of each part.
        let mut parts = version
            .split('.')
            .map(|p| p.split(|c: char| !c.is_ascii_digit()).next().unwrap_or(""))
            .map(|p| p.parse::<u32>());
        // A server that is not memcached (a proxy with versions of its own) is not refused here.
        if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) {
            let patch = parts.next().and_then(Result::ok).unwrap_or(0);
            if (major, minor, patch) < (1, 6, 10) {
                return Err(format!(
                    "the server is memcached {version}: distcache needs 1.6.10 or later (the meta protocol as it became stable)"
                ));
            }
        }
    }
    if stat("cas_enabled") == Some("no") {
        return Err(
            "the server runs with CAS disabled (memcached -C): distcache's leases need CAS".into(),
        );
    }
    let number = |name| stat(name).and_then(|v| v.parse::<u64>().ok());
    let instance = match (number("pid"), number("time"), number("uptime")) {
        (Some(pid), Some(time), Some(uptime)) => {
            // Never 0, which stands for "unknown".
            (pid << 40 ^ time.wrapping_sub(uptime)) | 1 << 63
        }
        _ => 0,
    };
    let item_size_max = number("item_size_max").map_or(0, |n| usize::try_from(n).unwrap_or(0));
    Ok(Greeting {
        instance,
        item_size_max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(version: &str, pid: u64, time: u64, uptime: u64, cas: &str) -> String {
        format!(
            "STAT pid {pid}\r\nSTAT uptime {uptime}\r\nSTAT time {time}\r\nSTAT version {version}\r\nEND\r\n\
             STAT maxbytes 67108864\r\nSTAT item_size_max 1048576\r\nSTAT cas_enabled {cas}\r\nEND\r\n"
        )
    }

    #[test]
    fn a_run_of_the_server_is_told_by_its_pid_and_start_time() {
        let run = |pid, time, uptime| {
            check(&answer("1.6.18", pid, time, uptime, "yes"))
                .unwrap()
                .instance
        };
        let first = run(622, 1_000_003, 3);
        assert_ne!(first, 0);
        assert_eq!(run(622, 1_000_010, 10), first, "the same run, asked later");
        assert_ne!(run(623, 1_000_010, 1), first);
        assert_ne!(run(622, 1_000_010, 1), first);
        assert_eq!(
            check(&answer("1.6.18", 1, 10, 1, "yes"))
                .unwrap()
                .item_size_max,
            1_048_576
        );
    }

    #[test]
    fn only_whole_end_lines_count() {
        assert_eq!(count_ends(b"STAT a 1\r\nEND\r\nSTAT b 2\r\nEND\r"), 1);
        assert_eq!(count_ends(b"STAT a 1\r\nEND\r\nSTAT b 2\r\nEND\r\n"), 2);
        assert_eq!(count_ends(b"STAT END\r\nEN"), 0);
    }

    #[test]
    fn servers_distcache_cannot_use_are_refused_with_the_reason() {
        let old = check(&answer("1.5.22", 1, 10, 1, "yes")).unwrap_err();
        assert!(
            old.contains("1.5.22") && old.contains("1.6.10 or later"),
            "{old}"
        );
        let early_meta = check(&answer("1.6.9", 1, 10, 1, "yes")).unwrap_err();
        assert!(early_meta.contains("1.6.9"), "{early_meta}");
        assert!(check(&answer("1.6.10", 1, 10, 1, "yes")).is_ok());
        let no_cas = check(&answer("1.6.18", 1, 10, 1, "no")).unwrap_err();
        assert!(no_cas.contains("-C"), "{no_cas}");
        assert!(check(&answer("2.0.1", 1, 10, 1, "yes")).is_ok());
        assert_eq!(
            check("STAT version mcrouter-42\r\nEND\r\nEND\r\n"),
            Ok(Greeting::SILENT),
            "not memcached, and no instance: not refused, no restart guard"
        );
    }

    #[test]
    fn an_error_line_anywhere_is_found() {
        assert_eq!(
            refused(b"STAT pid 1\r\nEND\r\nERROR\r\n").as_deref(),
            Some("ERROR")
        );
        assert_eq!(refused(b"STAT pid 1\r\nEND\r\n"), None);
    }

    #[tokio::test]
    async fn an_old_server_fails_the_connection_with_its_version() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 64];
            let _ = stream.read(&mut request).await.unwrap();
            stream
                .write_all(answer("1.4.39", 7, 100, 5, "yes").as_bytes())
                .await
                .unwrap();
            stream
        });
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let err = greet(&mut stream, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("1.4.39"), "{err}");
        drop(peer.await.unwrap());
    }
}
