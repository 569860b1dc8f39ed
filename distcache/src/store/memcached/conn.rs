//! One pipelined connection to a memcached server.
//!
//! Any number of requests may be in flight: a caller appends its request to the output buffer and
//! a waiter to the queue, under one lock, and awaits its reply; a writer task sends whatever has
//! accumulated in one write; a reader task parses replies and hands each to the oldest waiter.
//! memcached answers in order, and each reply must echo its request's opaque token, so a reply
//! can never reach the wrong caller: a mismatch, an unparseable reply, `ERROR`/`CLIENT_ERROR`, an
//! I/O error or a timeout closes the connection and fails every request still on it.
//!
//! A caller that gives up (its future dropped, or its deadline passed) leaves its waiter behind:
//! the reader still consumes its reply and drops it, so the connection stays in step and is safe
//! to keep using. If that
//! reply won a lease (`W` on an empty stub, or on a stale item), nobody would ever fill it, and
//! every caller of the key would wait for it to expire: the connection hands it back itself
//! (`md <key> C<cas>`). A `W` on a live value (refresh-ahead, `R`) is left to lapse: handing it
//! back would delete a value everyone is reading.
//!
//! Why not async-memcached: its `Client` takes `&mut self` for every command (one request in flight
//! per connection), a dropped request future closes the client, it cannot connect to IPv6 servers,
//! and its flags are strings. The meta commands we need are few; the framing is above.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::auth::{self, Credentials};
use super::handshake::{self, Greeting, Instance};
use super::health::{Health, Ticket};
pub(crate) use super::orphans::Orphans;
use super::protocol::{ErrorKind, Meta, Parser, Reply, Request};
use super::tls::NodeTls;
use crate::key::WireKey;
use crate::store::StoreErrorKind;

const READ_CHUNK: usize = 64 * 1024;
/// How many turns of the scheduler the writer waits for more requests before a write.
const MAX_GATHER_YIELDS: usize = 16;
/// Enough to write at once.
const GATHER_BYTES: usize = 64 * 1024;

/// Why a request on a connection failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("the connection is closed: {0}")]
    Closed(Arc<str>),
    #[error("no reply within {0:?}; the connection is closed")]
    TimedOut(Duration),
    /// The request's own deadline passed; the connection is fine, and consumes the reply when
    /// it comes.
    #[error("the request's deadline passed")]
    Deadline,
}

/// What a connection is made with.
#[derive(Debug, Clone)]
pub(crate) struct ConnConfig {
    pub(crate) connect_timeout: Duration,
    /// How long the oldest request may wait with no bytes moving either way.
    pub(crate) io_timeout: Duration,
    /// The largest value kept from a reply (`item_bytes`); larger ones are skipped unread.
    pub(crate) max_value: usize,
    /// The node's health, told of the connection's own timeout.
    pub(crate) health: Option<Arc<Health>>,
    /// Ask the server about itself first (`handshake.rs`); off only for scripted peers in tests.
    pub(crate) greet: bool,
    /// The node's leases to hand back on its next connection.
    pub(crate) orphans: Option<Arc<Orphans>>,
    /// Logged in with on each new connection, if the server asks for it (`auth.rs`).
    pub(crate) credentials: Option<Arc<Credentials>>,
    /// TLS to the node (`tls.rs`); `None`: plain TCP.
    pub(crate) tls: Option<NodeTls>,
}

/// A connected stream, before its handshakes: split into halves for the reader and the writer
/// tasks once they are done.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    /// Whether a write may keep bytes back that only a flush sends (TLS's records); the writer
    /// flushes after each batch only then, not on every batch of a plain TCP connection.
    const KEEPS_WRITES: bool;
    fn into_halves(self) -> (Self::Read, Self::Write);
}

impl Stream for TcpStream {
    type Read = OwnedReadHalf;
    type Write = OwnedWriteHalf;
    const KEEPS_WRITES: bool = false;

    /// Two halves without a lock between them.
    fn into_halves(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }
}

#[cfg(feature = "tls")]
impl Stream for super::tls::TlsStream {
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;
    const KEEPS_WRITES: bool = true;

    /// A TLS session's state is one: its halves share it under a lock.
    fn into_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// A handle to a connection; clones share it, and the last one to go closes it.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    handle: Arc<Handle>,
}

