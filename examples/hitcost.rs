//! N hits in a row, for counting instructions per hit with callgrind (repeatable run to run,
//! unlike wall-clock time on a shared machine):
//!
//! ```text
//! cargo build --release --example hitcost
//! for n in 10000 20000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n target/release/examples/hitcost memcached $n
//! done
//! # instructions per hit = (Ir at 20000 - Ir at 10000) / 10000: start-up cancels out
//! ```
//!
//! `memory` hits the in-process store; `memcached` starts a memcached on loopback (not traced:
//! callgrind follows no child) and hits it, one call at a time, on a current-thread runtime;
//! `by-hand` does the same get with async-memcached and decodes the JSON itself: the reference.
//! `concurrent` is `memcached` with 32 callers at once over 200 keys (the herd's warm phase in
//! one process): the cost per hit when requests share writes and reads. `misses` is `memcached`
//! with a new key at every call: the cost of a lookup that wins the lease, an instant getter run
//! under it, and the fill. `signed` and `signed-concurrent` are `memcached` and `concurrent`
//! with signing keys: each hit verifies an HMAC-SHA256 tag over its 1 KB value. `near` is
//! `memcached` through `get_near` with a minute's `near_ttl`: every hit after the first is a near
//! hit, a clone of the kept 1 KB `String`. `macro` and `macro-near` are `memcached` and `near`
//! through a `#[distcached]` function of one argument: its key built at each call.

#[path = "../distcache/tests/support/memcached.rs"]
mod memcached;

use std::time::Duration;

use distcache::{Cache, Error, GetOptions};

const MINUTE: Duration = Duration::from_secs(60);

fn main() {
    let mut args = std::env::args().skip(1);
    let store = args.next().unwrap_or_else(|| "memcached".into());
    let hits: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (_server, cache) = match store.as_str() {
            "memory" => (None, Cache::builder().build().expect("a cache")),
            "memcached" | "concurrent" | "misses" | "signed" | "signed-concurrent" | "near" => {
                let server = memcached::Memcached::start().await;
                let mut builder = Cache::builder().server(server.addr());
                if store.starts_with("signed") {
                    builder = builder.signing_keys([[7u8; 32]]);
                }
                let cache = builder.build().expect("a cache");
                if store == "concurrent" || store == "signed-concurrent" {
                    concurrent(&cache, hits).await;
                    return;
                }
                if store == "misses" {
                    misses(&cache, hits).await;
                    return;
                }
                (Some(server), cache)
            }
            "macro" | "macro-near" => {
                let server = memcached::Memcached::start().await;
                let cache = Cache::builder().server(server.addr()).build().expect("a cache");
                assert!(MACRO_CACHE.set(cache).is_ok());
                macro_hits(&store, hits).await;
                return;
            }
            "by-hand" => {
                let server = memcached::Memcached::start().await;
                let outside = memcached::Outside::connect(&server.addr()).await;
                let json = serde_json::to_vec(&"v".repeat(998)).expect("JSON");
                outside.set("hitcost", &json, 0).await;
                for _ in 0..hits + 1 {
                    let (data, _) = outside.get("hitcost").await.expect("a hit");
                    let got: String = serde_json::from_slice(&data).expect("a string");
                    std::hint::black_box(got);
                }
                return;
            }
            other => panic!(
                "the store is memory, memcached, near, signed, by-hand, concurrent, signed-concurrent or misses, not {other:?}"
            ),
        };
        let value = "v".repeat(998);
        if store == "near" {
            // Every call after the first is a near hit: a clone of the kept String.
            let options = GetOptions::new(MINUTE, MINUTE).near_ttl(MINUTE);
            for _ in 0..hits + 1 {
                let got: String = cache
                    .get_near("hitcost", &options, || async {
                        Ok::<_, Error>(value.clone())
                    })
                    .await
                    .expect("a hit");
                std::hint::black_box(got);
            }
            let stats = cache.stats();
            assert_eq!((stats.near_hits, stats.getter_runs), (hits as u64, 1));
            return;
        }
        for _ in 0..hits + 1 {
            let got: String = cache
                .get("hitcost", MINUTE, MINUTE, || async {
                    Ok::<_, Error>(value.clone())
                })
                .await
                .expect("a hit");
            std::hint::black_box(got);
        }
        let stats = cache.stats();
        assert_eq!(
            (stats.hits, stats.getter_runs),
            (hits as u64, 1),
            "{stats:?}"
        );
    });
}

/// `hits` hits (at least) by 32 callers at once, over 200 keys filled first.
async fn concurrent(cache: &Cache, hits: usize) {
    const CALLERS: usize = 32;
    const KEYS: usize = 200;
    let value = "v".repeat(998);
    let keys: Vec<String> = (0..KEYS).map(|k| format!("hitcost:{k}")).collect();
    for key in &keys {
        let _: String = cache
            .get(key, MINUTE, MINUTE, || async {
                Ok::<_, Error>(value.clone())
            })
            .await
            .expect("a fill");
    }
    let per_caller = hits.div_ceil(CALLERS);
    let callers = (0..CALLERS).map(|caller| {
        let (cache, keys) = (cache.clone(), keys.clone());
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(caller as u64);
            for _ in 0..per_caller {
                let got: String = cache
                    // Never run: every key is cached (checked below).
                    .get(&keys[rng.usize(..KEYS)], MINUTE, MINUTE, || async {
                        Ok::<_, Error>(String::new())
                    })
                    .await
                    .expect("a hit");
                std::hint::black_box(got);
            }
        })
    });
    for caller in callers.collect::<Vec<_>>() {
        caller.await.expect("a caller");
    }
    assert_eq!(cache.stats().getter_runs, KEYS as u64, "every get hit");
}

/// `count` misses, one call at a time, each on a key of its own.
async fn misses(cache: &Cache, count: usize) {
    let value = "v".repeat(998);
    for k in 0..count + 1 {
        let got: String = cache
            .get(&format!("miss:{k}"), MINUTE, MINUTE, || async {
                Ok::<_, Error>(value.clone())
            })
            .await
            .expect("a computed value");
        std::hint::black_box(got);
    }
    let stats = cache.stats();
    assert_eq!(
        (stats.misses, stats.getter_runs),
        (count as u64 + 1, count as u64 + 1),
        "{stats:?}"
    );
}

static MACRO_CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();

/// A `#[distcached]` function: its key built from its argument, then the call.
#[distcache::distcached(expire = "1m", exec_limit = "1m", cache = MACRO_CACHE.get().expect("set"))]
async fn hot(id: u32) -> Result<String, Error> {
    Ok("v".repeat(998 + id as usize - 7))
}

/// The same, keeping its value near.
#[distcache::distcached(
    expire = "1m",
    exec_limit = "1m",
    near_ttl = "1m",
    cache = MACRO_CACHE.get().expect("set")
)]
async fn hot_near(id: u32) -> Result<String, Error> {
    Ok("v".repeat(998 + id as usize - 7))
}

/// `hits` calls of `hot` (`macro`) or `hot_near` (`macro-near`), after the one that computes.
async fn macro_hits(mode: &str, hits: usize) {
    for _ in 0..hits + 1 {
        let got = if mode == "macro" {
            hot(7).await
        } else {
            hot_near(7).await
        };
        std::hint::black_box(got.expect("a value"));
    }
    let stats = MACRO_CACHE.get().expect("set").stats();
    assert_eq!(stats.getter_runs, 1, "{stats:?}");
}
