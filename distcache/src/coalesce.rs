//! In-process coalescing: one task per key asks the store; the others of this process await it.
//!
//! The first caller of a key becomes the flight's leader; callers arriving while it runs become
//! followers and receive what the leader publishes: the value's JSON bytes (each follower decodes
//! its own copy, so the value type needs no `Clone`), or nothing, when the leader failed, timed out
//! or was cancelled — then the followers try again and one of them leads the next flight.
//!
//! Every call goes through here, hits included, so that concurrent reads of a hot key cost one
//! request to its server. It is built to cost little: the key is hashed once (foldhash, seeded
//! per process), a flight is one allocation, and a leader without followers wakes nobody.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::key::WireKey;

const SHARDS: usize = 16;

/// In-flight keys by the hash of their wire key. Two keys with the same 64-bit hash are
/// astronomically rare: the second simply is not coalesced (see [`Join::Alone`]).
type Shard = HashMap<u64, Arc<Flight>, BuildHasherDefault<Prehashed>>;

#[derive(Debug, Default)]
pub(crate) struct Flights {
    shards: [Mutex<Shard>; SHARDS],
    hasher: foldhash::fast::RandomState,
}

#[derive(Debug)]
struct Flight {
    key: WireKey,
    followers: AtomicUsize,
    outcome: Mutex<Outcome>,
    done: Notify,
}

#[derive(Debug)]
enum Outcome {
    Running,
    Value(Bytes),
    Failed,
}

pub(crate) enum Join<'a> {
    Leader(Leader<'a>),
    Follower(Follower),
}

impl Flights {
    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // Every mutation under this lock is a single insert or remove: a poisoned lock is
        // still consistent.
        // The high half picks the shard: the map inside uses the low bits for its buckets.
        self.shards[((hash >> 32) % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Joins the key's flight, or starts one.
    pub(crate) fn join<'a>(&'a self, key: &WireKey) -> Join<'a> {
        let hash = self.hasher.hash_one(key.as_bytes());
        let mut shard = self.shard(hash);
        match shard.get(&hash) {
            Some(flight) if flight.key.as_bytes() == key.as_bytes() => {
                flight.followers.fetch_add(1, Ordering::Relaxed);
                return Join::Follower(Follower {
                    flight: flight.clone(),
                });
            }
            // Another key with the same hash is in flight: lead this one alone.
            Some(_) => {
                return Join::Leader(Leader {
                    flights: self,
                    hash,
                    flight: None,
                });
            }
            None => {}
        }
        let flight = Arc::new(Flight {
            key: key.clone(),
            followers: AtomicUsize::new(0),
            outcome: Mutex::new(Outcome::Running),
            done: Notify::new(),
        });
        shard.insert(hash, flight.clone());
        Join::Leader(Leader {
            flights: self,
            hash,
            flight: Some(flight),
        })
    }
}

/// The task that works on a key for the whole process. Dropping it without publishing tells
/// the followers to try again.
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    hash: u64,
    /// `None` when not registered (a hash collision): nobody follows.
    flight: Option<Arc<Flight>>,
}

impl Leader<'_> {
    /// Hands the value's JSON bytes to every follower.
    pub(crate) fn publish(mut self, json: Bytes) {
        self.finish(Outcome::Value(json));
    }

    fn finish(&mut self, outcome: Outcome) {
        let Some(flight) = self.flight.take() else {
            return;
        };
        // Leave the map first: a caller arriving now reads the store, which already holds the
        // value, instead of joining a flight that is over. After this, no follower can join.
        {
            let mut shard = self.flights.shard(self.hash);
            if shard
                .get(&self.hash)
                .is_some_and(|f| Arc::ptr_eq(f, &flight))
            {
                shard.remove(&self.hash);
            }
        }
        if flight.followers.load(Ordering::Acquire) == 0 {
            return;
        }
        *flight.outcome.lock().unwrap_or_else(|p| p.into_inner()) = outcome;
        flight.done.notify_waiters();
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        // Not published: failed, timed out or cancelled.
        self.finish(Outcome::Failed);
    }
}

pub(crate) struct Follower {
    flight: Arc<Flight>,
}

impl Follower {
    /// The leader's value, or `None` if its flight ended without one.
    pub(crate) async fn wait(self) -> Option<Bytes> {
        loop {
            let notified = self.flight.done.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the outcome is read: a notification in between is not lost.
            notified.as_mut().enable();
            match &*self
                .flight
                .outcome
                .lock()
                .unwrap_or_else(|p| p.into_inner())
            {
                Outcome::Running => {}
                Outcome::Value(json) => return Some(json.clone()),
                Outcome::Failed => return None,
            }
            notified.await;
        }
    }
}

/// A `Hasher` for keys that are already hashes.
#[derive(Debug, Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys are hashed")
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyEncoder;

    fn key(k: &str) -> WireKey {
        KeyEncoder::new("").unwrap().encode(k)
    }

    #[tokio::test]
    async fn followers_get_the_leaders_value() {
        let flights = Flights::default();
        let k = key("k");
        let Join::Leader(leader) = flights.join(&k) else {
            panic!("the first caller leads")
        };
        let Join::Follower(follower) = flights.join(&k) else {
            panic!("the second caller follows")
        };
        let waiting = tokio::spawn(follower.wait());
        tokio::task::yield_now().await;
        leader.publish(Bytes::from_static(b"42"));
        assert_eq!(waiting.await.unwrap().as_deref(), Some(&b"42"[..]));
        assert!(
            matches!(flights.join(&k), Join::Leader(_)),
            "a finished flight is gone"
        );
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_its_followers_empty_handed() {
        let flights = Flights::default();
        let k = key("k");
        let leader = flights.join(&k);
        let Join::Follower(follower) = flights.join(&k) else {
            panic!("the second caller follows")
        };
        drop(leader);
        assert_eq!(follower.wait().await, None);
        assert!(matches!(flights.join(&k), Join::Leader(_)));
    }

    #[test]
    fn a_leader_without_followers_leaves_the_map_empty() {
        let flights = Flights::default();
        for _ in 0..3 {
            let Join::Leader(leader) = flights.join(&key("k")) else {
                panic!("alone, it leads")
            };
            leader.publish(Bytes::from_static(b"1"));
        }
        assert!(flights.shards.iter().all(|s| s.lock().unwrap().is_empty()));
    }
}
