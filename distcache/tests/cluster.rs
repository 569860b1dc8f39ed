//! The promise on real memcached servers: started on free loopback ports, killed, paused,
//! restarted. Two `Cache`s on one cluster stand for two processes here (each has its own
//! in-process coalescing); `tests/processes.rs` uses real processes.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use distcache::{BuildError, Cache, Error, OnUnavailable};
use support::memcached::{Memcached, Outside, remaining_ttl};

const MINUTE: Duration = Duration::from_secs(60);

fn cache_on(servers: &[&Memcached]) -> distcache::CacheBuilder {
    Cache::builder()
        .servers(servers.iter().map(|s| s.addr()))
        .io_timeout(Duration::from_millis(300))
        .retry_interval(Duration::from_secs(1))
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("within 30 s")
}

/// memcached counts lifetimes in whole seconds, so this test takes real ones: two caches (two
/// processes) read one key every 50 ms for 4.5 s, across the 3 s `expire` of its first value; the
/// getter takes 300 ms, so the other cache reads while a refresh runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_read_all_the_time_is_refreshed_and_never_expires_under_its_readers() {
    let server = Memcached::start().await;
    // A window of 70% of 3 s: the last 2 whole seconds of a value's life.
    // A generous I/O timeout: a request stalled on a loaded machine must not mark the only
    // server down, which would make calls run without the store.
    let caches = [
        cache_on(&[&server])
            .io_timeout(Duration::from_secs(2))
            .refresh_ahead(0.7)
            .build()
            .unwrap(),
        cache_on(&[&server])
            .io_timeout(Duration::from_secs(2))
            .refresh_ahead(0.7)
            .build()
            .unwrap(),
    ];
    async fn read(cache: Cache, runs: Arc<AtomicUsize>) -> usize {
        let expire = Duration::from_secs(3);
        within(cache.get("hot", MINUTE, expire, || async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, Error>(runs.fetch_add(1, Ordering::SeqCst) + 1)
        }))
        .await
        .unwrap()
    }
    let runs = Arc::new(AtomicUsize::new(0));
    let first: usize = read(caches[0].clone(), runs.clone()).await;
    assert_eq!(first, 1);
    let readers: Vec<_> = caches
        .iter()
        .map(|cache| {
            let (cache, runs) = (cache.clone(), runs.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let mut last = first;
                while started.elapsed() < Duration::from_millis(4500) {
                    let value = read(cache.clone(), runs.clone()).await;
                    assert!(
                        value >= last,
                        "values only move forward: {last} then {value}"
                    );
                    last = value;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                last
            })
        })
        .collect();
    let mut newest = 0;
    for reader in readers {
        newest = newest.max(reader.await.unwrap());
    }
    let [a, b] = caches.map(|c| c.stats());
    assert_eq!(
        a.degraded_calls + b.degraded_calls,
        0,
        "every call used the store: {a:?} {b:?}"
    );
    assert_eq!(
        a.misses + b.misses,
        1,
        "only the first read missed: {a:?} {b:?}"
    );
    assert_eq!(
        a.lease_waits + b.lease_waits,
        0,
        "nobody waited, not even while a refresh ran: {a:?} {b:?}"
    );
    let refreshes = a.refreshes + b.refreshes;
    assert!(refreshes >= 1, "refreshed before it expired: {a:?} {b:?}");
    assert_eq!(runs.load(Ordering::SeqCst) as u64, 1 + refreshes);
    assert_eq!(
        newest as u64,
        1 + refreshes,
        "the readers saw the newest value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_caches_on_one_cluster_run_each_getter_once() {
    let servers = Memcached::start_many::<3>().await;
    let refs: Vec<&Memcached> = servers.iter().collect();
    let caches = [
        cache_on(&refs).build().unwrap(),
        cache_on(&refs).build().unwrap(),
    ];
    let runs: Arc<HashMap<usize, AtomicUsize>> =
        Arc::new((0..10).map(|k| (k, AtomicUsize::new(0))).collect());
    let mut callers = Vec::new();
    for cache in &caches {
        for caller in 0..25 {
            let (cache, runs) = (cache.clone(), runs.clone());
            callers.push(tokio::spawn(async move {
                for i in 0..10 {
                    let k = (i + caller) % 10;
                    let value: String = cache
                        .get(
                            &format!("two:{k}"),
                            Duration::from_secs(10),
                            MINUTE,
                            || async {
                                runs[&k].fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                Ok::<_, Error>(format!("value {k}"))
                            },
                        )
                        .await
                        .unwrap();
                    assert_eq!(value, format!("value {k}"));
                }
            }));
        }
    }
    for caller in callers {
        within(caller).await.unwrap();
    }
    for (k, n) in runs.iter() {
        assert_eq!(n.load(Ordering::SeqCst), 1, "key {k}");
    }
}

