//! The history of a herd (issue 12, item 2): every call and every getter run of every process,
//! and a checker of what README's "Guarantees" promise of it.
//!
//! Each process records its calls ([`Call`]: who, which key, when, what came back) and its
//! getter's runs ([`Run`]: which run of which key, when, how it ended), with wall-clock
//! microseconds since the Unix epoch, one clock for every process on the machine. A getter numbers
//! its runs with a counter outside the library (`Outside::incr` on a memcached of its own) and
//! returns [`value_for`]`(key, run)`, so a value says which key and which run it came from.
//!
//! The checks panic with the first few offending records:
//! - [`History::check_integrity`]: every value returned belongs to its call's key and was
//!   produced by a run of that key's getter that succeeded;
//! - [`History::check_uniqueness`]: each key's getter ran at most as often as allowed;
//! - [`History::check_bounded`]: every call took at most a bound;
//! - [`History::check_failed`]: at most so many calls failed;
//! - [`History::check_one_run_at_a_time`]: at most one run of a key's getter at a time per process.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// How many offending records a failed check lists.
const SHOWN: usize = 5;

/// The length of every value: a key, its run, then padding, so that a reply's value is large
/// enough for a cut to land in it.
pub const VALUE_BYTES: usize = 128;

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_micros() as u64
}

/// `d` in microseconds.
pub fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// The value run `run` of `key`'s getter returns: `key#run#` padded with dots to [`VALUE_BYTES`].
pub fn value_for(key: &str, run: u64) -> String {
    let mut value = format!("{key}#{run}#");
    while value.len() < VALUE_BYTES {
        value.push('.');
    }
    value
}

/// The key and run a value names, if it is one [`value_for`] makes.
pub fn parse_value(value: &str) -> Option<(&str, u64)> {
    let head = value.trim_end_matches('.').strip_suffix('#')?;
    let (key, run) = head.rsplit_once('#')?;
    let run = run.parse().ok()?;
    (value_for(key, run) == value).then_some((key, run))
}

/// One call: `Cache::get` from its start to its return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    /// The process (its index in the herd).
    pub proc: usize,
    /// The caller (task) within the process.
    pub caller: usize,
    pub key: String,
    /// Microseconds since the epoch.
    pub start: u64,
    pub end: u64,
    /// The value, or how the call failed.
    pub outcome: Result<String, Failure>,
}

/// How a call failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// `timeout`, `panicked`, `unavailable`, `getter` (the getter's own error) or `other`.
    pub kind: String,
    pub message: String,
}

/// One run of a getter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub proc: usize,
    pub key: String,
    /// The run's number, from the counter outside the library: 1 for the key's first run.
    pub run: u64,
    pub start: u64,
    pub end: u64,
    /// `ok`, `error`, `panic`, or `dropped` (cut off at the call's `exec_limit`).
    pub outcome: String,
    /// How many runs of this key's getter were under way in this process as it started, itself
    /// included.
    pub concurrent: usize,
}

/// A change in one server's health as one process saw it (`Cache::node_stats`, sampled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSample {
    pub proc: usize,
    /// When the change was seen (microseconds since the epoch).
    pub at: u64,
    /// The server's index in the configured list.
    pub server: usize,
    pub down: bool,
    pub marked_down: u64,
    pub back: u64,
}

/// A process's cache counters at the end of its herd (a few of `Cache::stats`), for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcStats {
    pub proc: usize,
    pub getter_runs: u64,
    pub degraded_calls: u64,
    pub lost_fills: u64,
    pub lease_waits: u64,
    pub store_errors: u64,
}

/// Everything the processes of a herd recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub calls: Vec<Call>,
    pub runs: Vec<Run>,
    pub nodes: Vec<NodeSample>,
    #[serde(default)]
    pub stats: Vec<ProcStats>,
}

