//! Internal vocabulary between the public handles, the dispatcher and the executors.
//! Nothing here is public: it may carry channels and change freely.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use procpool_proto::{Encoding, TaskId, TaskInfo};
use tokio::sync::{Notify, oneshot};

use crate::errors::TaskError;
use crate::types::{CapturedOutput, PoolStatus, ProgressFn, Shutdown};

/// State a handle and the supervisor share about one task.
#[derive(Default)]
pub(crate) struct TaskShared {
    /// Pid of the worker that runs (or ran) the task; 0 until one starts it.
    pid: AtomicU32,
    attempts: AtomicU32,
    /// When the current (last) attempt started, in nanoseconds after [`epoch`]; for status
    /// reports only, and meaningful once `attempts` is above 0. An atomic, not a lock:
    /// every task start writes it, and few tasks are ever looked at.
    started_at: AtomicU64,
    ended: AtomicBool,
    changed: Notify,
    /// Messages from the task not yet read by the handle. A queue in place of a channel:
    /// it allocates nothing until the first message, which keeps a queued task small.
    inbox: Mutex<Inbox>,
    inbox_changed: Notify,
    /// The task's output, under `TaskOutput::Capture`; set before its result is sent.
    output: Mutex<Option<CapturedOutput>>,
    /// Callers waiting in `started` or `next_message`. A change wakes them only when there
    /// are any: a `Notify` takes its lock even when nobody waits, and every task changes
    /// four times (started, inbox closed, ended twice), mostly with nobody waiting.
    waiting: AtomicU32,
}

/// Counts a waiter of a `TaskShared` for as long as it lives.
struct Waiting<'a>(&'a AtomicU32);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicU32) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        // Pairs with the fence in `TaskShared::wake`. Without both, a change made between
        // this count and the waiter's check of the state could be missed by both sides:
        // the waker not seeing the waiter, the waiter not seeing the change.
        fence(Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Inbox {
    items: VecDeque<Vec<u8>>,
    /// Bytes in `items`, held against the pool's inbox bound.
    bytes: usize,
    /// No more messages will come: the submission is gone.
    closed: bool,
    /// The handle is gone: nobody will read, so messages are dropped as they come.
    unread_for_good: bool,
}

/// The unread messages of a task would go past the pool's inbox bound.
#[derive(Debug)]
pub(crate) struct InboxFull {
    pub(crate) limit: usize,
}

/// The instant task start times are counted from: the first one asked for.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl TaskShared {
    pub(crate) fn start(&self, pid: u32) {
        let since = Instant::now().saturating_duration_since(epoch());
        self.started_at
            .store(since.as_nanos() as u64, Ordering::Relaxed);
        // Release: whoever reads the new attempt count reads this start time too.
        self.attempts.fetch_add(1, Ordering::AcqRel);
        self.pid.store(pid, Ordering::Release);
        self.wake(&self.changed);
    }

    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.wake(&self.changed);
    }

    /// Wakes the waiters of a change already made, if there are any (see `Waiting`).
    fn wake(&self, notify: &Notify) {
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) > 0 {
            notify.notify_waiters();
        }
    }

    pub(crate) fn set_output(&self, output: Option<CapturedOutput>) {
        *self.output.lock().unwrap_or_else(|p| p.into_inner()) = output;
    }

    pub(crate) fn output(&self) -> Option<CapturedOutput> {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Acquire)
    }

    pub(crate) fn started_at(&self) -> Option<Instant> {
        (self.attempts() > 0)
            .then(|| epoch() + Duration::from_nanos(self.started_at.load(Ordering::Relaxed)))
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        match self.pid.load(Ordering::Acquire) {
            0 => None,
            pid => Some(pid),
        }
    }

    fn inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a message from the task for its handle, unless the messages not yet read
    /// would then hold more than `limit` bytes (one message always fits, so any message
    /// within the frame limit can be delivered). Without a handle the message is dropped.
    pub(crate) fn push_message(&self, bytes: Vec<u8>, limit: usize) -> Result<(), InboxFull> {
        let mut inbox = self.inbox();
        if inbox.unread_for_good {
            return Ok(());
        }
        if !inbox.items.is_empty() && inbox.bytes.saturating_add(bytes.len()) > limit {
            return Err(InboxFull { limit });
        }
        inbox.bytes += bytes.len();
        inbox.items.push_back(bytes);
        drop(inbox);
        self.wake(&self.inbox_changed);
        Ok(())
    }

    /// The handle was dropped: free what it never read and drop what still comes.
    pub(crate) fn drop_reader(&self) {
        let mut inbox = self.inbox();
        inbox.unread_for_good = true;
        inbox.items = VecDeque::new();
        inbox.bytes = 0;
    }

    /// No message will follow.
    pub(crate) fn close_messages(&self) {
        self.inbox().closed = true;
        self.wake(&self.inbox_changed);
    }

    /// Next message from the task; `None` once no more can come and all were read.
    pub(crate) async fn next_message(&self) -> Option<Vec<u8>> {
        let _waiting = Waiting::enter(&self.waiting);
        loop {
            // Register before checking, so a message between check and await is not missed.
            let changed = self.inbox_changed.notified();
            {
                let mut inbox = self.inbox();
                if let Some(m) = inbox.items.pop_front() {
                    inbox.bytes -= m.len();
                    return Some(m);
                }
                if inbox.closed {
                    return None;
                }
            }
            changed.await;
        }
    }

    /// Waits for a worker to start the task; `None` if it ended without starting.
    pub(crate) async fn started(&self) -> Option<u32> {
        let _waiting = Waiting::enter(&self.waiting);
        loop {
            // Register before checking, so a change between check and await is not missed.
            let changed = self.changed.notified();
            if let Some(pid) = self.pid() {
                return Some(pid);
            }
            if self.ended.load(Ordering::Acquire) {
                return None;
            }
            changed.await;
        }
    }
}

