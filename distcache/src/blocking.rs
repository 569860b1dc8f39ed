//! CPU work on big values, off the async workers.
//!
//! Compressing a value of megabytes, decompressing it, or hashing its chunks holds a thread for
//! milliseconds: on a tokio worker, every other task on it (a caller's hit of another key) waits
//! that long. From [`OFF_WORKER_FROM`] bytes such work runs on tokio's blocking threads, whose
//! hand-off costs tens of microseconds; smaller work runs where it is.

/// The bytes from which work goes to a blocking thread: a millisecond or so of zstd at level 1,
/// or of SHA-256, on the development machine (BENCHMARKS.md).
pub(crate) const OFF_WORKER_FROM: usize = 1 << 20;

/// `work`, on `bytes` bytes: on a blocking thread from [`OFF_WORKER_FROM`], here below it.
/// `None` if the runtime shut down before it ran. A panic in it is resumed here.
pub(crate) async fn run<R, F>(bytes: usize, work: F) -> Option<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    if bytes < OFF_WORKER_FROM {
        return Some(work());
    }
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => Some(done),
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn big_work_runs_on_a_blocking_thread_and_small_work_here() {
        let here = std::thread::current().id();
        let small = run(OFF_WORKER_FROM - 1, std::thread::current)
            .await
            .unwrap();
        assert_eq!(small.id(), here);
        let big = run(OFF_WORKER_FROM, std::thread::current).await.unwrap();
        assert_ne!(big.id(), here);
    }
}
