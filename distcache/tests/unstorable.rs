//! F12: values that cannot be stored (over `max_value_bytes`, not representable in JSON, not
//! serializable at all) are returned to every caller, counted, and never make callers take turns
//! at the getter, in one process or across two. Two `Cache`s on one memcached stand for two
//! processes (each has its own in-process coalescing); `tests/processes.rs` uses real processes.

mod support;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use distcache::{Cache, Error};
use serde::Serialize;
use serde::de::DeserializeOwned;
use support::memcached::Memcached;

const MINUTE: Duration = Duration::from_secs(60);
/// Long enough that callers taking turns at a 300 ms getter would run out of it.
const EXEC_LIMIT: Duration = Duration::from_secs(2);
const GETTER: Duration = Duration::from_millis(300);
const CALLERS: usize = 10;

/// Runs `CALLERS` concurrent callers of `key` on each of `caches`; each gets `make()`'s value from
/// a getter that takes `GETTER`. Returns the values and the getter runs per cache.
async fn herd<T>(
    caches: &[Cache],
    key: &str,
    make: fn() -> T,
) -> (Vec<Result<T, Error>>, Vec<usize>)
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    let runs: Vec<Arc<AtomicUsize>> = caches.iter().map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for (cache, runs) in caches.iter().zip(&runs) {
        for _ in 0..CALLERS {
            let (cache, runs, key) = (cache.clone(), runs.clone(), key.to_owned());
            tasks.push(tokio::spawn(async move {
                cache
                    .get(&key, EXEC_LIMIT, MINUTE, || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(GETTER).await;
                        Ok::<_, Error>(make())
                    })
                    .await
            }));
        }
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("no caller panics"));
    }
    (
        results,
        runs.iter().map(|r| r.load(Ordering::SeqCst)).collect(),
    )
}

/// `n` caches on `server` that take values and items of up to `max_bytes`.
fn caches(server: &Memcached, n: usize, max_bytes: usize) -> Vec<Cache> {
    (0..n)
        .map(|_| {
            Cache::builder()
                .server(server.addr())
                .io_timeout(Duration::from_secs(2))
                .max_value_bytes(max_bytes)
                .item_bytes(max_bytes.max(1024))
                .build()
                .unwrap()
        })
        .collect()
}