#[tokio::test]
async fn a_slow_getter_is_cut_off_and_its_lease_handed_back_across_caches() {
    let server = Memcached::start().await;
    let (a, b) = (
        cache_on(&[&server]).build().unwrap(),
        cache_on(&[&server]).build().unwrap(),
    );
    let limit = Duration::from_millis(200);
    let started = Instant::now();
    let slow: Result<u32, Error> = a
        .get("slow", limit, MINUTE, || async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(1)
        })
        .await;
    let took = started.elapsed();
    assert!(slow.unwrap_err().is_timeout());
    // The limit, plus the one store operation that hands the lease back.
    assert!(took < limit + Duration::from_millis(300), "{took:?}");
    let started = Instant::now();
    let value: u32 = b
        .get("slow", limit, MINUTE, || async { Ok::<_, Error>(2) })
        .await
        .unwrap();
    assert_eq!(value, 2, "the other cache computes at once");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "without waiting for the 2 s lease"
    );
    assert_eq!(b.stats().lease_waits, 0);
}

/// A lease lasts 4 s unless its holder extends it: a getter that runs 6 s keeps the key, so the
/// other cache (another process) waits for its value instead of computing its own. The getter's
/// 6 s are the work under test, in real time, as memcached's clock is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_getter_that_outlives_the_lease_keeps_it_by_extending_it() {
    let server = Memcached::start().await;
    let (a, b) = (
        cache_on(&[&server]).build().unwrap(),
        cache_on(&[&server]).build().unwrap(),
    );
    let (won_tx, won_rx) = tokio::sync::oneshot::channel();
    let holder = tokio::spawn(async move {
        let value: String = a
            .get("long", MINUTE, MINUTE, || async {
                let _ = won_tx.send(());
                tokio::time::sleep(Duration::from_secs(6)).await;
                Ok::<_, Error>("from the holder".to_owned())
            })
            .await
            .unwrap();
        (value, a.stats())
    });
    won_rx.await.expect("a won the lease");
    let waited: String = within(b.get("long", MINUTE, MINUTE, || async {
        Ok::<_, Error>("from the waiter".to_owned())
    }))
    .await
    .unwrap();
    let (value, holder) = holder.await.unwrap();
    assert_eq!(
        (value.as_str(), waited.as_str()),
        ("from the holder", "from the holder")
    );
    assert_eq!(b.stats().getter_runs, 0, "the waiter never won the key");
    assert!(
        (4..=7).contains(&holder.lease_extensions),
        "one extension a second: {holder:?}"
    );
    assert_eq!(holder.lost_fills, 0);
}

/// Fills `keys` through `cache` with values tagged `tag`.
async fn fill(cache: &Cache, keys: &[String], tag: &str) -> Vec<String> {
    let mut values = Vec::new();
    for key in keys {
        let value: String = cache
            .get(key, Duration::from_secs(5), MINUTE, || async {
                Ok::<_, Error>(format!("{tag} {key}"))
            })
            .await
            .unwrap();
        values.push(value);
    }
    values
}

