//! Big values: JSON of 16 KiB or more is stored compressed (zstd, flags `DZJ1`), so that values
//! several times memcached's item size are stored and shared; a compressed item is read only as
//! far as `max_value_bytes` allows, whatever it claims. On real memcached servers.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use distcache::{Cache, Error};
use support::memcached::{Memcached, Outside};

const MINUTE: Duration = Duration::from_secs(60);

/// `DZJ1`, as the flags of a compressed item.
const ZSTD_JSON: u32 = u32::from_be_bytes(*b"DZJ1");

/// A value of `len` decimal digits, as the demo's factorials are: zstd packs it about 2.4×.
fn digits(len: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(42);
    (0..len).map(|_| char::from(b'0' + rng.u8(..10))).collect()
}

#[tokio::test]
async fn a_value_over_the_item_size_that_compresses_under_it_is_stored_and_shared() {
    let server = Memcached::start().await;
    let a = Cache::builder().server(server.addr()).build().unwrap();
    let b = Cache::builder().server(server.addr()).build().unwrap();
    // 2 MiB of digits: twice the default item size, about 850 KB compressed.
    let value = digits(2 * 1024 * 1024);
    let runs = AtomicUsize::new(0);
    let getter = || async {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok::<_, Error>(value.clone())
    };
    let first: String = a.get("digits", MINUTE, MINUTE, getter).await.unwrap();
    let second: String = b.get("digits", MINUTE, MINUTE, getter).await.unwrap();
    assert!(first == value && second == value, "read back whole");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "stored once, read by the other cache"
    );
    let (stored, flags) = Outside::connect(&server.addr())
        .await
        .get("digits")
        .await
        .expect("stored");
    assert_eq!(flags, ZSTD_JSON);
    assert!(stored.len() < 1024 * 1024, "{} bytes stored", stored.len());
}

#[tokio::test]
async fn small_values_are_stored_as_they_are() {
    let server = Memcached::start().await;
    let cache = Cache::builder().server(server.addr()).build().unwrap();
    let value = digits(8 * 1024);
    let got: String = cache
        .get("small", MINUTE, MINUTE, || async {
            Ok::<_, Error>(value.clone())
        })
        .await
        .unwrap();
    assert_eq!(got, value);
    let (_, flags) = Outside::connect(&server.addr())
        .await
        .get("small")
        .await
        .expect("stored");
    assert_eq!(flags, u32::from_be_bytes(*b"DCJ1"));
}

