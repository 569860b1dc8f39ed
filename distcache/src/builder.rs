//! [`CacheBuilder`]: every setting checked at `build()`, which does no I/O.

use std::time::Duration;

use crate::cache::{AnyStore, Config, Core, OnUnavailable};
use crate::codec::DEFAULT_MAX_VALUE_BYTES;
use crate::key::KeyEncoder;
use crate::store::memory::MemoryStore;
use crate::{BuildError, Cache};

/// The largest `max_value_bytes`: memcached's own ceiling for its item size (`-I`) is 1 GiB.
const MAX_VALUE_BYTES_CEILING: usize = 1024 * 1024 * 1024;

/// Configures a [`Cache`]. Nothing is checked or connected until [`build`](CacheBuilder::build).
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct CacheBuilder {
    namespace: String,
    max_value_bytes: usize,
    on_unavailable: OnUnavailable,
    max_poll_interval: Duration,
}

impl Default for CacheBuilder {
    fn default() -> Self {
        CacheBuilder {
            namespace: String::new(),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            on_unavailable: OnUnavailable::default(),
            max_poll_interval: Duration::from_millis(200),
        }
    }
}

impl CacheBuilder {
    /// A prefix for every key (`namespace:key`), to share a memcached cluster between
    /// applications or to retire every key at once by changing it. ASCII letters, digits, `_`,
    /// `-` and `.`, at most 64 bytes. Default: none.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The largest value stored, in bytes of JSON. A larger value is returned to its caller and
    /// not stored. Default: 1 MiB less 512 bytes, what memcached accepts with its default
    /// item size (`-I 1m`) whatever the key. Raise it only with memcached's `-I`.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
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

    /// Checks the settings and builds the cache. Synchronous, no I/O.
    ///
    /// ```
    /// use distcache::{BuildError, Cache};
    ///
    /// let err = Cache::builder().namespace("no spaces").build().unwrap_err();
    /// assert!(matches!(err, BuildError::InvalidNamespace { .. }));
    /// ```
    pub fn build(self) -> Result<Cache, BuildError> {
        let keys = KeyEncoder::new(&self.namespace)?;
        if !(1..=MAX_VALUE_BYTES_CEILING).contains(&self.max_value_bytes) {
            return Err(BuildError::InvalidSetting {
                setting: "max_value_bytes",
                reason: format!(
                    "{} is not between 1 and {MAX_VALUE_BYTES_CEILING}",
                    self.max_value_bytes
                ),
            });
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(60)).contains(&self.max_poll_interval) {
            return Err(BuildError::InvalidSetting {
                setting: "max_poll_interval",
                reason: format!("{:?} is not between 1ms and 60s", self.max_poll_interval),
            });
        }
        let core = Core {
            keys,
            flights: Default::default(),
            stats: Default::default(),
            estimates: Default::default(),
            config: Config {
                max_value_bytes: self.max_value_bytes,
                on_unavailable: self.on_unavailable,
                max_poll_interval: self.max_poll_interval,
            },
        };
        Ok(Cache::from_parts(
            core,
            AnyStore::Memory(MemoryStore::default()),
        ))
    }
}
