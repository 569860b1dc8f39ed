//! Against scripted peers: these check our framing, not memcached.

use super::*;
use crate::key::{KeyEncoder, WireKey};
use crate::store::memcached::protocol::Code;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

fn key(k: &str) -> WireKey {
    KeyEncoder::new("").unwrap().encode(k)
}

/// Values of up to 1 MB kept, no health to tell.
fn config(io_timeout: Duration) -> ConnConfig {
    ConnConfig {
        connect_timeout: Duration::from_secs(1),
        io_timeout,
        max_value: 1_000_000,
        health: None,
        greet: false,
        orphans: None,
        credentials: None,
        tls: None,
    }
}

/// A scripted server on a free loopback port, which connections are made to with `config`.
struct Scripted {
    listener: TcpListener,
    config: ConnConfig,
}

impl Scripted {
    async fn new(config: ConnConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Scripted { listener, config }
    }

    /// A connection, and the server's end of it.
    async fn connect(&self) -> (Connection, BufReader<TcpStream>) {
        let addrs = [self.listener.local_addr().unwrap()];
        let (conn, accepted) = tokio::join!(
            Connection::connect(&addrs, &self.config),
            self.listener.accept()
        );
        (conn.unwrap(), BufReader::new(accepted.unwrap().0))
    }
}

/// A peer on a free loopback port, and a connection to it.
async fn peer() -> (Connection, BufReader<TcpStream>) {
    Scripted::new(config(Duration::from_secs(5)))
        .await
        .connect()
        .await
}

async fn read_line(peer: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    peer.read_line(&mut line).await.unwrap();
    line
}

fn get<'a>(k: &'a WireKey) -> Request<'a> {
    Request::GetOrLease {
        key: k,
        lease: 1,
        refresh: 0,
        ttl: false,
    }
}

fn meta(reply: Result<ReplySlot, oneshot::error::RecvError>) -> Meta {
    match reply {
        Ok(Ok(Reply::Meta(meta))) => meta,
        other => panic!("expected a meta reply, got {other:?}"),
    }
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("within 5 s")
}

#[tokio::test]
async fn many_requests_are_in_flight_at_once_on_one_connection() {
    let (conn, mut peer) = peer().await;
    let keys: Vec<WireKey> = (0..3).map(|i| key(&format!("k{i}"))).collect();
    let replies: Vec<_> = keys.iter().map(|k| conn.send(&get(k)).unwrap()).collect();
    // The peer reads all three requests before answering any: a client that waited for each
    // reply before sending the next request would hang here.
    let lines = within(async {
        let mut lines = Vec::new();
        for _ in 0..3 {
            lines.push(read_line(&mut peer).await);
        }
        lines
    })
    .await;
    assert_eq!(
        lines,
        [
            "mg k0 v c f k N1 O0\r\n",
            "mg k1 v c f k N1 O1\r\n",
            "mg k2 v c f k N1 O2\r\n"
        ]
    );
    peer.get_mut()
        .write_all(b"VA 1 c1 f0 O0\r\na\r\nVA 1 c2 f0 O1\r\nb\r\nVA 1 c3 f0 O2\r\nc\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    for reply in replies {
        got.push(meta(within(reply).await).data);
    }
    assert_eq!(got, ["a", "b", "c"]);
}

#[tokio::test]
async fn a_cancelled_request_never_hands_its_reply_to_the_next() {
    let (conn, mut peer) = peer().await;
    let (first, second) = (key("first"), key("second"));
    drop(conn.send(&get(&first)).unwrap());
    let reply = conn.send(&get(&second)).unwrap();
    within(read_line(&mut peer)).await;
    within(read_line(&mut peer)).await;
    peer.get_mut()
        .write_all(b"VA 5 c1 f0 O0\r\nfirst\r\nVA 6 c2 f0 O1\r\nsecond\r\n")
        .await
        .unwrap();
    assert_eq!(&meta(within(reply).await).data[..], b"second");
    assert!(
        !conn.is_closed(),
        "the abandoned reply was consumed; the connection is still in step"
    );
}

