//! In-process coalescing: one task per key asks the store; the others of this process await it.
//!
//! The first caller of a key becomes the flight's leader; callers arriving while it runs become
//! followers and receive what the leader publishes: the value's JSON bytes (each follower decodes
//! its own copy, so the value type needs no `Clone`), or nothing, when the leader failed, timed out
//! or was cancelled — then the followers try again and one of them leads the next flight.
//!
//! Every call goes through here, hits included, so that concurrent reads of a hot key cost one
//! request to its server. It is built to cost little: the key is hashed once (foldhash, seeded
//! per process) and copied into the map's slot, and the shared part of a flight (one allocation)
//! is made only when a first follower joins: a leader without followers allocates nothing (once
//! the map has grown to the keys in flight) and wakes nobody. A map that grew in a burst of keys
//! in flight is shrunk when most of it is empty again, so that a burst's memory is given back.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::key::WireKey;

const SHARDS: usize = 16;
/// A shard's map is shrunk past this capacity when under an eighth full: slots are 272 bytes.
const SHRINK_PAST: usize = 256;

/// In-flight keys by the hash of their wire key. Two keys with the same 64-bit hash are
/// astronomically rare: the second simply is not coalesced (its leader leads alone).
type Shard = HashMap<u64, Slot, BuildHasherDefault<Prehashed>>;

/// A key in flight: the key itself, to tell a hash collision, and the followers' part of the
/// flight, made when the first follower joins.
#[derive(Debug)]
struct Slot {
    key: WireKey,
    flight: Option<Arc<Flight>>,
}

#[derive(Debug, Default)]
pub(crate) struct Flights {
    shards: [Mutex<Shard>; SHARDS],
    hasher: foldhash::fast::RandomState,
}

/// What the followers of a flight wait on.
#[derive(Debug)]
struct Flight {
    outcome: Mutex<Outcome>,
    done: Notify,
}

#[derive(Debug)]
enum Outcome {
    Running,
    Value(Bytes),
    Failed,
    Uncached,
}

/// How a flight ended, for a follower.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// With the value's JSON bytes.
    Value(Bytes),
    /// Without a value (failed, timed out or cancelled): try again; one follower leads next.
    Failed,
    /// With a value nobody can share (it cannot be stored or read back): run the getter
    /// yourself, now, without waiting for anybody.
    Uncached,
}

pub(crate) enum Join<'a> {
    Leader(Leader<'a>),
    Follower(Follower),
}

impl Flights {
    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // Every mutation under this lock is a single insert, remove, shrink or assignment of a
        // slot's flight: a poisoned lock is still consistent.
        // The high half picks the shard: the map inside uses the low bits for its buckets.
        self.shards[((hash >> 32) % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Joins the key's flight, or starts one.
    pub(crate) fn join<'a>(&'a self, key: &WireKey) -> Join<'a> {
        let hash = self.hasher.hash_one(key.as_bytes());
        let mut shard = self.shard(hash);
        match shard.entry(hash) {
            Entry::Occupied(mut slot) if slot.get().key.as_bytes() == key.as_bytes() => {
                let flight = slot.get_mut().flight.get_or_insert_with(|| {
                    Arc::new(Flight {
                        outcome: Mutex::new(Outcome::Running),
                        done: Notify::new(),
                    })
                });
                Join::Follower(Follower {
                    flight: flight.clone(),
                })
            }
            // Another key with the same hash is in flight: lead this one alone.
            Entry::Occupied(_) => Join::Leader(Leader {
                flights: self,
                hash,
                registered: false,
            }),
            Entry::Vacant(vacant) => {
                vacant.insert(Slot {
                    key: key.clone(),
                    flight: None,
                });
                Join::Leader(Leader {
                    flights: self,
                    hash,
                    registered: true,
                })
            }
        }
    }
}

/// The task that works on a key for the whole process. Dropping it without publishing tells
/// the followers to try again.
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    hash: u64,
    /// Whether the slot at `hash` is this leader's: false for a hash collision (nobody follows).
    /// While it is, no other slot can take its place, so the slot at `hash` is its own.
    registered: bool,
}

impl Leader<'_> {
    /// Hands the value's JSON bytes to every follower.
    pub(crate) fn publish(mut self, json: Bytes) {
        self.finish(Outcome::Value(json));
    }

    /// Tells every follower that the value cannot be shared: each runs the getter itself.
    pub(crate) fn uncached(mut self) {
        self.finish(Outcome::Uncached);
    }

    fn finish(&mut self, outcome: Outcome) {
        if !std::mem::take(&mut self.registered) {
            return;
        }
        // Leave the map first: a caller arriving now reads the store, which already holds the
        // value, instead of joining a flight that is over. After this, no follower can join.
        let flight = {
            let mut shard = self.flights.shard(self.hash);
            let slot = shard.remove(&self.hash);
            debug_assert!(
                slot.is_some(),
                "a registered leader's slot stays until it finishes"
            );
            let flight = slot.and_then(|slot| slot.flight);
            if shard.capacity() > SHRINK_PAST {
                shrink(&mut shard);
            }
            flight
        };
        // No flight: nobody followed.
        let Some(flight) = flight else {
            return;
        };
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
    /// How the leader's flight ended.
    pub(crate) async fn wait(self) -> Ended {
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
                Outcome::Value(json) => return Ended::Value(json.clone()),
                Outcome::Failed => return Ended::Failed,
                Outcome::Uncached => return Ended::Uncached,
            }
            notified.await;
        }
    }
}

