//! Authentication (`memcached -Y`): a cache logs in on each new connection where the server
//! asks for it, and nowhere else; a refused login degrades each call within its bound, says
//! "authentication" and the server, once per retry interval in the log, and never shows the
//! password.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distcache::{BuildError, Cache, CacheBuilder, Error, OnUnavailable};
use support::memcached::{Memcached, Outside, stat};
use tokio::time::Instant;

const USER: &str = "alice";
const PASSWORD: &str = "correct-horse-battery";
const MINUTE: Duration = Duration::from_secs(60);
const CONNECT: Duration = Duration::from_millis(300);
const IO: Duration = Duration::from_millis(300);
const RETRY: Duration = Duration::from_secs(1);

fn on(server: &Memcached, password: &str) -> CacheBuilder {
    Cache::builder()
        .server(server.addr())
        .connect_timeout(CONNECT)
        .io_timeout(IO)
        .retry_interval(RETRY)
        .credentials(USER, password)
}

#[tokio::test]
async fn two_caches_log_in_and_share_one_getter_run() {
    let server = Memcached::start_with_auth(USER, PASSWORD).await;
    let (a, b) = (
        on(&server, PASSWORD).build().unwrap(),
        on(&server, PASSWORD).build().unwrap(),
    );
    for cache in [&a, &b] {
        let got: String = cache
            .get("k", MINUTE, MINUTE, || async {
                Ok::<_, Error>("value".to_owned())
            })
            .await
            .unwrap();
        assert_eq!(got, "value");
    }
    let runs = a.stats().getter_runs + b.stats().getter_runs;
    assert_eq!(runs, 1, "the second cache read the first one's value");
    assert_eq!(a.stats().degraded_calls + b.stats().degraded_calls, 0);
}

/// Collects what the `tracing` events of this thread write.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A wrong password: every call returns the getter's value within `exec_limit` +
/// `connect_timeout` + `io_timeout`; with `OnUnavailable::Fail`, an error that names the server
/// and says "authentication". The log says why at warn once per retry interval, not once per
/// call. The password shows nowhere.
#[tokio::test(flavor = "current_thread")]
async fn a_wrong_password_degrades_within_the_bound_and_is_logged_once_per_interval() {
    let server = Memcached::start_with_auth(USER, PASSWORD).await;
    let wrong = "wrong-password";
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        // Every level, so that the password is looked for in debug lines too.
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer({
            let log = log.clone();
            move || log.clone()
        })
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let cache = on(&server, wrong).build().unwrap();
    let limit = Duration::from_secs(1);
    let bound = limit + CONNECT + IO;
    let started = Instant::now();
    let mut calls = 0;
    // Calls for two retry intervals and a half.
    while started.elapsed() < RETRY * 5 / 2 {
        let asked = Instant::now();
        let got: String = cache
            .get(&format!("k{calls}"), limit, MINUTE, || async {
                Ok::<_, Error>("from the getter".to_owned())
            })
            .await
            .unwrap();
        assert_eq!(got, "from the getter");
        assert!(
            asked.elapsed() <= bound,
            "a call took {:?}",
            asked.elapsed()
        );
        calls += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cache.stats().degraded_calls, calls);
    let text = log.text();
    // The build warns once that the login crosses the network in clear; then the node marked
    // down, and one line per probe, once per retry interval.
    assert!(
        text.contains("password crosses the network in clear"),
        "{text}"
    );
    let warnings = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("authentication"))
        .count();
    assert!(
        text.contains("authentication") && text.contains(&server.addr()),
        "the log says why and where:\n{text}"
    );
    assert!(
        (1..=4).contains(&warnings),
        "{warnings} warnings for {calls} calls over 2.5 retry intervals:\n{text}"
    );
    assert!(
        !text.contains(wrong),
        "the password is never logged:\n{text}"
    );

    let failing = on(&server, wrong)
        .on_unavailable(OnUnavailable::Fail)
        .build()
        .unwrap();
    // Every call says why, not only the one that met the refusal.
    for _ in 0..3 {
        let err = failing
            .get("k", limit, MINUTE, || async { Ok::<_, Error>(1u32) })
            .await
            .unwrap_err();
        let shown = format!("{err} / {err:?} / {}", source_chain(&err));
        assert!(matches!(err, Error::Unavailable { .. }), "{shown}");
        assert!(shown.contains("authentication"), "{shown}");
        assert!(!shown.contains(wrong), "{shown}");
    }
    let debug = format!("{failing:?} {:?}", on(&server, wrong));
    assert!(!debug.contains(wrong), "{debug}");
}

fn source_chain(err: &dyn std::error::Error) -> String {
    let mut chain = String::new();
    let mut next = err.source();
    while let Some(source) = next {
        chain.push_str(&source.to_string());
        chain.push_str(" / ");
        next = source.source();
    }
    chain
}

/// A server that asks for no login is never sent the password: it would store it as an item.
#[tokio::test]
async fn a_server_that_asks_for_no_login_is_never_sent_the_password() {
    let server = Memcached::start().await;
    let cache = on(&server, PASSWORD).build().unwrap();
    let got: u32 = cache
        .get("k", MINUTE, MINUTE, || async { Ok::<_, Error>(7) })
        .await
        .unwrap();
    assert_eq!(got, 7);
    assert_eq!(cache.stats().degraded_calls, 0);
    assert_eq!(
        stat(&server.addr(), "curr_items").await,
        1,
        "the value alone: no login was stored as an item"
    );
}

