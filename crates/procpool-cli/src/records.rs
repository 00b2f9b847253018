//! The result records `procpool run` writes, one JSON line per job: the output contract
//! scripts parse. The `error` object is the library's [`ErrorReport`], the one that
//! `procpool serve` gives too.

use std::time::Duration;

use procpool::records::{Ending, ErrorReport};
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
    pub(crate) error: Option<ErrorReport>,
    /// Times the task was started, retries included (0 if it never started; absent for a
    /// bad job).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) duration_ms: Option<f64>,
    /// 1-based line of the job in the job stream.
    pub(crate) line: u64,
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
                let (ending, report) = ErrorReport::of_task(&err);
                (ending.into(), None, Some(report))
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
        let (ending, report) = ErrorReport::of_meta(&err);
        Record {
            id: Some(job.id),
            task: Some(job.task),
            status: ending.into(),
            result: None,
            error: Some(report),
            attempts: Some(0),
            duration_ms: Some(millis(duration)),
            line: job.line,
        }
    }

    /// The record of a line that could not become a job.
    pub(crate) fn bad_job(bad: BadJob) -> Record {
        Record {
            id: bad.id,
            task: bad.task,
            status: Status::Failed,
            result: None,
            error: Some(ErrorReport::new("bad_job", bad.message)),
            attempts: None,
            duration_ms: None,
            line: bad.line,
        }
    }

    /// The record as one JSON line, newline included.
    /// Appends the record and its newline to `buf` (a batch of lines to write).
    pub(crate) fn append_line(&self, buf: &mut Vec<u8>) {
        serde_json::to_writer(&mut *buf, self)
            .expect("a record is plain data: strings, numbers, JSON");
        buf.push(b'\n');
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
            kwargs: Default::default(),
            line: 4,
            policy: Default::default(),
        }
    }

    fn json(r: &Record) -> Value {
        let mut line = Vec::new();
        r.append_line(&mut line);
        serde_json::from_slice(&line).unwrap()
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
