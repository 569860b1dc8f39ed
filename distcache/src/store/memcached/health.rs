//! A node's health: consecutive failures (or one timeout) mark it down for `retry_interval`, during
//! which its keys go to the next server on the ring. After the interval, one request is let through
//! as a probe; its success brings the node back, its failure keeps it down for another interval.
//!
//! Failures are reported by the requests that see them, and by the node's connections themselves:
//! a connection's own I/O timeout and a failed connect count even when every caller waiting on
//! them has given up at its deadline (an `exec_limit` shorter than `io_timeout` or
//! `connect_timeout` would otherwise hide a hung node from its health for good).
//!
//! Each change is a named `tracing` event (`distcache.node.down`, `distcache.node.back`) and is
//! counted, so that an operator, and a test, can see it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::ring::Server;
use crate::store::StoreErrorKind;

/// One memcached server's health, as [`Cache::node_stats`](crate::Cache::node_stats) reports it.
///
/// Each change is also a `tracing` event: `distcache.node.down` (warn) when the server is marked
/// down, `distcache.node.back` (info) when a probe brings it back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// The server, as configured.
    pub server: Server,
    /// Whether it is marked down now (its keys go to the next server on the ring).
    pub down: bool,
    /// How many times it was marked down since the cache was built.
    pub marked_down: u64,
    /// How many times a probe brought it back since the cache was built.
    pub back: u64,
}

/// `down_until` of a node that is up.
const UP: u64 = 0;

/// How a request was admitted to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ticket {
    /// The node is up.
    Up,
    /// The node is down and due for a retry: this request is the probe.
    Probe,
}

#[derive(Debug)]
pub(crate) struct Health {
    server: Server,
    epoch: Instant,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the node is down; `UP` when it is up.
    down_until: AtomicU64,
    /// A probe is under way.
    probing: AtomicBool,
    retry_interval: Duration,
    threshold: u32,
    /// Times the node was marked down, and brought back.
    marked_down: AtomicU64,
    back: AtomicU64,
    /// Why it was last marked down.
    last_failure: std::sync::Mutex<Option<String>>,
}

impl Health {
    pub(crate) fn new(
        server: Server,
        epoch: Instant,
        retry_interval: Duration,
        threshold: u32,
    ) -> Self {
        Health {
            server,
            epoch,
            failures: AtomicU32::new(0),
            down_until: AtomicU64::new(UP),
            probing: AtomicBool::new(false),
            retry_interval,
            threshold,
            marked_down: AtomicU64::new(0),
            back: AtomicU64::new(0),
            last_failure: std::sync::Mutex::new(None),
        }
    }

    pub(crate) fn server(&self) -> &Server {
        &self.server
    }

    pub(crate) fn retry_interval(&self) -> Duration {
        self.retry_interval
    }

    /// How many times the node was marked down, and brought back, since the cache was built.
    pub(crate) fn transitions(&self) -> (u64, u64) {
        (
            self.marked_down.load(Ordering::Relaxed),
            self.back.load(Ordering::Relaxed),
        )
    }

