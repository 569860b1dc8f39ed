#![allow(unused_variables)]

use std::sync::Arc;

#[derive(Debug)]
struct E;
impl From<distcache::Error> for E {
    fn from(_: distcache::Error) -> Self {
        E
    }
}

struct Db;

/// A skipped `&Db`, a borrowed `&str`, a lifetime: none can outlive the call.
#[distcache::distcached(expire = "10s", exec_limit = "1m", soft_timeout = "100ms", skip(db))]
async fn f<'a>(db: &Db, name: &str, tag: std::borrow::Cow<'a, str>) -> Result<u32, E> {
    Ok(1)
}

struct Service;

impl Service {
    /// A method borrows `self`.
    #[distcache::distcached(expire = "10s", exec_limit = "1m", soft_timeout = "100ms", skip(self))]
    async fn g(&self, id: u32) -> Result<u32, E> {
        Ok(id)
    }
}

/// Owned handles are fine.
#[distcache::distcached(expire = "10s", exec_limit = "1m", soft_timeout = "100ms", skip(db))]
async fn h(db: Arc<Db>, id: u32) -> Result<u32, E> {
    Ok(id)
}

fn main() {}

/// `'static` borrows nothing from the caller.
#[distcache::distcached(expire = "10s", exec_limit = "1m", soft_timeout = "100ms")]
async fn s(name: &'static str, tags: Vec<&'static str>) -> Result<u32, E> {
    Ok(1)
}

/// Under a millisecond is refused, as the runtime would refuse it; `"0s"` turns stale_if_error
/// off.
#[distcache::distcached(expire = "10s", exec_limit = "1m", soft_timeout = "100us")]
async fn t(id: u32) -> Result<u32, E> {
    Ok(id)
}

#[distcache::distcached(expire = "10s", exec_limit = "1m", stale_if_error = "0s")]
async fn u(id: u32) -> Result<u32, E> {
    Ok(id)
}
