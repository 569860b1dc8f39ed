//! The memcached cluster: the ketama ring picks a key's node, the node's pipelined connections
//! carry the meta commands of the four verbs, on the meta protocol of memcached 1.6.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::time::Instant;
use tracing::{debug, warn};

pub(crate) use self::auth::Credentials;
use self::handshake::Instance;
pub use self::health::NodeStats;
pub(crate) use self::node::NodeConfig;
use self::node::{Node, Ticket};
use self::protocol::{Code, ErrorKind, MAX_RELATIVE_TTL, Meta, Reply, Request};
use self::ring::Ring;
pub use self::ring::Server;
pub(crate) use self::signing::Signer;
use super::{Fill, Item, Lease, Lookup, NO_LIFE, Store, StoreError, StoreErrorKind, whole_seconds};
use crate::key::WireKey;

mod auth;
pub(crate) mod chunks;
mod conn;
mod handshake;
mod health;
mod node;
mod orphans;
pub(crate) mod protocol;
pub(crate) mod ring;
pub(crate) mod signing;
pub(crate) mod tls;

#[derive(Debug, Clone)]
pub(crate) struct Cluster {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ring: Ring,
    nodes: Vec<Node>,
    /// Signs every item written and verifies every item read (`signing.rs`); `None`: off.
    signer: Option<Signer>,
    /// Values stored over this many bytes are stored in chunks of it (`chunks.rs`).
    chunk_bytes: usize,
    /// The largest value a manifest may stand for.
    max_assembled: usize,
}

impl Cluster {
    /// The cluster of `ring`'s servers; connects on first use.
    pub(crate) fn new(ring: Ring, config: &NodeConfig) -> Self {
        let epoch = Instant::now();
        let nodes = ring
            .servers()
            .iter()
            .map(|server| Node::new(server.clone(), config, epoch))
            .collect();
        Cluster {
            inner: Arc::new(Inner {
                ring,
                nodes,
                signer: config.signer.clone(),
                chunk_bytes: config.chunk_bytes,
                max_assembled: config.max_assembled,
            }),
        }
    }

    pub(crate) fn servers(&self) -> &[Server] {
        self.inner.ring.servers()
    }

    /// Each node's health, in the order the servers were configured.
    pub(crate) fn node_stats(&self) -> Vec<NodeStats> {
        self.inner
            .nodes
            .iter()
            .map(|node| {
                let (marked_down, back) = node.transitions();
                NodeStats {
                    server: node.server.clone(),
                    down: node.is_down(),
                    marked_down,
                    back,
                }
            })
            .collect()
    }

    /// The server `key` goes to now: its own, or the next one up if its own is marked down.
    pub(crate) fn server_for(&self, key: &WireKey) -> &Server {
        let nodes = &self.inner.nodes;
        let ring = &self.inner.ring;
        match ring.route(key.as_bytes(), |i| (!nodes[i].is_down()).then_some(())) {
            Some((index, ())) => &nodes[index].server,
            // Every node is down: the key's own.
            None => ring.server_for(key.as_bytes()),
        }
    }

