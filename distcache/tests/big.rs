//! Big values: JSON of 16 KiB or more is stored compressed (zstd, flags `DZJ1`), and a value still
//! over `item_bytes` in chunks under a manifest (`DCM1`), so that values many times memcached's
//! item size are stored and shared. A compressed item or a manifest is read only as far as
//! `max_value_bytes` allows, whatever it claims, and a reader never puts together parts of two
//! writes. On real memcached servers.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use distcache::{Cache, Error};
use support::memcached::{Memcached, Outside, stat};
use support::proxy::{Fault, FaultProxy};

const MINUTE: Duration = Duration::from_secs(60);

/// `DZJ1`, as the flags of a compressed item.
const ZSTD_JSON: u32 = u32::from_be_bytes(*b"DZJ1");

/// `DCM1`, as the flags of a big value's manifest; `DCC1`, of its chunks.
const MANIFEST: u32 = u32::from_be_bytes(*b"DCM1");
const CHUNK: u32 = u32::from_be_bytes(*b"DCC1");

/// A value of `len` characters that zstd packs only to about three quarters: stored in chunks
/// when that is still over the item size.
fn noise(len: usize, seed: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.alphanumeric()).collect()
}

/// A manifest's fields, as ARCHITECTURE.md ("The item format") lays them out: the value's flags,
/// the total size, the chunk size, the count, the body's SHA-256, and the value's first 24 bytes
/// (its head; the chunks hold the rest, its body).
struct Manifest {
    flags: u32,
    total: u64,
    chunk_bytes: u32,
    count: u32,
    digest: [u8; 32],
    head: [u8; 24],
}

