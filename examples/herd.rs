//! The herd benchmark: a stampede on cold keys, then a warm read phase, from P OS
//! processes of C tokio callers each, printed as one JSON line so that systems running the same
//! scenario can be compared side by side.
//!
//! ```text
//! cargo run --release --example herd -- --spawn-servers                      # distcache
//! cargo run --release --example herd -- --spawn-servers --system naive       # the hand-written baseline
//! cargo run --release --example herd -- --servers a:p,b:p,c:p --counter d:p --procs 4 --callers 128
//! ```
//!
//! Each process runs a tokio runtime sized to its share of the machine (`--workers`, default
//! cores / P, at least one), as P processes of a fleet would each have cores of their own;
//! `--workers 2` here gives each tokio's default of one worker per core, 8 workers on 2 cores.
//! `--seed` fixes the callers' key orders, so that two systems can run the same scenario
//! (default: a random seed, printed in the result).
//!
//! Every caller asks for all K keys in its own shuffled order. The getter sleeps D ms, counts
//! itself on a separate memcached (the counter, outside the library: one increment of a counter
//! made beforehand, in a task of its own so that counting adds nothing to the getter's time) and
//! returns a JSON string of S bytes derived from its key (`--value-bytes S`, up to 16 MB: random
//! characters that compress about as base64 does, or, with `--compressible`, one character
//! repeated); every returned value, cold or warm, is
//! checked against its key. `naive` is what a user writes by hand with the same client library
//! and ring: a deadpool pool of async-memcached connections per server (`--naive-pool`, default
//! deadpool's own size, twice the CPUs), one request in flight on each, get, compute on a miss,
//! set; no lease, no coalescing.
//!
//! Security: `--tls-ca-file PATH` (TLS, with that CA), `--username U --password P` for your own
//! servers; with `--spawn-servers`, `--tls` starts the three nodes with `-Z` and certificates it
//! makes (a CA of its own), and `--auth` with `-Y` and a user of its own (the counter server
//! stays plain); `--signed` signs every value (`signing_keys`). distcache only: the naive
//! baseline has none of these.
//!
//! Progress goes to stderr, the result line to stdout. Besides the scenario's parameters (with
//! `seed` and `workers`, so that a run can be replayed), the fields:
//! - `getter_calls`: counted on the counter server; `duplicate_calls = getter_calls - keys`;
//!   `failed_calls`: calls, cold or warm, that errored or returned a value not of their key.
//! - `cold_*`: the stampede, from the first call to the last return; latencies per call.
//! - `handoff_*`: for each call that returned a value it did not compute and had started before
//!   that value existed, the time from the value's getter returning (its first, for naive) to the
//!   call's return: the store's own round trip included, so an upper bound. naive never waits;
//!   its handoffs are hits that straddled a store.
//! - `store_ops_per_wait`: store lookups per call that polled the store for a lease held in
//!   another process (its first lookup included). Callers that waited on a call of their own
//!   process make none and are not counted. `null` for naive.
//! - `warm_*`: N gets of random cached keys per process, from all its callers at once, or as
//!   many as they make in `--warm-secs`; uniform, or by Zipf's law with `--zipf S` (the hot keys
//!   of a real workload); `node_gets`: each node's `cmd_get` over the warm phase, and
//!   `hottest_node_gets` the most (not with TLS or a login); `warm_coalesced_waits`: of those, how many distcache
//!   served by joining an identical get in flight in the same process; with `--near-ttl D`
//!   (distcache's `get_near`), `near_hits`: of those, how many its near cache served.
//!
//! A failing origin (`--origin-down-after S --origin-down-for S`, counted from the warm phase's
//! start): while it is down, the getter fails after its sleep; with `--origin-slow-ms N`, it is
//! slow instead: it sleeps N ms and succeeds. With `--expire`, `--stale-if-error`,
//! `--error-backoff` and `--soft-timeout` (distcache's `get_detached`), the fields:
//! - `origin_calls_down`: getter runs while the origin was down, fleet-wide (counted outside);
//!   `origin_calls_down_max_per_key`, the most for one key;
//! - `origin_errors`, `backoff_errors`: warm calls that got the getter's own error, or
//!   `Error::Backoff`; `wrong_values` and `other_errors`: anything else that was not a value of
//!   its key; `failed_calls` counts all four;
//! - `stale_served`: from distcache's stats, over the warm phase;
//! - `warm_up_p99_ms`, `warm_down_p99_ms` (and p50s): latencies of the gets that started while
//!   the origin was up, or down (or slow); `warm_max_ms`, the slowest; `soft_timeouts`, and
//!   `soft_timeout_gets` with their median: the gets that took the soft timeout or more;
//! - `recovery_s`: after the origin came back, the last time a get returned a value computed
//!   before it went down, counted from its return.

#![recursion_limit = "256"]

#[path = "../distcache/tests/support/memcached.rs"]
mod memcached;
#[path = "../distcache/tests/support/tls.rs"]
mod tls;

use std::collections::HashMap;

use futures_util::future::join_all;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_memcached::AsciiProtocol;
use distcache::{Cache, Detached, Error, GetOptions, Ring, Server, Stats};
use serde_json::json;