/// Held by handles only (the tasks hold `Shared`): its drop means nobody can send any more.
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
}

/// Why a connection closes when the last handle to it goes: not a fault.
const DROPPED: &str = "the connection was dropped";

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close(DROPPED);
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    writer: Notify,
    /// The longest the connection may wait for the oldest request's reply with no bytes moving
    /// either way.
    io_timeout: Duration,
    /// When the connection was made, and nanoseconds after it that the writer last sent bytes.
    epoch: Instant,
    written_at: AtomicU64,
    closed: AtomicBool,
    tasks: Mutex<Vec<AbortHandle>>,
    /// The node's health, told of this connection's own timeout: the callers waiting on it may
    /// all have given up at their deadlines, and would tell it nothing.
    health: Option<Arc<Health>>,
    max_value: usize,
    /// The run of the server this connection talks to.
    instance: Instance,
    /// The server's largest item, key and header included (0: unknown).
    item_size_max: usize,
    /// Where a lease to hand back goes when this connection can no longer carry it.
    orphans: Option<Arc<Orphans>>,
}

#[derive(Debug, Default)]
struct State {
    out: BytesMut,
    waiters: VecDeque<Waiter>,
    next_opaque: u32,
    closed: Option<ConnError>,
    /// Bytes queued since the connection was made: where each request ends in the stream.
    queued: u64,
    /// The batches written whole and not yet all answered: where each ends in the stream, and
    /// when its last byte was written.
    written: VecDeque<(u64, Instant)>,
    /// When the reader's timer fires next: it tells every request queued by then whose deadline
    /// has passed. A request whose deadline comes sooner is watched by its caller's own timer
    /// (`PendingReply::watched`). `None` until the reader sets it.
    armed: Option<Instant>,
}

#[derive(Debug)]
struct Waiter {
    opaque: u32,
    sent: Instant,
    /// Where the request ends in the stream (`State::queued` after it).
    end: u64,
    /// Taken when the reply is handed over, or when the deadline passes first.
    reply: Option<oneshot::Sender<Result<Reply, ConnError>>>,
    deadline: Option<Instant>,
    /// A lease this request hands back (`release_won`): if the connection closes first, the
    /// node's next connection does.
    hand_back: Option<Box<(WireKey, u64)>>,
}

type ReplySlot = Result<Reply, ConnError>;

/// A reply on its way. Dropped before it is read, it hands back a lease the reply won (not a
/// right to refresh a live value): the caller is gone, and nobody else would fill or release it.
#[derive(Debug)]
pub(crate) struct PendingReply {
    rx: Option<oneshot::Receiver<ReplySlot>>,
    shared: Arc<Shared>,
    watched: bool,
}

impl PendingReply {
    /// The run of the server the request went to.
    pub(crate) fn instance(&self) -> Instance {
        self.shared.instance
    }

    /// Whether the connection tells this request when its deadline passes; if not, its
    /// caller must watch the deadline itself (it comes before the connection's timer fires).
    pub(crate) fn watched(&self) -> bool {
        self.watched
    }
}

impl Future for PendingReply {
    type Output = Result<ReplySlot, oneshot::error::RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let rx = self.rx.as_mut().expect("polled after completion");
        let reply = std::task::ready!(Pin::new(rx).poll(cx));
        self.rx = None;
        Poll::Ready(reply)
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        // From here the reader finds the receiver closed and hands back a win itself; a reply
        // that arrived before is still in the channel, and handed back here.
        rx.close();
        if let Ok(Ok(Reply::Meta(meta))) = rx.try_recv() {
            self.shared.release_won(&meta);
        }
    }
}