impl Manifest {
    fn read(bytes: &[u8]) -> Manifest {
        assert_eq!(bytes.len(), 76, "a manifest");
        Manifest {
            flags: u32::from_be_bytes(bytes[0..4].try_into().unwrap()),
            total: u64::from_be_bytes(bytes[4..12].try_into().unwrap()),
            chunk_bytes: u32::from_be_bytes(bytes[12..16].try_into().unwrap()),
            count: u32::from_be_bytes(bytes[16..20].try_into().unwrap()),
            digest: bytes[20..52].try_into().unwrap(),
            head: bytes[52..76].try_into().unwrap(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&self.flags.to_be_bytes());
        bytes.extend_from_slice(&self.total.to_be_bytes());
        bytes.extend_from_slice(&self.chunk_bytes.to_be_bytes());
        bytes.extend_from_slice(&self.count.to_be_bytes());
        bytes.extend_from_slice(&self.digest);
        bytes.extend_from_slice(&self.head);
        bytes
    }

    /// The number of chunks for the manifest's sizes.
    fn chunks_for(&self) -> u32 {
        (self.total - 24).div_ceil(self.chunk_bytes.into()) as u32
    }

    /// The key of chunk `index`: the value's key, `|`, the digest's first 16 bytes in hex, `|`,
    /// the chunk size, `|`, the index.
    fn chunk(&self, key: &str, index: u32) -> String {
        let hex: String = self.digest[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{key}|{hex}|{}|{index}", self.chunk_bytes)
    }
}

/// `value` under `key`, computed by `a` and read back whole by `b`, whose getter does not run.
async fn stored_by_one_read_by_another(a: &Cache, b: &Cache, key: &str, value: String) {
    let runs = AtomicUsize::new(0);
    let getter = || async {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok::<_, Error>(value.clone())
    };
    let _: String = a.get(key, MINUTE, MINUTE, getter).await.unwrap();
    let read: String = b.get(key, MINUTE, MINUTE, getter).await.unwrap();
    assert_eq!((read == value, runs.load(Ordering::SeqCst)), (true, 1));
}

/// A caller of `key` on `cache`, in a task of its own, whose getter counts its runs in `runs` and
/// returns `value`: whether it got `value`.
fn spawn_get(
    cache: &Cache,
    key: &'static str,
    value: &Arc<String>,
    runs: &Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<bool> {
    let (cache, value, runs) = (cache.clone(), value.clone(), runs.clone());
    tokio::spawn(async move {
        let got: String = cache
            .get(key, MINUTE, MINUTE, || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Error>(value.to_string())
            })
            .await
            .unwrap();
        got == *value
    })
}

/// `key`, planted from outside with what must not be served (`case`): the call computes
/// `"recomputed"` itself, counts a decode miss, and replaces the item.
async fn refused_and_replaced(cache: &Cache, outside: &Outside, key: &str, case: &str) {
    let misses = cache.stats().decode_misses;
    let got: String = cache
        .get(key, MINUTE, MINUTE, || async {
            Ok::<_, Error>("recomputed".into())
        })
        .await
        .unwrap();
    assert!(got == "recomputed", "{case}: got {} bytes", got.len());
    assert_eq!(cache.stats().decode_misses, misses + 1, "{case}: counted");
    let (stored, _) = outside.get(key).await.expect("replaced");
    assert_eq!(stored, b"\"recomputed\"", "{case}: replaced");
}

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
        refused_and_replaced(&cache, &outside, &key, case).await;
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
    stored_by_one_read_by_another(&a, &b, "signed", digits(2 * 1024 * 1024)).await;
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

/// A cache on `server` whose items are at most 64 KiB: values of a few hundred KB take many chunks.
fn small_items(server: &Memcached) -> Cache {
    Cache::builder()
        .server(server.addr())
        .item_bytes(64 * 1024)
        .build()
        .unwrap()
}

/// A value over the item size even compressed (random characters) is stored in chunks, once,
/// and read back whole by every other cache, across a cluster of three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_over_the_item_size_compressed_is_stored_in_chunks_and_shared() {
    let servers = Memcached::start_many::<3>().await;
    let cache = || {
        let mut builder = Cache::builder();
        for server in &servers {
            builder = builder.server(server.addr());
        }
        builder.build().unwrap()
    };
    let caches: Vec<Cache> = (0..4).map(|_| cache()).collect();
    // 3 MB: about 2.3 MB compressed, three chunks.
    let value = Arc::new(noise(3_000_000, 1));
    let runs = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for cache in &caches {
        for _ in 0..8 {
            callers.push(spawn_get(cache, "report", &value, &runs));
        }
    }
    for caller in callers {
        assert!(caller.await.unwrap(), "read back whole");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "computed once, fleet-wide");
    let unstorable: u64 = caches.iter().map(|c| c.stats().unstorable_values).sum();
    assert_eq!(unstorable, 0);
}

/// The manifest and its chunks, as memcached holds them; a chunk evicted makes the value a miss
/// that one caller recomputes, not many, and that is not counted as a bad item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_chunk_is_a_miss_recomputed_once() {
    let server = Memcached::start().await;
    let outside = Outside::connect(&server.addr()).await;
    let caches: Vec<Cache> = (0..2).map(|_| small_items(&server)).collect();
    let value = Arc::new(noise(300_000, 2));
    let runs = Arc::new(AtomicUsize::new(0));
    assert!(
        spawn_get(&caches[0], "evicted", &value, &runs)
            .await
            .unwrap()
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let (manifest, flags) = outside.get("evicted").await.expect("stored");
    assert_eq!(flags, MANIFEST);
    let manifest = Manifest::read(&manifest);
    assert_eq!(
        manifest.flags,
        u32::from_be_bytes(*b"DZJ1"),
        "compressed first"
    );
    assert_eq!(manifest.chunk_bytes, 64 * 1024);
    assert_eq!(manifest.count, manifest.chunks_for());
    assert!(manifest.count >= 3, "{} chunks", manifest.count);
    let (chunk, flags) = outside.get(&manifest.chunk("evicted", 1)).await.unwrap();
    assert_eq!((chunk.len(), flags), (64 * 1024, CHUNK));
    // As an eviction would.
    assert!(outside.delete(&manifest.chunk("evicted", 1)).await);
    let calls: Vec<_> = (0..16)
        .map(|i| spawn_get(&caches[i % 2], "evicted", &value, &runs))
        .collect();
    for call in calls {
        assert!(call.await.unwrap(), "read back whole");
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "recomputed once, by one of 16 callers in two caches"
    );
    let stats: Vec<_> = caches.iter().map(Cache::stats).collect();
    assert!(
        stats.iter().all(|s| s.decode_misses == 0),
        "an eviction is a plain miss: {stats:?}"
    );
    // The same value again: the same body, its chunks keyed by their content, the lost one back.
    let (replaced, _) = outside.get("evicted").await.unwrap();
    assert_eq!(Manifest::read(&replaced).digest, manifest.digest);
    assert!(outside.get(&manifest.chunk("evicted", 1)).await.is_some());
}

/// A chunk that is there but not what its key names (corrupt, or planted) is recomputed once,
/// and put right: the next call reads the value, and so does a process with another
/// `item_bytes`, whose chunks have keys of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_chunk_is_recomputed_once_and_put_right() {
    let server = Memcached::start().await;
    let outside = Outside::connect(&server.addr()).await;
    let cache = small_items(&server);
    let value = Arc::new(noise(300_000, 7));
    let runs = Arc::new(AtomicUsize::new(0));
    assert!(spawn_get(&cache, "fixed", &value, &runs).await.unwrap());
    let (manifest, _) = outside.get("fixed").await.unwrap();
    let manifest = Manifest::read(&manifest);
    let chunk = manifest.chunk("fixed", 0);
    let (mut bytes, _) = outside.get(&chunk).await.unwrap();
    bytes[100] ^= 1;
    outside.set(&chunk, &bytes, CHUNK).await;
    for _ in 0..3 {
        assert!(spawn_get(&cache, "fixed", &value, &runs).await.unwrap());
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the altered chunk cost one recompute, not one per call"
    );
    assert_eq!(cache.stats().decode_misses, 1);
    // Another process, its items twice the size, stores the same value after an invalidate: its
    // chunks do not take the first one's for its own.
    let larger = Cache::builder()
        .server(server.addr())
        .item_bytes(128 * 1024)
        .build()
        .unwrap();
    larger.invalidate("fixed").await.unwrap();
    for _ in 0..3 {
        assert!(spawn_get(&larger, "fixed", &value, &runs).await.unwrap());
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "stored once more, then read"
    );
    assert_eq!(larger.stats().decode_misses, 0);
}

