//! The near cache: decoded values kept in this process for at most `near_ttl`, in front of the
//! store, for the keys read most (ARCHITECTURE.md, "The near cache").
//!
//! Its one promise is a staleness bound: an entry is served until the earliest of `near_ttl`
//! after the store read that brought it was sent (or after its write was sent), and the end of
//! the value's own life in the store as that read reported it. `near_ttl` is the reading call's
//! (no longer than the keeping call's): calls with different settings share an entry, each within
//! its own bound. `invalidate` removes this
//! process's copy at once: an epoch counter makes a read that was in flight across an invalidate
//! unable to keep what it read.
//!
//! The map is quick_cache's concurrent CLOCK-Pro map, already the in-process store's. Measured
//! against moka 0.12 for a hit on a 10,000-entry map of `Arc` values with `&str` keys (callgrind,
//! instructions per get): quick_cache 238, moka 957.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A value as the map holds it: decoded, shared, its type checked when it is read.
type Shared = Arc<dyn Any + Send + Sync>;

/// Every entry costs at least this many bytes besides its key and value: the entry itself, its
/// `Arc`, the map's slot.
const ENTRY_OVERHEAD: u64 = 96;

/// How a value type is kept near: cloned into the map and out of it. Made only where
/// `T: Clone + Send + Sync + 'static` holds, so that the algorithm (`flight.rs`) needs no such
/// bound: a getter that cannot keep its values has none (`Getter::keep`). Public only for the
/// macro's expansions (`__private`).
pub struct Keep<T> {
    share: fn(&T) -> Shared,
    read: fn(&(dyn Any + Send + Sync)) -> Option<T>,
}

impl<T> Clone for Keep<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Keep<T> {}

impl<T: Clone + Send + Sync + 'static> Default for Keep<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone + Send + Sync + 'static> Keep<T> {
    /// How `T` is kept.
    pub const fn new() -> Self {
        Keep {
            share: |value| Arc::new(value.clone()),
            read: |any| any.downcast_ref::<T>().cloned(),
        }
    }
}

/// Whether a call's values are kept near, and how: chosen by its value type where the type is
/// known (`Cache::get_near`, a `#[distcached]` expansion), so that a call that cannot keep
/// values compiles to none of this.
pub trait NearChoice<T> {
    /// How, or `None`.
    fn keep(&self) -> Option<Keep<T>>;
}

impl<T> NearChoice<T> for Keep<T> {
    #[inline]
    fn keep(&self) -> Option<Keep<T>> {
        Some(*self)
    }
}

/// Values are not kept.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNear;

impl<T> NearChoice<T> for NoNear {
    #[inline]
    fn keep(&self) -> Option<Keep<T>> {
        None
    }
}

#[derive(Clone)]
struct Entry {
    value: Shared,
    /// When the read or write that brought it was sent: a call serves it for its own `near_ttl`
    /// from then.
    sent: Instant,
    /// Served before this instant only, by any call: the keeping call's `near_ttl` from `sent`,
    /// or the value's life in the store if that ends sooner.
    until: Instant,
    /// The value's JSON size: what the entry is charged, with its key and the overhead.
    bytes: u32,
}

/// Charges each entry its bytes, and at least `floor`, the byte budget's share of one entry: so
/// that one budget bounds both the bytes and the entries.
#[derive(Clone)]
struct Charge {
    floor: u64,
}

impl quick_cache::Weighter<Box<str>, Entry> for Charge {
    fn weight(&self, key: &Box<str>, entry: &Entry) -> u64 {
        (key.len() as u64 + u64::from(entry.bytes) + ENTRY_OVERHEAD).max(self.floor)
    }
}

type Map = quick_cache::sync::Cache<Box<str>, Entry, Charge, foldhash::fast::RandomState>;

/// The map's shards, each with its share of the byte budget: a fixed number, so that the largest
/// value kept (a sixteenth of `near_max_bytes`) does not depend on the machine's cores.
const SHARDS: usize = 16;

/// A cache's near cache, made on its first use.
pub(crate) struct NearCache {
    map: Map,
    /// Bumped by every `invalidate`, before it removes the key: an insert that sees it changed
    /// since its read was sent removes what it inserted.
    epoch: AtomicU64,
}