impl Connection {
    /// Connects to the first of `addrs` that accepts (and, with `greet`, answers the handshake)
    /// within `connect_timeout`. A request that goes `io_timeout` without progress towards its
    /// reply closes the connection, failing every request on it with [`ConnError::TimedOut`];
    /// a request's own deadline fails it alone ([`ConnError::Deadline`]): one timer per
    /// connection for both, not one per request.
    pub(crate) async fn connect(addrs: &[SocketAddr], config: &ConnConfig) -> io::Result<Self> {
        let timeout = config.connect_timeout;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
        for addr in addrs {
            let connect = async {
                let stream = TcpStream::connect(addr).await?;
                // Small requests must not wait for Nagle's algorithm.
                let _ = stream.set_nodelay(true);
                match &config.tls {
                    // A TLS server resets a connection whose first bytes are not a TLS hello.
                    None => Self::open(stream, config, timeout).await.map_err(|err| {
                        match err.kind() {
                            io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof => {
                                io::Error::new(
                                    err.kind(),
                                    format!("{err} before its first answer: does the server require TLS (memcached -Z)?"),
                                )
                            }
                            _ => err,
                        }
                    }),
                    #[cfg(feature = "tls")]
                    Some(tls) => Self::open(tls.connect(stream).await?, config, timeout).await,
                    #[cfg(not(feature = "tls"))]
                    Some(tls) => tls.unreachable(),
                }
            };
            match tokio::time::timeout(timeout, connect).await {
                Ok(Ok(connection)) => return Ok(connection),
                // The server answered, and cannot be used: another address of it would say
                // the same.
                Ok(Err(err))
                    if err.kind() == io::ErrorKind::InvalidData || auth::is_refusal(&err) =>
                {
                    return Err(err);
                }
                Ok(Err(err)) => last = err,
                Err(_) => {
                    last = io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {addr} took over {timeout:?}"),
                    )
                }
            }
        }
        Err(last)
    }

    /// Logs in and greets the server on a connected stream, then starts the connection's tasks.
    async fn open<S: Stream>(
        mut stream: S,
        config: &ConnConfig,
        timeout: Duration,
    ) -> io::Result<Self> {
        if let Some(credentials) = &config.credentials {
            auth::log_in(&mut stream, credentials).await?;
        }
        let greeting = match config.greet {
            true => handshake::greet(&mut stream, timeout).await?,
            false => Greeting::SILENT,
        };
        Ok(Self::start(stream, greeting, config))
    }

    fn start<S: Stream>(stream: S, greeting: Greeting, config: &ConnConfig) -> Self {
        let (read, write) = stream.into_halves();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            writer: Notify::new(),
            io_timeout: config.io_timeout,
            epoch: Instant::now(),
            written_at: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            health: config.health.clone(),
            max_value: config.max_value,
            instance: greeting.instance,
            item_size_max: greeting.item_size_max,
            orphans: config.orphans.clone(),
        });
        let reader = tokio::spawn(read_replies(
            shared.clone(),
            read,
            ClosesOnDrop(shared.clone()),
        ));
        let writer = tokio::spawn(write_requests(
            shared.clone(),
            write,
            S::KEEPS_WRITES,
            ClosesOnDrop(shared.clone()),
        ));
        shared
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend([reader.abort_handle(), writer.abort_handle()]);
        if shared.closed.load(Ordering::Acquire) {
            // Closed before the tasks were registered: stop them here.
            shared.abort_tasks();
        }
        Connection {
            handle: Arc::new(Handle { shared }),
        }
    }

    /// Queues `request`; the reply arrives on the returned receiver.
    pub(crate) fn send(&self, request: &Request<'_>) -> Result<PendingReply, ConnError> {
        self.send_until(request, None)
    }

    /// Queues `request`; the reply arrives on the returned receiver, or
    /// [`ConnError::Deadline`] once `deadline` passes if the connection's timer watches it
    /// ([`PendingReply::watched`]). One timer per connection watches the deadlines that come no
    /// sooner than it is set to fire, so that a request to a server that answers in time costs
    /// no timer of its own.
    pub(crate) fn send_until(
        &self,
        request: &Request<'_>,
        deadline: Option<Instant>,
    ) -> Result<PendingReply, ConnError> {
        let (tx, rx) = oneshot::channel();
        let shared = &self.handle.shared;
        let watched = {
            let mut state = shared.lock();
            if let Some(err) = &state.closed {
                return Err(err.clone());
            }
            state.push(request, tx, deadline);
            deadline.is_none_or(|d| state.armed.is_some_and(|armed| armed <= d))
        };
        shared.writer.notify_one();
        Ok(PendingReply {
            rx: Some(rx),
            shared: shared.clone(),
            watched,
        })
    }

    /// Whether `other` is a handle to the same connection.
    pub(crate) fn same(&self, other: &Connection) -> bool {
        Arc::ptr_eq(&self.handle, &other.handle)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.handle.shared.closed.load(Ordering::Acquire)
    }

    /// The run of the server this connection talks to (0: unknown).
    pub(crate) fn instance(&self) -> Instance {
        self.handle.shared.instance
    }

    /// The server's largest item, key and header included (0: unknown).
    pub(crate) fn item_size_max(&self) -> usize {
        self.handle.shared.item_size_max
    }
}

