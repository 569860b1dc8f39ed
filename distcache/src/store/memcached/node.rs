//! One server: a pool of pipelined connections, per-operation timeouts, and its health
//! (`health.rs`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::Poll;
use std::time::Duration;

use super::auth::Credentials;
use super::conn::{ConnConfig, ConnError, Connection, Orphans, PendingReply};
use super::handshake::Instance;
use super::health::Health;
pub(crate) use super::health::Ticket;
use super::protocol::{Reply, Request};
use super::ring::Server;
use super::tls::TlsSettings;
use crate::key::WireKey;
use crate::store::{StoreError, StoreErrorKind};
use deadpool::managed::{self, Metrics, Pool, PoolError, RecycleError, RecycleResult, Timeouts};
use tokio::time::Instant;

/// The settings a node runs with.
#[derive(Debug, Clone)]
pub(crate) struct NodeConfig {
    pub(crate) connect_timeout: Duration,
    pub(crate) io_timeout: Duration,
    pub(crate) retry_interval: Duration,
    pub(crate) failure_threshold: u32,
    pub(crate) connections: usize,
    /// The largest value kept from a reply (`item_bytes`, and what distcache adds to a value).
    pub(crate) max_value: usize,
    /// Values over this many bytes are stored in chunks of it (`item_bytes`; `chunks.rs`).
    pub(crate) chunk_bytes: usize,
    /// The largest value a big value's manifest may stand for (`max_value_bytes`, and what
    /// distcache adds to a value).
    pub(crate) max_assembled: usize,
    /// Ask each server about itself on connecting (`handshake.rs`): always, but in tests against
    /// scripted peers.
    pub(crate) greet: bool,
    /// Log in with these where the server asks for it (`auth.rs`).
    pub(crate) credentials: Option<Arc<Credentials>>,
    /// TLS to every node (`tls.rs`); `None`: plain TCP.
    pub(crate) tls: Option<TlsSettings>,
    /// Signs and verifies every item (`signing.rs`); `None`: off.
    pub(crate) signer: Option<super::Signer>,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) server: Server,
    pool: Pool<Manager>,
    /// Clones of the pool's live connections, to pipeline on without a checkout: a request
    /// only needs a connection for the moment it is queued.
    ready: Arc<Ready>,
    health: Arc<Health>,
    orphans: Arc<Orphans>,
    connect_timeout: Duration,
    io_timeout: Duration,
}

impl Node {
    /// Why the node was last marked down, if it was.
    pub(crate) fn last_failure(&self) -> Option<String> {
        self.health.last_failure()
    }

    /// A node that connects on first use.
    pub(crate) fn new(server: Server, config: &NodeConfig, epoch: Instant) -> Self {
        let health = Arc::new(Health::new(
            server.clone(),
            epoch,
            config.retry_interval,
            config.failure_threshold,
        ));
        let orphans = Arc::new(Orphans::default());
        let ready = Arc::new(Ready {
            connections: RwLock::new(Vec::with_capacity(config.connections)),
            next: AtomicUsize::new(0),
            wanted: config.connections,
            growing: AtomicBool::new(false),
            item_size_max: AtomicUsize::new(0),
        });
        let manager = Manager {
            server: server.clone(),
            config: ConnConfig {
                connect_timeout: config.connect_timeout,
                io_timeout: config.io_timeout,
                max_value: config.max_value,
                health: Some(health.clone()),
                greet: config.greet,
                credentials: config.credentials.clone(),
                orphans: Some(orphans.clone()),
                // Every server's name is checked when the cache is built.
                tls: config.tls.as_ref().map(|tls| {
                    tls.for_host(server.host())
                        .expect("CacheBuilder::build checks every server's TLS name")
                }),
            },
            health: health.clone(),
            ready: ready.clone(),
            connecting: Arc::default(),
        };
        let pool = Pool::builder(manager)
            .max_size(config.connections)
            .runtime(deadpool::Runtime::Tokio1)
            .create_timeout(Some(config.connect_timeout))
            .build()
            .expect("a runtime and a positive size are set");
        Node {
            server,
            pool,
            ready,
            health,
            orphans,
            connect_timeout: config.connect_timeout,
            io_timeout: config.io_timeout,
        }
    }