impl std::fmt::Debug for NearCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearCache")
            .field("entries", &self.map.len())
            .field("bytes", &self.map.weight())
            .finish_non_exhaustive()
    }
}

/// A read or write of the store whose value may be kept near: when it was sent, and the epoch
/// then.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sent {
    at: Instant,
    epoch: u64,
}

impl NearCache {
    /// A near cache of at most `max_entries` entries and `max_bytes` bytes (keys, values as JSON,
    /// and an overhead per entry).
    pub(crate) fn new(max_entries: usize, max_bytes: u64) -> Self {
        let max_entries = max_entries.max(1);
        let floor = (max_bytes / max_entries as u64).max(1);
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(max_entries)
            .weight_capacity(max_bytes.max(floor))
            .shards(SHARDS)
            .build()
            .expect("a capacity and a shard count");
        NearCache {
            map: Map::with_options(
                options,
                Charge { floor },
                foldhash::fast::RandomState::default(),
                Default::default(),
            ),
            epoch: AtomicU64::new(0),
        }
    }

    /// `key`'s value, if it is here, of type `T`, and within the bound of a call whose
    /// `near_ttl` is `near_ttl`.
    #[inline]
    pub(crate) fn get<T>(&self, key: &str, keep: Keep<T>, near_ttl: Duration) -> Option<T> {
        let entry = self.map.get(key)?;
        let now = Instant::now();
        if now >= entry.until {
            // Gone for every call; it may have been replaced meanwhile, which only costs that
            // entry a read.
            self.map.remove(key);
            return None;
        }
        if now >= entry.sent + near_ttl {
            // Too old for this call, not for those with a longer `near_ttl`.
            return None;
        }
        // `None` if another call keeps a value of another type under this key.
        (keep.read)(&*entry.value)
    }

    /// Marks a store read or write about to be sent.
    pub(crate) fn sent(&self) -> Sent {
        Sent {
            epoch: self.epoch.load(Ordering::SeqCst),
            at: Instant::now(),
        }
    }

    /// Keeps `value` (its JSON `bytes` long), read or written by the operation marked `sent`, for
    /// `lasts` from then: `near_ttl`, or less if the value's own life in the store is shorter.
    pub(crate) fn keep<T>(
        &self,
        key: &str,
        keep: Keep<T>,
        value: &T,
        bytes: usize,
        sent: Sent,
        lasts: Duration,
    ) {
        let until = sent.at + lasts;
        if until <= Instant::now() {
            return;
        }
        // A value read or written later is kept already: an older read landing after it does not
        // take its place.
        if self.map.peek(key).is_some_and(|kept| kept.sent > sent.at) {
            return;
        }
        let entry = Entry {
            value: (keep.share)(value),
            sent: sent.at,
            until,
            bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
        };
        self.map.insert(key.into(), entry);
        // An invalidate since the read was sent may have removed the key before the insert: the
        // value read may be the one it removed, so it goes. (SeqCst: an invalidate that this
        // load does not see bumped the epoch after it, and removes the key after the insert.)
        if self.epoch.load(Ordering::SeqCst) != sent.epoch {
            self.map.remove(key);
        }
    }

    /// Removes `key`'s value (replaced in the store by a call that keeps nothing).
    pub(crate) fn remove(&self, key: &str) {
        self.map.remove(key);
    }

    /// Removes `key`'s value: no read in flight can keep it again.
    pub(crate) fn invalidate(&self, key: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.map.remove(key);
    }

