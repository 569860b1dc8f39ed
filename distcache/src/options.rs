//! A call's settings as one value: `#[distcached]` builds one per function, as a `static`;
//! [`Cache::get_with`](crate::Cache::get_with) takes one per call.

use std::time::Duration;

/// The settings of a call of [`Cache::get_with`](crate::Cache::get_with): its `exec_limit` and
/// `expire`, and the per-call options, each falling back to the cache's own when not set.
///
/// Built in a `const` context, so that a function can keep its settings in a `static`:
///
/// ```
/// use std::time::Duration;
/// use distcache::GetOptions;
///
/// static REPORT: GetOptions =
///     GetOptions::new(Duration::from_secs(5), Duration::from_secs(600)).refresh_ahead(0.2);
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), distcache::Error> {
/// let cache = distcache::Cache::builder().build().unwrap();
/// let report: String = cache
///     .get_with("report:2026-11", &REPORT, || async { Ok::<_, distcache::Error>("…".into()) })
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GetOptions {
    pub(crate) exec_limit: Duration,
    pub(crate) expire: Duration,
    /// `None`: the cache's (`CacheBuilder::refresh_ahead`, or `DISTCACHE_REFRESH_AHEAD` for the
    /// default cache).
    pub(crate) refresh_ahead: Option<f64>,
    /// `None`: the cache's (`CacheBuilder::error_backoff`).
    pub(crate) error_backoff: Option<Duration>,
    /// `None`: the cache's (`CacheBuilder::stale_if_error`).
    pub(crate) stale_if_error: Option<Duration>,
}

impl GetOptions {
    /// A call bounded by `exec_limit` whose value lives `expire`, with the cache's other
    /// settings. Both must be more than zero and at most 365 days
    /// ([`Error::InvalidArgument`](crate::Error::InvalidArgument) otherwise).
    #[must_use]
    pub const fn new(exec_limit: Duration, expire: Duration) -> Self {
        GetOptions {
            exec_limit,
            expire,
            refresh_ahead: None,
            error_backoff: None,
            stale_if_error: None,
        }
    }

    /// Refreshes the value ahead of its expiry, as
    /// [`CacheBuilder::refresh_ahead`](crate::CacheBuilder::refresh_ahead) does, for these calls
    /// only: it takes precedence over the cache's setting (0 turns it off). At least 0 and under
    /// 1 ([`Error::InvalidArgument`](crate::Error::InvalidArgument) otherwise).
    #[must_use]
    pub const fn refresh_ahead(mut self, fraction: f64) -> Self {
        self.refresh_ahead = Some(fraction);
        self
    }

    /// Backs off a failing getter, as
    /// [`CacheBuilder::error_backoff`](crate::CacheBuilder::error_backoff) does, for these calls:
    /// it takes precedence over the cache's setting. Between 1 ms and one day
    /// ([`Error::InvalidArgument`](crate::Error::InvalidArgument) otherwise).
    #[must_use]
    pub const fn error_backoff(mut self, backoff: Duration) -> Self {
        self.error_backoff = Some(backoff);
        self
    }

    /// Keeps values `max_stale` past their `expire`, and serves them while one caller
    /// recomputes them, or when that fails, as
    /// [`CacheBuilder::stale_if_error`](crate::CacheBuilder::stale_if_error) does, for these
    /// calls: it takes precedence over the cache's setting (zero turns it off). Zero, or between
    /// 1 ms and 365 days ([`Error::InvalidArgument`](crate::Error::InvalidArgument) otherwise).
    #[must_use]
    pub const fn stale_if_error(mut self, max_stale: Duration) -> Self {
        self.stale_if_error = Some(max_stale);
        self
    }

    /// The bound on the whole call.
    #[must_use]
    pub const fn exec_limit(&self) -> Duration {
        self.exec_limit
    }

    /// How long the value is kept.
    #[must_use]
    pub const fn expire(&self) -> Duration {
        self.expire
    }
}
