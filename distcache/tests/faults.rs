//! Network faults between a cache and a healthy memcached, made by a fault proxy on loopback
//! (`support/proxy.rs`): the proxy itself, then what a cache does under each fault.

mod support;

use std::time::Duration;

use distcache::{Cache, Error};
use support::memcached::Memcached;
use support::proxy::{Fault, FaultProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MINUTE: Duration = Duration::from_secs(60);

/// Sends `version` through a new connection to `addr`; what came back before the connection
/// closed or `wait` passed.
async fn version_through(addr: &str, wait: Duration) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"version\r\n").await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    // Past `wait`, what came is the answer: a black hole sends nothing.
    tokio::time::timeout(wait, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.ends_with(b"\r\n") {
                        return Ok(());
                    }
                }
                Err(err) => return Err(err),
            }
        }
    })
    .await
    .unwrap_or(Ok(()))?;
    Ok(got)
}

#[tokio::test]
async fn the_fault_proxy_does_what_it_is_told() {
    let server = Memcached::start().await;
    let proxy = FaultProxy::start(&server.addr()).await;
    let addr = proxy.addr();
    let second = Duration::from_secs(1);
    let answer = version_through(&addr, second).await.unwrap();
    assert!(
        answer.starts_with(b"VERSION "),
        "passed through: {answer:?}"
    );

    proxy.set(Fault::Slice);
    assert_eq!(
        version_through(&addr, second).await.unwrap(),
        answer,
        "sliced, whole"
    );

    proxy.set(Fault::CutRepliesAfter(3));
    assert_eq!(
        version_through(&addr, second).await.unwrap(),
        b"VER",
        "cut after 3 bytes"
    );

    proxy.set(Fault::BlackHole);
    let short = Duration::from_millis(300);
    assert!(
        version_through(&addr, short).await.unwrap().is_empty(),
        "never answered"
    );

    proxy.set(Fault::Latency(Duration::from_millis(300)));
    let started = tokio::time::Instant::now();
    assert_eq!(version_through(&addr, second).await.unwrap(), answer);
    assert!(started.elapsed() >= Duration::from_millis(300), "delayed");

    proxy.set(Fault::Refuse);
    // The listener closes when the proxy's task sees the change: look until it has.
    tokio::time::timeout(second, async {
        while TcpStream::connect(&addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("connects refused");
    proxy.set(Fault::Pass);
    let back = tokio::time::timeout(second, async {
        loop {
            if let Ok(answer) = version_through(&addr, second).await {
                break answer;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("listening again");
    assert_eq!(back, answer);

    // A reset: an open connection's next read fails, rather than seeing an orderly end.
    let mut open = TcpStream::connect(&addr).await.unwrap();
    open.write_all(b"version\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    assert!(open.read(&mut buf).await.unwrap() > 0);
    proxy.reset();
    let after = tokio::time::timeout(second, open.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(&after, Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset),
        "{after:?}"
    );
}

/// The value of `key`, as its getter computes it: about a kilobyte, different for every key.
fn value_of(key: &str) -> String {
    format!("{key}:").repeat(1000 / (key.len() + 1) + 1)
}

/// F6: a reply stream cut after N bytes, N swept through a reply's header, value and terminator,
/// then traffic sliced into 1 to 7 byte writes: never a partial or foreign value, and every call
/// returns its key's value (read, or computed again when the store could not give it).
#[tokio::test]
async fn replies_cut_anywhere_or_sliced_never_give_a_partial_or_foreign_value() {
    let server = Memcached::start().await;
    let proxy = FaultProxy::start(&server.addr()).await;
    let direct = Cache::builder().server(server.addr()).build().unwrap();
    let through = Cache::builder()
        .server(proxy.addr())
        .io_timeout(Duration::from_secs(2))
        .retry_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let get = |cache: &Cache, key: String| {
        let cache = cache.clone();
        async move {
            let value: String = cache
                .get(&key, MINUTE, MINUTE, || {
                    let value = value_of(&key);
                    async move { Ok::<_, Error>(value) }
                })
                .await
                .unwrap();
            assert_eq!(value, value_of(&key), "{key}: its own value, whole");
        }
    };
    let keys: Vec<String> = (0..40).map(|i| format!("cut:{i}")).collect();
    for key in &keys {
        get(&direct, key.clone()).await;
    }
    // The first reply through a new connection is the handshake's (about 4 kB), then the value's
    // (a header of ~30 bytes, ~1 kB of value, CRLF): cuts land in each part of both.
    for (i, key) in keys.iter().enumerate() {
        let cut = [1, 10, 100, 4_000, 4_090, 4_100, 4_130, 4_600, 5_100, 5_140][i % 10] + i / 10;
        proxy.set(Fault::CutRepliesAfter(cut));
        get(&through, key.clone()).await;
    }
    proxy.set(Fault::Slice);
    for key in &keys {
        get(&through, key.clone()).await;
    }
    let fresh: Vec<String> = (0..20).map(|i| format!("sliced:{i}")).collect();
    for key in &fresh {
        get(&through, key.clone()).await;
        get(&through, key.clone()).await;
    }
    let stats = through.stats();
    assert_eq!(
        stats.decode_misses, 0,
        "nothing partial was ever decoded: {stats:?}"
    );
}

/// What happens to the lease holder's connection while its getter runs.
enum Disruption {
    /// Five requests in flight on it, then it is reset: one fault, not five.
    Reset,
    /// A request times out on it (replies held past `io_timeout`): the node is marked down.
    Timeout,
}

/// A process (`holder`, through the proxy) wins a lease; `disruption` strikes its connection
/// while its getter runs; the getter finishes. A caller elsewhere, waiting on that lease, must
/// get the holder's value at once, not wait to the end of its `exec_limit`. Returns the holder.
async fn the_lease_is_filled_after(disruption: Disruption) -> Cache {
    let server = Memcached::start().await;
    let proxy = FaultProxy::start(&server.addr()).await;
    let holder = Cache::builder()
        .server(proxy.addr())
        .io_timeout(Duration::from_millis(300))
        .retry_interval(Duration::from_secs(30))
        .build()
        .unwrap();
    let elsewhere = Cache::builder().server(server.addr()).build().unwrap();
    let exec_limit = Duration::from_secs(10);
    let (leased_tx, leased_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let holding = tokio::spawn({
        let holder = holder.clone();
        async move {
            holder
                .get("held", exec_limit, MINUTE, || async move {
                    let _ = leased_tx.send(());
                    let _ = go_rx.await;
                    Ok::<_, Error>("from the holder".to_owned())
                })
                .await
        }
    });
    leased_rx.await.expect("the holder won the lease");
    let others = |count: usize| {
        (0..count)
            .map(|i| {
                let holder = holder.clone();
                tokio::spawn(async move {
                    let _: Result<String, Error> = holder
                        .get(&format!("other:{i}"), exec_limit, MINUTE, || async {
                            Ok("other".to_owned())
                        })
                        .await;
                })
            })
            .collect::<Vec<_>>()
    };
    let before = proxy.request_lines();
    match disruption {
        Disruption::Reset => {
            // Held back long enough that they are all still in flight at the reset.
            proxy.set(Fault::Latency(Duration::from_secs(5)));
            let in_flight = others(5);
            proxy.passed(before + 5).await;
            proxy.reset();
            proxy.set(Fault::Pass);
            for task in in_flight {
                task.await.unwrap();
            }
        }
        Disruption::Timeout => {
            proxy.set(Fault::Latency(Duration::from_secs(1)));
            for task in others(1) {
                task.await.unwrap();
            }
            assert!(
                holder.node_stats()[0].down,
                "the timeout marked the node down"
            );
            proxy.set(Fault::Pass);
        }
    }
    let started = tokio::time::Instant::now();
    let waiting = tokio::spawn(async move {
        elsewhere
            .get("held", exec_limit, MINUTE, || async {
                Ok::<_, Error>("from elsewhere".to_owned())
            })
            .await
    });
    let _ = go_tx.send(());
    assert_eq!(holding.await.unwrap().unwrap(), "from the holder");
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got, "from the holder", "filled, not stranded");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "waited {:?}: the lease was stranded",
        started.elapsed()
    );
    holder
}

/// F14, in one process's view: the connection of the process that holds a lease is reset while
/// several of its requests are in flight, the node itself healthy. That is one fault, not one per
/// request: the node is not marked down for it, and the holder still fills its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_connection_does_not_strand_the_leases_its_process_holds() {
    let holder = the_lease_is_filled_after(Disruption::Reset).await;
    let node = &holder.node_stats()[0];
    assert_eq!(node.marked_down, 0, "one reset is one fault: {node:?}");
}

/// A lease won before its node was marked down is still filled there: only that node can honour
/// it, and a lease neither filled nor handed back blocks its key for every process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_filled_though_its_node_was_marked_down_meanwhile() {
    the_lease_is_filled_after(Disruption::Timeout).await;
}

/// Under `fault`, `cache` (behind `proxy`, which it is connected through first, so that the
/// fault takes the lookup's reply, not the handshake's) looks up "orphan": its lookup reaches the
/// server, which makes its lease, but no reply reaches the cache, which runs the getter without
/// the store. Returns when the lookup was sent.
async fn lose_the_reply_of_a_lookup_that_made_a_lease(
    cache: &Cache,
    proxy: &FaultProxy,
    fault: Fault,
) -> tokio::time::Instant {
    let _: String = cache
        .get("warm", MINUTE, MINUTE, || async {
            Ok::<_, Error>("w".into())
        })
        .await
        .unwrap();
    proxy.set(fault);
    let before = proxy.request_lines();
    let sent = tokio::time::Instant::now();
    let unheard: String = cache
        .get("orphan", MINUTE, MINUTE, || async {
            Ok::<_, Error>("run without the store".into())
        })
        .await
        .unwrap();
    assert_eq!(unheard, "run without the store");
    assert_eq!(cache.stats().degraded_calls, 1, "its lookup got no answer");
    assert!(
        proxy.request_lines() > before,
        "the lookup reached the server, which made its lease"
    );
    sent
}

/// F15: a lookup wins a lease, but its reply is lost (`fault`), so its caller never learns it
/// holds one; then the node answers again. The key must be computable again within 5 s of the
/// lookup, not after the winner's `exec_limit` of 60 s: the lease lasts seconds unless extended.
async fn a_lease_nobody_heard_of_frees_its_key_within_5s(fault: Fault) {
    let server = Memcached::start().await;
    let proxy = FaultProxy::start(&server.addr()).await;
    let unaware = Cache::builder()
        .server(proxy.addr())
        .io_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let sent = lose_the_reply_of_a_lookup_that_made_a_lease(&unaware, &proxy, fault).await;
    proxy.set(Fault::Pass);
    let elsewhere = Cache::builder().server(server.addr()).build().unwrap();
    let again = tokio::time::timeout(
        Duration::from_secs(10),
        elsewhere.get("orphan", MINUTE, MINUTE, || async {
            Ok::<_, Error>("computed again".to_owned())
        }),
    )
    .await
    .expect("the orphaned lease blocked the key for 10 s")
    .unwrap();
    assert_eq!(again, "computed again");
    let stats = elsewhere.stats();
    assert_eq!(
        (stats.lease_waits, stats.getter_runs),
        (1, 1),
        "it waited on the orphaned lease, then won the key: {stats:?}"
    );
    assert!(
        sent.elapsed() <= Duration::from_secs(5),
        "computed again {:?} after the lost lookup",
        sent.elapsed()
    );
}

#[tokio::test]
async fn a_lease_won_by_a_lookup_whose_reply_was_lost_frees_its_key_within_5s() {
    a_lease_nobody_heard_of_frees_its_key_within_5s(Fault::LoseReplies).await;
}

#[tokio::test]
async fn a_lease_won_by_a_lookup_whose_reply_came_too_late_frees_its_key_within_5s() {
    a_lease_nobody_heard_of_frees_its_key_within_5s(Fault::Latency(Duration::from_secs(2))).await;
}

/// F14's worst case, in one process's view: a lookup makes its lease, but its connection is cut
/// in the reply, and the connection asked next fails too, so that its caller runs the getter
/// without the cache. The lease is then one that nobody heard of, and waiting it out (F15)
/// blocks the key for up to 4 s; instead, the process that lost the reply asks its server about
/// the key on its next connection, and hands back the lease its lookup may have made. Another
/// process waiting on the key then wins it at its next poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_reply_was_cut_is_handed_back_on_the_next_connection() {
    let server = Memcached::start().await;
    let proxy = FaultProxy::start(&server.addr()).await;
    let cut = Cache::builder()
        .server(proxy.addr())
        .retry_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    // The lookup's reply is cut after a byte, and so is the greeting of the connection that asks
    // again: the node is marked down, and the call runs its getter without the cache.
    let cut_off = Fault::CutRepliesAfter(1);
    let sent = lose_the_reply_of_a_lookup_that_made_a_lease(&cut, &proxy, cut_off).await;
    proxy.set(Fault::Pass);
    let elsewhere = Cache::builder()
        .server(server.addr())
        .max_poll_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let waiting = tokio::spawn({
        let elsewhere = elsewhere.clone();
        async move {
            elsewhere
                .get("orphan", MINUTE, MINUTE, || async {
                    Ok::<_, Error>("computed again".to_owned())
                })
                .await
                .map(|v: String| (v, tokio::time::Instant::now()))
        }
    });
    // The process that lost the reply uses its node again once the retry interval has passed.
    let mut i = 0;
    while cut.node_stats()[0].back == 0 {
        let key = format!("after:{i}");
        let _: String = cut
            .get(&key, MINUTE, MINUTE, || async {
                Ok::<_, Error>("a".into())
            })
            .await
            .unwrap();
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (again, at) = waiting.await.unwrap().unwrap();
    assert_eq!(again, "computed again");
    let stats = elsewhere.stats();
    assert_eq!(
        (stats.lease_waits, stats.getter_runs),
        (1, 1),
        "it waited on the lease the lost reply made, then won the key: {stats:?}"
    );
    // Waited out, that lease lasts over 3 s from the lookup (a TTL of 4 s on memcached's
    // one-second clock); handed back, the key is free within a retry interval and a poll.
    assert!(
        at - sent < Duration::from_secs(2),
        "computed again {:?} after the lost lookup",
        at - sent
    );
}

/// F7: 10,000 calls over 2,000 keys (most of them misses), each cancelled at a random point (a timeout of 0 to 12 ms)
/// while replies are delayed 0 to 5 ms: no value reaches the wrong key, no connection is broken
/// by a cancelled request (none is replaced), no lease is left behind, and later callers see no
/// error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_cancelled_calls_leave_no_wrong_value_lease_or_connection() {
    const KEYS: usize = 2000;
    let server = Memcached::start().await;
    let proxy = FaultProxy::start(&server.addr()).await;
    let cache = Cache::builder()
        .server(proxy.addr())
        .connections_per_server(2)
        .build()
        .unwrap();
    // Connected first (both connections), so that the calls race replies, not the handshake.
    let _: String = cache
        .get("warm", MINUTE, MINUTE, || async {
            Ok::<_, Error>("w".into())
        })
        .await
        .unwrap();
    proxy.set(Fault::Jitter(Duration::from_millis(5)));
    let mut rng = fastrand::Rng::with_seed(7);
    let (mut answered, mut cancelled) = (0, 0);
    for _ in 0..100 {
        let batch: Vec<_> = (0..100)
            .map(|_| {
                let (cache, key) = (cache.clone(), format!("c:{}", rng.usize(..KEYS)));
                let patience = Duration::from_micros(rng.u64(..12_000));
                let work = rng.u64(..2000);
                tokio::spawn(async move {
                    let call = cache.get(&key, MINUTE, MINUTE, || async {
                        tokio::time::sleep(Duration::from_micros(work)).await;
                        Ok::<_, Error>(value_of(&key))
                    });
                    match tokio::time::timeout(patience, call).await {
                        Ok(got) => {
                            let got: String = got.expect("an answered call succeeds");
                            assert_eq!(got, value_of(&key), "the value of its own key");
                            true
                        }
                        Err(_) => false,
                    }
                })
            })
            .collect();
        for call in batch {
            if call.await.unwrap() {
                answered += 1;
            } else {
                cancelled += 1;
            }
        }
    }
    assert!(
        cancelled > 1000 && answered > 1000,
        "{cancelled} cancelled, {answered} answered"
    );
    proxy.set(Fault::Pass);
    // Cancelled holders hand their leases back from spawned tasks: within a second, every key
    // is a value or nothing, never a stub (a lease lasts 4 s unless extended, and a cancelled
    // call's getter no longer runs to extend it).
    let stubs = |raw: Vec<String>| raw.into_iter().filter(|l| l.contains(" s0")).count();
    let mut left = usize::MAX;
    for _ in 0..50 {
        left = stubs(sizes(&server.addr(), KEYS).await);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left, 0, "leases left behind by cancelled calls");
    for k in 0..KEYS {
        let key = format!("c:{k}");
        let got: String = cache
            .get(&key, MINUTE, MINUTE, || async {
                Ok::<_, Error>(value_of(&key))
            })
            .await
            .expect("no error reaches a later caller");
        assert_eq!(got, value_of(&key));
    }
    assert!(
        proxy.accepted() <= 2,
        "{} connections: a cancelled request broke one",
        proxy.accepted()
    );
    let stats = cache.stats();
    assert_eq!(
        (stats.store_errors, stats.degraded_calls),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(cache.node_stats()[0].marked_down, 0);
}

/// `mg c:<k> s` for each of `keys` keys, on a connection of its own: each answer's line.
async fn sizes(addr: &str, keys: usize) -> Vec<String> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut stream = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let mut ask = String::new();
    for k in 0..keys {
        ask.push_str(&format!("mg c:{k} s\r\n"));
    }
    stream.get_mut().write_all(ask.as_bytes()).await.unwrap();
    let mut lines = Vec::new();
    for _ in 0..keys {
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        lines.push(line);
    }
    lines
}

/// F1 in one process: a node dies while lookups are in flight on its connection (held in the
/// proxy, which the node's death then closes). Each lookup is asked again: the new connection is
/// refused, which marks the node down, and the lookups move to the next node. None runs its
/// getter without the store: a key would otherwise be computed once more there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_in_flight_when_their_node_dies_move_to_the_next_node() {
    let mut servers = Memcached::start_many::<2>().await;
    let proxy = FaultProxy::start(&servers[0].addr()).await;
    let cache = Cache::builder()
        .servers([proxy.addr(), servers[1].addr()])
        .retry_interval(MINUTE)
        .build()
        .unwrap();
    let dying = proxy.addr();
    let keys: Vec<String> = (0..)
        .map(|i| format!("dies:{i}"))
        .filter(|k| cache.server_for(k).unwrap().to_string() == dying)
        .take(11)
        .collect();
    // Connected first, so that the lookups below are in flight on an open connection.
    let _: String = cache
        .get(&keys[0], MINUTE, MINUTE, || async {
            Ok::<_, Error>(value_of("warm"))
        })
        .await
        .unwrap();
    proxy.set(Fault::BlackHole);
    let connections = proxy.accepted();
    let taken = proxy.taken_lines();
    let in_flight: Vec<_> = keys[1..]
        .iter()
        .map(|key| {
            let (cache, key) = (cache.clone(), key.clone());
            tokio::spawn(async move {
                cache
                    .get(&key, MINUTE, MINUTE, || async {
                        Ok::<_, Error>(value_of(&key))
                    })
                    .await
                    .map(|v: String| v == value_of(&key))
            })
        })
        .collect();
    // In flight: the proxy took them, and the black hole keeps them.
    proxy.taken(taken + 10).await;
    assert_eq!(proxy.accepted(), connections, "no new connection yet");
    servers[0].kill();
    for call in in_flight {
        assert!(
            call.await.unwrap().expect("the call succeeds"),
            "its own value"
        );
    }
    let stats = cache.stats();
    assert_eq!(stats.degraded_calls, 0, "{stats:?}");
    assert!(
        cache.node_stats()[0].down,
        "the refused connect marked it down"
    );
    for key in &keys[1..] {
        assert_ne!(cache.server_for(key).unwrap().to_string(), dying);
    }
}

/// A fill lost with its connection (sent into a black hole, the connection closed at
/// `io_timeout`): nobody knows whether it was stored, so its lease is handed back on the node's
/// next connection (here the probe that brings it back), and a caller elsewhere waiting on the
/// key wins it then, not when the lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_fill_was_lost_is_handed_back_on_the_next_connection() {
    let server = Memcached::start().await;
    let proxy = FaultProxy::start(&server.addr()).await;
    let holder = Cache::builder()
        .server(proxy.addr())
        .io_timeout(Duration::from_millis(300))
        .retry_interval(Duration::from_millis(500))
        .build()
        .unwrap();
    let elsewhere = Cache::builder().server(server.addr()).build().unwrap();
    let (won_tx, won_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let holding = tokio::spawn({
        let holder = holder.clone();
        async move {
            holder
                .get("lost fill", MINUTE, MINUTE, || async move {
                    let _ = won_tx.send(());
                    let _ = go_rx.await;
                    Ok::<_, Error>("from the holder".to_owned())
                })
                .await
        }
    });
    won_rx.await.expect("the holder won the lease");
    let won = tokio::time::Instant::now();
    proxy.set(Fault::BlackHole);
    let _ = go_tx.send(());
    assert_eq!(holding.await.unwrap().unwrap(), "from the holder");
    assert_eq!(holder.stats().store_errors, 1, "the fill was lost");
    proxy.set(Fault::Pass);
    let waiting = tokio::spawn(async move {
        let value: String = elsewhere
            .get("lost fill", MINUTE, MINUTE, || async {
                Ok::<_, Error>("from elsewhere".to_owned())
            })
            .await
            .unwrap();
        value
    });
    // The holder's next request to the node, once its retry interval has passed, probes it on
    // a new connection, which hands the lease back first.
    while holder.node_stats()[0].down {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _: String = holder
        .get("probe", MINUTE, MINUTE, || async {
            Ok::<_, Error>("p".into())
        })
        .await
        .unwrap();
    assert_eq!(waiting.await.unwrap(), "from elsewhere");
    // The lease lasts at least 3 s from the lookup that won it: handed back, it freed the key
    // well before.
    assert!(
        won.elapsed() < Duration::from_millis(2500),
        "the key was free again {:?} after the lease was won",
        won.elapsed()
    );
}

/// An `invalidate` whose connection is reset under it, its node healthy, is asked again on a
/// new connection, as a lookup is: it succeeds, and the value is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidate_whose_connection_was_reset_is_asked_again() {
    let server = Memcached::start().await;
    let proxy = FaultProxy::start(&server.addr()).await;
    let cache = Cache::builder().server(proxy.addr()).build().unwrap();
    let first: String = cache
        .get("inv", MINUTE, MINUTE, || async {
            Ok::<_, Error>("first".into())
        })
        .await
        .unwrap();
    assert_eq!(first, "first");
    proxy.set(Fault::Latency(Duration::from_secs(5)));
    let before = proxy.request_lines();
    let invalidating = tokio::spawn({
        let cache = cache.clone();
        async move { cache.invalidate("inv").await }
    });
    proxy.passed(before + 1).await;
    proxy.reset();
    proxy.set(Fault::Pass);
    invalidating
        .await
        .unwrap()
        .expect("asked again on a new connection");
    let second: String = cache
        .get("inv", MINUTE, MINUTE, || async {
            Ok::<_, Error>("second".into())
        })
        .await
        .unwrap();
    assert_eq!(second, "second", "invalidated");
}