impl State {
    /// Queues `request`, its reply to go to `reply` unless `deadline` passes first.
    fn push(
        &mut self,
        request: &Request<'_>,
        reply: oneshot::Sender<ReplySlot>,
        deadline: Option<Instant>,
    ) {
        let opaque = self.next_opaque;
        self.next_opaque = opaque.wrapping_add(1);
        let before = self.out.len();
        request.encode(opaque, &mut self.out);
        self.queued += (self.out.len() - before) as u64;
        let sent = Instant::now();
        self.waiters.push_back(Waiter {
            opaque,
            sent,
            end: self.queued,
            reply: Some(reply),
            deadline,
            hand_back: None,
        });
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self, reason: &str) {
        self.close_with(ConnError::Closed(reason.into()));
    }

    /// Closes the connection for a fault, and tells the node's health: once for the connection,
    /// however many requests it fails (they do not count it again, `Node::execute`).
    fn fail(&self, reason: &str) {
        // Counted before the waiters hear of it: one that asks again at once, on a new
        // connection, must find this failure counted beside its own.
        let first = !self.closed.swap(true, Ordering::AcqRel);
        if let (true, Some(health)) = (first, &self.health) {
            health.failure(Ticket::Up, &StoreErrorKind::Connection(reason.to_owned()));
        }
        self.close(reason);
    }

    /// Says why the connection closed: a named event, so that a close that no caller saw (each
    /// had given up at its deadline) is still seen by an operator.
    fn log_close(&self, err: &ConnError, in_flight: usize) {
        let node = self.health.as_ref().map(|h| h.server().to_string());
        let node = node.as_deref().unwrap_or("-");
        match err {
            ConnError::Closed(reason) if &**reason == DROPPED => {
                debug!(name: "distcache.connection.closed", node, %err, in_flight);
            }
            _ => warn!(name: "distcache.connection.closed", node, %err, in_flight,
                "memcached connection closed"),
        }
    }

