//! Which server holds a key: weighted ketama, point for point as libmemcached computes it
//! (`MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED`; PHP's `OPT_LIBKETAMA_COMPATIBLE`, pylibmc's
//! `ketama_weighted`), so that a Python or PHP service on the same server list finds every key on
//! the same server.
//!
//! For `n` servers of total weight `W`, server `i` gets
//! `floor(f32(w_i)/f32(W) * 160/4 * f32(n) + 1e-10) * 4` points, in single precision as
//! libmemcached's `hosts.cc` does (160 with equal weights, but 156 for some `n`, such as 25). Each MD5 of `"host-j"` (`"host:port-j"` when the port
//! is not 11211; the host as configured, never resolved) gives four points: its bytes `[4a, 4a+4)`
//! read little-endian. A key goes to the first point at or after the first four bytes of its MD5,
//! little-endian, wrapping round. While a server is marked down its points are skipped, so only its
//! keys move. (Removing it from the list rebuilds the ring, and since the point counts depend on
//! the number of servers and their total weight, a few other keys may move too, as in libmemcached.)

use std::fmt;
use std::str::FromStr;

use md5::{Digest, Md5};

use crate::build_error::BuildError;

const POINTS_PER_SERVER: f32 = 160.0;
const POINTS_PER_HASH: u32 = 4;
const DEFAULT_PORT: u16 = 11211;

/// A memcached server: `host:port`, with a weight for the ring.
///
/// Parsed from `host:port`, `host:port:weight` (Dalli's syntax), `host` (port 11211), or
/// `[v6-address]:port[:weight]`:
///
/// ```
/// let server: distcache::Server = "cache-1.internal:11211:2".parse()?;
/// assert_eq!((server.host(), server.port(), server.weight()), ("cache-1.internal", 11211, 2));
/// assert_eq!(server.to_string(), "cache-1.internal:11211");
/// # Ok::<(), distcache::BuildError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Server {
    host: String,
    port: u16,
    weight: u32,
}

impl Server {
    /// A server of weight 1.
    pub fn new(host: impl Into<String>, port: u16) -> Result<Self, BuildError> {
        Self::weighted(host, port, 1)
    }

    /// A server with a weight: it gets a share of the keys in proportion to it.
    pub fn weighted(host: impl Into<String>, port: u16, weight: u32) -> Result<Self, BuildError> {
        let host = host.into();
        let spec = format!("{host}:{port}:{weight}");
        let invalid = |reason: &str| BuildError::InvalidServer {
            server: spec.clone(),
            reason: reason.to_owned(),
        };
        if host.is_empty()
            || host
                .bytes()
                .any(|b| !b.is_ascii_graphic() || b == b',' || b == b'[' || b == b']')
        {
            return Err(invalid(
                "the host must be a name or an address, without spaces, commas or brackets",
            ));
        }
        if port == 0 {
            return Err(invalid("the port must not be 0"));
        }
        if weight == 0 {
            return Err(invalid("the weight must be at least 1"));
        }
        Ok(Server { host, port, weight })
    }

