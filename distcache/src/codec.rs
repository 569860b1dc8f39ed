//! Values to stored bytes and back: JSON, marked in the item's client flags.
//!
//! The flags say which format wrote the bytes, so that a foreign writer's item (a Python
//! client's pickle, a PHP session) or a future format is recognised before it is parsed. Bytes
//! that do not decode as the requested type are a miss, never a panic and never returned.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::json;

/// Client flags of an item written by this codec: `"DCJ1"`, distcache JSON, version 1.
pub(crate) const JSON_FLAGS: u32 = u32::from_be_bytes(*b"DCJ1");

/// Client flags of a value's JSON compressed with zstd: `"DZJ1"` (the second byte, `Z`, says
/// compressed). Written for JSON of [`COMPRESS_FROM`] bytes or more, when zstd makes it smaller;
/// its zstd frame declares the JSON's size, which a reader checks against its `max_value_bytes`
/// before it allocates anything.
pub(crate) const ZSTD_JSON_FLAGS: u32 = u32::from_be_bytes(*b"DZJ1");

/// The JSON size from which values are compressed: below it, zstd's fixed cost (about 10 µs a
/// value on the development machine) outweighs the bytes it saves on a LAN (BENCHMARKS.md).
pub(crate) const COMPRESS_FROM: usize = 16 * 1024;

/// zstd's level: 1, which packs the demo's decimal digits 2.46× at 0.3 ms per 450 KB; higher
/// levels were slower without packing tighter (BENCHMARKS.md).
const ZSTD_LEVEL: i32 = 1;

/// Client flags of a value kept past its `expire`, compressed: `"DZF1"`, a [`Freshness`] header
/// as under [`FRESHNESS_FLAGS`], then the value's JSON as one zstd frame as under
/// [`ZSTD_JSON_FLAGS`].
pub(crate) const ZSTD_FRESHNESS_FLAGS: u32 = u32::from_be_bytes(*b"DZF1");

/// A value's JSON as it is stored, after `header` if it has one: compressed if that pays
/// ([`ZSTD_JSON_FLAGS`], [`ZSTD_FRESHNESS_FLAGS`]), as it is otherwise ([`JSON_FLAGS`],
/// [`FRESHNESS_FLAGS`]).
pub(crate) fn pack(header: Option<&Freshness>, json: &Bytes) -> (Bytes, u32) {
    stored(header, json, compressed(json))
}

/// [`pack`], on a blocking thread for a big value
/// (`blocking.rs`); uncompressed if that is not done `by` then (a call's deadline: the time it
/// takes is no store operation's).
pub(crate) async fn pack_off_worker(
    header: Option<Freshness>,
    json: &Bytes,
    by: Option<Instant>,
) -> (Bytes, u32) {
    let owned = json.clone();
    let packing = crate::blocking::run(json.len(), move || pack(header.as_ref(), &owned));
    match by {
        None => packing.await,
        Some(by) => tokio::time::timeout_at(by, packing)
            .await
            .unwrap_or_else(|_| stored(header.as_ref(), json, None)),
    }
}

/// `json` as it is stored, after `header` if it has one: as its compressed frame, `packed`, if
/// there is one.
fn stored(header: Option<&Freshness>, json: &Bytes, packed: Option<Vec<u8>>) -> (Bytes, u32) {
    match (header, packed) {
        (None, Some(packed)) => (Bytes::from(packed), ZSTD_JSON_FLAGS),
        (None, None) => (json.clone(), JSON_FLAGS),
        (Some(header), Some(packed)) => (header.item(&packed), ZSTD_FRESHNESS_FLAGS),
        (Some(header), None) => (header.item(json), FRESHNESS_FLAGS),
    }
}

