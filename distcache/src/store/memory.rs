//! The in-process store: memcached's lease semantics in a sharded map, for one process.
//!
//! It is the embedded default (demos, tests, a single process) and the reference the memcached
//! store is tested against. Entries expire lazily when read and in a sweep every few thousand
//! writes to a shard, so keys nobody reads again do not pile up.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{Fill, Item, Lease, Lookup, Store, StoreError};
use crate::key::WireKey;

const SHARDS: usize = 16;
const SWEEP_EVERY: u32 = 4096;

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
        Inner {
            shards: Default::default(),
            hasher: Default::default(),
            next_cas: AtomicU64::new(1),
        }
    }
}

#[derive(Debug, Default)]
struct Shard {
    entries: HashMap<Box<str>, Entry>,
    writes: u32,
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

impl Inner {
    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        // A panic while holding a shard lock cannot leave an entry half-written: every
        // mutation below is a single assignment. So a poisoned lock is still consistent.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cas(&self) -> u64 {
        self.next_cas.fetch_add(1, Ordering::Relaxed)
    }
}

impl Shard {
    /// The live entry for `key`, dropping it if it has expired.
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self.entries.get(key).is_some_and(|e| e.expires <= now) {
            self.entries.remove(key);
        }
        self.entries.get_mut(key)
    }

    fn insert(&mut self, key: &str, entry: Entry, now: Instant) {
        self.writes += 1;
        if self.writes >= SWEEP_EVERY {
            self.writes = 0;
            self.entries.retain(|_, e| e.expires > now);
        }
        self.entries.insert(key.into(), entry);
    }
}

impl Store for MemoryStore {
    async fn lookup(
        &self,
        key: &WireKey,
        lease_ttl: Duration,
        refresh: Duration,
        _deadline: Instant,
    ) -> Result<Lookup, StoreError> {
        let now = Instant::now();
        let mut shard = self.inner.shard(key.as_str());
        match shard.live(key.as_str(), now) {
            Some(Entry {
                value: Some(item),
                expires,
                refresh_sent,
                ..
            }) => {
                if !refresh.is_zero() && !*refresh_sent && *expires - now < refresh {
                    *refresh_sent = true;
                    Ok(Lookup::Refresh(item.clone()))
                } else {
                    Ok(Lookup::Hit(item.clone()))
                }
            }
            Some(Entry { value: None, .. }) => Ok(Lookup::Busy),
            None => {
                let cas = self.inner.cas();
                let stub = Entry {
                    value: None,
                    cas,
                    expires: now + lease_ttl,
                    refresh_sent: false,
                };
                shard.insert(key.as_str(), stub, now);
                Ok(Lookup::Won(Lease { cas, node: 0 }))
            }
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
        let now = Instant::now();
        let mut shard = self.inner.shard(key.as_str());
        match shard.live(key.as_str(), now) {
            Some(entry) if entry.cas == lease.cas => {
                let cas = self.inner.cas();
                *entry = Entry {
                    value: Some(Item {
                        data: data.clone(),
                        flags,
                        version: Lease { cas, node: 0 },
                    }),
                    cas,
                    expires: now + expire,
                    refresh_sent: false,
                };
                Ok(Fill::Stored)
            }
            _ => Ok(Fill::LeaseLost),
        }
    }

    async fn release(&self, key: &WireKey, lease: Lease) -> Result<(), StoreError> {
        let mut shard = self.inner.shard(key.as_str());
        if shard
            .entries
            .get(key.as_str())
            .is_some_and(|e| e.cas == lease.cas)
        {
            shard.entries.remove(key.as_str());
        }
        Ok(())
    }

    async fn invalidate(&self, key: &WireKey) -> Result<(), StoreError> {
        self.inner.shard(key.as_str()).entries.remove(key.as_str());
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
            store.lookup(&k, LEASE, Duration::ZERO, far()).await,
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
    async fn a_value_near_its_end_is_refreshed_by_one() {
        contract::a_value_near_its_end_is_refreshed_by_one(
            &MemoryStore::default(),
            &key("r"),
            LEASE,
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn release_and_invalidate_free_the_key() {
        contract::release_and_invalidate_free_the_key(&MemoryStore::default(), &key("a"), LEASE)
            .await;
    }
}
