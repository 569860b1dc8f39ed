//! Values over an item: a manifest under the value's key, its bytes in chunks under keys of
//! their own, as mcrouter stores big values.
//!
//! memcached refuses items over its item size (`-I`, 1 MiB by default). A value whose bytes, as
//! stored (compressed, if that paid), are over `item_bytes` is written in two steps:
//! - its chunks, of `item_bytes` each, as plain items ([`CHUNK_FLAGS`]), each under a key made of
//!   the value's key, a version drawn at random for this write, and the chunk's index, and placed
//!   on the ring like any key. No lease guards them: no other write uses their keys.
//! - then, once every chunk is stored, a manifest ([`MANIFEST_FLAGS`]) under the value's key, where
//!   the value would have been, under the lease (or the version a swap replaces) as any value is:
//!   the version, the chunks' count and size, the value's size and flags, and the SHA-256 of its
//!   bytes. With signing keys it is signed as any item is, and its digest vouches for the chunks.
//!
//! A reader finds the manifest as it would a value, then reads every chunk in one round: every
//! request is queued at once, and each node's are pipelined on its connections. A new write puts
//! its chunks under a new version, so a reader never puts together parts of two writes, and the
//! digest makes sure of it. A chunk missing (evicted, or on a node lost since) makes the value a
//! miss: the flight removes that manifest (and nothing that replaced it), and the one caller
//! fleet-wide that wins the lease next recomputes it.
//!
//! A manifest's claims are checked before anything is read or allocated for them: its total size
//! against `max_value_bytes`, its chunk size against `item_bytes`, its count against both; and
//! every chunk must be exactly the size the manifest says.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::try_join_all;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
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

/// How much longer than its manifest a chunk is stored for: memcached counts TTLs in whole
/// seconds of its own clock, and the chunks are stored before the manifest, so that with the same
/// TTL a chunk could expire a tick before the manifest that needs it.
const CHUNKS_OUTLIVE: Duration = Duration::from_secs(2);

/// What a manifest says, as it is stored (big-endian):
///
/// | bytes  | field                                              |
/// |--------|----------------------------------------------------|
/// | 0..4   | the value's client flags                           |
/// | 4..12  | the version: part of every chunk's key             |
/// | 12..20 | the value's size in bytes                          |
/// | 20..24 | the size of every chunk but the last               |
/// | 24..28 | the number of chunks                               |
/// | 28..60 | the SHA-256 of the value's bytes                   |
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub(crate) flags: u32,
    pub(crate) version: u64,
    pub(crate) total: u64,
    pub(crate) chunk_bytes: u32,
    pub(crate) count: u32,
    pub(crate) digest: [u8; 32],
}

impl Manifest {
    pub(crate) const BYTES: usize = 60;

    pub(crate) fn to_bytes(&self) -> Bytes {
        let mut bytes = Vec::with_capacity(Self::BYTES);
        bytes.extend_from_slice(&self.flags.to_be_bytes());
        bytes.extend_from_slice(&self.version.to_be_bytes());
        bytes.extend_from_slice(&self.total.to_be_bytes());
        bytes.extend_from_slice(&self.chunk_bytes.to_be_bytes());
        bytes.extend_from_slice(&self.count.to_be_bytes());
        bytes.extend_from_slice(&self.digest);
        Bytes::from(bytes)
    }

    /// The manifest in `data`, if it is one's length.
    pub(crate) fn read(data: &[u8]) -> Option<Manifest> {
        let data: &[u8; Self::BYTES] = data.try_into().ok()?;
        let (flags, rest) = data.split_first_chunk::<4>()?;
        let (version, rest) = rest.split_first_chunk::<8>()?;
        let (total, rest) = rest.split_first_chunk::<8>()?;
        let (chunk_bytes, rest) = rest.split_first_chunk::<4>()?;
        let (count, digest) = rest.split_first_chunk::<4>()?;
        Some(Manifest {
            flags: u32::from_be_bytes(*flags),
            version: u64::from_be_bytes(*version),
            total: u64::from_be_bytes(*total),
            chunk_bytes: u32::from_be_bytes(*chunk_bytes),
            count: u32::from_be_bytes(*count),
            digest: digest.try_into().ok()?,
        })
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
        if u64::from(self.count) != self.total.div_ceil(self.chunk_bytes.into()) {
            return Some("the manifest's count of chunks does not match its sizes");
        }
        None
    }

