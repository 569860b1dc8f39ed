//! The near cache: values kept in this process for `near_ttl`, never past their own life in the
//! store, dropped at once by this process's `invalidate`. On the in-process store and on
//! memcached (two caches on one server stand for two processes; `processes.rs` has the same
//! bound across real processes).
//!
//! Lives in the store are counted on memcached's one-second clock, which tokio's paused time
//! does not move: the memcached tests wait for real time to pass.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use distcache::{Cache, Error, GetOptions, distcached};
use support::memcached::Memcached;
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(5);
const MINUTE: Duration = Duration::from_secs(60);
const NEAR: Duration = Duration::from_secs(1);
/// The slack on a staleness bound.
const SLACK: Duration = Duration::from_millis(250);

fn near(expire: Duration) -> GetOptions {
    GetOptions::new(LIMIT, expire).near_ttl(NEAR)
}

/// A getter returning `value`, counting its runs.
fn counted<'a>(
    runs: &'a AtomicUsize,
    value: &str,
) -> impl FnOnce() -> std::future::Ready<Result<String, Error>> + 'a {
    let value = value.to_owned();
    move || {
        runs.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(value))
    }
}

#[tokio::test]
async fn a_second_call_within_near_ttl_is_served_from_this_process() {
    for cache in [
        Cache::builder().build().unwrap(),
        Cache::builder()
            .server(Memcached::start().await.addr())
            .build()
            .unwrap(),
    ] {
        let runs = AtomicUsize::new(0);
        let first: String = cache
            .get_near("k", &near(MINUTE), counted(&runs, "v"))
            .await
            .unwrap();
        let second: String = cache
            .get_near("k", &near(MINUTE), counted(&runs, "other"))
            .await
            .unwrap();
        assert_eq!((first.as_str(), second.as_str()), ("v", "v"));
        let stats = cache.stats();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(
            (stats.near_hits, stats.hits, stats.misses),
            (1, 0, 1),
            "{cache}: the second call did not ask the store"
        );
    }
}

#[tokio::test]
async fn a_value_read_from_the_store_is_kept_and_an_arc_comes_out_shared() {
    let server = Memcached::start().await;
    let writer = Cache::builder().server(server.addr()).build().unwrap();
    let reader = Cache::builder().server(server.addr()).build().unwrap();
    let _: Arc<String> = writer
        .get("k", LIMIT, MINUTE, || async {
            Ok::<_, Error>(Arc::new("v".into()))
        })
        .await
        .unwrap();
    let never = || async { panic!("the value is stored") as Result<Arc<String>, Error> };
    let read = reader.get_near("k", &near(MINUTE), never).await.unwrap();
    let kept = reader.get_near("k", &near(MINUTE), never).await.unwrap();
    assert!(Arc::ptr_eq(&read, &kept), "the kept Arc, not a copy");
    let stats = reader.stats();
    assert_eq!((stats.hits, stats.near_hits), (1, 1));
}

#[tokio::test]
async fn invalidate_drops_this_process_copy_at_once() {
    let cache = Cache::builder().build().unwrap();
    let runs = AtomicUsize::new(0);
    let _: String = cache
        .get_near("k", &near(MINUTE), counted(&runs, "old"))
        .await
        .unwrap();
    cache.invalidate("k").await.unwrap();
    let got: String = cache
        .get_near("k", &near(MINUTE), counted(&runs, "new"))
        .await
        .unwrap();
    assert_eq!(got, "new");
    assert_eq!(cache.stats().near_hits, 0);
}

