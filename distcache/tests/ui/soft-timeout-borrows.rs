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
