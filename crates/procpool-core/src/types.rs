//! Value types shared across the supervisor's modules and its public API: a leaf module,
//! importing nothing of this crate, so that the handles, the dispatcher and the internal
//! vocabulary can all name them without depending on each other.

use std::sync::Arc;

use uuid::Uuid;

/// How the pool should stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Stop taking tasks, finish the queued and running ones, then stop the workers.
    Drain,
    /// Fail queued tasks and kill running ones with
    /// [`TaskError::PoolClosed`](crate::TaskError::PoolClosed).
    Kill,
}

/// A snapshot of a pool, from [`Pool::status`](crate::Pool::status).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStatus {
    /// Workers started but not yet through their handshake.
    pub starting: usize,
    /// Workers waiting for a task.
    pub idle: usize,
    /// Workers running a task.
    pub busy: usize,
    /// Tasks waiting for a worker.
    pub queued: usize,
    /// Failed tasks waiting out their backoff before another attempt.
    pub retrying: usize,
    /// Worker processes started since the pool was built (initial ones included).
    pub worker_starts: u64,
    /// Set while no worker can be started: the last cause.
    pub unhealthy: Option<String>,
}

/// What a task wrote to its stdout and stderr, kept with its result under
/// [`TaskOutput::Capture`](crate::TaskOutput::Capture) and read with
/// [`TaskHandle::output`](crate::TaskHandle::output). Lines end with `\n`; a line longer
/// than 8 KiB is cut and marked ` [line truncated]`. Of a retried task, the last attempt's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CapturedOutput {
    /// The task's stdout lines.
    pub stdout: String,
    /// The task's stderr lines.
    pub stderr: String,
    /// Lines were dropped because the two streams together reached the byte bound; what
    /// is kept is the first lines of each.
    pub truncated: bool,
}

/// Progress reported by a running task (`procpool::report_progress` in the worker).
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// The reporting task.
    pub task_id: Uuid,
    /// Completed fraction, 0.0 to 1.0.
    pub fraction: f32,
    /// Description of the step.
    pub message: String,
}

/// A task's progress callback ([`Task::on_progress`](crate::Task::on_progress)).
pub(crate) type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;