impl Call {
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.end.saturating_sub(self.start))
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = match &self.outcome {
            Ok(value) => format!("ok {}", value.trim_end_matches('.')),
            Err(failure) => format!("{}: {}", failure.kind, failure.message),
        };
        write!(
            f,
            "proc {} caller {} key {} start {} took {:?}: {outcome}",
            self.proc,
            self.caller,
            self.key,
            self.start,
            self.latency()
        )
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "proc {} key {} run {} start {} took {:?}: {} ({} at once)",
            self.proc,
            self.key,
            self.run,
            self.start,
            Duration::from_micros(self.end.saturating_sub(self.start)),
            self.outcome,
            self.concurrent
        )
    }
}

/// Panics with `what`, the number of offenders and the first few of them, if there are any.
fn fail_if_any<T: fmt::Display>(what: &str, offenders: &[T]) {
    if offenders.is_empty() {
        return;
    }
    let shown: Vec<String> = offenders
        .iter()
        .take(SHOWN)
        .map(|o| format!("  {o}"))
        .collect();
    panic!(
        "{what}: {} offending record(s), the first {}:\n{}",
        offenders.len(),
        shown.len(),
        shown.join("\n")
    );
}

impl History {
    /// The histories of all processes, as one.
    pub fn merge(parts: impl IntoIterator<Item = History>) -> Self {
        let mut all = History::default();
        for part in parts {
            all.calls.extend(part.calls);
            all.runs.extend(part.runs);
            all.nodes.extend(part.nodes);
            all.stats.extend(part.stats);
        }
        all.calls.sort_by_key(|c| c.start);
        all.runs.sort_by_key(|r| r.start);
        all.nodes.sort_by_key(|n| n.at);
        all.stats.sort_by_key(|s| s.proc);
        all
    }

    /// Every key called or computed.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .calls
            .iter()
            .map(|c| c.key.clone())
            .chain(self.runs.iter().map(|r| r.key.clone()))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The calls that failed.
    pub fn failed(&self) -> Vec<&Call> {
        self.calls.iter().filter(|c| c.outcome.is_err()).collect()
    }

    /// The longest call, if any.
    pub fn max_latency(&self) -> Option<&Call> {
        self.calls.iter().max_by_key(|c| c.latency())
    }

    /// The run of `key`'s getter numbered `run`, if it was recorded.
    pub fn run(&self, key: &str, run: u64) -> Option<&Run> {
        self.runs.iter().find(|r| r.key == key && r.run == run)
    }

    /// The run a call's value came from, if it returned one that names a run.
    pub fn run_of(&self, call: &Call) -> Option<&Run> {
        let (key, run) = parse_value(call.outcome.as_ref().ok()?)?;
        self.run(key, run)
    }

    /// Integrity: every value returned names its call's key and a run of that key's getter that
    /// the counter outside the library counted (`produced[key]`: the counter's final value) and
    /// that succeeded.
    pub fn check_integrity(&self, produced: &BTreeMap<String, u64>) {
        let ok: HashMap<(&str, u64), &Run> = self
            .runs
            .iter()
            .filter(|r| r.outcome == "ok")
            .map(|r| ((r.key.as_str(), r.run), r))
            .collect();
        let wrong: Vec<String> = self
            .calls
            .iter()
            .filter_map(|call| {
                let value = call.outcome.as_ref().ok()?;
                let problem = match parse_value(value) {
                    None => "a value no getter makes".to_owned(),
                    Some((key, _)) if key != call.key => format!("the value of key {key}"),
                    Some((key, run)) if run > produced.get(key).copied().unwrap_or(0) => format!(
                        "run {run}, past the {} run(s) counted",
                        produced.get(key).copied().unwrap_or(0)
                    ),
                    Some((key, run)) if !ok.contains_key(&(key, run)) => {
                        format!("run {run}, which did not succeed or was not recorded")
                    }
                    Some(_) => return None,
                };
                Some(format!("{call}: {problem}"))
            })
            .collect();
        fail_if_any("integrity: a call returned a wrong value", &wrong);
        let unknown: Vec<&Run> = self
            .runs
            .iter()
            .filter(|r| r.run == 0 || r.run > produced.get(&r.key).copied().unwrap_or(0))
            .collect();
        fail_if_any("integrity: a run the counter did not count", &unknown);
    }

