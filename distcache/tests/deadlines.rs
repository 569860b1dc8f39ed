//! The bound of the promise on real memcached servers: a call returns within `exec_limit` plus at
//! most one store operation (itself bounded by `connect_timeout + io_timeout`), however the cache
//! is used and however a server misbehaves. Correctness bounds are asserted with at least 250 ms of
//! slack; speed is never asserted.

mod support;

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use distcache::{Cache, Error};
use support::memcached::Memcached;

const MINUTE: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_millis(500);
const SLACK: Duration = Duration::from_millis(250);

fn runtime(multi_thread: bool) -> tokio::runtime::Runtime {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().expect("a runtime")
}

/// F13: a `static` cache (as `#[tokio::test]`s and the macro's default cache use one) outlives the
/// runtime that made its connections. The next runtime's calls must neither hang on connections
/// whose tasks died with the old runtime nor fail: each returns its value within the bound.
#[test]
fn a_cache_used_from_three_runtimes_one_after_another_answers_within_the_bound() {
    let server = runtime(false).block_on(Memcached::start());
    let addr = server.addr();
    static CACHE: LazyLock<std::sync::Mutex<Option<Cache>>> =
        LazyLock::new(|| std::sync::Mutex::new(None));
    let cache = Cache::builder()
        .server(&addr)
        .connect_timeout(CONNECT_TIMEOUT)
        .io_timeout(IO_TIMEOUT)
        .connections_per_server(2)
        .build()
        .unwrap();
    *CACHE.lock().unwrap() = Some(cache);
    let cache = || CACHE.lock().unwrap().clone().expect("set above");

    let exec_limit = Duration::from_secs(2);
    let bound = exec_limit + CONNECT_TIMEOUT + IO_TIMEOUT + SLACK;
    for (round, multi_thread) in [(0u32, false), (1, true), (2, false)] {
        let rt = runtime(multi_thread);
        rt.block_on(async {
            // The key of this round (a miss: lookup, lease, fill) and the first round's (a hit).
            for key in [format!("round:{round}"), "round:0".to_owned()] {
                let started = Instant::now();
                let result = tokio::time::timeout(
                    bound,
                    cache().get(&key, exec_limit, MINUTE, || async move {
                        Ok::<_, Error>(format!("computed in round {round}"))
                    }),
                )
                .await;
                let value: String = result
                    .unwrap_or_else(|_| panic!("round {round}, {key}: no answer within {bound:?}"))
                    .unwrap_or_else(|err| panic!("round {round}, {key}: {err}"));
                let expected = if key == "round:0" { 0 } else { round };
                assert_eq!(value, format!("computed in round {expected}"), "{key}");
                assert!(started.elapsed() < bound, "{:?}", started.elapsed());
            }
        });
        // The runtime and every task it spawned (the connections' readers and writers) go here.
        drop(rt);
    }
    let stats = cache().stats();
    assert_eq!(
        (stats.getter_runs, stats.degraded_calls),
        (3, 0),
        "every round used the store: {stats:?}"
    );
}
