//! The dispatcher: the one loop that owns pool-wide state (queue, workers, running and
//! retrying tasks) and reacts to submissions, cancels and worker events. Runs on the pool's
//! supervisor thread (`build`) or as a task of the caller's runtime (`start`), the same
//! code either way; executors never touch this state.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use procpool_proto::{TaskId, TaskInfo};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::Settings;
use crate::errors::TaskError;
use crate::executor;
use crate::internal::{Command, ExecutorCommand, KillReason, Submission, WorkerEvent, WorkerId};
use crate::spawn::Launcher;
use crate::types::{PoolStatus, Shutdown};

/// Consecutive start failures, with no worker up, after which queued tasks are failed.
const UNHEALTHY_AFTER: u32 = 5;

/// Most events and commands handled between two pumps.
const BATCH: usize = 64;

/// Longest pause between attempts to start a worker that keeps dying at start.
const MAX_RESPAWN_DELAY: Duration = Duration::from_secs(5);

/// The task maps are touched several times per task: foldhash instead of SipHash, still
/// seeded per process.
type TaskIdHash = foldhash::fast::RandomState;

/// The dispatcher's set of live task ids, `None` until it is needed (see `live`).
struct LiveIds(Option<HashSet<TaskId, TaskIdHash>>);

impl LiveIds {
    fn remove(&mut self, id: &TaskId) {
        if let Some(live) = &mut self.0 {
            live.remove(id);
        }
    }
}

/// State of one worker slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Spawned, handshake not yet seen.
    Starting,
    /// Ready and waiting for a task, since this instant.
    Idle(Instant),
    /// Running a task (and holding `inflight - 1` prefetched ones).
    Busy,
    /// Told to exit (drain, idle reaping or recycling); gets no more tasks.
    Retiring,
}

struct Slot {
    tx: mpsc::UnboundedSender<ExecutorCommand>,
    state: SlotState,
    pid: Option<u32>,
    /// Tasks sent and not yet finished.
    inflight: usize,
    /// Tasks sent over the worker's life (for `max_tasks_per_worker`).
    sent: u64,
}

/// Reply for `PoolBuilder::build` and `start`: the manifest once every initial worker is
/// ready, or why one failed.
pub(crate) type StartReply = oneshot::Sender<Result<Vec<TaskInfo>, String>>;

pub(crate) struct Dispatcher {
    settings: Arc<Settings>,
    /// Where and how workers are spawned.
    launcher: Launcher,
    commands: mpsc::UnboundedReceiver<Command>,
    events_tx: mpsc::UnboundedSender<WorkerEvent>,
    events: mpsc::UnboundedReceiver<WorkerEvent>,
    workers: HashMap<WorkerId, Slot>,
    next_worker: u64,
    /// Idle workers, most recently idle last (reused first, so the others can age out).
    idle: Vec<WorkerId>,
    queue: VecDeque<Box<Submission>>,
    running: HashMap<TaskId, WorkerId, TaskIdHash>,
    /// Failed tasks waiting out their retry backoff.
    retrying: HashMap<TaskId, Box<Submission>, TaskIdHash>,
    /// Ids of every queued, running or retrying task: a second live task with the same id
    /// would make cancels and messages ambiguous. Kept only from the first task whose id
    /// its caller chose (`Task::with_id`): generated ids (random UUID v4) do not collide,
    /// and in a set the size of the queue each insert and removal missed the cache (a
    /// tenth of the supervisor's time per task in the window benchmark).
    live: LiveIds,
    /// Running (or prefetched) tasks whose cancel was sent to their executor and that have
    /// not ended yet: if the executor hands one back unstarted (its worker died first) or
    /// for a retry, the cancel still holds and the task never runs again.
    cancelled: HashSet<TaskId, TaskIdHash>,
    /// Set until the initial workers are all ready (or one failed).
    starting: Option<(usize, StartReply)>,
    shutdown: Option<Shutdown>,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    /// Consecutive workers that died before their handshake; reset by a ready worker.
    start_failures: u32,
    /// Why the last worker failed to start.
    last_start_failure: Option<String>,
    worker_starts: u64,
    /// Whether an idle check is already scheduled.
    idle_check_pending: bool,
}

