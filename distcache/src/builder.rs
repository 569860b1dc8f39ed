//! [`CacheBuilder`]: every setting checked at `build()`, which connects to nothing (it reads a
//! TLS CA file, or the system's root certificates, when TLS is on).

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::codec::{DEFAULT_ITEM_BYTES, DEFAULT_MAX_VALUE_BYTES};
use crate::core::{
    Config, Core, OnUnavailable, duration_in_range, error_backoff_in_range, refresh_ahead_in_range,
};
use crate::key::KeyEncoder;
use crate::store::AnyStore;
use crate::store::memcached::ring::Ring;
use crate::store::memcached::tls::TlsSource;
use crate::store::memcached::{Cluster, Credentials, NodeConfig, Server, Signer};
use crate::store::memory::{MemoryLimits, MemoryStore};
use crate::{BuildError, Cache};

impl Cache {
    /// Starts configuring a cache. With no servers, it keeps values in this process.
    ///
    /// ```
    /// let cache = distcache::Cache::builder().namespace("myapp").build()?;
    /// # Ok::<(), distcache::BuildError>(())
    /// ```
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }
}

/// The largest `max_value_bytes`: memcached's own ceiling for its item size (`-I`) is 1 GiB.
const MAX_VALUE_BYTES_CEILING: usize = 1024 * 1024 * 1024;

/// The range of `in_process_max_entries`: the store's 16 shards get at least one entry each; a
/// billion entries of even a few bytes are hundreds of GB.
const IN_PROCESS_ENTRIES: std::ops::RangeInclusive<usize> = 16..=1_000_000_000;

/// The range of `in_process_max_bytes`: from 4 KiB for each of the store's 16 shards to 1 TiB.
const IN_PROCESS_BYTES: std::ops::RangeInclusive<u64> = 64 * 1024..=1 << 40;

/// The range of `near_max_entries`.
const NEAR_ENTRIES: std::ops::RangeInclusive<usize> = 1..=1_000_000_000;

/// The range of `near_max_bytes`: 64 KiB to 1 TiB.
const NEAR_BYTES: std::ops::RangeInclusive<u64> = 64 * 1024..=1 << 40;

/// Configures a [`Cache`]. Nothing is checked or connected until [`build`](CacheBuilder::build).
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct CacheBuilder {
    servers: Vec<String>,
    connect_timeout: Duration,
    io_timeout: Duration,
    retry_interval: Duration,
    failure_threshold: u32,
    connections_per_server: usize,
    namespace: String,
    max_value_bytes: usize,
    item_bytes: usize,
    on_unavailable: OnUnavailable,
    max_poll_interval: Duration,
    refresh_ahead: f64,
    error_backoff: Option<Duration>,
    stale_if_error: Duration,
    soft_timeout: Option<Duration>,
    near_ttl: Duration,
    near_max_entries: usize,
    near_max_bytes: u64,
    /// Checked when given; `Debug` shows no password.
    credentials: Option<Result<Credentials, String>>,
    /// Where TLS's roots come from, resolved by `build`; `None`: plain TCP.
    tls: Option<TlsSource>,
    /// Checked when given; `Debug` shows no key.
    signing: Option<Result<Signer, String>>,
    in_process: MemoryLimits,
}

impl Default for CacheBuilder {
    fn default() -> Self {
        CacheBuilder {
            servers: Vec::new(),
            connect_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_millis(500),
            retry_interval: Duration::from_secs(2),
            failure_threshold: 2,
            connections_per_server: 1,
            namespace: String::new(),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            item_bytes: DEFAULT_ITEM_BYTES,
            on_unavailable: OnUnavailable::default(),
            max_poll_interval: Duration::from_millis(200),
            refresh_ahead: 0.0,
            error_backoff: None,
            stale_if_error: Duration::ZERO,
            soft_timeout: None,
            near_ttl: Duration::ZERO,
            near_max_entries: 10_000,
            near_max_bytes: 32 << 20,
            credentials: None,
            tls: None,
            signing: None,
            in_process: MemoryLimits::default(),
        }
    }
}

