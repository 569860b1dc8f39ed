//! Herds of real processes under faults, checked from their history (issue 12, items 2 and 5).
//!
//! Every scenario runs 3 memcached nodes, each behind a fault proxy (`support/proxy.rs`) the
//! parent owns, and a fourth memcached, outside any proxy, that counts the getter's runs outside
//! the library. It re-spawns this binary as 4 child processes (`DISTCACHE_TEST_ROLE=herd`) of 32
//! callers each (F9: 4 x 8). Each caller loops over the keys of the current *wave* (a new set of
//! keys every `wave`, so that the herd stampedes on fresh keys all along, not only at its start)
//! in a shuffled order, pausing a little between calls, until the parent says `stop`. Meanwhile
//! the parent applies the scenario's fault. Each child then writes its history (every call, every
//! getter run, every change it saw in `node_stats`) to a file; the parent merges them and checks
//! them with `support/history.rs`.
//!
//! No libtest harness (`harness = false` in Cargo.toml): `main` runs the scenarios one at a time,
//! those whose names contain an argument if any are given, prints each one's figures, and panics
//! (a non-zero exit) at the end if any failed. With `DC_KEEP` set, the children's histories
//! (JSON, one file per process) are left in `$TMPDIR/distcache-herds-<pid>-<scenario>/`; with
//! `RUST_LOG` set (`distcache=warn`), the children log the library's events on stderr.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use distcache::{Cache, Error, OnUnavailable};
use support::history::{
    Call, Failure, Figures, History, NodeSample, ProcStats, Run, now_us, parse_value, us, value_for,
};
use support::kids::{Kid, ROLE, line_from, say, spawn};
use support::memcached::{Memcached, Outside};
use support::proxy::{Fault, FaultProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const PROCESSES: usize = 4;
const SERVERS: usize = 3;
/// The node the single-node faults strike.
const VICTIM: usize = 1;

/// How often a child looks at `node_stats`: a change is seen this long after it at most (plus
/// the child's scheduling).
const SAMPLE: Duration = Duration::from_millis(50);

/// Slack on every time bound: the scheduling of 4 children of 32 callers, 4 memcached servers
/// and the parent's 3 proxies (which relay every byte) on 2 cores, in a debug build. Twice the
/// 250 ms floor: on this machine a task may wait that long for a core.
const SLACK: Duration = Duration::from_millis(500);

/// How long any wait for the fleet to do something may take before the scenario fails.
const PATIENCE: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    if let Ok(role) = std::env::var(ROLE) {
        assert_eq!(role, "herd", "the only child role");
        return runtime.block_on(herd_child());
    }
    let tests: [Scenario; 9] = [
        ("history_checker_catches_bad_histories", || {
            Box::pin(async { history_checker_catches_bad_histories() })
        }),
        ("f1_a_node_killed_mid_herd", || {
            Box::pin(f1_a_node_killed_mid_herd())
        }),
        ("f2_a_node_paused_for_5s", || {
            Box::pin(f2_a_node_paused_for_5s())
        }),
        ("f3_a_node_restarted_empty", || {
            Box::pin(f3_a_node_restarted_empty())
        }),
        ("f4_every_node_unreachable_runs_getters_degraded", || {
            Box::pin(f4_every_node_unreachable(OnUnavailable::RunGetter))
        }),
        ("f4_every_node_unreachable_fails_with_unavailable", || {
            Box::pin(f4_every_node_unreachable(OnUnavailable::Fail))
        }),
        ("f5_replies_delayed_50ms_then_800ms", || {
            Box::pin(f5_replies_delayed_50ms_then_800ms())
        }),
        ("f9_a_failing_or_panicking_getter_is_rerun_at_once", || {
            Box::pin(f9_a_failing_or_panicking_getter_is_rerun_at_once())
        }),
        ("f14_connections_cut_mid_reply_or_reset", || {
            Box::pin(f14_connections_cut_mid_reply_or_reset())
        }),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        print!("test {name} ... ");
        let _ = std::io::stdout().flush();
        let started = Instant::now();
        // A failed assertion panics; the next scenarios still run (their figures tell more than
        // the first failure alone), and the binary panics at the end: cargo reports the failure.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(120), test()).await })
                .expect("the test finishes within 120 s");
        }));
        let took = started.elapsed().as_secs_f64();
        if outcome.is_ok() {
            println!("ok ({took:.1}s)");
        } else {
            println!("FAILED ({took:.1}s)");
            failed.push(name);
        }
        for line in std::mem::take(&mut *FIGURES.lock().unwrap()) {
            println!("    {line}");
        }
    }
    assert!(failed.is_empty(), "failed scenarios: {failed:?}");
    ExitCode::SUCCESS
}

