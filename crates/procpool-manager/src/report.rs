//! [`ErrorReport`]: a task's failure as the JSON `error` object that `procpool run`'s
//! records and `procpool serve`'s task status share, so a client reads a failure the same
//! way from a batch file and from the control plane.

use std::time::Duration;

use procpool_core::TaskError;
use serde::Serialize;

use crate::errors::MetaError;

/// How a task that did not complete ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// By its own fault, or its worker's (`error.kind` says which).
    Failed,
    /// Stopped from outside: a cancel, or the pool closing.
    Cancelled,
}

/// The `error` object: a `kind` and a `message`, plus the fields of that kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ErrorReport {
    /// `user_error`, `panicked`, `crashed`, `timed_out`, `limit_exceeded`, `cancelled`,
    /// `unknown_task`, `bad_args`, `protocol`, ... (a value that could not cross the wire
    /// is `protocol`; a closed pool is `cancelled`).
    pub kind: &'static str,
    /// `user_error`: the Rust type of the task's error.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    /// `crashed` by a signal: its name, e.g. `SIGSEGV`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// `crashed` by exiting: the exit code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// What happened, for people.
    pub message: String,
    /// `panicked`: `file:line:column`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// `panicked` in a worker run with `RUST_BACKTRACE` set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backtrace: Option<String>,
    /// `crashed`: the last lines the worker wrote to stderr during the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_tail: Option<Vec<String>>,
    /// `timed_out`: the deadline, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<f64>,
    /// The nested task (`$task` in the arguments) whose failure failed the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<FailedInput>,
}

/// `error.input`: which nested task failed a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailedInput {
    /// Its task name.
    pub task: String,
    /// Where it sits in the arguments, JSONPath-like: `$[0][1]` is `args[0][1]`.
    pub path: String,
}

impl ErrorReport {
    /// A report of `kind` with only a message.
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            ..Self::default()
        }
    }

    /// The report of a task's own error.
    pub fn of_task(err: &TaskError) -> (Ending, Self) {
        let mut info = Self::new(err.kind(), err.to_string());
        let ending = match err {
            TaskError::User { type_name, message } => {
                info.type_name = Some(type_name.clone());
                info.message = message.clone();
                Ending::Failed
            }
            TaskError::Panicked {
                message,
                location,
                backtrace,
            } => {
                info.message = message.clone();
                info.location = location.clone();
                info.backtrace = backtrace.clone();
                Ending::Failed
            }
            TaskError::Crashed {
                signal,
                exit_code,
                stderr_tail,
            } => {
                info.signal = signal.map(procpool_os::signal_name);
                info.exit_code = if signal.is_some() { None } else { *exit_code };
                info.stderr_tail = Some(stderr_tail.clone());
                Ending::Failed
            }
            TaskError::TimedOut { after } => {
                info.timeout_ms = Some(millis(*after));
                Ending::Failed
            }
            TaskError::Codec { .. } => {
                info.kind = "protocol";
                Ending::Failed
            }
            TaskError::Cancelled | TaskError::PoolClosed => {
                info.kind = "cancelled";
                Ending::Cancelled
            }
            // limit_exceeded, unknown_task, bad_args, protocol, and kinds added later: the
            // library's name and message are the report.
            _ => Ending::Failed,
        };
        (ending, info)
    }

    /// The report of a task graph's error (a task with nested `$task` arguments): the
    /// failed task's own report, with `input` naming it when it was a nested one.
    pub fn of_meta(err: &MetaError) -> (Ending, Self) {
        match err {
            MetaError::Task {
                name, path, source, ..
            } => {
                let (ending, mut info) = Self::of_task(source);
                // `$` is the graph's own task; anything deeper is a nested one.
                if path != "$" {
                    info.input = Some(FailedInput {
                        task: name.clone(),
                        path: path.clone(),
                    });
                }
                (ending, info)
            }
            MetaError::Cancelled | MetaError::Aborted { .. } => {
                (Ending::Cancelled, Self::new("cancelled", err.to_string()))
            }
            // A value that did not convert.
            MetaError::Codec { .. } => (Ending::Failed, Self::new("protocol", err.to_string())),
            other => (Ending::Failed, Self::new(other.kind(), other.to_string())),
        }
    }
}

/// Milliseconds with microsecond precision.
pub(crate) fn millis(d: Duration) -> f64 {
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
    fn kinds_and_their_fields() {
        let crash = TaskError::Crashed {
            signal: Some(11),
            exit_code: None,
            stderr_tail: vec!["x".into()],
        };
        let (ending, info) = ErrorReport::of_meta(&task_err("$", crash.clone()));
        assert_eq!(ending, Ending::Failed);
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["kind"], "crashed");
        assert_eq!(v["signal"], "SIGSEGV");
        assert_eq!(v["stderr_tail"][0], "x");
        assert!(
            v.get("exit_code").is_none() && v.get("input").is_none(),
            "{v}"
        );

        let (_, info) = ErrorReport::of_meta(&task_err("$[0][1]", crash));
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["input"]["path"], "$[0][1]");
        assert_eq!(v["input"]["task"], "segfault");

        let user = TaskError::User {
            type_name: "MyError".into(),
            message: "bad".into(),
        };
        let v = serde_json::to_value(ErrorReport::of_task(&user).1).unwrap();
        assert_eq!(
            (&v["kind"], &v["type"], &v["message"]),
            (&"user_error".into(), &"MyError".into(), &"bad".into())
        );

        let (ending, info) = ErrorReport::of_meta(&task_err("$", TaskError::PoolClosed));
        assert_eq!((ending, info.kind), (Ending::Cancelled, "cancelled"));
        let (ending, info) = ErrorReport::of_meta(&MetaError::Cancelled);
        assert_eq!((ending, info.kind), (Ending::Cancelled, "cancelled"));
        let codec = TaskError::Codec {
            message: "m".into(),
        };
        assert_eq!(ErrorReport::of_task(&codec).1.kind, "protocol");
        let timeout = TaskError::TimedOut {
            after: Duration::from_millis(250),
        };
        assert_eq!(ErrorReport::of_task(&timeout).1.timeout_ms, Some(250.0));
    }
}