#[test]
fn credentials_the_server_file_cannot_hold_are_a_build_error_without_the_password() {
    for (user, password) in [
        ("a b", "pw"),
        ("a:b", "pw"),
        ("", "pw"),
        ("alice", ""),
        ("alice", "two words"),
    ] {
        let err = Cache::builder()
            .credentials(user, password)
            .build()
            .unwrap_err();
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
    let err = Cache::builder()
        .credentials("alice", "tab\there")
        .build()
        .unwrap_err();
    assert!(!err.to_string().contains("here"), "{err}");
}

const KEY_1: &[u8] = b"the first signing key, 32+ bytes!";
const KEY_2: &[u8] = b"the second signing key, 32+ bytes";

fn signed(server: &Memcached, keys: &[&[u8]]) -> Cache {
    Cache::builder()
        .server(server.addr())
        .signing_keys(keys.iter().copied())
        .build()
        .unwrap()
}

/// A raw client plants a value of the right type under a signed cache's key, once with a plain
/// distcache item's flags and once with a signed one's (and a tag that is not one): it is never
/// returned, and the genuine value replaces it.
#[tokio::test]
async fn a_planted_value_is_never_returned_and_is_replaced() {
    let server = Memcached::start().await;
    let cache = signed(&server, &[KEY_1]);
    let outside = Outside::connect(&server.addr()).await;
    let mut forged_tag = vec![0u8; 32];
    forged_tag.extend_from_slice(b"666");
    for (key, bytes, flags) in [
        ("plain", b"666".to_vec(), u32::from_be_bytes(*b"DCJ1")),
        ("tagged", forged_tag, u32::from_be_bytes(*b"SCJ1")),
    ] {
        outside.set(key, &bytes, flags).await;
        let got: u32 = cache
            .get(key, MINUTE, MINUTE, || async { Ok::<_, Error>(42) })
            .await
            .unwrap();
        assert_eq!(got, 42, "{key}: the planted 666 was returned");
        let (stored, stored_flags) = outside.get(key).await.unwrap();
        assert_eq!(
            stored_flags.to_be_bytes(),
            *b"SCJ1",
            "{key}: replaced by a signed item"
        );
        assert_eq!(&stored[32..], b"42", "{key}");
        // Read again: the genuine value, without the getter.
        let again: u32 = cache
            .get(key, MINUTE, MINUTE, || async { Ok::<_, Error>(0) })
            .await
            .unwrap();
        assert_eq!(again, 42);
    }
    let stats = cache.stats();
    assert_eq!(
        (stats.forged_values, stats.getter_runs),
        (2, 2),
        "{stats:?}"
    );
}

/// Keys rotate without a flag day: the first key signs, every key verifies. Markers are signed
/// too: a backoff written by one cache holds in another.
#[tokio::test]
async fn keys_rotate_and_markers_are_signed_too() {
    let server = Memcached::start().await;
    let old = signed(&server, &[KEY_1]);
    let rotating = signed(&server, &[KEY_2, KEY_1]);
    let runs = std::sync::atomic::AtomicUsize::new(0);
    let value = || async {
        runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok::<_, Error>(5u32)
    };
    let _ = old.get("a", MINUTE, MINUTE, value).await.unwrap();
    assert_eq!(rotating.get("a", MINUTE, MINUTE, value).await.unwrap(), 5);
    let _ = rotating.get("b", MINUTE, MINUTE, value).await.unwrap();
    let other_order = signed(&server, &[KEY_1, KEY_2]);
    assert_eq!(
        other_order.get("b", MINUTE, MINUTE, value).await.unwrap(),
        5
    );
    assert_eq!(
        runs.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "each read the other's"
    );
    // A cache that holds only the old key takes the new key's items as forged.
    assert_eq!(old.get("b", MINUTE, MINUTE, value).await.unwrap(), 5);
    assert_eq!(old.stats().forged_values, 1);

    let backing_off = || {
        Cache::builder()
            .server(server.addr())
            .signing_keys([KEY_1])
            .error_backoff(MINUTE)
            .build()
            .unwrap()
    };
    let (a, b) = (backing_off(), backing_off());
    let failed = a
        .get::<u32, Error, _, _>("failing", MINUTE, MINUTE, || async {
            Err(Error::InvalidArgument {
                key: "origin".into(),
                reason: "down",
            })
        })
        .await;
    assert!(failed.is_err());
    let err = b
        .get("failing", MINUTE, MINUTE, || async { Ok::<_, Error>(1u32) })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Backoff { .. }), "{err:?}");
    assert_eq!(b.stats().forged_values, 0);
}

#[test]
fn a_signing_key_under_32_bytes_is_a_build_error_that_does_not_show_it() {
    let err = Cache::builder()
        .signing_keys([b"too-short-secret".as_slice()])
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::InvalidSetting {
                setting: "signing_keys",
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.to_string().contains("secret"), "{err}");
}
