//! Small helpers every part of the chunkserver uses: blocking work off the async
//! threads, and a lock that a panic elsewhere does not poison.

use std::sync::{Mutex, MutexGuard};

use tokio::task::spawn_blocking;

use crate::error::ChunkError;

/// Runs blocking disk or CPU work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ChunkError> + Send + 'static,
) -> Result<T, ChunkError> {
    spawn_blocking(f)
        .await
        .map_err(|e| ChunkError::Invalid(format!("worker task failed: {e}")))?
}

/// Locks `m`, taking it over from a holder that panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
