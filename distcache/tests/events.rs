//! The named `tracing` events and per-node counters an operator sees when a memcached node is
//! marked down and comes back. A test binary of its own: the subscriber is process-wide.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use distcache::{Cache, Error};
use support::memcached::Memcached;

const MINUTE: Duration = Duration::from_secs(60);

/// Records the names of distcache's `tracing` events.
#[derive(Clone, Default)]
struct EventNames(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EventNames {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let name = event.metadata().name();
        if name.starts_with("distcache.") {
            self.0.lock().unwrap().push(name.to_owned());
        }
    }
}

#[tokio::test]
async fn a_node_marked_down_and_back_is_counted_and_named_in_events() {
    let events = EventNames::default();
    {
        use tracing_subscriber::layer::SubscriberExt;
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(events.clone()),
        )
        .expect("the only subscriber of this test binary");
    }
    let server = Memcached::start().await;
    let cache = Cache::builder()
        .server(server.addr())
        .io_timeout(Duration::from_millis(300))
        .retry_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let get = || {
        cache.get("k", MINUTE, MINUTE, || async {
            Ok::<_, Error>("v".to_owned())
        })
    };
    let _: String = get().await.unwrap();
    server.pause();
    let _: String = get().await.expect("degraded while the node hangs");
    let node = &cache.node_stats()[0];
    assert!(
        node.down && (node.marked_down, node.back) == (1, 0),
        "{node:?}"
    );
    server.resume();
    // The node comes back on the first call after the retry interval (its probe): no event
    // tells a caller when that is, so look.
    tokio::time::timeout(Duration::from_secs(10), async {
        while cache.node_stats()[0].back == 0 {
            let _: String = get().await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("back within 10 s");
    let node = &cache.node_stats()[0];
    assert!(
        !node.down && (node.marked_down, node.back) == (1, 1),
        "{node:?}"
    );
    let events = events.0.lock().unwrap().clone();
    let node_events: Vec<&str> = events
        .iter()
        .map(String::as_str)
        .filter(|e| e.starts_with("distcache.node."))
        .collect();
    assert_eq!(
        node_events,
        ["distcache.node.down", "distcache.node.back"],
        "one named event each: {events:?}"
    );
    assert!(
        events.iter().any(|e| e == "distcache.connection.closed"),
        "the timed-out connection's close is named too: {events:?}"
    );
}
