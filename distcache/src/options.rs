//! A call's settings as one value: `#[distcached]` builds one per function, as a `static`;
//! [`Cache::get_with`](crate::Cache::get_with) takes one per call.

use std::marker::PhantomData;
use std::time::Duration;

use crate::core::{
    call_duration_in_range, duration_in_range, error_backoff_in_range, refresh_ahead_in_range,
};

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
///
/// Options with a [`soft_timeout`](GetOptions::soft_timeout) are `GetOptions<Detached>`, which
/// only [`Cache::get_detached`](crate::Cache::get_detached) takes: the getter of such a call may
/// run on after the call returns, so it cannot borrow from the caller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GetOptions<M = Attached> {
    pub(crate) exec_limit: Duration,
    pub(crate) expire: Duration,
    /// `None`: the cache's (`CacheBuilder::refresh_ahead`, or `DISTCACHE_REFRESH_AHEAD` for the
    /// default cache).
    pub(crate) refresh_ahead: Option<f64>,
    /// `None`: the cache's (`CacheBuilder::error_backoff`).
    pub(crate) error_backoff: Option<Duration>,
    /// `None`: the cache's (`CacheBuilder::stale_if_error`).
    pub(crate) stale_if_error: Option<Duration>,
    /// `None`: the cache's (`CacheBuilder::soft_timeout`), for detached calls.
    pub(crate) soft_timeout: Option<Duration>,
    /// `None`: the cache's (`CacheBuilder::near_ttl`), for calls that can keep values near.
    pub(crate) near_ttl: Option<Duration>,
    /// The settings out of range, a bit each ([`Invalid`]), kept by the builder methods: checked
    /// once where the options are made (at compile time for a `static`), not on every call.
    pub(crate) invalid: u8,
    pub(crate) mode: PhantomData<M>,
}

/// The settings a call refuses, as bits of [`GetOptions::invalid`], in the order a call reports
/// them.
struct Invalid;

impl Invalid {
    const EXEC_LIMIT: u8 = 1;
    const EXPIRE: u8 = 1 << 1;
    const REFRESH_AHEAD: u8 = 1 << 2;
    const ERROR_BACKOFF: u8 = 1 << 3;
    const STALE_IF_ERROR: u8 = 1 << 4;
    const SOFT_TIMEOUT: u8 = 1 << 5;
    const NEAR_TTL: u8 = 1 << 6;

    /// Why, for each bit in order.
    const REASONS: [&'static str; 7] = [
        "exec_limit must be more than zero and at most 365 days",
        "expire must be more than zero and at most 365 days",
        "refresh_ahead must be at least 0 and under 1",
        "error_backoff must be between 1ms and one day",
        "stale_if_error must be zero (off) or between 1ms and 365 days",
        "soft_timeout must be between 1ms and 365 days",
        "near_ttl must be zero (off) or between 1ms and 365 days",
    ];
}

/// `bits` with `bit` set if `bad`, cleared otherwise.
const fn mark(bits: u8, bit: u8, bad: bool) -> u8 {
    if bad { bits | bit } else { bits & !bit }
}

/// The mode of [`GetOptions`] that every call takes: the getter runs within the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attached;

/// The mode of [`GetOptions`] with a [`soft_timeout`](GetOptions::soft_timeout), which only
/// [`Cache::get_detached`](crate::Cache::get_detached) takes: its getter may finish in the
/// background, after the call has returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Detached;

impl GetOptions {
    /// A call bounded by `exec_limit` whose value lives `expire`, with the cache's other
    /// settings. Both must be more than zero and at most 365 days
    /// ([`Error::InvalidArgument`](crate::Error::InvalidArgument) otherwise).
    #[must_use]
    pub const fn new(exec_limit: Duration, expire: Duration) -> Self {
        let invalid = mark(
            mark(0, Invalid::EXEC_LIMIT, !call_duration_in_range(exec_limit)),
            Invalid::EXPIRE,
            !call_duration_in_range(expire),
        );
        GetOptions {
            exec_limit,
            expire,
            refresh_ahead: None,
            error_backoff: None,
            stale_if_error: None,
            soft_timeout: None,
            near_ttl: None,
            invalid,
            mode: PhantomData,
        }
    }
}

impl<M> GetOptions<M> {
    /// Refreshes the value ahead of its expiry, as
    /// [`CacheBuilder::refresh_ahead`](crate::CacheBuilder::refresh_ahead) does, for these calls
    /// only: it takes precedence over the cache's setting (0 turns it off). At least 0 and under
    /// 1 ([`Error::InvalidArgument`](crate::Error::InvalidArgument) otherwise).
    #[must_use]
    pub const fn refresh_ahead(mut self, fraction: f64) -> Self {
        self.refresh_ahead = Some(fraction);
        let valid = refresh_ahead_in_range(fraction);
        self.invalid = mark(self.invalid, Invalid::REFRESH_AHEAD, !valid);
        self
    }

    /// Backs off a failing getter, as
    /// [`CacheBuilder::error_backoff`](crate::CacheBuilder::error_backoff) does, for these calls:
    /// it takes precedence over the cache's setting. Between 1 ms and one day
    /// ([`Error::InvalidArgument`](crate::Error::InvalidArgument) otherwise).
    #[must_use]
    pub const fn error_backoff(mut self, backoff: Duration) -> Self {
        self.error_backoff = Some(backoff);
        let valid = error_backoff_in_range(backoff);
        self.invalid = mark(self.invalid, Invalid::ERROR_BACKOFF, !valid);
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
        let valid = max_stale.is_zero() || duration_in_range(max_stale);
        self.invalid = mark(self.invalid, Invalid::STALE_IF_ERROR, !valid);
        self
    }

