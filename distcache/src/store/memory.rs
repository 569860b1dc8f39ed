//! The in-process store: memcached's lease semantics in a sharded, bounded map, for one process.
//!
//! It is the embedded default (demos, tests, a single process) and the reference the memcached
//! store is tested against. Like memcached, it holds at most so many bytes (and entries): past
//! them it evicts, with quick_cache's CLOCK-Pro policy (scan-resistant, close to S3-FIFO), so
//! that a process memoizing ever new keys stays within its budget. Expired entries go when read,
//! and first when a shard needs room; a lease stub, whose holder is computing the value, is never
//! evicted while its lease lasts.

use std::cell::Cell;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};
use tokio::time::Instant;

use super::{Fill, Item, Lease, Lookup, NO_LIFE, Store, StoreError};
use crate::key::WireKey;

/// Shards, each behind its own lock: a lookup must read or lease a key atomically, and 16 locks
/// keep tasks on different keys from queueing behind each other.
const SHARDS: usize = 16;

/// What an entry costs besides its key and value bytes: the entry itself and the map's
/// bookkeeping for it (list links, clock bits, a hash-table slot), and half again of that for the
/// evicted keys' "ghosts", which the policy remembers up to half the shard's entries. An estimate,
/// so that a byte budget of tiny values means about what it says.
const ENTRY_OVERHEAD: usize =
    (std::mem::size_of::<Box<str>>() + std::mem::size_of::<Entry>() + 24) * 3 / 2;

/// How much the in-process store keeps. Each of its shards gets a sixteenth of each budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemoryLimits {
    /// The most entries (values and leases) kept.
    pub(crate) max_entries: usize,
    /// The most bytes kept: keys, values and [`ENTRY_OVERHEAD`] per entry.
    pub(crate) max_bytes: usize,
}

impl MemoryLimits {
    /// 100,000 entries.
    pub(crate) const DEFAULT_MAX_ENTRIES: usize = 100_000;
    /// 64 MiB: memcached's own default memory (`-m 64`).
    pub(crate) const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            max_entries: Self::DEFAULT_MAX_ENTRIES,
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shards: [Mutex<Shard>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
    next_cas: AtomicU64,
}

impl Default for Inner {
    fn default() -> Self {
        Inner::new(MemoryLimits::default())
    }
}

type Map = quick_cache::unsync::Cache<Box<str>, Entry, Cost, DefaultHashBuilder, PinLeases>;

#[derive(Debug)]
struct Shard {
    map: Map,
    cost: Cost,
    /// Writes since expired entries were last swept out.
    writes: usize,
    /// No entry expires before this (it may be earlier than the first that does: entries
    /// replaced or removed since the last sweep are not taken out of it); `None`: no entry.
    earliest_expiry: Option<Instant>,
}

#[derive(Debug)]
struct Entry {
    /// `None` for a lease stub: someone is computing the value.
    value: Option<Item>,
    cas: u64,
    expires: Instant,
    /// A lookup has been told to refresh this value (as memcached's `W` on `R`).
    refresh_sent: bool,
}

/// An entry's bytes: key, value and [`ENTRY_OVERHEAD`].
fn footprint(key: &str, entry: &Entry) -> u64 {
    let value = entry.value.as_ref().map_or(0, |item| item.data.len());
    (key.len() + value + ENTRY_OVERHEAD) as u64
}

/// An entry's weight in its shard's byte budget: its bytes, but at least the budget's share of
/// one entry. quick_cache bounds one weight; charging each entry at least `max_bytes /
/// max_entries` makes that one bound keep both: a full shard of tiny values holds at most its
/// entries, and no shard ever holds more than its bytes.
#[derive(Debug, Clone, Copy)]
struct Cost {
    min: u64,
}

impl Cost {
    fn of(&self, key: &str, entry: &Entry) -> u64 {
        footprint(key, entry).max(self.min)
    }
}

impl Weighter<Box<str>, Entry> for Cost {
    fn weight(&self, key: &Box<str>, entry: &Entry) -> u64 {
        self.of(key, entry)
    }
}

/// Keeps lease stubs out of eviction while their lease lasts: evicting one would let a second
/// caller win the key's lease while the first still computes. A stub whose lease has expired is
/// nobody's (a lookup would replace it) and goes like any other entry.
#[derive(Debug, Clone, Copy)]
struct PinLeases;

impl Lifecycle<Box<str>, Entry> for PinLeases {
    type RequestState = ();

    fn is_pinned(&self, _key: &Box<str>, entry: &Entry) -> bool {
        entry.value.is_none() && entry.expires > Instant::now()
    }
}

impl MemoryStore {
    pub(crate) fn new(limits: MemoryLimits) -> Self {
        MemoryStore {
            inner: Arc::new(Inner::new(limits)),
        }
    }