#[tokio::test]
async fn a_lease_won_by_an_abandoned_lookup_is_handed_back() {
    let (conn, mut peer) = peer().await;
    let k = key("k");
    drop(conn.send(&get(&k)).unwrap());
    assert_eq!(within(read_line(&mut peer)).await, "mg k v c f k N1 O0\r\n");
    peer.get_mut()
        .write_all(b"VA 0 c5 f0 kk O0 W\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        within(read_line(&mut peer)).await,
        "md k C5 O1\r\n",
        "nobody else would fill or release it"
    );
    peer.get_mut().write_all(b"HD O1\r\n").await.unwrap();
    let reply = conn.send(&get(&k)).unwrap();
    assert_eq!(within(read_line(&mut peer)).await, "mg k v c f k N1 O2\r\n");
    peer.get_mut()
        .write_all(b"VA 0 c6 f0 O2 W\r\n\r\n")
        .await
        .unwrap();
    assert!(
        meta(within(reply).await).win,
        "the connection is still in step"
    );
}

#[tokio::test]
async fn a_lease_won_before_an_abandoned_lookup_was_read_is_handed_back() {
    let (conn, mut peer) = peer().await;
    let k = key("k");
    let reply = conn.send(&get(&k)).unwrap();
    within(read_line(&mut peer)).await;
    peer.get_mut()
        .write_all(b"VA 0 c5 f0 kk O0 W\r\n\r\n")
        .await
        .unwrap();
    // The reply lands in the channel; the caller is cancelled before reading it.
    let sent = conn.send(&get(&key("other"))).unwrap();
    within(read_line(&mut peer)).await;
    peer.get_mut().write_all(b"EN O1\r\n").await.unwrap();
    within(sent).await.unwrap().unwrap();
    drop(reply);
    assert_eq!(within(read_line(&mut peer)).await, "md k C5 O2\r\n");
}

/// A scripted server whose connections keep their leases to hand back in one list.
async fn with_orphans() -> (Scripted, Arc<Orphans>) {
    let orphans = Arc::new(Orphans::default());
    let server = Scripted::new(ConnConfig {
        orphans: Some(orphans.clone()),
        ..config(Duration::from_secs(5))
    })
    .await;
    (server, orphans)
}

/// The lease `k` C5 is handed back on the next connection to `server`.
async fn handed_back_on_the_next_connection(server: &Scripted, orphans: &Arc<Orphans>) {
    let (next, mut peer) = server.connect().await;
    orphans.flush_onto(&next);
    assert_eq!(
        within(read_line(&mut peer)).await,
        "md k C5 O0\r\n",
        "handed back on the next connection"
    );
}

#[tokio::test]
async fn a_lease_whose_connection_closed_before_it_was_handed_back_goes_on_the_next() {
    let (server, orphans) = with_orphans().await;
    let (conn, mut peer) = server.connect().await;
    let k = key("k");
    let won = conn.send(&get(&k)).unwrap();
    let next = conn.send(&get(&key("other"))).unwrap();
    within(read_line(&mut peer)).await;
    within(read_line(&mut peer)).await;
    // The lease is won, and the server goes away before the second reply.
    peer.get_mut()
        .write_all(b"VA 0 c5 f0 kk O0 W\r\n\r\n")
        .await
        .unwrap();
    drop(peer);
    assert!(matches!(within(next).await, Ok(Err(ConnError::Closed(_)))));
    // The won reply sits in its channel; its caller is cancelled only now.
    drop(won);
    handed_back_on_the_next_connection(&server, &orphans).await;
}

#[tokio::test]
async fn a_hand_back_unanswered_when_its_connection_closes_goes_on_the_next() {
    let (server, orphans) = with_orphans().await;
    let (conn, mut peer) = server.connect().await;
    drop(conn.send(&get(&key("k"))).unwrap());
    within(read_line(&mut peer)).await;
    peer.get_mut()
        .write_all(b"VA 0 c5 f0 kk O0 W\r\n\r\n")
        .await
        .unwrap();
    // The connection hands the lease back; the server goes away before answering that.
    assert_eq!(within(read_line(&mut peer)).await, "md k C5 O1\r\n");
    let watcher = conn.send(&get(&key("other"))).unwrap();
    drop(peer);
    assert!(matches!(
        within(watcher).await,
        Ok(Err(ConnError::Closed(_)))
    ));
    // A second md under the same CAS is harmless.
    handed_back_on_the_next_connection(&server, &orphans).await;
}