/// How long values live by default: far longer than a run.
const EXPIRE: Duration = Duration::from_secs(600);
const EXEC_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Args {
    system: String,
    servers: Vec<String>,
    counter: Option<String>,
    procs: usize,
    callers: usize,
    keys: usize,
    getter_ms: u64,
    value_bytes: usize,
    warm_gets: usize,
    spawn_servers: bool,
    /// With `--spawn-servers`: TLS (`-Z`) and a login (`-Y`) on the nodes.
    tls: bool,
    auth: bool,
    tls_ca_file: Option<String>,
    username: Option<String>,
    password: Option<String>,
    /// Signed values (`signing_keys`), with a key of the herd's own.
    signed: bool,
    /// The warm phase's keys by popularity: Zipf with this exponent (rank r is asked with
    /// probability proportional to 1 / r^s); `None`: uniform.
    zipf: Option<f64>,
    /// The naive system's pool size per server; default: deadpool's (twice the CPUs).
    naive_pool: usize,
    /// Tokio worker threads in each herd process; default: the process's share of the
    /// machine's cores (at least one), as when each process runs with its own CPU allowance.
    workers: Option<usize>,
    /// Writes every cold call (process, key, start, end, computed, ok) to this file, for analysis.
    dump_calls: Option<String>,
    /// Seeds every caller's key order: the same seed gives the same orders, so that two systems
    /// can be measured on the same scenario. Default: a new one per run, printed with the result.
    seed: Option<u64>,
    /// A warm phase of this many seconds, instead of `warm_gets` gets.
    warm_secs: Option<f64>,
    /// How long values live.
    expire: Duration,
    stale_if_error: Option<Duration>,
    error_backoff: Option<Duration>,
    /// When the origin goes down, in seconds from the warm phase's start, and for how long
    /// (zero: never).
    origin_down_after: f64,
    origin_down_for: f64,
    /// While "down", the origin answers this slowly instead of failing.
    origin_slow_ms: Option<u64>,
    soft_timeout: Option<Duration>,
    /// Keep values near for this long (`get_near`).
    near_ttl: Option<Duration>,
    /// Values of one repeated character, instead of random ones.
    compressible: bool,
    /// Set in the processes the coordinator spawns: the run's id.
    child: Option<String>,
    /// Set in the processes the coordinator spawns: which one this is (0..procs).
    child_index: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        system: "distcache".into(),
        servers: Vec::new(),
        counter: None,
        procs: 4,
        callers: 32,
        keys: 200,
        getter_ms: 20,
        value_bytes: 1000,
        warm_gets: 2000,
        spawn_servers: false,
        tls: false,
        auth: false,
        tls_ca_file: None,
        username: None,
        password: None,
        signed: false,
        zipf: None,
        naive_pool: 2 * cores(),
        workers: None,
        dump_calls: None,
        seed: None,
        warm_secs: None,
        expire: EXPIRE,
        stale_if_error: None,
        error_backoff: None,
        origin_down_after: 0.0,
        origin_down_for: 0.0,
        origin_slow_ms: None,
        soft_timeout: None,
        near_ttl: None,
        compressible: false,
        child: None,
        child_index: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        let seconds = |v: String| match v.parse::<f64>() {
            Ok(s) if s >= 0.0 && s.is_finite() => Ok(s),
            _ => Err(format!("{flag}: {v:?} is not a number of seconds")),
        };
        let duration = |v: String| {
            parse_duration(&v).ok_or(format!(
                "{flag}: {v:?} is not a duration such as 500ms, 2s, 5m or 1h"
            ))
        };
        match flag.as_str() {
            "--system" => args.system = value()?,
            "--servers" => args.servers = value()?.split(',').map(str::to_owned).collect(),
            "--counter" => args.counter = Some(value()?),
            "--procs" => args.procs = number(value()?)?,
            "--callers" => args.callers = number(value()?)?,
            "--keys" => args.keys = number(value()?)?,
            "--getter-ms" => args.getter_ms = number(value()?)? as u64,
            "--value-bytes" => args.value_bytes = number(value()?)?,
            "--warm-gets" => args.warm_gets = number(value()?)?,
            "--spawn-servers" => args.spawn_servers = true,
            "--tls" => args.tls = true,
            "--signed" => args.signed = true,
            "--zipf" => {
                args.zipf = Some(match value()?.parse::<f64>() {
                    Ok(s) if s > 0.0 && s.is_finite() => s,
                    _ => return Err("--zipf takes a positive exponent, such as 1.1".into()),
                })
            }
            "--auth" => args.auth = true,
            "--tls-ca-file" => args.tls_ca_file = Some(value()?),
            "--username" => args.username = Some(value()?),
            "--password" => args.password = Some(value()?),
            "--dump-calls" => args.dump_calls = Some(value()?),
            "--naive-pool" => args.naive_pool = number(value()?)?,
            "--workers" => args.workers = Some(number(value()?)?),
            "--seed" => args.seed = Some(number(value()?)? as u64),
            "--warm-secs" => args.warm_secs = Some(seconds(value()?)?),
            "--expire" => args.expire = duration(value()?)?,
            "--stale-if-error" => args.stale_if_error = Some(duration(value()?)?),
            "--error-backoff" => args.error_backoff = Some(duration(value()?)?),
            "--origin-down-after" => args.origin_down_after = seconds(value()?)?,
            "--origin-down-for" => args.origin_down_for = seconds(value()?)?,
            "--origin-slow-ms" => args.origin_slow_ms = Some(number(value()?)? as u64),
            "--soft-timeout" => args.soft_timeout = Some(duration(value()?)?),
            "--near-ttl" => args.near_ttl = Some(duration(value()?)?),
            "--compressible" => args.compressible = true,
            "--child" => args.child = Some(value()?),
            "--child-index" => args.child_index = number(value()?)? as u64,
            "--bench" => {} // cargo passes it to examples run as benches
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    if !matches!(args.system.as_str(), "distcache" | "naive") {
        return Err(format!(
            "--system is distcache or naive, not {:?}",
            args.system
        ));
    }
    if (args.tls || args.auth) && !args.spawn_servers {
        return Err("--tls and --auth make the servers they use: with --spawn-servers".into());
    }
    if args.child.is_none() && args.username.is_some() != args.password.is_some() {
        return Err("--username and --password go together".into());
    }
    if args.system == "naive" && (args.tls || args.tls_ca_file.is_some() || args.username.is_some())
    {
        return Err("the naive baseline has no TLS and no login".into());
    }
    if args.near_ttl.is_some() && args.soft_timeout.is_some() {
        // get_near has no detached form: one of the two would be silently ignored.
        return Err("--near-ttl and --soft-timeout do not go together".into());
    }
    if args.workers == Some(0) {
        return Err("--workers must be positive".into());
    }
    if args.value_bytes > MAX_VALUE_BYTES {
        return Err(format!("--value-bytes is at most {MAX_VALUE_BYTES}"));
    }
    if args.procs == 0 || args.callers == 0 || args.keys == 0 || args.value_bytes < 32 {
        return Err(
            "--procs, --callers and --keys must be positive, --value-bytes at least 32".into(),
        );
    }
    Ok(args)
}

/// `500ms`, `2s`, `5m`, `1h`.
fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let d = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        "h" => Duration::from_secs(number * 3600),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("herd: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.child.is_some() {
        runtime.worker_threads(workers(&args));
    }
    let runtime = runtime.enable_all().build().expect("a tokio runtime");
    let mut args = args;
    if args.child.is_some() && args.username.is_some() {
        args.password = std::env::var("HERD_PASSWORD").ok();
    }
    match args.child.clone() {
        Some(run) => runtime.block_on(child(args, run)),
        None => runtime.block_on(coordinate(args)),
    }
    std::process::ExitCode::SUCCESS
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The worker threads of each herd process. By default the P processes share the machine as P
/// processes of a fleet would share theirs: each sized to its part of the cores, as tokio sizes
/// itself to a container's CPU quota. `--workers` overrides it (`--workers 2` here gives every
/// process tokio's default of one worker per core).
fn workers(args: &Args) -> usize {
    args.workers.unwrap_or((cores() / args.procs).max(1))
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_micros() as u64
}

/// How far ahead the coordinator schedules a phase's start (Unix microseconds, one clock for all).
const PHASE_START_US: u64 = 50_000;

/// Sleeps until the start of the phase that `line` (`<phase> <unix_us>`) announces.
async fn start_at(line: &str, phase: &str) {
    let (name, at) = line.trim().split_once(' ').expect("<phase> <start_us>");
    assert_eq!(name, phase, "the coordinator's protocol");
    let at: u64 = at.parse().expect("a start time");
    tokio::time::sleep(Duration::from_micros(at.saturating_sub(now_us()))).await;
}

fn key(run: &str, k: usize) -> String {
    format!("herd-{run}:{k}")
}

/// Where the getter counts its runs of key `k`, on the counter server.
fn counter_key(run: &str, k: usize) -> String {
    format!("herd-{run}:runs:{k}")
}

/// Where the getter counts its runs of key `k` while the origin is down.
fn down_key(run: &str, k: usize) -> String {
    format!("herd-{run}:down:{k}")
}

/// The largest `--value-bytes`.
const MAX_VALUE_BYTES: usize = 16_000_000;

/// The characters of a value that does not compress (much): 64 of them, as base64 has, none that
/// JSON escapes.
const NOISE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The value of key `k` computed at `at_ms` (Unix milliseconds): a JSON string of exactly `bytes`
/// bytes, `<k>:<at_ms, 13 digits>:` then `x`s (compressible) or characters drawn from [`NOISE`],
/// seeded by the key and the time.
fn value_of(k: usize, bytes: usize, at_ms: u64, compressible: bool) -> String {
    let mut value = format!("{k}:{at_ms:013}:");
    let fill = (bytes - 2).saturating_sub(value.len());
    if compressible {
        value.extend(std::iter::repeat_n('x', fill));
    } else {
        let mut rng = fastrand::Rng::with_seed((k as u64) << 44 ^ at_ms);
        value.extend((0..fill).map(|_| char::from(NOISE[rng.usize(..NOISE.len())])));
    }
    value
}

/// The length of a value's `<k>:` prefix, and when it was computed (Unix ms).
fn computed_at(value: &str) -> Option<u64> {
    let (_, rest) = value.split_once(':')?;
    rest.get(..13)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The coordinator: servers, processes, phases, figures.

async fn coordinate(mut args: Args) {
    let mut spawned = Vec::new();
    // Kept until the servers are gone: their certificates and authfile live in its directory.
    let pki = (args.spawn_servers && (args.tls || args.auth)).then(tls::Pki::new);
    if args.spawn_servers {
        let mut node_args: Vec<String> = Vec::new();
        if let Some(pki) = &pki {
            if args.tls {
                node_args.extend(pki.server("node", &["127.0.0.1"], false, false).args());
                args.tls_ca_file = Some(pki.ca_file().display().to_string());
            }
            if args.auth {
                let authfile = pki.dir().join("authfile");
                tls::write_secret(&authfile, "herd:herd-password\n");
                node_args.extend(["-Y".to_owned(), authfile.display().to_string()]);
                args.username = Some("herd".into());
                args.password = Some("herd-password".into());
            }
        }
        // Memory for every value on one node, with room to spare (memcached's default is 64 MB).
        let needed_mb = (args.keys * args.value_bytes * 2) >> 20;
        node_args.extend(["-m".to_owned(), (64 + needed_mb).to_string()]);
        let node_args: Vec<&str> = node_args.iter().map(String::as_str).collect();
        for _ in 0..3 {
            spawned.push(memcached::Memcached::start_with(&node_args).await);
        }
        spawned.push(memcached::Memcached::start().await);
        args.servers = spawned[..3].iter().map(|s| s.addr()).collect();
        args.counter = Some(spawned[3].addr());
    }
    let Some(counter) = args.counter.clone() else {
        eprintln!("herd: give --servers and --counter, or --spawn-servers");
        std::process::exit(2);
    };
    if args.servers.is_empty() {
        eprintln!("herd: no --servers");
        std::process::exit(2);
    }
    let run = format!("{:x}", now_us());
    eprintln!(
        "herd: {} on {} ({} procs x {} callers, {} keys, getter {} ms, values {} bytes), run {run}",
        args.system,
        args.servers.join(","),
        args.procs,
        args.callers,
        args.keys,
        args.getter_ms,
        args.value_bytes
    );
    // The getter counts itself with one increment of a counter that exists already.
    let outside = memcached::Outside::connect(&counter).await;
    for k in 0..args.keys {
        outside.set(&counter_key(&run, k), b"0", 0).await;
        outside.set(&down_key(&run, k), b"0", 0).await;
    }
    let seed = *args
        .seed
        .get_or_insert_with(|| fastrand::u64(..u64::from(u32::MAX)));
    let mut children: Vec<Child> = (0..args.procs)
        .map(|index| spawn_child(&args, &counter, &run, index))
        .collect();
    let mut readers: Vec<BufReader<std::process::ChildStdout>> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().expect("piped")))
        .collect();
    for reader in &mut readers {
        expect_line(reader, "ready");
    }
    // Every process starts each phase at the same instant, not when its turn to be told comes.
    let cold_at = now_us() + PHASE_START_US;
    for child in &mut children {
        writeln!(child.stdin.as_mut().expect("piped"), "cold {cold_at}").expect("tell a child");
    }
    let colds = read_all(&mut readers, read_cold);
    let mut calls = Vec::new();
    let mut waits = (0u64, 0u64);
    for (proc, (child_calls, lease_waits, wait_lookups)) in colds.into_iter().enumerate() {
        calls.extend(child_calls.into_iter().map(|c| Call { proc, ..c }));
        waits.0 += lease_waits;
        waits.1 += wait_lookups;
    }
    eprintln!("herd: cold phase done, {} calls", calls.len());
    if let Some(path) = &args.dump_calls {
        let mut dump = String::from("proc\tkey\tstart_us\tend_us\tvalue_at_us\tok\n");
        for c in &calls {
            let line = format!(
                "{}\t{}\t{}\t{}\t{}\t{}\n",
                c.proc,
                c.key,
                c.start,
                c.end,
                c.value_at,
                u8::from(c.ok)
            );
            dump.push_str(&line);
        }
        std::fs::write(path, dump).expect("write --dump-calls");
    }
    // Each node's gets, read before the warm phase and after: where the load of hot keys lands.
    // Not over TLS or with a login, which the coordinator's raw client does not speak.
    let count_gets = args.tls_ca_file.is_none() && args.username.is_none();
    let gets_before = if count_gets {
        node_gets(&args.servers).await
    } else {
        Vec::new()
    };
    let warm_at = now_us() + PHASE_START_US;
    for child in &mut children {
        writeln!(child.stdin.as_mut().expect("piped"), "warm {warm_at}").expect("tell a child");
    }
    let warms = read_all(&mut readers, read_warm);
    let mut warm = Vec::new();
    let mut down = Vec::new();
    let (mut warm_start, mut warm_end) = (u64::MAX, 0);
    let mut totals = Warm::default();
    for w in warms {
        eprintln!(
            "herd: warm phase of a process: {} gets from +{:.1} ms to +{:.1} ms",
            w.up.len() + w.down.len(),
            w.start.saturating_sub(warm_at) as f64 / 1e3,
            w.end.saturating_sub(warm_at) as f64 / 1e3
        );
        warm_start = warm_start.min(w.start);
        warm_end = warm_end.max(w.end);
        totals.wrong += w.wrong;
        totals.other += w.other;
        totals.origin += w.origin;
        totals.backoff += w.backoff;
        totals.coalesced += w.coalesced;
        totals.stale_served += w.stale_served;
        totals.recovery_us = totals.recovery_us.max(w.recovery_us);
        totals.soft_timeouts += w.soft_timeouts;
        totals.near_hits += w.near_hits;
        warm.extend(w.up);
        down.extend(w.down);
    }
    let warm_failed = totals.wrong + totals.other + totals.origin + totals.backoff;
    for child in &mut children {
        let status = child.wait().expect("a child ends");
        assert!(status.success(), "a child failed: {status}");
    }

    let node_gets_during: Vec<u64> = if count_gets {
        node_gets(&args.servers)
            .await
            .iter()
            .zip(&gets_before)
            .map(|(after, before)| after - before)
            .collect()
    } else {
        Vec::new()
    };
    let mut getter_calls = 0;
    let (mut down_calls, mut down_calls_max) = (0, 0);
    for k in 0..args.keys {
        getter_calls += outside.count(&counter_key(&run, k)).await;
        let key_down = outside.count(&down_key(&run, k)).await;
        down_calls += key_down;
        down_calls_max = down_calls_max.max(key_down);
    }
    let failed = calls.iter().filter(|c| !c.ok).count() as u64 + warm_failed;
    let cold_start = calls.iter().map(|c| c.start).min().unwrap_or(0);
    let cold_end = calls.iter().map(|c| c.end).max().unwrap_or(0);
    // When and where each key's value first existed: its getter's return, which precedes its
    // store by the store's round trip, so handoffs are measured conservatively.
    let mut stored: HashMap<usize, (u64, usize)> = HashMap::new();
    for c in calls.iter().filter(|c| c.value_at > 0 && c.ok) {
        let at = stored.entry(c.key).or_insert((c.value_at, c.proc));
        *at = (*at).min((c.value_at, c.proc));
    }
    let mut handoffs = Vec::new();
    let mut across = Vec::new();
    for c in calls.iter().filter(|c| c.value_at == 0 && c.ok) {
        let Some(&(at, by)) = stored.get(&c.key) else {
            continue;
        };
        if c.start < at && c.end >= at {
            let ms = (c.end - at) as f64 / 1e3;
            handoffs.push(ms);
            if by != c.proc {
                across.push(ms);
            }
        }
    }
    // Each sample sorted once, for its percentiles.
    handoffs.sort_by(f64::total_cmp);
    across.sort_by(f64::total_cmp);
    if !across.is_empty() {
        eprintln!(
            "herd: {} handoffs, {} across processes: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
            handoffs.len(),
            across.len(),
            percentile(&across, 50.0),
            percentile(&across, 90.0),
            percentile(&across, 99.0),
            percentile(&across, 100.0)
        );
    }
    let mut cold: Vec<f64> = calls
        .iter()
        .map(|c| (c.end - c.start) as f64 / 1e3)
        .collect();
    cold.sort_by(f64::total_cmp);
    let gets = warm.len() + down.len();
    let mut all: Vec<f64> = warm.iter().chain(&down).copied().collect();
    all.sort_by(f64::total_cmp);
    warm.sort_by(f64::total_cmp);
    down.sort_by(f64::total_cmp);
    let outage = args.origin_down_for > 0.0;
    let soft_ms = args.soft_timeout.map(|d| d.as_secs_f64() * 1e3);
    let slow: Vec<f64> = all
        .iter()
        .copied()
        .filter(|&ms| soft_ms.is_some_and(|soft| ms >= soft))
        .collect();
    let warm_wall = (warm_end.saturating_sub(warm_start)) as f64 / 1e6;
    let line = json!({
        "system": args.system,
        "procs": args.procs,
        "callers": args.callers,
        "keys": args.keys,
        "getter_ms": args.getter_ms,
        "value_bytes": args.value_bytes,
        "compressible": args.compressible,
        "seed": seed,
        "naive_pool": (args.system == "naive").then_some(args.naive_pool),
        "workers": workers(&args),
        "tls": args.tls_ca_file.is_some(),
        "auth": args.username.is_some(),
        "signed": args.signed,
        "getter_calls": getter_calls,
        "duplicate_calls": getter_calls as i64 - args.keys as i64,
        "failed_calls": failed,
        "cold_wall_s": round((cold_end - cold_start) as f64 / 1e6, 3),
        "cold_p50_ms": percentile(&cold, 50.0),
        "cold_p99_ms": percentile(&cold, 99.0),
        "handoff_p50_ms": (!handoffs.is_empty()).then(|| percentile(&handoffs, 50.0)),
        "handoff_p99_ms": (!handoffs.is_empty()).then(|| percentile(&handoffs, 99.0)),
        "handoffs": handoffs.len(),
        "store_ops_per_wait": (args.system == "distcache" && waits.0 > 0).then(|| round(waits.1 as f64 / waits.0 as f64, 2)),
        "lease_waits": waits.0,
        "warm_gets": gets,
        "warm_failed": warm_failed,
        "warm_coalesced_waits": (args.system == "distcache").then_some(totals.coalesced),
        "warm_ops_per_s": round(gets as f64 / warm_wall, 0),
        "warm_p50_ms": percentile(&all, 50.0),
        "warm_p99_ms": percentile(&all, 99.0),
        "warm_max_ms": percentile(&all, 100.0),
        "warm_secs": args.warm_secs,
        "zipf": args.zipf,
        "node_gets": count_gets.then(|| node_gets_during.clone()),
        "hottest_node_gets": count_gets.then(|| node_gets_during.iter().copied().max().unwrap_or(0)),
        "expire_s": args.expire.as_secs_f64(),
        "stale_if_error_s": args.stale_if_error.map(|d| d.as_secs_f64()),
        "error_backoff_s": args.error_backoff.map(|d| d.as_secs_f64()),
        "origin_down_after_s": outage.then_some(args.origin_down_after),
        "origin_down_for_s": outage.then_some(args.origin_down_for),
        "origin_calls_down": outage.then_some(down_calls),
        "origin_calls_down_max_per_key": outage.then_some(down_calls_max),
        "origin_errors": totals.origin,
        "backoff_errors": totals.backoff,
        "wrong_values": totals.wrong,
        "other_errors": totals.other,
        "stale_served": (args.system == "distcache").then_some(totals.stale_served),
        "soft_timeout_ms": args.soft_timeout.map(|d| d.as_millis() as u64),
        "soft_timeouts": (args.system == "distcache").then_some(totals.soft_timeouts),
        "near_ttl_ms": args.near_ttl.map(|d| d.as_millis() as u64),
        "near_hits": (args.system == "distcache").then_some(totals.near_hits),
        "origin_slow_ms": args.origin_slow_ms,
        // The gets that took the soft timeout or more: those that recomputed a value.
        "soft_timeout_gets": soft_ms.map(|_| slow.len()),
        "soft_timeout_gets_p50_ms": soft_ms.map(|_| percentile(&slow, 50.0)),
        "warm_up_p50_ms": outage.then(|| percentile(&warm, 50.0)),
        "warm_up_p99_ms": outage.then(|| percentile(&warm, 99.0)),
        "warm_down_p50_ms": outage.then(|| percentile(&down, 50.0)),
        "warm_down_p99_ms": outage.then(|| percentile(&down, 99.0)),
        "recovery_s": outage.then(|| round(totals.recovery_us as f64 / 1e6, 3)),
    });
    println!("{line}");
}