    /// Stores `data` if `lease` is the key's current lease or version; how it went, and the
    /// version of what was stored.
    fn write(
        &self,
        key: &WireKey,
        lease: Lease,
        data: &Bytes,
        flags: u32,
        expire: Duration,
    ) -> (Fill, Lease) {
        let now = Instant::now();
        let mut shard = self.inner.shard(key.as_str());
        shard.drop_expired(key.as_str(), now);
        let ours = shard.map.peek(key.as_str()).map(|e| e.cas) == Some(lease.cas);
        if !ours {
            return (Fill::LeaseLost, lease);
        }
        let version = Lease {
            cas: self.inner.cas(),
            node: 0,
            instance: 0,
        };
        let entry = Entry {
            value: Some(Item {
                data: data.clone(),
                flags,
                version,
                life_ms: NO_LIFE,
            }),
            cas: version.cas,
            expires: now + expire,
            refresh_sent: false,
        };
        // A replacement, not a change in place: a value weighs more than the stub it replaces,
        // and only an insert makes room for it.
        shard.insert(key.as_str(), entry, now);
        // quick_cache refuses an entry too heavy for the shard (and drops the stub with it): the
        // key is then free for the next lookup, as after a release.
        if shard
            .map
            .peek(key.as_str())
            .is_some_and(|e| e.cas == version.cas)
        {
            (Fill::Stored, version)
        } else {
            (Fill::TooLarge, version)
        }
    }

    /// The entries and bytes (as [`footprint`] counts them) held now.
    #[cfg(test)]
    pub(crate) fn usage(&self) -> (usize, u64) {
        let mut usage = (0, 0);
        for shard in &self.inner.shards {
            let shard = shard.lock().unwrap();
            usage.0 += shard.map.len();
            usage.1 += shard.map.iter().map(|(k, e)| footprint(k, e)).sum::<u64>();
        }
        usage
    }
}

impl Inner {
    fn new(limits: MemoryLimits) -> Self {
        // Rounded down, so that the shards together keep within the limits.
        let entries = (limits.max_entries / SHARDS).max(1);
        let bytes = (limits.max_bytes / SHARDS).max(1) as u64;
        let cost = Cost {
            min: bytes.div_ceil(entries as u64),
        };
        Inner {
            // The map allocates as it fills: `entries` only sizes its memory of evicted keys.
            shards: std::array::from_fn(|_| {
                Mutex::new(Shard {
                    map: Map::with(
                        entries,
                        bytes,
                        cost,
                        DefaultHashBuilder::default(),
                        PinLeases,
                    ),
                    cost,
                    writes: 0,
                    earliest_expiry: None,
                })
            }),
            hasher: Default::default(),
            next_cas: AtomicU64::new(1),
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        // A panic while holding a shard lock cannot leave an entry half-written: every
        // mutation below is a single call into the map. So a poisoned lock is still consistent.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cas(&self) -> u64 {
        self.next_cas.fetch_add(1, Ordering::Relaxed)
    }
}

impl Shard {
    /// Drops `key`'s entry if it has expired.
    fn drop_expired(&mut self, key: &str, now: Instant) {
        if self.map.peek(key).is_some_and(|e| e.expires <= now) {
            self.map.remove(key);
        }
    }

    /// Inserts or replaces `key`'s entry. When the shard is full, expired entries are swept out
    /// first, so that they, however popular they were, make the room rather than live ones. A
    /// sweep visits the whole shard: it runs only once something may have expired, and at most
    /// once per half a shard of writes, so that it costs O(1) a write amortized.
    fn insert(&mut self, key: &str, entry: Entry, now: Instant) {
        self.writes += 1;
        let full = self.map.weight() + self.cost.of(key, &entry) > self.map.capacity();
        if full
            && self.earliest_expiry.is_some_and(|t| t <= now)
            && self.writes >= self.map.len() / 2
        {
            self.writes = 0;
            let earliest = Cell::new(None);
            self.map.retain(|_, e| {
                let live = e.expires > now;
                if live {
                    earliest.set(Some(
                        earliest
                            .get()
                            .map_or(e.expires, |t: Instant| t.min(e.expires)),
                    ));
                }
                live
            });
            self.earliest_expiry = earliest.get();
        }
        self.earliest_expiry = Some(
            self.earliest_expiry
                .map_or(entry.expires, |t| t.min(entry.expires)),
        );
        self.map.insert(key.into(), entry);
    }
}

impl Store for MemoryStore {
    /// Nothing to put together: values are kept whole, and no manifest is ever written here (an
    /// item under its flags would have to come from the flight, which writes none).
    async fn assemble(&self, _: &WireKey, _: &mut Item, _: Instant) -> Result<(), StoreError> {
        Ok(())
    }

