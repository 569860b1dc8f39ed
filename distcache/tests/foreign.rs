//! F11: foreign and corrupt bytes under our key, written by another client of the same memcached.
//! Each is a miss: counted, recomputed and replaced by our value; never a panic, never returned.

mod support;

use std::time::Duration;

use distcache::{Cache, Error};
use serde::{Deserialize, Serialize};
use support::memcached::{Memcached, Outside};

const MINUTE: Duration = Duration::from_secs(60);
const DCJ1: u32 = u32::from_be_bytes(*b"DCJ1");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
}

#[tokio::test]
async fn foreign_and_corrupt_items_are_misses_recomputed_and_replaced() {
    let server = Memcached::start().await;
    let cache = Cache::builder()
        .server(server.addr())
        .io_timeout(Duration::from_secs(2))
        .max_value_bytes(1000)
        .build()
        .unwrap();
    let outside = Outside::connect(&server.addr()).await;
    let random: Vec<u8> = (0..200u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let cases: [(&str, Vec<u8>, u32); 7] = [
        ("random bytes", random, DCJ1),
        ("truncated JSON", br#"{"id":7,"na"#.to_vec(), DCJ1),
        ("another type", br#"["a","b"]"#.to_vec(), DCJ1),
        ("other flags", br#"{"id":7,"name":"x"}"#.to_vec(), 0),
        ("a 0-byte item", Vec::new(), DCJ1),
        ("over max_value_bytes", vec![b'7'; 5000], DCJ1),
        (
            "invalid UTF-8 in JSON",
            b"{\"id\":7,\"name\":\"\xff\"}".to_vec(),
            DCJ1,
        ),
    ];
    for (i, (what, bytes, flags)) in cases.into_iter().enumerate() {
        let key = format!("profile:{i}");
        outside.set(&key, &bytes, flags).await;
        let before = cache.stats();
        let expected = Profile {
            id: i as u64,
            name: what.to_owned(),
        };
        for round in 0..2 {
            let got: Profile = cache
                .get(&key, MINUTE, MINUTE, || {
                    let expected = expected.clone();
                    async move { Ok::<_, Error>(expected) }
                })
                .await
                .unwrap_or_else(|err| panic!("{what}, round {round}: {err}"));
            assert_eq!(got, expected, "{what}, round {round}");
        }
        let after = cache.stats();
        assert_eq!(
            (
                after.decode_misses - before.decode_misses,
                after.getter_runs - before.getter_runs,
                after.hits - before.hits,
            ),
            (1, 1, 1),
            "{what}: one counted miss and one run, then a hit on our value: {after:?}"
        );
        let stored = outside.get(&key).await.expect("replaced, not deleted");
        assert_eq!(
            (
                serde_json::from_slice::<Profile>(&stored.0).unwrap(),
                stored.1
            ),
            (expected, DCJ1),
            "{what}: replaced by our value"
        );
    }
    assert_eq!(
        cache.node_stats()[0].marked_down,
        0,
        "no foreign item costs the node its health"
    );
}
