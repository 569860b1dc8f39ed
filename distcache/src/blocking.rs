//! CPU work on big values, off the async workers.
//!
//! Compressing a value of megabytes, decompressing it, or hashing its chunks holds a thread for
//! milliseconds: on a tokio worker, every other task on it (a caller's hit of another key) waits
//! that long. From [`OFF_WORKER_FROM`] bytes such work runs on tokio's blocking threads, whose
//! hand-off costs tens of microseconds; smaller work runs where it is.

use std::sync::{Arc, Mutex};

/// The bytes from which work goes to a blocking thread: on the development machine, 1 MiB takes
/// 0.64 ms to compress at zstd level 1, 0.4 to 0.6 ms to decompress, and 0.51 ms to hash with
/// SHA-256 (BENCHMARKS.md); a hand-off to a blocking thread costs tens of microseconds.
pub(crate) const OFF_WORKER_FROM: usize = 1 << 20;

/// `work`, on `bytes` bytes: on a blocking thread from [`OFF_WORKER_FROM`], here below it, or
/// here too if the runtime is shutting down and its blocking threads take no more work. A panic
/// in it is resumed here.
pub(crate) async fn run<R, F>(bytes: usize, work: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    if bytes < OFF_WORKER_FROM {
        return work();
    }
    // Kept here too: a blocking task cancelled before it started (at shutdown) never ran it.
    let work = Arc::new(Mutex::new(Some(work)));
    let handed = work.clone();
    let taken = move || {
        let work = handed.lock().unwrap_or_else(|p| p.into_inner()).take();
        work.map(|work| work())
    };
    match tokio::task::spawn_blocking(taken).await {
        Ok(Some(done)) => done,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        // Cancelled, or (never) run twice: whoever holds the work runs it.
        Ok(None) | Err(_) => {
            let work = work.lock().unwrap_or_else(|p| p.into_inner()).take();
            work.expect("a blocking task that did not run leaves its work")()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn big_work_runs_on_a_blocking_thread_and_small_work_here() {
        let here = std::thread::current().id();
        let small = run(OFF_WORKER_FROM - 1, std::thread::current).await;
        assert_eq!(small.id(), here);
        let big = run(OFF_WORKER_FROM, std::thread::current).await;
        assert_ne!(big.id(), here);
    }

    /// A runtime shut down takes no blocking work: it runs where it was asked for.
    #[test]
    fn big_work_still_runs_when_the_runtime_is_shut_down() {
        let gone = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let handle = gone.handle().clone();
        gone.shutdown_background();
        let driver = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let done = driver.block_on(async {
            let _in_the_gone_one = handle.enter();
            run(OFF_WORKER_FROM, || 42).await
        });
        assert_eq!(done, 42);
    }
}
