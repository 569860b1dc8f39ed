//! Values over an item: a manifest under the value's key, its bytes in chunks under keys of
//! their own, as mcrouter stores big values.
//!
//! memcached refuses items over its item size (`-I`, 1 MiB by default). A value whose bytes, as
//! stored (compressed, if that paid), are over `item_bytes` is written in two steps:
//! - its body (every byte but the first [`HEAD_BYTES`]) in chunks of `item_bytes`, plain items
//!   ([`CHUNK_FLAGS`]) under keys made of the value's key, the body's SHA-256 (its first 16 bytes),
//!   the chunk size and the chunk's index, placed on the ring like any key. Chunks that are
//!   already there, of their size (the same body, stored before), are only touched, to live as
//!   long as the new manifest.
//! - then, once every chunk is there, a manifest ([`MANIFEST_FLAGS`]) under the value's key, where
//!   the value would have been, under the lease (or the version a swap replaces) as any value is:
//!   the value's flags, size and head, the chunks' count and size, and the body's SHA-256. With
//!   signing keys it is signed as any item is, and its digest vouches for the chunks.
//!
//! Keyed by their content, chunks of two different bodies never share a key, so a reader never
//! puts together parts of two writes (and the digest makes sure of it); and a value stored again
//! with the same body, or with only a new freshness header (its head: a `stale_if_error` claim or
//! backoff), writes a manifest and no chunk. A chunk is deleted only when a reader finds it is not
//! what its key names (corrupt, or planted): no manifest can use it then, and the next write puts
//! it back. Chunks nobody reads expire with their TTL, or are evicted first.
//!
//! A reader finds the manifest as it would a value, then reads every chunk in one round: every
//! request is queued at once, and each node's are pipelined on its connections. A chunk missing
//! (evicted, or on a node lost since) makes the value a miss: the flight removes that manifest
//! (and nothing that replaced it), and the one caller fleet-wide that wins the lease next
//! recomputes it.
//!
//! A manifest's claims are checked before anything is read or allocated for them: its total size
//! against `max_value_bytes`, its chunk size against `item_bytes` (and at least 1 KiB), its count
//! against [`MAX_CHUNKS`] and its sizes; and every chunk must be exactly the size it says.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::{join_all, try_join_all};
use sha2::{Digest, Sha256};
use tokio::time::{Instant, timeout_at};
use tracing::debug;

use super::protocol::{Code, ErrorKind, Reply, Request};
use super::{Cluster, Write, meta, ttl_seconds};
use crate::key::{MAX_KEY_LEN, WireKey};
use crate::store::{Fill, Item, Lease, StoreError, StoreErrorKind};

/// Client flags of a big value's manifest: `"DCM1"`. Its bytes are [`Manifest::BYTES`] long.
pub(crate) const MANIFEST_FLAGS: u32 = u32::from_be_bytes(*b"DCM1");

/// Client flags of a chunk of a big value: `"DCC1"`. Its bytes are the value's, from its place.
pub(crate) const CHUNK_FLAGS: u32 = u32::from_be_bytes(*b"DCC1");

/// The flags a big value's manifest is given in place of its own when its chunks cannot be put
/// together: it then decodes as a miss (`codec::DecodeError::Chunks`). Its bytes say why, after
/// a first byte that says whether a chunk was only missing (`M`: evicted, or on a node lost
/// since) or did not match the manifest (`B`). Never stored.
pub(crate) const UNASSEMBLED_FLAGS: u32 = u32::from_be_bytes(*b"DMX\0");

/// The most chunks a value is stored in, and a reader reads: the round of reads holds one request
/// per chunk at once. `CacheBuilder::build` refuses a `max_value_bytes` over this many times
/// `item_bytes`.
pub(crate) const MAX_CHUNKS: u32 = 1024;

/// The smallest chunk a reader takes (every chunk but a value's last): `item_bytes`' own least.
const MIN_CHUNK_BYTES: u32 = 1024;

/// How much longer than its manifest a chunk is stored for, beyond the fill's bound (the most
/// the manifest's write can come after them): memcached counts TTLs in whole seconds of its own
/// clock, so that a chunk could expire a tick early.
const CHUNKS_OUTLIVE: Duration = Duration::from_secs(1);