#[tokio::test]
async fn a_killed_node_moves_only_its_keys_and_calls_keep_succeeding() {
    let mut servers = Memcached::start_many::<3>().await;
    let refs: Vec<&Memcached> = servers.iter().collect();
    let cache = cache_on(&refs).retry_interval(MINUTE).build().unwrap();
    let keys: Vec<String> = (0..150).map(|i| format!("kill:{i}")).collect();
    fill(&cache, &keys, "first").await;
    let home: Vec<String> = keys
        .iter()
        .map(|k| cache.server_for(k).unwrap().to_string())
        .collect();
    let victim = servers[1].addr();
    assert!(
        home.iter().filter(|h| **h == victim).count() > 10,
        "the victim holds keys"
    );
    servers[1].kill();

    let values = fill(&cache, &keys, "second").await;
    for ((key, value), home) in keys.iter().zip(&values).zip(&home) {
        let now = cache.server_for(key).unwrap().to_string();
        if *home == victim {
            assert_eq!(
                *value,
                format!("second {key}"),
                "recomputed: its node is gone"
            );
            assert_ne!(now, victim, "{key} moved off the dead node");
        } else {
            assert_eq!(
                *value,
                format!("first {key}"),
                "{key} still read from {home}"
            );
            assert_eq!(now, *home, "{key} did not move");
        }
    }
    let stats = cache.stats();
    assert_eq!(
        stats.degraded_calls, 0,
        "the first request finds its connection closed, asks again, is refused, which marks the \
         node down, and goes to the next node: {stats:?}"
    );
}

