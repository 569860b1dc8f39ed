//! The smallest use of distcache: one cached function, called twice.
//!
//! `cargo run --example quickstart`

use std::time::Instant;

use distcache::distcached;

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Cache(#[from] distcache::Error),
}

/// An expensive lookup: runs once per `id` per 30 seconds across every process sharing the cache.
#[distcached(expire = "30s", exec_limit = "5s")]
async fn greeting(id: u32) -> Result<String, AppError> {
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    Ok(format!("hello, user {id}"))
}

#[tokio::main]
async fn main() -> Result<(), AppError> {
    for _ in 0..2 {
        let started = Instant::now();
        let text = greeting(7).await?;
        println!("{text:?} in {:?}", started.elapsed());
    }
    println!("{:?}", distcache::default_cache()?.stats());
    Ok(())
}
