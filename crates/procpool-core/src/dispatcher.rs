//! The dispatcher: the one loop that owns pool-wide state (queue, workers, running tasks)
//! and reacts to submissions, cancels and worker events. Runs on the supervisor thread.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use procpool_proto::{TaskId, TaskInfo};
use tokio::sync::{mpsc, oneshot};

use crate::errors::TaskError;
use crate::executor;
use crate::internal::{
    Command, ExecutorCommand, KillReason, Shutdown, Submission, WorkerEvent, WorkerId,
};
use crate::pool::Settings;

/// Consecutive start failures, with no worker up, after which queued tasks are failed.
const UNHEALTHY_AFTER: u32 = 5;

/// Longest pause between attempts to start a worker that keeps dying at start.
const MAX_RESPAWN_DELAY: Duration = Duration::from_secs(5);

/// State of one worker slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Spawned, handshake not yet seen.
    Starting,
    /// Ready and waiting for a task.
    Idle,
    /// Running this task.
    Busy(TaskId),
}

struct Slot {
    tx: mpsc::UnboundedSender<ExecutorCommand>,
    state: SlotState,
    pid: Option<u32>,
}

/// Reply for `PoolBuilder::build`: the manifest once every initial worker is ready.
pub(crate) type StartReply = std::sync::mpsc::Sender<Result<Vec<TaskInfo>, String>>;

pub(crate) struct Dispatcher {
    settings: Arc<Settings>,
    commands: mpsc::UnboundedReceiver<Command>,
    events_tx: mpsc::UnboundedSender<WorkerEvent>,
    events: mpsc::UnboundedReceiver<WorkerEvent>,
    workers: HashMap<WorkerId, Slot>,
    next_worker: u64,
    idle: Vec<WorkerId>,
    queue: VecDeque<Submission>,
    running: HashMap<TaskId, WorkerId>,
    /// Ids of every queued or running task: a second live task with the same id would make
    /// cancels and messages ambiguous.
    live: HashSet<TaskId>,
    /// Set until the initial workers are all ready (or one failed).
    starting: Option<(usize, StartReply)>,
    shutdown: Option<Shutdown>,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    /// Consecutive workers that died before their handshake; reset by a ready worker.
    start_failures: u32,
    /// Why the last worker failed to start.
    last_start_failure: Option<String>,
}

