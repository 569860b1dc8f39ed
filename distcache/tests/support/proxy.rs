//! A fault proxy between a cache and one memcached server, on loopback only: it passes traffic
//! through, or delays, black-holes, slices or cuts it, refuses connects, or resets connections,
//! as a test tells it to, at any moment.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the proxy does to the traffic of every connection, from the moment it is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Passes traffic through.
    Pass,
    /// Delays each reply byte by this long, counted from its arrival from the server, so that
    /// pipelined replies are not delayed more by queueing behind each other.
    Latency(Duration),
    /// Delays each piece of the reply stream by a random time up to this long, in order.
    Jitter(Duration),
    /// Takes requests and never answers: they are read and dropped.
    BlackHole,
    /// Passes requests to the server and drops its replies: the server acts on requests whose
    /// senders never hear of it.
    LoseReplies,
    /// New connections are refused (the proxy stops listening); open ones pass traffic.
    Refuse,
    /// Each connection's reply stream is cut (the connection closed) after this many bytes.
    CutRepliesAfter(usize),
    /// Traffic both ways is written in pieces of 1 to 7 bytes.
    Slice,
}

/// A proxy to `upstream` on a free loopback port. Dropped, it stops.
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    upstream: SocketAddr,
    /// Connections accepted since the proxy started.
    accepted: AtomicUsize,
    /// Request lines (LFs) passed to the server since the proxy started.
    request_lines: AtomicUsize,
    /// Request lines taken from clients, passed or not (a black hole takes them).
    taken_lines: AtomicUsize,
    /// The connections' tasks, to reset them.
    connections: Mutex<Vec<JoinHandle<()>>>,
}

impl FaultProxy {
    /// A proxy to the server at `upstream` (`127.0.0.1:port`), passing traffic through.
    pub async fn start(upstream: &str) -> Self {
        Self::start_with(upstream, None).await
    }

    /// A proxy whose connections from clients take at most about `bytes` into their receive
    /// buffer: with [`Fault::Slice`], a client's large write finds its socket full.
    pub async fn start_narrow(upstream: &str, bytes: u32) -> Self {
        Self::start_with(upstream, Some(bytes)).await
    }

