//! In-process coalescing: one task per key asks the store; the others of this process await it.
//!
//! The first caller of a key becomes the flight's leader; callers arriving while it runs become
//! followers and receive what the leader publishes: the value's JSON bytes (each follower decodes
//! its own copy, so the value type needs no `Clone`), or nothing, when the leader failed, timed out
//! or was cancelled — then the followers try again and one of them leads the next flight.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::watch;

use crate::key::WireKey;

const SHARDS: usize = 16;

/// What a leader hands its followers: `Some(json)` for a value, `None` while it runs.
type Slot = Option<Bytes>;

#[derive(Debug, Default)]
pub(crate) struct Flights {
    shards: [Mutex<HashMap<Box<str>, watch::Receiver<Slot>>>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
}

pub(crate) enum Join<'a> {
    Leader(Leader<'a>),
    Follower(Follower),
}

impl Flights {
    fn shard(&self, key: &str) -> MutexGuard<'_, HashMap<Box<str>, watch::Receiver<Slot>>> {
        let index = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        // Every mutation under this lock is a single insert or remove: a poisoned lock is
        // still consistent.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Joins the key's flight, or starts one.
    pub(crate) fn join<'a>(&'a self, key: &'a WireKey) -> Join<'a> {
        let mut shard = self.shard(key.as_str());
        if let Some(rx) = shard.get(key.as_str()) {
            return Join::Follower(Follower { rx: rx.clone() });
        }
        let (tx, rx) = watch::channel(None);
        shard.insert(key.as_str().into(), rx);
        Join::Leader(Leader {
            flights: self,
            key,
            tx,
        })
    }
}

/// The task that works on a key for the whole process. Dropping it without publishing tells
/// the followers to try again.
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: &'a WireKey,
    tx: watch::Sender<Slot>,
}

impl Leader<'_> {
    /// Hands the value's JSON bytes to every follower.
    pub(crate) fn publish(self, json: Bytes) {
        // Leave the map first: a caller arriving now reads the store, which already holds
        // the value, instead of joining a flight that is over.
        self.leave();
        self.tx.send_replace(Some(json));
    }

    fn leave(&self) {
        let mut shard = self.flights.shard(self.key.as_str());
        if shard
            .get(self.key.as_str())
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            shard.remove(self.key.as_str());
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        // After `publish` this finds another flight or none, and leaves it alone. Otherwise the
        // sender drops after this, and followers see the flight end without a value.
        self.leave();
    }
}

pub(crate) struct Follower {
    rx: watch::Receiver<Slot>,
}

impl Follower {
    /// The leader's value, or `None` if its flight ended without one.
    pub(crate) async fn wait(mut self) -> Option<Bytes> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(slot) => slot.clone(),
            Err(_closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyEncoder;

    #[tokio::test]
    async fn followers_get_the_leaders_value() {
        let flights = Flights::default();
        let key = KeyEncoder::new("").unwrap().encode("k");
        let Join::Leader(leader) = flights.join(&key) else {
            panic!("the first caller leads")
        };
        let Join::Follower(follower) = flights.join(&key) else {
            panic!("the second caller follows")
        };
        leader.publish(Bytes::from_static(b"42"));
        assert_eq!(follower.wait().await.as_deref(), Some(&b"42"[..]));
        assert!(
            matches!(flights.join(&key), Join::Leader(_)),
            "a finished flight is gone"
        );
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_its_followers_empty_handed() {
        let flights = Flights::default();
        let key = KeyEncoder::new("").unwrap().encode("k");
        let leader = flights.join(&key);
        let Join::Follower(follower) = flights.join(&key) else {
            panic!("the second caller follows")
        };
        drop(leader);
        assert_eq!(follower.wait().await, None);
        assert!(matches!(flights.join(&key), Join::Leader(_)));
    }
}