impl Dispatcher {
    pub(crate) fn new(
        settings: Arc<Settings>,
        commands: mpsc::UnboundedReceiver<Command>,
        started: StartReply,
    ) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        let initial = settings.workers;
        Dispatcher {
            settings,
            commands,
            events_tx,
            events,
            workers: HashMap::new(),
            next_worker: 0,
            idle: Vec::new(),
            queue: VecDeque::new(),
            running: HashMap::new(),
            live: HashSet::new(),
            starting: Some((initial, started)),
            shutdown: None,
            shutdown_waiters: Vec::new(),
            start_failures: 0,
            last_start_failure: None,
        }
    }

    pub(crate) async fn run(mut self) {
        for _ in 0..self.settings.workers {
            self.spawn_worker();
        }
        loop {
            if self.shutdown.is_some() && self.workers.is_empty() {
                break;
            }
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    // Every handle is gone: nobody can observe anything any more.
                    None => self.begin_shutdown(Shutdown::Kill),
                },
                Some(ev) = self.events.recv() => self.on_event(ev),
            }
            self.pump();
        }
        for w in self.shutdown_waiters.drain(..) {
            let _ = w.send(());
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(sub) => {
                if self.shutdown.is_some() {
                    sub.reject(TaskError::PoolClosed);
                } else if let Some(err) = self.unhealthy() {
                    sub.reject(err);
                } else if !self.live.insert(sub.id) {
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
                }
            }
            Command::WorkerPids(reply) => {
                let mut pids: Vec<u32> = self.workers.values().filter_map(|s| s.pid).collect();
                pids.sort_unstable();
                let _ = reply.send(pids);
            }
            Command::Shutdown(mode, done) => {
                self.shutdown_waiters.push(done);
                self.begin_shutdown(mode);
            }
        }
    }

    fn cancel(&mut self, id: TaskId) {
        if let Some(worker) = self.running.get(&id) {
            let _ = self.workers[worker]
                .tx
                .send(ExecutorCommand::Kill(id, KillReason::Cancelled));
        } else if let Some(pos) = self.queue.iter().position(|s| s.id == id) {
            let sub = self.queue.remove(pos).expect("position is in range");
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
            self.reject_queue(TaskError::PoolClosed);
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
                slot.state = SlotState::Idle;
                slot.pid = Some(pid);
                self.idle.push(worker);
                if let Some((left, reply)) = &mut self.starting {
                    *left -= 1;
                    if *left == 0 {
                        let _ = reply.send(Ok(manifest));
                        self.starting = None;
                    }
                }
            }
            WorkerEvent::Idle { worker } => {
                let Some(slot) = self.workers.get_mut(&worker) else {
                    return;
                };
                if let SlotState::Busy(id) = slot.state {
                    self.running.remove(&id);
                    self.live.remove(&id);
                }
                slot.state = SlotState::Idle;
                self.idle.push(worker);
            }
            WorkerEvent::Exited {
                worker,
                start_failure,
                unstarted,
            } => {
                if let Some(slot) = self.workers.remove(&worker)
                    && let SlotState::Busy(id) = slot.state
                {
                    self.running.remove(&id);
                    self.live.remove(&id);
                }
                self.idle.retain(|w| *w != worker);
                for sub in unstarted.into_iter().rev() {
                    self.live.insert(sub.id);
                    self.queue.push_front(sub);
                }
                if let Some(why) = start_failure {
                    if let Some((_, reply)) = self.starting.take() {
                        // The pool never came up: `build` reports it; stop everything.
                        let _ = reply.send(Err(why));
                        self.begin_shutdown(Shutdown::Kill);
                        return;
                    }
                    tracing::warn!(worker = %self.settings.worker.display(), "{why}");
                    self.start_failures += 1;
                    self.last_start_failure = Some(why);
                    if let Some(err) = self.unhealthy() {
                        self.reject_queue(err);
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
        }
        if self.shutdown == Some(Shutdown::Drain) {
            self.drain_step();
        }
    }

    fn reject_queue(&mut self, err: TaskError) {
        for sub in self.queue.drain(..) {
            self.live.remove(&sub.id);
            sub.reject(err.clone());
        }
    }

    /// The error for new and queued tasks while no worker can be started.
    fn unhealthy(&self) -> Option<TaskError> {
        let up = self
            .workers
            .values()
            .any(|s| s.state != SlotState::Starting);
        if up || self.start_failures < UNHEALTHY_AFTER {
            return None;
        }
        Some(TaskError::PoolUnhealthy {
            message: self.last_start_failure.clone().unwrap_or_default(),
        })
    }

    fn wants_replacement(&self) -> bool {
        match self.shutdown {
            None => true,
            // A drain still needs workers while tasks are queued.
            Some(Shutdown::Drain) => !self.queue.is_empty(),
            Some(Shutdown::Kill) => false,
        }
    }

    /// During a drain, workers with nothing left to do are told to exit.
    fn drain_step(&mut self) {
        if !self.queue.is_empty() {
            return;
        }
        for worker in self.idle.drain(..) {
            if let Some(slot) = self.workers.get(&worker) {
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
        match executor::start(&self.settings, worker, self.events_tx.clone()) {
            Ok(tx) => {
                self.workers.insert(
                    worker,
                    Slot {
                        tx,
                        state: SlotState::Starting,
                        pid: None,
                    },
                );
            }
            Err(why) => {
                let _ = self.events_tx.send(WorkerEvent::Exited {
                    worker,
                    start_failure: Some(why),
                    unstarted: Vec::new(),
                });
            }
        }
    }

    /// Hands queued tasks to idle workers.
    fn pump(&mut self) {
        if self.shutdown == Some(Shutdown::Kill) {
            return;
        }
        while !self.queue.is_empty() {
            let Some(worker) = self.idle.pop() else { break };
            let sub = self.queue.pop_front().expect("queue is not empty");
            let id = sub.id;
            let slot = self
                .workers
                .get_mut(&worker)
                .expect("idle workers have slots");
            match slot.tx.send(ExecutorCommand::Run(sub)) {
                Ok(()) => {
                    slot.state = SlotState::Busy(id);
                    self.running.insert(id, worker);
                }
                // The executor already ended; its Exited event is on the way.
                Err(mpsc::error::SendError(cmd)) => {
                    if let ExecutorCommand::Run(sub) = cmd {
                        self.queue.push_front(sub);
                    }
                }
            }
        }
        if self.shutdown == Some(Shutdown::Drain) {
            self.drain_step();
        }
    }
}