/// The bytes of a value that its manifest holds itself, ahead of its chunks: as long as a
/// freshness header (`codec::FRESHNESS_BYTES`), so that a value stored again with only a new
/// header finds its chunks where they are.
pub(crate) const HEAD_BYTES: usize = 24;

/// What a manifest says, as it is stored (big-endian):
///
/// | bytes  | field                                                        |
/// |--------|--------------------------------------------------------------|
/// | 0..4   | the value's client flags                                     |
/// | 4..12  | the value's size in bytes, its head included                 |
/// | 12..16 | the size of every chunk but the last                         |
/// | 16..20 | the number of chunks                                         |
/// | 20..52 | the SHA-256 of the body (the value after its head)           |
/// | 52..76 | the head: the value's first [`HEAD_BYTES`]                   |
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub(crate) flags: u32,
    pub(crate) total: u64,
    pub(crate) chunk_bytes: u32,
    pub(crate) count: u32,
    pub(crate) digest: [u8; 32],
    pub(crate) head: [u8; HEAD_BYTES],
}

impl Manifest {
    pub(crate) const BYTES: usize = 52 + HEAD_BYTES;

    pub(crate) fn to_bytes(&self) -> Bytes {
        let mut bytes = Vec::with_capacity(Self::BYTES);
        bytes.extend_from_slice(&self.flags.to_be_bytes());
        bytes.extend_from_slice(&self.total.to_be_bytes());
        bytes.extend_from_slice(&self.chunk_bytes.to_be_bytes());
        bytes.extend_from_slice(&self.count.to_be_bytes());
        bytes.extend_from_slice(&self.digest);
        bytes.extend_from_slice(&self.head);
        Bytes::from(bytes)
    }

    /// The manifest in `data`, if it is one's length.
    pub(crate) fn read(data: &[u8]) -> Option<Manifest> {
        let data: &[u8; Self::BYTES] = data.try_into().ok()?;
        let (flags, rest) = data.split_first_chunk::<4>()?;
        let (total, rest) = rest.split_first_chunk::<8>()?;
        let (chunk_bytes, rest) = rest.split_first_chunk::<4>()?;
        let (count, rest) = rest.split_first_chunk::<4>()?;
        let (digest, head) = rest.split_first_chunk::<32>()?;
        Some(Manifest {
            flags: u32::from_be_bytes(*flags),
            total: u64::from_be_bytes(*total),
            chunk_bytes: u32::from_be_bytes(*chunk_bytes),
            count: u32::from_be_bytes(*count),
            digest: *digest,
            head: head.try_into().ok()?,
        })
    }

    /// The manifest of `data` under `flags`, in chunks of `chunk_bytes`: its body hashed on a
    /// blocking thread when it is big (`blocking.rs`).
    async fn of(data: &Bytes, flags: u32, chunk_bytes: usize) -> Manifest {
        let body = data.slice(HEAD_BYTES..);
        let len = body.len();
        let digest: [u8; 32] =
            crate::blocking::run(len, move || Sha256::digest(&body).into()).await;
        Manifest {
            flags,
            total: data.len() as u64,
            chunk_bytes: u32::try_from(chunk_bytes).expect("item_bytes is at most 1 GiB"),
            count: u32::try_from(len.div_ceil(chunk_bytes))
                .expect("at most MAX_CHUNKS (CacheBuilder::build)"),
            digest,
            head: data[..HEAD_BYTES]
                .try_into()
                .expect("a chunked value is over 1 KiB"),
        }
    }

    /// The key of chunk `index`, for the value under `key`.
    pub(crate) fn chunk_key(&self, key: &WireKey, index: u32) -> WireKey {
        chunk_key(key, &self.digest, self.chunk_bytes, index)
    }