/// Each server's `cmd_get` (memcached counts a meta get in it), asked with `stats`.
async fn node_gets(servers: &[String]) -> Vec<u64> {
    let mut gets = Vec::new();
    for server in servers {
        gets.push(memcached::stat(server, "cmd_get").await);
    }
    gets
}

/// Zipf's cumulative distribution over `keys` ranks with exponent `s`, for sampling by search.
fn zipf_cdf(keys: usize, s: f64) -> Vec<f64> {
    let mut cdf: Vec<f64> = (1..=keys).map(|r| 1.0 / (r as f64).powf(s)).collect();
    let mut sum = 0.0;
    for p in &mut cdf {
        sum += *p;
        *p = sum;
    }
    for p in &mut cdf {
        *p /= sum;
    }
    cdf
}

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// The `p`th percentile of `sorted` (ascending), by the nearest rank.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    debug_assert!(sorted.is_sorted_by(|a, b| a.total_cmp(b).is_le()));
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    round(sorted[rank.clamp(1, sorted.len()) - 1], 3)
}

fn spawn_child(args: &Args, counter: &str, run: &str, index: usize) -> Child {
    let exe = std::env::current_exe().expect("this binary");
    Command::new(exe)
        .args([
            "--system",
            &args.system,
            "--servers",
            &args.servers.join(","),
            "--counter",
            counter,
        ])
        .args([
            "--callers",
            &args.callers.to_string(),
            "--keys",
            &args.keys.to_string(),
        ])
        .args([
            "--getter-ms",
            &args.getter_ms.to_string(),
            "--value-bytes",
            &args.value_bytes.to_string(),
        ])
        .args(["--warm-gets", &args.warm_gets.to_string(), "--child", run])
        .args(["--expire", &format!("{}ms", args.expire.as_millis())])
        .args(
            args.warm_secs
                .iter()
                .flat_map(|s| ["--warm-secs".to_owned(), s.to_string()]),
        )
        .args(args.stale_if_error.iter().flat_map(|d| {
            [
                "--stale-if-error".to_owned(),
                format!("{}ms", d.as_millis()),
            ]
        }))
        .args(
            args.error_backoff
                .iter()
                .flat_map(|d| ["--error-backoff".to_owned(), format!("{}ms", d.as_millis())]),
        )
        .args(
            args.soft_timeout
                .iter()
                .flat_map(|d| ["--soft-timeout".to_owned(), format!("{}ms", d.as_millis())]),
        )
        .args(
            args.near_ttl
                .iter()
                .flat_map(|d| ["--near-ttl".to_owned(), format!("{}ms", d.as_millis())]),
        )
        .args(args.compressible.then_some("--compressible"))
        .args(
            args.origin_slow_ms
                .iter()
                .flat_map(|ms| ["--origin-slow-ms".to_owned(), ms.to_string()]),
        )
        .args([
            "--origin-down-after",
            &args.origin_down_after.to_string(),
            "--origin-down-for",
            &args.origin_down_for.to_string(),
        ])
        .args(["--naive-pool", &args.naive_pool.to_string()])
        .args(args.signed.then_some("--signed"))
        .args(
            args.zipf
                .iter()
                .flat_map(|s| ["--zipf".to_owned(), s.to_string()]),
        )
        .args(
            args.tls_ca_file
                .iter()
                .flat_map(|ca| ["--tls-ca-file".to_owned(), ca.clone()]),
        )
        .args(
            args.username
                .iter()
                .flat_map(|u| ["--username".to_owned(), u.clone()]),
        )
        // Not on the command line, where `ps` shows it.
        .envs(args.password.iter().map(|p| ("HERD_PASSWORD", p.clone())))
        .args(["--workers", &workers(args).to_string()])
        .args([
            "--seed",
            &args.seed.expect("chosen by now").to_string(),
            "--child-index",
            &index.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn a herd process")
}

/// Reads every child at once, one thread each, with `read`: a child must never block on a full
/// pipe while another is being read.
fn read_all<R: BufRead + Send, T: Send>(readers: &mut [R], read: fn(&mut R) -> T) -> Vec<T> {
    std::thread::scope(|scope| {
        let threads: Vec<_> = readers
            .iter_mut()
            .map(|r| scope.spawn(move || read(r)))
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a reader"))
            .collect()
    })
}

fn expect_line(reader: &mut impl BufRead, expected: &str) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("read a child's line");
    assert_eq!(line.trim_end(), expected, "a child's protocol");
}

struct Call {
    /// Which process made it (the coordinator's numbering).
    proc: usize,
    key: usize,
    start: u64,
    end: u64,
    /// When this call's getter returned the value (Unix us), 0 if it ran none.
    value_at: u64,
    ok: bool,
}

/// `call <key> <start_us> <end_us> <value_at_us> <ok>` lines, then `cold <lease_waits> <wait_lookups>`.
fn read_cold(reader: &mut impl BufRead) -> (Vec<Call>, u64, u64) {
    let mut calls = Vec::new();
    for line in reader.lines() {
        let line = line.expect("read a child's line");
        let f: Vec<u64> = line
            .split(' ')
            .skip(1)
            .map(|x| x.parse().expect("a number"))
            .collect();
        match line.split(' ').next() {
            Some("call") => calls.push(Call {
                proc: 0,
                key: f[0] as usize,
                start: f[1],
                end: f[2],
                value_at: f[3],
                ok: f[4] == 1,
            }),
            Some("cold") => return (calls, f[0], f[1]),
            _ => panic!("unexpected line from a child: {line:?}"),
        }
    }
    panic!("a child ended during the cold phase")
}

/// One process's warm phase.
#[derive(Default)]
struct Warm {
    start: u64,
    end: u64,
    wrong: u64,
    other: u64,
    origin: u64,
    backoff: u64,
    coalesced: u64,
    stale_served: u64,
    recovery_us: u64,
    soft_timeouts: u64,
    near_hits: u64,
    /// Latencies (ms) of the gets that started while the origin was up, and down.
    up: Vec<f64>,
    down: Vec<f64>,
}

/// `warm <start_us> <end_us> <wrong> <other> <origin> <backoff> <coalesced> <stale_served>
/// <recovery_us> <soft_timeouts> <near_hits>`, then `up <latency_us>...` and `down <latency_us>...`.
fn read_warm(reader: &mut impl BufRead) -> Warm {
    let mut line = || {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read a child's line");
        line
    };
    let numbers = |line: &str, name: &str| -> Vec<u64> {
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some(name), "a child's protocol");
        words.map(|x| x.parse().expect("a number")).collect()
    };
    let f = numbers(&line(), "warm");
    let ms = |us: Vec<u64>| us.into_iter().map(|us| us as f64 / 1e3).collect();
    Warm {
        start: f[0],
        end: f[1],
        wrong: f[2],
        other: f[3],
        origin: f[4],
        backoff: f[5],
        coalesced: f[6],
        stale_served: f[7],
        recovery_us: f[8],
        soft_timeouts: f[9],
        near_hits: f[10],
        up: ms(numbers(&line(), "up")),
        down: ms(numbers(&line(), "down")),
    }
}