/// Every caller got the value, none timed out; returns the total getter runs.
fn all_returned<T: Debug>(results: Vec<Result<T, Error>>, check: impl Fn(&T) -> bool) {
    for result in results {
        match result {
            Ok(value) => assert!(check(&value), "a wrong value: {value:?}"),
            Err(err) => panic!("a caller failed: {err}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_at_max_value_bytes_is_stored_and_computed_once() {
    let server = Memcached::start().await;
    let caches = caches(&server, 2, 1000);
    // 998 characters, 1000 bytes of JSON with the quotes.
    let (results, runs) = herd(&caches, "at-limit", || "x".repeat(998)).await;
    all_returned(results, |v: &String| v.len() == 998);
    assert_eq!(runs.iter().sum::<usize>(), 1, "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_one_byte_over_max_value_bytes_is_returned_uncached_without_turns() {
    let server = Memcached::start().await;
    let caches = caches(&server, 2, 1000);
    let (results, runs) = herd(&caches, "over-limit", || "x".repeat(999)).await;
    all_returned(results, |v: &String| v.len() == 999);
    let unstorable: u64 = caches.iter().map(|c| c.stats().unstorable_values).sum();
    assert!(unstorable >= 1, "counted");
    assert!(runs.iter().all(|&r| r >= 1), "{runs:?}");
}

/// Eight processes: taking turns at the getter, one per process, would run out of time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_never_take_turns_at_a_value_over_max_value_bytes() {
    let server = Memcached::start().await;
    let caches = caches(&server, 8, 1000);
    let (results, _) = herd(&caches, "over-limit", || "x".repeat(999)).await;
    all_returned(results, |v: &String| v.len() == 999);
    let uncached: u64 = caches.iter().map(|c| c.stats().uncached_calls).sum();
    assert!(
        uncached >= 1,
        "the others found the marker and ran their own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twenty_megabyte_value_is_returned_uncached_without_turns() {
    let server = Memcached::start().await;
    let caches = caches(&server, 2, 1024 * 1024 - 512);
    let (results, _) = herd(&caches, "huge", || "y".repeat(20_000_000)).await;
    all_returned(results, |v: &String| v.len() == 20_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_with_nan_inside_is_returned_uncached_without_turns() {
    let server = Memcached::start().await;
    let caches = caches(&server, 2, 1024 * 1024 - 512);
    let (results, _) = herd(&caches, "nan", || vec![1.5, f64::NAN, f64::INFINITY]).await;
    all_returned(results, |v: &Vec<f64>| {
        v[0] == 1.5 && v[1].is_nan() && v[2] == f64::INFINITY
    });
    let stats: Vec<_> = caches.iter().map(Cache::stats).collect();
    assert!(
        stats.iter().map(|s| s.unstorable_values).sum::<u64>() >= 1,
        "{stats:?}"
    );
    assert_eq!(
        stats.iter().map(|s| s.decode_misses).sum::<u64>(),
        0,
        "never stored, so never read back as something else: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_with_non_string_keys_is_returned_uncached_without_turns() {
    let server = Memcached::start().await;
    let caches = caches(&server, 2, 1024 * 1024 - 512);
    fn make() -> HashMap<(u8, u8), u8> {
        HashMap::from([((1, 2), 3)])
    }
    let (results, _) = herd(&caches, "map", make).await;
    all_returned(results, |v| *v == make());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_too_callers_never_take_turns_at_an_unstorable_value() {
    let caches = vec![Cache::builder().build().unwrap()];
    let (results, _) = herd(&caches, "nan", || vec![f64::NAN]).await;
    all_returned(results, |v: &Vec<f64>| v[0].is_nan());
}

/// A value within `item_bytes` but over the server's item size (`-I`, 1 MiB by default):
/// memcached refuses it, and deletes the lease's stub with it. The key is marked all the same, so
/// that eight processes do not take turns at the getter. (Random characters: compressed, they
/// still take more than 1 MiB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_never_take_turns_at_a_value_the_server_refuses() {
    let server = Memcached::start().await;
    let caches = caches(&server, 8, 4 * 1024 * 1024);
    let noise = || {
        let mut rng = fastrand::Rng::with_seed(3);
        (0..2_000_000)
            .map(|_| rng.alphanumeric())
            .collect::<String>()
    };
    let (results, _) = herd(&caches, "refused", noise).await;
    all_returned(results, |v: &String| v.len() == 2_000_000);
    let unstorable: u64 = caches.iter().map(|c| c.stats().unstorable_values).sum();
    assert!(unstorable >= 1, "counted");
}

/// The marker lives `expire`, at most a minute: a value that becomes storable is stored again
/// soon, and the getter of a key read all the time runs once a minute under a lease.
#[tokio::test]
async fn the_marker_of_an_unstorable_value_lives_at_most_a_minute() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let server = Memcached::start().await;
    let cache = caches(&server, 1, 10).remove(0);
    let hour = Duration::from_secs(3600);
    let value: String = cache
        .get("marked", EXEC_LIMIT, hour, || async {
            Ok::<_, Error>("x".repeat(100))
        })
        .await
        .unwrap();
    assert_eq!(value.len(), 100);
    let mut raw = BufReader::new(tokio::net::TcpStream::connect(server.addr()).await.unwrap());
    raw.get_mut().write_all(b"mg marked t f\r\n").await.unwrap();
    let mut line = String::new();
    raw.read_line(&mut line).await.unwrap();
    let ttl: u64 = line
        .split(' ')
        .find_map(|t| t.strip_prefix('t'))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("a TTL in {line:?}"));
    assert!(
        line.contains(&format!("f{}", u32::from_be_bytes(*b"DCU1"))),
        "the marker: {line:?}"
    );
    assert!(
        (1..=60).contains(&ttl),
        "at most a minute, not the hour: {ttl}"
    );
}

/// A value of 1 MiB of JSON under the longest key is stored (compressed), and computed once. (That
/// the default `item_bytes` itself fits memcached's default item size with the longest key is
/// checked at the store, in the `store::memcached` tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_at_the_default_limit_under_the_longest_key_is_stored() {
    let server = Memcached::start().await;
    let caches: Vec<Cache> = (0..2)
        .map(|_| {
            Cache::builder()
                .server(server.addr())
                .io_timeout(Duration::from_secs(2))
                .build()
                .unwrap()
        })
        .collect();
    let key = "k".repeat(250);
    // 1 MiB - 512 bytes of JSON: the string and its two quotes.
    let (results, runs) = herd(&caches, &key, || "v".repeat(1024 * 1024 - 512 - 2)).await;
    all_returned(results, |v: &String| v.len() == 1024 * 1024 - 514);
    assert_eq!(
        runs.iter().sum::<usize>(),
        1,
        "stored, so computed once: {runs:?}"
    );
}
