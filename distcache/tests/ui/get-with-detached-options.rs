//! Options with a soft timeout are `GetOptions<Detached>`: the borrowing `get_with` does not take
//! them (its getter could not finish after the call), only `get_detached`.
use std::time::Duration;

use distcache::{Cache, Error, GetOptions};

async fn call(cache: &Cache, db: &String) -> Result<u32, Error> {
    let options = GetOptions::new(Duration::from_secs(5), Duration::from_secs(60))
        .soft_timeout(Duration::from_millis(100));
    cache
        .get_with("k", &options, || async { Ok(db.len() as u32) })
        .await
}

fn main() {}