    /// Uniqueness: each key's getter ran (by the counter outside the library, `produced`) at most
    /// `allowed(key)` times.
    pub fn check_uniqueness(
        &self,
        produced: &BTreeMap<String, u64>,
        allowed: impl Fn(&str) -> u64,
    ) {
        let over: Vec<String> = produced
            .iter()
            .filter(|(key, runs)| **runs > allowed(key))
            .map(|(key, runs)| {
                let mut line = format!("key {key}: {runs} runs, {} allowed", allowed(key));
                for run in self.runs.iter().filter(|r| r.key == *key) {
                    line.push_str(&format!("\n      {run}"));
                }
                line
            })
            .collect();
        fail_if_any("uniqueness: a getter ran too often", &over);
    }

    /// Boundedness: every call returned within `bound`.
    pub fn check_bounded(&self, bound: Duration) {
        let slow: Vec<&Call> = self.calls.iter().filter(|c| c.latency() > bound).collect();
        fail_if_any(&format!("boundedness: a call took over {bound:?}"), &slow);
    }

    /// At most `max` calls failed.
    pub fn check_failed(&self, max: usize) {
        let failed = self.failed();
        if failed.len() > max {
            fail_if_any(&format!("failures: over {max} failed call(s)"), &failed);
        }
    }

    /// Within each process, at most one run of a key's getter at a time.
    pub fn check_one_run_at_a_time(&self) {
        let overlapping: Vec<&Run> = self.runs.iter().filter(|r| r.concurrent > 1).collect();
        fail_if_any("a process ran a key's getter twice at once", &overlapping);
    }

    /// How one process saw one server: its samples, in time order.
    pub fn node(&self, proc: usize, server: usize) -> Vec<&NodeSample> {
        self.nodes
            .iter()
            .filter(|n| n.proc == proc && n.server == server)
            .collect()
    }

    /// When `proc` first saw `server` marked down after `after`, and when it next saw it back.
    pub fn down_and_back(
        &self,
        proc: usize,
        server: usize,
        after: u64,
    ) -> (Option<u64>, Option<u64>) {
        let samples = self.node(proc, server);
        let before = samples
            .iter()
            .take_while(|n| n.at < after)
            .last()
            .map_or((0, 0), |n| (n.marked_down, n.back));
        let down = samples
            .iter()
            .find(|n| n.at >= after && n.marked_down > before.0)
            .map(|n| n.at);
        let back = down.and_then(|down| {
            samples
                .iter()
                .find(|n| n.at >= down && n.back > before.1)
                .map(|n| n.at)
        });
        (down, back)
    }
}

/// The figures of a history, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figures {
    pub calls: usize,
    pub failed: usize,
    pub runs: u64,
    pub keys: usize,
    pub max_runs: u64,
    pub max_latency: Duration,
    /// Summed over the processes' `Cache::stats`.
    pub degraded_calls: u64,
    pub lost_fills: u64,
}

impl Figures {
    pub fn of(history: &History, produced: &BTreeMap<String, u64>) -> Self {
        Figures {
            calls: history.calls.len(),
            failed: history.failed().len(),
            runs: produced.values().sum(),
            keys: produced.len(),
            max_runs: produced.values().copied().max().unwrap_or(0),
            max_latency: history.max_latency().map_or(Duration::ZERO, Call::latency),
            degraded_calls: history.stats.iter().map(|s| s.degraded_calls).sum(),
            lost_fills: history.stats.iter().map(|s| s.lost_fills).sum(),
        }
    }
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} calls, {} failed; {} getter runs over {} keys, at most {} per key; longest call \
             {:.3}s; {} degraded calls, {} lost fills",
            self.calls,
            self.failed,
            self.runs,
            self.keys,
            self.max_runs,
            self.max_latency.as_secs_f64(),
            self.degraded_calls,
            self.lost_fills
        )
    }
}
