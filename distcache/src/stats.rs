//! What the cache counts: one relaxed atomic increment per event.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a [`Cache`](crate::Cache)'s counters since it was built, shared by its clones.
///
/// The counters count events, not calls: a call that waits on another task of this process and
/// then, that task having failed, asks the store itself counts in `coalesced_waits` and in `hits`
/// or `misses`. In the common case each call counts once in `hits`, `misses` or
/// `coalesced_waits`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Calls that found a usable value in the store at once.
    pub hits: u64,
    /// Calls that found no usable value in the store at once: they then won the lease and ran
    /// the getter, or waited for the lease's holder.
    pub misses: u64,
    /// Calls that waited for another task of this process working on the same key, and took
    /// its result instead of asking the store themselves.
    pub coalesced_waits: u64,
    /// Calls that found the lease held elsewhere (another process, usually) and polled the store
    /// for its value.
    pub lease_waits: u64,
    /// Store lookups made by the calls counted in `lease_waits`, the first included: divided by
    /// `lease_waits`, how often a waiter asks the store (the poll schedule at work).
    pub wait_lookups: u64,
    /// Getter invocations.
    pub getter_runs: u64,
    /// Getters that returned an error (passed to their caller unchanged, except in a refresh
    /// ahead, whose caller gets the current value).
    pub getter_errors: u64,
    /// Getters that panicked (caught; their caller got
    /// [`Error::GetterPanicked`](crate::Error::GetterPanicked), or the current value in a refresh
    /// ahead).
    pub getter_panics: u64,
    /// Calls that failed with [`Error::Timeout`](crate::Error::Timeout), and refreshes ahead whose
    /// getter ran out of time (their caller got the current value).
    pub timeouts: u64,
    /// Stored items that did not decode as the requested type, or were written by something
    /// else (a corrupt compressed item, a big value's chunk that does not match its manifest):
    /// treated as a miss and recomputed. A chunk evicted is a plain miss, not counted here.
    pub decode_misses: u64,
    /// Values returned to their caller but not stored: over `max_value_bytes`, not serializable
    /// as JSON, or refused by the store (a server whose `-I` is under `item_bytes`, or over a
    /// sixteenth of `in_process_max_bytes`).
    pub unstorable_values: u64,
    /// Values computed by a lease holder whose lease had been taken over before it could store
    /// them (its lease expired, or the key was invalidated meanwhile), or by a refresh ahead whose
    /// value had changed, expired or been invalidated meanwhile: returned, not stored.
    pub lost_fills: u64,
    /// Calls that ran the getter without the store, because the store could not be reached.
    pub degraded_calls: u64,
    /// Calls that ran the getter without storing its value, by design: their arguments could not
    /// make a key (the macro's arguments failed to serialize), or the key's value was found
    /// unstorable (see `unstorable_values`) by this call's leader or by a caller in any process
    /// within the value's `expire`, so that nobody could share it with them. Such callers run
    /// the getter at once, each its own, never one after another.
    pub uncached_calls: u64,
    /// Store operations that failed (connection refused, timeout, protocol error).
    pub store_errors: u64,
    /// Calls that found a value near its end (see
    /// [`CacheBuilder::refresh_ahead`](crate::CacheBuilder::refresh_ahead)), were the first to
    /// do so, and ran the getter to replace it: they return the new value, or the current one if
    /// the getter failed. Usually also counted in `hits` (in `misses` if the call waited for a
    /// lease first).
    pub refreshes: u64,
    /// Leases kept alive while their getter ran: a lease lasts a few seconds, and its holder
    /// extends it every second, so that a holder that dies frees its key within seconds (see
    /// README, "Guarantees and their limits"). One round trip each, for getters over a second.
    pub lease_extensions: u64,
    /// Values their getter chose not to store (`distcache::entry::skip_store`): returned to
    /// their callers, not stored.
    pub skipped_stores: u64,
    /// Calls that got [`Error::Backoff`](crate::Error::Backoff): their key's getter had failed
    /// moments before (`error_backoff`).
    pub backoffs: u64,
    /// Calls that returned a value past its `expire` (see
    /// [`CacheBuilder::stale_if_error`](crate::CacheBuilder::stale_if_error)): another caller
    /// was recomputing it, the key was backed off after a failed recompute, or this call's own
    /// recompute failed. Callers of this process that shared such a call's value are not
    /// counted again.
    pub stale_served: u64,
    /// Calls that returned the value they had (stale, or being refreshed ahead) because its
    /// recompute ran past their `soft_timeout`: the getter finished in the background.
    pub soft_timeouts: u64,
    /// Items read from memcached without a valid signature, with
    /// [`CacheBuilder::signing_keys`](crate::CacheBuilder::signing_keys) set: never returned;
    /// recomputed and replaced, as a miss.
    pub forged_values: u64,
    /// Calls answered from the near cache (see
    /// [`CacheBuilder::near_ttl`](crate::CacheBuilder::near_ttl)), without asking the store:
    /// not counted in `hits`.
    pub near_hits: u64,
}

macro_rules! counters {
    ($($field:ident),* $(,)?) => {
        /// The live counters behind [`Stats`].
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $field: Counter,)*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> Stats {
                Stats { $($field: self.$field.get(),)* }
            }
        }
    };
}

counters!(
    hits,
    misses,
    coalesced_waits,
    lease_waits,
    wait_lookups,
    getter_runs,
    getter_errors,
    getter_panics,
    timeouts,
    decode_misses,
    unstorable_values,
    lost_fills,
    degraded_calls,
    uncached_calls,
    store_errors,
    refreshes,
    lease_extensions,
    skipped_stores,
    backoffs,
    stale_served,
    soft_timeouts,
    forged_values,
    near_hits,
);

/// A monotonic event counter.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn incr(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}