    async fn lookup(
        &self,
        key: &WireKey,
        lease_ttl: Duration,
        refresh: Duration,
        ask_life: bool,
        _deadline: Instant,
    ) -> Result<Lookup, StoreError> {
        let now = Instant::now();
        let mut shard = self.inner.shard(key.as_str());
        shard.drop_expired(key.as_str(), now);
        // `get_mut` counts as a use for the eviction policy; the flag it may set leaves the
        // entry's weight as it was, as quick_cache requires of an in-place change.
        if let Some(mut entry) = shard.map.get_mut(key.as_str()) {
            let Entry {
                value,
                expires,
                refresh_sent,
                ..
            } = &mut *entry;
            let Some(item) = value else {
                return Ok(Lookup::Busy);
            };
            let mut item = item.clone();
            if ask_life {
                // Exact: counted from now, which is after the lookup was sent.
                item.life_ms = Item::life_ms(*expires - now);
            }
            if !refresh.is_zero() && !*refresh_sent && *expires - now < refresh {
                *refresh_sent = true;
                return Ok(Lookup::Refresh(item));
            }
            return Ok(Lookup::Hit(item));
        }
        let cas = self.inner.cas();
        let stub = Entry {
            value: None,
            cas,
            expires: now + lease_ttl,
            refresh_sent: false,
        };
        shard.insert(key.as_str(), stub, now);
        Ok(Lookup::Won(Lease {
            cas,
            node: 0,
            instance: 0,
        }))
    }

    async fn fill(
        &self,
        key: &WireKey,
        lease: Lease,
        data: &Bytes,
        flags: u32,
        expire: Duration,
    ) -> Result<Fill, StoreError> {
        Ok(self.write(key, lease, data, flags, expire).0)
    }

    async fn swap(
        &self,
        key: &WireKey,
        version: Lease,
        data: &Bytes,
        flags: u32,
        expire: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        Ok(match self.write(key, version, data, flags, expire) {
            (Fill::Stored, version) => Some(version),
            _ => None,
        })
    }

    async fn extend(
        &self,
        key: &WireKey,
        lease: Lease,
        lease_ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut shard = self.inner.shard(key.as_str());
        shard.drop_expired(key.as_str(), now);
        // A later expiry leaves the shard's `earliest_expiry` a lower bound, as it must be, and
        // the entry's weight as it was.
        Ok(match shard.map.get_mut(key.as_str()) {
            Some(mut entry) if entry.cas == lease.cas && entry.value.is_none() => {
                entry.expires = now + lease_ttl;
                true
            }
            _ => false,
        })
    }

    async fn release(&self, key: &WireKey, lease: Lease) -> Result<(), StoreError> {
        self.inner
            .shard(key.as_str())
            .map
            .remove_if(key.as_str(), |e| e.cas == lease.cas);
        Ok(())
    }

    /// The in-process store never fails a fill or a hand-back.
    fn release_later(&self, _key: &WireKey, _lease: Lease) {}

