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

/// Calls `key` every `period` with `exec_limit` until `calls` calls are made; returns how many
/// failed before the first success, and checks that every call returned within its bound and
/// that none failed after the first success.
async fn failures_before_success(
    cache: &Cache,
    key: &str,
    exec_limit: Duration,
    period: Duration,
    calls: usize,
) -> usize {
    let mut failed = 0;
    let mut succeeded = false;
    for i in 0..calls {
        let started = Instant::now();
        let result: Result<String, Error> = cache
            .get(key, exec_limit, MINUTE, || async {
                Ok("computed".to_owned())
            })
            .await;
        let took = started.elapsed();
        assert!(
            took < exec_limit + SLACK,
            "call {i} took {took:?}, over its exec_limit of {exec_limit:?}"
        );
        match result {
            Ok(value) => {
                assert_eq!(value, "computed");
                succeeded = true;
            }
            Err(err) => {
                assert!(
                    !succeeded,
                    "call {i} failed after calls had succeeded: {err}"
                );
                assert!(err.is_timeout(), "{err}");
                failed += 1;
            }
        }
        // A caller that calls once a `period`: long enough for a connection's own timer to
        // fire between two calls, with no caller left waiting on it.
        tokio::time::sleep(period.saturating_sub(took)).await;
    }
    assert!(succeeded, "no call succeeded in {calls}");
    failed
}

/// F4b: a node that hangs (SIGSTOP) while callers' `exec_limit` is shorter than `io_timeout`.
/// Each caller gives up at its deadline before the connection's own timer fires, so the requests
/// tell the node's health nothing; the connection's timeout must, or the node's keys fail for as
/// long as it hangs instead of degrading.
#[tokio::test]
async fn a_hung_node_is_marked_down_though_every_caller_gives_up_before_io_timeout() {
    let servers = Memcached::start_many::<2>().await;
    let cache = Cache::builder()
        .servers(servers.iter().map(Memcached::addr))
        .io_timeout(IO_TIMEOUT)
        .failure_threshold(2)
        .retry_interval(MINUTE)
        .build()
        .unwrap();
    let hung = servers[0].addr();
    let mut keys = (0..)
        .map(|i| format!("hung:{i}"))
        .filter(|k| cache.server_for(k).unwrap().to_string() == hung);
    let (warm, key) = (keys.next().unwrap(), keys.next().unwrap());
    // A connection to it exists and works before it hangs.
    let _: String = cache
        .get(&warm, MINUTE, MINUTE, || async {
            Ok::<_, Error>("w".into())
        })
        .await
        .unwrap();
    servers[0].pause();

    let exec_limit = Duration::from_millis(200);
    let failed = failures_before_success(&cache, &key, exec_limit, Duration::from_secs(1), 5).await;
    assert!(
        failed <= 2,
        "{failed} calls failed before the node's keys degraded"
    );
    assert_ne!(cache.server_for(&key).unwrap().to_string(), hung);
    let node = &cache.node_stats()[0];
    assert!(node.down && node.marked_down == 1, "{node:?}");
    servers[0].resume();
}

/// F4b, connecting: a host whose listen queue is full drops new connects (SYNs) without an answer,
/// as a host behind a black-holing firewall does. With `exec_limit` shorter than
/// `connect_timeout`, every caller gives up before the connect times out; the connect must still
/// run to its own timeout and count, so that the node is marked down.
#[tokio::test]
async fn a_host_that_drops_connects_is_marked_down_though_every_caller_gives_up_first() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the listen queue (never accepted) until a connect no longer completes.
    let mut queued = Vec::new();
    loop {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(stream) => queued.push(stream.unwrap()),
            Err(_) => break,
        }
        assert!(queued.len() < 64, "the listen queue never filled");
    }
    let cache = Cache::builder()
        .server(addr.to_string())
        .connect_timeout(CONNECT_TIMEOUT)
        .failure_threshold(1)
        .retry_interval(MINUTE)
        .build()
        .unwrap();
    let exec_limit = Duration::from_millis(200);
    let period = CONNECT_TIMEOUT + Duration::from_millis(500);
    let failed = failures_before_success(&cache, "k", exec_limit, period, 3).await;
    assert!(
        failed <= 1,
        "{failed} calls failed before the node's keys degraded"
    );
    let stats = cache.stats();
    assert!(stats.degraded_calls >= 1, "{stats:?}");
    assert!(cache.node_stats()[0].down);
    drop(listener);
}

/// Calls `key` every `period` until dropped: steady traffic on the connection, as a service has.
fn steady_traffic(
    cache: &Cache,
    key: &'static str,
    period: Duration,
) -> tokio::task::JoinHandle<()> {
    let cache = cache.clone();
    tokio::spawn(async move {
        loop {
            let _: Result<String, Error> = cache
                .get(key, Duration::from_millis(200), MINUTE, || async {
                    Ok("background".to_owned())
                })
                .await;
            tokio::time::sleep(period).await;
        }
    })
}