    /// Admits a request to this node now, or not (marked down). After the retry interval of a
    /// down node, the first request to ask is admitted as the probe.
    pub(crate) fn admit(&self) -> Option<Ticket> {
        self.health.admit()
    }

    /// Hands the lease of `key` back on this node's next connection to the run of its server
    /// that granted it.
    pub(crate) fn owe_release(&self, key: &WireKey, cas: u64, instance: Instance) {
        self.orphans.push(key, cas, instance);
    }

    /// Deletes `key` on this node's server before this process's next request to it.
    pub(crate) fn owe_invalidation(&self, key: &WireKey) {
        self.orphans.invalidate(key);
    }

    /// How long a request without a deadline of its own may take: `connect_timeout` and
    /// `io_timeout`.
    pub(crate) fn request_bound(&self) -> Duration {
        self.connect_timeout + self.io_timeout
    }

    /// Whether the node is marked down and not yet due for a probe (no side effect).
    pub(crate) fn is_down(&self) -> bool {
        self.health.is_down()
    }

    /// How many times the node was marked down, and brought back.
    pub(crate) fn transitions(&self) -> (u64, u64) {
        self.health.transitions()
    }

    /// Whether the server would refuse an item of `value` bytes under a key of `key` bytes as
    /// too large, by the item size it said it has (`-I`). memcached deletes a lease's stub with
    /// a value it refuses; a value refused here leaves the lease to mark the key with.
    pub(crate) fn refuses(&self, key: usize, value: usize) -> bool {
        // An item's header, CAS and the value's CRLF: memcached 1.6.18 takes 1,048,263 bytes of
        // value under a 250-byte key with -I 1m, 63 bytes for the rest; 64 to be safe.
        const HEADER: usize = 64;
        match self.ready.item_size_max.load(Ordering::Relaxed) {
            0 => false,
            max => key + value + HEADER > max,
        }
    }

    /// Sends `request` and awaits its reply within the I/O timeout, or until `deadline` if that
    /// comes first; records the outcome in the node's health. A deadline is the caller's
    /// business, not a sign of trouble: it neither counts as a failure nor closes the connection.
    /// With `instance`, the request is sent only to that run of the server (a lease's CAS means
    /// nothing to the next run), and fails with [`StoreErrorKind::Restarted`] otherwise. The
    /// reply comes with the run of the server that gave it.
    pub(crate) async fn execute(
        &self,
        ticket: Ticket,
        operation: &'static str,
        request: &Request<'_>,
        deadline: Option<Instant>,
        instance: Option<Instance>,
    ) -> Result<(Reply, Instance), StoreError> {
        let mut outcome = Outcome {
            health: &self.health,
            ticket,
            recorded: false,
        };
        let result = self.round_trip(request, deadline, instance, ticket).await;
        match &result {
            Ok(_) => outcome.success(),
            // Nothing was sent: nothing was learnt of the node.
            Err(StoreErrorKind::Deadline | StoreErrorKind::Restarted) => outcome.abandoned(),
            // The connect, or the connection, reported it itself (`Manager::create`,
            // `Shared::fail`), whether or not anybody was still waiting: counted once for the
            // connection, not once per request it failed. A probe still ends here.
            Err(StoreErrorKind::Io(_) | StoreErrorKind::Connection(_)) if ticket == Ticket::Up => {
                outcome.abandoned()
            }
            Err(kind) => outcome.failure(kind),
        }
        result.map_err(|kind| StoreError {
            operation,
            node: self.server.to_string(),
            kind,
        })
    }

