//! How a task is reported: its status, and for a failure the `error` object of
//! `procpool run`'s records ([`ErrorReport`]), so a client reads a failure the same way
//! from a batch file and from the control plane.

use procpool::MetaError;
use procpool::records::{Ending, ErrorReport};
use serde::Serialize;

/// Where a task is in its life, as `GET /v1/tasks/{id}` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    /// Accepted; none of its tasks has reached a worker yet.
    Pending,
    /// At least one of its tasks has reached a worker.
    Running,
    /// It returned a value (`result`).
    Completed,
    /// It, or one of its nested tasks, failed (`error`).
    Failed,
    /// It was cancelled (`DELETE`, or the server's shutdown).
    Cancelled,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

impl From<Ending> for Status {
    fn from(e: Ending) -> Self {
        match e {
            Ending::Failed => Status::Failed,
            Ending::Cancelled => Status::Cancelled,
        }
    }
}

/// Status and error object of a task that ended without a result.
pub(crate) fn describe(err: &MetaError) -> (Status, ErrorReport) {
    let (ending, report) = ErrorReport::of_meta(err);
    (ending.into(), report)
}
