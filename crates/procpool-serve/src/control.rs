//! [`ServeControl`]: the server's tasks and its drain for an operator on the same host
//! (`procpool ctl` on `procpool serve`), beside the HTTP routes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::shared::{Cancel, Shared};

/// Lists and cancels the tasks of a [`Server`](crate::Server) and drains it, from outside
/// the HTTP API. From [`Server::control`](crate::Server::control); cheap to clone.
#[derive(Clone)]
pub struct ServeControl {
    shared: Arc<Shared>,
}

/// A task the server accepted that has not ended, as [`ServeControl::tasks`] lists it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LiveTask {
    /// Its id (`task_id` of the HTTP API).
    pub id: Uuid,
    /// The task's name (the top-level call).
    pub task: String,
    /// One of its tasks has reached a worker (else it is pending: queued, or waiting for
    /// a worker to start).
    pub running: bool,
    /// The workers running its tasks now (several for a graph of nested tasks).
    pub worker_pids: Vec<u32>,
    /// Time since it was accepted.
    pub elapsed: Duration,
}

/// What [`ServeControl::cancel`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelOutcome {
    /// Cancelled as a `DELETE` does: its workers are killed and reaped, its status says
    /// `cancelled` and its WebSocket subscribers got the event.
    Cancelled {
        /// It was on a worker (else still pending).
        was_running: bool,
    },
    /// It had ended already (its outcome stands).
    AlreadyFinished,
    /// No task of the server has this id (or its result expired).
    Unknown,
}

impl ServeControl {
    pub(crate) fn new(shared: Arc<Shared>) -> ServeControl {
        ServeControl { shared }
    }

    /// The tasks not ended yet: running ones first, each oldest first.
    pub fn tasks(&self) -> Vec<LiveTask> {
        let now = Instant::now();
        let mut table = self.shared.table();
        let mut tasks: Vec<LiveTask> = table
            .active_entries()
            .map(|(id, entry)| {
                let worker_pids = self.shared.manager.worker_pids(*id).unwrap_or_default();
                entry.started |= !worker_pids.is_empty();
                LiveTask {
                    id: *id,
                    task: entry.task.clone(),
                    running: entry.started,
                    worker_pids,
                    elapsed: now.saturating_duration_since(entry.accepted),
                }
            })
            .collect();
        tasks.sort_by(|a, b| {
            (b.running, b.elapsed)
                .cmp(&(a.running, a.elapsed))
                .then(a.id.cmp(&b.id))
        });
        tasks
    }

    /// Cancels task `id` as `DELETE /v1/tasks/{id}` does; returns once it ended.
    pub async fn cancel(&self, id: Uuid) -> CancelOutcome {
        let on_worker = !self
            .shared
            .manager
            .worker_pids(id)
            .unwrap_or_default()
            .is_empty();
        let was_running = on_worker || self.shared.table().entry(id).is_some_and(|e| e.started);
        match self.shared.cancel(id).await {
            Cancel::Cancelled => CancelOutcome::Cancelled { was_running },
            Cancel::AlreadyFinished => CancelOutcome::AlreadyFinished,
            Cancel::Expired | Cancel::Unknown => CancelOutcome::Unknown,
        }
    }

    /// Drains the server: [`Server::run`](crate::Server::run) stops as on a stop signal
    /// with [`OnSignal::Drain`](crate::OnSignal::Drain), whatever the settings say: no
    /// new connection, submissions get `503`, the running tasks finish, then it returns
    /// `None`. A second call changes nothing.
    pub fn drain(&self) {
        self.shared.drain.send_replace(true);
    }
}

impl std::fmt::Debug for ServeControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeControl").finish_non_exhaustive()
    }
}
