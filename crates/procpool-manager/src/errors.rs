//! Errors of MetaTask runs, of the task manager, of result stores and of JSON task graphs.

use procpool_core::TaskError;
use thiserror::Error;
use uuid::Uuid;

/// Why a [`MetaTask`](crate::MetaTask) run, or a task run by a
/// [`TaskManager`](crate::TaskManager), produced no result.
///
/// A failing task keeps its [`TaskError`] (and so its kind) inside [`MetaError::Task`],
/// next to the task's id, name and place in the inputs; the siblings it took down are not
/// reported, only the first failure is.
#[derive(Clone, Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum MetaError {
    /// A task of the run failed: an input, or the task that combines them
    /// ([`MetaTask::process_as_task`](crate::MetaTask::process_as_task)). Every other
    /// task of the run still running was cancelled.
    #[error("task {name:?} (id {id}) at {path} failed")]
    Task {
        /// The failed task's id.
        id: Uuid,
        /// Its registered function name.
        name: String,
        /// Where it sits in the inputs, JSONPath-like: `$` is the MetaTask itself (its
        /// combining task), `$[2]` the third element of a `Vec` input, `$["a"]` a map
        /// entry, `$.0` a tuple field, `$[1][0]` an input of a nested MetaTask.
        path: String,
        /// The task's own error, with its kind (boxed: it is the large part of this
        /// error, which travels through every future of a run).
        #[source]
        source: Box<TaskError>,
    },
    /// The combine closure of a MetaTask returned an error.
    #[error("combine step of {name:?} (id {id}) failed: {message}")]
    Combine {
        /// The MetaTask's id.
        id: Uuid,
        /// The MetaTask's name.
        name: String,
        /// The closure's error, as text.
        message: String,
    },
    /// The run was cancelled: by its handle, by its last consumer going away, or by
    /// [`TaskManager::cancel_task`](crate::TaskManager::cancel_task).
    #[error("the run was cancelled")]
    Cancelled,
    /// A result could not be converted to or from JSON (shared and managed results are kept
    /// as JSON).
    #[error("codec error: {message}")]
    Codec {
        /// What did not convert.
        message: String,
    },
    /// The run ended without a result because what drove it went away: a combine step
    /// panicked, or the runtime of the task manager shut down. Its tasks were cancelled.
    #[error("the run was aborted: {message}")]
    Aborted {
        /// What happened.
        message: String,
    },
}

impl MetaError {
    /// The kind in snake_case: a failed task's own kind ([`TaskError::kind`]), or
    /// `combine_failed`, `cancelled`, `codec`, `aborted`.
    pub fn kind(&self) -> &'static str {
        match self {
            MetaError::Task { source, .. } => source.kind(),
            MetaError::Combine { .. } => "combine_failed",
            MetaError::Cancelled => "cancelled",
            MetaError::Codec { .. } => "codec",
            MetaError::Aborted { .. } => "aborted",
        }
    }

    /// The failed task's own error, when a task failed.
    pub fn task_error(&self) -> Option<&TaskError> {
        match self {
            MetaError::Task { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }

    /// Id of the failed task, when a task failed.
    pub fn failed_id(&self) -> Option<Uuid> {
        match self {
            MetaError::Task { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// Registered name of the failed task, when a task failed.
    pub fn failed_name(&self) -> Option<&str> {
        match self {
            MetaError::Task { name, .. } => Some(name),
            _ => None,
        }
    }

    /// Place of the failed task in the inputs (see [`MetaError::Task`]), when a task failed.
    pub fn path(&self) -> Option<&str> {
        match self {
            MetaError::Task { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The run, or the task that ended it, was cancelled.
    pub fn is_cancelled(&self) -> bool {
        match self {
            MetaError::Cancelled => true,
            MetaError::Task { source, .. } => source.is_cancelled(),
            _ => false,
        }
    }
}

/// A [`TaskManager`](crate::TaskManager) operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// No task with this id is running (it never ran, or it already ended).
    #[error("no running task has id {id}")]
    UnknownTask {
        /// The id asked for.
        id: Uuid,
    },
    /// No result is stored for this id: it was never stored, was already taken (results
    /// are taken once), expired, or was evicted to make room.
    #[error("no result for task {id}: never stored, already taken, expired or evicted")]
    NoResult {
        /// The id asked for.
        id: Uuid,
    },
    /// A result could not be converted to or from JSON.
    #[error("error converting the result of task {id}: {message}")]
    Codec {
        /// The task id.
        id: Uuid,
        /// The serde_json message.
        message: String,
    },
    /// The result store failed.
    #[error("result store error")]
    Store(#[from] StoreError),
}

/// A [`Store`](crate::Store) operation failed.
#[derive(Clone, Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum StoreError {
    /// The value alone is larger than the store's capacity; nothing was stored.
    #[error("a value of {size} bytes does not fit a store of {capacity} bytes")]
    TooLarge {
        /// Size of the value.
        size: usize,
        /// The store's capacity.
        capacity: usize,
    },
    /// The store's backend failed (for stores outside this process).
    #[error("store backend error: {message}")]
    Backend {
        /// What went wrong.
        message: String,
    },
}

/// A JSON value is not a valid [`JsonGraph`](crate::JsonGraph): a `{"$task": ...}` object
/// is malformed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("nested task at {path}: {message}")]
pub struct JsonGraphError {
    /// Where the malformed object is, JSONPath-like (`$` is the value parsed).
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}
