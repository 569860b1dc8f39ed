//! Deletes a node owes its server, that a connection could not carry: leases to hand back, sent
//! on the node's next connection to the same run of the server, and invalidations that could not
//! reach it, sent on its next connection to any run.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::conn::Connection;
use super::handshake::Instance;
use super::protocol::Request;
use crate::key::WireKey;

/// Leases won by lookups whose callers were gone, that their connection closed before it could
/// hand back: the node sends them on a connection to the same run of the server before its next
/// request. Without this, such a lease blocks its key until it expires (a few seconds:
/// `flight::LEASE`). And keys invalidated while the node could not be reached, deleted before
/// its next request, whichever run of the server answers it (its probe, when it was marked down).
#[derive(Debug, Default)]
pub(crate) struct Orphans {
    /// Read on every request: set only while `deletes` is not empty.
    pending: AtomicBool,
    deletes: Mutex<Vec<(WireKey, Option<LeaseOf>)>>,
}

/// The CAS of a lease to hand back, and the run of the server that granted it; a delete
/// without one is an invalidation.
type LeaseOf = (u64, Instance);

/// Invalidations kept for a node that cannot be reached, at most: past it, the oldest are
/// dropped (their callers were told, `Error::Unreached`).
const MAX_INVALIDATIONS: usize = 10_000;

impl Orphans {
    pub(crate) fn push(&self, key: &WireKey, cas: u64, instance: Instance) {
        self.add(key, Some((cas, instance)));
    }

    /// Deletes `key` before the node's next request.
    pub(crate) fn invalidate(&self, key: &WireKey) {
        self.add(key, None);
    }

    fn add(&self, key: &WireKey, lease: Option<LeaseOf>) {
        let mut deletes = self.deletes.lock().unwrap_or_else(|p| p.into_inner());
        if lease.is_none() {
            if deletes.iter().any(|(k, l)| l.is_none() && k == key) {
                return;
            }
            let invalidations = deletes.iter().filter(|(_, l)| l.is_none()).count();
            if invalidations >= MAX_INVALIDATIONS
                && let Some(oldest) = deletes.iter().position(|(_, l)| l.is_none())
            {
                deletes.remove(oldest);
            }
        }
        deletes.push((key.clone(), lease));
        self.pending.store(true, Ordering::Release);
    }

    /// Sends, on `conn`, the invalidations, and the hand-backs of the leases its run of the
    /// server granted; forgets those of other runs (a restart took them). Inlined to its first
    /// line: every request asks.
    #[inline]
    pub(crate) fn flush_onto(&self, conn: &Connection) {
        if self.pending.load(Ordering::Acquire) {
            self.flush(conn);
        }
    }

    #[cold]
    #[inline(never)]
    fn flush(&self, conn: &Connection) {
        let deletes = {
            let mut deletes = self.deletes.lock().unwrap_or_else(|p| p.into_inner());
            self.pending.store(false, Ordering::Release);
            std::mem::take(&mut *deletes)
        };
        for (key, lease) in deletes {
            let cas = match lease {
                Some((_, instance)) if instance != conn.instance() => continue,
                Some((cas, _)) => Some(cas),
                None => None,
            };
            let delete = Request::Delete { key: &key, cas };
            if conn.send(&delete).is_err() {
                // Closed too: keep it for the next.
                self.add(&key, lease);
            }
        }
    }
}