    async fn invalidate(&self, key: &WireKey) -> Result<(), StoreError> {
        self.inner.shard(key.as_str()).map.remove(key.as_str());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyEncoder;
    use crate::store::contract::{self, far};

    fn key(k: &str) -> WireKey {
        KeyEncoder::new("").unwrap().encode(k)
    }

    const LEASE: Duration = Duration::from_secs(2);

    const EXPIRE: Duration = Duration::from_secs(10);

    async fn won(store: &MemoryStore, k: &WireKey) -> Lease {
        contract::won(store, k, LEASE).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_miss_leases_once_and_a_fill_serves_everyone() {
        let store = MemoryStore::default();
        let k = key("a");
        let lease = won(&store, &k).await;
        assert!(matches!(
            store.lookup(&k, LEASE, Duration::ZERO, false, far()).await,
            Ok(Lookup::Busy)
        ));
        let data = Bytes::from_static(b"1");
        assert_eq!(
            store.fill(&k, lease, &data, 7, EXPIRE).await.unwrap(),
            Fill::Stored
        );
        let item = contract::hit(&store, &k, LEASE).await;
        assert_eq!((&item.data[..], item.flags), (&b"1"[..], 7));
        tokio::time::advance(EXPIRE).await;
        won(&store, &k).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_is_won_again_and_the_late_fill_is_refused() {
        let store = MemoryStore::default();
        let k = key("a");
        let late = won(&store, &k).await;
        tokio::time::advance(LEASE).await;
        let fresh = won(&store, &k).await;
        contract::a_late_fill_is_refused(&store, &k, late, fresh, LEASE).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_extended_lease_outlives_its_first_ttl() {
        contract::an_extended_lease_outlives_its_first_ttl(
            &MemoryStore::default(),
            &key("e"),
            &key("f"),
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_value_near_its_end_is_refreshed_by_one() {
        contract::a_value_near_its_end_is_refreshed_by_one(
            &MemoryStore::default(),
            &key("r"),
            LEASE,
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_swap_replaces_only_the_version_it_read() {
        contract::a_swap_replaces_only_the_version_it_read(
            &MemoryStore::default(),
            &key("s"),
            LEASE,
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_tells_the_life_left_when_asked() {
        let store = MemoryStore::default();
        contract::a_lookup_tells_the_life_left_when_asked(&store, &key("l"), LEASE).await;
    }

    #[tokio::test(start_paused = true)]
    async fn release_and_invalidate_free_the_key() {
        contract::release_and_invalidate_free_the_key(&MemoryStore::default(), &key("a"), LEASE)
            .await;
    }

    /// Stores `len` bytes under `k` through a lease, as a flight would.
    async fn put(store: &MemoryStore, k: &WireKey, len: usize, expire: Duration) -> Fill {
        let lease = won(store, k).await;
        let data = Bytes::from(vec![b'x'; len]);
        store.fill(k, lease, &data, 0, expire).await.unwrap()
    }

    fn limits(max_entries: usize, max_bytes: usize) -> MemoryLimits {
        MemoryLimits {
            max_entries,
            max_bytes,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn many_more_keys_than_the_bounds_stay_within_both() {
        // Small values: the entry bound binds.
        let (max_entries, max_bytes) = (1_600, 4 << 20);
        let store = MemoryStore::new(limits(max_entries, max_bytes));
        for i in 0..20 * max_entries {
            put(&store, &key(&format!("small:{i}")), 10, EXPIRE).await;
        }
        let (entries, bytes) = store.usage();
        assert!(entries <= max_entries, "{entries} entries");
        assert!(bytes <= max_bytes as u64, "{bytes} bytes");
        assert!(
            entries >= max_entries / 2,
            "the store still keeps: {entries}"
        );

        // Large values: the byte bound binds.
        let (max_entries, max_bytes) = (100_000, 1 << 20);
        let store = MemoryStore::new(limits(max_entries, max_bytes));
        for i in 0..2_000 {
            put(&store, &key(&format!("large:{i}")), 4_000, EXPIRE).await;
        }
        let (entries, bytes) = store.usage();
        assert!(bytes <= max_bytes as u64, "{bytes} bytes");
        assert!(
            bytes >= max_bytes as u64 / 2,
            "the store still keeps: {bytes}"
        );
        assert!(entries <= max_entries, "{entries} entries");
    }

    #[tokio::test(start_paused = true)]
    async fn a_value_larger_than_the_budget_is_not_kept_and_evicts_nothing() {
        let store = MemoryStore::new(limits(1_600, 1 << 20));
        let small: Vec<_> = (0..100).map(|i| key(&format!("small:{i}"))).collect();
        for k in &small {
            assert_eq!(put(&store, k, 10, EXPIRE).await, Fill::Stored);
        }
        let big = key("big");
        assert_eq!(put(&store, &big, 2 << 20, EXPIRE).await, Fill::TooLarge);
        won(&store, &big).await;
        for k in &small {
            contract::hit(&store, k, LEASE).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_survives_a_flood_of_other_keys() {
        let store = MemoryStore::new(limits(1_600, 1 << 20));
        let mine = key("mine");
        let lease = won(&store, &mine).await;
        for i in 0..20_000 {
            put(&store, &key(&format!("flood:{i}")), 100, EXPIRE).await;
        }
        assert!(
            matches!(
                store
                    .lookup(&mine, LEASE, Duration::ZERO, false, far())
                    .await,
                Ok(Lookup::Busy)
            ),
            "nobody else wins the lease while its holder computes"
        );
        let data = Bytes::from_static(b"1");
        assert_eq!(
            store.fill(&mine, lease, &data, 0, EXPIRE).await.unwrap(),
            Fill::Stored
        );
        contract::hit(&store, &mine, LEASE).await;
    }

    #[tokio::test(start_paused = true)]
    async fn expired_values_make_room_before_live_ones() {
        let max_entries = 1_600;
        let store = MemoryStore::new(limits(max_entries, 4 << 20));
        // Popular values, which the eviction policy alone would keep over new ones.
        for i in 0..4 * max_entries {
            let k = key(&format!("old:{i}"));
            put(&store, &k, 10, LEASE).await;
            for _ in 0..3 {
                contract::hit(&store, &k, LEASE).await;
            }
        }
        tokio::time::advance(LEASE).await;
        // Half the bound, so that no shard gets more than its share (1/16) by chance.
        let live: Vec<_> = (0..max_entries / 2)
            .map(|i| key(&format!("live:{i}")))
            .collect();
        for k in &live {
            assert_eq!(put(&store, k, 10, EXPIRE).await, Fill::Stored);
        }
        for k in &live {
            contract::hit(&store, k, LEASE).await;
        }
    }
}
