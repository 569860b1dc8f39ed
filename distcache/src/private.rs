//! What `#[distcached]` expansions call. Not a public API: it changes without notice.
//!
//! Each check lands on the user's own tokens: the expansion spans `Key::arg` at each argument's
//! type and `call` at the return type, so that a missing `Serialize` or a return type that is not
//! a cacheable `Result` is reported once, there.

use std::cell::Cell;
use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::flight::{Detachable, WithNear};
use crate::json;
use crate::options::Detached;
use crate::schedule::site_of;
use crate::{Cache, Error, GetOptions};

pub use crate::global::default_cache;

thread_local! {
    /// The buffer of this thread's last key, kept for its next: a call through the macro builds
    /// its key without allocating (a near hit of an `Arc` allocates nothing at all).
    static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// The largest key buffer kept for the next call.
const SPARE_MAX: usize = 4096;

/// An empty buffer of at least `capacity`: this thread's spare, or a new one.
fn buffer(capacity: usize) -> Vec<u8> {
    let mut buf = SPARE.try_with(Cell::take).unwrap_or_default();
    buf.clear();
    buf.reserve(capacity);
    buf
}

/// A call's key: the function's path, then its arguments as a JSON array, each in the key
/// encoding of `json::write_key_arg` (serde_json's bytes, except where those are ambiguous).
#[derive(Debug)]
pub struct Key {
    buf: Vec<u8>,
    error: Option<json::Error>,
}

impl Drop for Key {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.capacity() <= SPARE_MAX {
            // On a thread being torn down, the buffer is simply freed.
            let _ = SPARE.try_with(|spare| spare.set(buf));
        }
    }
}

impl Key {
    /// Starts the key of a call of `function`.
    pub fn new(function: &str) -> Self {
        let mut buf = buffer(function.len() + 32);
        buf.extend_from_slice(function.as_bytes());
        buf.push(b'[');
        Key { buf, error: None }
    }

    /// Starts the key of a call of the method `function` of the type named `type_name`
    /// (`std::any::type_name::<Self>()`, which names its module too).
    pub fn method(type_name: &str, function: &str) -> Self {
        let mut buf = buffer(type_name.len() + function.len() + 34);
        buf.extend_from_slice(type_name.as_bytes());
        buf.extend_from_slice(b"::");
        buf.extend_from_slice(function.as_bytes());
        buf.push(b'[');
        Key { buf, error: None }
    }

    /// The key, as `Cache::get` and `Cache::invalidate` take it; `None` when the arguments
    /// could not be serialized into one.
    pub fn into_key(mut self) -> Option<String> {
        self.finish().ok().map(str::to_owned)
    }

    /// Appends an argument.
    pub fn arg<A: Serialize + ?Sized>(&mut self, arg: &A) {
        if self.error.is_some() {
            return;
        }
        if !self.buf.ends_with(b"[") {
            self.buf.push(b',');
        }
        if let Err(err) = json::write_key_arg(&mut self.buf, arg) {
            self.error = Some(err);
        }
    }

    /// The key, borrowed, once all its arguments are in.
    fn finish(&mut self) -> Result<&str, json::Error> {
        if let Some(err) = self.error.take() {
            return Err(err);
        }
        self.buf.push(b']');
        Ok(std::str::from_utf8(&self.buf).expect("a &str followed by JSON-like text is UTF-8"))
    }
}

/// A cache given as `cache = EXPR`: anything that derefs to a [`Cache`].
pub fn user_cache(cache: &Cache) -> Result<&Cache, Error> {
    Ok(cache)
}

/// A return type `#[distcached]` can cache.
#[diagnostic::on_unimplemented(
    message = "`#[distcached]` functions must return `Result<T, E>` with `T: Serialize + DeserializeOwned` and `E: From<distcache::Error> + Debug`, not `{Self}`",
    label = "not a cacheable `Result`"
)]
pub trait CachedResult: Sized {
    /// `T`.
    type Value: Serialize + DeserializeOwned;
    /// `E`.
    type Error: From<Error> + std::fmt::Debug;
    /// Self as a `Result`.
    fn into_result(self) -> Result<Self::Value, Self::Error>;
    /// A `Result` as self.
    fn from_result(result: Result<Self::Value, Self::Error>) -> Self;
}