    fn close_with(&self, err: ConnError) {
        let waiters = {
            let mut state = self.lock();
            if state.closed.is_some() {
                return;
            }
            state.closed = Some(err.clone());
            state.out.clear();
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut state.waiters)
        };
        self.log_close(&err, waiters.len());
        for waiter in waiters {
            if let (Some(hand_back), Some(orphans)) = (&waiter.hand_back, &self.orphans) {
                // Maybe never written, maybe never answered: memcached's CAS makes a second
                // hand-back harmless, a lost one blocks the key.
                orphans.push(&hand_back.0, hand_back.1, self.instance);
            }
            if let Some(reply) = waiter.reply {
                let _ = reply.send(Err(err.clone()));
            }
        }
        self.abort_tasks();
    }

    fn note_written(&self) {
        let since = self.epoch.elapsed().as_nanos();
        self.written_at
            .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// When the writer last sent bytes.
    fn last_written(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.written_at.load(Ordering::Relaxed))
    }

    /// The reader's timer fired at `now`: tells each request whose deadline has passed (leaving
    /// its place in the queue for its reply), and checks the oldest request's progress. Returns
    /// when the timer fires next, or `Err` if the oldest request has gone `io_timeout` without
    /// progress. Under one lock with the queue, so that a request queued after this sees the new
    /// `armed`, and one queued before is seen here.
    fn watch(&self, now: Instant, last_read: Instant) -> Result<Instant, ()> {
        let mut state = self.lock();
        let state = &mut *state;
        let mut next = now + self.io_timeout;
        if let Some(oldest) = state.waiters.front() {
            // The batch that holds the oldest request, if it is written whole.
            while state
                .written
                .front()
                .is_some_and(|&(batch_end, _)| batch_end < oldest.end)
            {
                state.written.pop_front();
            }
            let progress = match state.written.front() {
                Some(&(_, written)) => written.max(last_read),
                None => self.last_written(),
            };
            let limit = oldest.sent.max(progress) + self.io_timeout;
            if limit <= now {
                return Err(());
            }
            next = limit;
        }
        for waiter in state.waiters.iter_mut() {
            let (Some(deadline), Some(_)) = (waiter.deadline, &waiter.reply) else {
                continue;
            };
            if deadline <= now {
                if let Some(tx) = waiter.reply.take() {
                    let _ = tx.send(Err(ConnError::Deadline));
                }
            } else {
                next = next.min(deadline);
            }
        }
        state.armed = Some(next);
        Ok(next)
    }

    /// Hands back the lease `meta` won, if it won one, for a lookup whose caller is gone; the
    /// release's own reply is of no interest. A win on a live value (refresh-ahead) is not a
    /// lease: deleting would take the value from everyone, so it is left to lapse.
    fn release_won(&self, meta: &Meta) {
        let (true, Some(key), Some(cas)) = (meta.won_lease(), &meta.key, meta.cas) else {
            return;
        };
        let (nobody, _) = oneshot::channel();
        {
            let mut state = self.lock();
            if state.closed.is_some() {
                // Closed meanwhile: the node's next connection to this run of the server hands
                // it back, rather than leave the key blocked until the lease expires.
                if let Some(orphans) = &self.orphans {
                    orphans.push(key, cas, self.instance);
                }
                return;
            }
            state.push(
                &Request::Delete {
                    key,
                    cas: Some(cas),
                },
                nobody,
                None,
            );
            if let Some(waiter) = state.waiters.back_mut() {
                waiter.hand_back = Some(Box::new((key.as_ref().clone(), cas)));
            }
        }
        self.writer.notify_one();
    }

    fn abort_tasks(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }

    /// Hands `reply` to the oldest waiter; false if the connection is out of step.
    fn deliver(&self, reply: Reply) -> Result<(), String> {
        let waiter = {
            let mut state = self.lock();
            let waiter = state.waiters.pop_front();
            if let Some(waiter) = &waiter {
                // Batches answered whole need no watching.
                while state
                    .written
                    .front()
                    .is_some_and(|&(end, _)| end <= waiter.end)
                {
                    state.written.pop_front();
                }
            }
            waiter
        };
        let Some(waiter) = waiter else {
            return Err(format!("a reply nobody asked for: {reply:?}"));
        };
        let fatal = match &reply {
            // Every request carries its token, and memcached echoes it in every meta reply: a
            // reply without it cannot be proven to be the one its waiter expects.
            Reply::Meta(meta) => match meta.opaque {
                Some(opaque) if opaque == waiter.opaque => None,
                Some(opaque) => Some(format!(
                    "reply for request {opaque} where {} was expected",
                    waiter.opaque
                )),
                None => Some(format!(
                    "a reply without its request's token where {} was expected",
                    waiter.opaque
                )),
            },
            // After a command error memcached may be reading our next bytes as data: start over.
            Reply::Error {
                kind: ErrorKind::Command | ErrorKind::Client,
                message,
            } => Some(format!("the server refused a request: {message}")),
            Reply::Error {
                kind: ErrorKind::Server,
                ..
            } => None,
        };
        match fatal {
            Some(reason) => {
                if let Some(tx) = waiter.reply {
                    let _ = tx.send(Err(ConnError::Closed(reason.as_str().into())));
                }
                Err(reason)
            }
            None => {
                // A caller that gave up (dropped its receiver, or was told its deadline passed):
                // the reply is consumed all the same, and a lease it won handed back.
                let unread = match waiter.reply {
                    Some(tx) => tx.send(Ok(reply)).err().and_then(Result::ok),
                    None => Some(reply),
                };
                if let Some(Reply::Meta(meta)) = unread {
                    self.release_won(&meta);
                }
                Ok(())
            }
        }
    }
}

/// Held by each of a connection's tasks: a task that ends, however it ends, closes the
/// connection. A task is dropped unfinished when its runtime shuts down (a `static` cache used from
/// a `#[tokio::test]`, then from the next one): without this, the connection would still look open,
/// and requests would queue on it with nobody to write them, read their replies or time them out.
struct ClosesOnDrop(Arc<Shared>);

impl Drop for ClosesOnDrop {
    fn drop(&mut self) {
        self.0
            .close("the connection's tasks ended (their runtime shut down)");
    }
}

