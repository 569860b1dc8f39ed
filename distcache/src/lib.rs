//! Distributed memoization on memcached: an expensive async function runs **once per key per
//! `expire` window across a whole fleet**, and every other caller, in any process, waits for and
//! reads its value.
//!
//! ```
//! use distcache::distcached;
//!
//! #[derive(Debug, thiserror::Error)]
//! enum AppError {
//!     #[error(transparent)]
//!     Cache(#[from] distcache::Error),
//! }
//!
//! /// Runs at most once per user per 10 s across every process sharing the cache.
//! #[distcached(expire = "10s", exec_limit = "1m")]
//! async fn profile(user_id: u64) -> Result<String, AppError> {
//!     Ok(format!("user {user_id}")) // an expensive query
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), AppError> {
//! assert_eq!(profile(42).await?, "user 42");
//! # Ok(())
//! # }
//! ```
//!
//! The same through [`Cache::get`], the "locked get" the attribute expands to:
//!
//! ```
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), distcache::Error> {
//! let cache = distcache::Cache::builder().build().expect("valid configuration");
//! let profile: String = cache
//!     .get("profile:42", Duration::from_secs(60), Duration::from_secs(10), || async {
//!         Ok::<_, distcache::Error>("user 42".to_owned())
//!     })
//!     .await?;
//! # assert_eq!(profile, "user 42");
//! # Ok(())
//! # }
//! ```
//!
//! # The promise
//!
//! - **Once per window.** In normal conditions (the store reachable, the getter succeeding within
//!   `exec_limit`) the getter runs once per key per `expire` window across every caller sharing the
//!   store. Within a process, concurrent callers of a key share one request to the store; across
//!   processes, the store's lease decides who computes. With
//!   [`refresh_ahead`](CacheBuilder::refresh_ahead) (off by default) a key read near the end of its
//!   value is recomputed early, and so somewhat more often.
//! - **Bounded.** A call returns within `exec_limit`, waiting included, plus at most one store
//!   operation (storing a value computed just in time, or handing a lease back). A getter still
//!   running at the limit is dropped, the call fails with [`Error::Timeout`], and the next caller
//!   may compute at once.
//! - **Available.** When the store cannot be reached, the call runs the getter itself (counted,
//!   logged), unless [configured](CacheBuilder::on_unavailable) to fail.
//! - **Typed.** Values are serde types stored as JSON, marked in the item's flags. Bytes that do
//!   not decode as the requested type are a miss and are recomputed; never a panic.
//!
//! Limits: a getter that blocks its thread cannot be cut off at `exec_limit` (run CPU-bound work
//! in [`tokio::task::spawn_blocking`]); values that cannot be stored (over
//! [`max_value_bytes`](CacheBuilder::max_value_bytes), not serializable, or holding what JSON
//! would not give back, such as a NaN) are returned to their caller but recomputed by the next one.
//! Values of 16 KiB of JSON or more are stored compressed, and values over
//! [`item_bytes`](CacheBuilder::item_bytes) in chunks of it.
//!
//! # Where values live
//!
//! On a memcached cluster (memcached 1.6.10 or later): servers placed on a ketama ring exactly as
//! libmemcached places them, each reached through a few pipelined connections, marked down after
//! failures and probed back. The right to compute is memcached's own lease (`mg ... N`), so the
//! promise holds across every process sharing the servers:
//!
//! ```no_run
//! let cache = distcache::Cache::builder()
//!     .servers(["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"])
//!     .build()?;
//! # Ok::<(), distcache::BuildError>(())
//! ```
//!
//! With no servers configured, a [`Cache`] keeps values in this process, with the same semantics:
//! for development, tests and single-process services. The process-wide
//! [default cache](default_cache) used by `#[distcached]` is configured from the environment
//! (`DISTCACHE_SERVERS`, `DISTCACHE_NAMESPACE`, `DISTCACHE_REFRESH_AHEAD`).
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod blocking;
mod build_error;
mod builder;
mod cache;
mod coalesce;
mod codec;
mod core;
pub mod entry;
mod error;
mod flight;
mod global;
mod json;
mod key;
mod near;
mod options;
mod schedule;
mod stats;
mod store;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

/// Entry points for the fuzz targets (`fuzz/`): the parsers and encoders that meet hostile bytes.
/// Not a public API: built only under cargo-fuzz, which sets `--cfg fuzzing`.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod __fuzz {
    use bytes::BytesMut;

    use crate::store::memcached::protocol::{Parser, Reply};

    /// Feeds `data` to a reply parser that keeps values of at most `max_value` bytes, in pieces
    /// of `piece` bytes (at least 1), as a connection would receive them; stops at the first
    /// protocol error. Checks what must hold of every reply; returns how many were parsed.
    pub fn parse_replies(data: &[u8], max_value: usize, piece: usize) -> usize {
        let mut parser = Parser::new(max_value);
        let mut buf = BytesMut::new();
        let mut parsed = 0;
        for chunk in data.chunks(piece.max(1)) {
            buf.extend_from_slice(chunk);
            loop {
                match parser.parse(&mut buf) {
                    Ok(Some(Reply::Meta(meta))) => {
                        assert!(
                            meta.data.len() <= max_value,
                            "a value over the limit was kept"
                        );
                        assert!(meta.data.len() == meta.size || meta.data.is_empty());
                        parsed += 1;
                    }
                    Ok(Some(Reply::Error { .. })) => parsed += 1,
                    Ok(None) => break,
                    Err(_) => return parsed,
                }
            }
        }
        parsed
    }

    /// Decodes an item as the codec would for a caller of `serde_json::Value` and of a typed
    /// struct; whether the typed decode succeeded. Never panics, whatever the bytes.
    pub fn decode_item(flags: u32, data: &[u8]) -> bool {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Typed {
            id: u64,
            name: String,
            tags: Vec<String>,
            score: Option<f64>,
        }
        let _ = crate::codec::decode::<serde_json::Value>(flags, data);
        crate::codec::decode::<Typed>(flags, data).is_ok()
    }

    /// A compressed item (`DZJ1`, or `DZF1` with `fresh`) read with a `max_value` of at most
    /// 1 MiB: its JSON, or why not. Checks that nothing over `max_value` comes back.
    pub fn unpack_item(fresh: bool, data: &[u8], max_value: usize) -> Option<usize> {
        let max_value = max_value % (1 << 20);
        let unpacked = match fresh {
            false => crate::codec::unpack(data, max_value),
            true => crate::codec::unpack_fresh(data, max_value),
        };
        let head = if fresh {
            crate::codec::FRESHNESS_BYTES
        } else {
            0
        };
        let item = unpacked.ok()?;
        assert!(
            item.len() <= head + max_value,
            "more than max_value came back"
        );
        Some(item.len())
    }

    /// A big value's manifest as a reader with these limits takes it: whether it would read its
    /// chunks. Checks that one it takes describes chunks within the limits.
    pub fn read_manifest(data: &[u8], max_total: usize, max_chunk: usize) -> bool {
        use crate::store::memcached::chunks::Manifest;
        let Some(manifest) = Manifest::read(data) else {
            return false;
        };
        if manifest.refused(max_total, max_chunk).is_some() {
            return false;
        }
        assert!(manifest.total as usize <= max_total);
        assert!(manifest.count <= crate::store::memcached::chunks::MAX_CHUNKS);
        let lengths: u64 = (0..manifest.count)
            .map(|index| {
                let len = manifest.chunk_len(index);
                assert!(len > 0 && len <= max_chunk);
                assert!(index + 1 == manifest.count || len >= 1024);
                len as u64
            })
            .sum();
        assert_eq!(
            lengths + 24,
            manifest.total,
            "the chunks hold all but the head"
        );
        true
    }

    /// The wire key of `key` under `namespace` (if the namespace is valid); checks that it is a
    /// valid memcached key.
    pub fn wire_key(namespace: &str, key: &str) -> Option<String> {
        let keys = crate::key::KeyEncoder::new(namespace).ok()?;
        let wire = keys.encode(key);
        let wire = wire.as_str();
        assert!(!wire.is_empty() && wire.len() <= 250);
        assert!(wire.bytes().all(|b| b.is_ascii_graphic()));
        Some(wire.to_owned())
    }
}

