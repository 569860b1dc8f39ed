//! The verbs a store implements. The algorithm over them is in `flight.rs`, written once.
//!
//! The verbs are memcached's meta commands (mg, ms, md): the store itself hands out the
//! right to compute, atomically, with the read.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use self::memcached::Cluster;
pub(crate) use self::memcached::chunks::MANIFEST_FLAGS;
use self::memory::MemoryStore;
use crate::key::WireKey;

#[cfg(test)]
pub(crate) mod contract;
pub(crate) mod memcached;
pub(crate) mod memory;

/// `d` in whole seconds, rounded up, as memcached counts TTLs: the one place that rounds (the
/// in-process store keeps exact durations).
#[inline]
pub(crate) fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A stored value, its client flags, and its version.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub(crate) data: Bytes,
    pub(crate) flags: u32,
    /// `release` with it removes this item, and nothing that replaced it meanwhile.
    pub(crate) version: Lease,
    /// For a lookup that asked: how long the item lives at least, in milliseconds counted from
    /// when the lookup was sent ([`Item::life`]). Four bytes, in the padding after `flags`: an
    /// item is moved several times on every hit.
    pub(crate) life_ms: u32,
}

/// `Item::life_ms` when not asked, or when the item does not expire.
pub(crate) const NO_LIFE: u32 = u32::MAX;

impl Item {
    /// How long the item lives at least, counted from when the lookup was sent; `None` if the
    /// lookup did not ask, or the item does not expire. A life past 49 days reads as 49 days.
    pub(crate) fn life(&self) -> Option<Duration> {
        (self.life_ms != NO_LIFE).then(|| Duration::from_millis(self.life_ms.into()))
    }

    /// `life` as `Item::life_ms` keeps it: cut to 49 days, never `NO_LIFE`.
    pub(crate) fn life_ms(life: Duration) -> u32 {
        u32::try_from(life.as_millis()).map_or(NO_LIFE - 1, |ms| ms.min(NO_LIFE - 1))
    }
}

/// The CAS of an item on the node that holds it. As the right to compute a key's value, it is
/// the CAS of the empty stub the store created for us: only a fill or release that carries it
/// takes effect, so a late holder cannot overwrite a newer value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    pub(crate) cas: u64,
    /// The node that granted it, which alone can honour it (0 for the in-process store).
    pub(crate) node: usize,
    /// The run of that node's server that granted it: CAS values start again when memcached
    /// restarts, so the same CAS on the next run is another item (0: unknown, or in-process).
    pub(crate) instance: u64,
}

/// What a lookup found.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// A value: decode it and return it.
    Hit(Item),
    /// No value, and the lease is ours: compute, then fill or release.
    Won(Lease),
    /// No value, and someone else holds the lease: wait, then look again.
    Busy,
    /// A value with less than the lookup's refresh window left to live, and this caller is the
    /// first to be told: return it, and compute its successor, to be filled with the item's
    /// version as the lease. Every other lookup meanwhile finds a plain hit.
    Refresh(Item),
}

/// What a fill did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Stored: later lookups find it until it expires.
    Stored,
    /// Not stored: our lease had expired or been taken over (the key was invalidated, or
    /// another holder filled it), and the value in the store, if any, is newer than ours.
    LeaseLost,
    /// Not stored: the server refused the item's size.
    TooLarge,
}

/// A store operation that failed: the store could not be asked or did not answer in time.
#[derive(Debug, thiserror::Error)]
#[error("{operation} on {node}: {kind}")]
pub(crate) struct StoreError {
    pub(crate) operation: &'static str,
    pub(crate) node: String,
    pub(crate) kind: StoreErrorKind,
}

/// The in-process store never fails; these come from the memcached store.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreErrorKind {
    #[error("the call's deadline passed")]
    Deadline,
    /// With why the key's own node was marked down, when known: a refused login or a failed TLS
    /// handshake is said on every call, not only on the one that met it.
    #[error("every node is marked down{}", because(.0))]
    NoNode(Option<String>),
    #[error("the node is marked down{}", because(.0))]
    MarkedDown(Option<String>),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Io(#[source] std::io::Error),
    #[error("the server refused the connection: {0}")]
    Refused(#[source] std::io::Error),
    #[error("{0}")]
    Connection(String),
    #[error("server error: {0}")]
    Server(String),
    #[error("the server restarted since the lease was won; the lease went with it")]
    Restarted,
    /// The server's TLS, or its login, refused the connection: a wrong password, a certificate
    /// from an unknown authority, a server without TLS. Said in the words of `auth.rs` and
    /// `tls.rs`.
    #[error("{0}")]
    Security(String),
}

/// `" (why)"`, or nothing.
fn because(why: &Option<String>) -> String {
    why.as_ref()
        .map(|why| format!(" ({why})"))
        .unwrap_or_default()
}

impl StoreError {
    /// As `crate::BoxError` (written out: the store does not depend on the public errors).
    pub(crate) fn into_box(self) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        Box::new(self)
    }

    /// Whether the call's deadline passed, rather than the store failing.
    pub(crate) fn is_deadline(&self) -> bool {
        matches!(self.kind, StoreErrorKind::Deadline)
    }
}

