//! [`Shared`]: the state every route, the event forwarder and the sweeper read and write.
//! Below the modules that use it (server, routes, events), so none of them imports
//! another's state.

use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use procpool::{MetaError, TaskManager};
use serde_json::Value;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::clients::Clients;
use crate::metrics::Metrics;
use crate::report::Status;
use crate::settings::ServeSettings;
use crate::table::{Lookup, Table};

/// The state every route, the forwarder and the sweeper share.
pub(crate) struct Shared {
    pub(crate) manager: TaskManager,
    pub(crate) table: Mutex<Table>,
    /// Events to the WebSocket clients.
    pub(crate) clients: Clients,
    pub(crate) metrics: Metrics,
    pub(crate) settings: ServeSettings,
    /// Worker processes started by the time the pool was up.
    pub(crate) initial_starts: u64,
    /// Cleared at the first stop signal: submissions get `503` from then on.
    pub(crate) accepting: AtomicBool,
    /// Set once the last events went out: the WebSocket streams close.
    pub(crate) closing: watch::Sender<bool>,
    /// Woken whenever a task ends (a drain waits on it).
    pub(crate) ended: Notify,
    /// Set by [`ServeControl::drain`](crate::ServeControl::drain): stop as on a signal,
    /// with a drain.
    pub(crate) drain: watch::Sender<bool>,
}

/// What [`Shared::cancel`] did.
pub(crate) enum Cancel {
    /// It ended cancelled.
    Cancelled,
    /// It had ended otherwise, or ended on its own before the cancel reached it.
    AlreadyFinished,
    /// It ended and its result expired.
    Expired,
    Unknown,
}

impl Shared {
    pub(crate) fn table(&self) -> MutexGuard<'_, Table> {
        // Every update is a single insert, remove or field write: consistent after a panic.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the outcome of task `id` once (the forwarder and the task's own watcher
    /// both get it; the first one records it).
    pub(crate) fn finish(&self, id: Uuid, outcome: &Result<Value, MetaError>, now: Instant) {
        let finished = self.table().finish(id, outcome, now);
        if let Some(f) = finished {
            self.metrics.ended(f.status, f.kind, f.took);
            self.ended.notify_waiters();
        }
    }

    /// Cancels task `id` for every submission that shares it; returns once it ended (its
    /// workers killed and reaped, its outcome recorded and published).
    pub(crate) async fn cancel(&self, id: Uuid) -> Cancel {
        let pending = {
            let mut table = self.table();
            match table.lookup(id, Instant::now()) {
                Lookup::Known(entry) => match &entry.pending {
                    Some(pending) => pending.clone(),
                    None => return Cancel::AlreadyFinished,
                },
                Lookup::Expired => return Cancel::Expired,
                Lookup::Unknown => return Cancel::Unknown,
            }
        };
        // It may have ended on its own just before (then it is not running any more, and
        // that is the answer).
        let cancelled = self.manager.cancel_task(id, true).await.is_ok();
        let outcome = pending.value().await;
        self.finish(id, &outcome, Instant::now());
        let mut table = self.table();
        let Some(entry) = table.entry(id) else {
            return Cancel::Expired;
        };
        let ended_cancelled = entry
            .end
            .as_ref()
            .is_some_and(|e| e.status == Status::Cancelled);
        if cancelled && ended_cancelled {
            Cancel::Cancelled
        } else {
            Cancel::AlreadyFinished
        }
    }

    /// Resolves once no accepted task is left running.
    pub(crate) async fn idle(&self) {
        loop {
            let ended = self.ended.notified();
            if self.table().active() == 0 {
                return;
            }
            ended.await;
        }
    }
}
