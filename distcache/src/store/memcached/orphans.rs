//! Deletes a node owes its server, that a connection could not carry: leases to hand back, sent
//! on the node's next connection to the same run of the server; leases that lookups whose replies
//! were lost may have made, looked for there; and invalidations that could not reach it, sent on
//! its next connection to any run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use super::conn::Connection;
use super::handshake::Instance;
use super::protocol::{Code, Reply, Request};
use crate::key::WireKey;

/// Leases won by lookups whose callers were gone, that their connection closed before it could
/// hand back: the node sends them on a connection to the same run of the server before its next
/// request. Without this, such a lease blocks its key until it expires (a few seconds:
/// `flight::LEASE`). Lookups whose replies were lost (their connection closed first): each may
/// have made a lease nobody knows of, looked for on the next connection to that run and handed
/// back. And keys invalidated while the node could not be reached, deleted before its next
/// request, whichever run of the server answers it (its probe, when it was marked down).
#[derive(Debug, Default)]
pub(crate) struct Orphans {
    /// Read on every request: set only while `owed` is not empty.
    pending: AtomicBool,
    owed: Mutex<Vec<(WireKey, Owed)>>,
}

/// What a node owes its server for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    /// A lease to hand back: its CAS, and the run of the server that granted it.
    Lease(u64, Instance),
    /// A lease that a lookup to this run of the server may have made, its reply lost (then):
    /// its CAS unknown, it is looked for until it would have expired (`seconds` later).
    Unheard {
        instance: Instance,
        lost: Instant,
        seconds: u32,
    },
    /// A delete, whichever run answers.
    Invalidation,
}

/// Invalidations kept for a node that cannot be reached, at most: past it, the oldest are
/// dropped (their callers were told, `Error::Unreached`).
const MAX_INVALIDATIONS: usize = 10_000;

/// Unheard leases kept for a node, at most: each is one lookup that was in flight on a
/// connection that closed; past this, the key waits its lease out.
const MAX_UNHEARD: usize = 1_000;

impl Orphans {
    pub(crate) fn push(&self, key: &WireKey, cas: u64, instance: Instance) {
        self.add(key, Owed::Lease(cas, instance));
    }

    /// A lookup of `key` that asked for a lease of `seconds` lost its reply from `instance` (now,
    /// or a moment ago): if the key holds a lease stub that old on the node's next connection to
    /// that run, before that lease would have expired, it is deleted.
    pub(crate) fn unheard(&self, key: &WireKey, instance: Instance, seconds: u32) {
        self.unheard_since(key, instance, seconds, Instant::now());
    }

    /// [`unheard`](Self::unheard), the reply lost at `lost`.
    pub(crate) fn unheard_since(
        &self,
        key: &WireKey,
        instance: Instance,
        seconds: u32,
        lost: Instant,
    ) {
        let owed = Owed::Unheard {
            instance,
            lost,
            seconds,
        };
        self.add(key, owed);
    }

    /// Deletes `key` before the node's next request.
    pub(crate) fn invalidate(&self, key: &WireKey) {
        self.add(key, Owed::Invalidation);
    }

    fn add(&self, key: &WireKey, owed: Owed) {
        let mut all = self.owed.lock().unwrap_or_else(|p| p.into_inner());
        let alike = |o: &Owed| std::mem::discriminant(o) == std::mem::discriminant(&owed);
        if matches!(owed, Owed::Invalidation | Owed::Unheard { .. }) {
            if let Some(same) = all.iter_mut().find(|(k, o)| alike(o) && k == key) {
                same.1 = match (same.1, owed) {
                    // Two lookups of one key whose replies were lost: the later one's lease is
                    // the younger, looked for as that, and until it would expire. (A peek for
                    // the earlier one, lost with its connection, comes back here after the
                    // later one was owed.) A lease of an earlier run of the server is gone.
                    (
                        Owed::Unheard {
                            instance: was,
                            lost: was_lost,
                            seconds: was_seconds,
                        },
                        Owed::Unheard {
                            instance,
                            lost,
                            seconds,
                        },
                    ) => Owed::Unheard {
                        instance: if lost >= was_lost { instance } else { was },
                        lost: lost.max(was_lost),
                        seconds: seconds.max(was_seconds),
                    },
                    _ => owed,
                };
                return;
            }
            let cap = match owed {
                Owed::Invalidation => MAX_INVALIDATIONS,
                _ => MAX_UNHEARD,
            };
            if all.iter().filter(|(_, o)| alike(o)).count() >= cap
                && let Some(oldest) = all.iter().position(|(_, o)| alike(o))
            {
                all.remove(oldest);
            }
        }
        all.push((key.clone(), owed));
        self.pending.store(true, Ordering::Release);
    }