    /// Why a reader with these limits must not act on the manifest, if it must not: each claim is
    /// checked before anything is read or allocated for it.
    pub(crate) fn refused(&self, max_total: usize, max_chunk: usize) -> Option<&'static str> {
        if usize::try_from(self.total).map_or(true, |total| total > max_total) {
            return Some("the manifest declares more than max_value_bytes");
        }
        if self.chunk_bytes as usize > max_chunk {
            return Some("the manifest declares chunks over item_bytes");
        }
        if self.chunk_bytes < MIN_CHUNK_BYTES {
            return Some("the manifest declares chunks under 1 KiB");
        }
        if self.count > MAX_CHUNKS {
            return Some("the manifest declares over 1,024 chunks");
        }
        let Some(body) = self
            .total
            .checked_sub(HEAD_BYTES as u64)
            .filter(|&body| body > 0)
        else {
            return Some("the manifest declares no more than its head");
        };
        if u64::from(self.count) != body.div_ceil(self.chunk_bytes.into()) {
            return Some("the manifest's count of chunks does not match its sizes");
        }
        None
    }

    /// How long chunk `index` is.
    pub(crate) fn chunk_len(&self, index: u32) -> usize {
        let start = u64::from(index) * u64::from(self.chunk_bytes);
        let body = self.total - HEAD_BYTES as u64;
        (body - start).min(self.chunk_bytes.into()) as usize
    }
}

/// The key of chunk `index`, of `chunk_bytes`, of the body whose SHA-256 is `digest`, for the
/// value under `key`: the value's key, `|`, the digest's first 16 bytes in 32 hex digits, `|`, the
/// chunk size, `|`, the index. A key too long for that is cut, and `#` and 16 hex digits of its
/// own SHA-256 put in the cut's place, so that two keys never share chunks. It never ends as a
/// hashed key does (`key.rs`).
pub(crate) fn chunk_key(key: &WireKey, digest: &[u8; 32], chunk_bytes: u32, index: u32) -> WireKey {
    let mut suffix = String::with_capacity(64);
    suffix.push('|');
    for byte in &digest[..16] {
        suffix.push_str(&format!("{byte:02x}"));
    }
    suffix.push_str(&format!("|{chunk_bytes}|{index}"));
    let key = key.as_bytes();
    let mut bytes = Vec::with_capacity(MAX_KEY_LEN);
    if key.len() + suffix.len() <= MAX_KEY_LEN {
        bytes.extend_from_slice(key);
    } else {
        let whole = Sha256::digest(key);
        bytes.extend_from_slice(&key[..MAX_KEY_LEN - suffix.len() - 17]);
        bytes.push(b'#');
        for byte in &whole[..8] {
            bytes.extend_from_slice(format!("{byte:02x}").as_bytes());
        }
    }
    bytes.extend_from_slice(suffix.as_bytes());
    WireKey::from_wire(&bytes).expect("printable ASCII, at most 250 bytes")
}

/// The value a manifest stands for: its head, then its chunks, if they match its digest. Every
/// chunk is the size the manifest says, and its total was checked against the limits: this is
/// the only allocation of the value's size.
fn join(head: &[u8], chunks: &[Bytes], total: usize, digest: &[u8; 32]) -> Result<Bytes, Unread> {
    let mut data = BytesMut::with_capacity(total);
    data.extend_from_slice(head);
    let mut hasher = Sha256::new();
    for chunk in chunks {
        hasher.update(chunk);
        data.extend_from_slice(chunk);
    }
    if hasher.finalize()[..] != digest[..] {
        return Err(Unread::Wrong(
            "the chunks do not match the manifest's SHA-256",
        ));
    }
    Ok(data.freeze())
}