/// A task on its way to (or in) a worker. Whoever holds it owns the duty to answer
/// `reply` exactly once.
pub(crate) struct Submission {
    pub(crate) id: TaskId,
    /// Whether `id` is the caller's choice (see the dispatcher's `live`).
    pub(crate) chosen_id: bool,
    pub(crate) name: String,
    pub(crate) args: Vec<u8>,
    pub(crate) encoding: Encoding,
    pub(crate) on_progress: Option<ProgressFn>,
    /// Delivers the task's messages to its handle; closes the inbox when dropped.
    pub(crate) messages: MessagesTx,
    pub(crate) reply: oneshot::Sender<Result<bytes::Bytes, TaskError>>,
    pub(crate) shared: std::sync::Arc<TaskShared>,
    /// Messages sent to the task before it reached a worker.
    pub(crate) early_messages: Vec<Vec<u8>>,
    /// Deadline of each attempt.
    pub(crate) timeout: Option<std::time::Duration>,
    pub(crate) retry: crate::config::RetryPolicy,
    /// 1-based number of the attempt this submission is for.
    pub(crate) attempt: u32,
    /// Room in a bounded queue, given back when the task starts: a task waiting in a
    /// worker's prefetch window keeps it, so when that worker dies and the task goes back
    /// to the queue, the queue is not over its capacity.
    pub(crate) permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Submission {
    /// Answers a task that never reached a worker.
    pub(crate) fn reject(self: Box<Self>, err: TaskError) {
        self.shared.end();
        let _ = self.reply.send(Err(err));
    }
}

/// The sending side of a task's inbox, held by its submission: when the submission is
/// dropped (the task ended for good), the handle's `recv` returns `None` once drained,
/// and `started()` answers `None` if no worker ever started it, wherever the submission
/// was dropped.
pub(crate) struct MessagesTx(pub(crate) std::sync::Arc<TaskShared>);

impl MessagesTx {
    pub(crate) fn send(&self, bytes: Vec<u8>, limit: usize) -> Result<(), InboxFull> {
        self.0.push_message(bytes, limit)
    }
}

impl Drop for MessagesTx {
    fn drop(&mut self) {
        self.0.close_messages();
        self.0.end();
    }
}

/// Handles to dispatcher.
pub(crate) enum Command {
    /// Boxed: a submission moves through channels and queues several times per task.
    Submit(Box<Submission>),
    Cancel(TaskId),
    Message(TaskId, Vec<u8>),
    WorkerPids(oneshot::Sender<Vec<u32>>),
    Status(oneshot::Sender<PoolStatus>),
    Shutdown(Shutdown, oneshot::Sender<()>),
}

/// Identity of a worker slot's current process (a replacement gets a new one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct WorkerId(pub(crate) u64);

/// Why an executor kills its worker; decides the running task's error.
#[derive(Clone, Debug)]
pub(crate) enum KillReason {
    Cancelled,
    PoolClosed,
}

impl KillReason {
    pub(crate) fn error(&self) -> TaskError {
        match self {
            KillReason::Cancelled => TaskError::Cancelled,
            KillReason::PoolClosed => TaskError::PoolClosed,
        }
    }
}

/// Dispatcher to one executor.
pub(crate) enum ExecutorCommand {
    Run(Box<Submission>),
    Message(TaskId, Vec<u8>),
    /// Kill the worker if it is still running this task.
    Kill(TaskId, KillReason),
    /// Kill the worker whatever it is doing.
    KillNow,
    /// Let the worker finish its task and exit.
    Shutdown,
}

/// Executors to dispatcher.
pub(crate) enum WorkerEvent {
    Ready {
        worker: WorkerId,
        pid: u32,
        manifest: Vec<TaskInfo>,
    },
    /// A task left the worker (ended, or dropped from its prefetch queue).
    Finished {
        worker: WorkerId,
        task: TaskId,
        /// The worker is exiting (recycled or drained) and takes no more tasks.
        retiring: bool,
    },
    Exited {
        worker: WorkerId,
        /// Set when the worker never completed its handshake.
        start_failure: Option<String>,
        /// Tasks handed to the executor that never reached the worker.
        #[expect(
            clippy::vec_box,
            reason = "a submission stays boxed from submit to its end; unboxing would only copy it"
        )]
        unstarted: Vec<Box<Submission>>,
    },
    /// A backoff delay passed: try starting a worker again.
    Respawn,
    /// The task failed in a way its retry policy retries; sent before the executor's
    /// `Exited` (if the worker died), so the task stays known as live.
    Retry {
        sub: Box<Submission>,
        error: TaskError,
    },
    /// A retrying task's backoff is over.
    RetryDue(TaskId),
    /// A worker was idle for the idle timeout: stop it if the pool is above its minimum.
    IdleCheck,
}
