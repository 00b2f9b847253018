//! The seam between a [`Pool`] and tasks run elsewhere (a broker and its agents).
//!
//! A remote pool is an ordinary [`Pool`] whose commands go to a [`RemoteBackend`] instead
//! of a local dispatcher, so [`Task`], [`TaskHandle`], `MetaTask`, the task manager and
//! the command line work on it unchanged. The backend gets each task as a
//! [`RemoteSubmission`] and feeds its handle from wherever the task runs: started,
//! progress, messages, then exactly one outcome.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use procpool_proto::{Encoding, TaskInfo};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::config::PoolBuilder;
use crate::errors::{PoolError, TaskError};
use crate::host::{Groups, Host, Stop};
use crate::internal::{Command, Submission};
use crate::pool::Pool;
use crate::task::{Task, TaskHandle};
use crate::types::{PoolStatus, Progress, Shutdown};

/// Where a remote [`Pool`] sends its tasks. Implemented by the broker client; every call
/// is made from the pool's router task, so implementations should hand slow work off
/// (spawn) rather than block.
pub trait RemoteBackend: Send + Sync + 'static {
    /// Takes a task over: the backend owns the duty to [`finish`](RemoteSubmission::finish)
    /// it exactly once.
    fn submit(&self, task: RemoteSubmission);
    /// Cancels a task: a queued one never runs, a running one's worker is killed.
    fn cancel(&self, id: Uuid);
    /// Sends a message to a running task.
    fn message(&self, id: Uuid, bytes: Vec<u8>);
    /// A snapshot for [`Pool::status`].
    fn status(&self) -> BoxFuture<'static, PoolStatus>;
    /// Stops: `Drain` waits for the tasks submitted so far, `Kill` cancels them. Resolves
    /// once every task submitted through this backend has its outcome.
    fn shutdown(&self, mode: Shutdown) -> BoxFuture<'static, ()>;
}

/// What a remote pool's live agents serve: the union of their tasks and their workers in
/// total. `workers == 0` while no agent is up: tasks then wait for one.
#[derive(Clone, Debug, Default)]
pub struct Served {
    /// The tasks, each name once.
    pub tasks: Arc<[TaskInfo]>,
    /// Worker slots of the live agents together.
    pub workers: usize,
}

/// A task id derived from a dedupe key, the same on every host and every run: submitters
/// of one remote pool that use it share one run while it is queued or running (a task
/// manager on a remote pool gives it to the task of a cache key).
pub fn dedupe_id(key: &str) -> Uuid {
    // FNV-1a, 128 bits: stable across hosts and Rust versions (unlike std's hasher).
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in key.as_bytes() {
        h ^= u128::from(*b);
        h = h.wrapping_mul(0x0000000001000000000000000000013b);
    }
    uuid::Builder::from_custom_bytes(h.to_be_bytes()).into_uuid()
}

/// A task handed to a [`RemoteBackend`], with the duty to report back to its handle.
/// Dropping it without [`finish`](Self::finish) resolves the handle with
/// [`TaskError::PoolClosed`].
pub struct RemoteSubmission {
    sub: Option<Box<Submission>>,
    /// The pool's bound on the task's unread messages.
    max_unread: usize,
}

impl std::fmt::Debug for RemoteSubmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSubmission")
            .field("id", &self.id())
            .field("name", &self.name())
            .finish_non_exhaustive()
    }
}

impl RemoteSubmission {
    fn sub(&self) -> &Submission {
        self.sub
            .as_ref()
            .expect("a submission is present until finish")
    }

    /// The task id.
    pub fn id(&self) -> Uuid {
        Uuid::from_u128(self.sub().id.0)
    }

    /// The registered function name.
    pub fn name(&self) -> &str {
        &self.sub().name
    }

    /// The encoded arguments.
    pub fn args(&self) -> &[u8] {
        &self.sub().args
    }

    /// How the arguments are encoded (and the result must be).
    pub fn encoding(&self) -> Encoding {
        self.sub().encoding
    }

    /// The task's own deadline per attempt, if it has one.
    pub fn timeout(&self) -> Option<Duration> {
        self.sub().timeout
    }

    /// Crash-class retries the task asked for; `None` leaves it to the executing side.
    pub fn max_retries(&self) -> Option<u32> {
        match self.sub().retry.max_retries() {
            0 => None,
            n => Some(n),
        }
    }

