//! The result records `procpool run` writes, one JSON line per job. This is the output
//! contract scripts parse, so the mapping from the library's `TaskError` to a status and an
//! `error.kind` (plus the extra fields of each kind) lives here and nowhere else.

use std::time::Duration;

use procpool::{MetaError, TaskError};
use serde::Serialize;
use serde_json::Value;

use crate::jobs::{BadJob, Job};

/// How a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    /// The task returned a value.
    Completed,
    /// The task (or the job line) failed; `error` says why.
    Failed,
    /// The task was stopped by the supervisor, not by its own fault.
    Cancelled,
}

/// One output line.
#[derive(Debug, Serialize)]
pub(crate) struct Record {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) task: Option<String>,
    pub(crate) status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<ErrorInfo>,
    /// Times the task was started, retries included (0 if it never started; absent for a
    /// bad job).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) duration_ms: Option<f64>,
    /// 1-based line of the job in the job stream.
    pub(crate) line: u64,
}

/// The `error` object of a record that did not complete.
#[derive(Debug, Default, Serialize)]
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
    /// The nested task (`$task` in the job's arguments) whose failure failed the job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) input: Option<NestedInput>,
}

/// `error.input`: which nested task failed a job.
#[derive(Debug, Serialize)]
pub(crate) struct NestedInput {
    /// Its task name.
    pub(crate) task: String,
    /// Where it sits in the job's `args`, JSONPath-like: `$[0][1]` is `args[0][1]`.
    pub(crate) path: String,
}

impl Record {
    /// The record of a job that ran `attempts` times (0 if the pool refused it or it was
    /// cancelled while queued).
    pub(crate) fn finished(
        job: Job,
        outcome: Result<Value, TaskError>,
        attempts: u32,
        duration: Duration,
    ) -> Record {
        let (status, result, error) = match outcome {
            Ok(value) => (Status::Completed, Some(value), None),
            Err(err) => {
                let (status, info) = describe(err);
                (status, None, Some(info))
            }
        };
        Record {
            id: Some(job.id),
            task: Some(job.task),
            status,
            result,
            error,
            attempts: Some(attempts),
            duration_ms: Some(millis(duration)),
            line: job.line,
        }
    }

    /// The record of a job whose nested tasks failed (its own task never ran): the failed
    /// nested task's kind and details, and `error.input` naming it.
    pub(crate) fn nested_failed(job: Job, err: MetaError, duration: Duration) -> Record {
        let (input, err) = match err {
            MetaError::Task {
                name, path, source, ..
            } => (Some(NestedInput { task: name, path }), *source),
            MetaError::Cancelled => (None, TaskError::Cancelled),
            // Combine steps and shared results are not used for jobs; reported by text.
            other => (
                None,
                TaskError::Codec {
                    message: other.to_string(),
                },
            ),
        };
        let mut record = Record::finished(job, Err(err), 0, duration);
        if let Some(error) = &mut record.error {
            error.input = input;
        }
        record
    }

    /// The record of a line that could not become a job.
    pub(crate) fn bad_job(bad: BadJob) -> Record {
        Record {
            id: bad.id,
            task: bad.task,
            status: Status::Failed,
            result: None,
            error: Some(ErrorInfo {
                kind: "bad_job",
                message: bad.message,
                ..ErrorInfo::default()
            }),
            attempts: None,
            duration_ms: None,
            line: bad.line,
        }
    }

    /// The record as one JSON line, newline included.
    pub(crate) fn to_line(&self) -> Vec<u8> {
        let mut line =
            serde_json::to_vec(self).expect("a record is plain data: strings, numbers, JSON");
        line.push(b'\n');
        line
    }
}