/// The item a compressed item ([`ZSTD_JSON_FLAGS`] or [`ZSTD_FRESHNESS_FLAGS`]) stands for (its
/// JSON, after its header if it has one, under the flags of its kind uncompressed), as [`unpack`]
/// and [`unpack_fresh`] read it; on a blocking thread for a big one (`blocking.rs`).
pub(crate) async fn unpack_off_worker(
    flags: u32,
    data: &Bytes,
    max_value: usize,
) -> Result<(Bytes, u32), DecodeError> {
    let fresh = flags == ZSTD_FRESHNESS_FLAGS;
    let frame = if fresh {
        data.get(FRESHNESS_BYTES..).unwrap_or_default()
    } else {
        data
    };
    // The work is the JSON's size (at most `max_value`), not the frame's.
    let declared = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) => usize::try_from(size).unwrap_or(usize::MAX).min(max_value),
        _ => frame.len(),
    };
    let data = data.clone();
    crate::blocking::run(declared, move || match fresh {
        true => unpack_fresh(&data, max_value).map(|item| (item, FRESHNESS_FLAGS)),
        false => unpack(&data, max_value).map(|json| (json, JSON_FLAGS)),
    })
    .await
}

/// `json` compressed, if it is long enough to try and zstd makes it smaller.
fn compressed(json: &[u8]) -> Option<Vec<u8>> {
    if json.len() < COMPRESS_FROM {
        return None;
    }
    compress(json)
        .ok()
        .filter(|packed| packed.len() < json.len())
}

thread_local! {
    /// Each thread's zstd contexts, made once: making one costs more than decompressing 16 KiB
    /// (8 µs of 13, measured on the development machine). A context keeps no data between
    /// frames, only its tables.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// `json` as one zstd frame that declares its size and carries a checksum (4 bytes), so that a
/// corrupted item is a miss rather than other bytes.
fn compress(json: &[u8]) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with_borrow_mut(|compressor| {
        let compressor = match compressor {
            Some(compressor) => compressor,
            None => {
                let mut made = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
                made.include_checksum(true)?;
                compressor.insert(made)
            }
        };
        compressor.compress(json)
    })
}

/// The JSON of a [`ZSTD_JSON_FLAGS`] item, of at most `max_value` bytes. A frame that does not
/// declare its size, declares more than `max_value`, or holds other than it declares is refused
/// before anything of its claimed size is allocated, or as soon as it overflows.
pub(crate) fn unpack(data: &[u8], max_value: usize) -> Result<Bytes, DecodeError> {
    unpack_after(&[], data, max_value)
}

/// A [`ZSTD_FRESHNESS_FLAGS`] item as the [`FRESHNESS_FLAGS`] item it stands for: its header,
/// then its JSON, of at most `max_value` bytes, as [`unpack`] reads it.
pub(crate) fn unpack_fresh(data: &[u8], max_value: usize) -> Result<Bytes, DecodeError> {
    if data.len() < FRESHNESS_BYTES {
        return Err(DecodeError::Freshness);
    }
    let (header, frame) = data.split_at(FRESHNESS_BYTES);
    unpack_after(header, frame, max_value)
}

/// `head`, then the JSON `frame` holds: the JSON checked as [`unpack`] says, in one allocation.
fn unpack_after(head: &[u8], frame: &[u8], max_value: usize) -> Result<Bytes, DecodeError> {
    let declared = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) => size,
        Ok(None) => {
            return Err(DecodeError::Compressed(
                "the frame does not declare its size",
            ));
        }
        Err(_) => return Err(DecodeError::Compressed("not a zstd frame")),
    };
    let size = usize::try_from(declared)
        .ok()
        .filter(|&size| size <= max_value)
        .ok_or(DecodeError::Compressed(
            "the frame declares more than max_value_bytes",
        ))?;
    let mut out = vec![0; head.len() + size];
    out[..head.len()].copy_from_slice(head);
    let written = DECOMPRESSOR.with_borrow_mut(|decompressor| {
        let decompressor = match decompressor {
            Some(decompressor) => decompressor,
            None => decompressor.insert(
                zstd::bulk::Decompressor::new()
                    .map_err(|_| DecodeError::Compressed("no zstd context"))?,
            ),
        };
        decompressor
            .decompress_to_buffer(frame, &mut out[head.len()..])
            .map_err(|_| {
                DecodeError::Compressed("the frame is corrupt, or holds more than it declares")
            })
    })?;
    if written != size {
        return Err(DecodeError::Compressed(
            "the frame holds less than it declares",
        ));
    }
    Ok(Bytes::from(out))
}