    /// When the call recomputes a value it has (stale, or refreshed ahead, with
    /// [`stale_if_error`](Self::stale_if_error) on: values without it carry no freshness to
    /// serve them by) and the getter has not finished within `soft_timeout`, the call returns
    /// the value it has; the getter goes on
    /// in the background, still bounded by `exec_limit`, and stores its result when it finishes
    /// (FusionCache's soft timeout with background completion). Without a value to return, the
    /// call waits for the getter up to `exec_limit`, as always. Takes precedence over
    /// [`CacheBuilder::soft_timeout`](crate::CacheBuilder::soft_timeout); at most `exec_limit`
    /// matters. Only [`Cache::get_detached`](crate::Cache::get_detached) takes these options.
    #[must_use]
    pub const fn soft_timeout(self, soft_timeout: Duration) -> GetOptions<Detached> {
        let valid = duration_in_range(soft_timeout);
        GetOptions {
            soft_timeout: Some(soft_timeout),
            invalid: mark(self.invalid, Invalid::SOFT_TIMEOUT, !valid),
            ..self.in_mode()
        }
    }

    /// Keeps the value in this process for `near_ttl`, and serves it from there, as
    /// [`CacheBuilder::near_ttl`](crate::CacheBuilder::near_ttl) does (with its staleness
    /// bound), for these calls: it takes precedence over the cache's setting (zero turns it
    /// off). Only [`Cache::get_near`](crate::Cache::get_near) keeps values near (its value type
    /// is `Clone + Send + Sync + 'static`); `get_with` and `get_detached` keep nothing whatever
    /// it says (they still refuse one out of range), so that one `static` of options can serve
    /// both. Zero, or between 1 ms and 365 days
    /// ([`Error::InvalidArgument`](crate::Error::InvalidArgument) otherwise).
    #[must_use]
    pub const fn near_ttl(mut self, near_ttl: Duration) -> Self {
        self.near_ttl = Some(near_ttl);
        let valid = near_ttl.is_zero() || duration_in_range(near_ttl);
        self.invalid = mark(self.invalid, Invalid::NEAR_TTL, !valid);
        self
    }

    /// Why a call refuses these options, if it does: the first setting out of range.
    #[inline]
    pub(crate) fn refused(&self) -> Option<&'static str> {
        if self.invalid == 0 {
            return None;
        }
        Some(Invalid::REASONS[self.invalid.trailing_zeros() as usize])
    }

    /// These options, in the mode every call takes: what the flight reads.
    pub(crate) const fn erased(&self) -> GetOptions {
        self.in_mode()
    }

    /// The same settings, in mode `N`.
    const fn in_mode<N>(&self) -> GetOptions<N> {
        GetOptions {
            exec_limit: self.exec_limit,
            expire: self.expire,
            refresh_ahead: self.refresh_ahead,
            error_backoff: self.error_backoff,
            stale_if_error: self.stale_if_error,
            soft_timeout: self.soft_timeout,
            near_ttl: self.near_ttl,
            invalid: self.invalid,
            mode: PhantomData,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::MAX_DURATION;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn each_setting_out_of_range_is_refused_with_its_reason() {
        let ok = GetOptions::new(S, S);
        assert_eq!(ok.refused(), None);
        let year = MAX_DURATION + S;
        let tiny = Duration::from_micros(10);
        let cases: [(GetOptions, &str); 11] = [
            (GetOptions::new(Duration::ZERO, S), "exec_limit"),
            (GetOptions::new(year, S), "exec_limit"),
            (GetOptions::new(S, Duration::ZERO), "expire"),
            (ok.refresh_ahead(1.0), "refresh_ahead"),
            (ok.refresh_ahead(f64::NAN), "refresh_ahead"),
            (
                ok.error_backoff(Duration::from_secs(2 * 24 * 3600)),
                "error_backoff",
            ),
            (ok.stale_if_error(tiny), "stale_if_error"),
            (ok.soft_timeout(tiny).erased(), "soft_timeout"),
            (ok.near_ttl(tiny), "near_ttl"),
            (ok.near_ttl(year), "near_ttl"),
            // The first in the order a call reports them.
            (
                GetOptions::new(Duration::ZERO, Duration::ZERO).near_ttl(tiny),
                "exec_limit",
            ),
        ];
        for (options, setting) in cases {
            let reason = options.refused().unwrap_or_else(|| panic!("{options:?}"));
            assert!(reason.starts_with(setting), "{reason} for {options:?}");
        }
        // Zero turns these off; a later valid setting replaces an invalid one.
        let off = ok.stale_if_error(Duration::ZERO).near_ttl(Duration::ZERO);
        assert_eq!(off.refused(), None);
        assert_eq!(ok.refresh_ahead(2.0).refresh_ahead(0.2).refused(), None);
        assert_eq!(ok.near_ttl(tiny).near_ttl(S).refused(), None);
    }

    /// Checked when made: a `static`'s options cost a call nothing.
    #[test]
    fn options_are_checked_at_compile_time_in_a_static() {
        static BAD: GetOptions = GetOptions::new(S, S).refresh_ahead(1.5);
        const { assert!(BAD.invalid != 0) };
    }
}
