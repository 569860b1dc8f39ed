//! The process-wide default cache, which `#[distcached]` functions use unless told otherwise.

use std::sync::OnceLock;

use tracing::info;

use crate::core::refresh_ahead_in_range;
use crate::{BuildError, Cache, Error};

static DEFAULT: OnceLock<Result<Cache, BuildError>> = OnceLock::new();

/// Makes `cache` the process-wide default, used by `#[distcached]` functions without a
/// `cache = ...` argument. Call it at start-up, before the first such call.
///
/// Fails, giving `cache` back, if a default is already in place: set before, or built from the
/// environment by an earlier call.
///
/// ```
/// let cache = distcache::Cache::builder().namespace("myapp").build()?;
/// distcache::set_default(cache).expect("set once, at start-up");
/// # Ok::<(), distcache::BuildError>(())
/// ```
pub fn set_default(cache: Cache) -> Result<(), Cache> {
    let mut offered = Some(cache);
    DEFAULT.get_or_init(|| Ok(offered.take().expect("taken once")));
    match offered {
        None => Ok(()),
        Some(refused) => Err(refused),
    }
}

/// The process-wide default cache: the one given to [`set_default`], else one built on first
/// use from the environment:
///
/// - `DISTCACHE_SERVERS`: the memcached servers, comma-separated, each as
///   [`CacheBuilder::server`](crate::CacheBuilder::server) takes it
///   (`10.0.0.1:11211,10.0.0.2:11211:2`); unset or empty, values are kept in this process (the
///   in-process store); a log line says which;
/// - `DISTCACHE_NAMESPACE`: the [namespace](crate::CacheBuilder::namespace), default none;
/// - `DISTCACHE_REFRESH_AHEAD`: the [refresh-ahead fraction](crate::CacheBuilder::refresh_ahead),
///   a number from 0 (the default: off) to under 1.
///
/// A configuration that does not build fails every call through the default cache with
/// [`Error::DefaultCache`], so that it is fixed rather than silently ignored.
pub fn default_cache() -> Result<&'static Cache, Error> {
    match DEFAULT.get_or_init(from_env) {
        Ok(cache) => Ok(cache),
        Err(err) => Err(Error::DefaultCache(err.clone())),
    }
}

fn from_env() -> Result<Cache, BuildError> {
    from_vars(|name| std::env::var(name).ok())
}

/// The default cache from variables read by `env`.
fn from_vars(env: impl Fn(&str) -> Option<String>) -> Result<Cache, BuildError> {
    let var = |name| env(name).filter(|v: &String| !v.trim().is_empty());
    let mut builder = Cache::builder();
    if let Some(namespace) = var("DISTCACHE_NAMESPACE") {
        builder = builder.namespace(namespace);
    }
    if let Some(fraction) = var("DISTCACHE_REFRESH_AHEAD") {
        let invalid = || BuildError::InvalidSetting {
            setting: "refresh_ahead",
            reason: format!(
                "DISTCACHE_REFRESH_AHEAD={fraction:?} is not a number from 0 to under 1"
            ),
        };
        let value: f64 = fraction.trim().parse().map_err(|_| invalid())?;
        if !refresh_ahead_in_range(value) {
            return Err(invalid());
        }
        builder = builder.refresh_ahead(value);
    }
    match var("DISTCACHE_SERVERS") {
        Some(servers) => {
            let cache = builder
                .servers(servers.split(',').filter(|s| !s.trim().is_empty()))
                .build()?;
            info!("distcache: the default cache uses {cache} (DISTCACHE_SERVERS)");
            Ok(cache)
        }
        None => {
            let cache = builder.build()?;
            info!(
                "distcache: DISTCACHE_SERVERS is unset: the default cache keeps values in this process"
            );
            Ok(cache)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<Cache, BuildError> {
        from_vars(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn refresh_ahead_comes_from_the_environment_and_a_bad_one_is_a_typed_error() {
        let refresh = |cache: Cache| cache.refresh_ahead();
        assert_eq!(with(&[]).map(refresh).unwrap(), 0.0);
        assert_eq!(
            with(&[("DISTCACHE_REFRESH_AHEAD", " 0.25 ")])
                .map(refresh)
                .unwrap(),
            0.25
        );
        for bad in ["soon", "1", "-0.5"] {
            let err = with(&[("DISTCACHE_REFRESH_AHEAD", bad)]).unwrap_err();
            assert!(
                matches!(
                    err,
                    BuildError::InvalidSetting {
                        setting: "refresh_ahead",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }
}