/// Another process's new value reaches this one within `near_ttl` of the read that brought the
/// old one, and not sooner than the near cache lets it.
#[tokio::test]
async fn another_process_new_value_is_served_within_near_ttl() {
    let server = Memcached::start().await;
    let a = Cache::builder().server(server.addr()).build().unwrap();
    let b = Cache::builder().server(server.addr()).build().unwrap();
    let runs = AtomicUsize::new(0);
    let read_sent = Instant::now();
    let old: String = a
        .get_near("k", &near(MINUTE), counted(&runs, "old"))
        .await
        .unwrap();
    assert_eq!(old, "old");
    // B replaces it.
    b.invalidate("k").await.unwrap();
    let _: String = b
        .get("k", LIMIT, MINUTE, counted(&runs, "new"))
        .await
        .unwrap();
    let replaced = Instant::now();
    let mut old_after_replace = 0;
    loop {
        let asked = Instant::now();
        let got: String = a
            .get_near("k", &near(MINUTE), counted(&runs, "unexpected"))
            .await
            .unwrap();
        if got == "new" {
            break;
        }
        assert_eq!(got, "old");
        old_after_replace += 1;
        assert!(
            asked < read_sent + NEAR + SLACK,
            "the old value served {:?} after the read that brought it",
            asked - read_sent
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Within near_ttl, A keeps its copy: the bound is a staleness bound, not a miss. (Unless the
    // replacement itself took most of near_ttl, on a machine too loaded to tell.)
    if replaced < read_sent + NEAR / 2 {
        assert!(
            old_after_replace > 0,
            "A served its kept copy after the replacement"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// Calls with different `near_ttl`s share a key's entry, each within its own bound: a value kept
/// by a call with a long `near_ttl` is not served to one with a short one past its short bound.
#[tokio::test]
async fn each_call_is_served_within_its_own_near_ttl() {
    let server = Memcached::start().await;
    let a = Cache::builder().server(server.addr()).build().unwrap();
    let b = Cache::builder().server(server.addr()).build().unwrap();
    let runs = AtomicUsize::new(0);
    let long = GetOptions::new(LIMIT, MINUTE).near_ttl(MINUTE);
    let short = GetOptions::new(LIMIT, MINUTE).near_ttl(Duration::from_millis(100));
    let read_sent = Instant::now();
    let _: String = a.get_near("k", &long, counted(&runs, "old")).await.unwrap();
    b.invalidate("k").await.unwrap();
    let _: String = b
        .get("k", LIMIT, MINUTE, counted(&runs, "new"))
        .await
        .unwrap();
    // The long call still serves its copy (its bound is a minute)...
    let got: String = a.get_near("k", &long, counted(&runs, "x")).await.unwrap();
    assert_eq!(got, "old");
    // ...the short one not past its 100 ms (from the write that kept it, after `read_sent`).
    tokio::time::sleep_until(read_sent + Duration::from_millis(100) + SLACK).await;
    let got: String = a.get_near("k", &short, counted(&runs, "x")).await.unwrap();
    assert_eq!(got, "new");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// A call that refreshes a value ahead returns its successor, and this process's later calls get
/// the successor too, not the value it replaced (in-process store, paused time).
#[tokio::test(start_paused = true)]
async fn a_refreshed_value_replaces_the_kept_one() {
    let cache = Cache::builder().refresh_ahead(0.5).build().unwrap();
    let options =
        GetOptions::new(LIMIT, Duration::from_secs(2)).near_ttl(Duration::from_millis(200));
    let runs = AtomicUsize::new(0);
    let v1: String = cache
        .get_near("k", &options, counted(&runs, "v1"))
        .await
        .unwrap();
    assert_eq!(v1, "v1");
    // In the last second of its two: the next store read refreshes it.
    tokio::time::advance(Duration::from_millis(1200)).await;
    let refreshed: String = cache
        .get_near("k", &options, counted(&runs, "v2"))
        .await
        .unwrap();
    assert_eq!((refreshed.as_str(), cache.stats().refreshes), ("v2", 1));
    tokio::time::advance(Duration::from_millis(10)).await;
    let later: String = cache
        .get_near("k", &options, counted(&runs, "v3"))
        .await
        .unwrap();
    assert_eq!(later, "v2", "never back to the value it replaced");
    assert_eq!(cache.stats().near_hits, 1);
}

/// A kept value never outlives its own expiry, however long `near_ttl` is: a value stored for
/// 2 s is recomputed after 2 s (and memcached's second), not after a minute. Whether this
/// process wrote it or read it, and, for a value kept stale (`stale_if_error`), whose item lives
/// an hour longer, when it stops being fresh.
#[tokio::test]
async fn a_kept_value_never_outlives_its_expire() {
    let expire = Duration::from_secs(2);
    let long_near = GetOptions::new(LIMIT, expire).near_ttl(MINUTE);
    let server = Memcached::start().await;
    let on = |stale: bool| {
        let builder = Cache::builder().server(server.addr());
        let builder = if stale {
            builder.stale_if_error(Duration::from_secs(3600))
        } else {
            builder
        };
        builder.build().unwrap()
    };
    let in_process = Cache::builder().build().unwrap();
    let (writer, reader) = (on(false), on(false));
    let (stale_writer, stale_reader) = (on(true), on(true));
    let cases = [
        // (who writes, who keeps it, key, whether the keeper wrote it)
        (&in_process, &in_process, "written here", true),
        (&in_process, &in_process, "read here", false),
        (&writer, &reader, "read from memcached", false),
        (&stale_writer, &stale_reader, "read fresh-until", false),
    ];
    for (writer, reader, key, wrote) in cases {
        let runs = AtomicUsize::new(0);
        let written = Instant::now();
        let first: String = if wrote {
            reader
                .get_near(key, &long_near, counted(&runs, "first"))
                .await
        } else {
            writer
                .get(key, LIMIT, expire, counted(&runs, "first"))
                .await
        }
        .unwrap();
        assert_eq!(first, "first");
        let near_hits = reader.stats().near_hits;
        // Read twice while it lives: kept.
        for _ in 0..2 {
            let _: String = reader
                .get_near(key, &long_near, counted(&runs, "early"))
                .await
                .unwrap();
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{key}");
        let kept = reader.stats().near_hits - near_hits;
        assert_eq!(kept, if wrote { 2 } else { 1 }, "{key}: kept");
        // memcached's clock may keep an item up to a second past its TTL.
        tokio::time::sleep_until(written + expire + Duration::from_secs(1) + SLACK).await;
        let later: String = reader
            .get_near(key, &long_near, counted(&runs, "second"))
            .await
            .unwrap();
        assert_eq!(
            later, "second",
            "{key}: the value expired; the near copy with it"
        );
    }
}

#[tokio::test]
async fn get_and_get_with_keep_nothing_and_a_cache_wide_near_ttl_applies_to_get_near() {
    let cache = Cache::builder().near_ttl(NEAR).build().unwrap();
    let runs = AtomicUsize::new(0);
    for _ in 0..2 {
        let _: String = cache
            .get("a", LIMIT, MINUTE, counted(&runs, "v"))
            .await
            .unwrap();
    }
    assert_eq!(cache.stats().near_hits, 0, "get keeps nothing");
    let plain = GetOptions::new(LIMIT, MINUTE);
    for _ in 0..2 {
        let _: String = cache
            .get_near("b", &plain, counted(&runs, "v"))
            .await
            .unwrap();
    }
    assert_eq!(cache.stats().near_hits, 1, "the cache's near_ttl");
    let off = plain.near_ttl(Duration::ZERO);
    for _ in 0..2 {
        let _: String = cache
            .get_near("c", &off, counted(&runs, "v"))
            .await
            .unwrap();
    }
    assert_eq!(cache.stats().near_hits, 1, "zero turns it off per call");
}

#[tokio::test]
async fn a_near_ttl_out_of_range_is_a_typed_error() {
    let cache = Cache::builder().build().unwrap();
    let bad = GetOptions::new(LIMIT, MINUTE).near_ttl(Duration::from_micros(10));
    let got: Result<String, Error> = cache.get_near("k", &bad, || async { Ok("v".into()) }).await;
    assert!(matches!(got, Err(Error::InvalidArgument { .. })), "{got:?}");
    let built = Cache::builder()
        .near_ttl(Duration::from_secs(400 * 24 * 3600))
        .build();
    assert!(matches!(
        built,
        Err(distcache::BuildError::InvalidSetting {
            setting: "near_ttl",
            ..
        })
    ));
}

#[tokio::test]
async fn a_key_kept_as_one_type_and_read_as_another_is_no_near_hit() {
    let cache = Cache::builder().build().unwrap();
    let options = near(MINUTE);
    let n: u64 = cache
        .get_near("k", &options, || async { Ok::<_, Error>(7) })
        .await
        .unwrap();
    let f: f64 = cache
        .get_near("k", &options, || async { Ok::<_, Error>(0.5) })
        .await
        .unwrap();
    // Read from the store and decoded as the other type (JSON 7 is a fine f64).
    assert_eq!((n, f), (7, 7.0));
    assert_eq!(cache.stats().near_hits, 0);
}

static CALLS: AtomicUsize = AtomicUsize::new(0);

#[distcached(expire = "1m", exec_limit = "5s", near_ttl = "1s", cache = &*MACRO_CACHE)]
async fn kept(id: u32) -> Result<String, Error> {
    CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(format!("kept {id}"))
}

static NEAR_CACHE_WIDE: AtomicUsize = AtomicUsize::new(0);

/// `near_ttl = "cache"`: the cache's.
#[distcached(expire = "1m", exec_limit = "5s", near_ttl = "cache", cache = &*CACHE_WIDE)]
async fn cache_wide(id: u32) -> Result<Vec<u32>, Error> {
    NEAR_CACHE_WIDE.fetch_add(1, Ordering::SeqCst);
    Ok(vec![id])
}

/// No `near_ttl`: nothing kept, whatever the cache's.
#[distcached(expire = "1m", exec_limit = "5s", cache = &*CACHE_WIDE)]
async fn not_kept(id: u32) -> Result<Vec<u32>, Error> {
    Ok(vec![id])
}

/// `near_ttl = "cache"` on a cache without one: nothing kept.
#[distcached(expire = "1m", exec_limit = "5s", near_ttl = "cache", cache = &*MACRO_CACHE)]
async fn cache_without(id: u32) -> Result<Vec<u32>, Error> {
    Ok(vec![id])
}

static MACRO_CACHE: std::sync::LazyLock<Cache> =
    std::sync::LazyLock::new(|| Cache::builder().build().unwrap());
static CACHE_WIDE: std::sync::LazyLock<Cache> =
    std::sync::LazyLock::new(|| Cache::builder().near_ttl(NEAR).build().unwrap());

#[tokio::test]
async fn distcached_functions_keep_values_near_and_their_invalidate_drops_them() {
    assert_eq!(kept(1).await.unwrap(), "kept 1");
    assert_eq!(kept(1).await.unwrap(), "kept 1");
    assert_eq!(MACRO_CACHE.stats().near_hits, 1);
    kept_invalidate(1).await.unwrap();
    assert_eq!(kept(1).await.unwrap(), "kept 1");
    assert_eq!(
        CALLS.load(Ordering::SeqCst),
        2,
        "recomputed after the invalidate"
    );
    assert_eq!(MACRO_CACHE.stats().near_hits, 1);

    assert_eq!(cache_wide(3).await.unwrap(), [3]);
    assert_eq!(cache_wide(3).await.unwrap(), [3]);
    assert_eq!(CACHE_WIDE.stats().near_hits, 1, "the cache-wide near_ttl");
    assert_eq!(NEAR_CACHE_WIDE.load(Ordering::SeqCst), 1);
    for _ in 0..2 {
        assert_eq!(not_kept(4).await.unwrap(), [4]);
    }
    assert_eq!(
        CACHE_WIDE.stats().near_hits,
        1,
        "a function without near_ttl keeps nothing"
    );
    let near_hits = MACRO_CACHE.stats().near_hits;
    for _ in 0..2 {
        assert_eq!(cache_without(5).await.unwrap(), [5]);
    }
    assert_eq!(
        MACRO_CACHE.stats().near_hits,
        near_hits,
        "a cache without near_ttl"
    );
}

/// A kept value is served until its refresh window, not into it: this process still reads the
/// store then, and refreshes the value ahead (in-process store, paused time).
#[tokio::test(start_paused = true)]
async fn a_kept_value_still_lets_its_refresh_ahead_happen() {
    let cache = Cache::builder().refresh_ahead(0.5).build().unwrap();
    let options = GetOptions::new(LIMIT, Duration::from_secs(2)).near_ttl(MINUTE);
    let runs = AtomicUsize::new(0);
    let v1: String = cache
        .get_near("k", &options, counted(&runs, "v1"))
        .await
        .unwrap();
    let kept: String = cache
        .get_near("k", &options, counted(&runs, "x"))
        .await
        .unwrap();
    assert_eq!(
        (v1.as_str(), kept.as_str(), cache.stats().near_hits),
        ("v1", "v1", 1)
    );
    // In the last second of its two: due to be refreshed.
    tokio::time::advance(Duration::from_millis(1200)).await;
    let refreshed: String = cache
        .get_near("k", &options, counted(&runs, "v2"))
        .await
        .unwrap();
    assert_eq!((refreshed.as_str(), cache.stats().refreshes), ("v2", 1));
}

/// With `stale_if_error`, a value recomputed past its `expire` is kept as it is stored, by the call
/// that recomputed it, in the call (`get_near`) or in the background (a function with
/// `soft_timeout`): the next call is a near hit of it.
#[tokio::test]
async fn a_recomputed_stale_value_is_kept() {
    let cache = Cache::builder().stale_if_error(MINUTE).build().unwrap();
    let options = GetOptions::new(LIMIT, Duration::from_millis(300)).near_ttl(MINUTE);
    let runs = AtomicUsize::new(0);
    let _: String = cache
        .get_near("k", &options, counted(&runs, "v1"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let v2: String = cache
        .get_near("k", &options, counted(&runs, "v2"))
        .await
        .unwrap();
    assert_eq!(v2, "v2", "recomputed");
    let near_hits = cache.stats().near_hits;
    let again: String = cache
        .get_near("k", &options, counted(&runs, "x"))
        .await
        .unwrap();
    assert_eq!(
        (again.as_str(), cache.stats().near_hits),
        ("v2", near_hits + 1)
    );

    assert_eq!(detached_stale(1).await.unwrap(), "run 1");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        detached_stale(1).await.unwrap(),
        "run 2",
        "recomputed in a task of its own"
    );
    let near_hits = STALE_CACHE.stats().near_hits;
    assert_eq!(detached_stale(1).await.unwrap(), "run 2");
    assert_eq!(
        STALE_CACHE.stats().near_hits,
        near_hits + 1,
        "kept by that task"
    );
}

static STALE_CACHE: std::sync::LazyLock<Cache> =
    std::sync::LazyLock::new(|| Cache::builder().stale_if_error(MINUTE).build().unwrap());
static STALE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Its recompute runs in a task of its own; within the 5 s soft timeout, the call waits for it.
#[distcached(
    expire = "300ms",
    exec_limit = "10s",
    soft_timeout = "5s",
    near_ttl = "1m",
    cache = &*STALE_CACHE
)]
async fn detached_stale(id: u32) -> Result<String, Error> {
    Ok(format!(
        "run {}",
        STALE_RUNS.fetch_add(id as usize, Ordering::SeqCst) + 1
    ))
}

/// A value is kept as the store's readers decode it, not as the getter made it: a field its JSON
/// leaves out reads the same from this process's near cache as from any other process.
#[tokio::test]
async fn a_written_value_is_kept_as_readers_decode_it() {
    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    struct Page {
        body: String,
        #[serde(skip)]
        rendered_by: String,
    }
    let cache = Cache::builder().build().unwrap();
    let options = GetOptions::new(LIMIT, MINUTE).near_ttl(MINUTE);
    let getter = || async {
        Ok::<_, Error>(Page {
            body: "hello".into(),
            rendered_by: "this process".into(),
        })
    };
    let computed: Page = cache.get_near("page", &options, getter).await.unwrap();
    assert_eq!(
        computed.rendered_by, "this process",
        "the getter's own value, returned"
    );
    let kept: Page = cache.get_near("page", &options, getter).await.unwrap();
    assert_eq!(
        (kept.body.as_str(), kept.rendered_by.as_str()),
        ("hello", "")
    );
    assert_eq!(cache.stats().near_hits, 1);
}
