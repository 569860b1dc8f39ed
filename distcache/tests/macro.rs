//! `#[distcached]`: what the expansion keeps, and the key it builds.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use distcache::{Cache, distcached};

#[derive(Debug, PartialEq, thiserror::Error)]
enum AppError {
    #[error("cache: {0}")]
    Cache(String),
    #[error("not found: {0}")]
    NotFound(u32),
    #[error("parse: {0}")]
    Parse(#[from] std::num::ParseIntError),
}

impl From<distcache::Error> for AppError {
    fn from(err: distcache::Error) -> Self {
        AppError::Cache(err.to_string())
    }
}

/// What a direct get reads under `key`: the macro's stored value if the key is the same, else
/// `other`, which the getter returns.
async fn stored_under<T>(cache: &Cache, key: &str, other: T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let second = Duration::from_secs(1);
    cache
        .get(key, second, second, || async {
            Ok::<_, distcache::Error>(other)
        })
        .await
        .unwrap()
}

/// Each test uses its own cache, so that tests running in parallel do not share counters.
macro_rules! test_cache {
    ($name:ident) => {
        static $name: LazyLock<Cache> = LazyLock::new(|| Cache::builder().build().unwrap());
    };
}

test_cache!(ONCE);
static ONCE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Squares, slowly.
#[distcached(expire = "1m", exec_limit = "10s", cache = ONCE)]
async fn square(x: u64) -> Result<u64, AppError> {
    ONCE_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(x * x)
}

#[tokio::test]
async fn the_body_runs_once_per_distinct_arguments() {
    let (a, b, c) = tokio::join!(square(3), square(3), square(4));
    assert_eq!((a, b, c), (Ok(9), Ok(9), Ok(16)));
    assert_eq!(square(3).await, Ok(9));
    assert_eq!(ONCE_RUNS.load(Ordering::SeqCst), 2);
    assert_eq!(ONCE.stats().getter_runs, 2);
}

test_cache!(KEYS);

#[distcached(expire = "1m", exec_limit = "10s", cache = KEYS)]
async fn describe(id: u32, label: &str) -> Result<String, AppError> {
    Ok(format!("{id}:{label}"))
}

#[tokio::test]
async fn the_key_is_the_module_path_the_name_and_the_arguments_as_json() {
    assert_eq!(describe(7, "a b").await.unwrap(), "7:a b");
    let key = concat!(module_path!(), "::describe", r#"[7,"a b"]"#);
    let stored: String = stored_under(&KEYS, key, "not this".to_owned()).await;
    assert_eq!(
        stored, "7:a b",
        "a direct get with the same key reads the macro's value"
    );
}

test_cache!(PINNED);

#[distcached(expire = "1m", exec_limit = "10s", cache = PINNED, name = "pricing::quote")]
async fn quote_v1(sku: u32) -> Result<u32, AppError> {
    Ok(sku + 1)
}

#[distcached(expire = "1m", exec_limit = "10s", cache = PINNED, name = "pricing::quote")]
async fn quote_v2(sku: u32) -> Result<u32, AppError> {
    Ok(sku + 2)
}

#[tokio::test]
async fn name_pins_the_functions_part_of_the_key() {
    assert_eq!(quote_v1(10).await, Ok(11));
    assert_eq!(
        quote_v2(10).await,
        Ok(11),
        "same name and arguments, same key"
    );
    let key = r#"pricing::quote[10]"#;
    let stored: u32 = stored_under(&PINNED, key, 0).await;
    assert_eq!(stored, 11);
}

test_cache!(BODY);

#[distcached(expire = "1m", exec_limit = "10s", cache = BODY)]
async fn parse_positive(text: String) -> Result<u32, AppError> {
    let n: u32 = text.trim().parse()?;
    if n == 0 {
        return Err(AppError::NotFound(0));
    }
    Ok(n)
}

#[tokio::test]
async fn question_mark_and_return_work_in_the_body() {
    assert_eq!(parse_positive(" 12 ".into()).await, Ok(12));
    assert!(matches!(
        parse_positive("x".into()).await,
        Err(AppError::Parse(_))
    ));
    assert_eq!(parse_positive("0".into()).await, Err(AppError::NotFound(0)));
}

test_cache!(PATTERNS);

#[derive(serde::Serialize)]
struct Point {
    x: i32,
    y: i32,
}

#[distcached(expire = "1m", exec_limit = "10s", cache = PATTERNS)]
async fn manhattan(
    (a, b): (i32, i32),
    Point { x, y }: Point,
    mut scale: i32,
) -> Result<i32, AppError> {
    scale += 0;
    Ok(((a - x).abs() + (b - y).abs()) * scale)
}

#[tokio::test]
async fn destructuring_arguments_are_keyed_whole() {
    assert_eq!(manhattan((1, 2), Point { x: 4, y: 6 }, 2).await, Ok(14));
    assert_eq!(manhattan((1, 2), Point { x: 4, y: 7 }, 2).await, Ok(16));
    assert_eq!(PATTERNS.stats().getter_runs, 2);
}

test_cache!(NO_ARGS);

#[distcached(expire = "1m", exec_limit = "10s", cache = NO_ARGS)]
async fn config_version() -> Result<u32, AppError> {
    Ok(3)
}

#[tokio::test]
async fn functions_without_arguments_have_one_key() {
    assert_eq!(config_version().await, Ok(3));
    let key = concat!(module_path!(), "::config_version[]");
    let stored: u32 = stored_under(&NO_ARGS, key, 0).await;
    assert_eq!(stored, 3);
}

test_cache!(UNKEYABLE);

#[distcached(expire = "1m", exec_limit = "10s", cache = UNKEYABLE)]
async fn total(counts: HashMap<Vec<u8>, u32>) -> Result<u32, AppError> {
    Ok(counts.values().sum())
}

#[tokio::test]
async fn arguments_that_cannot_be_serialized_at_run_time_run_uncached() {
    let counts = HashMap::from([(vec![1], 2), (vec![2], 3)]);
    assert_eq!(total(counts.clone()).await, Ok(5));
    assert_eq!(total(counts).await, Ok(5));
    let stats = UNKEYABLE.stats();
    assert_eq!(
        (
            stats.getter_runs,
            stats.uncached_calls,
            stats.degraded_calls
        ),
        (2, 2, 0),
        "{stats:?}"
    );
}

test_cache!(ATTRS);

struct Repo;

impl Repo {
    /// Associated functions without `self` work; attributes and visibility are kept.
    #[must_use = "it is a query"]
    #[distcached(expire = "1m", exec_limit = "10s", cache = ATTRS, name = "Repo::count")]
    pub(crate) async fn count(table: &'static str) -> Result<usize, AppError> {
        Ok(table.len())
    }
}

#[tokio::test]
async fn attributes_visibility_and_associated_functions_are_kept() {
    assert_eq!(Repo::count("users").await, Ok(5));
}

#[test]
fn the_future_is_send_when_the_body_is() {
    fn assert_send<T: Send>(_: T) {}
    assert_send(square(1));
    assert_send(describe(1, "x"));
    assert_send(manhattan((0, 0), Point { x: 0, y: 0 }, 1));
}

test_cache!(DEFAULT_CHECK);

#[tokio::test]
async fn the_default_cache_is_built_from_the_environment() {
    // `DISTCACHE_SERVERS` is unset in the test environment: the in-process store.
    let cache = distcache::default_cache().unwrap();
    assert_eq!(cache.to_string(), "in-process store");
    assert!(
        distcache::set_default(DEFAULT_CHECK.clone()).is_err(),
        "already in place"
    );
}

static REPORT_RUNS: AtomicUsize = AtomicUsize::new(0);

/// The cache has `refresh_ahead` off; the function turns it on for its own calls.
#[distcached(expire = "10s", exec_limit = "5s", refresh_ahead = 0.2, cache = REPORTS)]
async fn report(day: u32) -> Result<String, AppError> {
    REPORT_RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(format!("report {day}"))
}

static REPORTS: LazyLock<Cache> = LazyLock::new(|| Cache::builder().build().unwrap());

#[tokio::test(start_paused = true)]
async fn refresh_ahead_is_set_per_function() {
    assert_eq!(report(1).await.unwrap(), "report 1");
    tokio::time::advance(Duration::from_millis(8500)).await;
    // 1.5 s left of 10, under a fifth: this call returns the value and computes the next.
    assert_eq!(report(1).await.unwrap(), "report 1");
    assert_eq!(REPORTS.stats().refreshes, 1);
    assert_eq!(REPORT_RUNS.load(Ordering::SeqCst), 2);
}

static FLAKY_RUNS: AtomicUsize = AtomicUsize::new(0);
test_cache!(FLAKY);

#[distcached(expire = "1m", exec_limit = "5s", error_backoff = "30s", cache = FLAKY)]
async fn flaky(id: u32) -> Result<u32, AppError> {
    FLAKY_RUNS.fetch_add(1, Ordering::SeqCst);
    Err(AppError::NotFound(id))
}

#[tokio::test]
async fn error_backoff_is_set_per_function() {
    assert_eq!(flaky(1).await, Err(AppError::NotFound(1)));
    let err = flaky(1).await.unwrap_err();
    assert!(
        matches!(&err, AppError::Cache(message) if message.contains("backed off")),
        "{err:?}"
    );
    assert_eq!(FLAKY_RUNS.load(Ordering::SeqCst), 1);
}

test_cache!(YEAR);

/// The longest `expire` and `exec_limit` the attribute takes: 365 days, exactly (longer is a
/// compile error, `tests/ui/bad-duration.rs`).
#[distcached(expire = "365days", exec_limit = "365days", cache = YEAR)]
async fn yearly(x: u32) -> Result<u32, AppError> {
    Ok(x)
}

#[tokio::test]
async fn a_year_is_the_longest_duration_and_is_taken() {
    assert_eq!(yearly(3).await, Ok(3));
    assert_eq!(YEAR.stats().getter_runs, 1);
}

static ORIGIN_DOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
test_cache!(STALE);

#[distcached(expire = "200ms", exec_limit = "5s", stale_if_error = "1h", cache = STALE)]
async fn quote(id: u32) -> Result<u32, AppError> {
    if ORIGIN_DOWN.load(Ordering::SeqCst) {
        return Err(AppError::NotFound(id));
    }
    Ok(id * 10)
}

/// Freshness is on the wall clock, which paused time does not move: real time passes here.
#[tokio::test]
async fn stale_if_error_is_set_per_function() {
    assert_eq!(quote(4).await, Ok(40));
    ORIGIN_DOWN.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(quote(4).await, Ok(40), "stale, since the origin failed");
    assert_eq!(STALE.stats().stale_served, 1);
    assert_eq!(
        quote(5).await,
        Err(AppError::NotFound(5)),
        "nothing stale to serve"
    );
}

static SLOW_ORIGIN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
test_cache!(SOFT);

#[distcached(
    expire = "200ms",
    exec_limit = "5s",
    stale_if_error = "1h",
    soft_timeout = "50ms",
    cache = SOFT
)]
async fn rate(id: u32) -> Result<u32, AppError> {
    if SLOW_ORIGIN.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        return Ok(id * 100);
    }
    Ok(id)
}

#[tokio::test]
async fn soft_timeout_is_set_per_function() {
    assert_eq!(rate(3).await, Ok(3));
    SLOW_ORIGIN.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let started = std::time::Instant::now();
    assert_eq!(
        rate(3).await,
        Ok(3),
        "the stale value, after the soft timeout"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(SOFT.stats().soft_timeouts, 1);
}