    /// The host as configured (resolved only when connecting).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The weight on the ring.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The string whose MD5s give the server's points, before `-j`.
    fn ketama_name(&self) -> String {
        if self.port == DEFAULT_PORT {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Server {
    type Err = BuildError;

    fn from_str(spec: &str) -> Result<Self, BuildError> {
        let spec = spec.trim();
        let invalid = |reason: &str| BuildError::InvalidServer {
            server: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let (host, rest) = if let Some(bracketed) = spec.strip_prefix('[') {
            let (host, rest) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("an IPv6 address needs its closing ']'"))?;
            let rest = match rest {
                "" => None,
                rest => Some(
                    rest.strip_prefix(':')
                        .ok_or_else(|| invalid("expected ':' after ']'"))?,
                ),
            };
            (host, rest)
        } else {
            match spec.split_once(':') {
                Some((host, rest)) => (host, Some(rest)),
                None => (spec, None),
            }
        };
        let (port, weight) = match rest.map(|r| r.split(':').collect::<Vec<_>>()).as_deref() {
            None => (DEFAULT_PORT, 1),
            Some([port]) => (parse_port(port).ok_or_else(|| invalid("bad port"))?, 1),
            Some([port, weight]) => (
                parse_port(port).ok_or_else(|| invalid("bad port"))?,
                weight.parse().map_err(|_| invalid("bad weight"))?,
            ),
            Some(_) => {
                return Err(invalid(
                    "expected host:port[:weight]; write IPv6 addresses as [addr]:port",
                ));
            }
        };
        Server::weighted(host, port, weight).map_err(|_| {
            invalid("expected host:port[:weight], a host without spaces or commas, a port from 1, a weight from 1")
        })
    }
}

fn parse_port(port: &str) -> Option<u16> {
    port.parse().ok().filter(|&p| p != 0)
}

/// `host:port`, with brackets around an IPv6 address.
impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The ketama continuum of a server list: which server holds which key. Usable without
/// connecting, to find where a key lives:
///
/// ```
/// use distcache::{Ring, Server};
///
/// let servers = ["10.0.1.1:11211:600", "10.0.1.2:11211:300", "10.0.1.3:11211:200"];
/// let ring = Ring::new(servers.iter().map(|s| s.parse::<Server>()).collect::<Result<Vec<_>, _>>()?)?;
/// assert_eq!(ring.server_for(b"user:42").to_string(), "10.0.1.1:11211");
/// # Ok::<(), distcache::BuildError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Ring {
    servers: Vec<Server>,
    /// Sorted by value, then by server position.
    points: Vec<(u32, u32)>,
}

impl Ring {
    /// Builds the continuum; fails if the list is empty or names a server twice.
    pub fn new(servers: impl IntoIterator<Item = Server>) -> Result<Self, BuildError> {
        let servers: Vec<Server> = servers.into_iter().collect();
        if servers.is_empty() {
            return Err(BuildError::InvalidSetting {
                setting: "servers",
                reason: "a ring needs at least one server".into(),
            });
        }
        for (i, server) in servers.iter().enumerate() {
            if servers[..i]
                .iter()
                .any(|s| s.host == server.host && s.port == server.port)
            {
                return Err(BuildError::InvalidServer {
                    server: server.to_string(),
                    reason: "listed twice".into(),
                });
            }
        }
        let total: u64 = servers.iter().map(|s| u64::from(s.weight)).sum();
        let count = servers.len() as f32;
        let mut points = Vec::new();
        for (index, server) in servers.iter().enumerate() {
            // Single precision, as in libmemcached's hosts.cc; only the 1e-10 is added in double.
            let share = server.weight as f32 / total as f32;
            let per_server =
                ((share * POINTS_PER_SERVER / 4.0 * count) as f64 + 1e-10).floor() as u32 * 4;
            if per_server == 0 {
                // libmemcached would silently send it no key at all.
                return Err(BuildError::InvalidServer {
                    server: server.to_string(),
                    reason: format!(
                        "its weight {} is too small beside the total {total} to give it any key",
                        server.weight
                    ),
                });
            }
            let name = server.ketama_name();
            for j in 0..per_server / POINTS_PER_HASH {
                let digest = Md5::digest(format!("{name}-{j}").as_bytes());
                for a in 0..4 {
                    let value =
                        u32::from_le_bytes(digest[4 * a..4 * a + 4].try_into().expect("4 bytes"));
                    points.push((value, index as u32));
                }
            }
        }
        points.sort_unstable();
        Ok(Ring { servers, points })
    }

    /// The servers, in the order given.
    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// The server holding a memcached key (the key as sent, namespace included).
    pub fn server_for(&self, key: &[u8]) -> &Server {
        &self.servers[self
            .successors(key)
            .next()
            .expect("a ring has at least one server")]
    }

    /// The first server in the key's fallback order that `admit` lets in, with what it said.
    pub(crate) fn route<T>(
        &self,
        key: &[u8],
        mut admit: impl FnMut(usize) -> Option<T>,
    ) -> Option<(usize, T)> {
        let start = self.start(key);
        // Nearly every request goes to the key's own server: asked first, without the walk.
        let own = self.points[start % self.points.len()].1 as usize;
        if let Some(t) = admit(own) {
            return Some((own, t));
        }
        self.walk(start)
            .skip(1)
            .find_map(|i| admit(i).map(|t| (i, t)))
    }

    /// Server positions in the order a key falls back to them: its own server first, then each
    /// other server in the order its first point follows the key's on the ring.
    pub(crate) fn successors(&self, key: &[u8]) -> impl Iterator<Item = usize> + '_ {
        self.walk(self.start(key))
    }

    /// Where a key falls on the ring: the index of the first point at or after its hash (the
    /// number of points when it falls after the last, which wraps to the first).
    fn start(&self, key: &[u8]) -> usize {
        let hash = key_hash(key);
        self.points.partition_point(|&(value, _)| value < hash)
    }

    /// The servers from point `start` on, each once, wrapping around.
    fn walk(&self, start: usize) -> impl Iterator<Item = usize> + '_ {
        let (before, after) = self.points.split_at(start);
        let mut seen = Seen::new(self.servers.len());
        after
            .iter()
            .chain(before)
            .map(|&(_, server)| server as usize)
            .filter(move |&server| seen.first_time(server))
            .take(self.servers.len())
    }
}