// ---------------------------------------------------------------------------------------------
// A herd process.

/// A system under test.
enum System {
    /// With the options of detached calls, when `--soft-timeout` is given, and of near calls,
    /// when `--near-ttl` is.
    Distcache(Cache, Option<GetOptions<Detached>>, Option<GetOptions>),
    Naive(Naive),
}

/// How a call failed.
enum Failure {
    /// The getter's own error: the origin was down.
    Origin,
    /// distcache's `Error::Backoff`.
    Backoff,
    Other(String),
}

/// The getter's error.
#[derive(Debug)]
enum HerdError {
    /// The origin is down.
    Origin,
    Cache(Error),
}

impl From<Error> for HerdError {
    fn from(err: Error) -> Self {
        HerdError::Cache(err)
    }
}

impl System {
    /// distcache's counters; all zero for naive, which keeps none.
    fn stats(&self) -> Stats {
        match self {
            System::Distcache(cache, ..) => cache.stats(),
            System::Naive(_) => Stats::default(),
        }
    }

    /// Key `k`'s value, and when this call's getter returned it (Unix us; 0: it ran none).
    async fn get(&self, k: usize, getter: &Arc<Getter>) -> Result<(String, u64), Failure> {
        let key = &getter.keys[k];
        let failure = |e| match e {
            HerdError::Origin => Failure::Origin,
            HerdError::Cache(Error::Backoff { .. }) => Failure::Backoff,
            HerdError::Cache(e) => Failure::Other(e.to_string()),
        };
        if let System::Distcache(cache, Some(options), _) = self {
            // A detached getter owns what it uses.
            let value_at = Arc::new(AtomicU64::new(0));
            let compute = {
                let (getter, value_at) = (getter.clone(), value_at.clone());
                move || async move {
                    let value = getter.run(k).await;
                    value_at.store(now_us(), Ordering::Relaxed);
                    value
                }
            };
            let value = cache
                .get_detached(key, options, compute)
                .await
                .map_err(failure)?;
            return Ok((value, value_at.load(Ordering::Relaxed)));
        }
        let value_at = AtomicU64::new(0);
        let compute = || async {
            let value = getter.run(k).await;
            value_at.store(now_us(), Ordering::Relaxed);
            value
        };
        let value = match self {
            System::Distcache(cache, _, Some(near)) => {
                cache.get_near(key, near, compute).await.map_err(failure)?
            }
            System::Distcache(cache, ..) => cache
                .get(key, EXEC_LIMIT, getter.expire, compute)
                .await
                .map_err(failure)?,
            System::Naive(naive) => naive.get(key, getter.expire, compute).await?,
        };
        Ok((value, value_at.load(Ordering::Relaxed)))
    }
}