    /// Entries and bytes charged now.
    #[cfg(test)]
    pub(crate) fn usage(&self) -> (usize, u64) {
        (self.map.len(), self.map.weight())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(1);

    fn keep_string() -> Keep<String> {
        Keep::new()
    }

    #[tokio::test(start_paused = true)]
    async fn a_value_is_served_until_near_ttl_after_its_read_was_sent() {
        let near = NearCache::new(100, 1 << 20);
        let sent = near.sent();
        tokio::time::advance(Duration::from_millis(300)).await;
        near.keep("k", keep_string(), &"v".to_owned(), 3, sent, TTL);
        tokio::time::advance(Duration::from_millis(699)).await;
        assert_eq!(near.get("k", keep_string(), TTL).as_deref(), Some("v"));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            near.get("k", keep_string(), TTL),
            None,
            "1 s after the read was sent"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_call_is_served_within_its_own_near_ttl() {
        let near = NearCache::new(100, 1 << 20);
        near.keep("k", keep_string(), &"v".to_owned(), 3, near.sent(), TTL);
        tokio::time::advance(Duration::from_millis(150)).await;
        let short = Duration::from_millis(100);
        assert_eq!(
            near.get("k", keep_string(), short),
            None,
            "too old for 100 ms"
        );
        assert!(near.get("k", keep_string(), TTL).is_some(), "not for 1 s");
        // And never longer than the keeping call's.
        tokio::time::advance(Duration::from_millis(850)).await;
        assert_eq!(near.get("k", keep_string(), 10 * TTL), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_value_never_outlives_its_own_life_in_the_store() {
        let near = NearCache::new(100, 1 << 20);
        let sent = near.sent();
        near.keep(
            "k",
            keep_string(),
            &"v".to_owned(),
            3,
            sent,
            Duration::from_millis(200),
        );
        tokio::time::advance(Duration::from_millis(199)).await;
        assert!(near.get("k", keep_string(), TTL).is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(near.get("k", keep_string(), TTL), None);
        // A value already past its life is not kept at all.
        near.keep(
            "k",
            keep_string(),
            &"v".to_owned(),
            3,
            sent,
            Duration::from_millis(100),
        );
        assert_eq!(near.usage().0, 0);
    }

    #[tokio::test]
    async fn a_read_in_flight_across_an_invalidate_keeps_nothing() {
        let near = NearCache::new(100, 1 << 20);
        let sent = near.sent();
        near.invalidate("k");
        near.keep("k", keep_string(), &"old".to_owned(), 5, sent, TTL);
        assert_eq!(near.get("k", keep_string(), TTL), None);
        // A read sent after it keeps its value.
        let sent = near.sent();
        near.keep("k", keep_string(), &"new".to_owned(), 5, sent, TTL);
        assert_eq!(near.get("k", keep_string(), TTL).as_deref(), Some("new"));
        near.invalidate("k");
        assert_eq!(near.get("k", keep_string(), TTL), None);
    }

    #[tokio::test]
    async fn a_value_of_another_type_under_the_key_is_a_miss() {
        let near = NearCache::new(100, 1 << 20);
        near.keep("k", Keep::<u64>::new(), &7, 1, near.sent(), TTL);
        assert_eq!(near.get("k", keep_string(), TTL), None);
        assert_eq!(near.get("k", Keep::<u64>::new(), TTL), Some(7));
    }

    #[tokio::test]
    async fn entries_and_bytes_are_both_bounded() {
        // By entries: 1,000 small values into room for 100.
        let near = NearCache::new(100, 1 << 20);
        for i in 0..1000 {
            let key = format!("k{i}");
            near.keep(&key, Keep::<u64>::new(), &i, 4, near.sent(), TTL);
        }
        let (entries, bytes) = near.usage();
        assert!(entries <= 100, "{entries} entries");
        assert!(bytes <= 1 << 20);
        // By bytes: 100 values of 100 KB into 4 MiB (16 shards of 256 KiB).
        let near = NearCache::new(10_000, 4 << 20);
        let big = "x".repeat(100_000);
        for i in 0..100 {
            near.keep(
                &format!("k{i}"),
                keep_string(),
                &big,
                big.len(),
                near.sent(),
                TTL,
            );
        }
        let (entries, bytes) = near.usage();
        assert!(
            (1..=40).contains(&entries),
            "{entries} entries of 100 KB in 4 MiB"
        );
        assert!(bytes <= 4 << 20, "{bytes} bytes");
        // A value over a shard's share (a sixteenth) is not kept.
        let near = NearCache::new(10_000, 4 << 20);
        let huge = "x".repeat(300_000);
        near.keep("huge", keep_string(), &huge, huge.len(), near.sent(), TTL);
        assert_eq!(near.usage().0, 0);
    }
}
