//! Blocking twins of the pool's async calls, for a plain `main` without a runtime (no
//! `futures::executor::block_on` needed). Each blocks the current thread until its async
//! twin would resolve; for a pool started with [`start`](crate::PoolBuilder::start), not
//! on that runtime's own threads (see its caveats).

use serde::de::DeserializeOwned;

use crate::host;
use crate::pool::Pool;
use crate::task::TaskHandle;
use crate::types::{PoolStatus, Shutdown};

impl Pool {
    /// Runs `fut` to completion on the current thread, the way this pool's own blocking
    /// calls wait: the one way to call an async function of the pool's API (or a future
    /// built on it) from a plain `main`. Needs no runtime for a pool from
    /// [`build`](crate::PoolBuilder::build); for a pool from
    /// [`start`](crate::PoolBuilder::start) the future may use that runtime, and the
    /// caveats of `start` apply (not on its current-thread runtime's thread).
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        host::block_on(self.runtime(), fut)
    }

    /// Blocking [`status`](Self::status).
    pub fn status_blocking(&self) -> PoolStatus {
        host::block_on(self.runtime(), self.status())
    }

    /// Blocking [`worker_pids`](Self::worker_pids).
    pub fn worker_pids_blocking(&self) -> Vec<u32> {
        host::block_on(self.runtime(), self.worker_pids())
    }

    /// Blocking [`shutdown`](Self::shutdown): returns when every worker has been reaped.
    pub fn shutdown_blocking(&self, mode: Shutdown) {
        host::block_on(self.runtime(), self.shutdown(mode))
    }
}

impl<R: DeserializeOwned> TaskHandle<R> {
    /// Blocking [`started`](Self::started): the worker's pid once one starts the task,
    /// `None` if it ended without starting.
    pub fn started_blocking(&self) -> Option<u32> {
        host::block_on(self.runtime(), self.started())
    }
}