impl CacheBuilder {
    /// Adds a memcached server: `host:port`, `host:port:weight`, `host` (port 11211) or
    /// `[v6-address]:port[:weight]`; checked at `build()`. With no servers, the cache keeps its
    /// values in this process. A key's server is chosen by libmemcached-compatible weighted
    /// ketama over the servers in the order given.
    pub fn server(mut self, server: impl AsRef<str>) -> Self {
        self.servers.push(server.as_ref().to_owned());
        self
    }

    /// Adds several servers, as [`server`](Self::server) does.
    pub fn servers<S: AsRef<str>>(mut self, servers: impl IntoIterator<Item = S>) -> Self {
        self.servers
            .extend(servers.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }

    /// How long connecting to a server (DNS included) may take. Default: 1 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a server may take to answer one request. A timeout marks the server down.
    /// Default: 500 ms.
    pub fn io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// How long a server marked down is left alone before one request probes it; meanwhile its
    /// keys go to the next server on the ring. Default: 2 s.
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// How many consecutive failed requests mark a server down (a timeout does at once).
    /// Default: 2.
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures;
        self
    }

    /// How many connections to open to each server; requests take them in turn. Each carries
    /// any number of requests at once (pipelined, written together), so one usually suffices:
    /// fewer connections make bigger batches, fewer system calls here and in memcached. More
    /// spread one process's load over more of memcached's threads. Default: 1.
    pub fn connections_per_server(mut self, connections: usize) -> Self {
        self.connections_per_server = connections;
        self
    }

    /// A prefix for every key (`namespace:key`), to share a memcached cluster between
    /// applications or to retire every key at once by changing it. ASCII letters, digits, `_`,
    /// `-` and `.`, at most 64 bytes. Default: none.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The largest value stored, in bytes of JSON: a larger one is returned to its caller and
    /// not stored. It also bounds what a reader decompresses and puts together: an item or a
    /// manifest that declares more is a miss, and nothing of its declared size is allocated.
    /// Values of 16 KiB of JSON or more are stored compressed (zstd), and values still over
    /// [`item_bytes`](Self::item_bytes) in chunks of it, under a manifest (README, "Big
    /// values"). Between 1 byte and 1 GiB; default: 16 MiB.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// The largest item, in bytes as stored (compressed, if the value is): it should match the
    /// servers' item size, memcached's `-I`. A value over it is stored in chunks of it; an item
    /// read larger is skipped unread (a miss), so no server can make a connection hold more.
    /// Default: 1 MiB less 512 bytes, what memcached accepts with its default `-I 1m` whatever
    /// the key (set it 512 bytes under `-I`). Between 1 KiB and 1 GiB.
    pub fn item_bytes(mut self, bytes: usize) -> Self {
        self.item_bytes = bytes;
        self
    }

    /// What a call does when the store cannot be reached. Default: [`OnUnavailable::RunGetter`].
    pub fn on_unavailable(mut self, policy: OnUnavailable) -> Self {
        self.on_unavailable = policy;
        self
    }

    /// The longest a caller waiting for another process's value sleeps between two looks at
    /// the store; it bounds how late a waiter may notice the value. Between 1 ms and 60 s.
    /// Default: 200 ms.
    pub fn max_poll_interval(mut self, interval: Duration) -> Self {
        self.max_poll_interval = interval;
        self
    }

    /// Refreshes values ahead of their expiry: a call that finds a value with less than
    /// `fraction` of its `expire` left to live, and is the first to, runs the getter, stores the
    /// new value and returns it; every other caller, in any process, keeps reading the current
    /// value meanwhile. A key that is read all the time then never expires under its readers, and
    /// none of them waits for its getter, as long as the getter finishes within the window: choose
    /// `fraction * expire` well above its run time (plus a second on memcached); a slower refresh
    /// lets the value expire, and its own value is then returned but not stored. The price: for
    /// such keys the getter runs at most about once per `(1 - fraction) * expire` instead of once
    /// per `expire`, by one caller, which waits for it as on a miss. If that getter fails, panics
    /// or runs out of time, its caller gets the value it found (the failure is counted and
    /// logged, not returned), which is left in the store to expire as usual; it may have expired
    /// by then, if the getter ran past it. Keys nobody reads near their end expire as usual.
    ///
    /// memcached counts lifetimes in whole seconds: the window is rounded down to them, so a
    /// window under a second (`expire` under `1 / fraction` seconds) refreshes nothing on
    /// memcached, and windows are capped at 30 days. Between 0 and 1 (exclusive); default: 0, off.
    ///
    /// ```
    /// // Values of a 60 s expire are refreshed by the first call in their last 6 s.
    /// let cache = distcache::Cache::builder().refresh_ahead(0.1).build()?;
    /// # Ok::<(), distcache::BuildError>(())
    /// ```
    pub fn refresh_ahead(mut self, fraction: f64) -> Self {
        self.refresh_ahead = fraction;
        self
    }