/// Gives back most of a shard's map when it is under an eighth full: after a burst of keys in
/// flight. Out of line: it never runs on a hit's path.
#[cold]
#[inline(never)]
fn shrink(shard: &mut Shard) {
    if shard.len() * 8 < shard.capacity() {
        shard.shrink_to((shard.len() * 2).max(SHRINK_PAST / 2));
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

    /// The first caller of `k`, who leads, and the second, who follows.
    fn leader_and_follower<'a>(flights: &'a Flights, k: &WireKey) -> (Leader<'a>, Follower) {
        let Join::Leader(leader) = flights.join(k) else {
            panic!("the first caller leads")
        };
        let Join::Follower(follower) = flights.join(k) else {
            panic!("the second caller follows")
        };
        (leader, follower)
    }

    #[tokio::test]
    async fn followers_get_the_leaders_value() {
        let flights = Flights::default();
        let k = key("k");
        let (leader, follower) = leader_and_follower(&flights, &k);
        let waiting = tokio::spawn(follower.wait());
        tokio::task::yield_now().await;
        leader.publish(Bytes::from_static(b"42"));
        assert_eq!(
            waiting.await.unwrap(),
            Ended::Value(Bytes::from_static(b"42"))
        );
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
        assert_eq!(follower.wait().await, Ended::Failed);
        assert!(matches!(flights.join(&k), Join::Leader(_)));
    }

    #[test]
    fn the_followers_part_is_made_only_when_one_joins() {
        let flights = Flights::default();
        let k = key("k");
        let flight_made = |flights: &Flights| {
            flights
                .shards
                .iter()
                .any(|s| s.lock().unwrap().values().any(|slot| slot.flight.is_some()))
        };
        let leader = flights.join(&k);
        assert!(!flight_made(&flights), "a leader alone allocates nothing");
        let follower = flights.join(&k);
        assert!(matches!(follower, Join::Follower(_)));
        assert!(flight_made(&flights), "made for the first follower");
        drop((leader, follower));
    }

    #[tokio::test]
    async fn followers_of_an_unshareable_value_are_told_to_run_their_own() {
        let flights = Flights::default();
        let k = key("k");
        let (leader, follower) = leader_and_follower(&flights, &k);
        leader.uncached();
        assert_eq!(follower.wait().await, Ended::Uncached);
    }

    #[tokio::test]
    async fn every_follower_shares_the_first_followers_flight() {
        let flights = Flights::default();
        let k = key("k");
        let Join::Leader(leader) = flights.join(&k) else {
            panic!("the first caller leads")
        };
        let followers: Vec<_> = (0..3)
            .map(|_| match flights.join(&k) {
                Join::Follower(follower) => tokio::spawn(follower.wait()),
                Join::Leader(_) => panic!("later callers follow"),
            })
            .collect();
        tokio::task::yield_now().await;
        leader.publish(Bytes::from_static(b"7"));
        for follower in followers {
            let got = tokio::time::timeout(std::time::Duration::from_secs(10), follower)
                .await
                .expect("no follower is left waiting")
                .unwrap();
            assert_eq!(got, Ended::Value(Bytes::from_static(b"7")));
        }
    }

    #[test]
    fn a_key_whose_hash_collides_leads_alone_and_leaves_the_other_in_flight() {
        let flights = Flights::default();
        let (k, other) = (key("k"), key("other"));
        let hash = flights.hasher.hash_one(k.as_bytes());
        flights.shard(hash).insert(
            hash,
            Slot {
                key: other.clone(),
                flight: None,
            },
        );
        let Join::Leader(leader) = flights.join(&k) else {
            panic!("a colliding key leads")
        };
        leader.publish(Bytes::from_static(b"1"));
        let shard = flights.shard(hash);
        assert_eq!(
            shard.get(&hash).map(|slot| slot.key.as_str()),
            Some(other.as_str()),
            "the other key's flight is untouched"
        );
    }

    #[test]
    fn a_burst_of_keys_in_flight_gives_its_memory_back() {
        let flights = Flights::default();
        let keys: Vec<_> = (0..20_000).map(|i| key(&format!("k{i}"))).collect();
        let leaders: Vec<_> = keys.iter().map(|k| flights.join(k)).collect();
        let grown: usize = flights
            .shards
            .iter()
            .map(|s| s.lock().unwrap().capacity())
            .sum();
        drop(leaders);
        let after: usize = flights
            .shards
            .iter()
            .map(|s| s.lock().unwrap().capacity())
            .sum();
        assert!(grown >= 20_000, "{grown}");
        assert!(
            after <= SHARDS * SHRINK_PAST,
            "{grown} slots shrunk to {after}"
        );
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