/// The flags a compressed item is given in place of its own when it is unreadable (corrupt,
/// foreign, or declaring more than `max_value_bytes`): it then decodes as a miss. Never stored.
pub(crate) const UNREADABLE_FLAGS: u32 = u32::from_be_bytes(*b"DZX\0");

/// Client flags of a marker that stands for a value that could not be stored: `"DCU1"`. Its first
/// byte says whether the value has JSON that reads back (`L`: only too large, so callers of one
/// process can still share one run) or not (`U`); the rest says why, for an operator. A caller
/// that finds it runs the getter itself at once, without waiting for any other process.
pub(crate) const UNSTORABLE_FLAGS: u32 = u32::from_be_bytes(*b"DCU1");

/// Client flags of a marker that says the key's getter failed and is backed off: `"DCB1"`. Its
/// bytes are when the backoff ends, in Unix milliseconds, as decimal digits.
pub(crate) const BACKOFF_FLAGS: u32 = u32::from_be_bytes(*b"DCB1");

/// Client flags of a value kept past its `expire` (`stale_if_error`): `"DCF1"`, distcache JSON
/// with freshness, version 1. Its bytes are a [`Freshness`] header, [`FRESHNESS_BYTES`] long,
/// then the value's JSON as under [`JSON_FLAGS`]. A value written without `stale_if_error` keeps
/// [`JSON_FLAGS`] and its bytes as they were.
pub(crate) const FRESHNESS_FLAGS: u32 = u32::from_be_bytes(*b"DCF1");

/// The length of the [`Freshness`] header: three big-endian `u64`.
pub(crate) const FRESHNESS_BYTES: usize = 24;

/// When a value kept past its `expire` may be served, and recomputed: Unix milliseconds of the
/// writer's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Freshness {
    /// Fresh until then; stale after.
    pub(crate) fresh_until: u64,
    /// Never served after then, stale or not: `fresh_until` + the writer's `max_stale`.
    pub(crate) stale_until: u64,
    /// Nobody starts recomputing the value before then: a recompute is under way (claimed until
    /// it is bounded to end), or the last one failed and the key is backed off. 0: not before.
    pub(crate) retry_at: u64,
}

impl Freshness {
    /// The header followed by `json`: the bytes of a [`FRESHNESS_FLAGS`] item.
    pub(crate) fn item(&self, json: &[u8]) -> Bytes {
        let mut bytes = Vec::with_capacity(FRESHNESS_BYTES + json.len());
        bytes.extend_from_slice(&self.fresh_until.to_be_bytes());
        bytes.extend_from_slice(&self.stale_until.to_be_bytes());
        bytes.extend_from_slice(&self.retry_at.to_be_bytes());
        bytes.extend_from_slice(json);
        Bytes::from(bytes)
    }

    /// The header of a [`FRESHNESS_FLAGS`] item (its JSON starts at [`FRESHNESS_BYTES`]); `None`
    /// if the bytes are too short to hold one, or it is inconsistent (stale before fresh).
    pub(crate) fn read(data: &[u8]) -> Option<Freshness> {
        let word = |i: usize| {
            let bytes = data.get(i * 8..i * 8 + 8)?;
            Some(u64::from_be_bytes(bytes.try_into().ok()?))
        };
        let header = Freshness {
            fresh_until: word(0)?,
            stale_until: word(1)?,
            retry_at: word(2)?,
        };
        (header.fresh_until <= header.stale_until).then_some(header)
    }
}

