//! The distcache demo: many workers ask for the factorials of ten big numbers through one
//! `#[distcached]` function. Each number is computed once per `expire` window, by whichever worker
//! (in whichever process) asks first; every other worker waits for that value and reads it.
//!
//! ```text
//! cargo run --example factorial                     # in-process store
//! DISTCACHE_SERVERS=127.0.0.1:11211,127.0.0.1:11212,127.0.0.1:11213 cargo run --example factorial
//! cargo run --example factorial -- --workers 20 --rounds 3
//! ```
//!
//! Each line says which worker computed a number and which read it from the cache, and how long
//! it waited; the summary counts both per number and checks that no number was computed twice
//! while its value was cached or being computed.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use distcache::distcached;
use num_bigint::BigUint;
use num_traits::{Num, One};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const FIRST: u64 = 100_000;
const COUNT: u64 = 10;
/// The `expire` of `factorial`, for the summary's check.
const EXPIRE: Duration = Duration::from_secs(10);
/// memcached's expiry has one-second resolution: an item may expire up to a second early.
const TTL_RESOLUTION: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error(transparent)]
    Cache(#[from] distcache::Error),
    #[error("the computation thread failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// `n!`, stored as lowercase hexadecimal: num-bigint converts to and from a power-of-two radix
/// in linear time, where decimal takes 70 ms one way and 200 ms the other for 100000! (1.5
/// million bits), and any language reads it (`int(s, 16)` in Python).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Factorial(BigUint);

impl Serialize for Factorial {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_str_radix(16))
    }
}

impl<'de> Deserialize<'de> for Factorial {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let hex = <&str>::deserialize(deserializer)?;
        BigUint::from_str_radix(hex, 16)
            .map(Factorial)
            .map_err(serde::de::Error::custom)
    }
}

tokio::task_local! {
    /// Set by `factorial`'s body: tells a worker that its own call computed the value.
    static COMPUTED: Cell<bool>;
}

/// When each computation of each number ran, for the summary's check.
static RUNS: Mutex<BTreeMap<u64, Vec<(Instant, Instant)>>> = Mutex::new(BTreeMap::new());

/// `n!` the slow way, one multiplication at a time, as an expensive function would be.
#[distcached(expire = "10s", exec_limit = "1m")]
async fn factorial(n: u64) -> Result<Factorial, DemoError> {
    let _ = COMPUTED.try_with(|computed| computed.set(true));
    let started = Instant::now();
    // CPU-bound: on the blocking pool, so that the runtime's threads keep serving the other
    // workers (and their timers) meanwhile.
    let value = tokio::task::spawn_blocking(move || {
        let mut product = BigUint::one();
        for i in 2..=n {
            product *= i;
        }
        product
    })
    .await?;
    RUNS.lock()
        .expect("no panic while holding RUNS")
        .entry(n)
        .or_default()
        .push((started, Instant::now()));
    Ok(Factorial(value))
}

struct Settings {
    workers: usize,
    rounds: usize,
}

fn settings() -> Result<Settings, String> {
    let mut settings = Settings {
        workers: 10,
        rounds: 2,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let slot = match flag.as_str() {
            "--workers" => &mut settings.workers,
            "--rounds" => &mut settings.rounds,
            other => {
                return Err(format!(
                    "unknown argument {other:?}; use --workers N --rounds N"
                ));
            }
        };
        *slot = args
            .next()
            .and_then(|v| v.parse().ok())
            .filter(|&v| v > 0)
            .ok_or_else(|| format!("{flag} takes a positive number"))?;
    }
    Ok(settings)
}

/// One call's outcome, as the summary counts it.
struct Call {
    n: u64,
    computed: bool,
    took: Duration,
}

async fn worker(id: usize, rounds: usize) -> Vec<Call> {
    let mut rng = fastrand::Rng::with_seed(id as u64);
    let mut calls = Vec::new();
    for _ in 0..rounds {
        let mut numbers: Vec<u64> = (FIRST..FIRST + COUNT).collect();
        rng.shuffle(&mut numbers);
        for n in numbers {
            let started = Instant::now();
            let result = COMPUTED.scope(Cell::new(false), async {
                let result = factorial(n).await;
                (result, COMPUTED.with(Cell::get))
            });
            let (result, computed) = result.await;
            let took = started.elapsed();
            match result {
                Ok(value) if computed => println!(
                    "worker {id:>2}  {n}!  computed               in {:>6.2}s  ({} bits)",
                    took.as_secs_f64(),
                    value.0.bits()
                ),
                Ok(_) => println!(
                    "worker {id:>2}  {n}!  read from the cache, waited {:>6.2}s",
                    took.as_secs_f64()
                ),
                Err(err) => println!(
                    "worker {id:>2}  {n}!  failed after {:.2}s: {err}",
                    took.as_secs_f64()
                ),
            }
            calls.push(Call { n, computed, took });
        }
    }
    calls
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let settings = settings()?;
    let cache = distcache::default_cache()?;
    println!(
        "distcache demo, process {}: {} workers x {} rounds over {FIRST}!..{}!, cache: {cache}",
        std::process::id(),
        settings.workers,
        settings.rounds,
        FIRST + COUNT - 1,
    );
    let started = Instant::now();
    let workers: Vec<_> = (0..settings.workers)
        .map(|id| tokio::spawn(worker(id, settings.rounds)))
        .collect();
    let mut calls = Vec::new();
    for worker in workers {
        calls.extend(worker.await?);
    }
    summarize(&calls, started.elapsed());
    println!("{:?}", cache.stats());
    Ok(())
}

fn summarize(calls: &[Call], wall: Duration) {
    println!("\nsummary after {:.2}s:", wall.as_secs_f64());
    println!("  number    computed  read  longest wait");
    for n in FIRST..FIRST + COUNT {
        let of_n = calls.iter().filter(|c| c.n == n);
        let computed = of_n.clone().filter(|c| c.computed).count();
        let read = of_n.clone().filter(|c| !c.computed).count();
        let longest = of_n
            .filter(|c| !c.computed)
            .map(|c| c.took)
            .max()
            .unwrap_or_default();
        println!(
            "  {n}!  {computed:>8}  {read:>4}  {:>11.2}s",
            longest.as_secs_f64()
        );
    }
    // A number may be computed again only once its value has expired: a computation may not
    // start while another is running, or before the previous one's value expired.
    let runs = RUNS.lock().expect("no panic while holding RUNS");
    let mut overlaps = Vec::new();
    for (n, runs) in runs.iter() {
        let mut runs = runs.clone();
        runs.sort();
        for pair in runs.windows(2) {
            let (previous_end, next_start) = (pair[0].1, pair[1].0);
            if next_start + TTL_RESOLUTION < previous_end + EXPIRE {
                overlaps.push(format!(
                    "{n}! computed again {:.2}s after the previous value was stored",
                    next_start
                        .saturating_duration_since(previous_end)
                        .as_secs_f64()
                ));
            }
        }
    }
    if overlaps.is_empty() {
        println!(
            "each number computed at most once per {}s window in this process: yes",
            EXPIRE.as_secs()
        );
    } else {
        println!(
            "each number computed at most once per {}s window in this process: NO",
            EXPIRE.as_secs()
        );
        for overlap in overlaps {
            println!("  {overlap}");
        }
    }
}
