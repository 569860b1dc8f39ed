//! `stale_if_error`: values kept past their `expire`, served while one caller recomputes them
//! and when that fails; never past `expire + max_stale`, never after `invalidate`. On the
//! in-process store and on memcached (two caches on one server stand for two processes).
//!
//! Freshness is counted on the wall clock, which tokio's paused time does not move: these tests
//! wait for real time to pass, in fractions of a second.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use distcache::{Cache, CacheBuilder, Error, GetOptions};
use support::memcached::{Memcached, Outside, remaining_ttl};
use tokio::sync::Notify;
use tokio::time::Instant;

const MAX_STALE: Duration = Duration::from_secs(3600);
const EXPIRE: Duration = Duration::from_millis(300);
const LIMIT: Duration = Duration::from_secs(5);

fn stale(builder: CacheBuilder) -> Cache {
    builder.stale_if_error(MAX_STALE).build().unwrap()
}

fn on(server: &Memcached) -> CacheBuilder {
    Cache::builder().server(server.addr())
}

/// Two caches, or one twice (in-process: both "processes" share its store).
struct Pair {
    a: Cache,
    b: Cache,
    one: bool,
}

impl Pair {
    fn shared(cache: Cache) -> Self {
        Pair {
            a: cache.clone(),
            b: cache,
            one: true,
        }
    }

    fn two(a: Cache, b: Cache) -> Self {
        Pair { a, b, one: false }
    }

    /// A counter summed over the distinct caches.
    fn total(&self, counter: fn(&distcache::Stats) -> u64) -> u64 {
        let a = counter(&self.a.stats());
        if self.one {
            a
        } else {
            a + counter(&self.b.stats())
        }
    }
}

/// Stores `value` under `key` through `cache`, then waits until it is past its `EXPIRE`.
async fn stored_then_stale(cache: &Cache, key: &str, value: &str) {
    let got: String = cache
        .get(key, LIMIT, EXPIRE, || async {
            Ok::<_, Error>(value.to_owned())
        })
        .await
        .unwrap();
    assert_eq!(got, value);
    tokio::time::sleep(EXPIRE + Duration::from_millis(50)).await;
}

/// A call whose origin is down, with the cache's own settings.
async fn failing(cache: &Cache, key: &str) -> Result<String, Error> {
    failing_with(cache, key, &GetOptions::new(LIMIT, EXPIRE)).await
}

/// While one caller recomputes a stale value (its getter held), every other caller, in this
/// process and in another, gets the stale value at once without running a getter; then the
/// recomputed value is stored and read by everyone.
async fn one_caller_recomputes_while_the_others_get_the_stale_value(pair: Pair) {
    let (a, b) = (&pair.a, &pair.b);
    stored_then_stale(a, "k", "old").await;
    let gate = Arc::new(Notify::new());
    let entered = Arc::new(Notify::new());
    let recompute = {
        let (a, gate, entered) = (a.clone(), gate.clone(), entered.clone());
        tokio::spawn(async move {
            a.get("k", LIMIT, EXPIRE, || async move {
                entered.notify_one();
                gate.notified().await;
                Ok::<_, Error>("new".to_owned())
            })
            .await
        })
    };
    entered.notified().await;
    let runs = AtomicUsize::new(0);
    for cache in [a, b, a, b] {
        let started = Instant::now();
        let got: String = cache
            .get("k", LIMIT, EXPIRE, || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Error>("other".to_owned())
            })
            .await
            .unwrap();
        assert_eq!(got, "old", "the stale value, while the recompute runs");
        assert!(started.elapsed() < Duration::from_secs(1), "at once");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "nobody else ran a getter");
    assert_eq!(pair.total(|s| s.stale_served), 4);
    gate.notify_one();
    assert_eq!(recompute.await.unwrap().unwrap(), "new");
    for cache in [a, b] {
        let got: String = cache
            .get("k", LIMIT, EXPIRE, || async {
                Ok::<_, Error>("other".to_owned())
            })
            .await
            .unwrap();
        assert_eq!(got, "new");
    }
    assert_eq!(
        pair.total(|s| s.getter_runs),
        2,
        "the first value's, and the recompute's"
    );
}

#[tokio::test]
async fn in_process_one_caller_recomputes_while_the_others_get_the_stale_value() {
    one_caller_recomputes_while_the_others_get_the_stale_value(Pair::shared(stale(
        Cache::builder(),
    )))
    .await;
}