/// Why a chunk was not read.
enum Unread {
    /// Not there: evicted, or on a node lost since.
    Missing,
    /// The manifest is not one to act on.
    Bad(&'static str),
    /// A chunk is there, but not what its key names: corrupt, or planted.
    Wrong(&'static str),
    Store(StoreError),
}

/// Why chunks were not written.
enum Unwritten {
    TooLarge,
    Store(StoreError),
}

impl Cluster {
    /// The largest value a manifest may stand for, and the largest chunk.
    fn chunk_limits(&self) -> (usize, usize) {
        (self.inner.max_assembled, self.inner.chunk_bytes)
    }

    /// Replaces a manifest `item` with the value it stands for, its chunks read in one round;
    /// or, if they cannot be put together, with an item that decodes as a miss and says why
    /// ([`UNASSEMBLED_FLAGS`]). Fails as a lookup does if a chunk's node cannot be asked.
    pub(super) async fn read_big(
        &self,
        key: &WireKey,
        item: &mut Item,
        deadline: Instant,
    ) -> Result<(), StoreError> {
        let (data, flags) = match self.read_chunks(key, &item.data, deadline).await {
            Ok(assembled) => assembled,
            Err(Unread::Store(err)) => return Err(err),
            Err(Unread::Missing) => {
                debug!(
                    key = key.as_str(),
                    "a chunk of a big value is missing (evicted?): a miss"
                );
                (
                    Bytes::from_static(b"Ma chunk is missing"),
                    UNASSEMBLED_FLAGS,
                )
            }
            Err(Unread::Bad(why) | Unread::Wrong(why)) => {
                let mut reason = Vec::with_capacity(1 + why.len());
                reason.push(b'B');
                reason.extend_from_slice(why.as_bytes());
                (Bytes::from(reason), UNASSEMBLED_FLAGS)
            }
        };
        item.data = data;
        item.flags = flags;
        Ok(())
    }

    async fn read_chunks(
        &self,
        key: &WireKey,
        manifest: &[u8],
        deadline: Instant,
    ) -> Result<(Bytes, u32), Unread> {
        let manifest = Manifest::read(manifest).ok_or(Unread::Bad("the manifest is unreadable"))?;
        let (max_total, max_chunk) = self.chunk_limits();
        if let Some(why) = manifest.refused(max_total, max_chunk) {
            return Err(Unread::Bad(why));
        }
        let manifest = &manifest;
        let reads = (0..manifest.count).map(|index| async move {
            let chunk = manifest.chunk_key(key, index);
            let request = Request::Get { key: &chunk };
            let (node, reply, _) = self
                .on_key_node("chunk read", &chunk, request, Some(deadline))
                .await
                .map_err(Unread::Store)?;
            let server = &self.inner.nodes[node].server;
            let meta = meta("chunk read", server, reply).map_err(Unread::Store)?;
            match meta.code {
                Code::Value
                    if meta.client_flags == Some(CHUNK_FLAGS)
                        && meta.size == manifest.chunk_len(index)
                        && !meta.skipped() =>
                {
                    Ok(meta.data)
                }
                Code::Miss => Err(Unread::Missing),
                _ => Err(Unread::Wrong(
                    "a chunk is not the one the manifest describes",
                )),
            }
        });
        // The first chunk missing or wrong ends the round: the requests still out are dropped,
        // and their replies, if they come, dropped as they arrive.
        let (total, digest, head) = (manifest.total as usize, manifest.digest, manifest.head);
        let joined = match try_join_all(reads).await {
            Ok(chunks) => {
                crate::blocking::run(total, move || join(&head, &chunks, total, &digest)).await
            }
            Err(err) => Err(err),
        };
        if let Err(Unread::Wrong(_)) = joined {
            self.forget_chunks(key, manifest, deadline).await;
        }
        Ok((joined?, manifest.flags))
    }

    /// Stores `data` in chunks (those not there already), then a manifest for them under
    /// `lease`, as [`set_item`](Cluster::set_item) stores an item: how it went, and, asked for,
    /// the manifest's CAS. Bounded as one request is (`connect_timeout + io_timeout`): the
    /// chunks' rounds and the manifest's share that bound, so that a fill past a call's deadline
    /// stays one store operation.
    pub(super) async fn set_chunked(
        &self,
        key: &WireKey,
        lease: Lease,
        (data, flags): (&Bytes, u32),
        write: Write,
    ) -> Result<(Fill, Option<u64>), StoreError> {
        let chunk_bytes = self.inner.chunk_bytes;
        if self
            .inner
            .nodes
            .iter()
            .any(|node| node.refuses(MAX_KEY_LEN, chunk_bytes))
        {
            // A server's item size is under `item_bytes`: not sent, as for a single item.
            return Ok((Fill::TooLarge, None));
        }
        let bound = self.inner.nodes[lease.node].request_bound();
        let limit = Instant::now() + bound;
        // The fill's own bound, spent: not a call's deadline.
        let spent = |err: StoreError| match err.kind {
            StoreErrorKind::Deadline => StoreError {
                kind: StoreErrorKind::Timeout(bound),
                ..err
            },
            _ => err,
        };
        let manifest = timeout_at(limit, Manifest::of(data, flags, chunk_bytes))
            .await
            .map_err(|_| StoreError {
                operation: write.operation,
                node: "this process".into(),
                kind: StoreErrorKind::Timeout(bound),
            })?;
        let ttl = ttl_seconds(write.expire.saturating_add(bound + CHUNKS_OUTLIVE));
        let missing = self
            .touch_chunks(key, &manifest, ttl, limit)
            .await
            .map_err(spent)?;
        let body = data.slice(HEAD_BYTES..);
        let manifest_ref = &manifest;
        let writes = missing.into_iter().map(|index| {
            let body = &body;
            async move {
                let chunk = manifest_ref.chunk_key(key, index);
                let start = index as usize * chunk_bytes;
                let request = Request::Set {
                    key: &chunk,
                    data: &body[start..start + manifest_ref.chunk_len(index)],
                    flags: CHUNK_FLAGS,
                    ttl,
                };
                let (node, reply, _) = self
                    .on_key_node("chunk write", &chunk, request, Some(limit))
                    .await
                    .map_err(Unwritten::Store)?;
                match reply {
                    Reply::Meta(meta) if meta.code == Code::Stored => Ok(()),
                    Reply::Error {
                        kind: ErrorKind::Server,
                        message,
                    } if message.contains("too large") => Err(Unwritten::TooLarge),
                    other => {
                        let server = &self.inner.nodes[node].server;
                        let code = meta("chunk write", server, other)
                            .map_err(Unwritten::Store)?
                            .code;
                        Err(Unwritten::Store(StoreError {
                            operation: "chunk write",
                            node: server.to_string(),
                            kind: StoreErrorKind::Server(format!("{code:?} to a plain store")),
                        }))
                    }
                }
            }
        });
        match try_join_all(writes).await {
            Ok(_) => {}
            Err(Unwritten::TooLarge) => return Ok((Fill::TooLarge, None)),
            Err(Unwritten::Store(err)) => return Err(spent(err)),
        }
        self.set_item(
            key,
            lease,
            (&manifest.to_bytes(), MANIFEST_FLAGS),
            write,
            Some(limit),
        )
        .await
        .map_err(spent)
    }

    /// Touches the chunks of `manifest`, so that those already there live for `ttl`: the
    /// indexes of those that are not, or not as their key says (another size or flags), to be
    /// written. One round, by `limit`.
    async fn touch_chunks(
        &self,
        key: &WireKey,
        manifest: &Manifest,
        ttl: u32,
        limit: Instant,
    ) -> Result<Vec<u32>, StoreError> {
        let touches = (0..manifest.count).map(|index| async move {
            let chunk = manifest.chunk_key(key, index);
            let request = Request::TouchChunk { key: &chunk, ttl };
            let (node, reply, _) = self
                .on_key_node("chunk touch", &chunk, request, Some(limit))
                .await?;
            let server = &self.inner.nodes[node].server;
            let meta = meta("chunk touch", server, reply)?;
            let there = meta.code == Code::Stored
                && meta.client_flags == Some(CHUNK_FLAGS)
                && meta.size == manifest.chunk_len(index);
            Ok::<_, StoreError>((!there).then_some(index))
        });
        Ok(try_join_all(touches).await?.into_iter().flatten().collect())
    }

    /// Deletes the chunks of `manifest`, in one round by `deadline`, as far as they can be: one
    /// of them is not what its key names, so no manifest can use them. Before the read returns:
    /// the recompute it leads to must not find them still there, and keep them.
    async fn forget_chunks(&self, key: &WireKey, manifest: &Manifest, deadline: Instant) {
        let deletes = (0..manifest.count).map(|index| async move {
            let chunk = manifest.chunk_key(key, index);
            let request = Request::Delete {
                key: &chunk,
                cas: None,
            };
            let _ = self
                .on_key_node("chunk delete", &chunk, request, Some(deadline))
                .await;
        });
        join_all(deletes).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyEncoder;

    fn manifest() -> Manifest {
        Manifest {
            flags: u32::from_be_bytes(*b"DZJ1"),
            total: 2_500 + HEAD_BYTES as u64,
            chunk_bytes: 1_024,
            count: 3,
            digest: [7; 32],
            head: [9; HEAD_BYTES],
        }
    }

    #[test]
    fn a_manifest_reads_back_and_its_claims_are_checked() {
        let m = manifest();
        let bytes = m.to_bytes();
        assert_eq!(bytes.len(), Manifest::BYTES);
        assert_eq!(Manifest::read(&bytes), Some(m.clone()));
        assert_eq!(Manifest::read(&bytes[1..]), None);
        // 2,500 bytes of body after the head: chunks of 1,024, 1,024 and 452.
        let total = 2_500 + HEAD_BYTES;
        assert_eq!(m.refused(total, 1_024), None);
        assert_eq!((m.chunk_len(0), m.chunk_len(2)), (1_024, 452));
        assert!(
            m.refused(total - 1, 1_024).is_some(),
            "over max_value_bytes"
        );
        assert!(m.refused(total, 1_023).is_some(), "chunks over item_bytes");
        let miscounted = Manifest {
            count: 2,
            ..m.clone()
        };
        assert!(miscounted.refused(total, 1_024).is_some());
        for chunk_bytes in [0, 1, 1_023] {
            let tiny = Manifest {
                chunk_bytes,
                count: 2_500u32.div_ceil(chunk_bytes.max(1)),
                ..m.clone()
            };
            assert!(
                tiny.refused(total, 1_024).is_some(),
                "{chunk_bytes}-byte chunks"
            );
        }
        let many = Manifest {
            total: 1_025 * 1_024 + HEAD_BYTES as u64,
            count: 1_025,
            ..m.clone()
        };
        assert!(many.refused(usize::MAX, 1_024).is_some(), "over MAX_CHUNKS");
        let most = Manifest {
            total: 1_024 * 1_024 + HEAD_BYTES as u64,
            count: 1_024,
            ..m.clone()
        };
        assert_eq!(most.refused(usize::MAX, 1_024), None);
        for total in [0, HEAD_BYTES as u64] {
            let headless = Manifest {
                total,
                count: 0,
                ..m.clone()
            };
            assert!(headless.refused(usize::MAX, 1_024).is_some(), "{total}");
        }
        let huge = Manifest {
            total: u64::MAX,
            chunk_bytes: 1,
            count: 0,
            ..m
        };
        assert!(huge.refused(usize::MAX, 1_024).is_some());
    }

    #[test]
    fn chunk_keys_are_valid_distinct_and_never_look_hashed() {
        let keys = KeyEncoder::new("ns").unwrap();
        let short = keys.encode("report");
        let mut digest = [0u8; 32];
        digest[0] = 0xab;
        assert_eq!(
            chunk_key(&short, &digest, 65_536, 3).as_str(),
            "ns:report|ab000000000000000000000000000000|65536|3"
        );
        // Long keys that differ only past the cut still have chunks of their own.
        let (long, other) = (
            keys.encode(&format!("{}a", "k".repeat(240))),
            keys.encode(&format!("{}b", "k".repeat(240))),
        );
        let chunk = chunk_key(&long, &[0xff; 32], u32::MAX, u32::MAX);
        assert_eq!(chunk.as_bytes().len(), MAX_KEY_LEN);
        assert!(
            chunk
                .as_str()
                .ends_with("|ffffffffffffffffffffffffffffffff|4294967295|4294967295")
        );
        assert_ne!(chunk, chunk_key(&other, &[0xff; 32], u32::MAX, u32::MAX));
        let mut another = digest;
        another[15] = 1;
        assert_ne!(
            chunk_key(&short, &digest, 1024, 0),
            chunk_key(&short, &another, 1024, 0)
        );
        assert_ne!(
            chunk_key(&short, &digest, 1024, 0),
            chunk_key(&short, &digest, 2048, 0)
        );
        assert_ne!(
            chunk_key(&short, &digest, 1024, 0),
            chunk_key(&short, &digest, 1024, 1)
        );
    }
}