    async fn start_with(upstream: &str, receive_buffer: Option<u32>) -> Self {
        let upstream: SocketAddr = upstream.parse().expect("a loopback address");
        assert!(upstream.ip().is_loopback(), "loopback only");
        let listener = listen("127.0.0.1:0".parse().unwrap(), receive_buffer);
        let addr = listener.local_addr().unwrap();
        let (fault, faults) = watch::channel(Fault::Pass);
        let shared = Arc::new(Shared {
            upstream,
            accepted: AtomicUsize::new(0),
            request_lines: AtomicUsize::new(0),
            taken_lines: AtomicUsize::new(0),
            connections: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(accept(
            listener,
            addr,
            receive_buffer,
            faults,
            shared.clone(),
        ));
        FaultProxy {
            addr,
            fault,
            shared,
            task,
        }
    }

    /// `127.0.0.1:port`, to give the cache instead of the server's.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// From now on, applies `fault`.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Connections accepted since the proxy started.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Request lines (LFs) passed to the server since the proxy started: a request without
    /// data is one, a store two.
    pub fn request_lines(&self) -> usize {
        self.shared.request_lines.load(Ordering::SeqCst)
    }

    /// Waits until `lines` request lines have been taken from clients in all, passed to the
    /// server or not.
    pub async fn taken(&self, lines: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.shared.taken_lines.load(Ordering::SeqCst) < lines {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the requests reach the proxy within 10 s");
    }

    /// Request lines taken from clients since the proxy started, passed to the server or not.
    pub fn taken_lines(&self) -> usize {
        self.shared.taken_lines.load(Ordering::SeqCst)
    }

    /// Waits until `lines` request lines have passed to the server in all.
    pub async fn passed(&self, lines: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.request_lines() < lines {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the requests reach the server within 10 s");
    }

    /// Resets every open connection (RST, not FIN), as a middlebox that lost its state does.
    pub fn reset(&self) {
        for task in std::mem::take(&mut *self.shared.connections.lock().unwrap()) {
            // Its sockets close with the task; the client's, set to linger 0, with an RST.
            task.abort();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.reset();
    }
}

fn listen(addr: SocketAddr, receive_buffer: Option<u32>) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    // The same port again after `Refuse`, while old connections are in TIME_WAIT.
    socket.set_reuseaddr(true).unwrap();
    if let Some(bytes) = receive_buffer {
        // Inherited by the accepted connections.
        socket.set_recv_buffer_size(bytes).unwrap();
    }
    socket.bind(addr).unwrap();
    socket.listen(1024).unwrap()
}

async fn accept(
    listener: TcpListener,
    addr: SocketAddr,
    receive_buffer: Option<u32>,
    mut faults: watch::Receiver<Fault>,
    shared: Arc<Shared>,
) {
    let mut listener = Some(listener);
    loop {
        let Some(open) = &listener else {
            // Refusing: listen again once the fault changes.
            if faults.changed().await.is_err() {
                return;
            }
            if *faults.borrow() != Fault::Refuse {
                listener = Some(listen(addr, receive_buffer));
            }
            continue;
        };
        tokio::select! {
            changed = faults.changed() => {
                if changed.is_err() {
                    return;
                }
                if *faults.borrow() == Fault::Refuse {
                    listener = None;
                }
            }
            accepted = open.accept() => {
                let Ok((client, _)) = accepted else { continue };
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(shared.upstream).await else { continue };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                // Closed by a reset, the client's socket sends an RST rather than a FIN. (Linger
                // blocks a drop only when it is not zero.)
                #[allow(deprecated)]
                let _ = client.set_linger(Some(Duration::ZERO));
                let task = tokio::spawn(relay(client, server, faults.clone(), shared.clone()));
                let mut connections = shared.connections.lock().unwrap();
                connections.retain(|task| !task.is_finished());
                connections.push(task);
            }
        }
    }
}

/// Relays one connection until either side closes or a fault cuts it.
/// The client's write half, which sends no FIN when dropped (tokio's does): a reset must reach
/// the client as an RST.
struct NoFin(Option<OwnedWriteHalf>);

impl NoFin {
    fn half(&mut self) -> &mut OwnedWriteHalf {
        self.0.as_mut().expect("until dropped")
    }
}

impl Drop for NoFin {
    fn drop(&mut self) {
        if let Some(half) = self.0.take() {
            half.forget();
        }
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    faults: watch::Receiver<Fault>,
    shared: Arc<Shared>,
) {
    let (client_read, client_write) = client.into_split();
    let client_write = NoFin(Some(client_write));
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        () = requests(client_read, server_write, faults.clone(), &shared) => {}
        () = replies(server_read, client_write, faults) => {}
    }
}

async fn requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    faults: watch::Receiver<Fault>,
    shared: &Shared,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let lines = buf[..n].iter().filter(|&&b| b == b'\n').count();
        shared.taken_lines.fetch_add(lines, Ordering::SeqCst);
        let fault = faults.borrow().clone();
        let sent = match fault {
            Fault::BlackHole => Ok(()),
            Fault::Slice => write_sliced(&mut to, &buf[..n]).await,
            _ => to.write_all(&buf[..n]).await,
        };
        if sent.is_err() {
            return;
        }
        if fault != Fault::BlackHole {
            shared.request_lines.fetch_add(lines, Ordering::SeqCst);
        }
    }
}

async fn replies(mut from: OwnedReadHalf, to: NoFin, faults: watch::Receiver<Fault>) {
    // Bytes are written from a queue of (when due, bytes), so that a delay counts from each
    // byte's arrival and replies do not pile up behind each other. An empty entry closes.
    let queue: Mutex<VecDeque<(Instant, Vec<u8>)>> = Mutex::default();
    let ready = tokio::sync::Notify::new();
    let push = |due, bytes| {
        queue.lock().unwrap().push_back((due, bytes));
        ready.notify_one();
    };
    let reading = async {
        let mut forwarded = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let arrived = Instant::now();
            let fault = faults.borrow().clone();
            match fault {
                Fault::BlackHole | Fault::LoseReplies => {}
                Fault::Latency(delay) => push(arrived + delay, buf[..n].to_vec()),
                Fault::Jitter(max) => {
                    let delay = max.mul_f64(fastrand::f64());
                    push(arrived + delay, buf[..n].to_vec());
                }
                Fault::CutRepliesAfter(limit) => {
                    let room = limit.saturating_sub(forwarded);
                    let kept = n.min(room);
                    forwarded += kept;
                    if kept > 0 {
                        push(arrived, buf[..kept].to_vec());
                    }
                    if forwarded >= limit {
                        break;
                    }
                }
                _ => {
                    forwarded += n;
                    push(arrived, buf[..n].to_vec());
                }
            }
        }
        push(Instant::now(), Vec::new());
    };
    tokio::join!(reading, write_due(to, &queue, &ready, &faults));
}

/// Writes queued reply bytes when due; an empty entry closes the connection.
async fn write_due(
    mut to: NoFin,
    queue: &Mutex<VecDeque<(Instant, Vec<u8>)>>,
    ready: &tokio::sync::Notify,
    faults: &watch::Receiver<Fault>,
) {
    loop {
        let next = queue.lock().unwrap().pop_front();
        let Some((due, bytes)) = next else {
            ready.notified().await;
            continue;
        };
        if bytes.is_empty() {
            let _ = to.half().shutdown().await;
            return;
        }
        tokio::time::sleep_until(due).await;
        let sliced = *faults.borrow() == Fault::Slice;
        let written = if sliced {
            write_sliced(to.half(), &bytes).await
        } else {
            to.half().write_all(&bytes).await
        };
        if written.is_err() {
            return;
        }
    }
}

async fn write_sliced(to: &mut OwnedWriteHalf, bytes: &[u8]) -> std::io::Result<()> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let piece = fastrand::usize(1..=7).min(rest.len());
        to.write_all(&rest[..piece]).await?;
        to.flush().await?;
        rest = &rest[piece..];
    }
    Ok(())
}