/// The getter: sleeps, counts itself outside, returns the key's value, or fails while the origin
/// is down. Keys are made once, so that the benchmark measures the systems, not itself.
struct Getter {
    counters: Vec<Arc<memcached::Outside>>,
    /// The counting, off the getter's time: awaited before the phase reports.
    counting: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    next: AtomicUsize,
    sleep: Duration,
    expire: Duration,
    keys: Vec<String>,
    counter_keys: Vec<String>,
    down_keys: Vec<String>,
    /// Each value's `<k>:`.
    prefixes: Vec<String>,
    value_bytes: usize,
    compressible: bool,
    /// When the origin is down (Unix us, from..until), once the warm phase's start is known.
    outage: std::sync::OnceLock<(u64, u64)>,
    /// While "down", answer this slowly instead of failing.
    slow: Option<Duration>,
}

impl Getter {
    fn is_down(&self, at_us: u64) -> bool {
        self.outage
            .get()
            .is_some_and(|&(from, until)| (from..until).contains(&at_us))
    }

    /// Whether `value` is one of key `k`'s values.
    fn belongs(&self, k: usize, value: &str) -> bool {
        value.len() == self.value_bytes - 2 && value.starts_with(&self.prefixes[k])
    }

    async fn run(&self, k: usize) -> Result<String, HerdError> {
        let down = self.is_down(now_us());
        let counter =
            self.counters[self.next.fetch_add(1, Ordering::Relaxed) % self.counters.len()].clone();
        let key = self.counter_keys[k].clone();
        let down_key = down.then(|| self.down_keys[k].clone());
        let counting = tokio::spawn(async move {
            counter.increment(&key).await;
            if let Some(key) = down_key {
                counter.increment(&key).await;
            }
        });
        self.counting
            .lock()
            .expect("no panic holding it")
            .push(counting);
        match (down, self.slow) {
            (true, Some(slow)) => tokio::time::sleep(slow).await,
            (true, None) => {
                tokio::time::sleep(self.sleep).await;
                return Err(HerdError::Origin);
            }
            (false, _) => tokio::time::sleep(self.sleep).await,
        }
        Ok(value_of(
            k,
            self.value_bytes,
            now_us() / 1000,
            self.compressible,
        ))
    }

