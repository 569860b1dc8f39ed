//! The per-call costs of distcache: key building, the codec, and a hit on each store, plus the
//! allocations of a hit, counted by this binary's global allocator.
//!
//! ```text
//! cargo bench -p distcache --bench calls
//! ```
//!
//! The memcached hit needs the `memcached` binary (the bench starts its own server on loopback).

#[path = "../tests/support/counting.rs"]
mod counting;
#[path = "../tests/support/memcached.rs"]
mod memcached;

use std::sync::atomic::Ordering;
use std::time::Duration;

use counting::ALLOCATIONS;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use distcache::__bench::{Keys, decode, encode};
use distcache::{Cache, Error};

const MINUTE: Duration = Duration::from_secs(60);

/// A value of about `bytes` bytes of JSON.
fn value(bytes: usize) -> String {
    "v".repeat(bytes - 2)
}

fn keys(c: &mut Criterion) {
    let keys = Keys::new("app");
    let mut group = c.benchmark_group("key");
    group.bench_function("short", |b| {
        b.iter(|| keys.encode(std::hint::black_box("module::function[42]")))
    });
    let long = format!("module::function[\"{}\"]", "a b ".repeat(100));
    group.bench_function("long_hashed", |b| {
        b.iter(|| keys.encode(std::hint::black_box(&long)))
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for size in [1_000, 100_000] {
        let v = value(size);
        let bytes = encode(&v);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("encode", size), &v, |b, v| {
            b.iter(|| encode(v))
        });
        group.bench_with_input(BenchmarkId::new("decode", size), &bytes, |b, bytes| {
            b.iter(|| decode::<String>(bytes))
        });
    }
    group.finish();
}

/// Allocations per call of `f`, averaged over many calls after a warm-up.
fn allocations_per_call(runtime: &tokio::runtime::Runtime, mut f: impl AsyncFnMut()) -> f64 {
    runtime.block_on(async {
        for _ in 0..1000 {
            f().await;
        }
        let calls = 10_000;
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..calls {
            f().await;
        }
        (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / calls as f64
    })
}

fn hits(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(memcached::Memcached::start());
    let memory = Cache::builder().build().unwrap();
    let cluster = Cache::builder().server(server.addr()).build().unwrap();
    let v = value(1_000);
    let bytes = encode(&v);
    let decode_only = allocations_per_call(&runtime, async || {
        std::hint::black_box(decode::<String>(&bytes));
    });
    let mut group = c.benchmark_group("hit");
    for (name, cache) in [("in_process", &memory), ("memcached", &cluster)] {
        let get = async || {
            let got: String = cache
                .get("bench:hit", MINUTE, MINUTE, || async {
                    Ok::<_, Error>(value(1_000))
                })
                .await
                .unwrap();
            std::hint::black_box(got);
        };
        let per_hit = allocations_per_call(&runtime, get);
        println!(
            "allocations per 1 KB hit, {name}: {per_hit:.2} (decoding the value alone: {decode_only:.2}; \
             the rest, distcache's own: {:.2})",
            per_hit - decode_only
        );
        group.bench_function(name, |b| b.to_async(&runtime).iter(get));
    }
    // The same hit by hand with async-memcached, the client a user would pick: the reference.
    let outside = runtime.block_on(memcached::Outside::connect(&server.addr()));
    group.bench_function("memcached_by_hand", |b| {
        b.to_async(&runtime).iter(async || {
            let (data, _) = outside
                .get("bench:hit")
                .await
                .expect("stored by the hits above");
            std::hint::black_box(decode::<String>(&data));
        })
    });
    group.finish();
}

criterion_group!(benches, keys, codec, hits);
criterion_main!(benches);
