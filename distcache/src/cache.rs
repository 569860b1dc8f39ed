//! [`Cache`]: the public face of the locked get.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::core::{Core, Tasks};
use crate::error::Error;
use crate::flight::{self, Detachable, Getter, WithNear};
use crate::near::Keep;
use crate::options::GetOptions;
use crate::schedule::{Site, site_of};
use crate::stats::Stats;
use crate::store::memcached::NodeStats;
use crate::store::memcached::Server;
use crate::store::{AnyStore, Store, StoreErrorKind};

/// A handle to a distributed memoization cache. Cheap to clone: clones share the store, the
/// in-process coalescing and the counters.
///
/// Build one with [`Cache::builder`]; call [`Cache::get`] (or a `#[distcached]` function).
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    /// Shared with the recomputes left to finish in the background.
    core: Arc<Core>,
    store: AnyStore,
    /// Those recomputes: aborted when the last handle goes, with this.
    tasks: Tasks,
}

impl Cache {
    #[cfg(test)]
    pub(crate) fn refresh_ahead(&self) -> f64 {
        self.inner.core.config.refresh_ahead
    }

    #[cfg(test)]
    pub(crate) fn error_backoff(&self) -> Option<Duration> {
        self.inner.core.config.error_backoff
    }

    #[cfg(test)]
    pub(crate) fn stale_if_error(&self) -> Duration {
        self.inner.core.config.stale_if_error
    }

    #[cfg(test)]
    pub(crate) fn soft_timeout(&self) -> Option<Duration> {
        self.inner.core.config.soft_timeout
    }

    #[cfg(test)]
    pub(crate) fn near_ttl(&self) -> Duration {
        self.inner.core.config.near_ttl
    }

    /// The in-process store's entries and bytes now; `None` on memcached.
    #[cfg(test)]
    pub(crate) fn in_process_usage(&self) -> Option<(usize, u64)> {
        match &self.inner.store {
            AnyStore::Memory(store) => Some(store.usage()),
            AnyStore::Memcached(_) => None,
        }
    }

    pub(crate) fn from_parts(core: Core, store: AnyStore) -> Self {
        let core = Arc::new(core);
        Cache {
            inner: Arc::new(Inner {
                tasks: Tasks::new(Arc::clone(&core)),
                core,
                store,
            }),
        }
    }