    fn now(&self) -> u64 {
        // At least 1, so that no deadline equals `UP`.
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether the node is marked down and not yet due for a probe (no side effect).
    pub(crate) fn is_down(&self) -> bool {
        let until = self.down_until.load(Ordering::Acquire);
        until != UP && self.now() < until
    }

    /// Admits a request now, or not (marked down). After the retry interval of a down node, the
    /// first request to ask is admitted as the probe.
    pub(crate) fn admit(&self) -> Option<Ticket> {
        let until = self.down_until.load(Ordering::Acquire);
        if until == UP {
            return Some(Ticket::Up);
        }
        if self.now() < until {
            return None;
        }
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then_some(Ticket::Probe)
    }

    pub(crate) fn success(&self, ticket: Ticket) {
        // Read first: a store at every request would move the cache line between the threads
        // that make requests, for nothing while there are no failures.
        if self.failures.load(Ordering::Acquire) != 0 {
            self.failures.store(0, Ordering::Release);
        }
        // Only the probe brings a down node back: a request that was already under way when
        // the node was marked down says little about it now.
        if ticket == Ticket::Probe {
            self.down_until.store(UP, Ordering::Release);
            self.probing.store(false, Ordering::Release);
            self.back.fetch_add(1, Ordering::Relaxed);
            info!(name: "distcache.node.back", node = %self.server,
                "memcached node is back: its keys return to it");
        }
    }

    pub(crate) fn failure(&self, ticket: Ticket, error: &StoreErrorKind) {
        // Down at once: the node does not answer, or will refuse every connect the same way.
        let timed_out = matches!(
            error,
            StoreErrorKind::Timeout(_) | StoreErrorKind::Refused(_) | StoreErrorKind::Security(_)
        );
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if timed_out || failures >= self.threshold || ticket == Ticket::Probe {
            *self
                .last_failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error.to_string());
            let until = self.now() + self.retry_interval.as_millis() as u64;
            let was = self.down_until.swap(until, Ordering::AcqRel);
            if ticket == Ticket::Probe {
                self.probing.store(false, Ordering::Release);
            }
            if was == UP {
                self.marked_down.fetch_add(1, Ordering::Relaxed);
                warn!(name: "distcache.node.down", node = %self.server, %error,
                    retry_in = ?self.retry_interval,
                    "memcached node marked down: its keys go to the next node on the ring");
            }
        }
    }

    /// Why the node was last marked down, if it was.
    pub(crate) fn last_failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A request ended without teaching anything (its caller's deadline came first): an
    /// abandoned probe lets the next request probe.
    pub(crate) fn abandoned(&self, ticket: Ticket) {
        if ticket == Ticket::Probe {
            self.probing.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(threshold: u32) -> Health {
        Health::new(
            Server::new("127.0.0.1", 1).unwrap(),
            Instant::now(),
            Duration::from_secs(2),
            threshold,
        )
    }

    fn refused() -> StoreErrorKind {
        StoreErrorKind::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_mark_down_and_one_probe_brings_back() {
        let h = health(2);
        h.failure(Ticket::Up, &refused());
        assert_eq!(h.admit(), Some(Ticket::Up), "one failure is not enough");
        h.success(Ticket::Up);
        h.failure(Ticket::Up, &refused());
        assert_eq!(
            h.admit(),
            Some(Ticket::Up),
            "a success in between resets the count"
        );
        h.failure(Ticket::Up, &refused());
        assert!(
            h.is_down() && h.admit().is_none(),
            "two in a row mark it down"
        );
        assert_eq!(h.transitions(), (1, 0), "counted once");
        h.success(Ticket::Up);
        assert!(
            h.is_down(),
            "a request from before the mark-down does not bring it back"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            h.admit(),
            Some(Ticket::Probe),
            "after the retry interval one request probes"
        );
        assert_eq!(h.admit(), None, "only one");
        h.success(Ticket::Probe);
        assert_eq!(
            h.admit(),
            Some(Ticket::Up),
            "a successful probe brings it back"
        );
        assert!(!h.is_down());
        assert_eq!(h.transitions(), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_or_a_failed_probe_marks_down_at_once() {
        let h = health(5);
        h.failure(
            Ticket::Up,
            &StoreErrorKind::Timeout(Duration::from_millis(1)),
        );
        assert!(h.is_down());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(h.admit(), Some(Ticket::Probe));
        h.failure(Ticket::Probe, &refused());
        assert!(h.is_down(), "the probe failed: down for another interval");
        assert_eq!(h.transitions(), (1, 0), "still the same spell down");
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert_eq!(h.admit(), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(h.admit(), Some(Ticket::Probe));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_lets_the_next_request_probe() {
        let h = health(1);
        h.failure(Ticket::Up, &refused());
        tokio::time::advance(Duration::from_secs(2)).await;
        let probe = h.admit();
        assert_eq!(probe, Some(Ticket::Probe));
        h.abandoned(Ticket::Probe);
        assert_eq!(h.admit(), Some(Ticket::Probe), "not shut out for good");
    }
}
