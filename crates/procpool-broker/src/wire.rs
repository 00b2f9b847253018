//! What the broker stores about a task, encoded and decoded. Every decoder takes bytes
//! from the broker as untrusted: sizes are checked against the frame cap first, and a
//! malformed value becomes an error, never a panic.

use std::time::Duration;

use procpool_core::TaskError;
use serde_json::{Value, json};

/// One entry of a task's event stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Queued (or queued again by a new submit).
    Queued,
    /// A worker started an attempt.
    Started {
        /// 1-based attempt.
        attempt: u32,
        /// The worker's pid on its agent's host.
        pid: u32,
    },
    /// Progress of the running attempt.
    Progress {
        /// Completed fraction.
        fraction: f32,
        /// Step description.
        message: String,
    },
    /// A message from the running task.
    Message(Vec<u8>),
    /// The agent of an attempt died; the task is queued again.
    Requeued {
        /// The attempt that was lost.
        attempt: u32,
    },
    /// The terminal event.
    Done {
        /// The attempt that ended it (0 if it never started).
        attempt: u32,
        /// The encoded result, or why there is none.
        outcome: Result<bytes::Bytes, TaskError>,
    },
}

fn field<'a>(fields: &'a [(Vec<u8>, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(k, _)| k == name.as_bytes())
        .map(|(_, v)| v.as_slice())
}

fn number<T: std::str::FromStr>(bytes: Option<&[u8]>) -> Option<T> {
    std::str::from_utf8(bytes?).ok()?.parse().ok()
}

/// Decodes one event from its stream fields; `max` caps every field's size.
pub fn decode_event(fields: &[(Vec<u8>, Vec<u8>)], max: usize) -> Result<Event, String> {
    if let Some((k, v)) = fields.iter().find(|(k, v)| k.len() + v.len() > max) {
        return Err(format!(
            "event field {:?} of {} bytes exceeds the {max} byte frame cap",
            String::from_utf8_lossy(&k[..k.len().min(32)]),
            v.len()
        ));
    }
    let attempt = number::<u32>(field(fields, "a")).unwrap_or(0);
    let data = field(fields, "d").unwrap_or_default();
    match field(fields, "k") {
        Some(b"queued") => Ok(Event::Queued),
        Some(b"started") => Ok(Event::Started {
            attempt,
            pid: number(Some(data)).ok_or("started event without a pid")?,
        }),
        Some(b"progress") => {
            let v: Value = serde_json::from_slice(data).map_err(|e| e.to_string())?;
            Ok(Event::Progress {
                fraction: v["f"].as_f64().unwrap_or(0.0) as f32,
                message: v["m"].as_str().unwrap_or_default().to_owned(),
            })
        }
        Some(b"message") => Ok(Event::Message(data.to_vec())),
        Some(b"requeued") => Ok(Event::Requeued { attempt }),
        Some(b"done") => {
            let value = field(fields, "v").unwrap_or_default();
            let outcome = match field(fields, "s") {
                Some(b"ok") => Ok(bytes::Bytes::copy_from_slice(value)),
                _ => Err(decode_error(value)),
            };
            Ok(Event::Done { attempt, outcome })
        }
        other => Err(format!(
            "unknown event kind {:?}",
            other.map(|k| String::from_utf8_lossy(&k[..k.len().min(32)]).into_owned())
        )),
    }
}

/// A stored result (`ok:` bytes or `err:` error JSON), from `take_result`.
pub fn decode_result(stored: &[u8]) -> Result<bytes::Bytes, TaskError> {
    if let Some(v) = stored.strip_prefix(b"ok:") {
        Ok(bytes::Bytes::copy_from_slice(v))
    } else {
        Err(decode_error(stored.strip_prefix(b"err:").unwrap_or(stored)))
    }
}

