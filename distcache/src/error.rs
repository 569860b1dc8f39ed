//! The errors of a call and of building a [`Cache`](crate::Cache).

use std::time::Duration;

use crate::build_error::BuildError;

/// A boxed error from a dependency, so that no dependency's type leaks into our API.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a [`Cache::get`](crate::Cache::get) call failed.
///
/// The getter's own error never appears here: it reaches the caller unchanged, as `E`.
/// This type reaches the caller through `E: From<Error>`, the way `?` converts errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The call did not finish within its `exec_limit`: waiting for another caller's
    /// computation, or running the getter itself, took too long. A getter still running
    /// was dropped and its lease handed back, so that the next caller may try at once.
    #[error("key {key:?}: no value within the exec_limit of {limit:?}")]
    Timeout {
        /// The caller's key.
        key: String,
        /// The `exec_limit` that elapsed.
        limit: Duration,
    },

    /// The getter panicked. The panic was caught: the process and other keys are unaffected,
    /// the lease was handed back and the next call runs the getter again.
    #[error("key {key:?}: the getter panicked: {message}")]
    GetterPanicked {
        /// The caller's key.
        key: String,
        /// The panic's message, when it was a string.
        message: String,
    },

    /// The store could not be reached and the cache is configured to fail rather than run
    /// the getter without it (see [`CacheBuilder::on_unavailable`](crate::CacheBuilder::on_unavailable)).
    #[error("key {key:?}: the cache store is unavailable")]
    Unavailable {
        /// The caller's key.
        key: String,
        /// What went wrong talking to the store.
        #[source]
        source: BoxError,
    },

    /// [`Cache::invalidate`](crate::Cache::invalidate) could not reach the key's own memcached
    /// server: it is marked down, or did not answer. The key was deleted on the server its
    /// calls go to meanwhile (when that one answered: a warning is logged otherwise), and this
    /// process deletes it on its own server before its next request there (the probe that
    /// brings it back). Until then, another process that finds
    /// that server back first can read the old value from it: call `invalidate` again, until it
    /// returns `Ok`, where that matters.
    #[error("key {key:?}: not invalidated on its server {server}, which could not be reached")]
    Unreached {
        /// The caller's key.
        key: String,
        /// The key's own server.
        server: crate::Server,
        /// Why it could not be reached.
        #[source]
        source: BoxError,
    },

    /// The key's getter failed moments ago, in this process or another, and is backed off
    /// (`error_backoff`): it is not run again before `until`, and every caller meanwhile gets
    /// this error instead of running it in turn. The caller whose getter failed got the getter's
    /// own error.
    #[error(
        "key {key:?}: its getter failed and is backed off for {:?} more",
        left(until)
    )]
    Backoff {
        /// The caller's key.
        key: String,
        /// When the getter may run again (by the clock of the process whose getter failed).
        until: std::time::SystemTime,
    },

    /// A call's argument is unusable: a zero `exec_limit` or `expire`.
    #[error("key {key:?}: invalid argument: {reason}")]
    InvalidArgument {
        /// The caller's key.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The process-wide default cache could not be built from the environment (the
    /// `DISTCACHE_*` variables); every call through it fails until the configuration is fixed.
    #[error("the default cache could not be built: {0}")]
    DefaultCache(#[source] BuildError),
}

impl Error {
    pub(crate) fn timeout(key: &str, limit: Duration) -> Self {
        Error::Timeout {
            key: key.to_owned(),
            limit,
        }
    }

    /// Whether this is a [`Error::Timeout`].
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }
}

/// How long until `until`, from now (zero once passed).
fn left(until: &std::time::SystemTime) -> Duration {
    until
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
}