/// A reply for another request, or without its request's token, cannot be proven to be the
/// one its waiter expects: the connection closes.
#[tokio::test]
async fn a_reply_for_another_request_or_without_its_token_closes_the_connection() {
    for bad in [&b"HD O41\r\n"[..], b"HD\r\n"] {
        let (conn, mut peer) = peer().await;
        let k = key("k");
        let reply = conn.send(&get(&k)).unwrap();
        within(read_line(&mut peer)).await;
        peer.get_mut().write_all(bad).await.unwrap();
        assert!(matches!(within(reply).await, Ok(Err(ConnError::Closed(_)))));
        assert!(conn.is_closed());
        assert!(
            conn.send(&get(&k)).is_err(),
            "a closed connection takes no request"
        );
    }
}

#[tokio::test]
async fn a_value_over_max_value_is_skipped_and_the_connection_stays_in_step() {
    let (conn, mut peer) = peer().await;
    let (big, small) = (key("big"), key("small"));
    let first = conn.send(&get(&big)).unwrap();
    let second = conn.send(&get(&small)).unwrap();
    within(read_line(&mut peer)).await;
    within(read_line(&mut peer)).await;
    // 5 MB declared and sent, over the connection's 1 MB limit.
    let mut wire = b"VA 5000000 c9 f7 O0\r\n".to_vec();
    wire.extend(std::iter::repeat_n(b'x', 5_000_000));
    wire.extend_from_slice(b"\r\nVA 2 c3 f7 O1\r\nok\r\n");
    peer.get_mut().write_all(&wire).await.unwrap();
    let skipped = meta(within(first).await);
    assert!(skipped.skipped() && skipped.size == 5_000_000);
    assert_eq!(&meta(within(second).await).data[..], b"ok");
    assert!(!conn.is_closed());
}

#[tokio::test]
async fn a_value_split_across_packets_is_assembled_without_loss() {
    let (conn, mut peer) = peer().await;
    let k = key("k");
    let reply = conn.send(&get(&k)).unwrap();
    within(read_line(&mut peer)).await;
    let value = vec![b'x'; 100_000];
    let mut wire = b"VA 100000 c9 f7 O0\r\n".to_vec();
    wire.extend_from_slice(&value);
    wire.extend_from_slice(b"\r\n");
    for chunk in wire.chunks(7_001) {
        peer.get_mut().write_all(chunk).await.unwrap();
        peer.get_mut().flush().await.unwrap();
    }
    let got = meta(within(reply).await);
    assert_eq!(
        (got.code, got.cas, got.client_flags),
        (Code::Value, Some(9), Some(7))
    );
    assert_eq!(got.data, value);
}

#[tokio::test]
async fn the_connections_timer_tells_a_request_its_deadline_passed_in_a_deep_queue() {
    // Ten requests answered one every 100 ms: the connection is progressing (no I/O
    // timeout), but the last one's deadline, 600 ms after it was sent, comes first.
    let server = Scripted::new(config(Duration::from_millis(500))).await;
    let (conn, mut peer) = server.connect().await;
    // One round trip first: the reader's timer is set.
    let first = conn.send(&get(&key("first"))).unwrap();
    within(read_line(&mut peer)).await;
    peer.get_mut().write_all(b"EN O0\r\n").await.unwrap();
    within(first).await.unwrap().unwrap();
    let keys: Vec<WireKey> = (1..=10).map(|i| key(&format!("k{i}"))).collect();
    let started = Instant::now();
    let mut replies: Vec<_> = keys[..9]
        .iter()
        .map(|k| conn.send(&get(k)).unwrap())
        .collect();
    let last = conn
        .send_until(&get(&keys[9]), Some(started + Duration::from_millis(600)))
        .unwrap();
    assert!(
        last.watched(),
        "its deadline comes after the connection's timer"
    );
    let answering = async {
        for opaque in 1..=10 {
            read_line(&mut peer).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let reply = if opaque == 10 {
                // The late reply wins a lease nobody will fill: handed back.
                format!("VA 0 c5 f0 kk10 O{opaque} W\r\n\r\n")
            } else {
                format!("EN O{opaque}\r\n")
            };
            peer.get_mut().write_all(reply.as_bytes()).await.unwrap();
        }
        assert_eq!(read_line(&mut peer).await, "md k10 C5 O11\r\n");
    };
    let told = async {
        let told = within(last).await;
        let at = started.elapsed();
        assert!(matches!(told, Ok(Err(ConnError::Deadline))), "{told:?}");
        assert!(
            at >= Duration::from_millis(600) && at < Duration::from_millis(1_100),
            "at its deadline: {at:?}"
        );
    };
    tokio::join!(answering, told);
    for reply in replies.drain(..) {
        assert!(matches!(within(reply).await, Ok(Ok(Reply::Meta(_)))));
    }
    assert!(!conn.is_closed(), "a deadline says nothing of the server");
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_request_times_out_and_closes_the_connection() {
    let (conn, mut peer) = peer().await;
    let k = key("k");
    let reply = conn.send(&get(&k)).unwrap();
    within(read_line(&mut peer)).await;
    let started = Instant::now();
    assert!(matches!(reply.await, Ok(Err(ConnError::TimedOut(_)))));
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(5),
        "the I/O timeout, from the send"
    );
    assert!(conn.is_closed());
}