    /// Runs `request` on the key's node. If its connection breaks under it, it is asked again on
    /// a new one; if the node is marked down by the failure, on the key's next node: a node's
    /// death costs its keys no degraded call (a dead node refuses the new connection, which marks
    /// it down at once).
    async fn on_key_node(
        &self,
        operation: &'static str,
        key: &WireKey,
        request: Request<'_>,
        deadline: Option<Instant>,
    ) -> Result<(usize, Reply, Instance), StoreError> {
        let nodes = &self.inner.nodes;
        // A request is asked again, at most three times: on the next node when its own was
        // marked down, or on a new connection when its connection broke under it (a node that
        // died refuses the new one, which marks it down at once, and the next try goes to the
        // next node).
        let mut tries = 0;
        let mut last = None;
        loop {
            let Some((index, ticket)) = self.inner.ring.route(key.as_bytes(), |i| nodes[i].admit())
            else {
                // The last try's error says more than "every node is marked down".
                return Err(last.unwrap_or(StoreError {
                    operation,
                    node: "every node".into(),
                    kind: StoreErrorKind::NoNode(nodes[self.home(key)].last_failure()),
                }));
            };
            match nodes[index]
                .execute(ticket, operation, &request, deadline, None)
                .await
            {
                Ok((reply, instance)) => return Ok((index, reply, instance)),
                Err(err) if tries == 3 || err.is_deadline() => return Err(err),
                Err(err)
                    if nodes[index].is_down()
                        || matches!(err.kind, StoreErrorKind::Connection(_)) =>
                {
                    tries += 1;
                    last = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Stores a value under `lease`: in one item, or, over `item_bytes`, in chunks under a
    /// manifest (`chunks.rs`). How it went, and, asked for, the stored item's CAS.
    async fn set_if_cas(
        &self,
        key: &WireKey,
        lease: Lease,
        (data, flags): (&Bytes, u32),
        write: Write,
    ) -> Result<(Fill, Option<u64>), StoreError> {
        if data.len() > self.inner.chunk_bytes {
            return self.set_chunked(key, lease, (data, flags), write).await;
        }
        self.set_item(key, lease, (data, flags), write, None).await
    }

    /// `ms … C<cas>` on the lease's node: one item, signed if values are; by `deadline`, if
    /// given, rather than its own bound.
    async fn set_item(
        &self,
        key: &WireKey,
        lease: Lease,
        (data, flags): (&Bytes, u32),
        Write {
            operation,
            expire,
            return_cas,
        }: Write,
        deadline: Option<Instant>,
    ) -> Result<(Fill, Option<u64>), StoreError> {
        let signed;
        let (data, flags) = match &self.inner.signer {
            None => (data, flags),
            Some(signer) => {
                let (flags, bytes) = signer.sign(key.as_bytes(), flags, data);
                signed = bytes;
                (&signed, flags)
            }
        };
        if self.inner.nodes[lease.node].refuses(key.as_bytes().len(), data.len()) {
            // Not sent: the server would refuse it and delete the lease's stub with it.
            return Ok((Fill::TooLarge, None));
        }
        let request = Request::SetIfCas {
            key,
            data,
            flags,
            ttl: ttl_seconds(expire),
            cas: lease.cas,
            return_cas,
        };
        let reply = match self
            .on_lease_node(operation, lease, request, deadline)
            .await
        {
            Err(err) if matches!(err.kind, StoreErrorKind::Restarted) => {
                debug!(key = key.as_str(), error = %err, "not filled");
                return Ok((Fill::LeaseLost, None));
            }
            reply => reply?,
        };
        match reply {
            Reply::Meta(Meta {
                code: Code::Stored,
                cas,
                ..
            }) => Ok((Fill::Stored, cas)),
            // EX: the CAS changed (taken over); NF: the stub expired; NS: not stored.
            Reply::Meta(_) => Ok((Fill::LeaseLost, None)),
            Reply::Error {
                kind: ErrorKind::Server,
                message,
            } if message.contains("too large") => Ok((Fill::TooLarge, None)),
            other => meta(operation, &self.inner.nodes[lease.node].server, other)
                .map(|_| (Fill::LeaseLost, None)),
        }
    }

    /// Runs `request` on the node that granted `lease`, and only on the run of its server that
    /// granted it: only that one can honour the lease's CAS.
    /// With `deadline`, it fails with [`StoreErrorKind::Deadline`] then, if that comes before
    /// its own bound.
    async fn on_lease_node(
        &self,
        operation: &'static str,
        lease: Lease,
        request: Request<'_>,
        deadline: Option<Instant>,
    ) -> Result<Reply, StoreError> {
        let node = &self.inner.nodes[lease.node];
        // Sent even to a node marked down: only it can honour the lease, and a lease neither
        // filled nor handed back blocks its key for every process until it expires. Such
        // requests are few (the leases won before the node was marked down), each bounded.
        let ticket = node.admit().unwrap_or(Ticket::Up);
        node.execute(ticket, operation, &request, deadline, Some(lease.instance))
            .await
            .map(|(reply, _)| reply)
    }
}

/// How a value is written under a lease.
#[derive(Debug, Clone, Copy)]
struct Write {
    /// A `"fill"` (of a lease) or a `"swap"` (of a version), for errors and logs.
    operation: &'static str,
    expire: Duration,
    /// Ask for the stored item's CAS: a swap's new version.
    return_cas: bool,
}

fn meta(operation: &'static str, node: &Server, reply: Reply) -> Result<Meta, StoreError> {
    let kind = match reply {
        Reply::Meta(meta) => return Ok(meta),
        // The connection closes on a command or client error (`Shared::deliver`): only the
        // server's own errors come back as replies.
        Reply::Error { message, .. } => StoreErrorKind::Server(message),
    };
    Err(StoreError {
        operation,
        node: node.to_string(),
        kind,
    })
}

/// A TTL in memcached's terms: whole seconds, at least one (0 would mean "never expires"), and
/// past 30 days an absolute Unix time, as memcached reads any larger number.
pub(crate) fn ttl_seconds(ttl: Duration) -> u32 {
    let secs = whole_seconds(ttl).max(1);
    if secs <= MAX_RELATIVE_TTL {
        return secs as u32;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    u32::try_from(now.saturating_add(secs)).unwrap_or(u32::MAX)
}

/// The `R` token for a refresh window: memcached answers `W` while fewer than `R` whole seconds
/// of the item's life are left, which is at most `R - 1` of them (checked against 1.6.18), so a
/// window of `n` whole seconds (rounded down) is `R = n + 1`, and a window under a second asks for
/// nothing. Tokens over 30 days would be read as absolute times: the window is capped there.
fn refresh_token(window: Duration) -> u32 {
    match window.as_secs() {
        0 => 0,
        secs => secs.saturating_add(1).min(MAX_RELATIVE_TTL) as u32,
    }
}

impl Store for Cluster {
    async fn lookup(
        &self,
        key: &WireKey,
        lease_ttl: Duration,
        refresh: Duration,
        ask_life: bool,
        deadline: Instant,
    ) -> Result<Lookup, StoreError> {
        let request = Request::GetOrLease {
            key,
            lease: ttl_seconds(lease_ttl),
            refresh: refresh_token(refresh),
            ttl: ask_life,
        };
        let (node, reply, instance) = self
            .on_key_node("lookup", key, request, Some(deadline))
            .await?;
        let server = &self.inner.nodes[node].server;
        let meta = meta("lookup", server, reply)?;
        if meta.skipped() {
            // Not ours (ours are never over the limit), or written with a larger limit: a miss,
            // which the flight counts, recomputes and replaces.
            warn!(node = %server, key = key.as_str(), size = meta.size,
                "an item over this cache's limit (item_bytes, or max_value_bytes) was skipped unread");
        }
        let version = Lease {
            cas: meta.cas.unwrap_or_default(),
            node,
            instance,
        };
        let skipped = meta.skipped();
        let item = |meta: Meta| {
            let flags = meta.client_flags.unwrap_or_default();
            let (flags, data) = match &self.inner.signer {
                // Skipped unread: a miss for its size, not a forgery.
                Some(signer) if !skipped => signer.verify(key.as_bytes(), flags, meta.data),
                _ => (flags, meta.data),
            };
            Item {
                data,
                flags,
                version,
                // `t` counts whole seconds of the server's clock, which ticks once a second: an
                // item with `t` seconds left lives more than `t - 1` from when it was read, which
                // is after the lookup was sent.
                life_ms: meta.ttl.map_or(NO_LIFE, |ttl| {
                    Item::life_ms(Duration::from_secs(u64::from(ttl.saturating_sub(1))))
                }),
            }
        };
        let lookup = match meta.code {
            // A stale item (X) or the empty stub of a lease (`N`) carries a value nobody should
            // read: the lease is ours (W), or someone else's (Z, or X alone).
            Code::Value if meta.won_lease() => Lookup::Won(version),
            Code::Value if meta.stale => Lookup::Busy,
            Code::Value if meta.size == 0 && meta.won_elsewhere => Lookup::Busy,
            // A value near its end (`R`): ours to refresh (W); someone else's (Z) leaves it a
            // plain hit.
            Code::Value if meta.win => Lookup::Refresh(item(meta)),
            Code::Value => Lookup::Hit(item(meta)),
            // With N, a miss creates the stub; a plain miss means memcached could not (out of
            // memory): the store cannot hand out the lease.
            other => {
                return Err(StoreError {
                    operation: "lookup",
                    node: server.to_string(),
                    kind: StoreErrorKind::Server(format!(
                        "{other:?} to a lookup that should have created a lease"
                    )),
                });
            }
        };
        Ok(lookup)
    }

    async fn assemble(
        &self,
        key: &WireKey,
        item: &mut Item,
        deadline: Instant,
    ) -> Result<(), StoreError> {
        self.read_big(key, item, deadline).await
    }

    async fn fill(
        &self,
        key: &WireKey,
        lease: Lease,
        data: &Bytes,
        flags: u32,
        expire: Duration,
    ) -> Result<Fill, StoreError> {
        let write = Write {
            operation: "fill",
            expire,
            return_cas: false,
        };
        self.set_if_cas(key, lease, (data, flags), write)
            .await
            .map(|(fill, _)| fill)
    }

    async fn swap(
        &self,
        key: &WireKey,
        version: Lease,
        data: &Bytes,
        flags: u32,
        expire: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        match self
            .set_if_cas(
                key,
                version,
                (data, flags),
                Write {
                    operation: "swap",
                    expire,
                    return_cas: true,
                },
            )
            .await?
        {
            (Fill::Stored, Some(cas)) => Ok(Some(Lease { cas, ..version })),
            // Stored, but the server did not say under which CAS: nobody could use the new
            // value's version (a claim would block the key until it ends).
            (Fill::Stored, None) => Err(StoreError {
                operation: "swap",
                node: self.inner.nodes[version.node].server.to_string(),
                kind: StoreErrorKind::Server(
                    "the server stored the item without returning its CAS (`ms … c`)".into(),
                ),
            }),
            _ => Ok(None),
        }
    }

    /// A touch cannot compare the CAS: if the stub expired and the key was leased or filled by
    /// another since, its TTL is set too. The flight only extends a lease it knows to be alive
    /// (`flight::LEASE_MARGIN`), so that this takes a round trip delayed by seconds.
    async fn extend(
        &self,
        key: &WireKey,
        lease: Lease,
        lease_ttl: Duration,
    ) -> Result<bool, StoreError> {
        let request = Request::Touch {
            key,
            ttl: ttl_seconds(lease_ttl),
        };
        let reply = match self.on_lease_node("extend", lease, request, None).await {
            Err(err) if matches!(err.kind, StoreErrorKind::Restarted) => return Ok(false),
            reply => reply?,
        };
        let server = &self.inner.nodes[lease.node].server;
        let meta = meta("extend", server, reply)?;
        let ours = meta.code == Code::Stored && meta.cas == Some(lease.cas);
        if !ours && meta.code == Code::Stored {
            debug!(node = %server, key = key.as_str(), "a lease extension touched another's item");
        }
        Ok(ours)
    }

    async fn release(&self, key: &WireKey, lease: Lease) -> Result<(), StoreError> {
        let request = Request::Delete {
            key,
            cas: Some(lease.cas),
        };
        let reply = match self.on_lease_node("release", lease, request, None).await {
            // The lease went with the server's restart: nothing to hand back.
            Err(err) if matches!(err.kind, StoreErrorKind::Restarted) => return Ok(()),
            reply => reply?,
        };
        meta("release", &self.inner.nodes[lease.node].server, reply).map(drop)
    }

    /// Queued on the lease's node, sent on its next connection to the same run of the server
    /// before any other request there.
    fn release_later(&self, key: &WireKey, lease: Lease) {
        self.inner.nodes[lease.node].owe_release(key, lease.cas, lease.instance);
    }

    /// Deletes the key on its own node. If that node is marked down or does not answer, the
    /// delete is owed to it (sent before this process's next request there), the key is
    /// deleted on the node its calls go to meanwhile (a warning if that fails too), and the
    /// error says the own node was not reached: other processes may still read the old value
    /// there once it is back.
    async fn invalidate(&self, key: &WireKey) -> Result<(), StoreError> {
        let request = Request::Delete { key, cas: None };
        let nodes = &self.inner.nodes;
        let home = self.home(key);
        let mut tries = 0;
        let unreached = loop {
            tries += 1;
            let Some(ticket) = nodes[home].admit() else {
                break StoreError {
                    operation: "invalidate",
                    node: nodes[home].server.to_string(),
                    kind: StoreErrorKind::MarkedDown(nodes[home].last_failure()),
                };
            };
            match nodes[home]
                .execute(ticket, "invalidate", &request, None, None)
                .await
            {
                // A server error reply is the node's answer: nothing is owed to it.
                Ok((reply, _)) => return meta("invalidate", &nodes[home].server, reply).map(drop),
                // Asked again once on a new connection, as a lookup is.
                Err(err) if tries == 1 && matches!(err.kind, StoreErrorKind::Connection(_)) => {}
                Err(err) => break err,
            }
        };
        nodes[home].owe_invalidation(key);
        let fallback = self.inner.ring.route(key.as_bytes(), |i| {
            if i == home { None } else { nodes[i].admit() }
        });
        if let Some((index, ticket)) = fallback {
            let deleted = nodes[index]
                .execute(ticket, "invalidate", &request, None, None)
                .await
                .and_then(|(reply, _)| meta("invalidate", &nodes[index].server, reply));
            if let Err(err) = deleted {
                warn!(key = key.as_str(), error = %err, "invalidating on the fallback node failed");
            }
        }
        Err(unreached)
    }
}

impl Cluster {
    /// The key's own node, up or down.
    fn home(&self, key: &WireKey) -> usize {
        self.inner
            .ring
            .successors(key.as_bytes())
            .next()
            .expect("a ring has at least one server")
    }

    /// The key's own server, up or down.
    pub(crate) fn home_server(&self, key: &WireKey) -> &Server {
        &self.inner.nodes[self.home(key)].server
    }
}

#[cfg(test)]
#[path = "../../../tests/support/memcached.rs"]
mod harness;

#[cfg(all(test, feature = "tls"))]
#[path = "../../../tests/support/tls.rs"]
mod pki;

#[cfg(test)]
#[path = "../../../tests/support/proxy.rs"]
mod proxy;

#[cfg(test)]
mod tests {
    use super::harness::{Memcached, Outside};
    use super::*;
    use crate::key::KeyEncoder;
    use crate::store::contract::{self, far};

    const LEASE: Duration = Duration::from_secs(1);
    const EXPIRE: Duration = Duration::from_secs(60);

    fn cluster(servers: &[&Memcached]) -> Cluster {
        cluster_of(servers, 2)
    }

    fn test_config() -> NodeConfig {
        NodeConfig {
            connect_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(1),
            retry_interval: Duration::from_secs(1),
            failure_threshold: 2,
            connections: 2,
            // As `CacheBuilder` sets it by default.
            max_value: crate::codec::DEFAULT_ITEM_BYTES
                + crate::codec::FRESHNESS_BYTES
                + signing::TAG_BYTES,
            chunk_bytes: crate::codec::DEFAULT_ITEM_BYTES,
            max_assembled: crate::codec::DEFAULT_MAX_VALUE_BYTES + crate::codec::FRESHNESS_BYTES,
            greet: true,
            credentials: None,
            tls: None,
            signer: None,
        }
    }

    fn cluster_of(servers: &[&Memcached], connections: usize) -> Cluster {
        let ring = Ring::new(servers.iter().map(|s| s.addr().parse().unwrap())).unwrap();
        Cluster::new(
            ring,
            &NodeConfig {
                connections,
                ..test_config()
            },
        )
    }

    fn key(k: &str) -> WireKey {
        KeyEncoder::new("t").unwrap().encode(k)
    }

    async fn won(cluster: &Cluster, k: &WireKey) -> Lease {
        contract::won(cluster, k, LEASE).await
    }

    async fn hit(cluster: &Cluster, k: &WireKey) -> Item {
        contract::hit(cluster, k, LEASE).await
    }

    #[tokio::test]
    async fn the_lease_is_won_once_and_the_fill_is_seen_by_everyone() {
        let server = Memcached::start().await;
        let (a, b) = (cluster(&[&server]), cluster(&[&server]));
        let k = key("k");
        let lease = won(&a, &k).await;
        assert!(
            matches!(
                b.lookup(&k, LEASE, Duration::ZERO, false, far())
                    .await
                    .unwrap(),
                Lookup::Busy
            ),
            "another client waits"
        );
        let data = Bytes::from_static(b"\"v\"");
        assert_eq!(
            a.fill(&k, lease, &data, 42, EXPIRE).await.unwrap(),
            Fill::Stored
        );
        let item = hit(&b, &k).await;
        assert_eq!((&item.data[..], item.flags), (&b"\"v\""[..], 42));
        let outside = Outside::connect(&server.addr()).await;
        assert_eq!(
            outside.get("t:k").await,
            Some((b"\"v\"".to_vec(), 42)),
            "a plain memcached item"
        );
    }

    #[tokio::test]
    async fn a_fill_after_the_lease_expired_and_another_filled_is_rejected() {
        let server = Memcached::start().await;
        let cluster = cluster(&[&server]);
        let k = key("late");
        let late = won(&cluster, &k).await;
        // memcached has no event for an expiring stub: look until the lease can be won again.
        let fresh = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match cluster
                    .lookup(&k, LEASE, Duration::ZERO, false, far())
                    .await
                    .unwrap()
                {
                    Lookup::Won(lease) => break lease,
                    Lookup::Busy => tokio::time::sleep(Duration::from_millis(20)).await,
                    Lookup::Hit(item) | Lookup::Refresh(item) => {
                        panic!("nobody filled it: {item:?}")
                    }
                }
            }
        })
        .await
        .expect("a one-second lease expires within 5 s");
        contract::a_late_fill_is_refused(&cluster, &k, late, fresh, LEASE).await;
    }

    /// Sends `line` to `server` on a connection of its own; the first line of the answer.
    async fn raw(server: &Memcached, line: &str) -> String {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let mut stream =
            BufReader::new(tokio::net::TcpStream::connect(server.addr()).await.unwrap());
        stream.get_mut().write_all(line.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_line(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn a_lease_from_before_a_restart_cannot_fill_another_clients_lease_after_it() {
        let mut server = Memcached::start().await;
        let cluster = cluster(&[&server]);
        let k = key("restart");
        let ours = won(&cluster, &k).await;
        server.restart().await;
        // CAS values start again on the new run: another client's lease on the key may carry
        // the very CAS of ours (here it does: each is the first item of its run).
        let theirs = raw(&server, "mg t:restart c N30\r\n").await;
        assert_eq!(
            theirs,
            format!("HD c{} W\r\n", ours.cas),
            "the scenario: the same CAS on the new run"
        );
        let data = Bytes::from_static(b"\"stale\"");
        assert_eq!(
            cluster.fill(&k, ours, &data, 0, EXPIRE).await.unwrap(),
            Fill::LeaseLost,
            "a lease of the old run is not sent to the new one"
        );
        cluster.release(&k, ours).await.unwrap();
        assert_eq!(
            raw(&server, "mg t:restart v c\r\n").await,
            format!("VA 0 c{} Z\r\n", ours.cas),
            "the other client's lease is intact: neither filled nor released by us"
        );
    }

    #[tokio::test]
    async fn servers_distcache_cannot_use_fail_lookups_with_the_reason() {
        let server = Memcached::start_with(&["-C"]).await;
        let cluster = cluster(&[&server]);
        let err = cluster
            .lookup(&key("k"), LEASE, Duration::ZERO, false, far())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("CAS disabled (memcached -C)"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_value_near_its_end_is_refreshed_by_one() {
        let server = Memcached::start().await;
        contract::a_value_near_its_end_is_refreshed_by_one(&cluster(&[&server]), &key("n"), LEASE)
            .await;
    }

    #[tokio::test]
    async fn a_refresh_whose_caller_gave_up_leaves_the_value() {
        let server = Memcached::start().await;
        // One connection: its requests are answered in the order sent.
        let cluster = cluster_of(&[&server], 1);
        let k = key("gave-up");
        let lease = won(&cluster, &k).await;
        let data = Bytes::from_static(b"1");
        assert_eq!(
            cluster.fill(&k, lease, &data, 0, EXPIRE).await.unwrap(),
            Fill::Stored
        );
        let window = EXPIRE * 2;
        {
            // Sent on its first poll, then dropped: its reply (a win on the live value) comes to
            // a connection whose caller is gone.
            let mut lookup = std::pin::pin!(cluster.lookup(&k, LEASE, window, false, far()));
            tokio::select! {
                biased;
                _ = &mut lookup => panic!("answered before its request could be read"),
                () = std::future::ready(()) => {}
            }
        }
        // This reply comes after the abandoned one was handled, so anything the connection sent
        // about that one is answered before the next lookup.
        assert!(
            matches!(
                cluster
                    .lookup(&k, LEASE, window, false, far())
                    .await
                    .unwrap(),
                Lookup::Hit(_)
            ),
            "the abandoned lookup was sent and told to refresh"
        );
        assert_eq!(
            &hit(&cluster, &k).await.data[..],
            b"1",
            "the value is still there for everyone"
        );
    }

    #[tokio::test]
    async fn a_window_as_long_as_the_values_life_refreshes_it_at_once() {
        // memcached answers `W` while fewer than `R` whole seconds are left: a 60 s window must
        // be sent as R61 to cover a value stored for 60 s.
        let server = Memcached::start().await;
        let cluster = cluster(&[&server]);
        let k = key("whole");
        let lease = won(&cluster, &k).await;
        let data = Bytes::from_static(b"1");
        assert_eq!(
            cluster.fill(&k, lease, &data, 0, EXPIRE).await.unwrap(),
            Fill::Stored
        );
        assert!(matches!(
            cluster
                .lookup(&k, LEASE, EXPIRE, false, far())
                .await
                .unwrap(),
            Lookup::Refresh(_)
        ));
    }

    #[test]
    fn refresh_windows_are_whole_seconds_plus_one_capped_at_thirty_days() {
        assert_eq!(refresh_token(Duration::ZERO), 0);
        assert_eq!(refresh_token(Duration::from_millis(999)), 0);
        assert_eq!(refresh_token(Duration::from_millis(2900)), 3);
        assert_eq!(
            refresh_token(Duration::from_secs(40 * 86400)),
            MAX_RELATIVE_TTL as u32
        );
    }

    #[tokio::test]
    async fn an_extended_lease_outlives_its_first_ttl() {
        let server = Memcached::start().await;
        contract::an_extended_lease_outlives_its_first_ttl(
            &cluster(&[&server]),
            &key("e"),
            &key("f"),
        )
        .await;
    }

    /// The default `item_bytes` fits memcached's default item size (`-I 1m`) under the longest
    /// key, with what distcache adds to a value: a signature (a freshness header is counted in
    /// `item_bytes`, and is here as a margin). Stored as one item, as `set_item` does for every
    /// value of at most `item_bytes` (a larger one is chunked).
    #[tokio::test]
    async fn the_default_item_size_fits_memcached_s_default_under_the_longest_key() {
        let server = Memcached::start().await;
        let cluster = cluster(&[&server]);
        // 250 bytes on the wire: the namespace `t:` and 248 more.
        let k = key(&"k".repeat(248));
        assert_eq!(k.as_str().len(), 250);
        let lease = won(&cluster, &k).await;
        let largest =
            crate::codec::DEFAULT_ITEM_BYTES + crate::codec::FRESHNESS_BYTES + signing::TAG_BYTES;
        let data = Bytes::from(vec![b'7'; largest]);
        let write = Write {
            operation: "fill",
            expire: Duration::from_secs(60),
            return_cas: false,
        };
        let (filled, _) = cluster
            .set_item(&k, lease, (&data, 5), write, None)
            .await
            .unwrap();
        assert_eq!(filled, Fill::Stored);
        assert_eq!(
            hit(&cluster, &k).await.data.len(),
            largest,
            "and read back whole"
        );
    }

    #[tokio::test]
    async fn a_swap_replaces_only_the_version_it_read() {
        let server = Memcached::start().await;
        contract::a_swap_replaces_only_the_version_it_read(&cluster(&[&server]), &key("s"), LEASE)
            .await;
    }

    #[tokio::test]
    async fn a_lookup_tells_the_life_left_when_asked() {
        let server = Memcached::start().await;
        let cluster = cluster(&[&server]);
        contract::a_lookup_tells_the_life_left_when_asked(&cluster, &key("l"), LEASE).await;
    }

    /// The store contract over TLS with a login (`memcached -Z -Y`), certificates made here.
    #[cfg(feature = "tls")]
    #[tokio::test]
    async fn the_contract_holds_over_tls_with_a_login() {
        let pki = super::pki::Pki::new();
        let cert = pki.server("contract", &["127.0.0.1"], false, false);
        let authfile = pki.dir().join("authfile");
        super::pki::write_secret(&authfile, "alice:contract-password\n");
        let mut args = cert.args();
        args.extend(["-Y".to_owned(), authfile.display().to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Memcached::start_with(&args).await;
        let tls = tls::TlsSource::CaFile(pki.ca_file()).settings().unwrap();
        let secure = || {
            let ring = Ring::new([server.addr().parse().unwrap()]).unwrap();
            Cluster::new(
                ring,
                &NodeConfig {
                    credentials: Some(Arc::new(
                        Credentials::new("alice".into(), "contract-password".into()).unwrap(),
                    )),
                    tls: Some(tls.clone()),
                    ..test_config()
                },
            )
        };
        contract::release_and_invalidate_free_the_key(&secure(), &key("r"), LEASE).await;
        contract::a_swap_replaces_only_the_version_it_read(&secure(), &key("s"), LEASE).await;
        contract::a_value_near_its_end_is_refreshed_by_one(&secure(), &key("n"), LEASE).await;
        contract::an_extended_lease_outlives_its_first_ttl(&secure(), &key("e"), &key("f")).await;
        let cluster = secure();
        let k = key("late");
        let late = won(&cluster, &k).await;
        cluster.release(&k, late).await.unwrap();
        let fresh = won(&cluster, &k).await;
        contract::a_late_fill_is_refused(&cluster, &k, late, fresh, LEASE).await;
    }

    #[tokio::test]
    async fn release_frees_the_lease_and_invalidate_voids_it() {
        let server = Memcached::start().await;
        contract::release_and_invalidate_free_the_key(&cluster(&[&server]), &key("r"), LEASE).await;
    }

    /// `len` bytes that do not repeat.
    fn noise(len: usize, seed: u64) -> Bytes {
        let mut rng = fastrand::Rng::with_seed(seed);
        Bytes::from((0..len).map(|_| rng.u8(..)).collect::<Vec<u8>>())
    }

    #[tokio::test]
    async fn a_value_over_item_bytes_is_stored_in_chunks_across_the_ring_and_read_back_whole() {
        let servers = Memcached::start_many::<3>().await;
        // Chunks of 64 KiB: forty of them, which three servers all hold some of.
        const CHUNK: usize = 64 * 1024;
        let ring = Ring::new(servers.iter().map(|s| s.addr().parse().unwrap())).unwrap();
        let cluster = Cluster::new(
            ring,
            &NodeConfig {
                chunk_bytes: CHUNK,
                ..test_config()
            },
        );
        let k = key("big");
        let value = noise(40 * CHUNK - 100, 1);
        let lease = won(&cluster, &k).await;
        assert_eq!(
            cluster.fill(&k, lease, &value, 42, EXPIRE).await.unwrap(),
            Fill::Stored
        );
        let mut item = hit(&cluster, &k).await;
        assert_eq!(
            item.flags,
            chunks::MANIFEST_FLAGS,
            "a lookup finds the manifest"
        );
        cluster.assemble(&k, &mut item, far()).await.unwrap();
        assert_eq!(item.flags, 42);
        assert!(item.data == value, "read back whole");
        // As memcached holds it: a manifest under the key, chunks under keys of their own, each
        // on the server the ring gives its key.
        let home = cluster.home_server(&k).to_string();
        let (manifest, flags) = Outside::connect(&home).await.get("t:big").await.unwrap();
        assert_eq!(flags, chunks::MANIFEST_FLAGS);
        let manifest = chunks::Manifest::read(&manifest).unwrap();
        assert_eq!((manifest.count, manifest.total), (40, value.len() as u64));
        let mut holders = std::collections::HashSet::new();
        for index in 0..manifest.count {
            let chunk = manifest.chunk_key(&k, index);
            let holder = cluster.home_server(&chunk).to_string();
            let (bytes, flags) = Outside::connect(&holder)
                .await
                .get(chunk.as_str())
                .await
                .unwrap();
            assert_eq!(flags, chunks::CHUNK_FLAGS);
            let start = chunks::HEAD_BYTES + index as usize * CHUNK;
            assert!(
                bytes[..] == value[start..start + bytes.len()],
                "chunk {index}"
            );
            holders.insert(holder);
        }
        assert_eq!(holders.len(), 3, "chunks are spread like any keys");
    }

    /// A cluster of `servers` in chunks of 64 KiB, whose requests are bounded by 200 ms to
    /// connect and 2 s without progress; and that bound.
    fn bounded_cluster(servers: &[String]) -> (Cluster, Duration) {
        let ring = Ring::new(servers.iter().map(|s| s.parse().unwrap())).unwrap();
        let (connect_timeout, io_timeout) = (Duration::from_millis(200), Duration::from_secs(2));
        let config = NodeConfig {
            connect_timeout,
            io_timeout,
            chunk_bytes: 64 * 1024,
            ..test_config()
        };
        (Cluster::new(ring, &config), connect_timeout + io_timeout)
    }

    /// Fills `k` with `len` bytes, which must fail within `bound` and the slack of 250 ms.
    async fn fill_fails_within(
        cluster: &Cluster,
        k: &WireKey,
        lease: Lease,
        len: usize,
        bound: Duration,
    ) -> StoreError {
        let started = tokio::time::Instant::now();
        let filled = cluster.fill(k, lease, &noise(len, 4), 0, EXPIRE).await;
        let took = started.elapsed();
        assert!(
            took < bound + Duration::from_millis(250),
            "{took:?}, over the bound of {bound:?}"
        );
        filled.expect_err("not answered in time")
    }

    /// A fill in chunks is one store operation: the chunks' round and the manifest's share one
    /// request's bound (`connect_timeout + io_timeout`), however slowly each is answered.
    #[tokio::test]
    async fn a_fill_in_chunks_is_bounded_as_one_request() {
        let server = Memcached::start().await;
        let slow = proxy::FaultProxy::start(&server.addr()).await;
        let (cluster, bound) = bounded_cluster(&[slow.addr()]);
        let k = key("slow");
        let lease = won(&cluster, &k).await;
        // Each round is answered within io_timeout; the two together take longer than the bound.
        slow.set(proxy::Fault::Latency(Duration::from_millis(1300)));
        let err = fill_fails_within(&cluster, &k, lease, 200 * 1024, bound).await;
        assert!(
            matches!(err.kind, StoreErrorKind::Timeout(t) if t == bound),
            "the manifest's reply comes after the bound: {err}"
        );
    }

    /// The same when a chunk's own node hangs: the round that asks for the chunks (their touch)
    /// ends with the fill's bound, not with a request's own bound and another on the next node.
    /// (The chunk writes' share of the bound is the test above's: with a bound of their own, it
    /// fails.)
    #[tokio::test]
    async fn a_fill_in_chunks_to_a_hung_node_is_bounded_as_one_request() {
        let [lease_server, hung] = Memcached::start_many::<2>().await;
        let slow = proxy::FaultProxy::start(&lease_server.addr()).await;
        let (cluster, bound) = bounded_cluster(&[slow.addr(), hung.addr()]);
        let on = |server: &str| {
            (0..)
                .map(|i| key(&format!("k{i}")))
                .find(|k| cluster.home_server(k).to_string() == server)
                .unwrap()
        };
        // Both nodes connected; the key's lease on the proxied one.
        won(&cluster, &on(&hung.addr())).await;
        let k = on(&slow.addr());
        let lease = won(&cluster, &k).await;
        hung.pause();
        slow.set(proxy::Fault::Latency(Duration::from_millis(1300)));
        let err = fill_fails_within(&cluster, &k, lease, 640 * 1024, bound).await;
        hung.resume();
        // The connection's own timer (`io_timeout` without progress) or the fill's bound.
        assert!(matches!(err.kind, StoreErrorKind::Timeout(_)), "{err}");
    }

    #[tokio::test]
    async fn an_item_over_the_servers_item_size_is_refused_as_too_large() {
        // A server whose item size is under `item_bytes`: neither a single item over it nor a
        // value's chunks can be stored.
        let server = Memcached::start_with(&["-I", "512k"]).await;
        let single = noise(700 * 1024, 2);
        let chunked = noise(2 * 1024 * 1024, 3);
        let small = Bytes::from_static(b"1");
        // Told the item size by the handshake: not sent, and the lease is still ours.
        let cluster = cluster(&[&server]);
        for (name, big) in [("single", &single), ("chunked", &chunked)] {
            let k = key(name);
            let lease = won(&cluster, &k).await;
            assert_eq!(
                cluster.fill(&k, lease, big, 0, EXPIRE).await.unwrap(),
                Fill::TooLarge,
                "{name}"
            );
            assert_eq!(
                cluster.fill(&k, lease, &small, 0, EXPIRE).await.unwrap(),
                Fill::Stored,
                "{name}: the lease survived: the key can be marked under it"
            );
        }
        // Not told (no handshake): sent, and refused by the server.
        let ring = Ring::new([server.addr().parse().unwrap()]).unwrap();
        let untold = Cluster::new(
            ring,
            &NodeConfig {
                greet: false,
                ..test_config()
            },
        );
        // A single item: memcached deletes the stub with it.
        let k = key("single-untold");
        let lease = won(&untold, &k).await;
        assert_eq!(
            untold.fill(&k, lease, &single, 0, EXPIRE).await.unwrap(),
            Fill::TooLarge
        );
        let lease = won(&untold, &k).await;
        assert_eq!(
            untold.fill(&k, lease, &small, 0, EXPIRE).await.unwrap(),
            Fill::Stored,
            "the connection is still in step"
        );
        // Chunks: refused under their own keys, and the lease is still ours.
        let k = key("chunked-untold");
        let lease = won(&untold, &k).await;
        assert_eq!(
            untold.fill(&k, lease, &chunked, 0, EXPIRE).await.unwrap(),
            Fill::TooLarge
        );
        assert_eq!(
            untold.fill(&k, lease, &small, 0, EXPIRE).await.unwrap(),
            Fill::Stored,
            "the lease survived the refused chunks"
        );
    }

    #[tokio::test]
    async fn stale_items_from_other_clients_are_recomputed_by_one() {
        let server = Memcached::start().await;
        let cluster = cluster(&[&server]);
        let outside = Outside::connect(&server.addr()).await;
        outside.set("t:s", b"old", 0).await;
        // Another client marks it stale (md ... I), as dogpile-style clients do.
        let mut raw = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut raw, b"md t:s I T30\r\n")
            .await
            .unwrap();
        let mut reply = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut raw, &mut reply)
            .await
            .unwrap();
        assert_eq!(&reply, b"HD\r\n");
        won(&cluster, &key("s")).await;
        assert!(
            matches!(
                cluster
                    .lookup(&key("s"), LEASE, Duration::ZERO, false, far())
                    .await
                    .unwrap(),
                Lookup::Busy
            ),
            "the stale value is not served"
        );
    }

    #[test]
    fn ttls_are_whole_seconds_and_absolute_past_thirty_days() {
        assert_eq!(ttl_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_seconds(Duration::from_secs(60)), 60);
        assert_eq!(
            ttl_seconds(Duration::from_secs(MAX_RELATIVE_TTL)),
            MAX_RELATIVE_TTL as u32
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let absolute = u64::from(ttl_seconds(Duration::from_secs(MAX_RELATIVE_TTL + 1)));
        assert!(
            (now + MAX_RELATIVE_TTL..=now + MAX_RELATIVE_TTL + 2).contains(&absolute),
            "{absolute} vs now {now}"
        );
    }
}
