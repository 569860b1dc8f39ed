//! TLS to memcached (`-Z`), with and without a login (`-Y`), on real servers with certificates
//! made at test time: the caches share one getter run over TLS; every misconfiguration (no TLS
//! against a TLS server, TLS against a plain one, an unknown CA, a wrong name, an expired
//! certificate, a wrong password) degrades each call within its bound, or fails it under
//! `OnUnavailable::Fail` with an error that says which.

mod support;

use std::time::Duration;

use distcache::{Cache, CacheBuilder, Error, OnUnavailable};
use support::memcached::Memcached;
use support::proxy::{Fault, FaultProxy};
use support::tls::Pki;
use tokio::time::Instant;

const USER: &str = "alice";
const PASSWORD: &str = "tls-and-password";
const MINUTE: Duration = Duration::from_secs(60);
const CONNECT: Duration = Duration::from_millis(500);
const IO: Duration = Duration::from_millis(300);

fn builder(server: &str) -> CacheBuilder {
    Cache::builder()
        .server(server)
        .connect_timeout(CONNECT)
        .io_timeout(IO)
}

async fn start(
    pki: &Pki,
    file: &str,
    names: &[&str],
    by_stranger: bool,
    expired: bool,
    auth: bool,
) -> Memcached {
    let cert = pki.server(file, names, by_stranger, expired);
    let mut args = cert.args();
    if auth {
        let authfile = pki.dir().join(format!("{file}.auth"));
        support::tls::write_secret(&authfile, &format!("{USER}:{PASSWORD}\n"));
        args.extend(["-Y".to_owned(), authfile.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Memcached::start_with(&args).await
}

#[tokio::test]
async fn over_tls_with_a_password_two_caches_share_one_getter_run() {
    let pki = Pki::new();
    let server = start(&pki, "ok", &["127.0.0.1", "localhost"], false, false, true).await;
    let cache = || {
        builder(&server.addr())
            .tls_ca_file(pki.ca_file())
            .credentials(USER, PASSWORD)
            .build()
            .unwrap()
    };
    let (a, b) = (cache(), cache());
    for c in [&a, &b] {
        let got: Vec<u32> = c
            .get("k", MINUTE, MINUTE, || async {
                Ok::<_, Error>(vec![1, 2, 3])
            })
            .await
            .unwrap();
        assert_eq!(got, vec![1, 2, 3]);
    }
    let stats = (a.stats(), b.stats());
    assert_eq!(stats.0.getter_runs + stats.1.getter_runs, 1, "{stats:?}");
    assert_eq!(
        stats.0.degraded_calls + stats.1.degraded_calls,
        0,
        "{stats:?}"
    );
    // By host name too: the certificate names both.
    let by_name = builder(&format!("localhost:{}", server.port()))
        .tls_ca_file(pki.ca_file())
        .credentials(USER, PASSWORD)
        .build()
        .unwrap();
    let got: Vec<u32> = by_name
        .get("k", MINUTE, MINUTE, || async { Ok::<_, Error>(vec![0]) })
        .await
        .unwrap();
    assert_eq!(got, vec![1, 2, 3]);
}

/// Calls `cache` three times: each returns the getter's value within the bound; then the same
/// configuration under `OnUnavailable::Fail` fails with an error whose text holds `says`.
async fn degrades_and_says(what: &str, make: impl Fn() -> CacheBuilder, says: &str) {
    let limit = Duration::from_secs(1);
    let bound = limit + CONNECT + IO;
    let cache = make().build().unwrap();
    for i in 0..3 {
        let asked = Instant::now();
        let got: u32 = cache
            .get(&format!("k{i}"), limit, MINUTE, || async {
                Ok::<_, Error>(7)
            })
            .await
            .unwrap();
        assert_eq!(got, 7, "{what}");
        assert!(
            asked.elapsed() <= bound,
            "{what}: a call took {:?}",
            asked.elapsed()
        );
    }
    assert_eq!(cache.stats().degraded_calls, 3, "{what}");
    let failing = make().on_unavailable(OnUnavailable::Fail).build().unwrap();
    // Every call says which, not only the first (the one that met the failure).
    for _ in 0..3 {
        let asked = Instant::now();
        let err = failing
            .get("k", limit, MINUTE, || async { Ok::<_, Error>(7u32) })
            .await
            .unwrap_err();
        assert!(asked.elapsed() <= bound, "{what}: {:?}", asked.elapsed());
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            text.push_str(" / ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        assert!(matches!(err, Error::Unavailable { .. }), "{what}: {text}");
        assert!(text.contains(says), "{what}: expected {says:?} in: {text}");
        assert!(!text.contains(PASSWORD), "{what}: {text}");
    }
}

/// A value near the item size travels whole over TLS, in both directions: the writer flushes
/// what TLS keeps of a write that found the socket full.
#[tokio::test]
async fn a_large_value_crosses_tls_whole() {
    let pki = Pki::new();
    let server = start(&pki, "large", &["127.0.0.1"], false, false, false).await;
    let cache = || {
        builder(&server.addr())
            .io_timeout(Duration::from_secs(2))
            .tls_ca_file(pki.ca_file())
            .build()
            .unwrap()
    };
    let (a, b) = (cache(), cache());
    // Random characters: compressed, still about 750 KB to send.
    let mut rng = fastrand::Rng::with_seed(1);
    let big: String = (0..1_000_000).map(|_| rng.alphanumeric()).collect();
    for round in 0..3 {
        let key = format!("big{round}");
        let written: String = a
            .get(&key, MINUTE, MINUTE, || async {
                Ok::<_, Error>(big.clone())
            })
            .await
            .unwrap();
        assert_eq!(written.len(), big.len());
        let read: String = b
            .get(&key, MINUTE, MINUTE, || async {
                Ok::<_, Error>(String::new())
            })
            .await
            .unwrap();
        assert_eq!(read, big, "round {round}: read whole from the other cache");
    }
    let stats = (a.stats(), b.stats());
    assert_eq!(
        stats.0.degraded_calls + stats.1.degraded_calls,
        0,
        "{stats:?}"
    );
    assert_eq!(stats.0.unstorable_values, 0, "{stats:?}");
}

#[tokio::test]
async fn every_misconfiguration_degrades_within_the_bound_and_says_which() {
    let pki = Pki::new();
    let tls = start(&pki, "good", &["127.0.0.1"], false, false, true).await;
    let plain = Memcached::start().await;
    let stranger = start(&pki, "stranger", &["127.0.0.1"], true, false, false).await;
    let expired = start(&pki, "expired", &["127.0.0.1"], false, true, false).await;
    let ca = pki.ca_file();

    degrades_and_says(
        "no TLS against a TLS server",
        || builder(&tls.addr()).credentials(USER, PASSWORD),
        "TLS",
    )
    .await;
    degrades_and_says(
        "TLS against a plain server",
        || builder(&plain.addr()).tls_ca_file(&ca),
        "does not speak TLS",
    )
    .await;
    degrades_and_says(
        "an unknown CA",
        || builder(&stranger.addr()).tls_ca_file(&ca),
        "unknown authority",
    )
    .await;
    degrades_and_says(
        "a wrong name",
        || builder(&format!("localhost:{}", tls.port())).tls_ca_file(&ca),
        "not valid for the host",
    )
    .await;
    degrades_and_says(
        "an expired certificate",
        || builder(&expired.addr()).tls_ca_file(&ca),
        "expired",
    )
    .await;
    degrades_and_says(
        "a wrong password over TLS",
        || {
            builder(&tls.addr())
                .tls_ca_file(&ca)
                .credentials(USER, "not-the-password")
        },
        "authentication",
    )
    .await;
}

/// A large value written over TLS to a server that reads slowly (through a proxy with a small
/// receive buffer, passing bytes on a few at a time), so that the writer's socket fills: it is
/// stored whole, within `io_timeout`. (The writer's flush after each batch is for the records
/// TLS keeps when a write finds the socket full; this test passes without it too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_value_to_a_slow_reader_is_stored_whole() {
    let pki = Pki::new();
    let server = start(&pki, "slow", &["127.0.0.1"], false, false, false).await;
    let proxy = FaultProxy::start_narrow(&server.addr(), 4096).await;
    proxy.set(Fault::Slice);
    let cache = builder(&proxy.addr())
        .io_timeout(Duration::from_secs(3))
        .tls_ca_file(pki.ca_file())
        .build()
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(2);
    let big: String = (0..200_000).map(|_| rng.alphanumeric()).collect();
    let written: String = cache
        .get("slow", MINUTE, MINUTE, || async {
            Ok::<_, Error>(big.clone())
        })
        .await
        .unwrap();
    assert_eq!(written.len(), big.len());
    let stats = cache.stats();
    assert_eq!(
        (stats.store_errors, stats.lost_fills, stats.degraded_calls),
        (0, 0, 0),
        "stored through the slow reader: {stats:?}"
    );
    proxy.set(Fault::Pass);
    let reader = builder(&server.addr())
        .tls_ca_file(pki.ca_file())
        .build()
        .unwrap();
    let read: String = reader
        .get("slow", MINUTE, MINUTE, || async {
            Ok::<_, Error>(String::new())
        })
        .await
        .unwrap();
    assert_eq!(read, big);
}

#[test]
fn a_missing_or_empty_ca_file_is_a_build_error() {
    let pki = Pki::new();
    for path in [pki.dir().join("none.pem"), {
        let empty = pki.dir().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        empty
    }] {
        let err = Cache::builder()
            .server("127.0.0.1:11211")
            .tls_ca_file(&path)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("tls"), "{err}");
    }
}