/// A test scenario: its name and what runs it. It reports its figures with [`figure`].
type Scenario = (&'static str, fn() -> Test);
type Test = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

// ---------------------------------------------------------------------------------------------
// The configuration of a herd, passed to the children in their environment.

/// What a herd's children do, and the cache settings they do it with.
#[derive(Debug, Clone)]
struct Config {
    processes: usize,
    callers: usize,
    /// Keys per wave.
    keys: usize,
    /// How long a wave of keys lasts; the keys of wave `n` are `w{n}:{i}`, with `n` the wall
    /// clock divided by `wave`, the same in every process.
    wave: Duration,
    /// How long the getter takes.
    getter: Duration,
    /// The most a caller pauses between two calls (uniformly from half of it): it paces the
    /// herd at about 2,500 calls a second, so that its history stays a few megabytes.
    think: Duration,
    connect_timeout: Duration,
    io_timeout: Duration,
    retry_interval: Duration,
    failure_threshold: u32,
    max_poll_interval: Duration,
    exec_limit: Duration,
    expire: Duration,
    on_unavailable: OnUnavailable,
    /// Each wave also has a key whose getter's first run fails (`w{n}:fail`) and one whose
    /// first run panics (`w{n}:panic`).
    failing_keys: bool,
}

impl Config {
    fn standard() -> Self {
        Config {
            processes: PROCESSES,
            callers: 32,
            keys: 30,
            wave: Duration::from_secs(2),
            getter: Duration::from_millis(100),
            think: Duration::from_millis(75),
            connect_timeout: Duration::from_millis(300),
            io_timeout: Duration::from_millis(500),
            retry_interval: Duration::from_secs(1),
            failure_threshold: 2,
            max_poll_interval: Duration::from_millis(200),
            exec_limit: Duration::from_secs(60),
            // Longer than any scenario: each key's window covers the whole scenario.
            expire: Duration::from_secs(60),
            on_unavailable: OnUnavailable::RunGetter,
            failing_keys: false,
        }
    }

    /// What no call may exceed under a node's fault, far under the promise's bound (README,
    /// "Bounded": `exec_limit` + `connect_timeout` + `io_timeout`): its getter, a
    /// request that times out (`io_timeout`) or a connect that fails (`connect_timeout`) before
    /// its node is marked down, a wait on a lease whose holder lost its node (the lease, 4 s,
    /// and a poll).
    fn fault_bound(&self) -> Duration {
        const LEASE: Duration = Duration::from_secs(4);
        self.getter
            + self.io_timeout
            + self.connect_timeout
            + LEASE
            + self.max_poll_interval
            + SLACK
    }

    /// A node is seen marked down within this of its fault: the first request to time out
    /// (`io_timeout`; a dead node refuses at once), then a child's sample.
    fn down_within(&self) -> Duration {
        self.io_timeout + SAMPLE + SLACK
    }

    /// A node whose fault has ended is back within `retry_interval` and one probe: the last
    /// probe that failed may have started just before the fault ended and takes up to
    /// `connect_timeout + io_timeout` to fail (a connect, then a request); the next comes
    /// `retry_interval` after and takes as long at most to succeed; a child sees it within
    /// `SAMPLE`.
    fn back_within(&self) -> Duration {
        self.retry_interval + 2 * (self.connect_timeout + self.io_timeout) + SAMPLE + SLACK
    }

    fn envs(&self) -> Vec<(&'static str, String)> {
        let ms = |d: Duration| d.as_millis().to_string();
        vec![
            ("DC_CALLERS", self.callers.to_string()),
            ("DC_KEYS", self.keys.to_string()),
            ("DC_WAVE_MS", ms(self.wave)),
            ("DC_GETTER_MS", ms(self.getter)),
            ("DC_THINK_MS", ms(self.think)),
            ("DC_CONNECT_MS", ms(self.connect_timeout)),
            ("DC_IO_MS", ms(self.io_timeout)),
            ("DC_RETRY_MS", ms(self.retry_interval)),
            ("DC_THRESHOLD", self.failure_threshold.to_string()),
            ("DC_POLL_MS", ms(self.max_poll_interval)),
            ("DC_EXEC_MS", ms(self.exec_limit)),
            ("DC_EXPIRE_MS", ms(self.expire)),
            (
                "DC_FAIL_UNAVAILABLE",
                (self.on_unavailable == OnUnavailable::Fail).to_string(),
            ),
            ("DC_FAILING_KEYS", self.failing_keys.to_string()),
        ]
    }

    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set"));
        let ms = |name: &str| Duration::from_millis(var(name).parse().unwrap());
        Config {
            processes: 0,
            callers: var("DC_CALLERS").parse().unwrap(),
            keys: var("DC_KEYS").parse().unwrap(),
            wave: ms("DC_WAVE_MS"),
            getter: ms("DC_GETTER_MS"),
            think: ms("DC_THINK_MS"),
            connect_timeout: ms("DC_CONNECT_MS"),
            io_timeout: ms("DC_IO_MS"),
            retry_interval: ms("DC_RETRY_MS"),
            failure_threshold: var("DC_THRESHOLD").parse().unwrap(),
            max_poll_interval: ms("DC_POLL_MS"),
            exec_limit: ms("DC_EXEC_MS"),
            expire: ms("DC_EXPIRE_MS"),
            on_unavailable: if var("DC_FAIL_UNAVAILABLE") == "true" {
                OnUnavailable::Fail
            } else {
                OnUnavailable::RunGetter
            },
            failing_keys: var("DC_FAILING_KEYS") == "true",
        }
    }

    /// The wave a moment (microseconds since the epoch) falls in.
    fn wave_at(&self, at: u64) -> u64 {
        at / us(self.wave)
    }

    /// The keys of wave `wave`.
    fn keys_of(&self, wave: u64) -> Vec<String> {
        let mut keys: Vec<String> = (0..self.keys).map(|i| format!("w{wave}:{i}")).collect();
        if self.failing_keys {
            keys.push(format!("w{wave}:fail"));
            keys.push(format!("w{wave}:panic"));
        }
        keys
    }

    /// When `key`'s wave starts and ends (microseconds since the epoch).
    fn wave_span(&self, key: &str) -> (u64, u64) {
        let wave: u64 = key
            .strip_prefix('w')
            .and_then(|k| k.split(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{key:?} is a wave's key"));
        (wave * us(self.wave), (wave + 1) * us(self.wave))
    }
}

// ---------------------------------------------------------------------------------------------
// The child: a herd of callers in one process.

/// The herd's state, as the parent says it on the child's stdin.
const WAITING: u8 = 0;
const GOING: u8 = 1;
const STOPPING: u8 = 2;

/// What a child's callers share.
struct Ctx {
    config: Config,
    proc: usize,
    cache: Cache,
    counter: Outside,
    runs: Mutex<Vec<Run>>,
    /// Runs under way per key in this process.
    running: Mutex<HashMap<String, usize>>,
    state: watch::Receiver<u8>,
}

impl Ctx {
    fn stopping(&self) -> bool {
        *self.state.borrow() == STOPPING
    }
}

/// A call's error: the cache's, or the getter's own.
#[derive(Debug)]
enum CallError {
    Cache(Error),
    Getter(String),
}

impl From<Error> for CallError {
    fn from(err: Error) -> Self {
        CallError::Cache(err)
    }
}

impl CallError {
    fn failure(&self) -> Failure {
        let (kind, message) = match self {
            CallError::Getter(message) => ("getter", message.clone()),
            CallError::Cache(err) => {
                let kind = if matches!(err, Error::Unavailable { .. }) {
                    "unavailable"
                } else if matches!(err, Error::Timeout { .. }) {
                    "timeout"
                } else if matches!(err, Error::GetterPanicked { .. }) {
                    "panicked"
                } else {
                    "other"
                };
                (kind, err.to_string())
            }
        };
        Failure {
            kind: kind.to_owned(),
            message,
        }
    }
}

/// Records one run of the getter when dropped, however it ends (a run cut off at the call's
/// `exec_limit` is dropped mid-way), and keeps the count of the key's runs under way.
struct RunGuard<'a> {
    ctx: &'a Ctx,
    run: Run,
}

impl<'a> RunGuard<'a> {
    fn start(ctx: &'a Ctx, key: &str, run: u64, start: u64) -> Self {
        let concurrent = {
            let mut running = ctx.running.lock().unwrap();
            let count = running.entry(key.to_owned()).or_default();
            *count += 1;
            *count
        };
        RunGuard {
            ctx,
            run: Run {
                proc: ctx.proc,
                key: key.to_owned(),
                run,
                start,
                end: 0,
                outcome: "dropped".to_owned(),
                concurrent,
            },
        }
    }

    fn ended(&mut self, outcome: &str) {
        outcome.clone_into(&mut self.run.outcome);
    }
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        self.run.end = now_us();
        *self
            .ctx
            .running
            .lock()
            .unwrap()
            .get_mut(&self.run.key)
            .expect("counted at its start") -= 1;
        self.ctx.runs.lock().unwrap().push(self.run.clone());
    }
}