    /// After a getter fails (an error, a panic, or `exec_limit`), its key's callers in every
    /// process get [`Error::Backoff`](crate::Error::Backoff) for `backoff`, instead of each running
    /// the getter in turn against an origin that is down; then one caller tries again. The
    /// caller whose getter failed gets the getter's own error. Off by default; between 1 ms and
    /// one day. Per call: [`GetOptions::error_backoff`](crate::GetOptions::error_backoff); per
    /// function: `#[distcached(error_backoff = "1s")]`; for the default cache:
    /// `DISTCACHE_ERROR_BACKOFF` (`"1s"`, `"500ms"`).
    ///
    /// In the store this is a small item under the key (flags `DCB1`) holding when the backoff
    /// ends, as Unix milliseconds: processes on machines whose clocks differ by `d` back off `d`
    /// more or less.
    ///
    /// ```
    /// let cache = distcache::Cache::builder()
    ///     .error_backoff(std::time::Duration::from_secs(1))
    ///     .build()?;
    /// # Ok::<(), distcache::BuildError>(())
    /// ```
    pub fn error_backoff(mut self, backoff: Duration) -> Self {
        self.error_backoff = Some(backoff);
        self
    }

    /// Keeps each value `max_stale` past its `expire` (RFC 5861's `stale-if-error`; FusionCache's
    /// fail-safe). Past `expire`, one caller fleet-wide recomputes the value while every other
    /// caller gets the stale one at once; if the recompute fails (an error, a panic, or
    /// `exec_limit`), its caller gets the stale value too, counted in
    /// [`Stats::stale_served`](crate::Stats::stale_served) and logged at warn with the getter's
    /// error, and nobody recomputes the key for `error_backoff`, or, when that is not set, for
    /// the value's `expire`, at most 30 s. A value is never served past `expire` + `max_stale`,
    /// nor after [`invalidate`](crate::Cache::invalidate). Off by default; between 1 ms and 365
    /// days. Per call: [`GetOptions::stale_if_error`](crate::GetOptions::stale_if_error); per
    /// function: `#[distcached(stale_if_error = "1h")]`; for the default cache:
    /// `DISTCACHE_STALE_IF_ERROR` (`"1h"`, `"30m"`).
    ///
    /// Values written with it carry their freshness (README, "The item format"): a process of a
    /// distcache version before it takes them as foreign and recomputes them.
    ///
    /// ```
    /// let cache = distcache::Cache::builder()
    ///     .stale_if_error(std::time::Duration::from_secs(3600))
    ///     .build()?;
    /// # Ok::<(), distcache::BuildError>(())
    /// ```
    pub fn stale_if_error(mut self, max_stale: Duration) -> Self {
        self.stale_if_error = max_stale;
        self
    }

    /// The [soft timeout](crate::GetOptions::soft_timeout) of the calls whose getter may finish
    /// in the background: [`Cache::get_detached`](crate::Cache::get_detached) without one of its
    /// own. Other calls (`get`, `get_with`, `#[distcached]` functions without `soft_timeout`)
    /// cannot leave their getter behind, and wait for it. Off by default; between 1 ms and 365
    /// days. For the default cache: `DISTCACHE_SOFT_TIMEOUT` (`"100ms"`).
    pub fn soft_timeout(mut self, soft_timeout: Duration) -> Self {
        self.soft_timeout = Some(soft_timeout);
        self
    }