    /// Returns `key`'s value: the stored one, or the one `getter` computes, which is then stored
    /// for `expire`. The getter runs once per key per `expire` window across every caller that
    /// shares the store; every other caller waits for its value and returns it.
    ///
    /// - **Bounded.** The call returns within `exec_limit`, waiting and computing included, plus
    ///   at most one store operation (storing a value computed just in time, or handing the lease
    ///   back). A getter still running at the limit is dropped and the call fails with [`Error::Timeout`]; the next call may run the
    ///   getter at once. A getter that blocks its thread instead of awaiting cannot be cut off:
    ///   run CPU-bound work in [`tokio::task::spawn_blocking`].
    /// - **Failures.** The getter's own error reaches its own caller unchanged; callers waiting
    ///   on it try again, and one of them runs the getter next. A panic in the getter is caught
    ///   and becomes [`Error::GetterPanicked`]. A refresh ahead (below) is the exception: its
    ///   caller gets the current value instead of the getter's error, panic or timeout.
    /// - **Values.** Stored as JSON. A value that cannot be stored (over the size limit, not
    ///   serializable) is still returned to its caller, and counted. Stored bytes that do not
    ///   decode as `T` are a miss: the value is recomputed.
    /// - **Refresh ahead.** With [`CacheBuilder::refresh_ahead`](crate::CacheBuilder::refresh_ahead), the first call to find a value
    ///   near its end runs the getter and returns its result while the other callers keep reading
    ///   the current value; such a key's getter then runs somewhat more often than once per
    ///   `expire`.
    ///
    /// A zero `exec_limit` or `expire`, or one over 365 days, is refused with
    /// [`Error::InvalidArgument`].
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), distcache::Error> {
    /// let cache = distcache::Cache::builder().build().unwrap();
    /// let price: u64 = cache
    ///     .get("price:42", Duration::from_secs(5), Duration::from_secs(60), || async {
    ///         // An expensive query, run once per minute across the fleet.
    ///         Ok::<_, distcache::Error>(1999)
    ///     })
    ///     .await?;
    /// assert_eq!(price, 1999);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Concurrent callers share one run of the getter. In this interleaving, task A finds no
    /// value and wins the lease; task B arrives while A's getter runs, and waits; A stores its
    /// value and returns it; B wakes with that same value, and its getter never runs:
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use std::sync::atomic::{AtomicU32, Ordering};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache = distcache::Cache::builder().build().unwrap();
    /// let runs = &AtomicU32::new(0);
    /// let getter = || async move {
    ///     runs.fetch_add(1, Ordering::SeqCst);
    ///     tokio::time::sleep(Duration::from_millis(50)).await;
    ///     Ok::<_, distcache::Error>("report".to_owned())
    /// };
    /// let limit = Duration::from_secs(1);
    /// let (a, b) = tokio::join!(
    ///     cache.get("report", limit, limit, getter),
    ///     cache.get("report", limit, limit, getter),
    /// );
    /// assert_eq!((a.unwrap(), b.unwrap()), ("report".into(), "report".into()));
    /// assert_eq!(runs.load(Ordering::SeqCst), 1);
    /// # }
    /// ```
    pub async fn get<T, E, F, Fut>(
        &self,
        key: &str,
        exec_limit: Duration,
        expire: Duration,
        getter: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error> + std::fmt::Debug,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let options = GetOptions::new(exec_limit, expire);
        self.get_at(site_of::<F>(), key, &options, getter).await
    }

    /// [`Cache::get`] with a call's settings as one value, per-call options included, which
    /// take precedence over the cache's own.
    ///
    /// ```
    /// use std::time::Duration;
    /// use distcache::GetOptions;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), distcache::Error> {
    /// let cache = distcache::Cache::builder().build().unwrap();
    /// let options = GetOptions::new(Duration::from_secs(5), Duration::from_secs(60)).refresh_ahead(0.2);
    /// let price: u64 = cache
    ///     .get_with("price:42", &options, || async { Ok::<_, distcache::Error>(1999) })
    ///     .await?;
    /// assert_eq!(price, 1999);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_with<T, E, F, Fut>(
        &self,
        key: &str,
        options: &GetOptions,
        getter: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error> + std::fmt::Debug,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.get_at(site_of::<F>(), key, options, getter).await
    }

    /// [`Cache::get_with`], keeping the value in this process (the near cache) for the
    /// options' [`near_ttl`](GetOptions::near_ttl), or the cache's
    /// ([`CacheBuilder::near_ttl`](crate::CacheBuilder::near_ttl)): a call within it returns a
    /// clone of the kept value, without asking the store or decoding JSON. For the keys read
    /// most, whose reads would all land on one memcached server.
    ///
    /// **The staleness bound.** A value is served from this process at most `near_ttl` after
    /// the store read that brought it was sent (or after its write), and never past its own
    /// expiry in the store: another process's new value, or its `invalidate`, reaches this
    /// process's callers up to `near_ttl` late. This process's own
    /// [`invalidate`](Cache::invalidate) removes its copy at once. With neither `near_ttl` set,
    /// this is [`Cache::get_with`].
    ///
    /// The value is cloned out on each call: wrap a large one in an [`Arc`] to make that a
    /// reference count.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use distcache::GetOptions;
    ///
    /// static PRICES: GetOptions = GetOptions::new(Duration::from_secs(5), Duration::from_secs(60))
    ///     .near_ttl(Duration::from_secs(1));
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), distcache::Error> {
    /// let cache = distcache::Cache::builder().build().unwrap();
    /// let prices: Arc<Vec<u64>> = cache
    ///     .get_near("prices", &PRICES, || async { Ok::<_, distcache::Error>(Arc::new(vec![1999, 2999])) })
    ///     .await?;
    /// // Within a second, without the store: the kept `Arc` (the value as the store holds it).
    /// let again: Arc<Vec<u64>> = cache
    ///     .get_near("prices", &PRICES, || async { unreachable!() })
    ///     .await?;
    /// let and_again: Arc<Vec<u64>> = cache
    ///     .get_near("prices", &PRICES, || async { unreachable!() })
    ///     .await?;
    /// assert_eq!(prices, again);
    /// assert!(Arc::ptr_eq(&again, &and_again));
    /// assert_eq!(cache.stats().near_hits, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_near<T, E, F, Fut>(
        &self,
        key: &str,
        options: &GetOptions,
        getter: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: From<Error> + std::fmt::Debug,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let keep = Keep::new();
        if let Some(value) = self.near_hit(key, options, Some(keep)) {
            return Ok(value);
        }
        let getter = WithNear(getter, keep);
        self.get_at(site_of::<F>(), key, options, getter).await
    }

    /// [`Cache::get_with`] for a getter that may outlive the call, so that options with a
    /// [`soft_timeout`](GetOptions::soft_timeout) apply: a call that recomputes a value it has
    /// (stale, or refreshed ahead, with `stale_if_error` on) returns that value once the getter
    /// has run `soft_timeout`,
    /// and the getter finishes in a task of its own, bounded by `exec_limit`, storing its result.
    /// The task survives the call's cancellation, not the cache: when the last handle to the
    /// cache is dropped, it is aborted. Without a value to return, the call waits for the getter
    /// as [`Cache::get_with`] does. The getter and its value must be `Send + 'static`: it cannot
    /// borrow from the caller (clone an `Arc` or a pool handle into it). A getter that holds a
    /// clone of this `Cache` keeps the cache alive until it ends.
    ///
    /// ```
    /// use std::time::Duration;
    /// use distcache::GetOptions;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), distcache::Error> {
    /// let cache = distcache::Cache::builder().build().unwrap();
    /// let options = GetOptions::new(Duration::from_secs(5), Duration::from_secs(60))
    ///     .stale_if_error(Duration::from_secs(3600))
    ///     .soft_timeout(Duration::from_millis(100));
    /// let id = 42;
    /// let rate: u64 = cache
    ///     .get_detached("rate:42", &options, move || async move {
    ///         Ok::<_, distcache::Error>(id * 3) // a partner API that is sometimes slow
    ///     })
    ///     .await?;
    /// assert_eq!(rate, 126);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_detached<T, E, F, Fut, M>(
        &self,
        key: &str,
        options: &GetOptions<M>,
        getter: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: From<Error> + std::fmt::Debug + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let options = options.erased();
        self.get_at(site_of::<F>(), key, &options, Detachable(getter))
            .await
    }

    /// [`Cache::get_with`] for a getter whose call site is not its own type (the macro's
    /// wrapper).
    pub(crate) async fn get_at<T, E, F>(
        &self,
        site: Site,
        key: &str,
        options: &GetOptions,
        getter: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error> + std::fmt::Debug,
        F: Getter<T, E>,
    {
        let inner = &*self.inner;
        flight::get(
            &inner.core,
            Some(&inner.tasks),
            &inner.store,
            site,
            key,
            options,
            getter,
        )
        .await
    }

    /// `key`'s value from this process's near cache, if the call keeps values and it is there:
    /// looked for before the call's future is built.
    #[inline]
    pub(crate) fn near_hit<T>(
        &self,
        key: &str,
        options: &GetOptions,
        keep: Option<Keep<T>>,
    ) -> Option<T> {
        flight::near_hit(&self.inner.core, key, options, keep)
    }

    /// Runs `getter` without the store, for a call that has no usable key.
    pub(crate) async fn run_uncached<T, E, F>(
        &self,
        site: Site,
        label: &str,
        exec_limit: Duration,
        getter: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: Getter<T, E>,
    {
        let inner = &*self.inner;
        flight::run_uncached(&inner.core, &inner.store, site, label, exec_limit, getter).await
    }

    /// Removes `key`'s value, so that the next call computes it again (once). A getter running
    /// for the key meanwhile still returns its value to its callers, but cannot store it. This
    /// process's near cache drops its copy at once; other processes' copies live out their
    /// `near_ttl` ([`CacheBuilder::near_ttl`](crate::CacheBuilder::near_ttl)).
    ///
    /// # Errors
    ///
    /// [`Error::Unreached`] when the key's own memcached server is marked down or does not
    /// answer: the value was deleted where the key's calls go meanwhile, and is deleted on its
    /// own server before this process's next request there; another process may read the old
    /// value there until then.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), distcache::Error> {
    /// let cache = distcache::Cache::builder().build().unwrap();
    /// let minute = Duration::from_secs(60);
    /// let v: u32 = cache.get("k", minute, minute, || async { Ok::<_, distcache::Error>(1) }).await?;
    /// cache.invalidate("k").await?;
    /// let v: u32 = cache.get("k", minute, minute, || async { Ok::<_, distcache::Error>(2) }).await?;
    /// assert_eq!(v, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn invalidate(&self, key: &str) -> Result<(), Error> {
        let inner = &*self.inner;
        if let Some(near) = inner.core.near.get() {
            near.invalidate(key);
        }
        let wire = inner.core.keys.encode(key);
        let removed = inner.store.invalidate(&wire).await;
        // Again: a read of this process sent while the store removed the value may have brought
        // the old one back.
        if let Some(near) = inner.core.near.get() {
            near.invalidate(key);
        }
        removed.map_err(|err| {
            inner.core.stats.store_errors.incr();
            let key = key.to_owned();
            match &inner.store {
                // The key's server answered, with an error of its own.
                AnyStore::Memcached(_) if matches!(err.kind, StoreErrorKind::Server(_)) => {
                    Error::Unavailable {
                        key,
                        source: err.into_box(),
                    }
                }
                AnyStore::Memcached(cluster) => Error::Unreached {
                    key,
                    server: cluster.home_server(&wire).clone(),
                    source: err.into_box(),
                },
                AnyStore::Memory(_) => Error::Unavailable {
                    key,
                    source: err.into_box(),
                },
            }
        })
    }

    /// The memcached server `key` goes to now: its own on the ring, or the next one up while its
    /// own is marked down. `None` for the in-process store. No I/O.
    ///
    /// ```
    /// let cache = distcache::Cache::builder()
    ///     .servers(["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"])
    ///     .build()?;
    /// let server = cache.server_for("user:42").expect("a memcached cache");
    /// println!("user:42 lives on {server}");
    /// # Ok::<(), distcache::BuildError>(())
    /// ```
    pub fn server_for(&self, key: &str) -> Option<&Server> {
        let inner = &*self.inner;
        match &inner.store {
            AnyStore::Memory(_) => None,
            AnyStore::Memcached(cluster) => Some(cluster.server_for(&inner.core.keys.encode(key))),
        }
    }

    /// This cache's counters since it was built (shared by its clones).
    pub fn stats(&self) -> Stats {
        self.inner.core.stats.snapshot()
    }

    /// Each memcached server's health: whether it is marked down now, and how many times it was
    /// marked down and brought back. Empty for the in-process store. No I/O.
    ///
    /// ```
    /// let cache = distcache::Cache::builder().server("127.0.0.1:11211").build()?;
    /// let nodes = cache.node_stats();
    /// assert_eq!((nodes.len(), nodes[0].marked_down), (1, 0));
    /// # Ok::<(), distcache::BuildError>(())
    /// ```
    pub fn node_stats(&self) -> Vec<NodeStats> {
        match &self.inner.store {
            AnyStore::Memory(_) => Vec::new(),
            AnyStore::Memcached(cluster) => cluster.node_stats(),
        }
    }
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("store", &self.to_string())
            .field("config", &self.inner.core.config)
            .finish_non_exhaustive()
    }
}

/// Names the store, for logs: `in-process store`, or `memcached host:port,host:port,...`.
impl fmt::Display for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.store {
            AnyStore::Memory(_) => f.write_str("in-process store"),
            AnyStore::Memcached(cluster) => {
                f.write_str("memcached ")?;
                for (i, server) in cluster.servers().iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    write!(f, "{sep}{server}")?;
                }
                Ok(())
            }
        }
    }
}