/// The getter: numbers its run on the counter outside the library, takes `config.getter`, and
/// returns a value that names its key and run (`w{n}:fail` and `w{n}:panic` fail or panic on
/// their first run).
async fn getter(ctx: &Ctx, key: &str) -> Result<String, CallError> {
    let start = now_us();
    let run = ctx.counter.incr(&format!("runs:{key}")).await;
    let mut guard = RunGuard::start(ctx, key, run, start);
    tokio::time::sleep(ctx.config.getter).await;
    if ctx.config.failing_keys && run == 1 {
        if key.ends_with(":fail") {
            guard.ended("error");
            return Err(CallError::Getter(format!("run {run} of {key} fails")));
        }
        if key.ends_with(":panic") {
            guard.ended("panic");
            drop(guard);
            panic!("run {run} of {key} panics (planned)");
        }
    }
    guard.ended("ok");
    Ok(value_for(key, run))
}

/// One caller: the keys of the current wave in a shuffled order, again and again, until told to
/// stop.
async fn caller(ctx: Arc<Ctx>, caller: usize) -> Vec<Call> {
    let config = &ctx.config;
    let mut rng = fastrand::Rng::with_seed((ctx.proc * 1000 + caller) as u64 ^ now_us());
    let mut calls = Vec::new();
    let (mut wave, mut keys, mut next) = (u64::MAX, Vec::new(), 0);
    while !ctx.stopping() {
        let now = config.wave_at(now_us());
        if now != wave || next == keys.len() {
            (wave, keys, next) = (now, config.keys_of(now), 0);
            rng.shuffle(&mut keys);
        }
        let key = &keys[next];
        next += 1;
        let start = now_us();
        let result: Result<String, CallError> = ctx
            .cache
            .get(key, config.exec_limit, config.expire, || getter(&ctx, key))
            .await;
        calls.push(Call {
            proc: ctx.proc,
            caller,
            key: key.clone(),
            start,
            end: now_us(),
            outcome: result.map_err(|err| err.failure()),
        });
        // Pacing, not synchronisation: it keeps the herd's history a few megabytes.
        let think = config.think.as_micros() as u64;
        tokio::time::sleep(Duration::from_micros(rng.u64(think / 2..=think))).await;
    }
    calls
}

/// Samples `node_stats` every `SAMPLE` until the herd stops; records each change, and tells the
/// parent of each node marked down or back through the counter (`down:{server}:{proc}`,
/// `back:{server}:{proc}`), so that it can wait for them.
async fn sampler(ctx: Arc<Ctx>) -> Vec<NodeSample> {
    let mut samples: Vec<NodeSample> = Vec::new();
    let mut last: Vec<Option<NodeSample>> = vec![None; SERVERS];
    loop {
        let stopping = ctx.stopping();
        let at = now_us();
        for (server, node) in ctx.cache.node_stats().into_iter().enumerate() {
            let sample = NodeSample {
                proc: ctx.proc,
                at,
                server,
                down: node.down,
                marked_down: node.marked_down,
                back: node.back,
            };
            let seen = last[server].as_ref();
            if seen.is_some_and(|s| {
                (s.down, s.marked_down, s.back) == (node.down, node.marked_down, node.back)
            }) {
                continue;
            }
            if seen.is_some_and(|s| s.marked_down < node.marked_down) {
                ctx.counter
                    .incr(&format!("down:{server}:{}", ctx.proc))
                    .await;
            }
            if seen.is_some_and(|s| s.back < node.back) {
                ctx.counter
                    .incr(&format!("back:{server}:{}", ctx.proc))
                    .await;
            }
            samples.push(sample.clone());
            last[server] = Some(sample);
        }
        if stopping {
            return samples;
        }
        tokio::time::sleep(SAMPLE).await;
    }
}

async fn herd_child() -> ExitCode {
    // The planned panics of `w{n}:panic` are caught by the cache: keep them out of the log.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let planned = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|m| m.ends_with("(planned)"));
        if !planned {
            default_hook(info);
        }
    }));
    // `RUST_LOG=distcache=warn` shows the library's events (the children's lines interleave).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set"));
    let config = Config::from_env();
    let proc: usize = var("DC_PROC").parse().unwrap();
    let mut builder = Cache::builder()
        .servers(var("DC_SERVERS").split(','))
        .connect_timeout(config.connect_timeout)
        .io_timeout(config.io_timeout)
        .retry_interval(config.retry_interval)
        .failure_threshold(config.failure_threshold)
        .max_poll_interval(config.max_poll_interval);
    if config.on_unavailable == OnUnavailable::Fail {
        builder = builder.on_unavailable(OnUnavailable::Fail);
    }
    let cache = builder.build().unwrap();
    let counter = Outside::connect(&var("DC_COUNTER")).await;
    let (say, state) = watch::channel(WAITING);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line.as_deref().map(str::trim) {
                Ok("go") => say.send_replace(GOING),
                Ok("stop") => say.send_replace(STOPPING),
                other => panic!("unexpected line from the parent: {other:?}"),
            };
        }
        // The parent is gone: stop.
        say.send_replace(STOPPING);
    });
    let ctx = Arc::new(Ctx {
        config,
        proc,
        cache,
        counter,
        runs: Mutex::default(),
        running: Mutex::default(),
        state: state.clone(),
    });
    println!("ready");
    state
        .clone()
        .wait_for(|s| *s != WAITING)
        .await
        .expect("the parent says go");
    let sampling = tokio::spawn(sampler(ctx.clone()));
    let callers: Vec<_> = (0..ctx.config.callers)
        .map(|c| tokio::spawn(caller(ctx.clone(), c)))
        .collect();
    let mut history = History::default();
    for caller in callers {
        history.calls.extend(caller.await.expect("a caller"));
    }
    history.nodes = sampling.await.expect("the sampler");
    history.runs = std::mem::take(&mut *ctx.runs.lock().unwrap());
    let stats = ctx.cache.stats();
    history.stats.push(ProcStats {
        proc,
        getter_runs: stats.getter_runs,
        degraded_calls: stats.degraded_calls,
        lost_fills: stats.lost_fills,
        lease_waits: stats.lease_waits,
        store_errors: stats.store_errors,
    });
    let path = var("DC_HISTORY");
    let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    serde_json::to_writer(file, &history).unwrap();
    let failed = history.failed().len();
    println!("done {} {failed}", history.calls.len());
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------------
// The parent: the fleet, its faults, and the history.

/// The servers, their proxies, the counter and the children of one scenario.
struct Fleet {
    config: Config,
    nodes: [Memcached; SERVERS],
    proxies: Vec<FaultProxy>,
    /// Kept running until the fleet is dropped.
    _counter: Memcached,
    outside: Outside,
    /// A cache on the proxies' addresses, never used for I/O: where each key lives.
    ring: Cache,
    dir: PathBuf,
    kids: Vec<Kid>,
}