    /// Queues `request` on a ready connection, if there is one that is open. While fewer than
    /// the configured number are ready, one request at a time also sets a background task to
    /// make the next (the pool makes a connection only when none is idle, and with requests
    /// that hold none for longer than a queueing, none would be made).
    fn send_ready(
        &self,
        request: &Request<'_>,
        instance: Option<Instance>,
        limit: Instant,
    ) -> Option<Result<PendingReply, StoreErrorKind>> {
        let ready = self
            .ready
            .connections
            .read()
            .unwrap_or_else(|p| p.into_inner());
        if ready.is_empty() {
            return None;
        }
        if ready.len() < self.ready.wanted && !self.ready.growing.swap(true, Ordering::AcqRel) {
            tokio::spawn(grow(
                self.pool.clone(),
                Growing(self.ready.clone()),
                self.connect_timeout,
                self.health.retry_interval(),
            ));
        }
        let conn = match ready.len() {
            1 => &ready[0],
            n => &ready[self.ready.next.fetch_add(1, Ordering::Relaxed) % n],
        };
        if conn.is_closed() {
            return None;
        }
        Some(send_on(conn, request, instance, limit, &self.orphans))
    }

    async fn round_trip(
        &self,
        request: &Request<'_>,
        deadline: Option<Instant>,
        instance: Option<Instance>,
        ticket: Ticket,
    ) -> Result<(Reply, Instance), StoreErrorKind> {
        // Every request is bounded on its own: by the caller's deadline, or, for the operations
        // that have none (a fill, a hand-back, an invalidation), by `connect_timeout +
        // io_timeout` from their start, the bound the promise gives the one store operation a
        // call may make past its deadline. The connection's one timer enforces it (no timer per
        // request that its server answers in time), beside its own: no progress towards the
        // oldest reply for `io_timeout`; a deadline sooner than that timer is watched here. A
        // connection whose tasks are gone is closed (`ClosesOnDrop`), failing its requests.
        let own = self.connect_timeout + self.io_timeout;
        let limit = deadline.unwrap_or_else(|| Instant::now() + own);
        let reply = match self.send_ready(request, instance, limit) {
            Some(sent) => sent?,
            None => {
                self.send_pooled(request, deadline, instance, limit, ticket)
                    .await?
            }
        };
        let instance = reply.instance();
        let passed = || match deadline {
            Some(_) => StoreErrorKind::Deadline,
            None => StoreErrorKind::Timeout(own),
        };
        let reply = if reply.watched() {
            reply.await
        } else {
            // Sooner than the connection's timer fires: our reply is abandoned at the limit, and
            // the connection consumes it when it comes.
            tokio::time::timeout_at(limit, reply)
                .await
                .map_err(|_| passed())?
        };
        let failed = match reply {
            Ok(Ok(reply)) => return Ok((reply, instance)),
            Ok(Err(ConnError::Deadline)) => return Err(passed()),
            Err(_dropped) => StoreErrorKind::Connection("the connection closed".into()),
            Ok(Err(ConnError::TimedOut(after))) => StoreErrorKind::Timeout(after),
            Ok(Err(err)) => StoreErrorKind::Connection(err.to_string()),
        };
        // The connection closed with the request on it: the server may have acted on it. A
        // lookup may have made a lease its caller will never hear of, which would block the key
        // for every process until it expired; it is looked for on the next connection.
        if let Request::GetOrLease { key, lease, .. } = request {
            self.orphans.unheard(key, instance, *lease);
        }
        Err(failed)
    }

    /// Takes a connection from the pool (connecting if need be), queues `request` on it, and
    /// keeps a clone ready for the requests that follow.
    async fn send_pooled(
        &self,
        request: &Request<'_>,
        deadline: Option<Instant>,
        instance: Option<Instance>,
        limit: Instant,
        ticket: Ticket,
    ) -> Result<PendingReply, StoreErrorKind> {
        // A connection at hand is taken without a timer. Otherwise the wait (for the slot, or for
        // a connect, itself bounded by connect_timeout) is bounded by connect_timeout, and by the
        // deadline when that comes sooner.
        // A connect for it may be skipped if the node is marked down meanwhile: not for a
        // probe, nor for a lease's fill or hand-back, which only this node can take (a lease's
        // extension may be: it is tried again a second later, while the lease is alive).
        let skippable = ticket == Ticket::Up
            && (instance.is_none() || matches!(request, Request::Touch { .. }));
        let mut get = std::pin::pin!(SKIPPABLE.scope(skippable, self.pool.get()));
        let got = match std::future::poll_fn(|cx| Poll::Ready(get.as_mut().poll(cx))).await {
            Poll::Ready(got) => got,
            Poll::Pending => {
                let connect_limit = Instant::now() + self.connect_timeout;
                match deadline {
                    Some(deadline) if deadline < connect_limit => {
                        tokio::time::timeout_at(deadline, get)
                            .await
                            .map_err(|_| StoreErrorKind::Deadline)?
                    }
                    _ => tokio::time::timeout_at(connect_limit, get)
                        .await
                        .map_err(|_| {
                            StoreErrorKind::Io(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "no connection within connect_timeout",
                            ))
                        })?,
                }
            }
        };
        let conn = got.map_err(|err| match err {
            PoolError::Backend(err) => StoreErrorKind::Io(err),
            PoolError::Timeout(_) => {
                StoreErrorKind::Io(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
            }
            other => StoreErrorKind::Io(io::Error::other(other.to_string())),
        })?;
        self.ready.keep(&conn);
        // The pooled connection goes back to the pool here, for others to pipeline on, while we
        // await our reply.
        send_on(&conn, request, instance, limit, &self.orphans)
    }
}