/// Crate-private costs, exposed for the benches only. Not a public API.
#[doc(hidden)]
pub mod __bench {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    /// A key encoder, to time `encode` alone.
    pub struct Keys(crate::key::KeyEncoder);

    impl Keys {
        /// An encoder for `namespace`.
        pub fn new(namespace: &str) -> Self {
            Keys(crate::key::KeyEncoder::new(namespace).expect("a valid namespace"))
        }

        /// The wire key's length.
        pub fn encode(&self, key: &str) -> usize {
            self.0.encode(key).as_str().len()
        }
    }

    /// The stored bytes of `value`.
    pub fn encode<T: Serialize>(value: &T) -> bytes::Bytes {
        crate::codec::encode(value, usize::MAX).expect("serializable")
    }

    /// `value` back from its stored bytes.
    pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> T {
        crate::codec::decode(crate::codec::JSON_FLAGS, bytes).expect("decodable")
    }
}

pub use build_error::BuildError;
pub use builder::CacheBuilder;
pub use cache::Cache;
pub use core::OnUnavailable;
pub use error::{BoxError, Error};
pub use global::{default_cache, set_default};
pub use options::{Attached, Detached, GetOptions};
pub use stats::Stats;
pub use store::memcached::NodeStats;
pub use store::memcached::Server;
pub use store::memcached::ring::Ring;