    /// Waits until every run so far is counted.
    async fn counted(&self) {
        let counting = std::mem::take(&mut *self.counting.lock().expect("no panic holding it"));
        for count in counting {
            count.await.expect("a count");
        }
    }
}

#[derive(Clone, Copy)]
enum Phase {
    Cold,
    Warm,
}

/// The random keys of one caller in one phase, from the run's seed: the same seed, the same keys
/// in the same order, whichever system runs them.
fn caller_rng(args: &Args, caller: usize, phase: Phase) -> fastrand::Rng {
    let seed = args.seed.expect("the coordinator passes --seed");
    let stream = (args.child_index << 32) | (caller as u64) << 1 | phase as u64;
    // Seeds that differ in a few bits start unrelated sequences: mix them first.
    fastrand::Rng::with_seed(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream)
}

/// What one warm caller saw.
#[derive(Default)]
struct Seen {
    up: Vec<u64>,
    down: Vec<u64>,
    wrong: u64,
    other: u64,
    origin: u64,
    backoff: u64,
    /// The latest return, after the origin came back, of a value computed before it went down,
    /// in us after it came back.
    recovery_us: u64,
}

impl Seen {
    fn add(&mut self, other: Seen) {
        self.up.extend(other.up);
        self.down.extend(other.down);
        self.wrong += other.wrong;
        self.other += other.other;
        self.origin += other.origin;
        self.backoff += other.backoff;
        self.recovery_us = self.recovery_us.max(other.recovery_us);
    }
}

