//! The promise of `Cache::get`, on the in-process store.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use distcache::{BuildError, Cache, Error};
use tokio::time::Instant;

const MINUTE: Duration = Duration::from_secs(60);

fn cache() -> Cache {
    Cache::builder()
        .build()
        .expect("the default configuration builds")
}

/// A getter's own error type, to check that it passes through unchanged.
#[derive(Debug, PartialEq)]
enum AppError {
    Cache(String),
    Database(&'static str),
}

impl From<Error> for AppError {
    fn from(err: Error) -> Self {
        AppError::Cache(err.to_string())
    }
}

/// Waits until `condition` holds: for states the cache offers no event for.
async fn until(condition: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the condition holds within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_callers_run_the_getter_once() {
    let cache = cache();
    let runs = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..1000)
        .map(|_| {
            let (cache, runs) = (cache.clone(), runs.clone());
            tokio::spawn(async move {
                cache
                    .get("answer", MINUTE, MINUTE, || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, Error>(42u64)
                    })
                    .await
            })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap(), 42);
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the getter ran once for 1000 callers"
    );
    let stats = cache.stats();
    assert_eq!(stats.getter_runs, 1);
    assert_eq!(
        stats.hits + stats.misses + stats.coalesced_waits,
        1000,
        "{stats:?}"
    );
}

#[tokio::test]
async fn a_slow_getter_is_cut_off_at_exec_limit_and_the_next_call_may_compute() {
    let cache = cache();
    let limit = Duration::from_millis(200);
    let started = std::time::Instant::now();
    let result: Result<u64, Error> = cache
        .get("slow", limit, MINUTE, || async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(1)
        })
        .await;
    let took = started.elapsed();
    match result {
        Err(Error::Timeout { key, limit: l }) => assert_eq!((key.as_str(), l), ("slow", limit)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(took >= limit, "not before the limit: {took:?}");
    assert!(
        took < limit + Duration::from_millis(100),
        "at the limit, not later: {took:?}"
    );

    let value: u64 = cache
        .get("slow", limit, MINUTE, || async { Ok::<_, Error>(2) })
        .await
        .expect("the lease was handed back: the next call computes at once");
    assert_eq!(value, 2);
    let stats = cache.stats();
    assert_eq!((stats.timeouts, stats.getter_runs), (1, 2), "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn callers_waiting_on_a_slow_getter_time_out_at_their_own_limit() {
    let cache = cache();
    let leader = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get::<u64, Error, _, _>("k", MINUTE, MINUTE, || async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(1)
                })
                .await
        }
    });
    until(|| cache.stats().getter_runs == 1).await;
    let started = Instant::now();
    let waiter: Result<u64, Error> = cache
        .get("k", Duration::from_secs(5), MINUTE, || async { Ok(2) })
        .await;
    assert!(waiter.unwrap_err().is_timeout());
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(5),
        "waiting is bounded by exec_limit too"
    );
    assert_eq!(
        leader.await.unwrap().unwrap(),
        1,
        "the leader is unaffected"
    );
}

#[tokio::test]
async fn a_panicking_getter_is_a_typed_error_and_the_next_call_succeeds() {
    let cache = cache();
    let result: Result<u64, Error> = cache
        .get("p", MINUTE, MINUTE, || async { panic!("boom") })
        .await;
    match result {
        Err(Error::GetterPanicked { key, message }) => {
            assert_eq!((key.as_str(), message.as_str()), ("p", "boom"))
        }
        other => panic!("expected GetterPanicked, got {other:?}"),
    }
    let other_key: u64 = cache
        .get("q", MINUTE, MINUTE, || async { Ok::<_, Error>(5) })
        .await
        .unwrap();
    assert_eq!(other_key, 5, "other keys are unaffected");
    let value: u64 = cache
        .get("p", MINUTE, MINUTE, || async { Ok::<_, Error>(6) })
        .await
        .unwrap();
    assert_eq!(value, 6, "the next call runs the getter again");
    assert_eq!(cache.stats().getter_panics, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_getters_error_reaches_its_caller_and_its_waiters_retry() {
    let cache = cache();
    const WAITERS: u64 = 10;
    let leader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get::<u64, AppError, _, _>("f", MINUTE, MINUTE, || async {
                    until(|| cache.stats().coalesced_waits == WAITERS).await;
                    Err(AppError::Database("connection reset"))
                })
                .await
        })
    };
    until(|| cache.stats().getter_runs == 1).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let waiters: Vec<_> = (0..WAITERS)
        .map(|_| {
            let (cache, runs) = (cache.clone(), runs.clone());
            tokio::spawn(async move {
                cache
                    .get::<u64, AppError, _, _>("f", MINUTE, MINUTE, || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        Ok(7)
                    })
                    .await
            })
        })
        .collect();
    assert_eq!(
        leader.await.unwrap(),
        Err(AppError::Database("connection reset")),
        "the getter's error reaches its own caller unchanged"
    );
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap(), Ok(7));
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "one waiter computed, the others shared its value"
    );
    assert_eq!(cache.stats().getter_errors, 1);
}