/// Now, in Unix milliseconds, as [`Freshness`] counts.
pub(crate) fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The longest a marker lives (less if the value's `expire` is shorter): long enough to spare
/// callers from taking turns at the getter, short enough that a value that becomes storable (a
/// fixed `Serialize`, a smaller result) is stored again soon.
pub(crate) const MARKER_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// memcached's default item size limit (`-I 1m`) less room for the longest key and the item
/// header: measured on memcached 1.6.18, a 250-byte key leaves 1,048,263 bytes for the value.
pub(crate) const DEFAULT_ITEM_BYTES: usize = 1024 * 1024 - 512;

/// The default largest value, as JSON: 16 MiB, sixteen times the default item size. Compressed,
/// the demo's factorials of that size fit in 7 MiB; a value that large is read whole into memory
/// by every caller, and a bound on it is a bound on what a hostile item can make a reader hold.
pub(crate) const DEFAULT_MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;

/// Why a value was not stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EncodeError {
    #[error("the value is {size} bytes as JSON, over the limit of {limit}")]
    TooLarge {
        /// The encoded value: it is still good for this process's waiting callers.
        bytes: Bytes,
        size: usize,
        limit: usize,
    },
    /// serde_json refused the value, or JSON would not give it back as it is (a non-finite
    /// float, a `Some` of something written as `null`): `json::Error` says which, and where.
    /// One variant for both, because the flight treats them alike (not stored, not shared).
    #[error("the value cannot be stored as JSON: {0}")]
    Serialize(#[source] json::Error),
    /// The JSON does not read back as the value's type: its `Serialize` and `Deserialize`
    /// disagree.
    #[error("the value's JSON does not read back as its type: {0}")]
    Unreadable(#[source] serde_json::Error),
}

/// Why stored bytes were not returned.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("the key's value could not be stored: {reason}")]
    Unstorable {
        /// The value has JSON that reads back: callers of one process may share one run.
        shareable: bool,
        reason: String,
    },
    #[error("the key's getter failed and is backed off")]
    Backoff { until: SystemTime },
    #[error("the item's freshness header is unreadable")]
    Freshness,
    #[error("the item's compressed value is unreadable: {0}")]
    Compressed(&'static str),
    #[error("the big value's chunks cannot be put together: {reason}")]
    Chunks {
        /// Only missing (evicted, or on a node lost since), rather than not the manifest's.
        missing: bool,
        reason: String,
    },
    #[error("the item has no valid signature: written by something that holds no signing key")]
    Forged,
    #[error("the item's flags {0:#010x} are not distcache JSON")]
    ForeignFlags(u32),
    #[error("the item is not JSON of the requested type: {0}")]
    Mismatch(#[source] serde_json::Error),
}

pub(crate) fn encode<T: Serialize>(value: &T, limit: usize) -> Result<Bytes, EncodeError> {
    // Not `serde_json::to_vec`: it writes NaN as `null`, which then fails to decode (or decodes
    // as `None`) in every reader; refused here, the value is returned but never stored.
    let json = json::to_vec_lossless(value).map_err(EncodeError::Serialize)?;
    let size = json.len();
    let bytes = Bytes::from(json);
    if size > limit {
        return Err(EncodeError::TooLarge { bytes, size, limit });
    }
    Ok(bytes)
}

/// Encodes a computed value for the store, and checks that its bytes read back as `T`: a value
/// whose `Serialize` and `Deserialize` disagree is refused here, when it is computed, rather than
/// stored, read back as undecodable and recomputed by every caller in turn. Values over `limit`
/// are not checked: they are not stored.
pub(crate) fn encode_for_store<T: Serialize + DeserializeOwned>(
    value: &T,
    limit: usize,
) -> Result<Bytes, EncodeError> {
    let bytes = encode(value, limit)?;
    if let Err(err) = serde_json::from_slice::<T>(&bytes) {
        return Err(EncodeError::Unreadable(err));
    }
    Ok(bytes)
}

/// The marker item for a value that could not be stored, and its flags.
pub(crate) fn unstorable_marker(err: &EncodeError) -> (Bytes, u32) {
    let shareable = matches!(err, EncodeError::TooLarge { .. });
    marker(shareable, &err.to_string())
}

/// The marker item for a value the server refused as too large for its item size.
pub(crate) fn refused_marker(size: usize) -> (Bytes, u32) {
    marker(
        true,
        &format!(
            "the store refused the value's {size} bytes of JSON as too large (a server \
             whose -I is under item_bytes, or over a sixteenth of in_process_max_bytes)"
        ),
    )
}

/// The marker item of a failing key, backed off until `until`.
pub(crate) fn backoff_marker(until: SystemTime) -> (Bytes, u32) {
    let millis = until
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    (Bytes::from(millis.to_string()), BACKOFF_FLAGS)
}

/// The marker item for a value its getter chose not to store (`entry::skip_store`).
pub(crate) fn skipped_marker() -> (Bytes, u32) {
    marker(true, "the getter chose not to store this value")
}

fn marker(shareable: bool, reason: &str) -> (Bytes, u32) {
    let mut bytes = Vec::with_capacity(1 + reason.len());
    bytes.push(if shareable { b'L' } else { b'U' });
    bytes.extend_from_slice(reason.as_bytes());
    (Bytes::from(bytes), UNSTORABLE_FLAGS)
}

pub(crate) fn decode<T: DeserializeOwned>(flags: u32, data: &[u8]) -> Result<T, DecodeError> {
    if flags != JSON_FLAGS {
        if flags == UNSTORABLE_FLAGS {
            let (shareable, reason) = match data.split_first() {
                Some((b'L', reason)) => (true, reason),
                Some((_, reason)) => (false, reason),
                None => (false, data),
            };
            return Err(DecodeError::Unstorable {
                shareable,
                reason: String::from_utf8_lossy(reason).into_owned(),
            });
        }
        if flags == crate::store::memcached::signing::FORGED_FLAGS {
            return Err(DecodeError::Forged);
        }
        if flags == UNREADABLE_FLAGS {
            return Err(DecodeError::Compressed(
                "corrupt, foreign, or over max_value_bytes",
            ));
        }
        if flags == crate::store::memcached::chunks::UNASSEMBLED_FLAGS {
            let (missing, reason) = match data.split_first() {
                Some((b'M', reason)) => (true, reason),
                Some((_, reason)) => (false, reason),
                None => (false, data),
            };
            return Err(DecodeError::Chunks {
                missing,
                reason: String::from_utf8_lossy(reason).into_owned(),
            });
        }
        if flags == BACKOFF_FLAGS {
            // Unreadable bytes under these flags are a backoff already over.
            let millis = std::str::from_utf8(data)
                .ok()
                .and_then(|digits| digits.parse::<u64>().ok())
                .unwrap_or(0);
            let until = UNIX_EPOCH + std::time::Duration::from_millis(millis);
            return Err(DecodeError::Backoff { until });
        }
        return Err(DecodeError::ForeignFlags(flags));
    }
    serde_json::from_slice(data).map_err(DecodeError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn json_from_compress_from_bytes_is_packed_when_it_pays_and_unpacks_whole() {
        let small = Bytes::from(vec![b'7'; COMPRESS_FROM - 1]);
        assert_eq!(
            pack(None, &small),
            (small.clone(), JSON_FLAGS),
            "under the threshold"
        );
        let big = Bytes::from(vec![b'7'; COMPRESS_FROM]);
        let (packed, flags) = pack(None, &big);
        assert_eq!(flags, ZSTD_JSON_FLAGS);
        assert!(packed.len() < 100);
        assert_eq!(unpack(&packed, big.len()).unwrap(), big);
        // A declared size over the reader's limit is refused before anything is allocated.
        assert!(matches!(
            unpack(&packed, big.len() - 1),
            Err(DecodeError::Compressed(_))
        ));
        // Bytes zstd cannot shrink are stored as they are.
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..COMPRESS_FROM * 2)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect();
        let noise = Bytes::from(noise);
        assert_eq!(pack(None, &noise).1, JSON_FLAGS);
    }

    #[test]
    fn values_round_trip() {
        let value = (42u64, "x".to_owned(), vec![1.5f64]);
        let bytes = encode(&value, 100).unwrap();
        assert_eq!(&bytes[..], br#"[42,"x",[1.5]]"#);
        assert_eq!(
            decode::<(u64, String, Vec<f64>)>(JSON_FLAGS, &bytes).unwrap(),
            value
        );
    }

    #[test]
    fn every_finite_f64_comes_back_bit_for_bit() {
        // Random bit patterns, not random values: they reach every exponent, subnormals and
        // the long-mantissa numbers whose shortest decimal a fast parser rounds wrongly.
        let mut rng = fastrand::Rng::with_seed(11);
        let floats: Vec<f64> = std::iter::repeat_with(|| f64::from_bits(rng.u64(..)))
            .filter(|f| f.is_finite())
            .take(100_000)
            .collect();
        let bytes = encode(&floats, usize::MAX).unwrap();
        let back: Vec<f64> = decode(JSON_FLAGS, &bytes).unwrap();
        let wrong: Vec<_> = floats
            .iter()
            .zip(&back)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .collect();
        assert!(
            wrong.is_empty(),
            "{} of 100,000 floats came back changed, such as {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(3)]
        );
    }

    #[test]
    fn over_the_limit_is_refused_but_kept() {
        let err = encode(&"abcdef", 4).unwrap_err();
        let EncodeError::TooLarge { bytes, size, limit } = err else {
            panic!("expected TooLarge, got {err:?}")
        };
        assert_eq!((&bytes[..], size, limit), (&b"\"abcdef\""[..], 8, 4));
    }

    #[test]
    fn unserializable_values_are_refused() {
        let mut map = HashMap::new();
        map.insert(vec![1u8], 1);
        assert!(matches!(encode(&map, 100), Err(EncodeError::Serialize(_))));
    }

    #[test]
    fn a_value_whose_json_does_not_read_back_is_refused_for_the_store() {
        /// Serializes as a string, deserializes only from a number.
        #[derive(Debug)]
        struct Lopsided;
        impl Serialize for Lopsided {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str("lopsided")
            }
        }
        impl<'de> serde::Deserialize<'de> for Lopsided {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                u8::deserialize(d).map(|_| Lopsided)
            }
        }
        assert!(matches!(
            encode_for_store(&Lopsided, 100),
            Err(EncodeError::Unreadable(_))
        ));
        assert_eq!(&encode_for_store(&vec![1u8], 100).unwrap()[..], b"[1]");
    }

    #[test]
    fn a_marker_of_an_unstorable_value_decodes_as_its_reason() {
        let err = encode(&"abcdef", 4).unwrap_err();
        let (bytes, flags) = unstorable_marker(&err);
        match decode::<String>(flags, &bytes) {
            Err(DecodeError::Unstorable { shareable, reason }) => {
                assert!(shareable, "too large, but JSON: one process may share it");
                assert!(reason.contains("over the limit of 4"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let err = encode(&f64::NAN, 100).unwrap_err();
        let (bytes, flags) = unstorable_marker(&err);
        assert!(matches!(
            decode::<f64>(flags, &bytes),
            Err(DecodeError::Unstorable {
                shareable: false,
                ..
            })
        ));
    }

    #[test]
    fn values_json_would_not_give_back_are_refused() {
        #[derive(serde::Serialize)]
        struct Report {
            ratio: f64,
        }
        let err = encode(&Report { ratio: f64::NAN }, 100).unwrap_err();
        assert!(
            matches!(err, EncodeError::Serialize(json::Error::Lossy(_))),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "the value cannot be stored as JSON: \
             a non-finite float (NaN), which JSON writes as null, at .ratio"
        );
        let err = encode(&Some(None::<u8>), 100).unwrap_err();
        assert!(err.to_string().contains("reads back as None"), "{err}");
        assert!(encode(&vec![f32::INFINITY], 100).is_err());
    }

    #[test]
    fn a_freshness_header_reads_back_and_a_short_or_inconsistent_one_is_refused() {
        let header = Freshness {
            fresh_until: 1_800_000_000_000,
            stale_until: 1_800_003_600_000,
            retry_at: 7,
        };
        let item = header.item(b"[1]");
        assert_eq!(item.len(), FRESHNESS_BYTES + 3);
        assert_eq!(&item[..8], &1_800_000_000_000u64.to_be_bytes());
        assert_eq!(Freshness::read(&item), Some(header));
        assert_eq!(&item[FRESHNESS_BYTES..], b"[1]");
        assert_eq!(Freshness::read(&item[..FRESHNESS_BYTES - 1]), None);
        let backwards = Freshness {
            fresh_until: 2,
            stale_until: 1,
            retry_at: 0,
        };
        assert_eq!(Freshness::read(&backwards.item(b"1")), None);
        // Its flags are not JSON's: a reader that does not know them takes the item as foreign.
        assert!(matches!(
            decode::<u64>(FRESHNESS_FLAGS, &item),
            Err(DecodeError::ForeignFlags(FRESHNESS_FLAGS))
        ));
    }

    #[test]
    fn foreign_or_mismatched_bytes_are_refused() {
        assert!(matches!(
            decode::<u64>(0, b"42"),
            Err(DecodeError::ForeignFlags(0))
        ));
        assert!(matches!(
            decode::<u64>(JSON_FLAGS, b"\"forty-two\""),
            Err(DecodeError::Mismatch(_))
        ));
        assert!(matches!(
            decode::<u64>(JSON_FLAGS, b"\x80\x04\x95"),
            Err(DecodeError::Mismatch(_))
        ));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Profile {
            id: u64,
            tags: Vec<String>,
            score: Option<f64>,
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(10_000))]

            /// Arbitrary bytes under arbitrary flags (a foreign writer, corruption) decode or are
            /// refused, never panic; under any flags but ours, never decode.
            #[test]
            fn arbitrary_items_are_refused_or_decoded_never_a_panic(
                data in proptest::collection::vec(any::<u8>(), 0..400),
                flags in prop_oneof![Just(JSON_FLAGS), Just(UNSTORABLE_FLAGS), any::<u32>()],
            ) {
                let decoded = decode::<Profile>(flags, &data);
                if flags != JSON_FLAGS {
                    prop_assert!(decoded.is_err());
                }
                let _ = decode::<serde_json::Value>(flags, &data);
            }

            /// A genuine frame (or freshness item) changed anywhere, cut or grown, unpacks to at
            /// most `max_value` bytes of JSON, or is refused; never a panic.
            #[test]
            fn changed_frames_are_refused_or_unpack_within_the_limit(
                fresh in any::<bool>(),
                flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 0..4),
                cut in any::<Option<prop::sample::Index>>(),
                grow in proptest::collection::vec(any::<u8>(), 0..8),
                max_value in 0usize..40_000,
            ) {
                let json = Bytes::from(serde_json::to_vec(&"0123456789".repeat(2_000)).unwrap());
                let header = Freshness { fresh_until: 1, stale_until: 2, retry_at: 0 };
                let (mut item, flags) = match fresh {
                    false => {
                        let (packed, flags) = pack(None, &json);
                        (packed.to_vec(), flags)
                    }
                    true => {
                        let (packed, flags) = pack(Some(&header), &json);
                        (packed.to_vec(), flags)
                    }
                };
                prop_assert_eq!(flags, if fresh { ZSTD_FRESHNESS_FLAGS } else { ZSTD_JSON_FLAGS });
                for (at, bit) in flips {
                    let at = at.index(item.len());
                    item[at] ^= 1 << bit;
                }
                if let Some(cut) = cut {
                    item.truncate(cut.index(item.len() + 1));
                }
                item.extend_from_slice(&grow);
                let (unpacked, head) = match fresh {
                    false => (unpack(&item, max_value), 0),
                    true => (unpack_fresh(&item, max_value), FRESHNESS_BYTES),
                };
                if let Ok(out) = unpacked {
                    prop_assert!(out.len() <= head + max_value);
                }
            }

            /// Whatever a value is, what the store is given reads back as exactly that value.
            #[test]
            fn what_is_stored_reads_back_as_it_was(
                id in any::<u64>(),
                tags in proptest::collection::vec(any::<String>(), 0..4),
                score in proptest::option::of(any::<f64>()),
            ) {
                let value = Profile { id, tags, score };
                match encode_for_store(&value, usize::MAX) {
                    Ok(bytes) => prop_assert_eq!(decode::<Profile>(JSON_FLAGS, &bytes).unwrap(), value),
                    Err(_) => prop_assert!(score.is_some_and(|s| !s.is_finite()), "refused only for a non-finite float"),
                }
            }
        }
    }
}
