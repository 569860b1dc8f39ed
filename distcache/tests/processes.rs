//! Cross-process promises, across real OS processes: this binary re-spawns itself in a role
//! (`DISTCACHE_TEST_ROLE`) and counts getter runs on a separate memcached, outside the library.
//!
//! It has no libtest harness (`harness = false` in Cargo.toml): the children are roles, not tests.

mod support;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use distcache::{Cache, Error, distcached};
use support::kids::{Kid, ROLE, line_from, say, spawn};
use support::memcached::{Memcached, Outside, remaining_ttl};

const MINUTE: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    if let Ok(role) = std::env::var(ROLE) {
        return runtime.block_on(child(&role));
    }
    let tests: [Scenario; 6] = [
        ("four_processes_of_32_callers_run_each_getter_once", || {
            Box::pin(four_processes_of_32_callers_run_each_getter_once())
        }),
        ("a_killed_winner_is_replaced_within_its_lease", || {
            Box::pin(a_killed_winner_is_replaced_within_its_lease())
        }),
        (
            "a_winner_paused_past_its_lease_cannot_replace_the_newer_value",
            || Box::pin(a_winner_paused_past_its_lease_cannot_replace_the_newer_value()),
        ),
        (
            "a_killed_recomputer_of_a_stale_value_is_taken_over_within_exec_limit_and_a_second",
            || {
                Box::pin(
                    a_killed_recomputer_of_a_stale_value_is_taken_over_within_exec_limit_and_a_second(
                    ),
                )
            },
        ),
        (
            "the_default_cache_is_configured_from_the_environment",
            || Box::pin(the_default_cache_is_configured_from_the_environment()),
        ),
        (
            "a_value_kept_near_in_another_process_is_replaced_within_near_ttl",
            || Box::pin(a_value_kept_near_in_another_process_is_replaced_within_near_ttl()),
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        print!("test {name} ... ");
        let _ = std::io::stdout().flush();
        let started = Instant::now();
        // A failed assertion panics: the process exits non-zero and cargo reports the failure.
        runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(120), test()).await })
            .expect("the test finishes within 120 s");
        println!("ok ({:.1}s)", started.elapsed().as_secs_f64());
    }
    ExitCode::SUCCESS
}

