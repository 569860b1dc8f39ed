//! What a getter decides about its own result, per result: how long this value lives, or that it
//! is returned but not stored. An empty search result kept for 5 seconds, a partial result not
//! kept at all, without changing the function's return type (FusionCache calls this adaptive
//! caching).
//!
//! Call these from inside the getter (or a `#[distcached]` function's body), on its own task:
//! the decision travels in a task-local value, so a task the getter spawns cannot make it.
//! Called anywhere else, they do nothing.
//!
//! ```
//! use std::time::Duration;
//!
//! #[derive(Debug, thiserror::Error)]
//! enum AppError { #[error(transparent)] Cache(#[from] distcache::Error) }
//!
//! #[distcache::distcached(expire = "10m", exec_limit = "5s")]
//! async fn search(query: String) -> Result<Vec<String>, AppError> {
//!     let hits: Vec<String> = Vec::new(); // ... the search
//!     if hits.is_empty() {
//!         // Nothing found may be found a moment later: keep this answer briefly.
//!         distcache::entry::set_expire(Duration::from_secs(5));
//!     }
//!     Ok(hits)
//! }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() { assert!(search("x".into()).await.unwrap().is_empty()); }
//! ```

use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

tokio::task_local! {
    static ENTRY: Cell<Decision>;
}

/// What the getter decided; the default is the call's own settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The value's expire instead of the call's.
    pub(crate) expire: Option<Duration>,
    /// The value is returned to its callers but not stored.
    pub(crate) skip_store: bool,
}

/// This value lives `expire` instead of the call's `expire`: it is stored for that long (a
/// duration over 365 days is cut to 365 days, and zero means [`skip_store`]).
pub fn set_expire(expire: Duration) {
    decide(|decision| {
        if expire.is_zero() {
            decision.skip_store = true;
        } else {
            decision.expire = Some(expire);
        }
    });
}

/// This value is returned to its callers, and to the callers waiting for it in this process,
/// but not stored: the next call computes it again. Callers waiting for it in other processes
/// run their own getter at once (the key is marked for a second), instead of one after another.
pub fn skip_store() {
    decide(|decision| decision.skip_store = true);
}

fn decide(change: impl FnOnce(&mut Decision)) {
    let _outside_a_getter = ENTRY.try_with(|cell| {
        let mut decision = cell.get();
        change(&mut decision);
        cell.set(decision);
    });
}

/// Runs `getter` where it can decide; its output, and what it decided.
pub(crate) async fn deciding<F: Future>(getter: F) -> (F::Output, Decision) {
    let mut scoped = pin!(ENTRY.scope(Cell::new(Decision::default()), getter));
    let output = scoped.as_mut().await;
    let decision = scoped
        .as_mut()
        .take_value()
        .map(Cell::into_inner)
        .unwrap_or_default();
    (output, decision)
}