/// Queues `request` on `conn`, if it talks to `instance` when one is given; first, any lease
/// left to hand back by a connection that closed.
fn send_on(
    conn: &Connection,
    request: &Request<'_>,
    instance: Option<Instance>,
    limit: Instant,
    orphans: &Arc<Orphans>,
) -> Result<PendingReply, StoreErrorKind> {
    if instance.is_some_and(|instance| instance != conn.instance()) {
        return Err(StoreErrorKind::Restarted);
    }
    orphans.flush_onto(conn);
    conn.send_until(request, Some(limit))
        .map_err(|err| StoreErrorKind::Connection(err.to_string()))
}

/// The connections requests are queued on directly: clones of the pool's, which the pool alone
/// makes, checks and replaces.
#[derive(Debug)]
struct Ready {
    connections: RwLock<Vec<Connection>>,
    next: AtomicUsize,
    /// How many the pool may make (`connections_per_server`).
    wanted: usize,
    /// A task is making one more.
    growing: AtomicBool,
    /// The server's largest item, as its last connection's handshake said (0: unknown).
    item_size_max: AtomicUsize,
}

impl Ready {
    /// Whether a connection is open.
    fn any_open(&self) -> bool {
        self.connections
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|c| !c.is_closed())
    }

    fn len(&self) -> usize {
        self.connections
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Adds `conn` if it is new, and forgets the closed ones.
    fn keep(&self, conn: &Connection) {
        let known = |ready: &[Connection]| {
            ready.iter().any(|c| c.same(conn)) && ready.iter().all(|c| !c.is_closed())
        };
        if known(&self.connections.read().unwrap_or_else(|p| p.into_inner())) {
            return;
        }
        let mut ready = self.connections.write().unwrap_or_else(|p| p.into_inner());
        ready.retain(|c| !c.is_closed());
        if !ready.iter().any(|c| c.same(conn)) && !conn.is_closed() && ready.len() < self.wanted {
            ready.push(conn.clone());
        }
    }
}

/// Has the pool make connections until the configured number are ready: its idle ones are held
/// meanwhile, so that it cannot hand one back instead. A failure is left to the requests to
/// find (this only adds); the next attempt waits `retry_interval`, so that a server refusing
/// more connections is not asked at every request.
async fn grow(
    pool: Pool<Manager>,
    growing: Growing,
    connect_timeout: Duration,
    retry_interval: Duration,
) {
    let ready = &growing.0;
    let timeouts = Timeouts {
        wait: Some(Duration::ZERO),
        create: Some(connect_timeout),
        recycle: Some(connect_timeout),
    };
    let mut held = Vec::new();
    while ready.len() < ready.wanted && held.len() < ready.wanted {
        let Ok(conn) = pool.timeout_get(&timeouts).await else {
            break;
        };
        ready.keep(&conn);
        held.push(conn);
    }
    drop(held);
    if ready.len() < ready.wanted {
        tokio::time::sleep(retry_interval).await;
    }
}

/// The right to grow a node's ready connections, given up when dropped, however the task that
/// holds it ends: a task dropped with its runtime (even before it first ran) must not leave the
/// node unable to grow on the next runtime.
struct Growing(Arc<Ready>);