/// A test scenario: its name and what runs it.
type Scenario = (&'static str, fn() -> Test);
type Test = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

const KEYS: usize = 50;
const CALLERS: usize = 32;
const PROCESSES: usize = 4;

async fn four_processes_of_32_callers_run_each_getter_once() {
    let nodes = Memcached::start_many::<3>().await;
    let counter = Memcached::start().await;
    let servers = nodes
        .iter()
        .map(Memcached::addr)
        .collect::<Vec<_>>()
        .join(",");
    let envs = [("DC_SERVERS", servers), ("DC_COUNTER", counter.addr())];
    let mut children: Vec<Kid> = (0..PROCESSES).map(|_| spawn("herd", &envs)).collect();
    for child in &mut children {
        assert_eq!(line_from(child).await, "ready");
    }
    // Every process waits for this line, so that all 128 callers start together.
    for child in &mut children {
        say(child.child.stdin.as_mut().unwrap(), "go");
    }
    for child in &mut children {
        assert_eq!(
            line_from(child).await,
            format!("done {} 0", CALLERS * KEYS),
            "every caller got its key's value"
        );
        assert!(child.child.wait().unwrap().success());
    }
    let outside = Outside::connect(&counter.addr()).await;
    let mut runs = Vec::new();
    for k in 0..KEYS {
        runs.push(outside.count(&format!("runs:{k}")).await);
    }
    assert_eq!(
        runs,
        vec![1; KEYS],
        "each key's getter ran exactly once across 4 processes"
    );
}

async fn herd_child() -> ExitCode {
    let cache = Cache::builder()
        .servers(std::env::var("DC_SERVERS").unwrap().split(','))
        .build()
        .unwrap();
    let counter = Arc::new(Outside::connect(&std::env::var("DC_COUNTER").unwrap()).await);
    println!("ready");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    assert_eq!(go.trim(), "go");
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (cache, counter) = (cache.clone(), counter.clone());
            tokio::spawn(async move {
                let mut keys: Vec<usize> = (0..KEYS).collect();
                fastrand::Rng::with_seed(caller as u64 ^ u64::from(std::process::id()))
                    .shuffle(&mut keys);
                let mut ok = 0;
                for k in keys {
                    let value = cache
                        .get(
                            &format!("herd:{k}"),
                            Duration::from_secs(10),
                            MINUTE,
                            || async {
                                counter.incr(&format!("runs:{k}")).await;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                Ok::<_, Error>(format!("value {k}"))
                            },
                        )
                        .await;
                    if value.is_ok_and(|v: String| v == format!("value {k}")) {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for caller in callers {
        ok += caller.await.unwrap();
    }
    println!("done {ok} {}", CALLERS * KEYS - ok);
    ExitCode::SUCCESS
}

/// The winner's exec_limit, which no longer sets its lease's length.
const WINNER_LIMIT: Duration = Duration::from_secs(60);
/// The lease's length when its holder does not extend it (the library's `LEASE`).
const LEASE: Duration = Duration::from_secs(4);
/// The default `max_poll_interval`.
const MAX_POLL: Duration = Duration::from_millis(200);

/// F8: a waiter is done within the lease, one poll and a second of memcached's clock after the
/// winner's process is SIGKILLed, though the winner's `exec_limit` is a minute.
async fn a_killed_winner_is_replaced_within_its_lease() {
    let node = Memcached::start().await;
    let mut winner = spawn("winner", &[("DC_SERVERS", node.addr())]);
    assert_eq!(line_from(&mut winner).await, "won");
    winner.child.kill().unwrap();
    winner.child.wait().unwrap();
    let killed = Instant::now();

    let cache = Cache::builder().server(node.addr()).build().unwrap();
    let value: String = cache
        .get("crash", MINUTE, MINUTE, || async {
            Ok::<_, Error>("from the waiter".to_owned())
        })
        .await
        .unwrap();
    let waited = killed.elapsed();
    assert_eq!(value, "from the waiter");
    let stats = cache.stats();
    assert_eq!(
        (stats.lease_waits, stats.getter_runs),
        (1, 1),
        "it waited on the dead winner's lease, then won it: {stats:?}"
    );
    assert!(
        waited <= LEASE + MAX_POLL + Duration::from_secs(1),
        "won after {waited:?}"
    );
}

async fn winner_child() -> ExitCode {
    let cache = Cache::builder()
        .server(std::env::var("DC_SERVERS").unwrap())
        .build()
        .unwrap();
    let _: Result<String, Error> = cache
        .get("crash", WINNER_LIMIT, MINUTE, || async {
            println!("won");
            std::future::pending().await
        })
        .await;
    unreachable!("killed while computing")
}

/// F8: a winner's process is SIGSTOPped past its lease; a waiter takes the key over and fills
/// it; the winner resumes and finishes its getter. Its fill is refused, and the stored value is
/// the newer one, with its own TTL: the resumed winner no longer extends (touches) a lease it
/// cannot know to be alive.
async fn a_winner_paused_past_its_lease_cannot_replace_the_newer_value() {
    let node = Memcached::start().await;
    let mut winner = spawn("paused", &[("DC_SERVERS", node.addr())]);
    assert_eq!(line_from(&mut winner).await, "won");
    let pid = winner.child.id().to_string();
    let kill = |signal: &str| {
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    kill("-STOP");
    let paused = Instant::now();
    let cache = Cache::builder().server(node.addr()).build().unwrap();
    let value: String = cache
        .get("paused", MINUTE, MINUTE, || async {
            Ok::<_, Error>("newer".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(value, "newer");
    assert!(
        paused.elapsed() <= LEASE + MAX_POLL + Duration::from_secs(1),
        "took the key over after {:?}",
        paused.elapsed()
    );
    kill("-CONT");
    say(winner.child.stdin.as_mut().unwrap(), "finish");
    assert_eq!(
        line_from(&mut winner).await,
        "older, lost_fills 1",
        "its value is returned to its caller, not stored"
    );
    assert!(winner.child.wait().unwrap().success());
    let outside = Outside::connect(&node.addr()).await;
    assert_eq!(
        outside.get("paused").await.map(|(v, _)| v),
        Some(b"\"newer\"".to_vec()),
        "the newer value stays"
    );
    let ttl = remaining_ttl(&node.addr(), "paused").await;
    assert!(
        ttl > LEASE.as_secs() as i64,
        "the newer value keeps its TTL ({ttl} s left of a minute)"
    );
}

async fn paused_child() -> ExitCode {
    let cache = Cache::builder()
        .server(std::env::var("DC_SERVERS").unwrap())
        .build()
        .unwrap();
    let value: String = cache
        .get("paused", WINNER_LIMIT, MINUTE, || async {
            println!("won");
            let line = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).unwrap();
                line
            })
            .await
            .unwrap();
            assert_eq!(line.trim(), "finish");
            // Resumed, it computes on past its next extension's tick.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok::<_, Error>("older".to_owned())
        })
        .await
        .unwrap();
    println!("{value}, lost_fills {}", cache.stats().lost_fills);
    ExitCode::SUCCESS
}

/// The recomputer's `exec_limit`: its claim on a stale value lasts this and a second.
const RECOMPUTE_LIMIT: Duration = Duration::from_secs(2);
/// The stale value's `expire`.
const SHORT: Duration = Duration::from_millis(300);

fn keeping_stale(server: &str) -> Cache {
    Cache::builder()
        .server(server)
        .stale_if_error(Duration::from_secs(3600))
        .build()
        .unwrap()
}

/// `stale_if_error`: the process that claimed a stale value's recompute is SIGKILLed while its
/// getter runs. Meanwhile every call gets the stale value at once, without running a getter;
/// within `exec_limit` + 1 s of the claim, a call takes the recompute over and stores the new
/// value.
async fn a_killed_recomputer_of_a_stale_value_is_taken_over_within_exec_limit_and_a_second() {
    let node = Memcached::start().await;
    let cache = keeping_stale(&node.addr());
    let value = |v: &'static str| move || async move { Ok::<_, Error>(v.to_owned()) };
    let stored: String = cache
        .get("claimed", RECOMPUTE_LIMIT, SHORT, value("old"))
        .await
        .unwrap();
    assert_eq!(stored, "old");
    tokio::time::sleep(SHORT + Duration::from_millis(50)).await;
    let claimed = Instant::now();
    let mut recomputer = spawn("recomputer", &[("DC_SERVERS", node.addr())]);
    assert_eq!(line_from(&mut recomputer).await, "claimed");
    recomputer.child.kill().unwrap();
    recomputer.child.wait().unwrap();

    // memcached has no event for a claim's end: ask until a call takes the recompute over.
    let mut stale_calls = 0;
    let taken_over = loop {
        let asked = Instant::now();
        let got: String = cache
            .get("claimed", RECOMPUTE_LIMIT, SHORT, value("new"))
            .await
            .unwrap();
        if got == "new" {
            break claimed.elapsed();
        }
        assert_eq!(got, "old");
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "the stale value, at once"
        );
        stale_calls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(stale_calls > 0, "the claim held while it lasted");
    let stats = cache.stats();
    assert_eq!(
        (stats.getter_runs, stats.stale_served),
        (2, stale_calls),
        "the first value's run and the takeover's; every other call was served stale"
    );
    // `claimed` was taken before the child was spawned: its claim, counted from its call's
    // start, cannot end sooner than this after it.
    let bound = RECOMPUTE_LIMIT + Duration::from_secs(1);
    assert!(
        taken_over >= bound,
        "taken over {taken_over:?} after the claim: the claim ended early"
    );
    assert!(
        taken_over <= bound + Duration::from_millis(750),
        "taken over {taken_over:?} after the claim, over {bound:?} and the child's start-up"
    );
    let got: String = cache
        .get("claimed", RECOMPUTE_LIMIT, SHORT, value("other"))
        .await
        .unwrap();
    assert_eq!(got, "new", "the takeover's value is stored");
}

async fn recomputer_child() -> ExitCode {
    let cache = keeping_stale(&std::env::var("DC_SERVERS").unwrap());
    let _: Result<String, Error> = cache
        .get("claimed", RECOMPUTE_LIMIT, SHORT, || async {
            println!("claimed");
            std::future::pending().await
        })
        .await;
    unreachable!("killed while recomputing")
}

#[distcached(expire = "1m", exec_limit = "10s", name = "processes::double")]
async fn double(x: u32) -> Result<u32, Error> {
    Ok(x * 2)
}

async fn the_default_cache_is_configured_from_the_environment() {
    let node = Memcached::start().await;
    let mut child = spawn(
        "env",
        &[
            ("DISTCACHE_SERVERS", format!(" {} ,", node.addr())),
            ("DISTCACHE_NAMESPACE", "envtest".into()),
        ],
    );
    assert_eq!(
        line_from(&mut child).await,
        format!("memcached {}", node.addr())
    );
    assert_eq!(line_from(&mut child).await, "42");
    assert!(child.child.wait().unwrap().success());
    let outside = Outside::connect(&node.addr()).await;
    let stored = outside
        .get("envtest:processes::double[21]")
        .await
        .map(|(v, _)| v);
    assert_eq!(
        stored.as_deref(),
        Some(&b"42"[..]),
        "stored on the configured server, under the namespace"
    );
}

async fn env_child() -> ExitCode {
    println!("{}", distcache::default_cache().unwrap());
    println!("{}", double(21).await.unwrap());
    ExitCode::SUCCESS
}

/// The near cache's staleness bound across real processes: a child keeps a value near (the
/// default cache, `DISTCACHE_NEAR_TTL=1s`, for a function with `near_ttl = "cache"`); this process
/// replaces the value. The child serves the old value on
/// (it is kept), but never more than `near_ttl` (and a slack) after the read that brought it,
/// which was sent before the replacement.
async fn a_value_kept_near_in_another_process_is_replaced_within_near_ttl() {
    const NEAR: u64 = 1000;
    const SLACK: u64 = 250;
    let node = Memcached::start().await;
    let here = Cache::builder()
        .server(node.addr())
        .namespace("neartest")
        .build()
        .unwrap();
    let key = "processes::version[]";
    let set = |v: &'static str| move || async move { Ok::<_, Error>(v.to_owned()) };
    let _: String = here.get(key, MINUTE, MINUTE, set("v1")).await.unwrap();
    let mut child = spawn(
        "near",
        &[
            ("DISTCACHE_SERVERS", node.addr()),
            ("DISTCACHE_NAMESPACE", "neartest".into()),
            ("DISTCACHE_NEAR_TTL", "1s".into()),
        ],
    );
    let ready = line_from(&mut child).await;
    let read_sent: u64 = ready
        .strip_prefix("ready ")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("the child's first read: {ready:?}"));
    here.invalidate(key).await.unwrap();
    let _: String = here.get(key, MINUTE, MINUTE, set("v2")).await.unwrap();
    let replaced = unix_ms();
    assert!(replaced >= read_sent);
    say(child.child.stdin.as_mut().unwrap(), "go");
    let changed = line_from(&mut child).await;
    let fields: Vec<u64> = changed
        .strip_prefix("changed ")
        .unwrap_or_else(|| panic!("the child's report: {changed:?}"))
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    let (last_old, near_hits) = (fields[0], fields[1]);
    assert!(child.child.wait().unwrap().success());
    assert!(
        last_old > replaced,
        "the child served its kept value after the replacement (the near cache at work)"
    );
    assert!(
        last_old <= read_sent + NEAR + SLACK,
        "the old value was served {} ms after the read that brought it",
        last_old - read_sent
    );
    assert!(near_hits > 0);
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The default cache's `near_ttl` (`DISTCACHE_NEAR_TTL`).
#[distcached(
    expire = "1m",
    exec_limit = "10s",
    name = "processes::version",
    near_ttl = "cache"
)]
async fn version() -> Result<String, Error> {
    Ok("computed by the child".to_owned())
}

async fn near_child() -> ExitCode {
    let sent = unix_ms();
    assert_eq!(version().await.unwrap(), "v1");
    println!("ready {sent}");
    tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new()))
        .await
        .unwrap()
        .unwrap();
    let mut last_old = sent;
    loop {
        let asked = unix_ms();
        assert!(asked < sent + 5_000, "the new value within 5 s");
        match version().await.unwrap().as_str() {
            "v1" => last_old = asked,
            "v2" => break,
            other => panic!("unexpected value {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = distcache::default_cache().unwrap().stats();
    println!("changed {last_old} {}", stats.near_hits);
    ExitCode::SUCCESS
}

async fn child(role: &str) -> ExitCode {
    match role {
        "near" => near_child().await,
        "herd" => herd_child().await,
        "winner" => winner_child().await,
        "paused" => paused_child().await,
        "env" => env_child().await,
        "recomputer" => recomputer_child().await,
        other => panic!("unknown role {other:?}"),
    }
}