async fn child(args: Args, run: String) {
    let counter = args
        .counter
        .clone()
        .expect("the coordinator passes --counter");
    let mut counters = Vec::new();
    for _ in 0..4 {
        counters.push(Arc::new(memcached::Outside::connect(&counter).await));
    }
    let getter = Arc::new(Getter {
        counters,
        counting: std::sync::Mutex::new(Vec::new()),
        next: AtomicUsize::new(0),
        sleep: Duration::from_millis(args.getter_ms),
        expire: args.expire,
        keys: (0..args.keys).map(|k| key(&run, k)).collect(),
        counter_keys: (0..args.keys).map(|k| counter_key(&run, k)).collect(),
        down_keys: (0..args.keys).map(|k| down_key(&run, k)).collect(),
        prefixes: (0..args.keys).map(|k| format!("{k}:")).collect(),
        value_bytes: args.value_bytes,
        compressible: args.compressible,
        outage: std::sync::OnceLock::new(),
        slow: args.origin_slow_ms.map(Duration::from_millis),
    });
    let system = Arc::new(match args.system.as_str() {
        "distcache" => {
            let mut builder = Cache::builder().servers(&args.servers);
            if let Some(ca) = &args.tls_ca_file {
                builder = builder.tls_ca_file(ca);
            }
            if let (Some(username), Some(password)) = (&args.username, &args.password) {
                builder = builder.credentials(username, password);
            }
            if args.signed {
                builder = builder.signing_keys([b"the herd's signing key, 32 bytes+".as_slice()]);
            }
            if let Some(max_stale) = args.stale_if_error {
                builder = builder.stale_if_error(max_stale);
            }
            if let Some(backoff) = args.error_backoff {
                builder = builder.error_backoff(backoff);
            }
            let detached = args.soft_timeout.map(|soft| {
                let mut options = GetOptions::new(EXEC_LIMIT, args.expire);
                if let Some(max_stale) = args.stale_if_error {
                    options = options.stale_if_error(max_stale);
                }
                options.soft_timeout(soft)
            });
            let near = args
                .near_ttl
                .map(|near| GetOptions::new(EXEC_LIMIT, args.expire).near_ttl(near));
            System::Distcache(builder.build().expect("a valid cache"), detached, near)
        }
        _ => System::Naive(Naive::new(&args.servers, args.naive_pool, args.value_bytes)),
    });
    let mut stdin = BufReader::new(std::io::stdin());
    let stdout = std::io::stdout();
    println!("ready");
    let mut line = String::new();
    stdin.read_line(&mut line).expect("read the coordinator");
    start_at(&line, "cold").await;

    let callers: Vec<_> = (0..args.callers)
        .map(|caller| {
            let (system, getter) = (system.clone(), getter.clone());
            let keys = args.keys;
            let mut rng = caller_rng(&args, caller, Phase::Cold);
            tokio::spawn(async move {
                let mut order: Vec<usize> = (0..keys).collect();
                rng.shuffle(&mut order);
                let mut calls = Vec::with_capacity(keys);
                for k in order {
                    let start = now_us();
                    let result = system.get(k, &getter).await;
                    let end = now_us();
                    let (ok, value_at) = match result {
                        Ok((value, value_at)) => (getter.belongs(k, &value), value_at),
                        Err(_) => (false, 0),
                    };
                    calls.push(Call {
                        proc: 0,
                        key: k,
                        start,
                        end,
                        value_at,
                        ok,
                    });
                }
                calls
            })
        })
        .collect();
    // Every caller finishes before anything is written: a write can block on the pipe.
    let mut all = Vec::new();
    for caller in callers {
        all.push(caller.await.expect("a caller"));
    }
    getter.counted().await;
    let mut out = std::io::BufWriter::new(stdout.lock());
    for c in all.into_iter().flatten() {
        writeln!(
            out,
            "call {} {} {} {} {}",
            c.key,
            c.start,
            c.end,
            c.value_at,
            u8::from(c.ok)
        )
        .unwrap();
    }
    let stats = system.stats();
    writeln!(out, "cold {} {}", stats.lease_waits, stats.wait_lookups).unwrap();
    out.flush().unwrap();
    drop(out);

    line.clear();
    stdin.read_line(&mut line).expect("read the coordinator");
    let warm_at: u64 = line
        .trim()
        .strip_prefix("warm ")
        .and_then(|at| at.parse().ok())
        .expect("warm <start_us>");
    let outage = (args.origin_down_for > 0.0).then(|| {
        let from = warm_at + (args.origin_down_after * 1e6) as u64;
        (from, from + (args.origin_down_for * 1e6) as u64)
    });
    if let Some(outage) = outage {
        getter.outage.set(outage).expect("set once");
    }
    let warm_until = args.warm_secs.map(|s| warm_at + (s * 1e6) as u64);
    start_at(&line, "warm").await;
    let before = system.stats();
    let per_caller = args.warm_gets / args.callers;
    let extra = args.warm_gets % args.callers;
    let zipf = Arc::new(args.zipf.map(|s| zipf_cdf(args.keys, s)));
    let start = now_us();
    let callers: Vec<_> = (0..args.callers)
        .map(|caller| {
            let (system, getter, zipf) = (system.clone(), getter.clone(), zipf.clone());
            let gets = per_caller + usize::from(caller < extra);
            let keys = args.keys;
            let mut rng = caller_rng(&args, caller, Phase::Warm);
            tokio::spawn(async move {
                let mut seen = Seen::default();
                let mut made = 0;
                loop {
                    let t = now_us();
                    match warm_until {
                        Some(until) if t >= until => break,
                        None if made == gets => break,
                        _ => made += 1,
                    }
                    let k = match &*zipf {
                        Some(cdf) => {
                            let u = rng.f64();
                            cdf.partition_point(|&p| p < u).min(keys - 1)
                        }
                        None => rng.usize(0..keys),
                    };
                    let result = system.get(k, &getter).await;
                    let end = now_us();
                    let down = outage.is_some_and(|(from, until)| (from..until).contains(&t));
                    if down { &mut seen.down } else { &mut seen.up }.push(end - t);
                    match result {
                        Ok((value, _)) if getter.belongs(k, &value) => {
                            if let Some((from, until)) = outage
                                && end > until
                                && computed_at(&value).is_some_and(|ms| ms * 1000 < from)
                            {
                                seen.recovery_us = seen.recovery_us.max(end - until);
                            }
                        }
                        Ok(_) => seen.wrong += 1,
                        Err(Failure::Origin) => seen.origin += 1,
                        Err(Failure::Backoff) => seen.backoff += 1,
                        Err(Failure::Other(err)) => {
                            if seen.other == 0 {
                                eprintln!("herd: a warm call failed: {err}");
                            }
                            seen.other += 1;
                        }
                    }
                }
                seen
            })
        })
        .collect();
    let mut seen = Seen::default();
    for caller in callers {
        seen.add(caller.await.expect("a caller"));
    }
    let end = now_us();
    getter.counted().await;
    let after = system.stats();
    let mut out = std::io::BufWriter::new(stdout.lock());
    writeln!(
        out,
        "warm {start} {end} {} {} {} {} {} {} {} {} {}",
        seen.wrong,
        seen.other,
        seen.origin,
        seen.backoff,
        after.coalesced_waits - before.coalesced_waits,
        after.stale_served - before.stale_served,
        seen.recovery_us,
        after.soft_timeouts - before.soft_timeouts,
        after.near_hits - before.near_hits
    )
    .unwrap();
    for (name, latencies) in [("up", &seen.up), ("down", &seen.down)] {
        write!(out, "{name}").unwrap();
        for l in latencies {
            write!(out, " {l}").unwrap();
        }
        writeln!(out).unwrap();
    }
    out.flush().unwrap();
}

