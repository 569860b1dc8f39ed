//! One server: a pool of pipelined connections, per-operation timeouts, and health.
//!
//! Health: consecutive failures (or one timeout) mark the node down for `retry_interval`, during
//! which its keys go to the next server on the ring. After the interval, one request is let
//! through as a probe; its success brings the node back, its failure keeps it down for another
//! interval.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use deadpool::managed::{self, Metrics, Pool, PoolError, RecycleError, RecycleResult};
use tokio::time::Instant;
use tracing::{info, warn};

use super::conn::Connection;
use super::protocol::{Reply, Request};
use super::ring::Server;
use crate::store::{StoreError, StoreErrorKind};

/// The settings a node runs with.
#[derive(Debug, Clone)]
pub(crate) struct NodeConfig {
    pub(crate) connect_timeout: Duration,
    pub(crate) io_timeout: Duration,
    pub(crate) retry_interval: Duration,
    pub(crate) failure_threshold: u32,
    pub(crate) connections: usize,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) server: Server,
    pool: Pool<Manager>,
    health: Health,
    io_timeout: Duration,
}

impl Node {
    /// A node that connects on first use.
    pub(crate) fn new(server: Server, config: &NodeConfig, epoch: Instant) -> Self {
        let manager = Manager {
            server: server.clone(),
            connect_timeout: config.connect_timeout,
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
            health: Health {
                epoch,
                failures: AtomicU32::new(0),
                down_until: AtomicU64::new(UP),
                probing: AtomicBool::new(false),
                retry_interval: config.retry_interval,
                threshold: config.failure_threshold,
            },
            io_timeout: config.io_timeout,
        }
    }

    /// Whether a request may go to this node now. After the retry interval of a down node, the
    /// first caller to ask gets `true`: its request is the probe.
    pub(crate) fn available(&self) -> bool {
        self.health.available()
    }

    /// Whether the node is marked down and not yet due for a probe (no side effect).
    pub(crate) fn is_down(&self) -> bool {
        self.health.is_down()
    }

    /// Sends `request` and awaits its reply, within the I/O timeout; records the outcome.
    pub(crate) async fn execute(
        &self,
        operation: &'static str,
        request: &Request<'_>,
    ) -> Result<Reply, StoreError> {
        let result = self.round_trip(request).await;
        match &result {
            Ok(_) => self.health.success(&self.server),
            Err(kind) => self.health.failure(
                &self.server,
                matches!(kind, StoreErrorKind::Timeout(_)),
                kind,
            ),
        }
        result.map_err(|kind| StoreError {
            operation,
            node: self.server.to_string(),
            kind,
        })
    }

    async fn round_trip(&self, request: &Request<'_>) -> Result<Reply, StoreErrorKind> {
        let (conn, reply) = {
            let conn = self.pool.get().await.map_err(|err| match err {
                PoolError::Backend(err) => StoreErrorKind::Io(err),
                PoolError::Timeout(_) => StoreErrorKind::Timeout(self.io_timeout),
                other => StoreErrorKind::Io(io::Error::other(other.to_string())),
            })?;
            let reply = conn
                .send(request)
                .map_err(|err| StoreErrorKind::Connection(err.to_string()))?;
            // The pooled connection goes back to the pool here, for others to pipeline on,
            // while we await our reply.
            (Connection::clone(&conn), reply)
        };
        match tokio::time::timeout(self.io_timeout, reply).await {
            Err(_elapsed) => {
                // A server this slow is in trouble; the connection goes, with what is on it.
                conn.close("no reply within the I/O timeout");
                Err(StoreErrorKind::Timeout(self.io_timeout))
            }
            Ok(Err(_dropped)) => Err(StoreErrorKind::Connection("the connection closed".into())),
            Ok(Ok(Err(err))) => Err(StoreErrorKind::Connection(err.to_string())),
            Ok(Ok(Ok(reply))) => Ok(reply),
        }
    }
}