impl Drop for Growing {
    fn drop(&mut self) {
        self.0.growing.store(false, Ordering::Release);
    }
}

/// Records a request's outcome exactly once, also when the request is dropped half-way: an
/// abandoned probe must not leave the node waiting for a result that never comes.
struct Outcome<'a> {
    health: &'a Health,
    ticket: Ticket,
    recorded: bool,
}

impl Outcome<'_> {
    fn success(&mut self) {
        self.recorded = true;
        self.health.success(self.ticket);
    }

    fn failure(&mut self, error: &StoreErrorKind) {
        self.recorded = true;
        self.health.failure(self.ticket, error);
    }

    fn abandoned(&mut self) {
        self.recorded = true;
        self.health.abandoned(self.ticket);
    }
}

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.abandoned();
        }
    }
}

/// Whether a connect failed because the server is not there: refused, or reset or closed before
/// its handshake was answered.
fn refused(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::UnexpectedEof
    )
}

tokio::task_local! {
    /// Whether the connect a pool checkout makes may be skipped while the node is marked down.
    static SKIPPABLE: bool;
}

/// Creates and checks the pool's connections.
#[derive(Debug)]
struct Manager {
    server: Server,
    config: ConnConfig,
    health: Arc<Health>,
    /// The node's open connections: whether a failed connect leaves it any.
    ready: Arc<Ready>,
    /// Held while connecting: one connect at a time per node.
    connecting: Arc<tokio::sync::Mutex<()>>,
}

impl managed::Manager for Manager {
    type Type = Connection;
    type Error = io::Error;