/// Caches an `async fn` returning `Result<T, E>` in the [default cache](default_cache), or in
/// `cache = EXPR`: the body runs once per distinct arguments per `expire` window across every
/// process sharing the store.
///
/// ```
/// # #[derive(Debug, thiserror::Error)]
/// # enum DbError { #[error(transparent)] Cache(#[from] distcache::Error) }
/// #[distcache::distcached(expire = "30s", exec_limit = "5s")]
/// async fn stock(sku: &str, warehouse: u32) -> Result<u64, DbError> {
///     Ok(7) // SELECT ... WHERE sku = $1 AND warehouse = $2
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() { assert_eq!(stock("A-1", 3).await.unwrap(), 7); }
/// ```
///
/// Arguments:
///
/// - `expire = "10s"` (required): how long a value is kept; humantime syntax (`"500ms"`,
///   `"1h 30m"`), checked at compile time.
/// - `exec_limit = "1m"` (required): the bound on the whole call, waiting and computing.
/// - `name = "..."`: the function part of the key. Default: `module_path!()::fn_name`, which
///   changes when the function moves; pin it to keep the cached values across such a move.
/// - `cache = EXPR`: the [`Cache`] to use, any expression that derefs to one (a
///   `static LazyLock<Cache>`, a `&Cache`). Default: [`default_cache()`].
/// - `skip(db, self)`: arguments left out of the key, which then need no `Serialize`: a pool,
///   a client, a config, the receiver of a method. Unknown names and duplicates are errors, and so
///   is skipping every argument: write `key = ()` if every call should share one entry.
/// - `key = EXPR`: what the key is made of, instead of the arguments: `key = (tenant.id, id)`
///   keys the call as arguments `tenant.id` and `id` would be, each borrowed where it is (a
///   field that is not `Copy`, such as `self.name`, is not moved); `key = id` as one argument;
///   `key = ()` as none, one entry for every call. The arguments and `self` may be read by
///   their names. No argument then needs `Serialize`, and `skip` is an error (it would do
///   nothing).
/// - `refresh_ahead = 0.2`: refresh the value ahead of its expiry, as
///   [`CacheBuilder::refresh_ahead`] does, for this function's calls; it takes precedence over
///   the cache's setting, which takes precedence over `DISTCACHE_REFRESH_AHEAD` for the default
///   cache (0 turns it off for the function).
/// - `error_backoff = "1s"`: back off a failing getter, as [`CacheBuilder::error_backoff`] does,
///   for this function's calls (at most one day).
/// - `stale_if_error = "1h"`: keep values that long past `expire`, and serve them while one
///   caller recomputes them or when that fails, as [`CacheBuilder::stale_if_error`] does, for this
///   function's calls.
/// - `soft_timeout = "100ms"`: a call that recomputes a value it has returns that value after
///   this long, and the body finishes in the background, as with
///   [`Cache::get_detached`]. The body must then be able to outlive the call: an argument whose
///   type borrows (`&Db`, `&str`, a lifetime) or a method's `&self` is a compile error; pass owned
///   handles (an `Arc`, a cloned pool). The arguments and the value must be `Send + 'static`.
/// - `near_ttl = "1s"`: keep the function's values in this process that long and serve them from
///   there, as [`Cache::get_near`] does (the near cache, for hot keys; with its staleness bound,
///   [`CacheBuilder::near_ttl`]); `near_ttl = "cache"`: for the cache's `near_ttl` (off if it has
///   none; `DISTCACHE_NEAR_TTL` for the default cache). The value must be
///   `Clone + Send + Sync + 'static` (an `Arc<T>` clones as a count), or it is a compile error
///   at `near_ttl`. A function without it keeps nothing, whatever the cache's setting.
/// - `helpers = false`: no `<fn>_key` and `<fn>_invalidate` beside the function; needed in a
///   trait impl, which takes no other items.
///
/// **The key** is the function part, then the arguments' JSON as an array:
/// `my_crate::billing::stock["A-1",3]`. Where JSON would write two values alike, the key does
/// not: NaN and ±infinity, `None` and `Some(None)`, a `HashMap` in another order. A `HashSet`,
/// which serde cannot tell from a list, is keyed in its iteration order: prefer a `BTreeSet`.
/// With `key`, the array holds the tuple's elements, or the one value (`key = (tenant.id, id)`
/// gives `my_crate::billing::invoice[7,42]`, `key = id` gives `…::invoice[42]`, `key = ()`
/// gives `…::invoice[]`). Only arguments bound by a plain name can be skipped or read by `key`,
/// not those destructured in the signature.
///
/// **The function part** is `name`, or `module_path!()::fn_name`, or for a method (one that
/// takes `&self` or `self: &Arc<Self>`) `std::any::type_name::<Self>()::fn_name`, such as
/// `my_crate::billing::Service::profile`: methods of the same name on two types get different
/// keys, and one build of a service gives every process the same. `type_name` is not promised
/// stable across compiler versions: a deployment whose processes were built by two different
/// compilers may compute such a key once per compiler (pin it with `name` if that matters). The
/// name includes the module path, so two types of one crate do not share it in practice (the
/// standard library does not promise it; two versions of one crate in one build would print the
/// same names). Associated
/// functions without `self` are keyed by module and name: give those of two types in one module
/// distinct `name`s.
///
/// ```
/// # #[derive(Debug, thiserror::Error)]
/// # enum AppError { #[error(transparent)] Cache(#[from] distcache::Error) }
/// struct Db; // a pool: not `Serialize`
/// struct Service { db: Db }
///
/// impl Service {
///     #[distcache::distcached(expire = "30s", exec_limit = "5s", skip(self))]
///     async fn profile(&self, id: u64) -> Result<String, AppError> {
///         Ok(format!("profile {id}")) // self.db.query(...)
///     }
/// }
///
/// #[distcache::distcached(expire = "30s", exec_limit = "5s", skip(db))]
/// async fn user(db: &Db, id: u64) -> Result<String, AppError> {
///     Ok(format!("user {id}"))
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), AppError> {
/// let service = Service { db: Db };
/// assert_eq!(service.profile(7).await?, "profile 7");
/// assert!(Service::profile_key(7).unwrap().ends_with("::Service::profile[7]"));
/// service.profile_invalidate(7).await?; // the next call computes it again
/// assert_eq!(user(&Db, 1).await?, "user 1");
/// assert!(user_key(1).unwrap().ends_with("::user[1]"));
/// # Ok(())
/// # }
/// ```
///
/// **Beside the function**, the attribute emits `<fn>_key(args)`, the key of the entry for
/// those arguments (`None` if they cannot be serialized; such calls run uncached), and
/// `async <fn>_invalidate(args)`, which removes that entry (as [`Cache::invalidate`]).
/// `<fn>_key` takes the arguments the key is made of: all but the skipped ones, or all of them
/// with `key` (and `&self` then); for a method with `skip(self)`, it is an associated function
/// (`Service::profile_key(7)`). `<fn>_invalidate` takes what the function takes, as the cache
/// expression may read any of it (`service.profile_invalidate(7)`).
///
/// The function may not take `&mut self` or `self` by value, type or const generics, or
/// `impl Trait` arguments in the key. `T: Serialize + DeserializeOwned` and
/// `E: From<distcache::Error>`. The function keeps its signature and attributes, and its future
/// is `Send` when the body's is.
pub use distcache_macros::distcached;

/// The `rustls` distcache is built with, for [`CacheBuilder::tls_config`]: a `ClientConfig` of
/// another version would not be accepted.
#[cfg(feature = "tls")]
pub use rustls;