/// Creates and checks the pool's connections.
#[derive(Debug)]
struct Manager {
    server: Server,
    connect_timeout: Duration,
}

impl managed::Manager for Manager {
    type Type = Connection;
    type Error = io::Error;

    async fn create(&self) -> Result<Connection, io::Error> {
        // Resolved at each connect, so that a server's new address is picked up.
        let addrs: Vec<SocketAddr> =
            tokio::net::lookup_host((self.server.host(), self.server.port()))
                .await?
                .collect();
        Connection::connect(&addrs, self.connect_timeout).await
    }

    async fn recycle(&self, conn: &mut Connection, _: &Metrics) -> RecycleResult<io::Error> {
        if conn.is_closed() {
            return Err(RecycleError::message("the connection is closed"));
        }
        Ok(())
    }
}

/// `down_until` of a node that is up.
const UP: u64 = 0;

#[derive(Debug)]
struct Health {
    epoch: Instant,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the node is down; `UP` when it is up.
    down_until: AtomicU64,
    /// A probe is under way.
    probing: AtomicBool,
    retry_interval: Duration,
    threshold: u32,
}

impl Health {
    fn now(&self) -> u64 {
        // At least 1, so that no deadline equals `UP`.
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn is_down(&self) -> bool {
        let until = self.down_until.load(Ordering::Acquire);
        until != UP && self.now() < until
    }

    fn available(&self) -> bool {
        let until = self.down_until.load(Ordering::Acquire);
        if until == UP {
            return true;
        }
        if self.now() < until {
            return false;
        }
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn success(&self, server: &Server) {
        self.failures.store(0, Ordering::Release);
        if self.down_until.swap(UP, Ordering::AcqRel) != UP {
            self.probing.store(false, Ordering::Release);
            info!(node = %server, "memcached node is back: its keys return to it");
        }
    }

    fn failure(&self, server: &Server, timed_out: bool, error: &StoreErrorKind) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let probe_failed = self.probing.load(Ordering::Acquire);
        if timed_out || failures >= self.threshold || probe_failed {
            let until = self.now() + self.retry_interval.as_millis() as u64;
            let was = self.down_until.swap(until, Ordering::AcqRel);
            self.probing.store(false, Ordering::Release);
            if was == UP {
                warn!(node = %server, %error, retry_in = ?self.retry_interval,
                    "memcached node marked down: its keys go to the next node on the ring");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(threshold: u32) -> Health {
        Health {
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            down_until: AtomicU64::new(UP),
            probing: AtomicBool::new(false),
            retry_interval: Duration::from_secs(2),
            threshold,
        }
    }

    fn server() -> Server {
        Server::new("127.0.0.1", 1).unwrap()
    }

    fn refused() -> StoreErrorKind {
        StoreErrorKind::Io(io::Error::from(io::ErrorKind::ConnectionRefused))
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_mark_down_and_one_probe_brings_back() {
        let h = health(2);
        h.failure(&server(), false, &refused());
        assert!(h.available(), "one failure is not enough");
        h.success(&server());
        h.failure(&server(), false, &refused());
        assert!(h.available(), "a success in between resets the count");
        h.failure(&server(), false, &refused());
        assert!(h.is_down() && !h.available(), "two in a row mark it down");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(h.available(), "after the retry interval one request probes");
        assert!(!h.available(), "only one");
        h.success(&server());
        assert!(
            h.available() && h.available() && !h.is_down(),
            "a successful probe brings it back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_or_a_failed_probe_marks_down_at_once() {
        let h = health(5);
        h.failure(
            &server(),
            true,
            &StoreErrorKind::Timeout(Duration::from_millis(1)),
        );
        assert!(h.is_down());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(h.available());
        h.failure(&server(), false, &refused());
        assert!(h.is_down(), "the probe failed: down for another interval");
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(!h.available());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(h.available());
    }
}