impl<T: Serialize + DeserializeOwned, E: From<Error> + std::fmt::Debug> CachedResult
    for Result<T, E>
{
    type Value = T;
    type Error = E;

    fn into_result(self) -> Self {
        self
    }

    fn from_result(result: Self) -> Self {
        result
    }
}

pub use crate::near::{Keep, NearChoice, NoNear};

/// The value type of a function with `near_ttl`.
#[diagnostic::on_unimplemented(
    message = "`near_ttl` keeps the function's value in this process and clones it out: `{Self}` must be `Clone + Send + Sync + 'static`",
    label = "the value is not `Clone + Send + Sync + 'static`",
    note = "wrap the value in an `Arc` (`Result<Arc<T>, E>`), or drop `near_ttl`"
)]
pub trait NearValue: Clone + Send + Sync + 'static {}

impl<T: Clone + Send + Sync + 'static> NearValue for T {}

/// A function with `near_ttl`: its value type must be keepable (an error spanned at `near_ttl`).
/// Without `near_ttl`, a function passes [`NoNear`], and its calls compile to none of the near
/// cache.
pub const fn keep_near<T: NearValue>() -> Keep<T> {
    Keep::new()
}

/// The body of a `#[distcached]` function.
pub async fn call<R, N, F, Fut>(
    cache: Result<&Cache, Error>,
    function: &'static str,
    mut key: Key,
    options: &GetOptions,
    near: N,
    getter: F,
) -> R
where
    R: CachedResult,
    N: NearChoice<R::Value>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = R>,
{
    let cache = match cache {
        Ok(cache) => cache,
        Err(err) => return R::from_result(Err(err.into())),
    };
    let site = site_of::<F>();
    let getter = || {
        let future = getter();
        async move { future.await.into_result() }
    };
    R::from_result(match key.finish() {
        Ok(key) => {
            if let Some(value) = cache.near_hit(key, options, near.keep()) {
                return R::from_result(Ok(value));
            }
            cache
                .get_at(site, key, options, WithNear(getter, near))
                .await
        }
        Err(err) => {
            warn!(function, error = %err, "the arguments cannot be serialized into a key; running the function uncached");
            cache
                .run_uncached(site, function, options.exec_limit, getter)
                .await
        }
    })
}

/// The body of a `#[distcached(soft_timeout = ...)]` function: its getter may finish in the
/// background (`Cache::get_detached`).
pub async fn call_detached<R, N, F, Fut>(
    cache: Result<&Cache, Error>,
    function: &'static str,
    mut key: Key,
    options: &GetOptions<Detached>,
    near: N,
    getter: F,
) -> R
where
    R: CachedResult + Send + 'static,
    N: NearChoice<R::Value>,
    R::Value: Send + 'static,
    R::Error: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = R> + Send + 'static,
{
    let cache = match cache {
        Ok(cache) => cache,
        Err(err) => return R::from_result(Err(err.into())),
    };
    let site = site_of::<F>();
    let getter = move || {
        let future = getter();
        async move { future.await.into_result() }
    };
    R::from_result(match key.finish() {
        Ok(key) => {
            let options = options.erased();
            if let Some(value) = cache.near_hit(key, &options, near.keep()) {
                return R::from_result(Ok(value));
            }
            cache
                .get_at(site, key, &options, WithNear(Detachable(getter), near))
                .await
        }
        Err(err) => {
            warn!(function, error = %err, "the arguments cannot be serialized into a key; running the function uncached");
            cache
                .run_uncached(site, function, options.exec_limit, getter)
                .await
        }
    })
}