/// A value kept past `expire` changes its freshness header (its head, in the manifest) at each
/// claim and recompute: the chunks of the same body are not written again, only touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_header_on_the_same_big_value_writes_no_chunk() {
    let server = Memcached::start().await;
    let cache = Cache::builder()
        .server(server.addr())
        .item_bytes(64 * 1024)
        .stale_if_error(MINUTE)
        .build()
        .unwrap();
    let expire = Duration::from_millis(300);
    let value = noise(300_000, 6);
    let get = || {
        cache.get("claimed", MINUTE, expire, || async {
            Ok::<_, Error>(value.clone())
        })
    };
    let _: String = get().await.unwrap();
    let outside = Outside::connect(&server.addr()).await;
    let (manifest, _) = outside.get("claimed").await.unwrap();
    let manifest = Manifest::read(&manifest);
    assert!(manifest.count >= 3, "{} chunks", manifest.count);
    // Past `expire`: one caller claims the recompute (a new header, swapped in) and stores the
    // recomputed value, the same (a new header again).
    tokio::time::sleep(expire + Duration::from_millis(50)).await;
    let sets = stat(&server.addr(), "cmd_set").await;
    let got: String = get().await.unwrap();
    assert!(got == value);
    assert_eq!(cache.stats().getter_runs, 2, "recomputed");
    assert_eq!(
        stat(&server.addr(), "cmd_set").await - sets,
        2,
        "the claim's manifest and the recompute's, and no chunk of {}",
        manifest.count
    );
}

/// Two writers store two versions of a key over and over while readers read it: every reader
/// gets one version whole, never parts of two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_parts_of_two_versions() {
    let server = Memcached::start().await;
    let versions: Arc<[String; 2]> = Arc::new([noise(400_000, 10), noise(400_000, 11)]);
    // Reads made so far (`u64::MAX`: the readers are done). Each write waits for two more, so
    // that writes and reads interleave rather than either side starving the other.
    let reads = Arc::new(tokio::sync::watch::Sender::new(0u64));
    // Each writer invalidates the key and stores its version, as a process whose source of truth
    // changed would; a reader that finds the key missing computes a third value of its own.
    let mut writers = Vec::new();
    for writer in 0..2 {
        let (cache, versions) = (small_items(&server), versions.clone());
        let mut read = reads.subscribe();
        writers.push(tokio::spawn(async move {
            let mut writes = 0;
            loop {
                let before = *read.borrow_and_update();
                if before == u64::MAX {
                    return writes;
                }
                cache.invalidate("contended").await.unwrap();
                let _: String = cache
                    .get("contended", MINUTE, MINUTE, || async {
                        Ok::<_, Error>(versions[writer].clone())
                    })
                    .await
                    .unwrap();
                writes += 1;
                read.wait_for(|&n| n >= before.saturating_add(2))
                    .await
                    .unwrap();
            }
        }));
    }
    // The readers' replies come 10 ms late, so that a writer has time to store its version
    // between a reader's read of the manifest and its read of the chunks.
    let slow = FaultProxy::start(&server.addr()).await;
    slow.set(Fault::Latency(Duration::from_millis(10)));
    let own = "the reader's own".to_owned();
    let mut readers = Vec::new();
    for _ in 0..4 {
        let cache = Cache::builder()
            .server(slow.addr())
            .item_bytes(64 * 1024)
            .max_poll_interval(Duration::from_millis(5))
            .build()
            .unwrap();
        let (versions, own, reads) = (versions.clone(), own.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            let mut seen = [0u32; 3];
            for _ in 0..50 {
                let got: String = cache
                    .get("contended", MINUTE, MINUTE, || async {
                        Ok::<_, Error>(own.clone())
                    })
                    .await
                    .unwrap();
                match versions.iter().position(|v| *v == got) {
                    Some(i) => seen[i] += 1,
                    None if got == own => seen[2] += 1,
                    None => panic!("a value that no writer wrote: {} bytes", got.len()),
                }
                reads.send_modify(|n| *n += 1);
            }
            (seen, cache.stats())
        }));
    }
    let mut seen = [0u32; 3];
    for reader in readers {
        let (theirs, stats) = reader.await.unwrap();
        assert_eq!(
            stats.decode_misses, 0,
            "no reader found chunks of two writes: {stats:?}"
        );
        for (total, n) in seen.iter_mut().zip(theirs) {
            *total += n;
        }
    }
    reads.send_replace(u64::MAX);
    for writer in writers {
        assert!(writer.await.unwrap() > 0);
    }
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "the readers saw both versions: {seen:?}"
    );
}

