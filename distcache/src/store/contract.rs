//! What every store must do, written once and run against each store by its own tests: the
//! in-process store is the reference the memcached store is held to.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{Fill, Item, Lease, Lookup, Store};
use crate::key::WireKey;

/// A deadline no test reaches.
pub(crate) fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// Looks `k` up, expecting to win its lease.
pub(crate) async fn won<S: Store>(store: &S, k: &WireKey, lease_ttl: Duration) -> Lease {
    match store
        .lookup(k, lease_ttl, Duration::ZERO, false, far())
        .await
        .unwrap()
    {
        Lookup::Won(lease) => lease,
        other => panic!("expected to win the lease, got {other:?}"),
    }
}

/// Looks `k` up, expecting a value.
pub(crate) async fn hit<S: Store>(store: &S, k: &WireKey, lease_ttl: Duration) -> Item {
    match store
        .lookup(k, lease_ttl, Duration::ZERO, false, far())
        .await
        .unwrap()
    {
        Lookup::Hit(item) => item,
        other => panic!("expected a hit, got {other:?}"),
    }
}

/// A stranger's release is ignored; the holder's frees the key at once; an invalidation takes
/// the lease away, so that its fill is refused and the next lookup wins a new one.
pub(crate) async fn release_and_invalidate_free_the_key<S: Store>(
    store: &S,
    k: &WireKey,
    lease_ttl: Duration,
) {
    let lease = won(store, k, lease_ttl).await;
    let stranger = Lease {
        cas: lease.cas + 100,
        ..lease
    };
    store.release(k, stranger).await.unwrap();
    assert!(
        matches!(
            store
                .lookup(k, lease_ttl, Duration::ZERO, false, far())
                .await
                .unwrap(),
            Lookup::Busy
        ),
        "a stranger's release is ignored"
    );
    store.release(k, lease).await.unwrap();
    let lease = won(store, k, lease_ttl).await;
    store.invalidate(k).await.unwrap();
    let data = Bytes::from_static(b"1");
    assert_eq!(
        store
            .fill(k, lease, &data, 0, Duration::from_secs(60))
            .await
            .unwrap(),
        Fill::LeaseLost
    );
    won(store, k, lease_ttl).await;
}

/// After `late` expired and `fresh` was won, the fresh fill is stored and the late one refused:
/// the newer value stays.
pub(crate) async fn a_late_fill_is_refused<S: Store>(
    store: &S,
    k: &WireKey,
    late: Lease,
    fresh: Lease,
    lease_ttl: Duration,
) {
    let expire = Duration::from_secs(60);
    let newer = Bytes::from_static(b"new");
    assert_eq!(
        store.fill(k, fresh, &newer, 0, expire).await.unwrap(),
        Fill::Stored
    );
    let older = Bytes::from_static(b"old");
    assert_eq!(
        store.fill(k, late, &older, 0, expire).await.unwrap(),
        Fill::LeaseLost
    );
    assert_eq!(
        &hit(store, k, lease_ttl).await.data[..],
        b"new",
        "the newer value stays"
    );
}

/// A value with less than the lookup's refresh window left is a refresh for the first lookup
/// and a plain hit for the others; the refresh fills under the item's version, and the new value
/// may be refreshed once in its turn; a refresh of a value that changed meanwhile is refused.
pub(crate) async fn a_value_near_its_end_is_refreshed_by_one<S: Store>(
    store: &S,
    k: &WireKey,
    lease_ttl: Duration,
) {
    let expire = Duration::from_secs(60);
    let (short, long) = (Duration::from_secs(10), Duration::from_secs(120));
    let lease = won(store, k, lease_ttl).await;
    assert!(
        matches!(
            store
                .lookup(k, lease_ttl, long, false, far())
                .await
                .unwrap(),
            Lookup::Busy
        ),
        "a lease held elsewhere is no value to refresh"
    );
    let first = Bytes::from_static(b"1");
    assert_eq!(
        store.fill(k, lease, &first, 0, expire).await.unwrap(),
        Fill::Stored
    );
    let lookup = |refresh| store.lookup(k, lease_ttl, refresh, false, far());
    assert!(
        matches!(lookup(short).await.unwrap(), Lookup::Hit(_)),
        "more than the window left: a plain hit"
    );
    let Lookup::Refresh(item) = lookup(long).await.unwrap() else {
        panic!("less than the window left: the first lookup refreshes")
    };
    assert_eq!(&item.data[..], b"1");
    assert!(
        matches!(lookup(long).await.unwrap(), Lookup::Hit(_)),
        "the others read the current value"
    );
    let second = Bytes::from_static(b"2");
    assert_eq!(
        store
            .fill(k, item.version, &second, 0, expire)
            .await
            .unwrap(),
        Fill::Stored
    );
    let Lookup::Refresh(newer) = lookup(long).await.unwrap() else {
        panic!("the new value is refreshed in its turn")
    };
    assert_eq!(&newer.data[..], b"2");
    let late = Bytes::from_static(b"3");
    assert_eq!(
        store.fill(k, item.version, &late, 0, expire).await.unwrap(),
        Fill::LeaseLost,
        "a refresh of a value that changed meanwhile is refused"
    );
    assert_eq!(&hit(store, k, lease_ttl).await.data[..], b"2");
}