/// What a herd left: its history, and each key's getter runs by the counter.
struct Herd {
    history: History,
    produced: BTreeMap<String, u64>,
}

impl Drop for Fleet {
    /// A scenario that failed leaves its children running: stop them (a child that finished is
    /// already reaped), and remove the histories.
    fn drop(&mut self) {
        for kid in &mut self.kids {
            if kid.child.try_wait().ok().flatten().is_none() {
                let _ = kid.child.kill();
                let _ = kid.child.wait();
            }
        }
        if std::env::var_os("DC_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Fleet {
    /// Starts the servers, the proxies and the children, and sets the herd going.
    async fn start(name: &str, config: Config) -> Self {
        let nodes = Memcached::start_many::<SERVERS>().await;
        let mut proxies = Vec::new();
        for node in &nodes {
            proxies.push(FaultProxy::start(&node.addr()).await);
        }
        let counter = Memcached::start().await;
        let outside = Outside::connect(&counter.addr()).await;
        let servers: Vec<String> = proxies.iter().map(FaultProxy::addr).collect();
        let ring = Cache::builder().servers(&servers).build().unwrap();
        let dir =
            std::env::temp_dir().join(format!("distcache-herds-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut kids = Vec::new();
        for proc in 0..config.processes {
            let mut envs = config.envs();
            envs.extend([
                ("DC_SERVERS", servers.join(",")),
                ("DC_COUNTER", counter.addr()),
                ("DC_PROC", proc.to_string()),
                (
                    "DC_HISTORY",
                    dir.join(format!("{proc}.json")).display().to_string(),
                ),
            ]);
            kids.push(spawn("herd", &envs));
        }
        for kid in &mut kids {
            assert_eq!(line_from(kid).await, "ready");
        }
        // Every process waits for this line, so that all callers start together.
        for kid in &mut kids {
            say(kid.child.stdin.as_mut().unwrap(), "go");
        }
        Fleet {
            config,
            nodes,
            proxies,
            _counter: counter,
            outside,
            ring,
            dir,
            kids,
        }
    }

    /// The index of the server `key` lives on while every server is up.
    fn home(&self, key: &str) -> usize {
        let server = self.ring.server_for(key).unwrap().to_string();
        self.proxies
            .iter()
            .position(|p| p.addr() == server)
            .expect("one of the proxies")
    }

    /// How many times each process has seen `server` marked `what` (`down` or `back`).
    async fn seen(&self, what: &str, server: usize) -> Vec<u64> {
        let mut counts = Vec::new();
        for proc in 0..self.config.processes {
            counts.push(self.outside.count(&format!("{what}:{server}:{proc}")).await);
        }
        counts
    }

    /// Waits until every process has seen `server` marked `what` once more than in `since`.
    async fn until_all_saw(&self, what: &str, server: usize, since: &[u64]) {
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                let now = self.seen(what, server).await;
                if now.iter().zip(since).all(|(now, since)| now > since) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if waited.is_err() {
            panic!(
                "not every process saw node {server} {what} within {PATIENCE:?}: {:?} since {since:?}",
                self.seen(what, server).await
            );
        }
    }

    /// Stops the herd and gathers its history.
    async fn stop(&mut self) -> Herd {
        for kid in &mut self.kids {
            say(kid.child.stdin.as_mut().unwrap(), "stop");
        }
        let mut parts = Vec::new();
        for (proc, kid) in self.kids.iter_mut().enumerate() {
            let done = line_from(kid).await;
            assert!(
                done.starts_with("done "),
                "process {proc} ended its herd with {done:?}: {:?}",
                kid.child.wait()
            );
            assert!(kid.child.wait().unwrap().success(), "process {proc} exits");
            let path = self.dir.join(format!("{proc}.json"));
            let file = BufReader::new(std::fs::File::open(&path).unwrap());
            parts.push(serde_json::from_reader::<_, History>(file).unwrap());
        }
        let history = History::merge(parts);
        let mut produced = BTreeMap::new();
        for key in history.keys() {
            let runs = self.outside.count(&format!("runs:{key}")).await;
            produced.insert(key, runs);
        }
        Herd { history, produced }
    }
}

/// Lets the herd run for `d` while a fault holds (or does not): the scenario itself, not a
/// synchronisation.
async fn herd_for(d: Duration) {
    tokio::time::sleep(d).await;
}

/// `at` (microseconds since the epoch) relative to `origin`, in seconds, for messages.
fn secs(at: u64, origin: u64) -> String {
    format!("{:+.3}s", (at as f64 - origin as f64) / 1e6)
}

/// The most runs of any key among `keys`, by the counter.
fn max_runs(produced: &BTreeMap<String, u64>, keys: impl Fn(&str) -> bool) -> u64 {
    produced
        .iter()
        .filter(|(k, _)| keys(k))
        .map(|(_, n)| *n)
        .max()
        .unwrap_or(0)
}

/// Checks that every process saw `server` marked down after `fault` and back within
/// `back_within` of `healed`; the latest time a process saw it back, and a line for the figures.
fn down_and_back(
    history: &History,
    config: &Config,
    server: usize,
    fault: u64,
    healed: u64,
) -> u64 {
    let seen: Vec<(Option<u64>, Option<u64>)> = (0..config.processes)
        .map(|proc| history.down_and_back(proc, server, fault))
        .collect();
    let show = |at: Option<u64>, origin: u64| at.map_or("never".to_owned(), |at| secs(at, origin));
    let lines: Vec<String> = seen
        .iter()
        .enumerate()
        .map(|(proc, (down, back))| {
            format!(
                "p{proc} down {} back {}",
                show(*down, fault),
                show(*back, healed)
            )
        })
        .collect();
    figure(format!(
        "node {server} marked down (after the fault began, bound {:?}) and back (after it \
         ended, bound {:?}): {}",
        config.down_within(),
        config.back_within(),
        lines.join(", ")
    ));
    for (proc, (down, back)) in seen.iter().enumerate() {
        let samples = history.node(proc, server);
        let down = down.unwrap_or_else(|| {
            panic!(
                "process {proc} never saw node {server} marked down after the fault: {samples:?}"
            )
        });
        assert!(
            down <= fault + us(config.down_within()),
            "process {proc} saw node {server} marked down {} after the fault began, over {:?}: \
             {samples:?}",
            secs(down, fault),
            config.down_within(),
        );
        let back = back
            .unwrap_or_else(|| panic!("process {proc} never saw node {server} back: {samples:?}"));
        assert!(
            back <= healed + us(config.back_within()),
            "process {proc} saw node {server} back {} after the fault ended, over {:?}: \
             {samples:?}",
            secs(back, healed),
            config.back_within(),
        );
    }
    seen.iter().filter_map(|(_, back)| *back).max().unwrap_or(0)
}

/// Each process's degraded calls and lost fills, and how many times it waited on a lease.
fn stats_line(history: &History) -> String {
    let per_proc = |f: fn(&ProcStats) -> u64| -> Vec<u64> { history.stats.iter().map(f).collect() };
    format!(
        "per process: degraded calls {:?}, lost fills {:?}, lease waits {:?}, store errors {:?}",
        per_proc(|s| s.degraded_calls),
        per_proc(|s| s.lost_fills),
        per_proc(|s| s.lease_waits),
        per_proc(|s| s.store_errors),
    )
}

/// The figures the running scenario has reported so far: printed after its result, passed or
/// failed.
static FIGURES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Reports a figure of the running scenario.
fn figure(line: String) {
    FIGURES.lock().unwrap().push(line);
}

// ---------------------------------------------------------------------------------------------
// The scenarios.

/// The checker catches what it is meant to: each bad history makes it panic, with a message
/// naming the fault.
fn history_checker_catches_bad_histories() {
    let key = "w1:0";
    let run = |run: u64, outcome: &str, concurrent: usize| Run {
        proc: 0,
        key: key.to_owned(),
        run,
        start: 1_000,
        end: 2_000,
        outcome: outcome.to_owned(),
        concurrent,
    };
    let call = |value: Result<String, Failure>, took: u64| Call {
        proc: 0,
        caller: 0,
        key: key.to_owned(),
        start: 1_000,
        end: 1_000 + took,
        outcome: value,
    };
    let good = History {
        calls: vec![call(Ok(value_for(key, 1)), 1_000)],
        runs: vec![run(1, "ok", 1)],
        ..History::default()
    };
    let produced: BTreeMap<String, u64> = [(key.to_owned(), 1)].into();
    let bound = Duration::from_millis(10);
    let check = |history: &History, produced: &BTreeMap<String, u64>| {
        history.check_integrity(produced);
        history.check_uniqueness(produced, |_| 1);
        history.check_bounded(bound);
        history.check_failed(0);
        history.check_one_run_at_a_time();
    };
    check(&good, &produced);
    assert_eq!(parse_value(&value_for("a:b#c", 7)), Some(("a:b#c", 7)));
    assert_eq!(parse_value("a#7#"), None, "unpadded");

    let mut wrong_key = good.clone();
    wrong_key.calls[0].outcome = Ok(value_for("w1:1", 1));
    let mut garbled = good.clone();
    garbled.calls[0].outcome = Ok(value_for(key, 1).replacen('.', "x", 1));
    let mut unknown_run = good.clone();
    unknown_run.calls[0].outcome = Ok(value_for(key, 2));
    let mut failed_run = good.clone();
    failed_run.runs[0].outcome = "error".into();
    let mut slow = good.clone();
    slow.calls[0].end = slow.calls[0].start + us(bound) + 1;
    let mut failed = good.clone();
    failed.calls.push(call(
        Err(Failure {
            kind: "timeout".into(),
            message: "no value".into(),
        }),
        10,
    ));
    let mut twice_at_once = good.clone();
    twice_at_once.runs.push(run(2, "ok", 2));
    let twice: BTreeMap<String, u64> = [(key.to_owned(), 2)].into();
    let bad: [(&str, &History, &BTreeMap<String, u64>); 8] = [
        ("integrity", &wrong_key, &produced),
        ("integrity", &garbled, &produced),
        ("integrity", &unknown_run, &produced),
        ("integrity", &failed_run, &produced),
        ("boundedness", &slow, &produced),
        ("failures", &failed, &produced),
        ("uniqueness", &good, &twice),
        ("twice at once", &twice_at_once, &twice),
    ];
    // The panics are the point: keep their messages out of the log.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcomes: Vec<Result<(), String>> = bad
        .iter()
        .map(|(_, history, produced)| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if history.runs.len() == 2 {
                    // Allowed twice, so that only the overlap is wrong.
                    history.check_integrity(produced);
                    history.check_uniqueness(produced, |_| 2);
                    history.check_one_run_at_a_time();
                } else {
                    check(history, produced);
                }
            }))
            .map_err(|panic| panic.downcast_ref::<String>().cloned().unwrap_or_default())
        })
        .collect();
    std::panic::set_hook(hook);
    for ((what, history, _), outcome) in bad.iter().zip(outcomes) {
        let message = outcome.expect_err(&format!("the checker lets through {history:?}"));
        assert!(
            message.contains(what),
            "a bad history is caught for its fault ({what}): {message}"
        );
    }
    figure(format!("{} bad histories caught", bad.len()));
}