impl Dispatcher {
    pub(crate) fn new(
        settings: Arc<Settings>,
        commands: mpsc::UnboundedReceiver<Command>,
        started: StartReply,
        launcher: Launcher,
    ) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        // At least one worker at start, even for an elastic pool with no minimum: its
        // handshake is what proves the binary is a worker and gives the manifest.
        let initial = settings.min_workers.max(1);
        Dispatcher {
            settings,
            launcher,
            commands,
            events_tx,
            events,
            workers: HashMap::new(),
            next_worker: 0,
            idle: Vec::new(),
            queue: VecDeque::new(),
            running: HashMap::default(),
            retrying: HashMap::default(),
            live: LiveIds(None),
            cancelled: HashSet::default(),
            starting: Some((initial, started)),
            shutdown: None,
            shutdown_waiters: Vec::new(),
            start_failures: 0,
            last_start_failure: None,
            worker_starts: 0,
            idle_check_pending: false,
        }
    }

    pub(crate) async fn run(mut self) {
        let initial = self.starting.as_ref().map_or(0, |(n, _)| *n);
        for _ in 0..initial {
            self.spawn_worker();
        }
        loop {
            if self.shutdown.is_some() && self.workers.is_empty() && self.retrying.is_empty() {
                break;
            }
            tokio::select! {
                // Worker events first: an executor reports a task's end to us before it
                // answers the task's handle, so a query made once a handle resolved
                // (`status`, `worker_pids`) must find that end already applied.
                biased;
                Some(ev) = self.events.recv() => self.on_event(ev),
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    // Every handle is gone: nobody can observe anything any more.
                    None => self.begin_shutdown(Shutdown::Kill),
                },
            }
            self.take_ready();
            self.pump();
        }
        // Nothing runs any more: whatever still waits ends now, `started()` included.
        self.reject_waiting(TaskError::PoolClosed);
        for w in self.shutdown_waiters.drain(..) {
            let _ = w.send(());
        }
    }

    /// Handles what else is already waiting, worker events before each command as in the
    /// loop's `biased` select, so that a burst (submissions, a prefetching worker's ends)
    /// is pumped once, not once per item.
    fn take_ready(&mut self) {
        for _ in 0..BATCH {
            if let Ok(ev) = self.events.try_recv() {
                self.on_event(ev);
            } else if let Ok(cmd) = self.commands.try_recv() {
                self.on_command(cmd);
            } else {
                break;
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(sub) => {
                if self.shutdown.is_some() {
                    sub.reject(TaskError::PoolClosed);
                } else if let Some(err) = self.unhealthy() {
                    sub.reject(err);
                } else if !self.admit(&sub) {
                    let id = uuid::Uuid::from_u128(sub.id.0);
                    sub.reject(TaskError::DuplicateId { id });
                } else {
                    self.queue.push_back(sub);
                }
            }
            Command::Cancel(id) => self.cancel(id),
            Command::Message(id, bytes) => {
                if let Some(worker) = self.running.get(&id) {
                    let _ = self.workers[worker]
                        .tx
                        .send(ExecutorCommand::Message(id, bytes));
                } else if let Some(sub) = self.queue.iter_mut().find(|s| s.id == id) {
                    sub.early_messages.push(bytes);
                } else if let Some(sub) = self.retrying.get_mut(&id) {
                    sub.early_messages.push(bytes);
                }
            }
            Command::WorkerPids(reply) => {
                let mut pids: Vec<u32> = self.workers.values().filter_map(|s| s.pid).collect();
                pids.sort_unstable();
                let _ = reply.send(pids);
            }
            Command::Status(reply) => {
                let count = |f: fn(&SlotState) -> bool| {
                    self.workers.values().filter(|s| f(&s.state)).count()
                };
                let _ = reply.send(PoolStatus {
                    starting: count(|s| *s == SlotState::Starting),
                    idle: count(|s| matches!(s, SlotState::Idle(_))),
                    busy: count(|s| *s == SlotState::Busy),
                    queued: self.queue.len(),
                    retrying: self.retrying.len(),
                    worker_starts: self.worker_starts,
                    unhealthy: self.unhealthy().map(|e| e.to_string()),
                });
            }
            Command::Shutdown(mode, done) => {
                self.shutdown_waiters.push(done);
                self.begin_shutdown(mode);
            }
        }
    }

    /// Records a submitted task as live; `false` if a live task has its id already.
    fn admit(&mut self, sub: &Submission) -> bool {
        if self.live.0.is_none() && sub.chosen_id {
            // Every task so far had a generated id: the set starts with all of them.
            let ids = self.queue.iter().map(|s| s.id);
            let ids = ids.chain(self.running.keys().copied());
            self.live.0 = Some(ids.chain(self.retrying.keys().copied()).collect());
        }
        self.live.0.as_mut().is_none_or(|live| live.insert(sub.id))
    }

    fn cancel(&mut self, id: TaskId) {
        if let Some(worker) = self.running.get(&id) {
            // Recorded whether or not the executor still listens: one that already ended
            // hands the task back in its `Exited`, where this cancel is applied.
            self.cancelled.insert(id);
            let _ = self.workers[worker]
                .tx
                .send(ExecutorCommand::Kill(id, KillReason::Cancelled));
        } else if let Some(pos) = self.queue.iter().position(|s| s.id == id) {
            let sub = self.queue.remove(pos).expect("position is in range");
            self.live.remove(&id);
            sub.reject(TaskError::Cancelled);
        } else if let Some(sub) = self.retrying.remove(&id) {
            self.live.remove(&id);
            sub.reject(TaskError::Cancelled);
        }
        // Otherwise it already finished: nothing to cancel.
    }

    fn begin_shutdown(&mut self, mode: Shutdown) {
        // Kill overrides an ongoing drain; a drain never softens a kill.
        if self.shutdown == Some(Shutdown::Kill) {
            return;
        }
        self.shutdown = Some(mode);
        if mode == Shutdown::Kill {
            self.reject_waiting(TaskError::PoolClosed);
            for slot in self.workers.values() {
                let _ = slot.tx.send(ExecutorCommand::KillNow);
            }
        }
    }

    fn on_event(&mut self, ev: WorkerEvent) {
        match ev {
            WorkerEvent::Ready {
                worker,
                pid,
                manifest,
            } => {
                self.start_failures = 0;
                let Some(slot) = self.workers.get_mut(&worker) else {
                    return;
                };
                slot.pid = Some(pid);
                self.make_idle(worker);
                if let Some((left, _)) = &mut self.starting {
                    *left -= 1;
                    if *left == 0
                        && let Some((_, reply)) = self.starting.take()
                    {
                        let _ = reply.send(Ok(manifest));
                    }
                }
            }
            WorkerEvent::Finished {
                worker,
                task,
                retiring,
            } => {
                self.finished(task);
                let Some(slot) = self.workers.get_mut(&worker) else {
                    return;
                };
                slot.inflight = slot.inflight.saturating_sub(1);
                if retiring && slot.state != SlotState::Retiring {
                    slot.state = SlotState::Retiring;
                    self.idle.retain(|w| *w != worker);
                    // Start the successor now rather than after the old worker is reaped.
                    if self.wants_replacement() {
                        self.schedule_spawn();
                    }
                } else if slot.inflight == 0 {
                    self.make_idle(worker);
                }
            }
            WorkerEvent::Retry { mut sub, error } => {
                // The worker either died (its Exited follows) or lives on after a task
                // error (its Idle follows); either way the id stays live while retrying.
                self.running.remove(&sub.id);
                if self.cancelled.remove(&sub.id) {
                    // Cancelled while its failure was on its way here: no other attempt.
                    self.live.remove(&sub.id);
                    sub.reject(TaskError::Cancelled);
                    return;
                }
                if self.shutdown == Some(Shutdown::Kill) {
                    self.live.remove(&sub.id);
                    sub.reject(error);
                    return;
                }
                let delay = sub.retry.delay(sub.attempt);
                log!(
                    debug!(task_id = %uuid::Uuid::from_u128(sub.id.0), attempt = sub.attempt, ?delay, %error, "retrying task")
                );
                sub.attempt += 1;
                let id = sub.id;
                self.retrying.insert(id, sub);
                let events = self.events_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = events.send(WorkerEvent::RetryDue(id));
                });
            }
            WorkerEvent::RetryDue(id) => {
                // Gone if it was cancelled during its backoff.
                if let Some(sub) = self.retrying.remove(&id) {
                    self.queue.push_front(sub);
                }
            }
            WorkerEvent::Exited {
                worker,
                start_failure,
                unstarted,
            } => {
                self.workers.remove(&worker);
                self.idle.retain(|w| *w != worker);
                // Tasks that never reached the worker go back to the head of the queue,
                // unless they were cancelled meanwhile or the pool is being killed.
                for sub in unstarted.into_iter().rev() {
                    self.running.remove(&sub.id);
                    if self.cancelled.remove(&sub.id) {
                        self.live.remove(&sub.id);
                        sub.reject(TaskError::Cancelled);
                    } else if self.shutdown == Some(Shutdown::Kill) {
                        self.live.remove(&sub.id);
                        sub.reject(TaskError::PoolClosed);
                    } else {
                        self.queue.push_front(sub);
                    }
                }
                let gone: Vec<TaskId> = self
                    .running
                    .iter()
                    .filter(|(_, w)| **w == worker)
                    .map(|(id, _)| *id)
                    .collect();
                for id in gone {
                    self.finished(id);
                }
                if let Some(why) = start_failure {
                    if let Some((_, reply)) = self.starting.take() {
                        // The pool never came up: `build` reports it; stop everything.
                        let _ = reply.send(Err(why));
                        self.begin_shutdown(Shutdown::Kill);
                        return;
                    }
                    log!(warn!(worker = %self.settings.worker.display(), "{why}"));
                    self.start_failures += 1;
                    self.last_start_failure = Some(why);
                    if let Some(err) = self.unhealthy() {
                        self.reject_waiting(err);
                    }
                }
                if self.wants_replacement() {
                    self.schedule_spawn();
                }
            }
            WorkerEvent::Respawn => {
                if self.wants_replacement() {
                    self.spawn_worker();
                }
            }
            WorkerEvent::IdleCheck => {
                self.idle_check_pending = false;
                self.reap_idle();
            }
        }
    }

    /// A task left its worker: it is no longer live unless it waits for a retry.
    fn finished(&mut self, id: TaskId) {
        self.running.remove(&id);
        self.cancelled.remove(&id);
        if !self.retrying.contains_key(&id) {
            self.live.remove(&id);
        }
    }

    fn make_idle(&mut self, worker: WorkerId) {
        if let Some(slot) = self.workers.get_mut(&worker) {
            if slot.state == SlotState::Retiring || matches!(slot.state, SlotState::Idle(_)) {
                return;
            }
            slot.state = SlotState::Idle(Instant::now());
            self.idle.push(worker);
            self.schedule_idle_check();
        }
    }

    /// Fails every task that waits for a worker (queued or retrying).
    fn reject_waiting(&mut self, err: TaskError) {
        for sub in self.queue.drain(..) {
            self.live.remove(&sub.id);
            sub.reject(err.clone());
        }
        for (id, sub) in self.retrying.drain() {
            self.live.remove(&id);
            sub.reject(err.clone());
        }
    }

    /// The error for new and queued tasks while no worker can be started.
    fn unhealthy(&self) -> Option<TaskError> {
        let up = self
            .workers
            .values()
            .any(|s| !matches!(s.state, SlotState::Starting));
        if up || self.start_failures < UNHEALTHY_AFTER {
            return None;
        }
        Some(TaskError::PoolUnhealthy {
            message: self.last_start_failure.clone().unwrap_or_default(),
        })
    }

    /// Workers that will take tasks: all but the retiring ones.
    fn serving(&self) -> usize {
        self.workers
            .values()
            .filter(|s| s.state != SlotState::Retiring)
            .count()
    }

    fn wants_replacement(&self) -> bool {
        let waiting = !self.queue.is_empty() || !self.retrying.is_empty();
        match self.shutdown {
            None => {
                self.serving() < self.settings.min_workers
                    || (waiting && self.serving() < self.settings.max_workers)
            }
            // A drain still needs workers while tasks wait.
            Some(Shutdown::Drain) => waiting && self.serving() == 0,
            Some(Shutdown::Kill) => false,
        }
    }

    /// Stops workers idle past the idle timeout while the pool is above its minimum,
    /// oldest first.
    fn reap_idle(&mut self) {
        let Some(timeout) = self.settings.idle_timeout else {
            return;
        };
        let now = Instant::now();
        let mut i = 0;
        while i < self.idle.len() && self.serving() > self.settings.min_workers {
            let worker = self.idle[i];
            let slot = self
                .workers
                .get_mut(&worker)
                .expect("idle workers have slots");
            match slot.state {
                SlotState::Idle(since) if now.duration_since(since) >= timeout => {
                    slot.state = SlotState::Retiring;
                    let _ = slot.tx.send(ExecutorCommand::Shutdown);
                    self.idle.remove(i);
                }
                _ => i += 1,
            }
        }
        self.schedule_idle_check();
    }

    fn schedule_idle_check(&mut self) {
        let Some(timeout) = self.settings.idle_timeout else {
            return;
        };
        if self.idle_check_pending || self.serving() <= self.settings.min_workers {
            return;
        }
        let oldest = self
            .idle
            .iter()
            .filter_map(|w| match self.workers.get(w)?.state {
                SlotState::Idle(since) => Some(since),
                _ => None,
            })
            .min();
        // A timeout too long to represent never expires.
        let Some(due) = oldest.and_then(|oldest| oldest.checked_add(timeout)) else {
            return;
        };
        self.idle_check_pending = true;
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let _ = events.send(WorkerEvent::IdleCheck);
        });
    }

    /// During a drain, workers with nothing left to do are told to exit.
    fn drain_step(&mut self) {
        if !self.queue.is_empty() || !self.retrying.is_empty() {
            return;
        }
        for worker in self.idle.drain(..) {
            if let Some(slot) = self.workers.get_mut(&worker) {
                slot.state = SlotState::Retiring;
                let _ = slot.tx.send(ExecutorCommand::Shutdown);
            }
        }
    }

    /// Starts a replacement now, or after a backoff when workers keep dying at start.
    fn schedule_spawn(&mut self) {
        if self.start_failures == 0 {
            self.spawn_worker();
            return;
        }
        let exp = self.start_failures.min(16) - 1;
        let delay = Duration::from_millis(10u64 << exp).min(MAX_RESPAWN_DELAY);
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(WorkerEvent::Respawn);
        });
    }

    fn spawn_worker(&mut self) {
        let worker = WorkerId(self.next_worker);
        self.next_worker += 1;
        self.worker_starts += 1;
        let tx = executor::start(
            &self.settings,
            worker,
            self.events_tx.clone(),
            &self.launcher,
        );
        self.workers.insert(
            worker,
            Slot {
                tx,
                state: SlotState::Starting,
                pid: None,
                inflight: 0,
                sent: 0,
            },
        );
    }

    /// A busy worker whose prefetch window has room (and whose recycling limit is not
    /// reached by the tasks already sent to it).
    fn with_room(&self) -> Option<WorkerId> {
        let window = self.settings.prefetch.saturating_add(1);
        if window == 1 {
            return None;
        }
        let limit = self.settings.max_tasks_per_worker.unwrap_or(u64::MAX);
        self.workers
            .iter()
            .filter(|(_, s)| s.state == SlotState::Busy && s.inflight < window && s.sent < limit)
            .min_by_key(|(_, s)| s.inflight)
            .map(|(w, _)| *w)
    }

    /// Hands queued tasks to idle workers, and grows an elastic pool when tasks wait.
    fn pump(&mut self) {
        if self.shutdown == Some(Shutdown::Kill) {
            return;
        }
        while !self.queue.is_empty() {
            // Idle workers first; only then fill prefetch windows of busy ones.
            let Some(worker) = self.idle.pop().or_else(|| self.with_room()) else {
                break;
            };
            // It keeps its queue permit until it starts (see `Submission::permit`).
            let sub = self.queue.pop_front().expect("queue is not empty");
            let id = sub.id;
            let slot = self
                .workers
                .get_mut(&worker)
                .expect("chosen workers have slots");
            match slot.tx.send(ExecutorCommand::Run(sub)) {
                Ok(()) => {
                    slot.state = SlotState::Busy;
                    slot.inflight += 1;
                    slot.sent += 1;
                    self.running.insert(id, worker);
                }
                // The executor already ended; its Exited event is on the way.
                Err(mpsc::error::SendError(cmd)) => {
                    slot.state = SlotState::Retiring;
                    if let ExecutorCommand::Run(sub) = cmd {
                        self.queue.push_front(sub);
                    }
                }
            }
        }
        if self.shutdown.is_none() && self.start_failures == 0 {
            let starting = self
                .workers
                .values()
                .filter(|s| s.state == SlotState::Starting)
                .count();
            let mut want = self.queue.len().saturating_sub(starting);
            while want > 0 && self.serving() < self.settings.max_workers {
                self.spawn_worker();
                want -= 1;
            }
        }
        if self.shutdown == Some(Shutdown::Drain) {
            self.drain_step();
        }
    }
}
