//! What a cache is made of besides its store, and its settings: shared by the public face
//! (`cache.rs`, `builder.rs`) and the algorithm (`flight.rs`), which imports no public-face file.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinSet;

use crate::coalesce::Flights;
use crate::key::KeyEncoder;
use crate::near::NearCache;
use crate::schedule::Estimates;
use crate::stats::Counters;

/// The longest `expire` or `exec_limit`: far beyond any memoization, and well within what
/// memcached's signed 32-bit absolute times and `Instant` arithmetic can carry.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Everything of a cache but its store: what `flight.rs` needs besides the store.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) keys: KeyEncoder,
    pub(crate) flights: Flights,
    pub(crate) stats: Counters,
    pub(crate) estimates: Estimates,
    pub(crate) config: Config,
    /// Made by the first call that keeps a value near.
    pub(crate) near: std::sync::OnceLock<NearCache>,
}

impl Core {
    /// The near cache, made on first use.
    pub(crate) fn near(&self) -> &NearCache {
        self.near.get_or_init(|| {
            NearCache::new(self.config.near_max_entries, self.config.near_max_bytes)
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The largest value, as JSON: larger ones are returned, not stored; a compressed item that
    /// declares more is not read.
    pub(crate) max_value_bytes: usize,
    pub(crate) on_unavailable: OnUnavailable,
    pub(crate) max_poll_interval: Duration,
    /// The share of `expire` before the end in which a value is refreshed; 0: never.
    pub(crate) refresh_ahead: f64,
    /// How long the callers of a key whose getter failed get `Error::Backoff`; `None`: off.
    pub(crate) error_backoff: Option<Duration>,
    /// How long past `expire` values are kept, and served if recomputing them fails; zero: not.
    pub(crate) stale_if_error: Duration,
    /// How long a detached call waits for the recompute of a value it has; `None`: until done.
    pub(crate) soft_timeout: Option<Duration>,
    /// How long calls that can keep values in this process keep them; zero: they do not.
    pub(crate) near_ttl: Duration,
    pub(crate) near_max_entries: usize,
    pub(crate) near_max_bytes: u64,
}

/// The recomputes that run on after their call returned (`soft_timeout`), and the core they
/// share. Held by the cache's handles, not by the tasks: when the last handle is dropped, they
/// are aborted.
#[derive(Debug)]
pub(crate) struct Tasks {
    core: std::sync::Arc<Core>,
    set: Mutex<JoinSet<()>>,
}

impl Tasks {
    pub(crate) fn new(core: std::sync::Arc<Core>) -> Self {
        Tasks {
            core,
            set: Mutex::default(),
        }
    }

    /// The cache's core, for a task to hold.
    pub(crate) fn core(&self) -> &std::sync::Arc<Core> {
        &self.core
    }

    /// Runs `task` on the current runtime, until it ends or the cache is dropped.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut set = self.set.lock().unwrap_or_else(PoisonError::into_inner);
        // The ended ones go now: the set holds only those still running.
        while set.try_join_next().is_some() {}
        set.spawn(task);
    }
}

/// What a call does when the store cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnUnavailable {
    /// Run the getter without the store and return its value (degraded mode, counted in
    /// [`Stats::degraded_calls`](crate::Stats::degraded_calls) and logged). The calls of this process still share one run
    /// per key; other processes run their own. The default: callers get their values.
    #[default]
    RunGetter,
    /// Fail the call with [`Error::Unavailable`](crate::Error::Unavailable): for getters too expensive to run once per
    /// process when the cluster is down.
    Fail,
}

// The ranges a cache and a call accept, in `const` functions: `GetOptions` checks its settings
// with them where it is made (at compile time for a `static`), the builder at `build`.

/// `d` within `[min, max]`.
const fn within(d: Duration, min: Duration, max: Duration) -> bool {
    min.as_nanos() <= d.as_nanos() && d.as_nanos() <= max.as_nanos()
}

/// Whether `d` is an `exec_limit` or an `expire` a call accepts: more than zero, at most 365
/// days.
pub(crate) const fn call_duration_in_range(d: Duration) -> bool {
    within(d, Duration::from_nanos(1), MAX_DURATION)
}

/// Whether `fraction` is a `refresh_ahead` a cache accepts: at least 0 (off), under 1 (NaN is
/// in no range).
pub(crate) const fn refresh_ahead_in_range(fraction: f64) -> bool {
    fraction >= 0.0 && fraction < 1.0
}

/// Whether `d` is a `stale_if_error` or `near_ttl` (zero, off, aside) or a `soft_timeout` a cache
/// accepts: 1 ms to 365 days.
pub(crate) const fn duration_in_range(d: Duration) -> bool {
    within(d, Duration::from_millis(1), MAX_DURATION)
}

/// Whether `backoff` is an `error_backoff` a cache accepts: 1 ms to one day.
pub(crate) const fn error_backoff_in_range(backoff: Duration) -> bool {
    within(
        backoff,
        Duration::from_millis(1),
        Duration::from_secs(24 * 3600),
    )
}
