//! The live jobs of a `procpool run`, as `procpool ctl` sees them: each dispatched job
//! holds a [`Ticket`] on the [`Board`] until its record is made, saying which worker runs
//! its current attempt since when (a [`TaskWatch`] of its task), and through which a
//! `ctl cancel` reaches it. The board also counts the records by status. The batch loop
//! and the job futures write it; the control server (`control.rs`) only reads it and
//! sends cancels.

use std::collections::HashMap;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use procpool::pool::TaskWatch;
use tokio::sync::oneshot;

use crate::ctl_wire::{JobCounts, JobView, job_state};
use crate::records::Status;

#[derive(Default)]
pub(crate) struct Board {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Live jobs by id (ids of dispatched jobs are unique: duplicates are bad jobs).
    live: HashMap<String, Live>,
    ended: JobCounts,
}

struct Live {
    task: String,
    /// Where its task runs, once submitted (nested tasks run first).
    watch: Option<TaskWatch>,
    /// Taken by the first `cancel`.
    cancel: Option<oneshot::Sender<()>>,
}

/// Why a `cancel` found nothing to cancel.
#[derive(Debug)]
pub(crate) enum CancelRefused {
    /// No live job has this id (never dispatched, or already has its record).
    Unknown,
    /// Cancelled already; its record is on its way.
    AlreadyCancelled,
}

impl Board {
    /// Registers a dispatched job until the returned ticket ends or is dropped; `watch`
    /// follows its task, when it is submitted already (nested tasks run first).
    pub(crate) fn enter(
        self: &Arc<Self>,
        id: &str,
        task: &str,
        watch: Option<TaskWatch>,
    ) -> Ticket {
        let (tx, rx) = oneshot::channel();
        self.lock().live.insert(
            id.to_owned(),
            Live {
                task: task.to_owned(),
                watch,
                cancel: Some(tx),
            },
        );
        Ticket {
            board: self.clone(),
            id: id.to_owned(),
            cancel: Some(rx),
            on_board: true,
        }
    }

    /// Counts a `bad_job` record (a line that was never dispatched).
    pub(crate) fn bad_job(&self) {
        self.lock().ended.bad_job += 1;
    }

    /// Records so far by status, and the live jobs running or queued.
    pub(crate) fn counts(&self) -> JobCounts {
        let inner = self.lock();
        let running = inner.live.values().filter(|l| l.worker().is_some()).count() as u64;
        JobCounts {
            running,
            queued: inner.live.len() as u64 - running,
            ..inner.ended
        }
    }

    /// The live jobs: running ones first (longest running first), then queued ones by id.
    pub(crate) fn jobs(&self) -> Vec<JobView> {
        let now = Instant::now();
        let inner = self.lock();
        let mut jobs: Vec<(Option<Instant>, JobView)> = inner
            .live
            .iter()
            .map(|(id, live)| {
                let worker = live.worker();
                let view = JobView {
                    id: id.clone(),
                    task: live.task.clone(),
                    status: job_state(worker.is_some()).into(),
                    attempt: worker.map(|w| w.attempt),
                    worker_pid: worker.map(|w| w.pid),
                    elapsed_ms: worker
                        .map(|w| now.saturating_duration_since(w.since).as_millis() as u64),
                };
                (worker.map(|w| w.since), view)
            })
            .collect();
        jobs.sort_by(|(a, x), (b, y)| match (a, b) {
            (Some(a), Some(b)) => a.cmp(b).then_with(|| x.id.cmp(&y.id)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => x.id.cmp(&y.id),
        });
        jobs.into_iter().map(|(_, view)| view).collect()
    }

    /// Cancels a live job; says whether it was running or queued.
    pub(crate) fn cancel(&self, id: &str) -> Result<&'static str, CancelRefused> {
        let mut inner = self.lock();
        let live = inner.live.get_mut(id).ok_or(CancelRefused::Unknown)?;
        let tx = live.cancel.take().ok_or(CancelRefused::AlreadyCancelled)?;
        // A ticket whose job is ending right now may have stopped listening: the job
        // then ends as it would have, and the reply still says what it was doing.
        let _ = tx.send(());
        Ok(job_state(live.worker().is_some()))
    }

    /// Live jobs (running or queued).
    pub(crate) fn unfinished(&self) -> u64 {
        self.lock().live.len() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A job's place on the board, held by the future that makes its record.
pub(crate) struct Ticket {
    board: Arc<Board>,
    id: String,
    /// `None` once it answered.
    cancel: Option<oneshot::Receiver<()>>,
    /// Until [`Ticket::end`] took it off.
    on_board: bool,
}

impl Live {
    /// The worker running its current attempt, if one started it.
    fn worker(&self) -> Option<Worker> {
        let watch = self.watch.as_ref()?;
        Some(Worker {
            pid: watch.worker_pid()?,
            attempt: watch.attempts(),
            since: watch.attempt_started()?,
        })
    }
}

#[derive(Clone, Copy)]
struct Worker {
    pid: u32,
    attempt: u32,
    since: Instant,
}

impl Ticket {
    /// The job's task was submitted: from now on the board follows it to its workers.
    pub(crate) fn watch(&self, watch: TaskWatch) {
        if let Some(live) = self.board.lock().live.get_mut(&self.id) {
            live.watch = Some(watch);
        }
    }

    /// Resolves when `ctl cancel` asks for this job; never otherwise.
    pub(crate) async fn cancelled(&mut self) {
        std::future::poll_fn(|cx| self.poll_cancelled(cx)).await;
    }

    /// [`cancelled`](Self::cancelled) as a poll, for a future written out by hand.
    pub(crate) fn poll_cancelled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(cancel) = &mut self.cancel else {
            return Poll::Pending;
        };
        let answer = std::task::ready!(Pin::new(cancel).poll(cx));
        // A oneshot must not be polled again once it answered.
        self.cancel = None;
        match answer {
            Ok(()) => Poll::Ready(()),
            // The board dropped its side without a cancel: none will come.
            Err(_) => Poll::Pending,
        }
    }

    /// The job's record is written: it leaves the live jobs and is counted by status at
    /// once, so `ctl status` never sees it in neither.
    pub(crate) fn end(mut self, status: Status) {
        let mut inner = self.board.lock();
        inner.live.remove(&self.id);
        let counter = match status {
            Status::Completed => &mut inner.ended.completed,
            Status::Failed => &mut inner.ended.failed,
            Status::Cancelled => &mut inner.ended.cancelled,
        };
        *counter += 1;
        drop(inner);
        self.on_board = false;
    }
}

impl Drop for Ticket {
    /// A job that ends without a record (the batch stops on an error) leaves the board.
    fn drop(&mut self) {
        if self.on_board {
            self.board.lock().live.remove(&self.id);
        }
    }
}