/// A node whose connect is refused (nothing listens) is marked down at once, as after a timeout,
/// not after `failure_threshold` refusals: the call goes to the next node instead of running its
/// getter without the store.
#[tokio::test]
async fn a_node_that_refuses_connections_is_marked_down_at_once() {
    let mut servers = Memcached::start_many::<2>().await;
    let refs: Vec<&Memcached> = servers.iter().collect();
    let cache = cache_on(&refs).failure_threshold(5).build().unwrap();
    let dead = servers[0].addr();
    let key = (0..)
        .map(|i| format!("refused:{i}"))
        .find(|k| cache.server_for(k).unwrap().to_string() == dead)
        .unwrap();
    servers[0].kill();
    let value: String = cache
        .get(&key, MINUTE, MINUTE, || async {
            Ok::<_, Error>("v".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(value, "v");
    let stats = cache.stats();
    assert_eq!(stats.degraded_calls, 0, "{stats:?}");
    assert!(cache.node_stats()[0].down);
    assert_ne!(cache.server_for(&key).unwrap().to_string(), dead);
}

#[tokio::test]
async fn a_paused_node_times_out_its_keys_move_and_come_back() {
    let servers = Memcached::start_many::<2>().await;
    let refs: Vec<&Memcached> = servers.iter().collect();
    let cache = cache_on(&refs).build().unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("pause:{i}")).collect();
    fill(&cache, &keys, "first").await;
    let paused = servers[0].addr();
    let key = keys
        .iter()
        .find(|k| cache.server_for(k).unwrap().to_string() == paused)
        .unwrap();
    servers[0].pause();

    let started = Instant::now();
    let value: String = cache
        .get(key, Duration::from_secs(5), MINUTE, || async {
            Ok::<_, Error>("second".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(value, "second", "computed while its node hangs");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "one I/O timeout, not the exec_limit: {:?}",
        started.elapsed()
    );
    assert_ne!(cache.server_for(key).unwrap().to_string(), paused);

    servers[0].resume();
    // After the retry interval one request probes the node; its success brings the node back,
    // still holding the value it had.
    let back = within(async {
        loop {
            let value: String = cache
                .get(key, Duration::from_secs(5), MINUTE, || async {
                    Ok::<_, Error>("third".to_owned())
                })
                .await
                .unwrap();
            if value == format!("first {key}") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    back.await;
    assert_eq!(cache.server_for(key).unwrap().to_string(), paused);
}

/// F16: `invalidate` while the key's own node is marked down is an error naming that node; the
/// key is deleted where its calls go meanwhile, and on its own node before this process's next
/// request there, so that neither this process nor one that finds the node back after it reads
/// the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_while_the_keys_node_is_down_names_it_and_reaches_it_once_back() {
    let servers = Memcached::start_many::<2>().await;
    let refs: Vec<&Memcached> = servers.iter().collect();
    let (here, there) = (
        cache_on(&refs).build().unwrap(),
        cache_on(&refs).build().unwrap(),
    );
    let home = servers[0].addr();
    let key = (0..)
        .map(|i| format!("inv:{i}"))
        .find(|k| here.server_for(k).unwrap().to_string() == home)
        .unwrap();
    let get = |cache: &Cache, tag: &'static str| {
        let (cache, key) = (cache.clone(), key.clone());
        async move {
            let value: String = cache
                .get(&key, Duration::from_secs(5), MINUTE, || async {
                    Ok::<_, Error>(tag.to_owned())
                })
                .await
                .unwrap();
            value
        }
    };
    assert_eq!(get(&here, "old").await, "old");
    assert_eq!(get(&there, "unused").await, "old", "stored on its node");

    servers[0].pause();
    // One I/O timeout each marks the node down; the key's calls move to the other node.
    assert_eq!(get(&here, "during").await, "during");
    assert_eq!(
        get(&there, "unused").await,
        "during",
        "both on the fallback"
    );
    assert_ne!(here.server_for(&key).unwrap().to_string(), home);

    let err = here.invalidate(&key).await.unwrap_err();
    match &err {
        Error::Unreached { key: k, server, .. } => {
            assert_eq!(
                (k.as_str(), server.to_string()),
                (key.as_str(), home.clone())
            );
        }
        other => panic!("expected Unreached, got {other:?}"),
    }
    assert!(err.to_string().contains(&home), "{err}");
    assert_eq!(
        get(&there, "after").await,
        "after",
        "deleted on the fallback: recomputed"
    );

    servers[0].resume();
    // Once the retry interval has passed, the next request to the node probes it.
    within(async {
        while here.node_stats()[0].down || there.node_stats()[0].down {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        get(&here, "fresh").await,
        "fresh",
        "this process deleted it before its probe"
    );
    assert_eq!(here.server_for(&key).unwrap().to_string(), home, "back");
    assert_eq!(get(&there, "unused").await, "fresh", "never the old value");
}

#[tokio::test]
async fn a_restarted_node_is_probed_and_used_again() {
    let mut servers = Memcached::start_many::<2>().await;
    let refs: Vec<&Memcached> = servers.iter().collect();
    let cache = cache_on(&refs).build().unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("restart:{i}")).collect();
    let victim = servers[0].addr();
    let key = keys
        .iter()
        .find(|k| cache.server_for(k).unwrap().to_string() == victim)
        .unwrap()
        .clone();
    servers[0].kill();
    // Two failed requests: the failure threshold that marks the node down.
    fill(&cache, std::slice::from_ref(&key), "while down").await;
    fill(&cache, std::slice::from_ref(&key), "while down").await;
    assert_ne!(
        cache.server_for(&key).unwrap().to_string(),
        victim,
        "marked down"
    );
    servers[0].restart().await;
    within(async {
        loop {
            // Each call may be the probe; once it succeeds the key is home again.
            fill(&cache, std::slice::from_ref(&key), "after").await;
            if cache.server_for(&key).unwrap().to_string() == victim {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let outside = Outside::connect(&victim).await;
    let value = fill(&cache, std::slice::from_ref(&key), "after").await;
    assert_eq!(
        value,
        [format!("after {key}")],
        "computed again on the empty restarted node"
    );
    assert!(outside.get(&key).await.is_some(), "and stored there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_cluster_degrades_and_every_call_still_succeeds() {
    let mut server = Memcached::start().await;
    let cache = cache_on(&[&server]).build().unwrap();
    server.kill();
    let runs = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let (cache, runs) = (cache.clone(), runs.clone());
            tokio::spawn(async move {
                cache
                    .get("dead", Duration::from_secs(5), MINUTE, || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, Error>(7u32)
                    })
                    .await
            })
        })
        .collect();
    for caller in callers {
        assert_eq!(within(caller).await.unwrap().unwrap(), 7);
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "this process's callers still share one run"
    );
    assert!(cache.stats().degraded_calls >= 1);

    let strict = cache_on(&[&server])
        .on_unavailable(OnUnavailable::Fail)
        .build()
        .unwrap();
    let result: Result<u32, Error> = strict
        .get("dead", Duration::from_secs(5), MINUTE, || async { Ok(7) })
        .await;
    assert!(
        matches!(result, Err(Error::Unavailable { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn values_are_plain_memcached_items_of_flagged_json() {
    let server = Memcached::start().await;
    let cache = cache_on(&[&server]).namespace("app").build().unwrap();
    let value: Vec<u32> = cache
        .get("list", MINUTE, MINUTE, || async {
            Ok::<_, Error>(vec![1, 2])
        })
        .await
        .unwrap();
    assert_eq!(value, [1, 2]);
    let outside = Outside::connect(&server.addr()).await;
    assert_eq!(
        outside.get("app:list").await,
        Some((b"[1,2]".to_vec(), u32::from_be_bytes(*b"DCJ1")))
    );
}

#[tokio::test]
async fn a_foreign_item_is_a_miss_and_is_replaced() {
    let server = Memcached::start().await;
    let cache = cache_on(&[&server]).build().unwrap();
    let outside = Outside::connect(&server.addr()).await;
    outside.set("shared", b"\x80\x04K*.", 1).await; // a Python pickle of 42
    let value: u32 = cache
        .get("shared", MINUTE, MINUTE, || async { Ok::<_, Error>(42) })
        .await
        .unwrap();
    assert_eq!(value, 42);
    assert_eq!(cache.stats().decode_misses, 1);
    assert_eq!(
        outside.get("shared").await,
        Some((b"42".to_vec(), u32::from_be_bytes(*b"DCJ1")))
    );
}

#[tokio::test]
async fn long_and_unsafe_keys_work_end_to_end() {
    let server = Memcached::start().await;
    let cache = cache_on(&[&server]).build().unwrap();
    let keys = [
        "with space",
        "line\r\nmg injected v",
        &"long".repeat(100),
        "ünïcödé",
        "",
    ];
    for (i, key) in keys.iter().enumerate() {
        for _ in 0..2 {
            let value: usize = cache
                .get(key, MINUTE, MINUTE, || async { Ok::<_, Error>(i) })
                .await
                .unwrap();
            assert_eq!(value, i, "{key:?}");
        }
    }
    let stats = cache.stats();
    assert_eq!((stats.getter_runs, stats.hits), (5, 5), "{stats:?}");
}

#[tokio::test]
async fn a_value_the_server_refuses_is_still_returned() {
    let server = Memcached::start().await;
    // Allowed by the cache, refused by a server with the default 1 MiB item size: 2 MiB of
    // characters that zstd cannot pack under 1 MiB.
    let cache = cache_on(&[&server])
        .item_bytes(4 * 1024 * 1024)
        .build()
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let big: String = (0..2 * 1024 * 1024).map(|_| rng.alphanumeric()).collect();
    let value: String = cache
        .get("big", MINUTE, MINUTE, || async {
            Ok::<_, Error>(big.clone())
        })
        .await
        .unwrap();
    assert_eq!(value.len(), big.len());
    assert_eq!(cache.stats().unstorable_values, 1);
}

#[test]
fn bad_server_lists_fail_at_build() {
    for servers in [
        &["localhost:0"][..],
        &["a:1:2:3"],
        &["a:1", "a:1"],
        &["a:1:0"],
        &["bad host:1"],
    ] {
        let err = Cache::builder().servers(servers).build().unwrap_err();
        assert!(
            matches!(err, BuildError::InvalidServer { .. }),
            "{servers:?}: {err}"
        );
    }
    let err = Cache::builder()
        .server("a:1")
        .io_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::InvalidSetting {
                setting: "io_timeout",
                ..
            }
        ),
        "{err}"
    );
    let err = Cache::builder()
        .server("a:1")
        .connections_per_server(0)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::InvalidSetting {
                setting: "connections_per_server",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn server_for_needs_no_connection() {
    let cache = Cache::builder()
        .servers(["10.0.0.1:11211", "10.0.0.2:11211"])
        .build()
        .unwrap();
    let server = cache.server_for("user:1").unwrap().to_string();
    assert!(server == "10.0.0.1:11211" || server == "10.0.0.2:11211");
    assert!(
        Cache::builder()
            .build()
            .unwrap()
            .server_for("user:1")
            .is_none()
    );
}

/// On memcached, a getter that chooses not to store its value leaves the key marked for a
/// second: a caller in another process waiting on the lease runs its own getter at once, rather
/// than waiting for the value. A value whose getter set a short expire lives that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_getters_own_decisions_reach_other_processes() {
    use distcache::entry;
    let server = Memcached::start().await;
    let (a, b) = (
        cache_on(&[&server]).build().unwrap(),
        cache_on(&[&server]).build().unwrap(),
    );
    let (won_tx, won_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn({
        let a = a.clone();
        async move {
            let value: String = a
                .get("partial", MINUTE, MINUTE, || async move {
                    let _ = won_tx.send(());
                    let _ = go_rx.await;
                    entry::skip_store();
                    Ok::<_, Error>("partial".to_owned())
                })
                .await
                .unwrap();
            value
        }
    });
    won_rx.await.unwrap();
    let waiting = tokio::spawn({
        let b = b.clone();
        async move {
            let value: String = b
                .get("partial", MINUTE, MINUTE, || async {
                    Ok::<_, Error>("its own".to_owned())
                })
                .await
                .unwrap();
            value
        }
    });
    // Waiting on the lease before the holder decides.
    within(async {
        while b.stats().lease_waits == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let _ = go_tx.send(());
    assert_eq!(holder.await.unwrap(), "partial");
    assert_eq!(waiting.await.unwrap(), "its own", "ran its own getter");
    let stats = b.stats();
    assert_eq!(
        (stats.getter_runs, stats.uncached_calls),
        (1, 1),
        "{stats:?}"
    );
    let outside = Outside::connect(&server.addr()).await;
    let marked = outside.get("partial").await.map(|(v, _)| v);
    assert!(
        marked.as_deref() != Some(&b"\"partial\""[..]),
        "not stored: {marked:?}"
    );

    let _: String = a
        .get("brief", MINUTE, MINUTE, || async {
            entry::set_expire(Duration::from_secs(3));
            Ok::<_, Error>("brief".to_owned())
        })
        .await
        .unwrap();
    let ttl = remaining_ttl(&server.addr(), "brief").await;
    assert!(
        (1..=3).contains(&ttl),
        "lives 3 s, not a minute: {ttl} s left"
    );
}

/// On memcached, a getter that fails in one process backs its key off in every process: the
/// other cache gets `Error::Backoff` without running its getter, and runs it once the backoff
/// is over. `Error::Backoff` tells when.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_getter_backs_its_key_off_in_every_process() {
    let server = Memcached::start().await;
    let backoff = Duration::from_millis(1500);
    let (a, b) = (
        cache_on(&[&server]).error_backoff(backoff).build().unwrap(),
        cache_on(&[&server]).error_backoff(backoff).build().unwrap(),
    );
    let failed: Result<u64, Error> = a
        .get("down", MINUTE, MINUTE, || async {
            Err(Error::GetterPanicked {
                key: "down".into(),
                message: "the origin is down".into(),
            })
        })
        .await;
    assert!(matches!(failed, Err(Error::GetterPanicked { .. })));
    let failed_at = std::time::SystemTime::now();
    let backed_off: Result<u64, Error> = b.get("down", MINUTE, MINUTE, || async { Ok(1) }).await;
    match backed_off {
        Err(Error::Backoff { key, until }) => {
            assert_eq!(key, "down");
            let left = until.duration_since(failed_at).unwrap_or_default();
            assert!(left <= backoff, "until {left:?} after the failure");
        }
        other => panic!("expected Error::Backoff, got {other:?}"),
    }
    assert_eq!(b.stats().getter_runs, 0);
    // memcached has no event for a backoff's end: ask until the getter runs again.
    let value = within(async {
        loop {
            match b
                .get("down", MINUTE, MINUTE, || async { Ok::<u64, Error>(2) })
                .await
            {
                Ok(value) => break value,
                Err(Error::Backoff { .. }) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(other) => panic!("{other}"),
            }
        }
    })
    .await;
    assert_eq!(value, 2);
    assert!(
        failed_at.elapsed().unwrap() >= backoff,
        "not before the backoff ended"
    );
    assert_eq!(b.stats().getter_runs, 1);
}