    /// How long chunk `index` is.
    pub(crate) fn chunk_len(&self, index: u32) -> usize {
        let start = u64::from(index) * u64::from(self.chunk_bytes);
        (self.total - start).min(self.chunk_bytes.into()) as usize
    }
}

/// The key of chunk `index` of the value under `key`, written as `version`: the value's key (cut
/// to fit), `|`, the version in 16 hex digits, `|`, the index. It never ends as a hashed key does
/// (`key.rs`).
pub(crate) fn chunk_key(key: &WireKey, version: u64, index: u32) -> WireKey {
    let suffix = format!("|{version:016x}|{index}");
    let key = key.as_bytes();
    let kept = key.len().min(MAX_KEY_LEN - suffix.len());
    let mut bytes = Vec::with_capacity(kept + suffix.len());
    bytes.extend_from_slice(&key[..kept]);
    bytes.extend_from_slice(suffix.as_bytes());
    WireKey::from_wire(&bytes).expect("printable ASCII, at most 250 bytes")
}

/// The value the chunks hold, if they match `digest`. Every chunk is the size its manifest says,
/// and their total was checked against the limits: this is the only allocation of the value's
/// size.
fn join(chunks: &[Bytes], total: usize, digest: &[u8; 32]) -> Result<Bytes, Unread> {
    let mut data = BytesMut::with_capacity(total);
    let mut hasher = Sha256::new();
    for chunk in chunks {
        hasher.update(chunk);
        data.extend_from_slice(chunk);
    }
    if hasher.finalize()[..] != digest[..] {
        return Err(Unread::Bad(
            "the chunks do not match the manifest's SHA-256",
        ));
    }
    Ok(data.freeze())
}

