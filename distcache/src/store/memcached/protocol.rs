//! The meta commands we send and the replies we parse (memcached >= 1.6.10, `doc/protocol.txt`).
//!
//! Requests are built from typed values only: keys are [`WireKey`]s (printable ASCII, at most
//! 250 bytes, checked when built) and every flag is a number we format, so no caller input can
//! reach the wire as a flag or a command. Each request carries an opaque token (`O`) that the
//! reply echoes, so that a connection can prove every reply is the one its request expects.

use bytes::{Buf, Bytes, BytesMut};

use crate::key::WireKey;

/// The longest reply line we accept before the data: far beyond any real one.
const MAX_LINE: usize = 8 * 1024;
/// The largest value size a reply may declare: memcached's own ceiling for `-I`. Values over the
/// parser's own limit (the cache's `item_bytes`) up to this are skipped unread.
const MAX_DECLARED: usize = 1024 * 1024 * 1024;
/// TTLs up to this many seconds are relative; longer ones must be absolute Unix times.
pub(crate) const MAX_RELATIVE_TTL: u64 = 60 * 60 * 24 * 30;

/// A request, built from typed values.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Request<'a> {
    /// `mg <key> v c f k N<lease> [R<refresh>] O<op>`: the value with its CAS and client flags,
    /// or, on a miss, an empty stub that lives `lease` seconds and makes us the winner (`W`); a
    /// stub someone else won answers `Z`. With `refresh` > 0, a value with less than `refresh`
    /// seconds left answers `W` to the first lookup that sees it so, and `Z` to the others. The
    /// key is echoed (`k`) so that a won lease whose caller is gone can be handed back from the
    /// reply alone.
    GetOrLease {
        key: &'a WireKey,
        lease: u32,
        refresh: u32,
        /// With `t`: the item's TTL left, for the near cache.
        ttl: bool,
    },
    /// `ms <key> <len> [c] T<ttl> C<cas> F<flags> O<op>`: store, only if the item's CAS is still
    /// `cas` (our lease's stub, or the value we replace); with `c` (`return_cas`), `HD c<cas>`
    /// gives the new item's CAS (memcached 1.6.18 answers it).
    SetIfCas {
        key: &'a WireKey,
        data: &'a [u8],
        flags: u32,
        ttl: u32,
        cas: u64,
        return_cas: bool,
    },
    /// `ms <key> <len> T<ttl> F<flags> O<op>`: store unconditionally. Only for a chunk of a big
    /// value, under a key of its own that no other write uses (`chunks.rs`).
    Set {
        key: &'a WireKey,
        data: &'a [u8],
        flags: u32,
        ttl: u32,
    },
    /// `mg <key> v f O<op>`: a plain read of an item's value and flags (a chunk of a big value).
    Get { key: &'a WireKey },
    /// `mg <key> s f T<ttl> O<op>`: an item's size and flags, its TTL set to `ttl` (a chunk of a
    /// big value, to be kept rather than written again if it is the one expected).
    TouchChunk { key: &'a WireKey, ttl: u32 },
    /// `md <key> [C<cas>] O<op>`: delete, only if the CAS is still `cas` when given.
    Delete { key: &'a WireKey, cas: Option<u64> },
    /// `mg <key> s c k t O<op>`: an item's size, CAS and TTL left, and whether a lease is out on
    /// it (`Z`), without its value and without making a stub. On a stale item nobody won yet,
    /// memcached answers `W` even so: the key is echoed (`k`) for that lease to be handed back.
    Peek { key: &'a WireKey },
    /// `mg <key> c T<ttl> O<op>`: the item's CAS, its TTL set to `ttl` (touched). Unconditional:
    /// memcached has no compare for a touch. On a lease's stub it keeps the CAS, and other
    /// lookups still answer `Z` (checked against 1.6.18).
    Touch { key: &'a WireKey, ttl: u32 },
}

impl Request<'_> {
    /// Appends the request, tagged with `opaque`, to `out`.
    pub(crate) fn encode(&self, opaque: u32, out: &mut BytesMut) {
        let mut number = itoa::Buffer::new();
        let mut flag = |out: &mut BytesMut, name: &[u8], value: u64| {
            out.extend_from_slice(name);
            out.extend_from_slice(number.format(value).as_bytes());
        };
        match *self {
            Request::GetOrLease {
                key,
                lease,
                refresh,
                ttl,
            } => {
                out.extend_from_slice(b"mg ");
                out.extend_from_slice(key.as_bytes());
                flag(out, b" v c f k N", lease.into());
                if refresh > 0 {
                    flag(out, b" R", refresh.into());
                }
                if ttl {
                    out.extend_from_slice(b" t");
                }
            }
            Request::SetIfCas {
                key,
                data,
                flags,
                ttl,
                cas,
                return_cas,
            } => {
                out.extend_from_slice(b"ms ");
                out.extend_from_slice(key.as_bytes());
                flag(out, b" ", data.len() as u64);
                if return_cas {
                    out.extend_from_slice(b" c");
                }
                flag(out, b" T", ttl.into());
                flag(out, b" C", cas);
                flag(out, b" F", flags.into());
            }
            Request::Set {
                key,
                data,
                flags,
                ttl,
            } => {
                out.extend_from_slice(b"ms ");
                out.extend_from_slice(key.as_bytes());
                flag(out, b" ", data.len() as u64);
                flag(out, b" T", ttl.into());
                flag(out, b" F", flags.into());
            }
            Request::Get { key } => {
                out.extend_from_slice(b"mg ");
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(b" v f");
            }
            Request::TouchChunk { key, ttl } => {
                out.extend_from_slice(b"mg ");
                out.extend_from_slice(key.as_bytes());
                flag(out, b" s f T", ttl.into());
            }
            Request::Delete { key, cas } => {
                out.extend_from_slice(b"md ");
                out.extend_from_slice(key.as_bytes());
                if let Some(cas) = cas {
                    flag(out, b" C", cas);
                }
            }
            Request::Touch { key, ttl } => {
                out.extend_from_slice(b"mg ");
                out.extend_from_slice(key.as_bytes());
                flag(out, b" c T", ttl.into());
            }
            Request::Peek { key } => {
                out.extend_from_slice(b"mg ");
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(b" s c k t");
            }
        }
        flag(out, b" O", opaque.into());
        out.extend_from_slice(b"\r\n");
        if let Request::SetIfCas { data, .. } | Request::Set { data, .. } = self {
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// A reply's status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    /// `VA`: a value follows.
    Value,
    /// `HD`: success, no value.
    Stored,
    /// `EN`: miss.
    Miss,
    /// `NS`: not stored.
    NotStored,
    /// `EX`: the CAS did not match.
    Exists,
    /// `NF`: no such item.
    NotFound,
}

/// A parsed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Meta(Meta),
    /// `ERROR`, `CLIENT_ERROR ...` or `SERVER_ERROR ...`.
    Error {
        kind: ErrorKind,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// `ERROR`: the server did not know the command.
    Command,
    /// `CLIENT_ERROR`: the server refused our request.
    Client,
    /// `SERVER_ERROR`: the server could not do it (out of memory, object too large).
    Server,
}

/// A meta reply: its code, the flags we ask for, and the value of a `VA`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) code: Code,
    /// The value of a `VA`; empty if it was over the parser's limit and skipped unread.
    pub(crate) data: Bytes,
    /// The value's size as the reply declared it; for a reply without a value (`HD`), the
    /// item's size as its `s` flag said (a chunk's touch), or 0. (One field for both: a reply
    /// is moved several times on every hit, and each byte of it costs.)
    pub(crate) size: usize,
    pub(crate) cas: Option<u64>,
    pub(crate) client_flags: Option<u32>,
    pub(crate) opaque: Option<u32>,
    /// `W`: we won the right to compute the value.
    pub(crate) win: bool,
    /// The echoed key (`k`), kept only with `W`: to hand back a lease nobody will fill.
    pub(crate) key: Option<Box<WireKey>>,
    /// `Z`: someone else holds that right.
    pub(crate) won_elsewhere: bool,
    /// `X`: the item is stale.
    pub(crate) stale: bool,
    /// `t`: the item's TTL left in whole seconds of the server's clock; `None` if not asked, or
    /// the item does not expire (`t-1`).
    pub(crate) ttl: Option<u32>,
}

impl Meta {
    /// Whether this reply won a lease: the right to compute a value nobody should read, the empty
    /// stub of `N` or a stale item (`X`). A `W` on a live value is the right to refresh it, not
    /// a lease: the value stays readable.
    pub(crate) fn won_lease(&self) -> bool {
        self.win && (self.stale || self.size == 0)
    }

    /// Whether the value of a `VA` was over the parser's limit and skipped unread (for other
    /// replies, `size` is the `s` flag's, and nothing was skipped).
    pub(crate) fn skipped(&self) -> bool {
        self.code == Code::Value && self.data.len() != self.size
    }
}

/// The bytes are not memcached's meta protocol as we speak it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ProtocolError(pub(crate) String);

/// Parses a connection's replies, one at a time, with a bound on the values it keeps.
#[derive(Debug)]
pub(crate) struct Parser {
    /// The largest value kept; a larger one is skipped as it arrives, never buffered whole.
    max_value: usize,
    /// A reply whose value is being skipped, and how many of its bytes are still to come.
    skipping: Option<(Meta, usize)>,
}

impl Parser {
    pub(crate) fn new(max_value: usize) -> Self {
        Parser {
            max_value,
            skipping: None,
        }
    }

    /// Parses one reply from the front of `buf`, consuming it; `Ok(None)` if more bytes are
    /// needed. A value's bytes are split off `buf` without copying. A value over `max_value` is
    /// consumed as it arrives and the reply returned without it ([`Meta::skipped`]): a server,
    /// or a foreign item under our key, cannot make us hold more than `max_value` for it.
    pub(crate) fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Reply>, ProtocolError> {
        if self.skipping.is_none() {
            match parse(buf, self.max_value)? {
                Parsed::Reply(reply) => return Ok(Some(reply)),
                Parsed::More => return Ok(None),
                Parsed::Skip(meta) => {
                    let size = meta.size;
                    self.skipping = Some((meta, size));
                }
            }
        }
        let Some((_, remaining)) = &mut self.skipping else {
            unreachable!("set above")
        };
        let n = (*remaining).min(buf.len());
        buf.advance(n);
        *remaining -= n;
        if *remaining > 0 || buf.len() < 2 {
            return Ok(None);
        }
        if &buf[..2] != b"\r\n" {
            return Err(ProtocolError(
                "a skipped value is not followed by CRLF".into(),
            ));
        }
        buf.advance(2);
        let (meta, _) = self.skipping.take().expect("checked above");
        Ok(Some(Reply::Meta(meta)))
    }
}

/// What one step of parsing found.
enum Parsed {
    Reply(Reply),
    More,
    /// A value over the limit: its line is consumed, its bytes are to be skipped.
    Skip(Meta),
}

/// Parses one reply from the front of `buf`, keeping values of at most `max_value` bytes.
fn parse(buf: &mut BytesMut, max_value: usize) -> Result<Parsed, ProtocolError> {
    let line_end = match memchr::memchr(b'\n', buf) {
        None if buf.len() > MAX_LINE => {
            return Err(ProtocolError(format!(
                "no end of line in {} bytes",
                buf.len()
            )));
        }
        None => return Ok(Parsed::More),
        Some(lf) if lf == 0 || buf[lf - 1] != b'\r' => {
            return Err(ProtocolError("a line ends with LF without CR".into()));
        }
        Some(lf) => lf - 1,
    };
    let line = &buf[..line_end];
    if !line.is_ascii() {
        return Err(ProtocolError("a reply line is not ASCII".into()));
    }
    let shown = || String::from_utf8_lossy(line).into_owned();
    let mut tokens = line.split(|&b| b == b' ').filter(|t| !t.is_empty());
    let head = tokens.next().unwrap_or_default();
    let (code, size) = match head {
        b"VA" => {
            let size = tokens
                .next()
                .and_then(number)
                .and_then(|s| usize::try_from(s).ok())
                .filter(|&s| s <= MAX_DECLARED)
                .ok_or_else(|| ProtocolError(format!("bad value size in {:?}", shown())))?;
            (Code::Value, size)
        }
        b"HD" => (Code::Stored, 0),
        b"EN" => (Code::Miss, 0),
        b"NS" => (Code::NotStored, 0),
        b"EX" => (Code::Exists, 0),
        b"NF" => (Code::NotFound, 0),
        b"ERROR" | b"CLIENT_ERROR" | b"SERVER_ERROR" => {
            let kind = match head {
                b"ERROR" => ErrorKind::Command,
                b"CLIENT_ERROR" => ErrorKind::Client,
                _ => ErrorKind::Server,
            };
            let message = String::from_utf8_lossy(&line[head.len()..])
                .trim_start()
                .to_owned();
            buf.advance(line_end + 2);
            return Ok(Parsed::Reply(Reply::Error { kind, message }));
        }
        _ => return Err(ProtocolError(format!("unexpected reply {:?}", shown()))),
    };
    let mut meta = Meta {
        code,
        data: Bytes::new(),
        size,
        cas: None,
        client_flags: None,
        opaque: None,
        win: false,
        key: None,
        won_elsewhere: false,
        stale: false,
        ttl: None,
    };
    let mut key = None;
    for token in tokens {
        let (flag, value) = (token[0], &token[1..]);
        let bad = || {
            ProtocolError(format!(
                "bad flag {:?} in {:?}",
                String::from_utf8_lossy(token),
                shown()
            ))
        };
        match flag {
            b'c' => meta.cas = Some(number(value).ok_or_else(bad)?),
            b'f' => {
                meta.client_flags = Some(
                    number(value)
                        .and_then(|v| u32::try_from(v).ok())
                        .ok_or_else(bad)?,
                )
            }
            b'O' => {
                meta.opaque = Some(
                    number(value)
                        .and_then(|v| u32::try_from(v).ok())
                        .ok_or_else(bad)?,
                )
            }
            b'W' => meta.win = true,
            b'Z' => meta.won_elsewhere = true,
            b'X' => meta.stale = true,
            b'k' => key = Some(value),
            b't' => meta.ttl = ttl_left(value).ok_or_else(bad)?,
            // Never a value's: its size frames the bytes that follow (`VA <size>`).
            b's' if code != Code::Value => {
                meta.size = number(value)
                    .and_then(|s| usize::try_from(s).ok())
                    .ok_or_else(bad)?
            }
            // Flags we do not ask for are ignored.
            _ => {}
        }
    }
    if meta.win {
        meta.key = key.and_then(WireKey::from_wire).map(Box::new);
    }
    if code == Code::Value && size > max_value {
        buf.advance(line_end + 2);
        return Ok(Parsed::Skip(meta));
    }
    if code == Code::Value {
        let total = line_end + 2 + size + 2;
        if buf.len() < total {
            // Room for what is missing (at most `max_value` and the line), up to a megabyte at a
            // time.
            buf.reserve((total - buf.len()).min(1 << 20));
            return Ok(Parsed::More);
        }
        if &buf[total - 2..total] != b"\r\n" {
            return Err(ProtocolError(format!(
                "a {size}-byte value is not followed by CRLF"
            )));
        }
        buf.advance(line_end + 2);
        meta.data = buf.split_to(size).freeze();
        buf.advance(2);
    } else {
        buf.advance(line_end + 2);
    }
    Ok(Parsed::Reply(Reply::Meta(meta)))
}

/// A `t` flag's value: `None` for `-1` (no expiry), whole seconds otherwise (cut to `u32`).
fn ttl_left(value: &[u8]) -> Option<Option<u32>> {
    if value == b"-1" {
        return Some(None);
    }
    number(value).map(|ttl| Some(u32::try_from(ttl).unwrap_or(u32::MAX)))
}

/// A decimal number of at most 20 digits, as memcached writes them.
fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let digit = d.checked_sub(b'0').filter(|&d| d < 10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