/// A compressed item that claims more than `max_value_bytes`, holds more or less than it claims,
/// does not say, or is not zstd at all: a miss, recomputed and replaced, never returned, and never
/// an allocation of what it claims.
#[tokio::test]
async fn a_lying_or_hostile_compressed_item_is_a_miss() {
    let server = Memcached::start().await;
    let outside = Outside::connect(&server.addr()).await;
    let cache = Cache::builder()
        .server(server.addr())
        .max_value_bytes(1024 * 1024)
        .build()
        .unwrap();
    let json = serde_json::to_vec(&digits(100_000)).unwrap();
    let frame = zstd::bulk::compress(&json, 1).unwrap();
    // A bomb: a 64 MiB JSON string packed into a few KB, declaring its size; it would decode, if
    // it were decompressed.
    let bomb =
        zstd::bulk::compress(&serde_json::to_vec(&"0".repeat(64 << 20)).unwrap(), 1).unwrap();
    // No declared size: a streamed frame.
    let undeclared = zstd::stream::encode_all(&json[..], 1).unwrap();
    // Two frames, the first declaring only its own part.
    let mut concatenated = frame.clone();
    concatenated.extend_from_slice(&frame);
    let mut truncated = frame.clone();
    truncated.truncate(frame.len() / 2);
    let cases: [(&str, &[u8]); 6] = [
        ("a bomb", &bomb),
        ("an undeclared size", &undeclared),
        ("two frames", &concatenated),
        ("a truncated frame", &truncated),
        ("not zstd", b"{\"json\": \"not compressed\"}"),
        ("empty", b""),
    ];
    for (i, (case, bytes)) in cases.into_iter().enumerate() {
        let key = format!("hostile:{i}");
        outside.set(&key, bytes, ZSTD_JSON).await;
        let misses = cache.stats().decode_misses;
        let got: String = cache
            .get(&key, MINUTE, MINUTE, || async {
                Ok::<_, Error>("genuine".into())
            })
            .await
            .unwrap();
        assert!(got == "genuine", "{case}: got {} bytes", got.len());
        assert_eq!(cache.stats().decode_misses, misses + 1, "{case}: counted");
        let (stored, _) = outside.get(&key).await.expect("replaced");
        assert_eq!(
            stored, b"\"genuine\"",
            "{case}: replaced by the genuine value"
        );
    }
    // And the frame itself, genuine, reads back.
    outside.set("genuine-frame", &frame, ZSTD_JSON).await;
    let got: String = cache
        .get("genuine-frame", MINUTE, MINUTE, || async {
            Ok::<_, Error>("x".into())
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 100_000);
}

/// Compressed items are signed as any other: the tag is checked before anything is
/// decompressed, so a planted bomb under signing keys is a forgery, not a decompression.
#[tokio::test]
async fn signed_compressed_values_verify_and_planted_ones_are_forged() {
    let server = Memcached::start().await;
    let key = [9u8; 32];
    let cache = || {
        Cache::builder()
            .server(server.addr())
            .signing_keys([key])
            .build()
            .unwrap()
    };
    let (a, b) = (cache(), cache());
    let value = digits(2 * 1024 * 1024);
    let runs = AtomicUsize::new(0);
    let getter = || async {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok::<_, Error>(value.clone())
    };
    let _: String = a.get("signed", MINUTE, MINUTE, getter).await.unwrap();
    let read: String = b.get("signed", MINUTE, MINUTE, getter).await.unwrap();
    assert_eq!((read == value, runs.load(Ordering::SeqCst)), (true, 1));
    let outside = Outside::connect(&server.addr()).await;
    let bomb = zstd::bulk::compress(&vec![b'0'; 64 << 20], 1).unwrap();
    outside
        .set("planted", &bomb, u32::from_be_bytes(*b"SZJ1"))
        .await;
    let got: String = a
        .get("planted", MINUTE, MINUTE, || async {
            Ok::<_, Error>("genuine".into())
        })
        .await
        .unwrap();
    assert_eq!(got, "genuine");
    assert_eq!(a.stats().forged_values, 1);
}

/// A compressed value near its end is refreshed ahead like any other, and its successor, stored
/// compressed too, reads back whole (in-process store, paused time; a near cache too).
#[tokio::test(start_paused = true)]
async fn a_compressed_value_is_refreshed_ahead_and_kept_near() {
    let cache = Cache::builder().refresh_ahead(0.5).build().unwrap();
    let options = distcache::GetOptions::new(MINUTE, Duration::from_secs(2))
        .near_ttl(Duration::from_millis(100));
    let (first, second) = (digits(100_000), digits(100_001));
    let got: String = cache
        .get_near("k", &options, || async { Ok::<_, Error>(first.clone()) })
        .await
        .unwrap();
    assert_eq!(got, first);
    tokio::time::advance(Duration::from_millis(1200)).await;
    let refreshed: String = cache
        .get_near("k", &options, || async { Ok::<_, Error>(second.clone()) })
        .await
        .unwrap();
    assert_eq!((refreshed == second, cache.stats().refreshes), (true, 1));
    // Past the near copy's 100 ms: read from the store, decompressed.
    tokio::time::advance(Duration::from_millis(150)).await;
    let read: String = cache
        .get("k", MINUTE, Duration::from_secs(2), || async {
            Ok::<_, Error>(String::new())
        })
        .await
        .unwrap();
    assert!(read == second, "the successor, whole");
    assert_eq!(cache.stats().decode_misses, 0);
}
