//! F10: hostile keys and arguments, on a real memcached.
//!
//! Arguments that serde_json writes alike (NaN and ±infinity, `None` and `Some(None)`) get
//! values of their own; a `HashMap` argument is found again whatever its iteration order; a
//! caller key of any bytes is one lookup and one store on the wire, under its own item, and
//! never disturbs another key.

mod support;

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use distcache::{Cache, Error, distcached};
use support::memcached::{Memcached, Outside};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MINUTE: Duration = Duration::from_secs(60);

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("within 30 s")
}

fn cache_on(server: &Memcached, namespace: &str) -> Cache {
    Cache::builder()
        .server(server.addr())
        .namespace(namespace)
        // Generous: a request stalled on a loaded machine must not mark the only server down,
        // which would make calls run without the store.
        .io_timeout(Duration::from_secs(2))
        .build()
        .expect("a valid configuration")
}

/// memcached's own counters, read on a connection of our own.
async fn counters(server: &Memcached) -> HashMap<String, u64> {
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    stream.write_all(b"stats\r\n").await.expect("write");
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !reply.ends_with(b"END\r\n") {
        let n = stream.read(&mut buf).await.expect("read");
        assert!(n > 0, "memcached closed the stats connection");
        reply.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(reply)
        .expect("ASCII")
        .lines()
        .filter_map(|line| {
            let mut words = line.split(' ');
            let (_, name, value) = (words.next()?, words.next()?, words.next()?);
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The commands one operation sent, as memcached counted them: lookups (`mg`, whatever their
/// flags: a lease stub counts as a get too) and stores (`ms`), and nothing else that changes data.
#[derive(Debug, PartialEq)]
struct Wire {
    gets: u64,
    sets: u64,
    others: u64,
}

async fn on_the_wire<T>(server: &Memcached, op: impl std::future::Future<Output = T>) -> (T, Wire) {
    let before = counters(server).await;
    let out = within(op).await;
    let after = counters(server).await;
    let delta = |name: &str| after[name] - before[name];
    let wire = Wire {
        gets: delta("cmd_get"),
        sets: delta("cmd_set"),
        others: delta("cmd_touch")
            + delta("cmd_flush")
            + delta("delete_hits")
            + delta("delete_misses"),
    };
    (out, wire)
}

// Each test its own cache on its own server, set when the server is up.
static FLOATS: OnceLock<Cache> = OnceLock::new();
static OPTIONS: OnceLock<Cache> = OnceLock::new();
static MAPS: OnceLock<Cache> = OnceLock::new();
static SHOW_RUNS: AtomicUsize = AtomicUsize::new(0);
static PICK_RUNS: AtomicUsize = AtomicUsize::new(0);
static TOTAL_RUNS: AtomicUsize = AtomicUsize::new(0);

#[distcached(expire = "1m", exec_limit = "10s", cache = FLOATS.get().expect("set by the test"))]
async fn show(x: f64) -> Result<String, Error> {
    SHOW_RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(format!("{x}"))
}

#[distcached(expire = "1m", exec_limit = "10s", cache = OPTIONS.get().expect("set by the test"))]
async fn pick(x: Option<Option<u8>>) -> Result<String, Error> {
    PICK_RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(format!("{x:?}"))
}

#[distcached(expire = "1m", exec_limit = "10s", cache = MAPS.get().expect("set by the test"))]
async fn total(counts: HashMap<String, u32>) -> Result<u32, Error> {
    TOTAL_RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(counts.values().sum())
}

#[tokio::test]
async fn f10_infinities_and_nan_get_values_of_their_own() {
    let server = Memcached::start().await;
    FLOATS.set(cache_on(&server, "")).expect("set once");

    let floats = [f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 1.0];
    for round in 0..2 {
        for x in floats {
            assert_eq!(
                within(show(x)).await.unwrap(),
                format!("{x}"),
                "round {round}"
            );
        }
    }
    assert_eq!(SHOW_RUNS.load(Ordering::SeqCst), 4, "each computed once");
    let outside = Outside::connect(&server.addr()).await;
    for (arg, value) in [("Infinity", "inf"), ("-Infinity", "-inf"), ("NaN", "NaN")] {
        let stored = outside.get(&format!("keys::show[{arg}]")).await;
        assert_eq!(
            stored.map(|(bytes, _)| bytes),
            Some(format!("\"{value}\"").into_bytes()),
            "stored under its own readable key"
        );
    }
}

#[tokio::test]
async fn f10_none_and_some_none_get_values_of_their_own() {
    let server = Memcached::start().await;
    OPTIONS.set(cache_on(&server, "")).expect("set once");
    let options = [None, Some(None), Some(Some(1))];
    for _ in 0..2 {
        for x in options {
            assert_eq!(within(pick(x)).await.unwrap(), format!("{x:?}"));
        }
    }
    assert_eq!(PICK_RUNS.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn f10_a_hash_map_argument_is_found_again_whatever_its_order() {
    let server = Memcached::start().await;
    MAPS.set(cache_on(&server, "")).expect("set once");

    // Enough entries that two maps with their own hash keys iterate alike by chance once in
    // 16! runs: without a stable order the second call would miss.
    let entries: Vec<(String, u32)> = (0..16).map(|i| (format!("sku-{i}"), i)).collect();
    let forward: HashMap<_, _> = entries.iter().cloned().collect();
    let backward: HashMap<_, _> = entries.iter().rev().cloned().collect();
    let mut other = forward.clone();
    other.insert("sku-0".to_owned(), 100);
    assert_eq!(within(total(forward)).await.unwrap(), 120);
    assert_eq!(within(total(backward)).await.unwrap(), 120);
    assert_eq!(
        TOTAL_RUNS.load(Ordering::SeqCst),
        1,
        "the same content hits"
    );
    assert_eq!(within(total(other)).await.unwrap(), 220);
    assert_eq!(
        TOTAL_RUNS.load(Ordering::SeqCst),
        2,
        "other content does not"
    );
}

/// What memcached accepts as a key: printable ASCII without spaces, at most 250 bytes, and not
/// the shape of a hashed key (`#` and 64 lowercase hex digits at the end).
fn sent_as_is(wire: &str) -> bool {
    let b = wire.as_bytes();
    let looks_hashed = b.len() >= 65
        && b[b.len() - 65] == b'#'
        && b[b.len() - 64..]
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    b.len() <= 250 && b.iter().all(u8::is_ascii_graphic) && !looks_hashed
}

async fn hostile_keys_under(namespace: &str) {
    let server = Memcached::start().await;
    let outside = Outside::connect(&server.addr()).await;
    let canaries = ["canary", "x", "ns:x", "flush_all", "order", "page"];
    for canary in canaries {
        outside.set(canary, canary.as_bytes(), 7).await;
    }
    let cache = cache_on(&server, namespace);
    let prefix = if namespace.is_empty() {
        String::new()
    } else {
        format!("{namespace}:")
    };

    let digest = "0123456789abcdef".repeat(4);
    let keys: Vec<String> = vec![
        "a\r\nb".into(),
        "a\nb".into(),
        "a\rb".into(),
        "with space".into(),
        "nul\0byte".into(),
        "del\x7fbyte".into(),
        "café".into(),
        "日本".into(),
        "order#42".into(),
        "page#section".into(),
        "#".into(),
        format!("x#{digest}"),
        "x\r\nflush_all\r\n".into(),
        "x\r\nmg canary v\r\n".into(),
        "k".repeat(250 - prefix.len()),
        "k".repeat(250 - prefix.len() + 1),
        "k".repeat(10_000),
        format!("{}#1", "h".repeat(250 - prefix.len() - 2)),
    ];

    for (i, key) in keys.iter().enumerate() {
        let (value, wire) = on_the_wire(
            &server,
            cache.get(key, MINUTE, MINUTE, || async move {
                Ok::<_, Error>(format!("value {i}"))
            }),
        )
        .await;
        assert_eq!(value.unwrap(), format!("value {i}"), "{key:?}");
        assert_eq!(
            wire,
            Wire {
                gets: 1,
                sets: 1,
                others: 0
            },
            "a miss is one mg and one ms: {key:?}"
        );
    }
    for (i, key) in keys.iter().enumerate() {
        let (value, wire) = on_the_wire(
            &server,
            cache.get(key, MINUTE, MINUTE, || async {
                Ok::<_, Error>("computed again".to_owned())
            }),
        )
        .await;
        assert_eq!(
            value.unwrap(),
            format!("value {i}"),
            "its own value: {key:?}"
        );
        assert_eq!(
            wire,
            Wire {
                gets: 1,
                sets: 0,
                others: 0
            },
            "a hit is one mg: {key:?}"
        );
    }
    assert_eq!(cache.stats().getter_runs, keys.len() as u64);

    for key in &keys {
        let wire = format!("{prefix}{key}");
        if sent_as_is(&wire) {
            let stored = outside.get(&wire).await.map(|(bytes, _)| bytes);
            assert!(
                stored.is_some(),
                "{wire:?} is stored under exactly that key"
            );
        }
    }
    for key in ["order#42", "page#section"] {
        assert!(
            outside.get(&format!("{prefix}{key}")).await.is_some(),
            "{key} as a PHP or Python client would send it"
        );
    }
    for canary in canaries {
        assert_eq!(
            outside.get(canary).await,
            Some((canary.as_bytes().to_vec(), 7)),
            "canary {canary:?} unchanged"
        );
    }
}

#[tokio::test]
async fn f10_hostile_caller_keys_are_one_lookup_and_one_store_each() {
    hostile_keys_under("").await;
}

#[tokio::test]
async fn f10_hostile_caller_keys_under_a_namespace() {
    hostile_keys_under("ns").await;
}