    /// Keeps values in this process for `near_ttl` after the store read that brought them was
    /// sent (or their write), and serves them from there, decoded, without asking the store: the
    /// near cache, for the keys read most. It applies to the calls that keep values, where they
    /// set no `near_ttl` of their own: [`Cache::get_near`](crate::Cache::get_near), and
    /// `#[distcached(near_ttl = "cache")]` functions. `get`, `get_with`, `get_detached` and
    /// functions without `near_ttl` never keep values (their value need not be `Clone`).
    ///
    /// **The staleness bound.** A value is served from here at most `near_ttl` after the read
    /// that brought it was sent (the reading call's `near_ttl`, and no longer than the keeping
    /// call's), and never past its own expiry, or freshness, in the store (nor into its
    /// [refresh-ahead](Self::refresh_ahead) window, so that the value is still refreshed ahead).
    /// So another process's new value, or its [`invalidate`](crate::Cache::invalidate), reaches
    /// this process's callers up to `near_ttl` late. This process's own `invalidate` removes its copy
    /// at once. Near hits are counted in [`Stats::near_hits`](crate::Stats::near_hits), not in
    /// `hits`.
    ///
    /// Off by default (zero). Between 1 ms and 365 days. Per call:
    /// [`GetOptions::near_ttl`](crate::GetOptions::near_ttl); per function:
    /// `#[distcached(near_ttl = "1s")]`; for the default cache: `DISTCACHE_NEAR_TTL`. Bounded by
    /// [`near_max_entries`](Self::near_max_entries) and [`near_max_bytes`](Self::near_max_bytes).
    ///
    /// ```
    /// let cache = distcache::Cache::builder()
    ///     .near_ttl(std::time::Duration::from_secs(1))
    ///     .build()?;
    /// # Ok::<(), distcache::BuildError>(())
    /// ```
    pub fn near_ttl(mut self, near_ttl: Duration) -> Self {
        self.near_ttl = near_ttl;
        self
    }

    /// The most values the near cache keeps; past it, or past
    /// [`near_max_bytes`](Self::near_max_bytes), it evicts those least likely to be read again
    /// (quick_cache's CLOCK-Pro). Between 1 and 10⁹; default: 10,000.
    pub fn near_max_entries(mut self, entries: usize) -> Self {
        self.near_max_entries = entries;
        self
    }

    /// The most bytes the near cache keeps, counting each value as its JSON size (its decoded
    /// form may take more or less), its key, and about 100 bytes per entry; each entry counts
    /// for at least `near_max_bytes / near_max_entries`, which keeps both limits with one
    /// budget. The map has up to 16 shards that each get their share of the bytes: a value over
    /// about a sixteenth of them is returned but not kept. Between 64 KiB and 1 TiB; default: 32 MiB.
    pub fn near_max_bytes(mut self, bytes: u64) -> Self {
        self.near_max_bytes = bytes;
        self
    }