// ---------------------------------------------------------------------------------------------
// The baseline: what a user writes by hand.

/// A deadpool pool of async-memcached clients per server, the server picked by the same ring.
struct Naive {
    ring: Ring,
    pools: HashMap<Server, deadpool::managed::Pool<NaiveManager>>,
    /// Values' size as JSON: over [`NAIVE_PART`], each is split by hand.
    value_bytes: usize,
}

/// The largest item naive stores. A larger value is split by hand into parts of this size under
/// `<key>/<i>`, each placed by the ring, and read back with one plain get per part, all at once:
/// the same bytes as plain gets, with nothing on top (no compression, no digest, no version).
const NAIVE_PART: usize = 1_000_000;

struct NaiveManager {
    addr: String,
}

impl deadpool::managed::Manager for NaiveManager {
    type Type = async_memcached::Client;
    type Error = async_memcached::Error;

    async fn create(&self) -> Result<async_memcached::Client, async_memcached::Error> {
        async_memcached::Client::new(format!("tcp://{}", self.addr)).await
    }

    async fn recycle(
        &self,
        client: &mut async_memcached::Client,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<async_memcached::Error> {
        if client.is_closed() {
            return Err(deadpool::managed::RecycleError::message("closed"));
        }
        Ok(())
    }
}

impl Naive {
    fn new(servers: &[String], pool_size: usize, value_bytes: usize) -> Self {
        let servers: Vec<Server> = servers
            .iter()
            .map(|s| s.parse().expect("a server"))
            .collect();
        let pools = servers
            .iter()
            .map(|server| {
                let manager = NaiveManager {
                    addr: server.to_string(),
                };
                let pool = deadpool::managed::Pool::builder(manager)
                    .max_size(pool_size)
                    .runtime(deadpool::Runtime::Tokio1)
                    .build()
                    .expect("a pool");
                (server.clone(), pool)
            })
            .collect();
        Naive {
            ring: Ring::new(servers).expect("a ring"),
            pools,
            value_bytes,
        }
    }

    /// Get; on a miss, compute and set (in parts, over [`NAIVE_PART`]).
    async fn get<F, Fut>(&self, key: &str, expire: Duration, compute: F) -> Result<String, Failure>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<String, HerdError>>,
    {
        let other = |e: &dyn std::fmt::Display| Failure::Other(e.to_string());
        let keys: Vec<String> = match self.value_bytes.div_ceil(NAIVE_PART) {
            1 => vec![key.to_owned()],
            parts => (0..parts).map(|i| format!("{key}/{i}")).collect(),
        };
        let parts = join_all(keys.iter().map(|key| self.get_item(key))).await;
        if parts.iter().all(|part| matches!(part, Ok(Some(_)))) {
            let mut json = Vec::with_capacity(self.value_bytes);
            for part in parts {
                json.extend_from_slice(&part?.expect("checked above"));
            }
            return serde_json::from_slice(&json).map_err(|e| other(&e));
        }
        let value = compute().await.map_err(|e| match e {
            HerdError::Origin => Failure::Origin,
            HerdError::Cache(e) => other(&e),
        })?;
        let json = serde_json::to_vec(&value).map_err(|e| other(&e))?;
        let sets = keys
            .iter()
            .zip(json.chunks(NAIVE_PART))
            .map(|(key, part)| self.set_item(key, part, expire));
        for set in join_all(sets).await {
            set?;
        }
        Ok(value)
    }

    async fn get_item(&self, key: &str) -> Result<Option<Vec<u8>>, Failure> {
        let other = |e: &dyn std::fmt::Display| Failure::Other(e.to_string());
        let pool = &self.pools[self.ring.server_for(key.as_bytes())];
        let mut client = pool.get().await.map_err(|e| other(&e))?;
        let got = client.get(key).await.map_err(|e| other(&e))?;
        Ok(got.and_then(|v| v.data))
    }

    async fn set_item(&self, key: &str, data: &[u8], expire: Duration) -> Result<(), Failure> {
        let other = |e: &dyn std::fmt::Display| Failure::Other(e.to_string());
        let pool = &self.pools[self.ring.server_for(key.as_bytes())];
        let mut client = pool.get().await.map_err(|e| other(&e))?;
        client
            .set(key, data, Some(expire.as_secs() as i64), None)
            .await
            .map_err(|e| other(&e))
    }
}