#[tokio::test]
async fn a_deep_queue_answered_steadily_is_not_timed_out() {
    // Twenty requests queued at once, answered one every 50 ms: the last waits a second
    // in all, twice the I/O timeout, but the server never falls silent for anywhere near it.
    let server = Scripted::new(config(Duration::from_millis(500))).await;
    let (conn, mut peer) = server.connect().await;
    let keys: Vec<WireKey> = (0..20).map(|i| key(&format!("k{i}"))).collect();
    let replies: Vec<_> = keys.iter().map(|k| conn.send(&get(k)).unwrap()).collect();
    let answering = async {
        for opaque in 0..20 {
            read_line(&mut peer).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let reply = format!("EN O{opaque}\r\n");
            peer.get_mut().write_all(reply.as_bytes()).await.unwrap();
        }
    };
    let (_, got) = tokio::join!(answering, async {
        let mut got = Vec::new();
        for reply in replies {
            got.push(within(reply).await);
        }
        got
    });
    for (i, reply) in got.into_iter().enumerate() {
        assert!(
            matches!(reply, Ok(Ok(Reply::Meta(_)))),
            "request {i}: {reply:?}"
        );
    }
    assert!(!conn.is_closed());
}

#[test]
fn a_connection_whose_runtime_shut_down_is_closed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addrs = [listener.local_addr().unwrap()];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let conn = runtime
        .block_on(Connection::connect(&addrs, &config(Duration::from_secs(5))))
        .unwrap();
    let _peer = listener.accept().unwrap();
    assert!(!conn.is_closed());
    drop(runtime);
    assert!(conn.is_closed(), "its reader and writer are gone");
    assert!(
        conn.send(&get(&key("k"))).is_err(),
        "no request is queued where nobody would write it or time it out"
    );
}

#[tokio::test]
async fn a_server_that_goes_away_fails_every_pending_request() {
    let (conn, peer) = peer().await;
    let k = key("k");
    let replies: Vec<_> = (0..3).map(|_| conn.send(&get(&k)).unwrap()).collect();
    drop(peer);
    for reply in replies {
        assert!(matches!(within(reply).await, Ok(Err(ConnError::Closed(_)))));
    }
    assert!(conn.is_closed());
}

/// A lookup of `k` for a lease of 4 s, whose reply was lost at `lost`, owed to `server`'s next
/// connection: that connection, and its end at the server.
async fn after_an_unheard_lookup(
    server: &Scripted,
    orphans: &Arc<Orphans>,
    lost: Instant,
) -> (Connection, BufReader<TcpStream>) {
    let (next, peer) = server.connect().await;
    orphans.unheard_since(&key("k"), next.instance(), 4, lost);
    orphans.flush_onto(&next);
    (next, peer)
}

/// `server`'s next connection after a lookup of `k` lost its reply `ago` ms before: its peek,
/// sent before a request of its own, is answered `answer`, and its task has run (sending a
/// delete, if it would) by the time this returns with the connection and its end at the server.
async fn peek_answered(
    server: &Scripted,
    orphans: &Arc<Orphans>,
    ago: u64,
    answer: &str,
) -> (Connection, BufReader<TcpStream>) {
    let lost = Instant::now() - Duration::from_millis(ago);
    let (next, mut peer) = after_an_unheard_lookup(server, orphans, lost).await;
    let other = next.send(&get(&key("other"))).unwrap();
    // The peek goes before the request whose sending flushed it.
    assert_eq!(within(read_line(&mut peer)).await, "mg k s c k t O0\r\n");
    assert!(within(read_line(&mut peer)).await.starts_with("mg other "));
    peer.get_mut()
        .write_all(format!("{answer}\r\nEN O1\r\n").as_bytes())
        .await
        .unwrap();
    // The peek's answer was handed over before the other's: its task, woken then, runs before
    // this one goes on.
    assert!(within(other).await.is_ok());
    tokio::task::yield_now().await;
    (next, peer)
}

