//! Leases to hand back that a connection could not carry: the node sends them on its next
//! connection to the same run of the server.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::conn::Connection;
use super::handshake::Instance;
use super::protocol::Request;
use crate::key::WireKey;

/// Leases won by lookups whose callers were gone, that their connection closed before it could
/// hand back: the node sends them on a connection to the same run of the server before its next
/// request. Without this, such a lease blocks its key until it expires (a few seconds: `flight::LEASE`).
#[derive(Debug, Default)]
pub(crate) struct Orphans {
    /// Read on every request: set only while `leases` is not empty.
    pending: AtomicBool,
    leases: Mutex<Vec<(WireKey, u64, Instance)>>,
}

impl Orphans {
    pub(crate) fn push(&self, key: &WireKey, cas: u64, instance: Instance) {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases.push((key.clone(), cas, instance));
        self.pending.store(true, Ordering::Release);
    }

    /// Hands back, on `conn`, the leases its run of the server granted; forgets those of other
    /// runs (a restart took them). Inlined to its first line: every request asks.
    #[inline]
    pub(crate) fn flush_onto(&self, conn: &Connection) {
        if self.pending.load(Ordering::Acquire) {
            self.flush(conn);
        }
    }

    #[cold]
    #[inline(never)]
    fn flush(&self, conn: &Connection) {
        let leases = {
            let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            self.pending.store(false, Ordering::Release);
            std::mem::take(&mut *leases)
        };
        for (key, cas, instance) in leases {
            if instance != conn.instance() {
                continue;
            }
            let release = Request::Delete {
                key: &key,
                cas: Some(cas),
            };
            if conn.send(&release).is_err() {
                // Closed too: keep it for the next.
                self.push(&key, cas, instance);
            }
        }
    }
}