/// Status and error object for a task error. `codec` (a value that could not cross the
/// wire) is reported as `protocol`, and `pool_closed` as a cancel: neither is in the kinds
/// the CLI promises.
fn describe(err: TaskError) -> (Status, ErrorInfo) {
    let message = err.to_string();
    let mut info = ErrorInfo {
        kind: err.kind(),
        message,
        ..ErrorInfo::default()
    };
    let status = match err {
        TaskError::User { type_name, message } => {
            info.type_name = Some(type_name);
            info.message = message;
            Status::Failed
        }
        TaskError::Panicked {
            message,
            location,
            backtrace,
        } => {
            info.message = message;
            info.location = location;
            info.backtrace = backtrace;
            Status::Failed
        }
        TaskError::Crashed {
            signal,
            exit_code,
            stderr_tail,
        } => {
            info.signal = signal.map(procpool::signal_name);
            info.exit_code = if signal.is_some() { None } else { exit_code };
            info.stderr_tail = Some(stderr_tail);
            Status::Failed
        }
        TaskError::TimedOut { after } => {
            info.timeout_ms = Some(millis(after));
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
        // limit_exceeded, unknown_task, bad_args, protocol, and kinds added later: the
        // library's name and message are the record.
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
    use super::*;

    fn job() -> Job {
        Job {
            id: "j".into(),
            task: "t".into(),
            args: Value::Array(vec![]),
            line: 4,
            policy: Default::default(),
        }
    }

    fn json(r: &Record) -> Value {
        serde_json::from_slice(&r.to_line()).unwrap()
    }

    #[test]
    fn completed() {
        let r = Record::finished(job(), Ok(3.into()), 1, Duration::from_micros(420));
        assert_eq!(
            json(&r),
            serde_json::json!({"id": "j", "task": "t", "status": "completed", "result": 3,
                "attempts": 1, "duration_ms": 0.42, "line": 4})
        );
    }

    #[test]
    fn crash_by_signal_and_by_exit() {
        let r = Record::finished(
            job(),
            Err(TaskError::Crashed {
                signal: Some(11),
                exit_code: None,
                stderr_tail: vec!["x".into()],
            }),
            1,
            Duration::ZERO,
        );
        let v = json(&r);
        assert_eq!(v["status"], "failed");
        assert_eq!(v["error"]["kind"], "crashed");
        assert_eq!(v["error"]["signal"], "SIGSEGV");
        assert_eq!(v["error"]["stderr_tail"], serde_json::json!(["x"]));
        assert!(v["error"].get("exit_code").is_none());

        let r = Record::finished(
            job(),
            Err(TaskError::Crashed {
                signal: None,
                exit_code: Some(3),
                stderr_tail: vec![],
            }),
            1,
            Duration::ZERO,
        );
        let v = json(&r);
        assert_eq!(v["error"]["exit_code"], 3);
        assert!(v["error"].get("signal").is_none());
    }

    #[test]
    fn cancel_and_codec() {
        let v = json(&Record::finished(
            job(),
            Err(TaskError::Cancelled),
            0,
            Duration::ZERO,
        ));
        assert_eq!(v["status"], "cancelled");
        assert_eq!(v["error"]["kind"], "cancelled");
        let v = json(&Record::finished(
            job(),
            Err(TaskError::Codec {
                message: "m".into(),
            }),
            1,
            Duration::ZERO,
        ));
        assert_eq!(v["error"]["kind"], "protocol");
    }

    #[test]
    fn timeout_limit_and_attempts() {
        let v = json(&Record::finished(
            job(),
            Err(TaskError::TimedOut {
                after: Duration::from_millis(200),
            }),
            3,
            Duration::from_millis(201),
        ));
        assert_eq!(v["status"], "failed");
        assert_eq!(v["attempts"], 3);
        assert_eq!(v["error"]["kind"], "timed_out");
        assert_eq!(v["error"]["timeout_ms"], 200.0);
        let v = json(&Record::finished(
            job(),
            Err(TaskError::LimitExceeded {
                message: "max_rss: 300 MiB above 256 MiB".into(),
            }),
            1,
            Duration::ZERO,
        ));
        assert_eq!(v["error"]["kind"], "limit_exceeded");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("300 MiB"),
            "{v}"
        );
        assert!(v["error"].get("timeout_ms").is_none(), "{v}");
    }
}