/// Why a chunk was not read.
enum Unread {
    /// Not there: evicted, or on a node lost since.
    Missing,
    /// There, but not the chunk the manifest describes.
    Bad(&'static str),
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
            Err(Unread::Bad(why)) => {
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
            let chunk = chunk_key(key, manifest.version, index);
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
                _ => Err(Unread::Bad("a chunk is not the one the manifest describes")),
            }
        });
        // The first chunk missing or wrong ends the round: the requests still out are dropped,
        // and their replies, if they come, dropped as they arrive.
        let chunks = try_join_all(reads).await?;
        let (total, digest) = (manifest.total as usize, manifest.digest);
        let joined = crate::blocking::run(total, move || join(&chunks, total, &digest)).await;
        Ok((joined?, manifest.flags))
    }

    /// Stores `data` in chunks, then a manifest for them under `lease`, as
    /// [`set_item`](Cluster::set_item) stores an item: how it went, and, asked for, the
    /// manifest's CAS. Chunks of a manifest that was not stored are deleted in the background.
    /// Bounded as one request is (`connect_timeout + io_timeout`): the chunks' round and the
    /// manifest's share that bound, so that a fill past a call's deadline stays one store
    /// operation.
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
        let manifest = Manifest {
            flags,
            version: fastrand::u64(..),
            total: data.len() as u64,
            chunk_bytes: u32::try_from(chunk_bytes).expect("item_bytes is at most 1 GiB"),
            count: u32::try_from(data.len().div_ceil(chunk_bytes))
                .expect("max_value_bytes over item_bytes fits"),
            digest: {
                let owned = data.clone();
                crate::blocking::run(data.len(), move || Sha256::digest(&owned).into()).await
            },
        };
        let ttl = ttl_seconds(write.expire.saturating_add(CHUNKS_OUTLIVE));
        let manifest_ref = &manifest;
        let writes = (0..manifest.count).map(|index| async move {
            let chunk = chunk_key(key, manifest_ref.version, index);
            let start = index as usize * chunk_bytes;
            let piece = &data[start..start + manifest_ref.chunk_len(index)];
            let request = Request::Set {
                key: &chunk,
                data: piece,
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
        });
        // The fill's own bound, spent: not a call's deadline.
        let spent = |err: StoreError| match err.kind {
            StoreErrorKind::Deadline => StoreError {
                kind: StoreErrorKind::Timeout(bound),
                ..err
            },
            _ => err,
        };
        if let Err(unwritten) = try_join_all(writes).await {
            self.forget_chunks(key, &manifest);
            return match unwritten {
                Unwritten::TooLarge => Ok((Fill::TooLarge, None)),
                Unwritten::Store(err) => Err(spent(err)),
            };
        }
        let written = self
            .set_item(
                key,
                lease,
                (&manifest.to_bytes(), MANIFEST_FLAGS),
                write,
                Some(limit),
            )
            .await
            .map_err(spent);
        // Not stored, for sure: nobody will read these chunks. (After an error, the manifest
        // may have been stored: its chunks are left to expire.)
        if let Ok((Fill::LeaseLost | Fill::TooLarge, _)) = written {
            self.forget_chunks(key, &manifest);
        }
        written
    }

    /// Deletes the chunks of `manifest`, from a spawned task, as far as they can be.
    fn forget_chunks(&self, key: &WireKey, manifest: &Manifest) {
        let (cluster, key, version, count) =
            (self.clone(), key.clone(), manifest.version, manifest.count);
        tokio::spawn(async move {
            for index in 0..count {
                let chunk = chunk_key(&key, version, index);
                let request = Request::Delete {
                    key: &chunk,
                    cas: None,
                };
                let _ = cluster
                    .on_key_node("chunk delete", &chunk, request, None)
                    .await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyEncoder;

    fn manifest() -> Manifest {
        Manifest {
            flags: u32::from_be_bytes(*b"DZJ1"),
            version: 0x0123_4567_89ab_cdef,
            total: 2_500,
            chunk_bytes: 1_024,
            count: 3,
            digest: [7; 32],
        }
    }

    #[test]
    fn a_manifest_reads_back_and_its_claims_are_checked() {
        let m = manifest();
        let bytes = m.to_bytes();
        assert_eq!(bytes.len(), Manifest::BYTES);
        assert_eq!(Manifest::read(&bytes), Some(m.clone()));
        assert_eq!(Manifest::read(&bytes[1..]), None);
        assert_eq!(m.refused(2_500, 1_024), None);
        assert_eq!((m.chunk_len(0), m.chunk_len(2)), (1_024, 452));
        assert!(m.refused(2_499, 1_024).is_some(), "over max_value_bytes");
        assert!(m.refused(2_500, 1_023).is_some(), "chunks over item_bytes");
        let miscounted = Manifest {
            count: 2,
            ..m.clone()
        };
        assert!(miscounted.refused(2_500, 1_024).is_some());
        for chunk_bytes in [0, 1, 1_023] {
            let tiny = Manifest {
                chunk_bytes,
                count: 2_500u32.div_ceil(chunk_bytes.max(1)),
                ..m.clone()
            };
            assert!(
                tiny.refused(2_500, 1_024).is_some(),
                "{chunk_bytes}-byte chunks"
            );
        }
        let many = Manifest {
            total: 1_025 * 1_024,
            count: 1_025,
            ..m.clone()
        };
        assert!(many.refused(usize::MAX, 1_024).is_some(), "over MAX_CHUNKS");
        let most = Manifest {
            total: 1_024 * 1_024,
            count: 1_024,
            ..m.clone()
        };
        assert_eq!(most.refused(usize::MAX, 1_024), None);
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
        assert_eq!(
            chunk_key(&short, 0xab, 3).as_str(),
            "ns:report|00000000000000ab|3"
        );
        let long = keys.encode(&"k".repeat(400));
        let chunk = chunk_key(&long, u64::MAX, u32::MAX);
        assert_eq!(chunk.as_bytes().len(), MAX_KEY_LEN);
        assert!(chunk.as_str().ends_with("|ffffffffffffffff|4294967295"));
        assert_ne!(chunk_key(&short, 1, 0), chunk_key(&short, 2, 0));
        assert_ne!(chunk_key(&short, 1, 0), chunk_key(&short, 1, 1));
    }
}
