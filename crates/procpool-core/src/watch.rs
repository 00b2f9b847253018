//! [`TaskWatch`]: a read-only view of a submitted task, for status reports.

use std::sync::Arc;
use std::time::Instant;

use crate::internal::TaskShared;

/// Where a submitted task runs now, for status reports (a control socket, a dashboard):
/// the worker of its current attempt and since when. From
/// [`TaskHandle::watch`](crate::TaskHandle::watch); cheap to clone, and kept apart from
/// the handle, so whoever awaits the task keeps the handle. It cancels nothing and holds
/// no result.
///
/// A retry runs on another worker: the pid, the attempt and its start move on with it.
/// Between an attempt's end and the retry's start (its backoff) they still name the
/// attempt that ended; a pid may be gone by the time it is read.
#[derive(Clone)]
pub struct TaskWatch {
    pub(crate) shared: Arc<TaskShared>,
}

impl TaskWatch {
    /// Pid of the worker running the current attempt; `None` until one starts the task.
    pub fn worker_pid(&self) -> Option<u32> {
        self.shared.pid()
    }

    /// How many times the task was started so far (retries included): the number of the
    /// current attempt; 0 while queued.
    pub fn attempts(&self) -> u32 {
        self.shared.attempts()
    }

    /// When the current attempt started; `None` until one did.
    pub fn attempt_started(&self) -> Option<Instant> {
        self.shared.started_at()
    }
}

impl std::fmt::Debug for TaskWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskWatch")
            .field("worker_pid", &self.worker_pid())
            .field("attempts", &self.attempts())
            .finish_non_exhaustive()
    }
}
