//! A bounded pool for the CPU-heavy parts of requests (decoding large bodies, patching large
//! objects), so that they never occupy the async workers that serve watches, `/readyz` and the
//! Raft core. At most one job per CPU runs at once; the rest wait their turn.

use std::sync::OnceLock;

use tokio::sync::Semaphore;

/// Work on less than this many bytes is done in place: handing it over costs more than it saves.
pub const OFFLOAD_BYTES: usize = 64 * 1024;

fn permits() -> &'static Semaphore {
    static POOL: OnceLock<Semaphore> = OnceLock::new();
    POOL.get_or_init(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())))
}

/// Runs `f` on a blocking thread once one of the pool's permits is free.
pub async fn run<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let _permit = permits().acquire().await;
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("a pooled job was cancelled: {e}"),
        },
    }
}

/// Runs `f` in place for small inputs (`size` bytes) and in the pool for large ones.
pub async fn run_sized<T, F>(size: usize, f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if size < OFFLOAD_BYTES { f() } else { run(f).await }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_return_their_values_and_panics() {
        assert_eq!(run(|| 2 + 2).await, 4);
        assert_eq!(run_sized(10, || "small").await, "small");
        let panicked = tokio::spawn(run(|| -> u8 { panic!("boom") })).await;
        assert!(panicked.unwrap_err().is_panic());
    }
}
