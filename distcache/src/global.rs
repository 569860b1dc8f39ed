//! The process-wide default cache, which `#[distcached]` functions use unless told otherwise.

use std::sync::OnceLock;
use std::time::Duration;

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
///   a number from 0 (the default: off) to under 1;
/// - `DISTCACHE_ERROR_BACKOFF`: the [backoff of a failing getter](crate::CacheBuilder::error_backoff),
///   a whole number of milliseconds, seconds, minutes or hours (`"500ms"`, `"1s"`, `"2m"`);
///   default off;
/// - `DISTCACHE_STALE_IF_ERROR`: how long [values are kept past their expire](crate::CacheBuilder::stale_if_error),
///   written as `DISTCACHE_ERROR_BACKOFF` is (`"1h"`); default off;
/// - `DISTCACHE_SOFT_TIMEOUT`: the [soft timeout](crate::CacheBuilder::soft_timeout) of detached
///   calls, written the same way (`"100ms"`); default off;
/// - `DISTCACHE_NEAR_TTL`: how long [values are kept in this process](crate::CacheBuilder::near_ttl)
///   by `#[distcached(near_ttl = "cache")]` functions and `get_near` calls without a `near_ttl`
///   of their own, written the same way (`"1s"`); default off;
/// - `DISTCACHE_USERNAME` and `DISTCACHE_PASSWORD`: the [credentials](crate::CacheBuilder::credentials)
///   for servers that ask for them; both or neither;
/// - `DISTCACHE_TLS=1`: TLS (`CacheBuilder::tls`, with the `tls` feature) with the system's roots, or
///   `DISTCACHE_TLS_CA_FILE=path` with a PEM file's (either implies TLS; with the `tls` feature);
/// - `DISTCACHE_SIGNING_KEYS`: the [signing keys](crate::CacheBuilder::signing_keys), separated
///   by commas, the first signing.
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
    if let Some(backoff) = var("DISTCACHE_ERROR_BACKOFF") {
        let parsed = duration(&backoff).ok_or_else(|| BuildError::InvalidSetting {
            setting: "error_backoff",
            reason: format!(
                "DISTCACHE_ERROR_BACKOFF={backoff:?} is not a duration such as \"500ms\", \"1s\" or \"2m\""
            ),
        })?;
        builder = builder.error_backoff(parsed);
    }
    if let Some(max_stale) = var("DISTCACHE_STALE_IF_ERROR") {
        let parsed = duration(&max_stale).ok_or_else(|| BuildError::InvalidSetting {
            setting: "stale_if_error",
            reason: format!(
                "DISTCACHE_STALE_IF_ERROR={max_stale:?} is not a duration such as \"30m\" or \"1h\""
            ),
        })?;
        builder = builder.stale_if_error(parsed);
    }
    if let Some(soft) = var("DISTCACHE_SOFT_TIMEOUT") {
        let parsed = duration(&soft).ok_or_else(|| BuildError::InvalidSetting {
            setting: "soft_timeout",
            reason: format!(
                "DISTCACHE_SOFT_TIMEOUT={soft:?} is not a duration such as \"100ms\" or \"1s\""
            ),
        })?;
        builder = builder.soft_timeout(parsed);
    }
    if let Some(near) = var("DISTCACHE_NEAR_TTL") {
        let parsed = duration(&near).ok_or_else(|| BuildError::InvalidSetting {
            setting: "near_ttl",
            reason: format!(
                "DISTCACHE_NEAR_TTL={near:?} is not a duration such as \"500ms\" or \"1s\""
            ),
        })?;
        builder = builder.near_ttl(parsed);
    }
    match (var("DISTCACHE_USERNAME"), env("DISTCACHE_PASSWORD")) {
        (Some(username), Some(password)) => builder = builder.credentials(username, password),
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => {
            return Err(BuildError::InvalidSetting {
                setting: "credentials",
                reason: "DISTCACHE_USERNAME and DISTCACHE_PASSWORD are set together, or not at all"
                    .into(),
            });
        }
    }
    let tls = var("DISTCACHE_TLS").map(|v| v.trim().to_owned());
    let ca_file = var("DISTCACHE_TLS_CA_FILE");
    match tls.as_deref() {
        Some("1" | "true") => builder = builder.tls_from_env(ca_file),
        None | Some("0" | "false") if ca_file.is_some() => {
            builder = builder.tls_from_env(ca_file);
        }
        None | Some("0" | "false") => {}
        Some(other) => {
            return Err(BuildError::InvalidSetting {
                setting: "tls",
                reason: format!("DISTCACHE_TLS={other:?} is not 1 or 0"),
            });
        }
    }
    if let Some(keys) = env("DISTCACHE_SIGNING_KEYS").filter(|k| !k.is_empty()) {
        builder = builder.signing_keys(keys.split(','));
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

/// `"500ms"`, `"1s"`, `"2m"`: a whole number and its unit.
fn duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => Some(Duration::from_secs(number.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(number.checked_mul(3600)?)),
        _ => None,
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

    #[test]
    fn stale_if_error_comes_from_the_environment_and_a_bad_one_is_a_typed_error() {
        let max_stale = |cache: Cache| cache.stale_if_error();
        assert_eq!(with(&[]).map(max_stale).unwrap(), Duration::ZERO);
        for (text, d) in [
            ("1h", Duration::from_secs(3600)),
            (" 30m", Duration::from_secs(1800)),
            ("1500ms", Duration::from_millis(1500)),
        ] {
            let got = with(&[("DISTCACHE_STALE_IF_ERROR", text)]).map(max_stale);
            assert_eq!(got.unwrap(), d, "{text}");
        }
        for bad in ["later", "1", "9000h", "1d"] {
            let err = with(&[("DISTCACHE_STALE_IF_ERROR", bad)]).unwrap_err();
            assert!(
                matches!(
                    err,
                    BuildError::InvalidSetting {
                        setting: "stale_if_error",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn near_ttl_comes_from_the_environment_and_a_bad_one_is_a_typed_error() {
        let near = |cache: Cache| cache.near_ttl();
        assert_eq!(with(&[]).map(near).unwrap(), Duration::ZERO);
        let got = with(&[("DISTCACHE_NEAR_TTL", "1s")]).map(near);
        assert_eq!(got.unwrap(), Duration::from_secs(1));
        for bad in ["soon", "9000h"] {
            let err = with(&[("DISTCACHE_NEAR_TTL", bad)]).unwrap_err();
            assert!(
                matches!(
                    err,
                    BuildError::InvalidSetting {
                        setting: "near_ttl",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn soft_timeout_comes_from_the_environment_and_a_bad_one_is_a_typed_error() {
        let soft = |cache: Cache| cache.soft_timeout();
        assert_eq!(with(&[]).map(soft).unwrap(), None);
        let got = with(&[("DISTCACHE_SOFT_TIMEOUT", "100ms")]).map(soft);
        assert_eq!(got.unwrap(), Some(Duration::from_millis(100)));
        for bad in ["fast", "0ms", "100"] {
            let err = with(&[("DISTCACHE_SOFT_TIMEOUT", bad)]).unwrap_err();
            assert!(
                matches!(
                    err,
                    BuildError::InvalidSetting {
                        setting: "soft_timeout",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn tls_and_signing_keys_come_from_the_environment() {
        let servers = ("DISTCACHE_SERVERS", "127.0.0.1:11211");
        let setting = |err: BuildError| match err {
            BuildError::InvalidSetting { setting, .. } => setting,
            other => panic!("{other}"),
        };
        assert_eq!(
            setting(with(&[servers, ("DISTCACHE_TLS", "yes")]).unwrap_err()),
            "tls"
        );
        let missing = ("DISTCACHE_TLS_CA_FILE", "/nonexistent/ca.pem");
        let err = with(&[servers, missing]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        assert_eq!(setting(err), "tls");
        assert!(with(&[servers, ("DISTCACHE_TLS", "0")]).is_ok());
        let keys = "a key of at least thirty-two bytes,another key of thirty-two bytes or more";
        assert!(with(&[servers, ("DISTCACHE_SIGNING_KEYS", keys)]).is_ok());
        let short = with(&[servers, ("DISTCACHE_SIGNING_KEYS", "short-secret")]).unwrap_err();
        assert!(!short.to_string().contains("short-secret"), "{short}");
        assert_eq!(setting(short), "signing_keys");
    }

    #[test]
    fn credentials_come_from_the_environment_both_or_neither() {
        assert!(
            with(&[
                ("DISTCACHE_USERNAME", "alice"),
                ("DISTCACHE_PASSWORD", "pw")
            ])
            .is_ok()
        );
        for one in [
            ("DISTCACHE_USERNAME", "alice"),
            ("DISTCACHE_PASSWORD", "pw"),
        ] {
            let err = with(&[one]).unwrap_err();
            assert!(
                matches!(
                    err,
                    BuildError::InvalidSetting {
                        setting: "credentials",
                        ..
                    }
                ),
                "{err}"
            );
        }
        let err = with(&[
            ("DISTCACHE_USERNAME", "al ice"),
            ("DISTCACHE_PASSWORD", "pw"),
        ])
        .unwrap_err();
        assert!(!err.to_string().contains("pw"), "{err}");
    }

    #[test]
    fn error_backoff_comes_from_the_environment_and_a_bad_one_is_a_typed_error() {
        let backoff = |cache: Cache| cache.error_backoff();
        assert_eq!(with(&[]).map(backoff).unwrap(), None);
        for (text, d) in [
            ("500ms", Duration::from_millis(500)),
            (" 1s ", Duration::from_secs(1)),
            ("2m", Duration::from_secs(120)),
        ] {
            let got = with(&[("DISTCACHE_ERROR_BACKOFF", text)]).map(backoff);
            assert_eq!(got.unwrap(), Some(d), "{text}");
        }
        for bad in ["soon", "1", "25h", "0ms", "2d"] {
            let err = with(&[("DISTCACHE_ERROR_BACKOFF", bad)]).unwrap_err();
            assert!(
                matches!(
                    err,
                    BuildError::InvalidSetting {
                        setting: "error_backoff",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }
}