/// Manifests that claim more than the limits, or whose chunks are not what they say: a miss,
/// recomputed and replaced, never returned, and never an allocation of what they claim
/// (`tests/allocations.rs` measures that).
#[tokio::test]
async fn a_lying_manifest_or_a_foreign_chunk_is_a_miss() {
    let server = Memcached::start().await;
    let outside = Outside::connect(&server.addr()).await;
    let cache = Cache::builder()
        .server(server.addr())
        .item_bytes(64 * 1024)
        .max_value_bytes(1024 * 1024)
        .build()
        .unwrap();
    // A genuine manifest to start from: its chunks are there.
    let value = noise(300_000, 3);
    let _: String = cache
        .get("genuine", MINUTE, MINUTE, || async {
            Ok::<_, Error>(value.clone())
        })
        .await
        .unwrap();
    let (bytes, _) = outside.get("genuine").await.unwrap();
    let genuine = Manifest::read(&bytes);
    let like = |f: &dyn Fn(&mut Manifest)| {
        let mut m = Manifest::read(&bytes);
        f(&mut m);
        m.bytes()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a total over max_value_bytes",
            like(&|m| {
                m.total = 1 << 40;
                m.count = m.chunks_for();
            }),
        ),
        (
            "chunks over item_bytes",
            like(&|m| {
                m.chunk_bytes = 128 * 1024;
                m.count = m.chunks_for();
            }),
        ),
        ("a count that does not match", like(&|m| m.count += 1)),
        ("zero-byte chunks", like(&|m| m.chunk_bytes = 0)),
        (
            "one-byte chunks",
            like(&|m| {
                m.chunk_bytes = 1;
                m.count = m.chunks_for();
            }),
        ),
        (
            "over 1,024 chunks",
            like(&|m| {
                m.total = 1024 * 1024;
                m.chunk_bytes = 1000;
                m.count = m.chunks_for();
            }),
        ),
        ("another digest", like(&|m| m.digest[0] ^= 1)),
        ("a total shorter than its chunks", like(&|m| m.total -= 1)),
        ("not a manifest", b"short".to_vec()),
    ];
    for (i, (case, manifest)) in cases.into_iter().enumerate() {
        let key = format!("lying:{i}");
        // The genuine chunks, under this key and the keys the lying manifest names.
        let named = (manifest.len() == 76).then(|| Manifest::read(&manifest));
        for index in 0..genuine.count {
            let (chunk, _) = outside.get(&genuine.chunk("genuine", index)).await.unwrap();
            let lying = named.as_ref().unwrap_or(&genuine);
            outside.set(&lying.chunk(&key, index), &chunk, CHUNK).await;
        }
        outside.set(&key, &manifest, MANIFEST).await;
        refused_and_replaced(&cache, &outside, &key, case).await;
    }
    // A chunk of the right size but other bytes, or of another size, under a genuine manifest.
    for (case, forged) in [
        ("other bytes", vec![b'x'; 64 * 1024]),
        ("a longer chunk", vec![b'x'; 64 * 1024 + 1]),
    ] {
        outside.set("genuine", &bytes, MANIFEST).await;
        outside
            .set(&genuine.chunk("genuine", 0), &forged, CHUNK)
            .await;
        let got: String = cache
            .get("genuine", MINUTE, MINUTE, || async {
                Ok::<_, Error>("recomputed".into())
            })
            .await
            .unwrap();
        assert_eq!(got, "recomputed", "{case}");
    }
}