    /// Whether anything is owed.
    #[cfg(test)]
    pub(crate) fn owes(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Sends, on `conn`, the invalidations, and the hand-backs of the leases its run of the
    /// server granted; looks there for the unheard leases; forgets those of other runs (a
    /// restart took them). Inlined to its first line: every request asks.
    #[inline]
    pub(crate) fn flush_onto(self: &Arc<Self>, conn: &Connection) {
        if self.pending.load(Ordering::Acquire) {
            self.flush(conn);
        }
    }

    #[cold]
    #[inline(never)]
    fn flush(self: &Arc<Self>, conn: &Connection) {
        let owed = {
            let mut owed = self.owed.lock().unwrap_or_else(|p| p.into_inner());
            self.pending.store(false, Ordering::Release);
            std::mem::take(&mut *owed)
        };
        let now = Instant::now();
        for (key, owed) in owed {
            let request = match owed {
                Owed::Lease(_, instance) | Owed::Unheard { instance, .. }
                    if instance != conn.instance() =>
                {
                    continue;
                }
                Owed::Unheard { lost, seconds, .. }
                    if lost + Duration::from_secs(seconds.into()) <= now =>
                {
                    continue;
                }
                Owed::Unheard { .. } => Request::Peek { key: &key },
                Owed::Lease(cas, _) => Request::Delete {
                    key: &key,
                    cas: Some(cas),
                },
                Owed::Invalidation => Request::Delete {
                    key: &key,
                    cas: None,
                },
            };
            match conn.send(&request) {
                Ok(peek) if matches!(owed, Owed::Unheard { .. }) => {
                    // Sent before the request this flush precedes; its answer awaited apart.
                    tokio::spawn(hand_back_unheard(
                        self.clone(),
                        conn.clone(),
                        key,
                        owed,
                        peek,
                    ));
                }
                Ok(_) => {}
                // Closed too: kept for the next.
                Err(_) => self.add(&key, owed),
            }
        }
    }
}

/// Deletes the lease stub a peek at `key` found, if it found one that may be as old as the
/// lookup whose reply was lost: the lease that lookup made, most likely. It may be another's,
/// made before that lookup arrived (which was then told `Z`), or, memcached's clock ticking once
/// a second, made or extended within a second of the loss: that holder's fill is then refused,
/// and the key computed once more, which costs less than every caller of the key waiting out a
/// lease nobody holds. A stub made or extended over a second after the loss (by a process that
/// found the key free again, after another handed back the same lease) has more of its TTL left,
/// and is left alone; so is a value stored meanwhile, or a lease made after the peek (the delete
/// is gated on the stub's CAS).
async fn hand_back_unheard(
    orphans: Arc<Orphans>,
    conn: Connection,
    key: WireKey,
    owed: Owed,
    peek: super::conn::PendingReply,
) {
    let Owed::Unheard { lost, seconds, .. } = owed else {
        return;
    };
    let meta = match peek.await {
        Ok(Ok(Reply::Meta(meta))) => meta,
        // The connection closed before it answered: the next one asks.
        Ok(Err(_)) | Err(_) => return orphans.add(&key, owed),
        Ok(Ok(Reply::Error { .. })) => return,
    };
    // A stub of `N` is empty; a stale item (invalidated) is served to nobody while a lease is
    // out on it. `W`: the peek itself won a stale item's lease, to be handed back too.
    let leased = (meta.won_elsewhere || meta.win) && (meta.size == 0 || meta.stale);
    if !matches!(meta.code, Code::Stored | Code::Value) || !leased {
        return;
    }
    // memcached's clock ticks once a second: a lease of `seconds` made when the lookup was lost,
    // `elapsed` ago, has at most `seconds + 1 - ceil(elapsed)` left. A win (`W`) is the peek's.
    let elapsed = u32::try_from(lost.elapsed().as_millis().div_ceil(1000)).unwrap_or(u32::MAX);
    let as_old = (seconds + 1).saturating_sub(elapsed);
    let old_enough = meta.win || meta.ttl.is_some_and(|left| left <= as_old);
    if let (true, Some(cas)) = (old_enough, meta.cas) {
        debug!(
            key = key.as_str(),
            "handing back a lease a lost reply may have made"
        );
        let delete = Request::Delete {
            key: &key,
            cas: Some(cas),
        };
        if conn.send(&delete).is_err() {
            // Closed meanwhile: a hand-back by its CAS, owed to the next connection.
            orphans.push(&key, cas, conn.instance());
        }
    }
}