    async fn create(&self) -> Result<Connection, io::Error> {
        let (server, health, config, ready, connecting) = (
            self.server.clone(),
            self.health.clone(),
            self.config.clone(),
            self.ready.clone(),
            self.connecting.clone(),
        );
        let connect_timeout = config.connect_timeout;
        // Spawned, so that a connect whose caller gave up at its deadline still runs to its own
        // timeout and tells the node's health how it ended: with an `exec_limit` shorter than
        // `connect_timeout`, a host that drops connects would otherwise never be marked down.
        // One at a time: requests that queue behind a connect give up at their own
        // `connect_timeout`, each freeing its pool slot for the next; without this, each would
        // start a connect of its own to a node that is failing. Once the node is marked down,
        // only a probe, or a lease's fill or hand-back, connects (or a connect for more
        // connections, `grow`, when not down).
        // A connect whose requester gave up while it waited its turn is not made either: it
        // would be thrown away, and a backlog of them would burst at a node that comes back.
        let skippable = SKIPPABLE.try_with(|skippable| *skippable).unwrap_or(true);
        let (requester, _waiting) = tokio::sync::oneshot::channel::<()>();
        let connect = tokio::spawn(async move {
            let _turn = connecting.lock().await;
            if requester.is_closed() || (skippable && health.is_down()) {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("no connect to {server}: marked down, or nobody waits for it"),
                ));
            }
            let connected = async {
                // Resolved at each connect, so that a server's new address is picked up.
                let addrs: Vec<SocketAddr> = tokio::time::timeout(
                    connect_timeout,
                    tokio::net::lookup_host((server.host(), server.port())),
                )
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("resolving {server} took over {connect_timeout:?}"),
                    )
                })??
                .collect();
                Connection::connect(&addrs, &config).await
            }
            .await;
            if let Ok(conn) = &connected
                && conn.item_size_max() != 0
            {
                ready
                    .item_size_max
                    .store(conn.item_size_max(), Ordering::Relaxed);
            }
            if let Err(err) = &connected {
                // A connect that timed out marks the node down at once, as a request's timeout
                // does, when it was the node's only way in; with a connection still open (a
                // background connect for a further one), it is one failure toward
                // `failure_threshold`: one slow connect must not take down a node that answers.
                let kind = if err.kind() == io::ErrorKind::TimedOut && !ready.any_open() {
                    StoreErrorKind::Timeout(connect_timeout)
                } else if super::auth::is_refusal(err) {
                    // A wrong password, or a TLS handshake that failed: every connect will be
                    // refused the same way. Down at once, and probed once per `retry_interval`,
                    // not a connect per call.
                    StoreErrorKind::Security(err.to_string())
                } else if refused(err) && !ready.any_open() {
                    // Nothing listens (or a proxy in front of it has nothing behind it): the
                    // node is down now, as after a timeout; waiting for `failure_threshold`
                    // would fail requests that the next node can answer.
                    StoreErrorKind::Refused(io::Error::new(err.kind(), err.to_string()))
                } else {
                    StoreErrorKind::Io(io::Error::new(err.kind(), err.to_string()))
                };
                health.failure(Ticket::Up, &kind);
            }
            connected
        });
        connect
            .await
            .unwrap_or_else(|err| Err(io::Error::other(format!("the connect task ended: {err}"))))
    }

    async fn recycle(&self, conn: &mut Connection, _: &Metrics) -> RecycleResult<io::Error> {
        if conn.is_closed() {
            return Err(RecycleError::message("the connection is closed"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyEncoder;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// One connection, failures that do not mark the node down.
    fn test_config(connect_timeout: Duration) -> NodeConfig {
        NodeConfig {
            connect_timeout,
            io_timeout: Duration::from_secs(5),
            retry_interval: Duration::from_secs(1),
            failure_threshold: 100,
            connections: 1,
            max_value: 1_000_000,
            chunk_bytes: 1_000_000,
            max_assembled: 16_000_000,
            greet: false,
            credentials: None,
            tls: None,
            signer: None,
        }
    }

    /// A node of one connection to `127.0.0.1:port` that failures do not mark down.
    fn one_connection_node(port: u16, connect_timeout: Duration) -> Node {
        let config = test_config(connect_timeout);
        Node::new(
            Server::new("127.0.0.1", port).unwrap(),
            &config,
            Instant::now(),
        )
    }

    #[tokio::test]
    async fn every_configured_connection_is_made_and_used() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let node = Node::new(
            Server::new("127.0.0.1", port).unwrap(),
            &NodeConfig {
                connections: 3,
                ..test_config(Duration::from_secs(1))
            },
            Instant::now(),
        );
        // A peer that answers every `md` on every connection, and counts them per connection.
        let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        let served = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
        let counts = served.clone();
        let peer = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let index = {
                    let mut counts = counts.lock().unwrap();
                    counts.push(0);
                    counts.len() - 1
                };
                let _ = accepted_tx.send(index);
                let counts = counts.clone();
                tokio::spawn(async move {
                    let mut peer = BufReader::new(stream);
                    let mut line = String::new();
                    while peer.read_line(&mut line).await.unwrap_or(0) > 0 {
                        let opaque = line.trim_end().rsplit(' ').next().unwrap().to_owned();
                        counts.lock().unwrap()[index] += 1;
                        let reply = format!("HD {opaque}\r\n");
                        peer.get_mut().write_all(reply.as_bytes()).await.unwrap();
                        line.clear();
                    }
                });
            }
        });
        let key = KeyEncoder::new("").unwrap().encode("k");
        let delete = Request::Delete {
            key: &key,
            cas: None,
        };
        // One request at a time: the pool alone would never need a second connection.
        let mut made = 0;
        for _ in 0..100 {
            node.execute(Ticket::Up, "t", &delete, None, None)
                .await
                .unwrap();
            while accepted.try_recv().is_ok() {
                made += 1;
            }
            if made == 3 {
                break;
            }
        }
        tokio::time::timeout(Duration::from_secs(5), async {
            while made < 3 {
                accepted.recv().await.unwrap();
                made += 1;
            }
        })
        .await
        .expect("all three connections are made");
        // Wait until all three are ready to queue on, then spread requests over them.
        tokio::time::timeout(Duration::from_secs(5), async {
            while node.ready.len() < 3 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("all three connections are ready");
        let before = served.lock().unwrap().clone();
        for _ in 0..30 {
            node.execute(Ticket::Up, "t", &delete, None, None)
                .await
                .unwrap();
        }
        let after = served.lock().unwrap().clone();
        let spread: Vec<usize> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        assert_eq!(
            spread,
            [10, 10, 10],
            "round robin over the ready connections"
        );
        assert!(accepted.try_recv().is_err(), "no fourth connection");
        peer.abort();
    }

    #[tokio::test]
    async fn one_pooled_connection_carries_many_requests_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let node = one_connection_node(port, Duration::from_secs(1));
        let (a, b) = (
            KeyEncoder::new("").unwrap().encode("a"),
            KeyEncoder::new("").unwrap().encode("b"),
        );
        let peer = async {
            let (stream, _) = listener.accept().await.unwrap();
            let mut peer = BufReader::new(stream);
            // Both requests arrive before either is answered: the pooled connection went back to
            // the pool as soon as the first request was queued on it.
            let mut lines = String::new();
            for _ in 0..2 {
                peer.read_line(&mut lines).await.unwrap();
            }
            peer.get_mut()
                .write_all(b"HD O0\r\nHD O1\r\n")
                .await
                .unwrap();
            (lines, peer)
        };
        let (delete_a, delete_b) = (
            Request::Delete { key: &a, cas: None },
            Request::Delete { key: &b, cas: None },
        );
        let (ra, rb, (lines, _peer)) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(
                node.execute(Ticket::Up, "t", &delete_a, None, None),
                node.execute(Ticket::Up, "t", &delete_b, None, None),
                peer
            )
        })
        .await
        .expect("no request waits for another's reply");
        assert!(ra.is_ok() && rb.is_ok());
        assert_eq!(lines, "md a O0\r\nmd b O1\r\n");
    }

    #[tokio::test]
    async fn waiting_for_a_busy_pool_is_bounded() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let node = one_connection_node(port, Duration::from_millis(300));
        let (held, _accepted) = tokio::join!(node.pool.get(), listener.accept());
        let _held = held.expect("the pool's only connection, held elsewhere");
        let key = KeyEncoder::new("").unwrap().encode("k");
        let request = Request::Delete {
            key: &key,
            cas: None,
        };
        let started = Instant::now();
        let err = node
            .execute(
                Ticket::Up,
                "t",
                &request,
                Some(started + Duration::from_millis(100)),
                None,
            )
            .await
            .unwrap_err();
        assert!(err.is_deadline(), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the call's deadline: {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let err = tokio::time::timeout(
            Duration::from_secs(5),
            node.execute(Ticket::Up, "t", &request, None, None),
        )
        .await
        .expect("not stuck behind the held connection")
        .unwrap_err();
        assert!(matches!(err.kind, StoreErrorKind::Io(_)), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "connect_timeout: {:?}",
            started.elapsed()
        );
    }

    /// Requests that queue behind a connect to a host that accepts and never answers (the
    /// handshake hangs) each give up at their own `connect_timeout`: they must not each start
    /// a connect of their own, a storm of connects to a node that is failing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_queued_behind_a_hanging_connect_do_not_each_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let _peer = tokio::spawn({
            let accepted = accepted.clone();
            async move {
                let mut held = Vec::new();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    accepted.fetch_add(1, Ordering::SeqCst);
                    held.push(stream);
                }
            }
        });
        let node = Arc::new(Node::new(
            Server::new("127.0.0.1", port).unwrap(),
            &NodeConfig {
                greet: true,
                failure_threshold: 2,
                retry_interval: Duration::from_secs(60),
                ..test_config(Duration::from_millis(200))
            },
            Instant::now(),
        ));
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..20u64 {
            let node = node.clone();
            requests.spawn(async move {
                // Arriving 5 ms apart, as a herd's requests do.
                tokio::time::sleep(Duration::from_millis(5 * i)).await;
                let key = KeyEncoder::new("").unwrap().encode("k");
                let request = Request::Delete {
                    key: &key,
                    cas: None,
                };
                if let Some(ticket) = node.admit() {
                    let _ = node.execute(ticket, "t", &request, None, None).await;
                }
            });
        }
        while let Some(done) = requests.join_next().await {
            done.unwrap();
        }
        assert!(node.is_down(), "the hanging connect marked the node down");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connect, not one per queued request"
        );
    }
}