    /// A worker started an attempt of the task (`pid` on whichever host runs it).
    pub fn started(&self, pid: u32) {
        self.sub().shared.start(pid);
    }

    /// Progress from the running task, for its `on_progress` callback.
    pub fn progress(&self, fraction: f32, message: String) {
        let sub = self.sub();
        if let Some(f) = &sub.on_progress {
            f(&Progress {
                task_id: Uuid::from_u128(sub.id.0),
                fraction,
                message,
            });
        }
    }

    /// A message from the running task, for [`TaskHandle::recv`]. Past the pool's bound
    /// on unread messages the task is cancelled and fails `limit_exceeded`, as locally.
    pub fn message(&self, bytes: Vec<u8>) -> Result<(), TaskError> {
        self.sub()
            .messages
            .send(bytes, self.max_unread)
            .map_err(|full| TaskError::LimitExceeded {
                message: format!(
                    "more than {} bytes of messages from the task were left unread \
                     (max_unread_message_bytes)",
                    full.limit
                ),
            })
    }

    /// Resolves the handle: the encoded result, or why there is none.
    pub fn finish(mut self, outcome: Result<bytes::Bytes, TaskError>) {
        if let Some(sub) = self.sub.take() {
            sub.shared.end();
            let _ = sub.reply.send(outcome);
        }
    }
}

impl Drop for RemoteSubmission {
    fn drop(&mut self) {
        if let Some(sub) = self.sub.take() {
            sub.reject(TaskError::PoolClosed);
        }
    }
}

impl Pool {
    /// A pool whose tasks run through `backend` (a broker and its agents) instead of local
    /// workers. `served` is what [`Pool::tasks`] and [`Pool::size`] report, kept current
    /// by the backend as agents come and go (the backend itself refuses names no live
    /// agent serves).
    ///
    /// Must be called inside a tokio runtime: the pool's router is a task of it.
    pub fn from_backend(
        backend: Arc<dyn RemoteBackend>,
        served: watch::Receiver<Served>,
    ) -> Result<Pool, PoolError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            PoolError::Runtime(format!("Pool::from_backend needs a tokio runtime ({e})"))
        })?;
        let mut builder = PoolBuilder::default();
        builder.worker("remote");
        let settings = Arc::new(builder.settings()?);
        let (commands, rx) = mpsc::unbounded_channel();
        runtime.spawn(route(backend, rx, settings.max_unread_bytes));
        let stop = Stop {
            commands: commands.clone(),
            groups: Arc::new(Groups::default()),
            host: Host::Runtime,
        };
        Ok(Pool::new_remote(
            commands,
            served,
            settings,
            stop,
            runtime.id(),
        ))
    }
}

/// Forwards a remote pool's commands to its backend until the last sender is gone.
async fn route(
    backend: Arc<dyn RemoteBackend>,
    mut rx: mpsc::UnboundedReceiver<Command>,
    max_unread: usize,
) {
    while let Some(command) = rx.recv().await {
        match command {
            Command::Submit(sub) => backend.submit(RemoteSubmission {
                sub: Some(sub),
                max_unread,
            }),
            Command::Cancel(id) => backend.cancel(Uuid::from_u128(id.0)),
            Command::Message(id, bytes) => backend.message(Uuid::from_u128(id.0), bytes),
            Command::WorkerPids(tx) => {
                let _ = tx.send(Vec::new());
            }
            Command::Status(tx) => {
                let status = backend.status();
                tokio::spawn(async move {
                    let _ = tx.send(status.await);
                });
            }
            Command::Shutdown(mode, tx) => {
                let done = backend.shutdown(mode);
                tokio::spawn(async move {
                    done.await;
                    let _ = tx.send(());
                });
            }
        }
    }
}

impl<R> Task<R> {
    /// A task from arguments already encoded with `encoding` (an agent runs what a
    /// submitter encoded, without knowing the types).
    pub fn encoded(name: impl Into<String>, args: Vec<u8>, encoding: Encoding) -> Self {
        Task::new(name.into(), Ok(args), encoding)
    }
}

impl<R: DeserializeOwned> TaskHandle<R> {
    /// The result as the worker encoded it, undecoded (an agent forwards it as it is).
    pub async fn into_encoded(mut self) -> Result<bytes::Bytes, TaskError> {
        if let Some(err) = self.early.take() {
            return Err(err);
        }
        (&mut self.reply)
            .await
            .unwrap_or(Err(TaskError::PoolClosed))
    }
}