/// F1: one of the 3 nodes is SIGKILLed during the herd.
async fn f1_a_node_killed_mid_herd() {
    let config = Config::standard();
    let mut fleet = Fleet::start("f1", config.clone()).await;
    herd_for(Duration::from_millis(2500)).await;
    let since = fleet.seen("down", VICTIM).await;
    let killed = now_us();
    fleet.nodes[VICTIM].kill();
    fleet.until_all_saw("down", VICTIM, &since).await;
    herd_for(Duration::from_secs(3)).await;
    let Herd { history, produced } = fleet.stop().await;

    let victims = |k: &str| fleet.home(k) == VICTIM;
    figure(format!(
        "{} (bound {:?})",
        Figures::of(&history, &produced),
        config.fault_bound()
    ));
    figure(format!(
        "max runs per key: {} on the killed node's keys, {} on the others'",
        max_runs(&produced, victims),
        max_runs(&produced, |k| !victims(k)),
    ));
    let downs: Vec<String> = (0..config.processes)
        .map(|p| {
            let down = history.down_and_back(p, VICTIM, killed).0;
            down.map_or("never".into(), |d| secs(d, killed))
        })
        .collect();
    figure(format!(
        "killed node marked down after the kill, per process: {}",
        downs.join(", ")
    ));
    figure(stats_line(&history));

    history.check_failed(0);
    history.check_integrity(&produced);
    history.check_bounded(config.fault_bound());
    // The killed node's keys are computed once more, on their new node; no other key moves.
    history.check_uniqueness(&produced, |key| if victims(key) { 2 } else { 1 });
}