/// An extension keeps the holder's lease past its first TTL (other lookups still wait) and keeps
/// its CAS (the fill is stored); a stranger's extension says it holds nothing; an extension of a
/// released lease says it is gone. Waits out a 2-second TTL: memcached's clock is real time.
pub(crate) async fn an_extended_lease_outlives_its_first_ttl<S: Store>(
    store: &S,
    k: &WireKey,
    k2: &WireKey,
) {
    let first = Duration::from_secs(2);
    let lease = won(store, k, first).await;
    let stranger = Lease {
        cas: lease.cas + 100,
        ..lease
    };
    assert!(
        !store.extend(k, stranger, first).await.unwrap(),
        "a stranger holds nothing"
    );
    assert!(
        store
            .extend(k, lease, Duration::from_secs(6))
            .await
            .unwrap()
    );
    tokio::time::sleep(first + Duration::from_millis(500)).await;
    assert!(
        matches!(
            store
                .lookup(k, first, Duration::ZERO, false, far())
                .await
                .unwrap(),
            Lookup::Busy
        ),
        "held past its first TTL"
    );
    let data = Bytes::from_static(b"1");
    assert_eq!(
        store
            .fill(k, lease, &data, 0, Duration::from_secs(60))
            .await
            .unwrap(),
        Fill::Stored,
        "the extended lease fills"
    );
    let released = won(store, k2, first).await;
    store.release(k2, released).await.unwrap();
    assert!(
        !store.extend(k2, released, first).await.unwrap(),
        "a released lease is gone"
    );
}

/// A swap replaces the value it read, and gives the new one's version; a swap with a version no
/// longer current (replaced, or invalidated) changes nothing.
pub(crate) async fn a_swap_replaces_only_the_version_it_read<S: Store>(
    store: &S,
    k: &WireKey,
    lease_ttl: Duration,
) {
    let expire = Duration::from_secs(60);
    let lease = won(store, k, lease_ttl).await;
    let first = Bytes::from_static(b"1");
    assert_eq!(
        store.fill(k, lease, &first, 5, expire).await.unwrap(),
        Fill::Stored
    );
    let read = hit(store, k, lease_ttl).await.version;
    let second = Bytes::from_static(b"22");
    let swapped = store
        .swap(k, read, &second, 6, expire)
        .await
        .unwrap()
        .expect("the version read is current");
    assert_ne!(swapped, read);
    let item = hit(store, k, lease_ttl).await;
    assert_eq!((&item.data[..], item.flags), (&b"22"[..], 6));
    assert_eq!(
        item.version, swapped,
        "the swap gave the new value's version"
    );
    // The version read before is spent.
    let third = Bytes::from_static(b"333");
    assert_eq!(store.swap(k, read, &third, 7, expire).await.unwrap(), None);
    // The new one still counts, until the key is invalidated.
    let again = store.swap(k, swapped, &third, 7, expire).await.unwrap();
    assert!(again.is_some());
    store.invalidate(k).await.unwrap();
    assert_eq!(
        store
            .swap(k, again.unwrap(), &first, 5, expire)
            .await
            .unwrap(),
        None
    );
    won(store, k, lease_ttl).await;
}

/// A lookup that asks for a value's life gets at most what the value has left, and close to it
/// (memcached's one-second clock aside); one that does not ask gets none.
pub(crate) async fn a_lookup_tells_the_life_left_when_asked<S: Store>(
    store: &S,
    k: &WireKey,
    lease_ttl: Duration,
) {
    let lease = won(store, k, lease_ttl).await;
    let expire = Duration::from_secs(10);
    let sent = Instant::now();
    let data = Bytes::from_static(b"1");
    assert_eq!(
        store.fill(k, lease, &data, 5, expire).await.unwrap(),
        Fill::Stored
    );
    assert_eq!(hit(store, k, lease_ttl).await.life(), None, "not asked");
    let asked = store
        .lookup(k, lease_ttl, Duration::ZERO, true, far())
        .await
        .unwrap();
    let Lookup::Hit(item) = asked else {
        panic!("expected a hit, got {asked:?}");
    };
    let life = item.life().expect("asked");
    assert!(
        life <= expire.saturating_sub(sent.elapsed()) && life >= Duration::from_secs(8),
        "{life:?} left of a value stored for {expire:?}"
    );
}