/// With signing keys the manifest is signed, and its digest vouches for the chunks: a chunk
/// replaced from outside is a miss, and a planted manifest a forgery.
#[tokio::test]
async fn signed_big_values_are_shared_and_planted_chunks_are_refused() {
    let server = Memcached::start().await;
    let outside = Outside::connect(&server.addr()).await;
    let cache = || {
        Cache::builder()
            .server(server.addr())
            .item_bytes(64 * 1024)
            .signing_keys([[5u8; 32]])
            .build()
            .unwrap()
    };
    let (a, b) = (cache(), cache());
    stored_by_one_read_by_another(&a, &b, "signed", noise(300_000, 4)).await;
    let (signed, flags) = outside.get("signed").await.unwrap();
    assert_eq!(flags, u32::from_be_bytes(*b"SCM1"));
    // The tag, then the manifest.
    let manifest = Manifest::read(&signed[32..]);
    let chunk = manifest.chunk("signed", 0);
    let (mut bytes, _) = outside.get(&chunk).await.unwrap();
    bytes[0] ^= 1;
    outside.set(&chunk, &bytes, CHUNK).await;
    let got: String = b
        .get("signed", MINUTE, MINUTE, || async {
            Ok::<_, Error>("fresh".into())
        })
        .await
        .unwrap();
    assert_eq!(got, "fresh", "the altered chunk is not served");
    // An unsigned manifest planted under the key: a forgery, before any chunk is read.
    outside.set("signed", &manifest.bytes(), MANIFEST).await;
    let got: String = b
        .get("signed", MINUTE, MINUTE, || async {
            Ok::<_, Error>("fresh".into())
        })
        .await
        .unwrap();
    assert_eq!((got.as_str(), b.stats().forged_values), ("fresh", 1));
}

/// A value kept past its `expire` (`stale_if_error`) is compressed (`DZF1`) and, over the item
/// size, chunked too; it reads back whole, and is served stale when its recompute fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_value_with_stale_if_error_is_compressed_chunked_and_served_stale() {
    let server = Memcached::start().await;
    let outside = Outside::connect(&server.addr()).await;
    let cache = || {
        Cache::builder()
            .server(server.addr())
            .item_bytes(64 * 1024)
            .stale_if_error(MINUTE)
            .build()
            .unwrap()
    };
    let (a, b) = (cache(), cache());
    let expire = Duration::from_millis(300);
    let value = digits(400_000);
    let _: String = a
        .get("fresh", MINUTE, expire, || async {
            Ok::<_, Error>(value.clone())
        })
        .await
        .unwrap();
    let (manifest, flags) = outside.get("fresh").await.unwrap();
    assert_eq!(flags, MANIFEST);
    assert_eq!(
        Manifest::read(&manifest).flags,
        u32::from_be_bytes(*b"DZF1")
    );
    // Small values with freshness are compressed too, in one item.
    let small = digits(30_000);
    let _: String = a
        .get("small", MINUTE, expire, || async {
            Ok::<_, Error>(small.clone())
        })
        .await
        .unwrap();
    let (packed, flags) = outside.get("small").await.unwrap();
    assert_eq!(flags, u32::from_be_bytes(*b"DZF1"));
    assert!(packed.len() < 30_000 / 2, "{} bytes", packed.len());
    let read: String = b
        .get("fresh", MINUTE, expire, || async {
            Ok::<_, Error>(String::new())
        })
        .await
        .unwrap();
    assert!(read == value, "read back whole by another cache");
    // Past `expire` (the freshness header counts milliseconds; the item lives `expire` and
    // `max_stale`): the recompute fails, and the stale value, whole, is the answer.
    tokio::time::sleep(expire + Duration::from_millis(50)).await;
    let stale: String = b
        .get("fresh", MINUTE, expire, || async {
            Err::<String, _>(Error::InvalidArgument {
                key: "origin".into(),
                reason: "the origin is down",
            })
        })
        .await
        .unwrap();
    assert!(stale == value, "served stale, whole");
    assert_eq!(b.stats().stale_served, 1);
}