#[tokio::test(start_paused = true)]
async fn a_value_lives_expire_and_is_then_recomputed_once() {
    let cache = cache();
    let expire = Duration::from_secs(10);
    let runs = Arc::new(AtomicUsize::new(0));
    let call = || {
        let (cache, runs) = (cache.clone(), runs.clone());
        tokio::spawn(async move {
            cache
                .get::<usize, Error, _, _>("e", MINUTE, expire, || async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok(runs.fetch_add(1, Ordering::SeqCst) + 1)
                })
                .await
        })
    };
    assert_eq!(call().await.unwrap().unwrap(), 1);
    tokio::time::advance(expire - Duration::from_millis(1)).await;
    assert_eq!(
        call().await.unwrap().unwrap(),
        1,
        "still cached just before expire"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    let callers: Vec<_> = (0..100).map(|_| call()).collect();
    for caller in callers {
        assert_eq!(
            caller.await.unwrap().unwrap(),
            2,
            "everyone gets the one recomputed value"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn near_its_end_one_caller_refreshes_the_value_while_the_others_read_it() {
    let cache = Cache::builder().refresh_ahead(0.2).build().unwrap();
    let expire = Duration::from_secs(10);
    let get = |getter_value: Option<u64>| {
        let cache = cache.clone();
        async move {
            cache
                .get::<u64, Error, _, _>("r", MINUTE, expire, || async move {
                    Ok(getter_value.expect("only the first call and the refresh compute"))
                })
                .await
        }
    };
    assert_eq!(get(Some(1)).await.unwrap(), 1);
    tokio::time::advance(Duration::from_secs(7)).await;
    assert_eq!(
        get(None).await.unwrap(),
        1,
        "3 s left of 10: no refresh yet"
    );
    tokio::time::advance(Duration::from_millis(1500)).await;

    // 1.5 s left, under a fifth of 10 s: the next call refreshes.
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let (finish, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let refresher = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get::<u64, Error, _, _>("r", MINUTE, expire, || async move {
                    started_tx.send(()).unwrap();
                    finish_rx.await.unwrap();
                    Ok(2)
                })
                .await
        }
    });
    started.await.unwrap();
    for _ in 0..10 {
        assert_eq!(
            get(None).await.unwrap(),
            1,
            "while the refresh runs, the others read the current value at once"
        );
    }
    finish.send(()).unwrap();
    assert_eq!(
        refresher.await.unwrap().unwrap(),
        2,
        "the refresher returns the new value"
    );
    assert_eq!(get(None).await.unwrap(), 2, "which is stored");
    tokio::time::advance(Duration::from_secs(7)).await;
    assert_eq!(
        get(None).await.unwrap(),
        2,
        "for a full expire from its refresh"
    );
    let stats = cache.stats();
    assert_eq!(
        (
            stats.refreshes,
            stats.getter_runs,
            stats.misses,
            stats.lease_waits
        ),
        (1, 2, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_returns_the_current_value_which_stays_until_it_expires() {
    let cache = Cache::builder().refresh_ahead(0.2).build().unwrap();
    let expire = Duration::from_secs(10);
    let value: Result<u64, AppError> = cache.get("f", MINUTE, expire, || async { Ok(1) }).await;
    assert_eq!(value, Ok(1));
    tokio::time::advance(Duration::from_secs(9)).await;
    let value: Result<u64, AppError> = cache
        .get("f", MINUTE, expire, || async {
            Err(AppError::Database("down"))
        })
        .await;
    assert_eq!(value, Ok(1), "the refresh failed: the current value");
    let panicking = cache
        .get::<u64, Error, _, _>("f", MINUTE, expire, || async { panic!("refreshed twice") })
        .await;
    assert_eq!(panicking.unwrap(), 1, "one refresh per value");
    assert_eq!(cache.stats().refreshes, 1, "one refresh per value");
    tokio::time::advance(Duration::from_secs(1)).await;
    let value: Result<u64, AppError> = cache.get("f", MINUTE, expire, || async { Ok(3) }).await;
    assert_eq!(value, Ok(3), "expired as usual, then recomputed");
    let stats = cache.stats();
    assert_eq!(
        (stats.refreshes, stats.getter_errors, stats.getter_panics),
        (1, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_runs_out_of_time_returns_the_current_value() {
    let cache = Cache::builder().refresh_ahead(0.2).build().unwrap();
    let expire = Duration::from_secs(10);
    let limit = Duration::from_secs(1);
    let value: u64 = cache
        .get::<u64, Error, _, _>("t", limit, expire, || async { Ok(1) })
        .await
        .unwrap();
    assert_eq!(value, 1);
    tokio::time::advance(Duration::from_secs(9)).await;
    let started = Instant::now();
    let value = cache
        .get::<u64, Error, _, _>("t", limit, expire, || async {
            tokio::time::sleep(MINUTE).await;
            Ok(2)
        })
        .await;
    assert_eq!(
        value.unwrap(),
        1,
        "cut off at exec_limit: the current value"
    );
    assert_eq!(started.elapsed(), limit, "bounded by exec_limit");
    let stats = cache.stats();
    assert_eq!((stats.refreshes, stats.timeouts), (1, 1));
}

#[test]
fn bad_configuration_fails_at_build_with_a_typed_error() {
    let namespace = Cache::builder().namespace("two words").build().unwrap_err();
    assert!(
        matches!(namespace, BuildError::InvalidNamespace { .. }),
        "{namespace}"
    );
    let size = Cache::builder().max_value_bytes(0).build().unwrap_err();
    assert!(
        matches!(
            size,
            BuildError::InvalidSetting {
                setting: "max_value_bytes",
                ..
            }
        ),
        "{size}"
    );
    let poll = Cache::builder()
        .max_poll_interval(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            poll,
            BuildError::InvalidSetting {
                setting: "max_poll_interval",
                ..
            }
        ),
        "{poll}"
    );
    for fraction in [1.0, -0.1, f64::NAN] {
        let refresh = Cache::builder()
            .refresh_ahead(fraction)
            .build()
            .unwrap_err();
        assert!(
            matches!(
                refresh,
                BuildError::InvalidSetting {
                    setting: "refresh_ahead",
                    ..
                }
            ),
            "{refresh}"
        );
    }
}

#[tokio::test]
async fn zero_or_endless_durations_are_refused() {
    let cache = cache();
    let years = Duration::from_secs(20 * 365 * 86400);
    let year = Duration::from_secs(365 * 86400);
    let past_a_year = year + Duration::from_nanos(1);
    for (exec_limit, expire) in [
        (Duration::ZERO, MINUTE),
        (MINUTE, Duration::ZERO),
        (Duration::MAX, MINUTE),
        (MINUTE, Duration::MAX),
        (MINUTE, years),
        (past_a_year, MINUTE),
        (MINUTE, past_a_year),
    ] {
        let result: Result<u64, Error> =
            cache.get("z", exec_limit, expire, || async { Ok(1) }).await;
        assert!(
            matches!(result, Err(Error::InvalidArgument { .. })),
            "{result:?}"
        );
    }
    // The limit itself is accepted.
    let result: Result<u64, Error> = cache.get("y", year, year, || async { Ok(1) }).await;
    assert_eq!(result.unwrap(), 1);
}

#[tokio::test]
async fn a_value_over_the_size_limit_is_returned_not_stored_and_counted() {
    let cache = Cache::builder().max_value_bytes(100).build().unwrap();
    let runs = AtomicUsize::new(0);
    for _ in 0..2 {
        let value: String = cache
            .get("big", MINUTE, MINUTE, || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Error>("x".repeat(200))
            })
            .await
            .unwrap();
        assert_eq!(value.len(), 200);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2, "not stored: computed again");
    let stats = cache.stats();
    assert_eq!(
        (stats.unstorable_values, stats.uncached_calls),
        (1, 1),
        "the second call found the key marked unstorable and ran the getter at once: {stats:?}"
    );
}

#[tokio::test]
async fn an_unserializable_value_is_returned_not_stored_and_counted() {
    let cache = cache();
    // JSON object keys must be strings: this map cannot be serialized.
    let value: HashMap<Vec<u8>, u32> = cache
        .get("map", MINUTE, MINUTE, || async {
            Ok::<_, Error>(HashMap::from([(vec![1u8], 1)]))
        })
        .await
        .unwrap();
    assert_eq!(value[&vec![1u8]], 1);
    assert_eq!(cache.stats().unstorable_values, 1);
}

#[tokio::test]
async fn bytes_of_another_type_under_a_key_are_a_miss() {
    let cache = cache();
    let number: u64 = cache
        .get("shared", MINUTE, MINUTE, || async { Ok::<_, Error>(7) })
        .await
        .unwrap();
    assert_eq!(number, 7);
    let text: String = cache
        .get("shared", MINUTE, MINUTE, || async {
            Ok::<_, Error>("seven".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(text, "seven", "recomputed, not a panic or garbage");
    let text: String = cache
        .get("shared", MINUTE, MINUTE, || async {
            Ok::<_, Error>("other".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(text, "seven", "and stored in place of the old value");
    let stats = cache.stats();
    assert_eq!(
        (stats.decode_misses, stats.getter_runs),
        (1, 2),
        "{stats:?}"
    );
}

#[tokio::test]
async fn invalidate_makes_the_next_call_recompute() {
    let cache = cache();
    let get =
        |v: u32| cache.get::<u32, Error, _, _>("i", MINUTE, MINUTE, move || async move { Ok(v) });
    assert_eq!(get(1).await.unwrap(), 1);
    assert_eq!(get(2).await.unwrap(), 1);
    cache.invalidate("i").await.unwrap();
    assert_eq!(get(3).await.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_hands_its_lease_back() {
    let cache = cache();
    let exec_limit = Duration::from_secs(30);
    let holder = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get::<u64, Error, _, _>("c", exec_limit, MINUTE, std::future::pending)
                .await
        }
    });
    until(|| cache.stats().getter_runs == 1).await;
    holder.abort();
    assert!(holder.await.unwrap_err().is_cancelled());
    let started = Instant::now();
    let value: u64 = cache
        .get("c", exec_limit, MINUTE, || async { Ok::<_, Error>(9) })
        .await
        .unwrap();
    assert_eq!(value, 9);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "computed without waiting for the 31 s lease to expire: {:?}",
        started.elapsed()
    );
}

#[test]
fn calls_are_send_when_their_getters_are() {
    fn assert_send<T: Send>(_: &T) {}
    let cache = cache();
    let call = cache.get::<u64, Error, _, _>("s", MINUTE, MINUTE, || async { Ok(1) });
    assert_send(&call);
    fn assert_clone_send_sync<T: Clone + Send + Sync>() {}
    assert_clone_send_sync::<Cache>();
}

/// `get_with`'s per-call `refresh_ahead` takes precedence over the cache's: on where the cache
/// has it off, and off (0) where the cache has it on; out of range, a typed error.
#[tokio::test(start_paused = true)]
async fn a_calls_refresh_ahead_takes_precedence_over_the_caches() {
    use distcache::GetOptions;
    let expire = Duration::from_secs(10);
    let refreshes_near_the_end = |cache: Cache, options: GetOptions| async move {
        let get = |value: u64| {
            let cache = cache.clone();
            async move {
                cache
                    .get_with::<u64, Error, _, _>("p", &options, || async move { Ok(value) })
                    .await
                    .unwrap()
            }
        };
        assert_eq!(get(1).await, 1);
        tokio::time::advance(Duration::from_millis(8500)).await;
        // 1.5 s left of 10: a fifth refreshes now (the call returns the new value), and off
        // leaves the value.
        let value = get(2).await;
        (value, cache.stats().refreshes)
    };
    let on = GetOptions::new(MINUTE, expire).refresh_ahead(0.2);
    let off = GetOptions::new(MINUTE, expire).refresh_ahead(0.0);
    assert_eq!(
        refreshes_near_the_end(cache(), on).await,
        (2, 1),
        "on for the call"
    );
    let cache_wide = Cache::builder().refresh_ahead(0.2).build().unwrap();
    assert_eq!(
        refreshes_near_the_end(cache_wide, off).await,
        (1, 0),
        "off for the call"
    );
    let cache_wide = Cache::builder().refresh_ahead(0.2).build().unwrap();
    let inherits = GetOptions::new(MINUTE, expire);
    assert_eq!(
        refreshes_near_the_end(cache_wide, inherits).await,
        (2, 1),
        "the cache's"
    );

    let bad = GetOptions::new(MINUTE, expire).refresh_ahead(1.0);
    let err = cache()
        .get_with::<u64, Error, _, _>("p", &bad, || async { Ok(1) })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

/// The getter decides per result: `set_expire` keeps this value for less (or more) than the
/// call's `expire`; `skip_store` returns it without storing it (this process's waiting callers
/// share it), and the next call computes again.
#[tokio::test(start_paused = true)]
async fn the_getter_sets_its_values_expire_or_skips_storing_it() {
    use distcache::entry;
    let cache = cache();
    let runs = Arc::new(AtomicUsize::new(0));
    let get = |key: &'static str, decide: fn()| {
        let (cache, runs) = (cache.clone(), runs.clone());
        async move {
            cache
                .get::<u64, Error, _, _>(key, MINUTE, MINUTE, || async move {
                    decide();
                    tokio::task::yield_now().await;
                    Ok(runs.fetch_add(1, Ordering::SeqCst) as u64)
                })
                .await
                .unwrap()
        }
    };
    // Kept 2 s instead of a minute.
    let short = || entry::set_expire(Duration::from_secs(2));
    assert_eq!(get("short", short).await, 0);
    assert_eq!(get("short", short).await, 0, "stored");
    tokio::time::advance(Duration::from_millis(2500)).await;
    assert_eq!(get("short", short).await, 1, "expired after 2 s");

    // Not stored: two concurrent callers share the run, the next call computes again.
    let skip = || entry::skip_store();
    let (a, b) = tokio::join!(get("skip", skip), get("skip", skip));
    assert_eq!((a, b), (2, 2), "shared in this process");
    tokio::time::advance(Duration::from_millis(1500)).await;
    assert_eq!(get("skip", skip).await, 3, "not stored: computed again");
    assert_eq!(cache.stats().skipped_stores, 2);

    // A zero expire is not storing; outside a getter, both do nothing.
    assert_eq!(get("zero", || entry::set_expire(Duration::ZERO)).await, 4);
    entry::skip_store();
    entry::set_expire(Duration::from_secs(1));
    assert_eq!(get("plain", || {}).await, 5);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(get("plain", || {}).await, 5, "the call's own expire");
}

/// With `error_backoff`, a failing getter's error reaches its own caller; every other caller then
/// gets `Error::Backoff` at once, without running the getter, until the backoff ends; then one
/// caller runs it again. Without it, each caller runs the getter in turn (the default).
#[tokio::test(start_paused = true)]
async fn a_failing_getter_is_backed_off() {
    let cache = Cache::builder()
        .error_backoff(Duration::from_secs(2))
        .build()
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let get = |fail: bool| {
        let (cache, runs) = (cache.clone(), runs.clone());
        async move {
            cache
                .get::<u64, AppError, _, _>("origin", MINUTE, MINUTE, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    if fail {
                        Err(AppError::Database("down"))
                    } else {
                        Ok(7)
                    }
                })
                .await
        }
    };
    assert_eq!(
        get(true).await,
        Err(AppError::Database("down")),
        "its own error"
    );
    for _ in 0..5 {
        let err = get(false).await.unwrap_err();
        assert!(
            matches!(&err, AppError::Cache(message) if message.contains("backed off")),
            "{err:?}"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "not run during the backoff");
    assert_eq!(cache.stats().backoffs, 5);
    // The marker says when the backoff ends by the wall clock, which a paused test clock does
    // not move (tests/cluster.rs checks that end, in real time); the marker itself lives a
    // second past the backoff, and is gone then.
    tokio::time::advance(Duration::from_millis(3100)).await;
    assert_eq!(get(false).await, Ok(7), "tried again after the backoff");
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    // Per call, over the cache's setting; out of range, a typed error.
    let options = distcache::GetOptions::new(MINUTE, MINUTE).error_backoff(Duration::ZERO);
    let err = cache
        .get_with::<u64, Error, _, _>("origin", &options, || async { Ok(1) })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}