/// F2: one node SIGSTOPped for 5 s, then SIGCONT.
async fn f2_a_node_paused_for_5s() {
    let config = Config::standard();
    let mut fleet = Fleet::start("f2", config.clone()).await;
    herd_for(Duration::from_millis(2500)).await;
    let since = fleet.seen("back", VICTIM).await;
    fleet.nodes[VICTIM].pause();
    let paused = now_us();
    herd_for(Duration::from_secs(5)).await;
    fleet.nodes[VICTIM].resume();
    let resumed = now_us();
    fleet.until_all_saw("back", VICTIM, &since).await;
    // Long enough for well over 2,000 calls after the node is back everywhere.
    herd_for(Duration::from_secs(2)).await;
    let Herd { history, produced } = fleet.stop().await;

    let victims = |k: &str| fleet.home(k) == VICTIM;
    figure(format!(
        "{} (bound {:?})",
        Figures::of(&history, &produced),
        config.fault_bound()
    ));
    figure(format!(
        "max runs per key: {} on the paused node's keys (not bounded by F2), {} on the others'",
        max_runs(&produced, victims),
        max_runs(&produced, |k| !victims(k)),
    ));
    figure(stats_line(&history));
    history.check_failed(0);
    history.check_integrity(&produced);
    history.check_bounded(config.fault_bound());
    let back = down_and_back(&history, &config, VICTIM, paused, resumed);
    // Afterwards, 2,000 calls and more, all with their key's value (checked above).
    let after = history.calls.iter().filter(|c| c.start >= back).count();
    figure(format!(
        "{after} calls after the node was back everywhere, all ok with their key's value"
    ));
    assert!(
        after >= 2000,
        "only {after} calls after the node was back everywhere"
    );
    // The other nodes' keys never move.
    history.check_uniqueness(&produced, |key| if victims(key) { u64::MAX } else { 1 });
}

/// F3: a node killed and, once every process has seen it down, restarted empty on the same
/// port a second later: back in the ring within `retry_interval` and a probe, and once back each
/// of its keys computed at most once more, fleet-wide.
async fn f3_a_node_restarted_empty() {
    let config = Config::standard();
    let mut fleet = Fleet::start("f3", config.clone()).await;
    herd_for(Duration::from_millis(2500)).await;
    let (downs, backs) = (
        fleet.seen("down", VICTIM).await,
        fleet.seen("back", VICTIM).await,
    );
    let killed = now_us();
    fleet.nodes[VICTIM].kill();
    fleet.until_all_saw("down", VICTIM, &downs).await;
    herd_for(Duration::from_secs(1)).await;
    fleet.nodes[VICTIM].restart().await;
    let restarted = now_us();
    fleet.until_all_saw("back", VICTIM, &backs).await;
    herd_for(Duration::from_secs(2)).await;
    let Herd { history, produced } = fleet.stop().await;

    let victims = |k: &str| fleet.home(k) == VICTIM;
    // Once back (in any process), each of its keys is computed at most once more, fleet-wide.
    let first_back = (0..config.processes)
        .filter_map(|p| history.down_and_back(p, VICTIM, killed).1)
        .min()
        .unwrap_or(u64::MAX);
    let mut after_back: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    for run in history.runs.iter().filter(|r| r.start >= first_back) {
        after_back.entry(&run.key).or_default().push(run);
    }
    figure(format!(
        "{} (bound {:?})",
        Figures::of(&history, &produced),
        config.fault_bound()
    ));
    figure(format!(
        "max runs per key: {} on the restarted node's keys ({} keys run twice or more), {} on \
         the others'; at most {} per key after it was back",
        max_runs(&produced, victims),
        produced
            .iter()
            .filter(|(k, n)| victims(k) && **n >= 2)
            .count(),
        max_runs(&produced, |k| !victims(k)),
        after_back.values().map(Vec::len).max().unwrap_or(0),
    ));
    figure(stats_line(&history));
    history.check_failed(0);
    history.check_integrity(&produced);
    history.check_bounded(config.fault_bound());
    down_and_back(&history, &config, VICTIM, killed, restarted);
    let over: Vec<String> = after_back
        .iter()
        .filter(|(_, runs)| runs.len() > 1)
        .map(|(key, runs)| {
            let runs: Vec<String> = runs.iter().map(|r| r.to_string()).collect();
            format!("{key}: {}", runs.join("; "))
        })
        .collect();
    assert!(
        over.is_empty(),
        "keys computed more than once after the node came back ({} after the restart): {} \
         keys, the first: {:#?}",
        secs(first_back, restarted),
        over.len(),
        &over[..over.len().min(5)]
    );
    // The other nodes' keys never move. (The restarted node's keys run once before the kill,
    // then on the next node while it is down (F1's figure), then once more after it is back:
    // reported above, bounded only after it is back.)
    history.check_uniqueness(&produced, |key| if victims(key) { u64::MAX } else { 1 });
}

/// The outage of F4.
const OUTAGE: Duration = Duration::from_secs(3);

