//! [`TaskEvent`]: what a task manager publishes on a channel, and the bus that carries it.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Serialize, Serializer};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::errors::MetaError;

/// What happened to a task run by a [`TaskManager`](crate::TaskManager), published on the
/// channels it was run with.
///
/// `task_id` is always the task that was run (the root). Its inputs, and the inputs of
/// nested MetaTasks, appear only as `input_id` of progress and messages: an input's end is
/// never published, so it cannot be taken for the end of the task. Per task and channel:
/// `Started` first, then progress and messages in the order the tasks sent them, then
/// exactly one terminal event (`Completed`, `Failed` or `Cancelled`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskEvent {
    /// The task was accepted for this channel: started, attached to the running task with
    /// its cache key or id, or about to be answered from the cache.
    Started {
        /// The task.
        task_id: Uuid,
        /// Its name.
        name: String,
    },
    /// A task of the run reported progress.
    Progress {
        /// The task that was run.
        task_id: Uuid,
        /// The reporting task: the task itself, or one of its inputs.
        input_id: Uuid,
        /// Completed fraction of the reporting task, 0.0 to 1.0.
        fraction: f32,
        /// Description of the step.
        message: String,
    },
    /// A task of the run sent a message to the parent (`procpool::send_message`).
    Message {
        /// The task that was run.
        task_id: Uuid,
        /// The sending task: the task itself, or one of its inputs.
        input_id: Uuid,
        /// The message.
        bytes: Vec<u8>,
    },
    /// The task completed; its result is in the store (`TaskManager::get_result`) and in
    /// every consumer's [`PendingTask`](crate::PendingTask).
    Completed {
        /// The task.
        task_id: Uuid,
    },
    /// The task failed.
    Failed {
        /// The task.
        task_id: Uuid,
        /// Why (serialized as `kind`, `message`, and the failed input if a task failed).
        #[serde(serialize_with = "serialize_error")]
        error: MetaError,
    },
    /// The task was cancelled (for this channel: its consumers on this channel are gone).
    Cancelled {
        /// The task.
        task_id: Uuid,
    },
}

impl TaskEvent {
    /// The task the event is about (the task that was run, not an input).
    pub fn task_id(&self) -> Uuid {
        match self {
            TaskEvent::Started { task_id, .. }
            | TaskEvent::Progress { task_id, .. }
            | TaskEvent::Message { task_id, .. }
            | TaskEvent::Completed { task_id }
            | TaskEvent::Failed { task_id, .. }
            | TaskEvent::Cancelled { task_id } => *task_id,
        }
    }

    /// Whether this is the last event of its task on its channel.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            TaskEvent::Completed { .. } | TaskEvent::Failed { .. } | TaskEvent::Cancelled { .. }
        )
    }

    /// The terminal event for an outcome.
    pub(crate) fn terminal<T>(task_id: Uuid, outcome: &Result<T, MetaError>) -> TaskEvent {
        match outcome {
            Ok(_) => TaskEvent::Completed { task_id },
            Err(e) if e.is_cancelled() => TaskEvent::Cancelled { task_id },
            Err(e) => TaskEvent::Failed {
                task_id,
                error: e.clone(),
            },
        }
    }
}

fn serialize_error<S: Serializer>(error: &MetaError, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Input<'a> {
        id: Uuid,
        name: &'a str,
        path: &'a str,
    }
    #[derive(Serialize)]
    struct Error<'a> {
        kind: &'static str,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        input: Option<Input<'a>>,
    }
    let (message, input) = match error {
        MetaError::Task {
            id,
            name,
            path,
            source,
        } => (
            source.to_string(),
            Some(Input {
                id: *id,
                name,
                path,
            }),
        ),
        other => (other.to_string(), None),
    };
    Error {
        kind: error.kind(),
        message,
        input,
    }
    .serialize(s)
}

/// The channels of one task manager: a broadcast sender per channel that has (or had)
/// subscribers.
pub(crate) struct EventBus {
    capacity: usize,
    channels: Mutex<HashMap<String, broadcast::Sender<TaskEvent>>>,
}

impl EventBus {
    pub(crate) fn new(capacity: usize) -> Self {
        EventBus {
            capacity: capacity.max(1),
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<TaskEvent>>> {
        // Single inserts and removes: consistent even after a panic elsewhere.
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn subscribe(&self, channel: &str) -> broadcast::Receiver<TaskEvent> {
        let mut channels = self.lock();
        match channels.get(channel) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(self.capacity);
                channels.insert(channel.to_owned(), tx);
                rx
            }
        }
    }

    /// Sends `event` once to each distinct channel of `channels`.
    pub(crate) fn publish<'a>(
        &self,
        channels: impl IntoIterator<Item = &'a str>,
        event: &TaskEvent,
    ) {
        let mut targets: Vec<&str> = channels.into_iter().collect();
        if targets.is_empty() {
            return;
        }
        targets.sort_unstable();
        targets.dedup();
        let mut map = self.lock();
        for channel in targets {
            // No sender: nobody ever subscribed. A failed send: every subscriber is gone,
            // so the sender goes too (a later subscriber makes a new one).
            if let Some(tx) = map.get(channel)
                && tx.send(event.clone()).is_err()
            {
                map.remove(channel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use procpool_core::TaskError;
    use serde_json::json;

    use super::*;

    #[test]
    fn serialized_failure_names_the_input() {
        let id = Uuid::nil();
        let ev = TaskEvent::Failed {
            task_id: id,
            error: MetaError::Task {
                id,
                name: "segfault".into(),
                path: "$[3]".into(),
                source: Box::new(TaskError::Crashed {
                    signal: Some(11),
                    exit_code: None,
                    stderr_tail: vec![],
                }),
            },
        };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["event"], "failed");
        assert_eq!(v["error"]["kind"], "crashed");
        assert_eq!(v["error"]["input"]["path"], "$[3]");
        assert_eq!(
            serde_json::to_value(TaskEvent::Completed { task_id: id }).unwrap(),
            json!({"event": "completed", "task_id": id})
        );
    }

    #[test]
    fn each_channel_once_and_dead_channels_dropped() {
        let bus = EventBus::new(8);
        let mut rx = bus.subscribe("a");
        let ev = TaskEvent::Completed {
            task_id: Uuid::nil(),
        };
        bus.publish(["a", "a", "b"], &ev);
        assert_eq!(rx.try_recv().unwrap(), ev);
        assert!(rx.try_recv().is_err(), "published once per channel");
        drop(rx);
        bus.publish(["a"], &ev);
        assert!(bus.lock().is_empty());
    }
}