    /// Logs in to servers that ask for it (`memcached -Y authfile`, whose lines are
    /// `username:password`; printable ASCII, without spaces), on each new connection, before any
    /// request. A server that does not
    /// ask is never sent them. A refused login fails the connection with an error that names the
    /// server and says "authentication"; the server is marked down at once and tried again once
    /// per `retry_interval` (each time logged), and calls run their getter meanwhile, or fail
    /// with [`Error::Unavailable`](crate::Error::Unavailable) under `OnUnavailable::Fail`. The
    /// password appears in no `Debug` output, log or error. For the default cache:
    /// `DISTCACHE_USERNAME` and `DISTCACHE_PASSWORD`.
    ///
    /// memcached has no permissions per key: whoever has the password may read, write and delete
    /// every key. Without TLS the password crosses the network in clear (a warning says so when
    /// the cache is built), and anyone who can pose as a server can ask for it.
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::new(username.into(), password.into()));
        self
    }

    /// Connects to the servers over TLS (`memcached -Z`), checking their certificates against the
    /// system's root certificates, as managed services with public CAs need. The name checked is
    /// each server's host as configured, an IP address included. With the `tls` feature; for the
    /// default cache: `DISTCACHE_TLS=1`. A server that does not speak TLS, a certificate from an
    /// unknown authority, for another name or expired: each fails its connections with an error
    /// that says which, and the server is marked down at once (calls run their getter, or fail
    /// with `OnUnavailable::Fail`).
    ///
    /// rustls with its ring provider: it builds faster than aws-lc-rs and needs no C toolchain
    /// beyond a C compiler. The pipelined connection keeps its batching over TLS.
    #[cfg(feature = "tls")]
    pub fn tls(mut self) -> Self {
        self.tls = Some(TlsSource::System);
        self
    }

    /// TLS, as [`tls`](Self::tls), with the certificate authorities of a PEM file (one or more)
    /// instead of the system's: for servers with certificates of your own CA. The file is read by
    /// [`build`](Self::build). For the default cache: `DISTCACHE_TLS_CA_FILE`.
    #[cfg(feature = "tls")]
    pub fn tls_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls = Some(TlsSource::CaFile(path.into()));
        self
    }

    /// TLS with a `rustls` client configuration of your own: client certificates (mutual TLS),
    /// custom verification. [`rustls`](crate::rustls) is re-exported, so that its version is the
    /// one distcache is built with.
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: Arc<crate::rustls::ClientConfig>) -> Self {
        self.tls = Some(TlsSource::Config(config));
        self
    }

    /// Signs every item this cache writes to memcached with HMAC-SHA256, and never returns one
    /// read without a valid signature: anyone who can reach a server can write to it, and a
    /// planted value (of the right type, under the right key) would otherwise be decoded,
    /// trusted and returned. Such an item is a miss: counted in
    /// [`Stats::forged_values`](crate::Stats::forged_values), logged, recomputed and replaced.
    ///
    /// The first key signs; every key verifies, so keys rotate without a flag day: give every
    /// process `[old, new]`, then `[new, old]`, then `[new]`. Each key is at least 32 bytes
    /// (a [`BuildError`] otherwise); use random bytes. For the default cache:
    /// `DISTCACHE_SIGNING_KEYS`, keys separated by commas, each its UTF-8 bytes.
    ///
    /// It does not stop replay: whoever can write to memcached can put back an older genuine
    /// value of the same key, with a TTL of their choosing (the TTL is not signed). Nor does it
    /// hide values: that is TLS's part, on the wire. Turning it on, or off, is a flag day for a
    /// key space: processes that differ take each other's items as forged, or as foreign, and
    /// recompute them. The in-process store, which no other process can write, is not signed.
    pub fn signing_keys<K: AsRef<[u8]>>(mut self, keys: impl IntoIterator<Item = K>) -> Self {
        let keys: Vec<Vec<u8>> = keys.into_iter().map(|k| k.as_ref().to_vec()).collect();
        self.signing = Some(Signer::new(&keys));
        self
    }

    /// TLS as the environment asks (`DISTCACHE_TLS`, `DISTCACHE_TLS_CA_FILE`): without the
    /// `tls` feature, a build error that says so.
    pub(crate) fn tls_from_env(mut self, ca_file: Option<String>) -> Self {
        #[cfg(feature = "tls")]
        {
            self.tls = Some(match ca_file {
                Some(path) => TlsSource::CaFile(path.into()),
                None => TlsSource::System,
            });
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = ca_file;
            self.tls = Some(TlsSource::Unavailable);
        }
        self
    }

    /// The most entries (values, and keys being computed) the in-process store keeps; past it, or
    /// past [`in_process_max_bytes`](Self::in_process_max_bytes), it evicts the values least
    /// likely to be read again, expired ones first. Only the in-process store (no servers) uses
    /// it; a memcached server has its own memory limit (`-m`). Between 16 and 10⁹; default:
    /// 100,000.
    pub fn in_process_max_entries(mut self, entries: usize) -> Self {
        self.in_process.max_entries = entries;
        self
    }

    /// The most bytes the in-process store keeps: keys, values, and about 200 bytes of
    /// bookkeeping per entry. Each entry counts for at least `in_process_max_bytes /
    /// in_process_max_entries` (about 670 bytes with the defaults), which keeps both limits
    /// with one budget. The store is split in 16 shards that each get a sixteenth of the bytes:
    /// a value larger than that share is returned to its caller but not kept. Only the
    /// in-process store (no servers) uses it; a memcached server has its own limit (`-m`,
    /// 64 MiB by default).
    /// Between 64 KiB and 1 TiB; default: 64 MiB.
    pub fn in_process_max_bytes(mut self, bytes: usize) -> Self {
        self.in_process.max_bytes = bytes;
        self
    }

    /// Checks the settings and builds the cache. Synchronous, and connects to nothing; with TLS,
    /// it reads the CA file, or the system's root certificates.
    ///
    /// ```
    /// use distcache::{BuildError, Cache};
    ///
    /// let err = Cache::builder().namespace("no spaces").build().unwrap_err();
    /// assert!(matches!(err, BuildError::InvalidNamespace { .. }));
    /// ```
    pub fn build(self) -> Result<Cache, BuildError> {
        let keys = KeyEncoder::new(&self.namespace)?;
        // An item of under 1 KiB could not hold distcache's own markers.
        for (setting, bytes, least) in [
            ("max_value_bytes", self.max_value_bytes, 1),
            ("item_bytes", self.item_bytes, 1024),
        ] {
            if !(least..=MAX_VALUE_BYTES_CEILING).contains(&bytes) {
                return Err(BuildError::InvalidSetting {
                    setting,
                    reason: format!("{bytes} is not between {least} and {MAX_VALUE_BYTES_CEILING}"),
                });
            }
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(60)).contains(&self.max_poll_interval) {
            return Err(BuildError::InvalidSetting {
                setting: "max_poll_interval",
                reason: format!("{:?} is not between 1ms and 60s", self.max_poll_interval),
            });
        }
        if !refresh_ahead_in_range(self.refresh_ahead) {
            return Err(BuildError::InvalidSetting {
                setting: "refresh_ahead",
                reason: format!("{} is not at least 0 and under 1", self.refresh_ahead),
            });
        }
        if let Some(backoff) = self.error_backoff
            && !error_backoff_in_range(backoff)
        {
            return Err(BuildError::InvalidSetting {
                setting: "error_backoff",
                reason: format!("{backoff:?} is not between 1ms and one day"),
            });
        }
        if !self.stale_if_error.is_zero() && !duration_in_range(self.stale_if_error) {
            return Err(BuildError::InvalidSetting {
                setting: "stale_if_error",
                reason: format!("{:?} is not between 1ms and 365 days", self.stale_if_error),
            });
        }
        if let Some(soft) = self.soft_timeout
            && !duration_in_range(soft)
        {
            return Err(BuildError::InvalidSetting {
                setting: "soft_timeout",
                reason: format!("{soft:?} is not between 1ms and 365 days"),
            });
        }
        if !self.near_ttl.is_zero() && !duration_in_range(self.near_ttl) {
            return Err(BuildError::InvalidSetting {
                setting: "near_ttl",
                reason: format!("{:?} is not between 1ms and 365 days", self.near_ttl),
            });
        }
        if !NEAR_ENTRIES.contains(&self.near_max_entries) {
            return Err(BuildError::InvalidSetting {
                setting: "near_max_entries",
                reason: format!(
                    "{} is not between {} and {}",
                    self.near_max_entries,
                    NEAR_ENTRIES.start(),
                    NEAR_ENTRIES.end()
                ),
            });
        }
        if !NEAR_BYTES.contains(&self.near_max_bytes) {
            return Err(BuildError::InvalidSetting {
                setting: "near_max_bytes",
                reason: format!(
                    "{} is not between {} and {}",
                    self.near_max_bytes,
                    NEAR_BYTES.start(),
                    NEAR_BYTES.end()
                ),
            });
        }
        if let Some(Err(reason)) = &self.signing {
            return Err(BuildError::InvalidSetting {
                setting: "signing_keys",
                reason: reason.clone(),
            });
        }
        if let Some(Err(reason)) = &self.credentials {
            return Err(BuildError::InvalidSetting {
                setting: "credentials",
                reason: reason.clone(),
            });
        }
        // Checked with servers too: a wrong setting is a mistake whichever store is used today.
        if !IN_PROCESS_ENTRIES.contains(&self.in_process.max_entries) {
            return Err(BuildError::InvalidSetting {
                setting: "in_process_max_entries",
                reason: format!(
                    "{} is not between {} and {}",
                    self.in_process.max_entries,
                    IN_PROCESS_ENTRIES.start(),
                    IN_PROCESS_ENTRIES.end()
                ),
            });
        }
        if !IN_PROCESS_BYTES.contains(&(self.in_process.max_bytes as u64)) {
            return Err(BuildError::InvalidSetting {
                setting: "in_process_max_bytes",
                reason: format!(
                    "{} is not between {} and {}",
                    self.in_process.max_bytes,
                    IN_PROCESS_BYTES.start(),
                    IN_PROCESS_BYTES.end()
                ),
            });
        }
        let store = if self.servers.is_empty() {
            AnyStore::Memory(MemoryStore::new(self.in_process))
        } else {
            AnyStore::Memcached(self.cluster()?)
        };
        let core = Core {
            keys,
            flights: Default::default(),
            stats: Default::default(),
            estimates: Default::default(),
            near: Default::default(),
            config: Config {
                max_value_bytes: self.max_value_bytes,
                on_unavailable: self.on_unavailable,
                max_poll_interval: self.max_poll_interval,
                refresh_ahead: self.refresh_ahead,
                error_backoff: self.error_backoff,
                stale_if_error: self.stale_if_error,
                soft_timeout: self.soft_timeout,
                near_ttl: self.near_ttl,
                near_max_entries: self.near_max_entries,
                near_max_bytes: self.near_max_bytes,
            },
        };
        Ok(Cache::from_parts(core, store))
    }

    fn cluster(&self) -> Result<Cluster, BuildError> {
        let servers = self
            .servers
            .iter()
            .map(|s| s.parse::<Server>())
            .collect::<Result<Vec<_>, _>>()?;
        let ring = Ring::new(servers)?;
        let duration = |setting: &'static str, value: Duration, max: Duration| {
            if value.is_zero() || value > max {
                return Err(BuildError::InvalidSetting {
                    setting,
                    reason: format!("{value:?} is not more than zero and at most {max:?}"),
                });
            }
            Ok(value)
        };
        if self.credentials.is_some() && self.tls.is_none() {
            warn!("distcache: credentials without TLS: the password crosses the network in clear");
        }
        // A value over an item is stored in chunks of `item_bytes`, and read in one round of
        // one request per chunk: a bound on that round.
        let most = self.max_value_bytes + crate::codec::FRESHNESS_BYTES;
        let chunks = crate::store::memcached::chunks::MAX_CHUNKS as usize;
        if (most - crate::store::memcached::chunks::HEAD_BYTES).div_ceil(self.item_bytes) > chunks {
            return Err(BuildError::InvalidSetting {
                setting: "max_value_bytes",
                reason: format!(
                    "{} would take over {chunks} chunks of item_bytes ({}): raise item_bytes or \
                     lower max_value_bytes",
                    self.max_value_bytes, self.item_bytes
                ),
            });
        }
        let minute = Duration::from_secs(60);
        let config = NodeConfig {
            connect_timeout: duration("connect_timeout", self.connect_timeout, minute)?,
            io_timeout: duration("io_timeout", self.io_timeout, minute)?,
            retry_interval: duration(
                "retry_interval",
                self.retry_interval,
                Duration::from_secs(3600),
            )?,
            failure_threshold: match self.failure_threshold {
                0 => {
                    return Err(BuildError::InvalidSetting {
                        setting: "failure_threshold",
                        reason: "at least one failure must mark a server down".into(),
                    });
                }
                n => n,
            },
            connections: match self.connections_per_server {
                n @ 1..=64 => n,
                n => {
                    return Err(BuildError::InvalidSetting {
                        setting: "connections_per_server",
                        reason: format!("{n} is not between 1 and 64"),
                    });
                }
            },
            // An item holds up to `item_bytes` of a value and what distcache adds to it: a
            // freshness header (`stale_if_error`) and a signature.
            // No item is larger than the value it holds, or a chunk of it; nor than 1 KiB, for
            // distcache's own markers (the least `item_bytes`).
            max_value: self
                .item_bytes
                .min(self.max_value_bytes.max(1024) + crate::codec::FRESHNESS_BYTES)
                + crate::store::memcached::signing::TAG_BYTES,
            // A value over an item is stored in chunks, each a whole item.
            chunk_bytes: self.item_bytes,
            max_assembled: self.max_value_bytes + crate::codec::FRESHNESS_BYTES,
            greet: true,
            // Checked by `build`.
            credentials: self
                .credentials
                .as_ref()
                .and_then(|given| given.as_ref().ok())
                .map(|credentials| Arc::new(credentials.clone())),
            signer: self
                .signing
                .as_ref()
                .and_then(|given| given.as_ref().ok())
                .cloned(),
            tls: match &self.tls {
                None => None,
                Some(source) => {
                    let settings =
                        source
                            .settings()
                            .map_err(|reason| BuildError::InvalidSetting {
                                setting: "tls",
                                reason,
                            })?;
                    for server in ring.servers() {
                        if let Err(reason) = settings.for_host(server.host()) {
                            return Err(BuildError::InvalidSetting {
                                setting: "tls",
                                reason,
                            });
                        }
                    }
                    Some(settings)
                }
            },
        };
        Ok(Cluster::new(ring, &config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(builder: CacheBuilder) -> &'static str {
        match builder.build() {
            Err(BuildError::InvalidSetting { setting, .. }) => setting,
            Err(other) => panic!("expected an invalid setting, got {other}"),
            Ok(_) => panic!("expected an invalid setting, got a cache"),
        }
    }

    #[test]
    fn in_process_limits_out_of_range_are_refused() {
        for entries in [0, 15, 1_000_000_001] {
            assert_eq!(
                refused(Cache::builder().in_process_max_entries(entries)),
                "in_process_max_entries",
                "{entries}"
            );
        }
        for bytes in [0, 64 * 1024 - 1] {
            assert_eq!(
                refused(Cache::builder().in_process_max_bytes(bytes)),
                "in_process_max_bytes",
                "{bytes}"
            );
        }
        // Refused with servers too, where they are not used (yet).
        assert_eq!(
            refused(
                Cache::builder()
                    .server("127.0.0.1:11211")
                    .in_process_max_entries(0)
            ),
            "in_process_max_entries"
        );
        Cache::builder()
            .in_process_max_entries(16)
            .in_process_max_bytes(64 * 1024)
            .build()
            .unwrap();
    }

    /// A value is read in one round of one request per chunk: at most 1,024 of them.
    #[test]
    fn a_largest_value_over_a_thousand_items_is_refused() {
        let servers = || Cache::builder().server("127.0.0.1:11211");
        // Over 16 MiB in chunks of 16 KiB: 1,025 of them.
        assert_eq!(
            refused(
                servers()
                    .item_bytes(16 * 1024)
                    .max_value_bytes(16 * 1024 * 1024 + 1)
            ),
            "max_value_bytes"
        );
        // 16 MiB and a freshness header, less the 24 bytes the manifest holds: 1,024.
        servers()
            .item_bytes(16 * 1024)
            .max_value_bytes(16 * 1024 * 1024)
            .build()
            .unwrap();
        servers().build().unwrap();
        // The in-process store keeps values whole.
        Cache::builder().item_bytes(16 * 1024).build().unwrap();
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn in_process_bytes_over_a_tebibyte_are_refused() {
        let bytes = usize::try_from((1u64 << 40) + 1).unwrap();
        assert_eq!(
            refused(Cache::builder().in_process_max_bytes(bytes)),
            "in_process_max_bytes"
        );
    }

    #[tokio::test]
    async fn the_in_process_store_keeps_within_the_configured_limits() {
        let (max_entries, max_bytes) = (160, 64 * 1024);
        let cache = Cache::builder()
            .in_process_max_entries(max_entries)
            .in_process_max_bytes(max_bytes)
            .build()
            .unwrap();
        let limit = Duration::from_secs(60);
        for i in 0..10 * max_entries {
            let value: u64 = cache
                .get(&format!("k{i}"), limit, limit, || async {
                    Ok::<_, crate::Error>(i as u64)
                })
                .await
                .unwrap();
            assert_eq!(value, i as u64);
        }
        let (entries, bytes) = cache.in_process_usage().unwrap();
        assert!(entries <= max_entries, "{entries} entries");
        assert!(bytes <= max_bytes as u64, "{bytes} bytes");
    }
}
