//! Errors of the supervisor side.

use std::time::Duration;

use thiserror::Error;

/// Why a task produced no result. Each variant keeps its kind from the worker (or the
/// supervisor) to the caller; [`TaskError::kind`] names it in snake_case for logs and JSON.
#[derive(Clone, Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum TaskError {
    /// The task function returned `Err`.
    #[error("task returned an error ({type_name}): {message}")]
    User {
        /// Rust type name of the error.
        type_name: String,
        /// Its text.
        message: String,
    },
    /// The task function panicked (caught; the worker stayed alive).
    #[error("task panicked at {}: {message}", location.as_deref().unwrap_or("<unknown>"))]
    Panicked {
        /// Panic message.
        message: String,
        /// `file:line:column`.
        location: Option<String>,
        /// Present when the worker ran with `RUST_BACKTRACE` set.
        backtrace: Option<String>,
    },
    /// The worker process died while running the task.
    #[error("worker process {} while running the task{}", describe_exit(*signal, *exit_code), tail_suffix(stderr_tail))]
    Crashed {
        /// Signal that killed it.
        signal: Option<i32>,
        /// Exit code, if it exited.
        exit_code: Option<i32>,
        /// Last lines the worker wrote to stderr during the task.
        stderr_tail: Vec<String>,
    },
    /// The task ran past its deadline and was killed.
    #[error("task timed out after {after:?}")]
    TimedOut {
        /// The deadline.
        after: Duration,
    },
    /// The worker went over a resource limit and was killed.
    #[error("resource limit exceeded: {message}")]
    LimitExceeded {
        /// Which limit, with the figure.
        message: String,
    },
    /// The task was cancelled (its worker, if it had one, was killed).
    #[error("task was cancelled")]
    Cancelled,
    /// No worker function of that name.
    #[error("unknown task {name:?}")]
    UnknownTask {
        /// The name asked for.
        name: String,
    },
    /// The arguments do not fit the function's parameters.
    #[error("bad arguments: {message}")]
    BadArgs {
        /// What did not fit.
        message: String,
    },
    /// The worker broke the protocol (garbage, oversized frame, wrong version).
    #[error("protocol error: {message}")]
    Protocol {
        /// What was wrong.
        message: String,
    },
    /// A value could not be encoded or decoded (e.g. the result type does not match).
    #[error("codec error: {message}")]
    Codec {
        /// Codec message.
        message: String,
    },
    /// No worker could be started for a while (the binary is gone, or every new worker
    /// dies before its handshake); queued tasks fail with the last cause instead of
    /// waiting forever. The pool keeps retrying in the background.
    #[error("no worker available: {message}")]
    PoolUnhealthy {
        /// Why the last worker failed to start.
        message: String,
    },
    /// The pool's bounded queue is full and the caller asked not to wait.
    #[error("the task queue is full ({capacity} tasks)")]
    QueueFull {
        /// The queue's capacity.
        capacity: usize,
    },
    /// A message for the task ([`TaskHandle::send`](crate::TaskHandle::send)) does not fit
    /// in one frame; it was not sent, and the task goes on.
    #[error("message of {size} bytes exceeds the {max} byte frame limit")]
    MessageTooLarge {
        /// The message's size.
        size: usize,
        /// The pool's frame limit.
        max: usize,
    },
    /// Another queued or running task already has this id.
    #[error("a task with id {id} is already queued or running")]
    DuplicateId {
        /// The id.
        id: uuid::Uuid,
    },
    /// The pool was shut down before the task finished.
    #[error("the pool is closed")]
    PoolClosed,
    /// Run through a broker: the task was lost, either because the agents running it
    /// died once too often (a poison task), or because the broker forgot it (restarted
    /// without persistence).
    #[error("task lost: {message}")]
    Lost {
        /// What happened.
        message: String,
    },
}

fn describe_exit(signal: Option<i32>, code: Option<i32>) -> String {
    match (signal, code) {
        (Some(sig), _) => format!("was killed by {}", procpool_os::signal_name(sig)),
        (None, Some(code)) => format!("exited with code {code}"),
        (None, None) => "ended".to_owned(),
    }
}