/// Which servers a walk has met: a bit set, on the heap only past 64 servers.
enum Seen {
    Few(u64),
    Many(Vec<bool>),
}

impl Seen {
    fn new(servers: usize) -> Self {
        if servers <= 64 {
            Seen::Few(0)
        } else {
            Seen::Many(vec![false; servers])
        }
    }

    fn first_time(&mut self, server: usize) -> bool {
        match self {
            Seen::Few(bits) => {
                let bit = 1u64 << server;
                let first = *bits & bit == 0;
                *bits |= bit;
                first
            }
            Seen::Many(seen) => !std::mem::replace(&mut seen[server], true),
        }
    }
}

/// The first four bytes of the key's MD5, little-endian: where it lands on the ring.
pub(crate) fn key_hash(key: &[u8]) -> u32 {
    let digest = Md5::digest(key);
    u32::from_le_bytes(digest[..4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FIXTURE: &str = include_str!("../../../tests/fixtures/ketama-libmemcached.tsv");

    /// A fixture row: key, expected server, key hash, the point it lands on.
    type Vector = (Vec<u8>, String, u32, u32);

    /// The fixture's server list and rows.
    fn fixture() -> (Vec<Server>, Vec<Vector>) {
        let mut section = "";
        let (mut servers, mut rows) = (Vec::new(), Vec::new());
        for line in FIXTURE.lines() {
            match line {
                "# servers" | "# keys" => section = line,
                _ if section == "# servers" && !line.starts_with('#') => {
                    let (addr, weight) = line.split_once(' ').unwrap();
                    servers.push(format!("{addr}:{weight}").parse().unwrap());
                }
                _ if section == "# keys" => {
                    let f: Vec<&str> = line.split('\t').collect();
                    rows.push((
                        f[0].as_bytes().to_vec(),
                        f[1].to_owned(),
                        f[2].parse().unwrap(),
                        f[3].parse().unwrap(),
                    ));
                }
                _ => {}
            }
        }
        (servers, rows)
    }

    #[test]
    fn every_libmemcached_vector_lands_on_its_server() {
        let (servers, rows) = fixture();
        assert_eq!(
            (servers.len(), rows.len()),
            (8, 100),
            "8 weighted servers, 99 vectors and the wrap-around key"
        );
        let ring = Ring::new(servers).unwrap();
        for (key, server, hash, point) in rows {
            let shown = String::from_utf8_lossy(&key);
            assert_eq!(key_hash(&key), hash, "hash of {shown}");
            let index = ring.points.partition_point(|&(v, _)| v < hash);
            let landed = ring.points.get(index).unwrap_or(&ring.points[0]).0;
            assert_eq!(landed, point, "point of {shown}");
            assert_eq!(
                ring.server_for(&key).to_string(),
                server,
                "server of {shown}"
            );
        }
    }

    #[test]
    fn points_per_server_follow_libmemcached_in_single_precision() {
        let ring = |n: usize| {
            Ring::new((0..n).map(|i| Server::new(format!("10.0.0.{i}"), 11211).unwrap())).unwrap()
        };
        for (n, per_server) in [
            (1, 160),
            (3, 160),
            (10, 160),
            (25, 156),
            (47, 156),
            (50, 156),
        ] {
            assert_eq!(ring(n).points.len(), n * per_server, "{n} servers");
        }
    }

    #[test]
    fn servers_parse_and_display() {
        let s: Server = "[::1]:11212:3".parse().unwrap();
        assert_eq!(
            (s.host(), s.port(), s.weight(), s.to_string()),
            ("::1", 11212, 3, "[::1]:11212".into())
        );
        assert_eq!(
            "cache".parse::<Server>().unwrap().to_string(),
            "cache:11211"
        );
        assert_eq!(" cache:1 ".parse::<Server>().unwrap().port(), 1);
        for bad in [
            "",
            ":11211",
            "a:0",
            "a:x",
            "a:1:0",
            "a:1:2:3",
            "::1",
            "[::1",
            "[::1]11211",
            "a b:1",
        ] {
            assert!(bad.parse::<Server>().is_err(), "{bad:?} must be refused");
        }
        assert!(
            Ring::new(["a:1".parse().unwrap(), "a:1:5".parse().unwrap()]).is_err(),
            "duplicates"
        );
        let uneven =
            Ring::new(["a:1:1".parse().unwrap(), "b:1:1000".parse().unwrap()]).unwrap_err();
        assert!(uneven.to_string().contains("too small"), "{uneven}");
    }

    #[test]
    fn walks_past_64_servers_meet_each_once() {
        let ring =
            Ring::new((0..100).map(|i| Server::new(format!("h{i}"), 11211).unwrap())).unwrap();
        let mut order: Vec<usize> = ring.successors(b"k").collect();
        order.sort_unstable();
        assert_eq!(order, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_key_falls_back_through_every_other_server_once() {
        let ring = Ring::new((0..5).map(|i| Server::new(format!("s{i}"), 11211).unwrap())).unwrap();
        let order: Vec<usize> = ring.successors(b"some key").collect();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2, 3, 4]);
        assert_eq!(&ring.servers[order[0]], ring.server_for(b"some key"));
    }

    #[test]
    fn route_asks_each_server_once_in_the_key_s_fallback_order() {
        let ring = Ring::new((0..5).map(|i| Server::new(format!("s{i}"), 11211).unwrap())).unwrap();
        for key in [&b"some key"[..], b"", b"k", b"\xff\xff"] {
            let order: Vec<usize> = ring.successors(key).collect();
            for admitted in 0..order.len() {
                let mut asked = Vec::new();
                let routed = ring.route(key, |i| {
                    asked.push(i);
                    (i == order[admitted]).then_some(())
                });
                assert_eq!(routed, Some((order[admitted], ())));
                assert_eq!(asked, order[..=admitted], "{key:?}");
            }
            let mut asked = Vec::new();
            let none = ring.route(key, |i| {
                asked.push(i);
                None::<()>
            });
            assert_eq!(none, None);
            assert_eq!(asked, order);
        }
    }

    proptest! {
        /// A down server's points are skipped, the others' stay where they are: its keys go to
        /// the server whose point follows on the ring, and no other key moves.
        #[test]
        fn skipping_a_server_moves_only_its_keys(
            weights in proptest::collection::vec(1u32..1000, 2..12),
            down in 0usize..12,
            keys in proptest::collection::vec(any::<Vec<u8>>(), 1..200),
        ) {
            let down = down % weights.len();
            let ring = Ring::new(weights.iter().enumerate().map(|(i, &w)| {
                Server::weighted(format!("10.1.0.{i}"), 11211, w).unwrap()
            }));
            // Weights so uneven that a server would get no point are refused (tested below).
            prop_assume!(ring.is_ok());
            let ring = ring.unwrap();
            for key in keys {
                let home = ring.route(&key, |_| Some(())).unwrap().0;
                let now = ring.route(&key, |i| (i != down).then_some(())).unwrap().0;
                if home == down {
                    prop_assert_eq!(Some(now), ring.successors(&key).nth(1));
                } else {
                    prop_assert_eq!(now, home);
                }
            }
        }

        /// With equal weights and a point count that does not change with the server count,
        /// rebuilding the ring without a server also moves only its keys (ketama's promise).
        #[test]
        fn rebuilding_without_a_server_moves_only_its_keys(
            down in 0usize..10,
            keys in proptest::collection::vec(any::<Vec<u8>>(), 1..200),
        ) {
            let all: Vec<Server> = (0..10).map(|i| Server::new(format!("10.2.0.{i}"), 11211).unwrap()).collect();
            let before = Ring::new(all.clone()).unwrap();
            let after = Ring::new(all.iter().enumerate().filter(|&(i, _)| i != down).map(|(_, s)| s.clone())).unwrap();
            prop_assert_eq!(after.points.len(), 9 * 160);
            for key in keys {
                let (was, now) = (before.server_for(&key), after.server_for(&key));
                if *was != all[down] {
                    prop_assert_eq!(was, now);
                }
            }
        }
    }
}
