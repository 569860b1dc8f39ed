//! The herd, small enough for CI (a debug build, 2 processes × 8 callers). With a failing
//! origin: with `stale_if_error`, no call fails and the origin is asked about once per key per
//! `error_backoff` while it is down; without it, the callers get the getter's error or
//! `Error::Backoff`, never anything else, and the origin is asked as rarely. Over TLS with a
//! login, the processes share one run per key. With Zipf keys, each node's gets are counted, and a
//! near cache spares the nodes the gets it serves. The full-size figures are in BENCHMARKS.md.

mod common;

use serde_json::Value;

/// Runs the herd with `args`; its result line, once it succeeded.
fn run_herd(args: &[&str]) -> Value {
    let output = std::process::Command::new(common::example_binary("herd"))
        .args(args)
        .output()
        .expect("the herd runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the herd succeeded:\n{stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| panic!("{err}:\n{stderr}"))
}

/// Runs the herd with the outage flags and `extra`; its result line.
fn herd(extra: &[&str]) -> Value {
    let mut args = vec![
        "--spawn-servers",
        "--procs",
        "2",
        "--callers",
        "8",
        "--keys",
        "50",
    ];
    args.extend([
        "--expire",
        "1s",
        "--error-backoff",
        "500ms",
        "--warm-secs",
        "5",
    ]);
    args.extend(["--origin-down-after", "1", "--origin-down-for", "3"]);
    args.extend(extra);
    run_herd(&args)
}

/// Over a 3 s outage with a 500 ms backoff: a run at its start, then one per backoff, and one
/// more for a backoff that straddles its end.
const MAX_DOWN_CALLS_PER_KEY: u64 = 8;

#[test]
fn with_stale_if_error_no_call_fails_and_the_origin_is_spared() {
    let r = herd(&["--stale-if-error", "1h"]);
    assert_eq!(r["failed_calls"], 0, "{r}");
    assert!(r["stale_served"].as_u64().unwrap() > 0, "{r}");
    let per_key = r["origin_calls_down_max_per_key"].as_u64().unwrap();
    assert!((1..=MAX_DOWN_CALLS_PER_KEY).contains(&per_key), "{r}");
    // Fresh values within expire + 1 s of the origin's return.
    assert!(r["recovery_s"].as_f64().unwrap() <= 2.0, "{r}");
}

#[test]
fn without_it_callers_get_the_getters_error_or_a_backoff() {
    let r = herd(&[]);
    assert_eq!(
        (&r["wrong_values"], &r["other_errors"]),
        (&0.into(), &0.into()),
        "{r}"
    );
    assert!(r["backoff_errors"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["origin_errors"], r["origin_calls_down"], "{r}");
    let per_key = r["origin_calls_down_max_per_key"].as_u64().unwrap();
    assert!((1..=MAX_DOWN_CALLS_PER_KEY).contains(&per_key), "{r}");
}

#[test]
fn with_a_soft_timeout_a_slow_origin_is_waited_for_in_the_background() {
    let r = herd(&[
        "--stale-if-error",
        "1h",
        "--soft-timeout",
        "100ms",
        "--origin-slow-ms",
        "2000",
    ]);
    assert_eq!(r["failed_calls"], 0, "{r}");
    assert!(r["soft_timeouts"].as_u64().unwrap() > 0, "{r}");
    // Each key's slow recompute finished in the background and was stored: about one per key
    // per expire-and-2-s while it was slow, never one per caller.
    let per_key = r["origin_calls_down_max_per_key"].as_u64().unwrap();
    assert!((1..=3).contains(&per_key), "{r}");
}

/// Over TLS with a login (`memcached -Z -Y`, certificates made by the herd): 2 processes share
/// one getter run per key, and no call fails.
#[test]
fn over_tls_with_a_login_processes_share_one_run_per_key() {
    let r = run_herd(&[
        "--spawn-servers",
        "--tls",
        "--auth",
        "--procs",
        "2",
        "--callers",
        "8",
        "--keys",
        "50",
        "--warm-gets",
        "2000",
    ]);
    assert_eq!((&r["tls"], &r["auth"]), (&true.into(), &true.into()), "{r}");
    assert_eq!(
        (&r["duplicate_calls"], &r["failed_calls"]),
        (&0.into(), &0.into()),
        "{r}"
    );
}

/// Keys by Zipf's law in the warm phase: every get is of its key, and each node's gets are
/// counted from its own `stats`.
#[test]
fn zipf_keys_and_node_gets() {
    let r = zipf_herd(&[]);
    assert_eq!(r["near_hits"], 0, "{r}");
}

/// With a near cache: no wrong value, and the nodes see only the gets it did not serve.
#[test]
fn a_near_cache_serves_hot_keys_without_the_nodes() {
    let r = zipf_herd(&["--near-ttl", "1s"]);
    assert_eq!(r["wrong_values"], 0, "{r}");
    assert!(r["near_hits"].as_u64().unwrap() > 0, "{r}");
}

/// A Zipf herd's result, checked: no failed call, and every warm get that neither joined another
/// in its process nor was a near hit asked a node once.
fn zipf_herd(extra: &[&str]) -> Value {
    let mut args = vec!["--spawn-servers", "--procs", "2", "--callers", "8"];
    args.extend(["--keys", "200", "--zipf", "1.1", "--warm-secs", "1"]);
    args.extend(extra);
    let r = run_herd(&args);
    assert_eq!(r["failed_calls"], 0, "{r}");
    let nodes: Vec<u64> = r["node_gets"]
        .as_array()
        .expect("node_gets")
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(nodes.len(), 3, "{r}");
    let gets = r["warm_gets"].as_u64().unwrap();
    let coalesced = r["warm_coalesced_waits"].as_u64().unwrap();
    let near = r["near_hits"].as_u64().unwrap();
    assert_eq!(nodes.iter().sum::<u64>(), gets - coalesced - near, "{r}");
    assert_eq!(
        r["hottest_node_gets"].as_u64(),
        nodes.iter().max().copied(),
        "{r}"
    );
    r
}

/// Values over memcached's item size (1 MB by default), random or compressible: each is computed
/// once, every get is of its key, none fails, and the spawned servers have the memory the run
/// needs.
#[test]
fn values_over_the_item_size_are_stored_once_and_returned_whole() {
    for extra in [&[][..], &["--compressible"][..]] {
        let mut args = vec!["--spawn-servers", "--procs", "2", "--callers", "4"];
        args.extend([
            "--keys",
            "4",
            "--value-bytes",
            "1500000",
            "--warm-secs",
            "1",
        ]);
        args.extend(extra);
        let r = run_herd(&args);
        assert_eq!(r["failed_calls"], 0, "{r}");
        assert_eq!(r["wrong_values"], 0, "{r}");
        // Random values stay over the item size compressed: stored in chunks, once per key, as
        // the compressible ones are in one item.
        assert_eq!(r["duplicate_calls"], 0, "{r}");
        assert_eq!(r["compressible"], !extra.is_empty(), "{r}");
        assert!(r["warm_gets"].as_u64().unwrap() > 0, "{r}");
    }
}