/// `_closes`, an argument, is dropped with the task's future even if it never ran.
async fn write_requests<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    mut write: W,
    flush: bool,
    _closes: ClosesOnDrop,
) {
    loop {
        let pending = shared.lock().out.len();
        if pending == 0 {
            // `send` stores a permit if it notifies while we are not waiting: no lost wake-up.
            shared.writer.notified().await;
            continue;
        }
        // Let the tasks that are ready to send run first, while their requests still fit in this
        // write: one syscall for many requests, here and in memcached, which answers a read's
        // worth of requests with one write. It costs a turn of the scheduler, not a timer: a few
        // microseconds for a lone caller, beside a loopback round trip of ~50.
        let mut seen = pending;
        for _ in 0..MAX_GATHER_YIELDS {
            tokio::task::yield_now().await;
            let now = shared.lock().out.len();
            if now == seen || now >= GATHER_BYTES {
                break;
            }
            seen = now;
        }
        let (mut batch, batch_end) = {
            let mut state = shared.lock();
            if state.closed.is_some() {
                return;
            }
            (state.out.split(), state.queued)
        };
        // Written piece by piece, each noted as progress: a large batch to a server that reads it
        // steadily is not a server that stopped answering.
        let mut written = 0;
        while written < batch.len() {
            match write.write(&batch[written..]).await {
                Ok(0) => {
                    shared.fail("write failed: the server takes no more bytes");
                    return;
                }
                Ok(n) => {
                    written += n;
                    shared.note_written();
                }
                Err(err) => {
                    shared.fail(&format!("write failed: {err}"));
                    return;
                }
            }
        }
        // TLS keeps the records of a write that found the socket full: a flush sends them (before
        // the writer sleeps on an idle connection, where nothing else would).
        if flush && let Err(err) = write.flush().await {
            shared.fail(&format!("write failed: {err}"));
            return;
        }
        // Give the buffer back, so that steady traffic does not allocate.
        batch.clear();
        let mut state = shared.lock();
        let done = shared.last_written();
        state.written.push_back((batch_end, done));
        if state.out.is_empty() && state.out.capacity() < batch.capacity() {
            state.out = batch;
        }
    }
}

async fn read_replies<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    mut read: R,
    _closes: ClosesOnDrop,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut parser = Parser::new(shared.max_value);
    let watch = tokio::time::sleep(shared.io_timeout);
    tokio::pin!(watch);
    shared.lock().armed = Some(watch.deadline());
    let mut last_read = shared.epoch;
    loop {
        loop {
            match parser.parse(&mut buf) {
                Ok(Some(reply)) => {
                    if let Err(reason) = shared.deliver(reply) {
                        shared.fail(&reason);
                        return;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    shared.fail(&format!("protocol error: {err}"));
                    return;
                }
            }
        }
        if buf.is_empty() && buf.capacity() > 4 * READ_CHUNK {
            // A large value made the buffer grow: give the memory back once it is handed out,
            // rather than keep the peak for the connection's life.
            buf = BytesMut::with_capacity(READ_CHUNK);
        } else if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        // Watch the oldest request while reading, with one timer that is only re-armed when it
        // fires: the connection fails once the oldest request has gone `io_timeout` without
        // progress towards its reply. While its bytes are being written, progress is the writer's
        // (a large batch to a server that reads it steadily); once they are written, it is a read
        // (the replies to the requests before it). So a deep queue answered steadily (a burst of
        // large pipelined fills) is not taken for a server that stopped answering, while other
        // requests written after it (a hung server still takes bytes into its socket buffer) do
        // not count. The timer never fires later than that limit: a request sent, or progress
        // made, after it was armed only moves the limit later.
        let read = tokio::select! {
            read = read.read_buf(&mut buf) => read,
            () = &mut watch => {
                match shared.watch(Instant::now(), last_read) {
                    Ok(next) => watch.as_mut().reset(next),
                    Err(()) => {
                        shared.close_with(ConnError::TimedOut(shared.io_timeout));
                        if let Some(health) = &shared.health {
                            health.failure(Ticket::Up, &StoreErrorKind::Timeout(shared.io_timeout));
                        }
                        return;
                    }
                }
                continue;
            }
        };
        match read {
            Ok(0) => {
                shared.fail("the server closed the connection");
                return;
            }
            Ok(_) => last_read = Instant::now(),
            Err(err) => {
                shared.fail(&format!("read failed: {err}"));
                return;
            }
        }
    }
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
