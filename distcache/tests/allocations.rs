//! Allocations per hit, counted by this test binary's global allocator: a regression guard for the
//! hit path (the criterion bench `calls` reports the same figures). A hit may allocate what decoding
//! its value needs plus a small constant: on the in-process store none (a flight allocates only
//! when a second caller joins it), on memcached one (the reply's channel), plus read-buffer growth
//! that amortizes to a few hundredths.

#[path = "support/counting.rs"]
mod counting;
mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use counting::{ALLOCATIONS, LARGEST};
use distcache::{Cache, Error, GetOptions};

const MINUTE: Duration = Duration::from_secs(60);
const HITS: u64 = 5_000;

/// Allocations per call of `call`, after a warm-up.
async fn per_call<F: std::future::Future<Output = ()>>(call: impl Fn() -> F) -> f64 {
    for _ in 0..500 {
        call().await;
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..HITS {
        call().await;
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / HITS as f64
}

/// Allocations per hit of a 1 KB string on `cache`, after a warm-up.
async fn per_hit(cache: &Cache) -> f64 {
    let value = "v".repeat(998);
    let hit = || async {
        let got: String = cache
            .get("alloc:hit", MINUTE, MINUTE, || async {
                Ok::<_, Error>(value.clone())
            })
            .await
            .unwrap();
        assert_eq!(got.len(), 998);
    };
    per_call(hit).await
}

/// Allocations per near hit of `value` (a clone of it each), after a warm-up.
async fn per_near_hit<T>(cache: &Cache, value: T) -> f64
where
    T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    let options = GetOptions::new(MINUTE, MINUTE).near_ttl(MINUTE);
    let hit = || async {
        let got: T = cache
            .get_near("alloc:near", &options, || async {
                Ok::<_, Error>(value.clone())
            })
            .await
            .unwrap();
        std::hint::black_box(got);
    };
    per_call(hit).await
}

static NEAR_CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();

/// A `#[distcached]` function keeping its `Arc` value near: its key is built at each call.
#[distcache::distcached(
    expire = "1m",
    exec_limit = "1m",
    near_ttl = "1m",
    cache = NEAR_CACHE.get().expect("set")
)]
async fn kept(id: u32) -> Result<Arc<String>, Error> {
    Ok(Arc::new("v".repeat(id as usize)))
}

/// One test, on one thread: nothing else allocates while it counts.
#[test]
fn a_hit_allocates_its_decoded_value_and_a_small_constant() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Decoding a String allocates exactly the String.
        let decode = 1.0;
        let memory = per_hit(&Cache::builder().build().unwrap()).await;
        assert!(
            memory <= decode + 0.1,
            "in-process hit: {memory} allocations"
        );
        let server = support::memcached::Memcached::start().await;
        let cluster = Cache::builder().server(server.addr()).build().unwrap();
        let memcached = per_hit(&cluster).await;
        assert!(
            memcached <= decode + 1.3,
            "memcached hit: {memcached} allocations"
        );
        assert_eq!(cluster.stats().getter_runs, 1, "hits, not recomputations");

        // A near hit allocates its clone and nothing else: the String's buffer, or nothing for
        // an `Arc`.
        let near = Cache::builder().server(server.addr()).build().unwrap();
        let string = per_near_hit(&near, "v".repeat(998)).await;
        assert_eq!(string, 1.0, "near hit of a String: {string} allocations");
        let near = Cache::builder().server(server.addr()).build().unwrap();
        let arc = per_near_hit(&near, Arc::new("v".repeat(998))).await;
        assert_eq!(arc, 0.0, "near hit of an Arc: {arc} allocations");
        assert!(near.stats().near_hits >= HITS);

        // The same through the macro: the key is built in a reused buffer.
        assert!(NEAR_CACHE.set(near.clone()).is_ok());
        let hit = || async {
            std::hint::black_box(kept(998).await.unwrap());
        };
        let macro_arc = per_call(hit).await;
        assert_eq!(
            macro_arc, 0.0,
            "a #[distcached] near hit of an Arc: {macro_arc} allocations"
        );

        // A compressed item whose frame declares 64 MiB (a JSON string that would decode) is
        // a miss, and nothing near its declared size is allocated reading it.
        let json = serde_json::to_vec(&"0".repeat(64 << 20)).unwrap();
        let bomb = zstd::bulk::compress(&json, 1).unwrap();
        drop(json);
        let outside = support::memcached::Outside::connect(&server.addr()).await;
        outside
            .set("bomb", &bomb, u32::from_be_bytes(*b"DZJ1"))
            .await;
        let cache = Cache::builder().server(server.addr()).build().unwrap();
        LARGEST.store(0, Ordering::Relaxed);
        let got: String = cache
            .get("bomb", MINUTE, MINUTE, || async {
                Ok::<_, Error>("genuine".into())
            })
            .await
            .unwrap();
        let largest = LARGEST.load(Ordering::Relaxed);
        assert_eq!((got.as_str(), cache.stats().decode_misses), ("genuine", 1));
        assert!(
            largest < 1 << 20,
            "the largest allocation reading it: {largest} bytes"
        );

        // Manifests of big values that claim 1 TiB, 16 MiB whose chunks are not there, or 16 MiB
        // in chunks of a byte each: a miss, and nothing near the claimed size is allocated, in
        // one allocation or in many (the value's one allocation comes after every chunk has
        // arrived, each of the size the manifest says, and there are at most 1,024 of them).
        for (i, (total, chunk_bytes)) in [
            (1u64 << 40, 1024 * 1024 - 512u32),
            (16 << 20, 1024 * 1024 - 512),
            (16 << 20, 1),
        ]
        .into_iter()
        .enumerate()
        {
            let mut manifest = Vec::new();
            manifest.extend_from_slice(b"DCJ1");
            manifest.extend_from_slice(&total.to_be_bytes());
            manifest.extend_from_slice(&chunk_bytes.to_be_bytes());
            manifest.extend_from_slice(
                &((total - 24).div_ceil(chunk_bytes.into()) as u32).to_be_bytes(),
            );
            manifest.extend_from_slice(&[0; 32 + 24]);
            let key = format!("claims:{i}");
            outside
                .set(&key, &manifest, u32::from_be_bytes(*b"DCM1"))
                .await;
            LARGEST.store(0, Ordering::Relaxed);
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            let got: String = cache
                .get(&key, MINUTE, MINUTE, || async {
                    Ok::<_, Error>("genuine".into())
                })
                .await
                .unwrap();
            let (largest, allocations) = (
                LARGEST.load(Ordering::Relaxed),
                ALLOCATIONS.load(Ordering::Relaxed) - before,
            );
            assert_eq!(got, "genuine", "a manifest claiming {total} bytes");
            assert!(
                largest < 1 << 20,
                "the largest allocation reading a manifest claiming {total} bytes: {largest}"
            );
            assert!(
                allocations < 2_000,
                "{allocations} allocations reading a manifest of {total} bytes in {chunk_bytes}-byte chunks"
            );
        }
    });
}