#[tokio::test]
async fn on_memcached_one_caller_recomputes_while_the_others_get_the_stale_value() {
    let server = Memcached::start().await;
    one_caller_recomputes_while_the_others_get_the_stale_value(Pair::two(
        stale(on(&server)),
        stale(on(&server)),
    ))
    .await;
}

/// A recompute that fails, panics or runs out of time gives its caller the stale value; nobody
/// recomputes the key during the backoff; then one caller does.
async fn a_failed_recompute_serves_the_stale_value_then_backs_off(pair: Pair) {
    let (a, b) = (&pair.a, &pair.b);
    stored_then_stale(a, "k", "old").await;
    assert_eq!(failing(a, "k").await.unwrap(), "old", "an error");
    let panicked: String = b
        .get("k", LIMIT, EXPIRE, || async {
            if true {
                panic!("not run: the key is backed off")
            }
            Ok::<_, Error>(String::new())
        })
        .await
        .unwrap();
    assert_eq!(panicked, "old", "backed off: the getter did not run");
    assert_eq!(
        pair.total(|s| s.getter_runs),
        2,
        "the first value's, and the failure"
    );
    assert_eq!(pair.total(|s| s.stale_served), 2);
    // The backoff is 300 ms (error_backoff); then a recompute that panics, then one that runs
    // out of time, each serve the stale value.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let got: String = b
        .get("k", LIMIT, EXPIRE, || async {
            if true {
                panic!("the origin's client panicked")
            }
            Ok::<_, Error>(String::new())
        })
        .await
        .unwrap();
    assert_eq!(got, "old", "a panic");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let started = Instant::now();
    let short = GetOptions::new(Duration::from_millis(200), EXPIRE);
    let got: String = a
        .get_with("k", &short, || {
            std::future::pending::<Result<String, Error>>()
        })
        .await
        .unwrap();
    assert_eq!(got, "old", "out of time");
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert_eq!(pair.total(|s| s.getter_runs), 4);
    assert_eq!(pair.total(|s| s.stale_served), 4);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let got: String = a
        .get("k", LIMIT, EXPIRE, || async {
            Ok::<_, Error>("new".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(got, "new", "the origin is back");
}

fn backing_off(builder: CacheBuilder) -> Cache {
    builder
        .stale_if_error(MAX_STALE)
        .error_backoff(Duration::from_millis(300))
        .build()
        .unwrap()
}

#[tokio::test]
async fn in_process_a_failed_recompute_serves_the_stale_value_then_backs_off() {
    a_failed_recompute_serves_the_stale_value_then_backs_off(Pair::shared(backing_off(
        Cache::builder(),
    )))
    .await;
}

#[tokio::test]
async fn on_memcached_a_failed_recompute_serves_the_stale_value_then_backs_off() {
    let server = Memcached::start().await;
    a_failed_recompute_serves_the_stale_value_then_backs_off(Pair::two(
        backing_off(on(&server)),
        backing_off(on(&server)),
    ))
    .await;
}

/// Past `expire + max_stale`, or after `invalidate`, a failing getter's error reaches its
/// caller: the old value is gone.
async fn never_past_max_stale_nor_after_invalidate(cache: Cache) {
    let short = GetOptions::new(LIMIT, EXPIRE).stale_if_error(Duration::from_millis(400));
    let value = |v: &'static str| move || async move { Ok::<_, Error>(v.to_owned()) };
    let _: String = cache.get_with("gone", &short, value("old")).await.unwrap();
    // Within its stale window, a failure serves it.
    tokio::time::sleep(EXPIRE + Duration::from_millis(50)).await;
    assert_eq!(failing_with(&cache, "gone", &short).await.unwrap(), "old");
    // Past it, not: expire 300 ms + max_stale 400 ms.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(failing_with(&cache, "gone", &short).await.is_err());

    let _: String = cache
        .get("invalidated", LIMIT, EXPIRE, value("old"))
        .await
        .unwrap();
    tokio::time::sleep(EXPIRE + Duration::from_millis(50)).await;
    cache.invalidate("invalidated").await.unwrap();
    assert!(
        failing(&cache, "invalidated").await.is_err(),
        "an invalidated value is never served stale"
    );
}

async fn failing_with(cache: &Cache, key: &str, options: &GetOptions) -> Result<String, Error> {
    cache
        .get_with(key, options, || async {
            Err(Error::InvalidArgument {
                key: "origin".into(),
                reason: "the origin is down",
            })
        })
        .await
}

#[tokio::test]
async fn in_process_never_past_max_stale_nor_after_invalidate() {
    never_past_max_stale_nor_after_invalidate(stale(Cache::builder())).await;
}

#[tokio::test]
async fn on_memcached_never_past_max_stale_nor_after_invalidate() {
    let server = Memcached::start().await;
    never_past_max_stale_nor_after_invalidate(stale(on(&server))).await;
}

/// A call that turns `stale_if_error` off (zero) takes a stale value as gone: it recomputes,
/// and its getter's error reaches it. A fresh value written with freshness reads as any other.
#[tokio::test]
async fn a_call_without_stale_if_error_takes_a_stale_value_as_gone() {
    let cache = stale(Cache::builder());
    let off = GetOptions::new(LIMIT, EXPIRE).stale_if_error(Duration::ZERO);
    let _: String = cache
        .get("k", LIMIT, EXPIRE, || async {
            Ok::<_, Error>("old".to_owned())
        })
        .await
        .unwrap();
    let fresh: String = cache
        .get_with("k", &off, || async { Ok::<_, Error>("other".to_owned()) })
        .await
        .unwrap();
    assert_eq!(fresh, "old", "fresh: a plain hit");
    tokio::time::sleep(EXPIRE + Duration::from_millis(50)).await;
    assert!(failing_with(&cache, "k", &off).await.is_err());
    let got: String = cache
        .get_with("k", &off, || async { Ok::<_, Error>("new".to_owned()) })
        .await
        .unwrap();
    assert_eq!(got, "new");
}

/// The item format on the server: without `stale_if_error`, JSON under `DCJ1`, byte for byte
/// as before; with it, `DCF1`, a 24-byte header (fresh until, stale until, retry at: Unix ms),
/// then the same JSON, kept `expire + max_stale`.
#[tokio::test]
async fn the_item_format_with_and_without_freshness() {
    let server = Memcached::start().await;
    let outside = Outside::connect(&server.addr()).await;
    let plain = on(&server).build().unwrap();
    let keeping = stale(on(&server));
    let minute = Duration::from_secs(60);
    let value = || async { Ok::<_, Error>(vec![1u32, 2]) };
    let before = std::time::SystemTime::now();
    let _: Vec<u32> = plain.get("plain", LIMIT, minute, value).await.unwrap();
    let _: Vec<u32> = keeping.get("kept", LIMIT, minute, value).await.unwrap();
    let after = std::time::SystemTime::now();
    assert_eq!(
        outside.get("plain").await.unwrap(),
        (b"[1,2]".to_vec(), u32::from_be_bytes(*b"DCJ1"))
    );
    let (bytes, flags) = outside.get("kept").await.unwrap();
    assert_eq!(flags, u32::from_be_bytes(*b"DCF1"));
    assert_eq!(&bytes[24..], b"[1,2]");
    let word = |i: usize| u64::from_be_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    };
    assert!((ms(before) + 60_000..=ms(after) + 60_000).contains(&word(0)));
    assert_eq!(
        word(1),
        word(0) + 3_600_000,
        "stale until: fresh until + max_stale"
    );
    assert_eq!(word(2), 0, "nobody recomputes it");
    let ttl = remaining_ttl(&server.addr(), "kept").await;
    assert!(
        (3658..=3660).contains(&ttl),
        "kept expire + max_stale: {ttl} s"
    );
    // Each cache reads the other's item.
    let other = || async { Ok::<_, Error>(vec![0u32]) };
    assert_eq!(
        plain.get("kept", LIMIT, minute, other).await.unwrap(),
        vec![1, 2]
    );
    assert_eq!(
        keeping.get("plain", LIMIT, minute, other).await.unwrap(),
        vec![1, 2]
    );
}

/// A corrupt freshness header is a miss: recomputed and replaced, never returned.
#[tokio::test]
async fn a_corrupt_freshness_header_is_a_miss() {
    let server = Memcached::start().await;
    let outside = Outside::connect(&server.addr()).await;
    let cache = stale(on(&server));
    let flags = u32::from_be_bytes(*b"DCF1");
    for (key, bytes) in [
        ("short", b"[1]".to_vec()),
        // Stale until before fresh until.
        ("backwards", {
            let mut b = 2u64.to_be_bytes().to_vec();
            b.extend(1u64.to_be_bytes());
            b.extend(0u64.to_be_bytes());
            b.extend(b"[1]");
            b
        }),
    ] {
        outside.set(key, &bytes, flags).await;
        let got: Vec<u32> = cache
            .get(key, LIMIT, EXPIRE, || async { Ok::<_, Error>(vec![2]) })
            .await
            .unwrap();
        assert_eq!(got, vec![2], "{key}");
    }
    assert_eq!(cache.stats().decode_misses, 2);
}

const SOFT: Duration = Duration::from_millis(100);
const SLOW: Duration = Duration::from_secs(2);

fn soft_options() -> distcache::GetOptions<distcache::Detached> {
    GetOptions::new(LIMIT, EXPIRE)
        .stale_if_error(MAX_STALE)
        .soft_timeout(SOFT)
}

/// Reads `key` until it holds `value`, without ever running a getter: the background recompute
/// stores it moments after its getter returns, with no event of its own.
async fn until_stored(cache: &Cache, key: &str, value: &str) {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let got: String = cache
                .get(key, LIMIT, EXPIRE, || async {
                    Err(Error::InvalidArgument {
                        key: "none".into(),
                        reason: "not run",
                    })
                })
                .await
                .unwrap();
            if got == value {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("stored within 5 s");
}

/// `soft_timeout` 100 ms, a getter slowed to 2 s: the caller gets the stale value within a
/// second; the getter finishes in the background and stores its value, which the next callers
/// read without running a getter.
async fn a_soft_timeout_serves_the_stale_value_and_the_getter_finishes(pair: Pair) {
    let (a, b) = (&pair.a, &pair.b);
    stored_then_stale(a, "k", "old").await;
    let finished = Arc::new(Notify::new());
    let started = Instant::now();
    let got: String = {
        let finished = finished.clone();
        a.get_detached("k", &soft_options(), move || async move {
            tokio::time::sleep(SLOW).await;
            finished.notify_one();
            Ok::<_, Error>("new".to_owned())
        })
        .await
        .unwrap()
    };
    assert_eq!(got, "old");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let stats = a.stats();
    assert_eq!((stats.soft_timeouts, stats.stale_served), (1, 1));
    finished.notified().await;
    until_stored(b, "k", "new").await;
    assert_eq!(
        pair.total(|s| s.getter_runs),
        2,
        "the first value's, and the recompute's"
    );
}

#[tokio::test]
async fn in_process_a_soft_timeout_serves_the_stale_value_and_the_getter_finishes() {
    a_soft_timeout_serves_the_stale_value_and_the_getter_finishes(Pair::shared(stale(
        Cache::builder(),
    )))
    .await;
}

#[tokio::test]
async fn on_memcached_a_soft_timeout_serves_the_stale_value_and_the_getter_finishes() {
    let server = Memcached::start().await;
    a_soft_timeout_serves_the_stale_value_and_the_getter_finishes(Pair::two(
        stale(on(&server)),
        stale(on(&server)),
    ))
    .await;
}

/// The background getter survives its caller's cancellation, and stores its value.
#[tokio::test]
async fn the_background_getter_survives_its_callers_cancellation() {
    let cache = stale(Cache::builder());
    stored_then_stale(&cache, "k", "old").await;
    let (entered, finished) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let call = {
        let (cache, entered, finished) = (cache.clone(), entered.clone(), finished.clone());
        tokio::spawn(async move {
            cache
                .get_detached("k", &soft_options(), move || async move {
                    entered.notify_one();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    finished.notify_one();
                    Ok::<_, Error>("new".to_owned())
                })
                .await
        })
    };
    entered.notified().await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    tokio::time::timeout(Duration::from_secs(5), finished.notified())
        .await
        .expect("the getter finishes");
    until_stored(&cache, "k", "new").await;
}

/// Dropping the cache's last handle aborts the background getter.
#[tokio::test]
async fn dropping_the_cache_aborts_the_background_getter() {
    struct Dropped(Arc<Notify>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.notify_one();
        }
    }
    let cache = stale(Cache::builder());
    stored_then_stale(&cache, "k", "old").await;
    let dropped = Arc::new(Notify::new());
    let finished = Arc::new(AtomicUsize::new(0));
    let got: String = {
        let (dropped, finished) = (dropped.clone(), finished.clone());
        cache
            .get_detached("k", &soft_options(), move || async move {
                let _guard = Dropped(dropped);
                tokio::time::sleep(SLOW).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Error>("new".to_owned())
            })
            .await
            .unwrap()
    };
    assert_eq!(got, "old");
    drop(cache);
    tokio::time::timeout(Duration::from_secs(1), dropped.notified())
        .await
        .expect("the getter is dropped with the cache");
    assert_eq!(finished.load(Ordering::SeqCst), 0);
}

/// Without a value to return, a soft timeout changes nothing: the call waits for its getter.
#[tokio::test]
async fn without_a_value_the_call_waits_for_its_getter() {
    let cache = stale(Cache::builder());
    let started = Instant::now();
    let got: String = cache
        .get_detached("cold", &soft_options(), || async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, Error>("computed".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(got, "computed");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(cache.stats().soft_timeouts, 0);
}

/// A recompute that ends within the soft timeout is returned as usual; the cache-wide soft
/// timeout applies to detached calls.
#[tokio::test]
async fn a_recompute_within_the_soft_timeout_is_returned() {
    let cache = Cache::builder()
        .stale_if_error(MAX_STALE)
        .soft_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    stored_then_stale(&cache, "k", "old").await;
    let got: String = cache
        .get_detached("k", &GetOptions::new(LIMIT, EXPIRE), || async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, Error>("new".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(got, "new");
    assert_eq!(cache.stats().soft_timeouts, 0);
}

/// Without `error_backoff`, a failed recompute backs the key off for the value's `expire` (at
/// most 30 s): here 300 ms.
#[tokio::test]
async fn without_error_backoff_a_failed_recompute_backs_off_for_expire() {
    let cache = stale(Cache::builder());
    stored_then_stale(&cache, "k", "old").await;
    let failed_at = Instant::now();
    assert_eq!(failing(&cache, "k").await.unwrap(), "old");
    let runs = AtomicUsize::new(0);
    let counted = || async {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok::<_, Error>("new".to_owned())
    };
    // Asked until the getter runs: memcached gives no event for a backoff's end.
    let got = loop {
        let got: String = cache.get("k", LIMIT, EXPIRE, counted).await.unwrap();
        if runs.load(Ordering::SeqCst) > 0 {
            break got;
        }
        assert_eq!(got, "old");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let waited = failed_at.elapsed();
    assert_eq!(got, "new");
    // The backoff's end is written in whole milliseconds of the wall clock (cut, not rounded),
    // so it may come up to a millisecond early: a run measured 299.9 ms.
    let earliest = EXPIRE - Duration::from_millis(1);
    assert!(
        (earliest..EXPIRE + Duration::from_millis(250)).contains(&waited),
        "recomputed {waited:?} after the failure"
    );
}

/// A value invalidated while its recompute runs is not served when that recompute fails: the
/// caller gets the getter's error.
#[tokio::test]
async fn a_value_invalidated_during_a_failing_recompute_is_not_served() {
    let server = Memcached::start().await;
    let cache = stale(on(&server));
    stored_then_stale(&cache, "k", "old").await;
    let (entered, gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let recompute = {
        let (cache, entered, gate) = (cache.clone(), entered.clone(), gate.clone());
        tokio::spawn(async move {
            cache
                .get::<String, Error, _, _>("k", LIMIT, EXPIRE, || async move {
                    entered.notify_one();
                    gate.notified().await;
                    Err(Error::InvalidArgument {
                        key: "origin".into(),
                        reason: "the origin is down",
                    })
                })
                .await
        })
    };
    entered.notified().await;
    cache.invalidate("k").await.unwrap();
    gate.notify_one();
    let err = recompute.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    assert_eq!(cache.stats().stale_served, 0);
}

/// A caller cancelled while it recomputes gives its claim up: the next caller recomputes at
/// once, not after the claim's end (`exec_limit` + 1 s).
#[tokio::test]
async fn a_cancelled_recompute_gives_its_claim_up() {
    let server = Memcached::start().await;
    let cache = stale(on(&server));
    stored_then_stale(&cache, "k", "old").await;
    let entered = Arc::new(Notify::new());
    let claimant = {
        let (cache, entered) = (cache.clone(), entered.clone());
        tokio::spawn(async move {
            cache
                .get::<String, Error, _, _>("k", LIMIT, EXPIRE, || async move {
                    entered.notify_one();
                    std::future::pending().await
                })
                .await
        })
    };
    entered.notified().await;
    claimant.abort();
    let cancelled = Instant::now();
    // The claim is given up from a spawned task: asked until a call recomputes.
    loop {
        let got: String = cache
            .get("k", LIMIT, EXPIRE, || async {
                Ok::<_, Error>("new".to_owned())
            })
            .await
            .unwrap();
        if got == "new" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        cancelled.elapsed() < Duration::from_secs(1),
        "recomputed {:?} after the cancellation, not after the claim ({LIMIT:?} + 1 s)",
        cancelled.elapsed()
    );
}