/// A task error as JSON, kind first, the way records show it.
pub fn encode_error(e: &TaskError) -> String {
    let mut v = json!({ "kind": e.kind(), "message": e.to_string() });
    let extra = match e {
        TaskError::User { type_name, message } => json!({"type_name": type_name, "text": message}),
        TaskError::Panicked {
            message, location, ..
        } => json!({"text": message, "location": location}),
        TaskError::Crashed {
            signal,
            exit_code,
            stderr_tail,
        } => json!({"signal": signal, "exit_code": exit_code, "stderr_tail": stderr_tail}),
        TaskError::TimedOut { after } => json!({"after_ms": after.as_millis() as u64}),
        TaskError::LimitExceeded { message }
        | TaskError::BadArgs { message }
        | TaskError::Protocol { message }
        | TaskError::Codec { message }
        | TaskError::PoolUnhealthy { message }
        | TaskError::Lost { message } => json!({"text": message}),
        TaskError::UnknownTask { name } => json!({"name": name}),
        _ => json!({}),
    };
    if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
        v.extend(extra);
    }
    v.to_string()
}

/// The inverse of [`encode_error`]; anything unreadable becomes a protocol error.
pub fn decode_error(bytes: &[u8]) -> TaskError {
    let v: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            return TaskError::Protocol {
                message: format!("unreadable error from the broker: {e}"),
            };
        }
    };
    let s = |k: &str| v[k].as_str().map(str::to_owned);
    let text = || s("text").or_else(|| s("message")).unwrap_or_default();
    match v["kind"].as_str().unwrap_or_default() {
        "user_error" => TaskError::User {
            type_name: s("type_name").unwrap_or_default(),
            message: text(),
        },
        "panicked" => TaskError::Panicked {
            message: text(),
            location: s("location"),
            backtrace: None,
        },
        "crashed" => TaskError::Crashed {
            signal: v["signal"].as_i64().map(|n| n as i32),
            exit_code: v["exit_code"].as_i64().map(|n| n as i32),
            stderr_tail: v["stderr_tail"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|l| l.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        },
        "timed_out" => TaskError::TimedOut {
            after: Duration::from_millis(v["after_ms"].as_u64().unwrap_or(0)),
        },
        "limit_exceeded" => TaskError::LimitExceeded { message: text() },
        "cancelled" => TaskError::Cancelled,
        "unknown_task" => TaskError::UnknownTask {
            name: s("name").unwrap_or_default(),
        },
        "bad_args" => TaskError::BadArgs { message: text() },
        "codec" => TaskError::Codec { message: text() },
        "pool_unhealthy" => TaskError::PoolUnhealthy { message: text() },
        "pool_closed" => TaskError::PoolClosed,
        "lost" => TaskError::Lost { message: text() },
        _ => TaskError::Protocol { message: text() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_survive_the_round_trip() {
        for e in [
            TaskError::Crashed {
                signal: Some(9),
                exit_code: None,
                stderr_tail: vec!["boom".into()],
            },
            TaskError::User {
                type_name: "String".into(),
                message: "no".into(),
            },
            TaskError::TimedOut {
                after: Duration::from_millis(250),
            },
            TaskError::Cancelled,
            TaskError::Lost {
                message: "gone".into(),
            },
        ] {
            assert_eq!(decode_error(encode_error(&e).as_bytes()), e);
        }
    }

    #[test]
    fn hostile_events_are_errors_not_panics() {
        let f = |k: &str, v: &[u8]| (k.as_bytes().to_vec(), v.to_vec());
        assert!(decode_event(&[f("k", b"started"), f("d", b"x")], 1024).is_err());
        assert!(decode_event(&[f("k", b"nope")], 1024).is_err());
        assert!(decode_event(&[f("k", b"message"), f("d", &[0; 2048])], 1024).is_err());
        assert!(decode_event(&[f("k", b"progress"), f("d", b"{")], 1024).is_err());
        let done = decode_event(&[f("k", b"done"), f("s", b"err"), f("v", b"\xff")], 1024);
        assert!(matches!(
            done,
            Ok(Event::Done {
                outcome: Err(TaskError::Protocol { .. }),
                ..
            })
        ));
    }
}