/// A cache on `server` alone with the test's timeouts, its connection made (one call done).
async fn connected_cache(server: &Memcached) -> Cache {
    let cache = Cache::builder()
        .server(server.addr())
        .connect_timeout(CONNECT_TIMEOUT)
        .io_timeout(IO_TIMEOUT)
        .retry_interval(MINUTE)
        .build()
        .unwrap();
    let _: String = cache
        .get("background", MINUTE, MINUTE, || async {
            Ok::<_, Error>("b".into())
        })
        .await
        .unwrap();
    cache
}

/// `call` answers within `exec_limit` plus one store operation's bound, with `"v"`.
async fn answers_within_the_bound(
    exec_limit: Duration,
    call: impl std::future::Future<Output = Result<String, Error>>,
) {
    let bound = exec_limit + CONNECT_TIMEOUT + IO_TIMEOUT + SLACK;
    let started = Instant::now();
    let value = tokio::time::timeout(bound, call)
        .await
        .unwrap_or_else(|_| panic!("no answer within {bound:?}"))
        .unwrap();
    assert_eq!(value, "v");
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
}

/// A hung server still takes our writes into its socket buffer: other callers' requests, written
/// all the time, must not keep the connection's timer from firing for the ones that wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_traffic_to_a_hung_node_does_not_keep_a_lookup_waiting() {
    let server = Memcached::start().await;
    let cache = connected_cache(&server).await;
    server.pause();
    let traffic = steady_traffic(&cache, "background", Duration::from_millis(100));
    let exec_limit = Duration::from_secs(2);
    // Degraded: computed without the hung node.
    answers_within_the_bound(
        exec_limit,
        cache.get("k", exec_limit, MINUTE, || async { Ok("v".to_owned()) }),
    )
    .await;
    traffic.abort();
    assert!(cache.node_stats()[0].marked_down >= 1);
    server.resume();
}

/// The one store operation past the getter (its fill) is bounded too, with traffic going on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_to_a_node_that_hung_during_the_getter_is_bounded() {
    let server = std::sync::Arc::new(Memcached::start().await);
    let cache = connected_cache(&server).await;
    let traffic = steady_traffic(&cache, "background", Duration::from_millis(250));
    let exec_limit = Duration::from_secs(2);
    let hung = server.clone();
    answers_within_the_bound(
        exec_limit,
        cache.get("k", exec_limit, MINUTE, || async move {
            hung.pause();
            Ok("v".to_owned())
        }),
    )
    .await;
    traffic.abort();
    server.resume();
}

/// F4b with callers back to back: whatever the pacing, the hung node's keys degrade after a
/// few failed calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_node_is_marked_down_with_callers_back_to_back() {
    let server = Memcached::start().await;
    let cache = Cache::builder()
        .server(server.addr())
        .io_timeout(IO_TIMEOUT)
        .failure_threshold(2)
        .retry_interval(MINUTE)
        .build()
        .unwrap();
    let _: String = cache
        .get("warm-up", MINUTE, MINUTE, || async {
            Ok::<_, Error>("w".into())
        })
        .await
        .unwrap();
    server.pause();
    let exec_limit = Duration::from_millis(200);
    // At most io_timeout / exec_limit + 1 calls fit before the connection's timer fires.
    let failed =
        failures_before_success(&cache, "k", exec_limit, Duration::from_millis(250), 12).await;
    assert!(
        failed <= 4,
        "{failed} calls failed before the node's keys degraded"
    );
    assert!(cache.node_stats()[0].down);
    server.resume();
}

/// F4b, at connect: a node that hangs before any connection to it is made takes its connects'
/// handshakes down with it. The connect's own timeout, though no caller waits for it, marks the
/// node down: it was the node's only way in.
#[tokio::test]
async fn a_node_hung_before_its_first_connection_is_marked_down_by_the_connect_timeout() {
    let server = Memcached::start().await;
    let cache = Cache::builder()
        .server(server.addr())
        .connect_timeout(CONNECT_TIMEOUT)
        .failure_threshold(2)
        .retry_interval(MINUTE)
        .build()
        .unwrap();
    server.pause();
    let period = CONNECT_TIMEOUT + Duration::from_millis(500);
    let failed = failures_before_success(&cache, "k", Duration::from_millis(200), period, 3).await;
    assert!(
        failed <= 1,
        "{failed} calls failed before the node's keys degraded"
    );
    assert!(cache.node_stats()[0].down);
    server.resume();
}
