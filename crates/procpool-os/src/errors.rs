//! Errors of the OS layer.

use thiserror::Error;

/// A system call of the OS layer failed.
#[derive(Debug, Error)]
pub enum OsError {
    /// Creating the supervisor/worker channel failed.
    #[error("error creating the worker channel")]
    Channel(#[source] std::io::Error),
    /// The worker could not set up its own process state.
    #[error("error setting up the worker process: {what}")]
    WorkerSetup {
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The parent died before the worker armed its parent-death signal.
    #[error("the supervisor (pid {expected}) exited before the worker started")]
    ParentGone {
        /// The supervisor pid the worker was started for.
        expected: u32,
    },
    /// The platform accepts this resource limit but does not enforce it.
    #[error("resource limit `{limit}` is not supported on this platform: {why}")]
    UnsupportedLimit {
        /// The limit's key (`as`, `cpu`, `nofile`).
        limit: &'static str,
        /// Why the platform cannot provide it, and what to use instead.
        why: &'static str,
    },
}