fn tail_suffix(tail: &[String]) -> String {
    match tail.last() {
        Some(line) => format!(" (last stderr line: {line})"),
        None => String::new(),
    }
}

impl TaskError {
    /// The kind in snake_case: `user_error`, `panicked`, `crashed`, `timed_out`,
    /// `limit_exceeded`, `cancelled`, `unknown_task`, `bad_args`, `protocol`, `codec`,
    /// `pool_unhealthy`, `queue_full`, `message_too_large`, `duplicate_id`, `pool_closed`,
    /// `lost`.
    pub fn kind(&self) -> &'static str {
        match self {
            TaskError::User { .. } => "user_error",
            TaskError::Panicked { .. } => "panicked",
            TaskError::Crashed { .. } => "crashed",
            TaskError::TimedOut { .. } => "timed_out",
            TaskError::LimitExceeded { .. } => "limit_exceeded",
            TaskError::Cancelled => "cancelled",
            TaskError::UnknownTask { .. } => "unknown_task",
            TaskError::BadArgs { .. } => "bad_args",
            TaskError::Protocol { .. } => "protocol",
            TaskError::Codec { .. } => "codec",
            TaskError::PoolUnhealthy { .. } => "pool_unhealthy",
            TaskError::QueueFull { .. } => "queue_full",
            TaskError::MessageTooLarge { .. } => "message_too_large",
            TaskError::DuplicateId { .. } => "duplicate_id",
            TaskError::PoolClosed => "pool_closed",
            TaskError::Lost { .. } => "lost",
        }
    }

    /// The worker process died under the task.
    pub fn is_crash(&self) -> bool {
        matches!(self, TaskError::Crashed { .. })
    }

    /// The task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, TaskError::Cancelled)
    }

    /// The task hit its deadline.
    pub fn is_timeout(&self) -> bool {
        matches!(self, TaskError::TimedOut { .. })
    }

    /// The signal that killed the worker, for a crash.
    pub fn exit_signal(&self) -> Option<i32> {
        match self {
            TaskError::Crashed { signal, .. } => *signal,
            _ => None,
        }
    }

    /// The worker's exit code, for a crash by exit.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            TaskError::Crashed { exit_code, .. } => *exit_code,
            _ => None,
        }
    }

    pub(crate) fn from_failure(f: procpool_proto::TaskFailure) -> Self {
        use procpool_proto::TaskFailure as F;
        match f {
            F::User { type_name, message } => TaskError::User { type_name, message },
            F::Panicked {
                message,
                location,
                backtrace,
            } => TaskError::Panicked {
                message,
                location,
                backtrace,
            },
            F::UnknownTask { name } => TaskError::UnknownTask { name },
            F::BadArgs { message } => TaskError::BadArgs { message },
            F::Codec { message } => TaskError::Codec { message },
        }
    }
}

/// A pool could not be built.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The worker binary could not be found or started, or is not a procpool worker.
    #[error("error starting worker {}: {message}", path.display())]
    WorkerStart {
        /// The worker executable.
        path: std::path::PathBuf,
        /// What went wrong, with the worker's stderr when it printed any.
        message: String,
    },
    /// The supervisor thread (or, for `start`, the spawner thread) could not be created.
    #[error("error starting the supervisor or spawner thread")]
    Supervisor(#[source] std::io::Error),
    /// [`PoolBuilder::start`](crate::PoolBuilder::start) was not called from within a
    /// tokio runtime.
    #[error("no tokio runtime: {0}")]
    Runtime(String),
    /// A setting is out of range.
    #[error("invalid pool setting: {0}")]
    Config(String),
    /// This process was started as a worker but never entered worker mode: its `main`
    /// re-ran in the worker and tried to build a pool of its own.
    #[error(
        "{}: call `procpool::init()` first in `main`, or use `#[procpool::main]`",
        INIT_NEVER_RAN
    )]
    InitNeverRan,
}

/// Printed on stderr by a worker whose `init` never ran (see [`PoolError::InitNeverRan`]);
/// the supervisor looks for it when such a worker fails its handshake.
pub(crate) const INIT_NEVER_RAN: &str =
    "this process was started as a procpool worker, but `procpool::init()` never ran";