#[tokio::test]
async fn a_lease_an_unheard_lookup_made_is_looked_for_and_handed_back_on_the_next_connection() {
    let peeked = |t: u64| {
        [
            // A lease's stub; a stale item someone won; a stale item the peek itself won.
            format!("HD s0 c7 kk t{t} O0 Z"),
            format!("HD s5 c7 kk t{t} O0 X Z"),
            format!("HD s5 c7 kk t{t} O0 X W"),
        ]
    };
    // Lost now, its lease has 4 s left at most; lost 1.5 s ago, 3; 2.5 s ago, 2.
    let cases = [(0, 4), (1500, 3), (2500, 2)];
    for (ago, left) in cases {
        for answer in peeked(left) {
            let (server, orphans) = with_orphans().await;
            let (_next, mut peer) = peek_answered(&server, &orphans, ago, &answer).await;
            assert_eq!(
                within(read_line(&mut peer)).await,
                "md k C7 O2\r\n",
                "handed back by its CAS after {answer:?}, lost {ago} ms before"
            );
        }
    }
}

#[tokio::test]
async fn a_value_a_miss_or_a_lease_younger_than_the_lost_lookup_is_left_alone() {
    let cases = [
        // A value; a value someone is refreshing ahead; a miss.
        (0, "HD s5 c7 kk t60 O0"),
        (0, "HD s5 c7 kk t60 O0 Z"),
        (0, "EN O0"),
        // A lease made (or extended) since the lookup was lost: by a process that found the key
        // free after another handed the lost lookup's lease back.
        (1500, "HD s0 c7 kk t4 O0 Z"),
        (2500, "HD s0 c7 kk t3 O0 Z"),
    ];
    for (ago, answer) in cases {
        let (server, orphans) = with_orphans().await;
        let (next, mut peer) = peek_answered(&server, &orphans, ago, answer).await;
        let after = next.send(&get(&key("after"))).unwrap();
        assert!(
            within(read_line(&mut peer)).await.starts_with("mg after "),
            "nothing deleted after {answer:?}, lost {ago} ms before"
        );
        drop(after);
    }
}

#[tokio::test]
async fn an_unheard_lookup_is_forgotten_once_its_lease_would_have_expired() {
    let (server, orphans) = with_orphans().await;
    let lost = Instant::now() - Duration::from_secs(4);
    let (next, mut peer) = after_an_unheard_lookup(&server, &orphans, lost).await;
    let _after = next.send(&get(&key("after"))).unwrap();
    assert!(within(read_line(&mut peer)).await.starts_with("mg after "));
}

#[tokio::test]
async fn an_unheard_lookup_whose_peek_went_unanswered_is_looked_for_on_the_next_connection() {
    let (server, orphans) = with_orphans().await;
    let (_first, mut peer) = after_an_unheard_lookup(&server, &orphans, Instant::now()).await;
    assert_eq!(within(read_line(&mut peer)).await, "mg k s c k t O0\r\n");
    drop(peer);
    let (next, mut peer) = server.connect().await;
    // Owed again once the peek's connection has closed.
    within(async {
        while !orphans.owes() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    orphans.flush_onto(&next);
    assert_eq!(within(read_line(&mut peer)).await, "mg k s c k t O0\r\n");
}

/// A peek lost with its connection comes back after a later lookup of the same key lost its
/// reply too: the lease looked for is the later one's, younger.
#[tokio::test]
async fn of_two_unheard_lookups_of_a_key_the_later_ones_lease_is_looked_for() {
    let (server, orphans) = with_orphans().await;
    let (next, mut peer) = server.connect().await;
    let now = Instant::now();
    orphans.unheard_since(&key("k"), next.instance(), 4, now);
    orphans.unheard_since(
        &key("k"),
        next.instance(),
        4,
        now - Duration::from_millis(2500),
    );
    orphans.flush_onto(&next);
    assert_eq!(within(read_line(&mut peer)).await, "mg k s c k t O0\r\n");
    peer.get_mut()
        .write_all(b"HD s0 c7 kk t4 O0 Z\r\n")
        .await
        .unwrap();
    assert_eq!(
        within(read_line(&mut peer)).await,
        "md k C7 O1\r\n",
        "one peek, and the stub the later lookup made handed back"
    );
}
