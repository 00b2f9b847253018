//! How a finished task is reported: its status and its `error` object. The vocabulary is
//! the one of `procpool run`'s result records (same kinds, same extra fields), so a client
//! reads a failure the same way from a batch file and from the control plane.

use std::time::Duration;

use procpool::{MetaError, TaskError};
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

/// The `error` object of a task that did not complete.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct ErrorInfo {
    pub(crate) kind: &'static str,
    /// `user_error`: the Rust type of the task's error.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub(crate) type_name: Option<String>,
    /// `crashed` by a signal: its name, e.g. `SIGSEGV`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) signal: Option<String>,
    /// `crashed` by exiting: the exit code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) exit_code: Option<i32>,
    pub(crate) message: String,
    /// `panicked`: `file:line:column`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) location: Option<String>,
    /// `panicked` in a worker run with `RUST_BACKTRACE` set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) backtrace: Option<String>,
    /// `crashed`: the last lines the worker wrote to stderr during the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stderr_tail: Option<Vec<String>>,
    /// `timed_out`: the deadline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) timeout_ms: Option<f64>,
    /// The nested task (`$task` in the arguments) whose failure failed the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) input: Option<NestedInput>,
}

/// `error.input`: which nested task failed a task.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct NestedInput {
    /// Its task name.
    pub(crate) task: String,
    /// Where it sits in the arguments, JSONPath-like: `$[0][1]` is `args[0][1]`.
    pub(crate) path: String,
}

/// Status and error object of a task that ended without a result.
pub(crate) fn describe(err: &MetaError) -> (Status, ErrorInfo) {
    match err {
        MetaError::Task {
            name, path, source, ..
        } => {
            let (status, mut info) = describe_task(source);
            // `$` is the task itself (its own call after the nested ones); anything
            // deeper is a nested task.
            if path != "$" {
                info.input = Some(NestedInput {
                    task: name.clone(),
                    path: path.clone(),
                });
            }
            (status, info)
        }
        // Cancelled by a client, or by the shutdown (which drops the manager's drivers).
        MetaError::Cancelled | MetaError::Aborted { .. } => (
            Status::Cancelled,
            ErrorInfo {
                kind: "cancelled",
                message: err.to_string(),
                ..ErrorInfo::default()
            },
        ),
        // A value that did not convert: `procpool run` calls this `protocol` too.
        MetaError::Codec { .. } => (
            Status::Failed,
            ErrorInfo {
                kind: "protocol",
                message: err.to_string(),
                ..ErrorInfo::default()
            },
        ),
        // Combine steps are not used here; reported by their own kind all the same.
        other => (
            Status::Failed,
            ErrorInfo {
                kind: other.kind(),
                message: other.to_string(),
                ..ErrorInfo::default()
            },
        ),
    }
}

/// The task's own error. `codec` is reported as `protocol` and `pool_closed` as a cancel,
/// as in `procpool run`.
fn describe_task(err: &TaskError) -> (Status, ErrorInfo) {
    let mut info = ErrorInfo {
        kind: err.kind(),
        message: err.to_string(),
        ..ErrorInfo::default()
    };
    let status = match err {
        TaskError::User { type_name, message } => {
            info.type_name = Some(type_name.clone());
            info.message = message.clone();
            Status::Failed
        }
        TaskError::Panicked {
            message,
            location,
            backtrace,
        } => {
            info.message = message.clone();
            info.location = location.clone();
            info.backtrace = backtrace.clone();
            Status::Failed
        }
        TaskError::Crashed {
            signal,
            exit_code,
            stderr_tail,
        } => {
            info.signal = signal.map(procpool::signal_name);
            info.exit_code = if signal.is_some() { None } else { *exit_code };
            info.stderr_tail = Some(stderr_tail.clone());
            Status::Failed
        }
        TaskError::TimedOut { after } => {
            info.timeout_ms = Some(millis(*after));
            Status::Failed
        }
        TaskError::Codec { .. } => {
            info.kind = "protocol";
            Status::Failed
        }
        TaskError::Cancelled | TaskError::PoolClosed => {
            info.kind = "cancelled";
            Status::Cancelled
        }
        _ => Status::Failed,
    };
    (status, info)
}

/// Milliseconds with microsecond precision.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn task_err(path: &str, source: TaskError) -> MetaError {
        MetaError::Task {
            id: Uuid::nil(),
            name: "segfault".into(),
            path: path.into(),
            source: Box::new(source),
        }
    }

    #[test]
    fn kinds_and_details_match_the_run_records() {
        let crash = TaskError::Crashed {
            signal: Some(11),
            exit_code: None,
            stderr_tail: vec!["x".into()],
        };
        let (status, info) = describe(&task_err("$", crash.clone()));
        assert_eq!(status, Status::Failed);
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["kind"], "crashed");
        assert_eq!(v["signal"], "SIGSEGV");
        assert!(v.get("input").is_none(), "the task itself: {v}");

        let (_, info) = describe(&task_err("$[0][1]", crash));
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["input"]["path"], "$[0][1]");
        assert_eq!(v["input"]["task"], "segfault");

        let (status, info) = describe(&task_err("$", TaskError::PoolClosed));
        assert_eq!((status, info.kind), (Status::Cancelled, "cancelled"));
        let (status, info) = describe(&MetaError::Cancelled);
        assert_eq!((status, info.kind), (Status::Cancelled, "cancelled"));
        let codec = TaskError::Codec {
            message: "m".into(),
        };
        assert_eq!(describe(&task_err("$", codec)).1.kind, "protocol");
        let timeout = TaskError::TimedOut {
            after: Duration::from_millis(250),
        };
        assert_eq!(describe(&task_err("$", timeout)).1.timeout_ms, Some(250.0));
    }
}