/// F4: all 3 nodes unreachable for 3 s. The fault: every proxy black-holes (takes requests and
/// connections, never answers) and resets the connections open, so that each process's next
/// request must connect, and every connect is seen at the proxy (`accepted`), where a refused
/// one would not be.
async fn f4_every_node_unreachable(policy: OnUnavailable) {
    let config = Config {
        on_unavailable: policy,
        ..Config::standard()
    };
    let fail = policy == OnUnavailable::Fail;
    let mut fleet = Fleet::start(if fail { "f4-fail" } else { "f4" }, config.clone()).await;
    herd_for(Duration::from_millis(2500)).await;
    let mut backs = Vec::new();
    for server in 0..SERVERS {
        backs.push(fleet.seen("back", server).await);
    }
    for proxy in &fleet.proxies {
        proxy.set(Fault::BlackHole);
    }
    for proxy in &fleet.proxies {
        proxy.reset();
    }
    let began = now_us();
    let accepted: Vec<usize> = fleet.proxies.iter().map(FaultProxy::accepted).collect();
    let connects = |fleet: &Fleet| -> Vec<usize> {
        let proxies = fleet.proxies.iter().zip(&accepted);
        proxies.map(|(p, a)| p.accepted() - a).collect()
    };
    // The connects seen at each proxy over the outage, every 50 ms: a measurement, while the
    // outage (the scenario) lasts.
    let mut series: Vec<(u128, Vec<usize>)> = Vec::new();
    let outage = Instant::now();
    while outage.elapsed() < OUTAGE {
        let now = connects(&fleet);
        if series.last().is_none_or(|(_, last)| *last != now) {
            series.push((outage.elapsed().as_millis(), now));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected = connects(&fleet);
    for proxy in &fleet.proxies {
        proxy.set(Fault::Pass);
    }
    let ended = now_us();
    for (server, since) in backs.iter().enumerate() {
        fleet.until_all_saw("back", server, since).await;
    }
    herd_for(Duration::from_millis(1500)).await;
    let Herd { history, produced } = fleet.stop().await;

    // Calls that began once the store was gone, after any value computed before it reached
    // them (a getter's run), and ended before it came back.
    let settled = began + us(config.getter + SLACK);
    let inside: Vec<&Call> = history
        .calls
        .iter()
        .filter(|c| c.start >= settled && c.end <= ended)
        .collect();
    // The keys called in the outage, or as the nodes came back: those of the waves that overlap
    // it, and the one before (its last calls may straddle the outage's start).
    let window = (
        began.saturating_sub(us(config.wave)),
        ended + us(config.back_within()),
    );
    let in_outage = |key: &str| {
        let (from, to) = config.wave_span(key);
        from <= window.1 && to >= window.0
    };
    // No process connects to a node within `retry_interval` of its previous attempt. A connect
    // that gets no answer fails at `connect_timeout` and, the node having no other connection,
    // marks it down at once; a node marked down is tried again by one probe per
    // `retry_interval`. So each process connects to each node once as the outage begins (the
    // reset leaves it no connection), then at most once per `retry_interval` (in fact per
    // `retry_interval + connect_timeout`): at most `outage / retry_interval + 1` times.
    let per_process = (OUTAGE.as_millis() / config.retry_interval.as_millis()) as usize + 1;
    let bound = config.processes * per_process;
    let series: Vec<String> = series
        .iter()
        .map(|(ms, connects)| format!("{ms}ms {connects:?}"))
        .collect();
    figure(format!(
        "{} (bound {:?})",
        Figures::of(&history, &produced),
        config.fault_bound()
    ));
    figure(format!(
        "{} calls inside the outage; at most {} run of a key at once in a process; max runs per \
         key {} in or just after the outage, {} outside",
        inside.len(),
        history.runs.iter().map(|r| r.concurrent).max().unwrap_or(0),
        max_runs(&produced, in_outage),
        max_runs(&produced, |k| !in_outage(k)),
    ));
    figure(format!(
        "connects per node during the outage: {connected:?} (bound {} x {per_process} = \
         {bound}); so far, by time since it began: {}",
        config.processes,
        series.join(", ")
    ));
    figure(stats_line(&history));

    history.check_integrity(&produced);
    history.check_bounded(config.fault_bound());
    history.check_one_run_at_a_time();
    assert!(
        inside.len() > 100,
        "only {} calls in the outage",
        inside.len()
    );
    if fail {
        // Every call that failed did so with the typed error, while the store was unreachable
        // (or until each process's probe found it back).
        let healed = ended + us(config.back_within());
        let failures = history.failed();
        let wrong: Vec<&&Call> = failures
            .iter()
            .filter(|c| {
                c.outcome.as_ref().unwrap_err().kind != "unavailable"
                    || c.end < began
                    || c.start > healed
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "calls that failed otherwise than with Error::Unavailable during the outage \
             ({began}..{ended}): {}, the first: {:#?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
        let served: Vec<&&Call> = inside.iter().filter(|c| c.outcome.is_ok()).collect();
        assert!(
            served.is_empty(),
            "calls in the outage that did not fail: {}, the first: {:#?}",
            served.len(),
            &served[..served.len().min(5)]
        );
        figure(format!(
            "{} failed calls, all Error::Unavailable, in or just after the outage; every call \
             inside it failed",
            failures.len()
        ));
        let ran: Vec<&Run> = history
            .runs
            .iter()
            .filter(|r| r.start >= began + us(SLACK) && r.start <= ended)
            .collect();
        assert!(
            ran.is_empty(),
            "getters run without the store under OnUnavailable::Fail: {ran:?}"
        );
        // Keys called in the outage or as the nodes came back: once per node a key was routed
        // to while the processes disagreed on which nodes were back (README, "A node lost"),
        // and once more if the value of a lease won just before the outage was lost with its
        // connection; the others once.
        let allowed = SERVERS as u64 + 1;
        history.check_uniqueness(&produced, |key| if in_outage(key) { allowed } else { 1 });
    } else {
        history.check_failed(0);
        // Degraded: each call in the outage got a value computed in the outage.
        let stored: Vec<&&Call> = inside
            .iter()
            .filter(|c| history.run_of(c).is_none_or(|r| r.end < began))
            .collect();
        assert!(
            stored.is_empty(),
            "calls in the outage served a value computed before it: {:#?}",
            &stored[..stored.len().min(5)]
        );
        figure("every call inside the outage was served by a getter run in it".into());
        // Keys called in the outage run once per call (per process, shared by its concurrent
        // callers); the others once.
        history.check_uniqueness(&produced, |key| if in_outage(key) { u64::MAX } else { 1 });
    }
    assert!(
        connected.iter().all(|&c| c <= bound),
        "connects per node during the {OUTAGE:?} outage: {connected:?}, over {} x {per_process} \
         = {bound}; so far, by time since it began: {}",
        config.processes,
        series.join(", ")
    );
}

/// F5: replies delayed 50 ms on one node (nothing happens), then 800 ms for 5 s with
/// `io_timeout` 500 ms (the node is marked down, and back once they pass again).
async fn f5_replies_delayed_50ms_then_800ms() {
    let config = Config::standard();
    let mut fleet = Fleet::start("f5", config.clone()).await;
    herd_for(Duration::from_secs(2)).await;
    fleet.proxies[VICTIM].set(Fault::Latency(Duration::from_millis(50)));
    let slowed = now_us();
    herd_for(Duration::from_secs(4)).await;
    let since = fleet.seen("back", VICTIM).await;
    fleet.proxies[VICTIM].set(Fault::Latency(Duration::from_millis(800)));
    let stalled = now_us();
    herd_for(Duration::from_secs(5)).await;
    fleet.proxies[VICTIM].set(Fault::Pass);
    let healed = now_us();
    fleet.until_all_saw("back", VICTIM, &since).await;
    herd_for(Duration::from_millis(1500)).await;
    let Herd { history, produced } = fleet.stop().await;

    let victims = |k: &str| fleet.home(k) == VICTIM;
    // The keys of the waves over before the 800 ms began.
    let slow_phase = |key: &str| config.wave_span(key).1 + us(SLACK) < stalled;
    let slow_calls: Vec<&Call> = history
        .calls
        .iter()
        .filter(|c| c.start >= slowed && c.end < stalled)
        .collect();
    let slowest = slow_calls.iter().map(|c| c.latency()).max();
    figure(format!(
        "{} (bound {:?})",
        Figures::of(&history, &produced),
        config.fault_bound()
    ));
    figure(format!(
        "50 ms phase: {} calls, longest {:.3}s; max runs per key {}",
        slow_calls.len(),
        slowest.unwrap_or_default().as_secs_f64(),
        max_runs(&produced, slow_phase),
    ));
    figure(format!(
        "800 ms phase: max runs per key of the delayed node's waves from then on (not bounded \
         by F5): {}",
        max_runs(&produced, |k| !slow_phase(k) && victims(k)),
    ));
    figure(stats_line(&history));
    history.check_failed(0);
    history.check_integrity(&produced);
    history.check_bounded(config.fault_bound());
    // 50 ms: no node marked down, by any process, until the 800 ms began ...
    let marked: Vec<&NodeSample> = history
        .nodes
        .iter()
        .filter(|n| n.at < stalled && n.marked_down > 0)
        .collect();
    assert!(
        marked.is_empty(),
        "a node marked down under 50 ms of latency: {marked:?}"
    );
    // ... and no key computed twice: the keys of the waves over by then, and every key of the
    // other nodes.
    history.check_uniqueness(&produced, |key| {
        if slow_phase(key) || !victims(key) {
            1
        } else {
            u64::MAX
        }
    });
    // 800 ms: as F2.
    down_and_back(&history, &config, VICTIM, stalled, healed);
}

/// F9: a getter that fails (returns its error) or panics on one key; the next caller anywhere
/// runs it within `max_poll_interval` + 1 s.
async fn f9_a_failing_or_panicking_getter_is_rerun_at_once() {
    let config = Config {
        callers: 8,
        keys: 10,
        exec_limit: Duration::from_secs(30),
        failing_keys: true,
        ..Config::standard()
    };
    let mut fleet = Fleet::start("f9", config.clone()).await;
    herd_for(Duration::from_secs(7)).await;
    let Herd { history, produced } = fleet.stop().await;

    let failing = |key: &str| key.ends_with(":fail") || key.ends_with(":panic");
    let failed_runs: Vec<&Run> = history.runs.iter().filter(|r| r.outcome != "ok").collect();
    let failures = history.failed();
    // The next run of the key, anywhere, starts within max_poll_interval + 1 s of the failure,
    // when a caller waited for it or came meanwhile: one that got a value after the failure.
    // (A failure as the herd stops may have none.)
    let bound = config.max_poll_interval + Duration::from_secs(1);
    let mut gaps: Vec<(Duration, &Run, Option<&Run>)> = Vec::new();
    for failed in &failed_runs {
        let awaited = history.calls.iter().any(|c| {
            c.key == failed.key
                && c.outcome.is_ok()
                && c.end > failed.end
                && c.start < failed.end + us(bound)
        });
        if awaited {
            let next = history.run(&failed.key, failed.run + 1);
            let gap = next.map_or(Duration::MAX, |n| {
                Duration::from_micros(n.start.saturating_sub(failed.end))
            });
            gaps.push((gap, failed, next));
        }
    }
    let max_gap = gaps.iter().map(|(gap, ..)| *gap).max().unwrap_or_default();
    figure(format!(
        "{} (bound {:?})",
        Figures::of(&history, &produced),
        config.fault_bound()
    ));
    figure(format!(
        "{} failed or panicked runs, {} failed calls; {} failures awaited by other callers, \
         each rerun within {:.3}s at most (bound {bound:?})",
        failed_runs.len(),
        failures.len(),
        gaps.len(),
        max_gap.as_secs_f64(),
    ));
    figure(stats_line(&history));
    history.check_integrity(&produced);
    history.check_bounded(config.fault_bound());
    history.check_uniqueness(&produced, |key| if failing(key) { 2 } else { 1 });
    assert!(
        failed_runs.len() >= 4,
        "failing runs: {}",
        failed_runs.len()
    );
    // Each failure reaches its own caller, unchanged: the getter's error, or GetterPanicked.
    let wrong: Vec<&&Call> = failures
        .iter()
        .filter(|c| {
            let kind = &c.outcome.as_ref().unwrap_err().kind;
            !(c.key.ends_with(":fail") && kind == "getter"
                || c.key.ends_with(":panic") && kind == "panicked")
        })
        .collect();
    assert!(wrong.is_empty(), "calls failed otherwise: {wrong:#?}");
    assert_eq!(
        failures.len(),
        failed_runs.len(),
        "one failed call per failed run (its own caller's); the waiters try again: calls \
         {failures:#?}, runs {failed_runs:#?}"
    );
    for (gap, failed, next) in &gaps {
        let next = next.map_or("none".to_owned(), |n| n.to_string());
        assert!(
            *gap <= bound,
            "the next run began {gap:?} after the failure, over {bound:?}:\n  {failed}\n  {next}"
        );
    }
}

/// The length of the answer to `stats` and `stats settings` through `addr`: what a new
/// connection reads before its first reply.
async fn handshake_len(addr: &str) -> usize {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"stats\r\nstats settings\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while answer.windows(5).filter(|w| *w == b"END\r\n").count() < 2 {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the server answers stats");
        answer.extend_from_slice(&buf[..n]);
    }
    answer.len()
}

/// F14: during the herd, the connections to a healthy node are reset, then cut in a reply's
/// header, value or terminator: `CutRepliesAfter(n)` cuts each open connection at its next
/// reply bytes (it has passed more than `n` already), and each new one `n` bytes in; `n` is the
/// handshake's answer plus about 20 bytes (the first reply's header: `VA 130 c.. f.. k.. O..`),
/// 100 (its value of 130 bytes), or 176 (its value's CRLF), held until every process has
/// reconnected once. (The handshake's length is measured on a connection of our own; it varies
/// by a few bytes, so the cuts land about there. `tests/faults.rs` cuts at exact offsets with
/// one cache; this is the herd's view.)
async fn f14_connections_cut_mid_reply_or_reset() {
    let config = Config::standard();
    let mut fleet = Fleet::start("f14", config.clone()).await;
    herd_for(Duration::from_secs(2)).await;
    let proxy = &fleet.proxies[VICTIM];
    proxy.reset();
    herd_for(Duration::from_secs(2)).await;
    let mut cuts = Vec::new();
    for offset in [20, 100, 176] {
        let cut = handshake_len(&proxy.addr()).await + offset;
        let accepted = proxy.accepted();
        proxy.set(Fault::CutRepliesAfter(cut));
        // Held until as many connects as processes (each reconnects after its cut, at once or
        // after its retry interval if the cut marked the node down).
        tokio::time::timeout(PATIENCE, async {
            while proxy.accepted() < accepted + config.processes {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("every process reconnects after its cut");
        proxy.set(Fault::Pass);
        cuts.push(format!("{cut} ({} connects)", proxy.accepted() - accepted));
        herd_for(Duration::from_secs(2)).await;
    }
    let Herd { history, produced } = fleet.stop().await;

    // No caller waits long on a lease whose holder lost its connection: its getter, then at most
    // `retry_interval` (the node marked down meanwhile) and a poll.
    let bound = config.getter + config.retry_interval + config.max_poll_interval + SLACK;
    let victims = |k: &str| fleet.home(k) == VICTIM;
    let downs: Vec<u64> = (0..config.processes)
        .map(|p| history.node(p, VICTIM).last().map_or(0, |n| n.marked_down))
        .collect();
    figure(format!(
        "{} (bound {bound:?})",
        Figures::of(&history, &produced)
    ));
    figure(format!(
        "cuts after bytes: {}; the node marked down per process: {downs:?}",
        cuts.join(", ")
    ));
    figure(format!(
        "max runs per key: {} on the cut node's keys (not bounded by F14), {} on the others'",
        max_runs(&produced, victims),
        max_runs(&produced, |k| !victims(k)),
    ));
    figure(stats_line(&history));
    history.check_failed(0);
    history.check_integrity(&produced);
    history.check_bounded(bound);
}