/// A place to keep values, with memcached's lease semantics.
///
/// Implementations are cheap handles (`Clone` shares the store), so that a lease dropped
/// with a cancelled call can still be handed back from a spawned task.
pub(crate) trait Store: Clone + Send + Sync + 'static {
    /// Reads `key`; on a miss, takes the lease for `lease_ttl` if nobody holds it. A value with
    /// less than `refresh` left to live is a [`Lookup::Refresh`] for the first caller to see it
    /// so (zero: never). With `ask_life`, a value comes with its [`Item::life`]. Fails with
    /// [`StoreErrorKind::Deadline`] at `deadline`, which says nothing of the store's health.
    fn lookup(
        &self,
        key: &WireKey,
        lease_ttl: Duration,
        refresh: Duration,
        ask_life: bool,
        deadline: Instant,
    ) -> impl Future<Output = Result<Lookup, StoreError>> + Send;

    /// Replaces an item a lookup found under [`MANIFEST_FLAGS`] (a big value's manifest) with
    /// the value it stands for; or, if that cannot be had (a chunk missing or not the manifest's),
    /// with an item that decodes as a miss. Fails as a lookup does (at `deadline`, or if the store
    /// cannot be asked). The in-process store keeps every value whole and writes no manifests.
    fn assemble(
        &self,
        key: &WireKey,
        item: &mut Item,
        deadline: Instant,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stores `data` for `expire`, if `lease` is still the key's current lease.
    fn fill(
        &self,
        key: &WireKey,
        lease: Lease,
        data: &Bytes,
        flags: u32,
        expire: Duration,
    ) -> impl Future<Output = Result<Fill, StoreError>> + Send;

    /// Replaces the value at `version` (as a lookup found it) with `data`, to live `expire` from
    /// now; the new value's version, or `None` if the key's value changed or went meanwhile (or,
    /// as for a fill, the store refused its size).
    fn swap(
        &self,
        key: &WireKey,
        version: Lease,
        data: &Bytes,
        flags: u32,
        expire: Duration,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;

    /// Keeps `lease` for another `lease_ttl`, counted from now, if it is still the key's current
    /// lease; `false` if it is not (it expired, was taken over or filled, or the key was
    /// invalidated), and then nothing of the key changes, except as the memcached store's
    /// documentation says.
    fn extend(
        &self,
        key: &WireKey,
        lease: Lease,
        lease_ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Hands the lease back early, if it is still the key's current lease, so that the next
    /// lookup wins it at once; or removes an item, if it is still that version.
    fn release(
        &self,
        key: &WireKey,
        lease: Lease,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Hands `lease` back when the store can next be reached, after a fill or hand-back that
    /// failed without saying whether it took effect: a fill that was stored changed the item's
    /// CAS, and then this does nothing. Not for the version of a value (a refresh's).
    fn release_later(&self, key: &WireKey, lease: Lease);

    /// Removes the key's value, or takes away its lease: the next lookup misses and wins the
    /// lease, and a fill with an older lease is refused.
    fn invalidate(&self, key: &WireKey) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The stores a [`Cache`](crate::Cache) can sit on: one type, so that the algorithm is compiled once per value
/// type, and a `match` per store operation picks the store.
#[derive(Debug, Clone)]
pub(crate) enum AnyStore {
    Memory(MemoryStore),
    Memcached(Cluster),
}

impl Store for AnyStore {
    async fn lookup(
        &self,
        key: &WireKey,
        lease_ttl: Duration,
        refresh: Duration,
        ask_life: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Lookup, StoreError> {
        match self {
            AnyStore::Memory(s) => s.lookup(key, lease_ttl, refresh, ask_life, deadline).await,
            AnyStore::Memcached(s) => s.lookup(key, lease_ttl, refresh, ask_life, deadline).await,
        }
    }

    async fn assemble(
        &self,
        key: &WireKey,
        item: &mut Item,
        deadline: Instant,
    ) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(s) => s.assemble(key, item, deadline).await,
            AnyStore::Memcached(s) => s.assemble(key, item, deadline).await,
        }
    }

    async fn fill(
        &self,
        key: &WireKey,
        lease: Lease,
        data: &Bytes,
        flags: u32,
        expire: Duration,
    ) -> Result<Fill, StoreError> {
        match self {
            AnyStore::Memory(s) => s.fill(key, lease, data, flags, expire).await,
            AnyStore::Memcached(s) => s.fill(key, lease, data, flags, expire).await,
        }
    }

    async fn swap(
        &self,
        key: &WireKey,
        version: Lease,
        data: &Bytes,
        flags: u32,
        expire: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        match self {
            AnyStore::Memory(s) => s.swap(key, version, data, flags, expire).await,
            AnyStore::Memcached(s) => s.swap(key, version, data, flags, expire).await,
        }
    }

    async fn extend(
        &self,
        key: &WireKey,
        lease: Lease,
        lease_ttl: Duration,
    ) -> Result<bool, StoreError> {
        match self {
            AnyStore::Memory(s) => s.extend(key, lease, lease_ttl).await,
            AnyStore::Memcached(s) => s.extend(key, lease, lease_ttl).await,
        }
    }

    async fn release(&self, key: &WireKey, lease: Lease) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(s) => s.release(key, lease).await,
            AnyStore::Memcached(s) => s.release(key, lease).await,
        }
    }

    fn release_later(&self, key: &WireKey, lease: Lease) {
        match self {
            AnyStore::Memory(s) => s.release_later(key, lease),
            AnyStore::Memcached(s) => s.release_later(key, lease),
        }
    }

    async fn invalidate(&self, key: &WireKey) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(s) => s.invalidate(key).await,
            AnyStore::Memcached(s) => s.invalidate(key).await,
        }
    }
}
