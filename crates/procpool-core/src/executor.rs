//! One executor per worker process: spawns it, runs the handshake, relays frames for the
//! task it is given, and turns the worker's death into the right verdict for that task.
//! It never touches pool-wide state; it talks to the dispatcher through channels only.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt as _;
use procpool_os::{ExitVerdict, Pgid, Signal};
use procpool_proto::{FromWorker, RunRef, TaskId, ToWorker};
use tokio::net::UnixStream;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::Settings;
use crate::errors::TaskError;
use crate::handshake::{self, Handshake};
use crate::host::{Groups, Refused};
use crate::inbound::Inbound;
use crate::internal::{ExecutorCommand, KillReason, Submission, WorkerEvent, WorkerId};
use crate::output::{self, OutputState, Stream, capture};
use crate::spawn::{GroupGuard, Launcher, Spawned};
use crate::types::Progress;
use crate::unwind::{self, panic_message};
use crate::writer::{WriteFailure, Writer};

/// How often a running worker's resident memory is compared with `max_rss`.
const RSS_CHECK_EVERY: Duration = Duration::from_millis(20);

/// How long to wait for the rest of a dead worker's stderr before writing the verdict.
const STDERR_DRAIN: Duration = Duration::from_millis(100);

/// Most frames (or commands) handled in one turn of the executor's loop. A prefetching
/// worker's results come in many per read: one turn each re-armed every other branch of
/// the loop for each (its cost per task was above that of the frame itself). The bound
/// keeps timers and the other branches served under a flood.
const BATCH: usize = 64;

/// Starts a worker process (where the pool spawns them) and its executor task; returns
/// the executor's command channel at once. A spawn that fails (missing binary, no
/// permission) or a worker that fails its handshake is reported later as
/// `Exited { start_failure }`.
pub(crate) fn start(
    settings: &Arc<Settings>,
    worker: WorkerId,
    events: mpsc::UnboundedSender<WorkerEvent>,
    launcher: &Launcher,
) -> mpsc::UnboundedSender<ExecutorCommand> {
    let (tx, commands) = mpsc::unbounded_channel();
    let pending = launcher.launch(settings);
    let settings = settings.clone();
    let groups = launcher.groups.clone();
    tokio::spawn(async move {
        match pending.finish().await {
            Ok(spawned) => {
                let pid = spawned.pid;
                let run = Executor::new(worker, pid, settings, events.clone(), commands, groups)
                    .run(spawned);
                // A panic in here is a bug (foreign code runs under `unwind`), but it must
                // not leave the dispatcher waiting for this worker forever. Its group guard
                // has killed the worker by then; the tasks it held were dropped and
                // resolve as `PoolClosed`. It is no start failure: the worker started.
                if let Err(panic) = AssertUnwindSafe(run).catch_unwind().await {
                    let message = panic_message(panic.as_ref());
                    log!(error!(
                        worker_pid = pid,
                        panic = message,
                        "the executor of a worker panicked"
                    ));
                    let _ = events.send(WorkerEvent::Exited {
                        worker,
                        start_failure: None,
                        unstarted: Vec::new(),
                    });
                }
            }
            Err(refused) => {
                let mut commands = commands;
                let start_failure = match refused {
                    // The pool's last handle is gone: not a failure worth a warning.
                    Refused::Closed => None,
                    Refused::Failed(why) => Some(why),
                };
                let unstarted = unstarted(&mut commands);
                let _ = events.send(WorkerEvent::Exited {
                    worker,
                    start_failure,
                    unstarted,
                });
            }
        }
    });
    tx
}

struct Executor {
    worker: WorkerId,
    pid: u32,
    pgid: Pgid,
    settings: Arc<Settings>,
    events: mpsc::UnboundedSender<WorkerEvent>,
    commands: mpsc::UnboundedReceiver<ExecutorCommand>,
    /// The pool's live groups; closed by the pool's last drop on a caller's runtime.
    groups: Arc<Groups>,
    output: Arc<OutputState>,
    stdout: Option<tokio::task::JoinHandle<()>>,
    stderr: Option<tokio::task::JoinHandle<()>>,
    /// Requests to the output readers to read what their pipe holds now.
    syncs: Vec<mpsc::UnboundedSender<output::Sync>>,
}

/// What a frame from the worker means for the tasks in flight.
enum Answer {
    Nothing,
    /// The running task ended, with the worker's peak resident memory during it when the
    /// worker measured one above the limit.
    Done(Result<Bytes, TaskError>, Option<u64>),
    /// A prefetched task was dropped before it started.
    Skipped(TaskId),
    /// A task we asked to drop had already started.
    Running(TaskId),
    /// The running task's unread messages went past the pool's bound.
    InboxFull(usize),
}

/// Per-task timers of the running task.
struct Timers {
    deadline: Option<Instant>,
    /// Set once the deadline passed and the group got its SIGTERM.
    timed_out: Option<Duration>,
    rss_check: tokio::time::Interval,
    /// The resident-memory read in flight: `/proc` is read on the blocking pool, never on
    /// the runtime thread that relays the worker's frames.
    rss_probe: Option<tokio::task::JoinHandle<Option<u64>>>,
}

impl Timers {
    fn new() -> Self {
        let mut rss_check = tokio::time::interval(RSS_CHECK_EVERY);
        rss_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Timers {
            deadline: None,
            timed_out: None,
            rss_check,
            rss_probe: None,
        }
    }

    fn clear(&mut self) {
        self.deadline = None;
        self.timed_out = None;
        if let Some(probe) = self.rss_probe.take() {
            probe.abort();
        }
    }

    /// Arms the timers for a task that starts now. A memory reading still on its way
    /// measured the task before (a prefetched task starts the moment the last one ends),
    /// so it is dropped: it must not be held against this one.
    fn begin(&mut self, timeout: Option<Duration>) {
        self.clear();
        self.deadline = timeout.and_then(after);
    }
}

/// `d` from now; `None` (never) when that is too far to represent, as for
/// `Task::timeout(Duration::MAX)`.
fn after(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

/// Why the executor loop ended.
enum End {
    /// The channel reached EOF: the worker exited or died.
    Eof,
    /// The worker sent something that is not protocol.
    Protocol(String),
    /// We decided to kill it.
    Killed(KillReason),
    /// The task's deadline and grace period passed.
    TimedOut(Duration),
    /// The worker went over its memory limit.
    Limit(String),
    /// The running task's unread messages went past the pool's bound.
    Unread(usize),
    /// The worker was told to exit and did not within the grace period.
    Unresponsive,
}

impl Executor {
    fn new(
        worker: WorkerId,
        pid: u32,
        settings: Arc<Settings>,
        events: mpsc::UnboundedSender<WorkerEvent>,
        commands: mpsc::UnboundedReceiver<ExecutorCommand>,
        groups: Arc<Groups>,
    ) -> Self {
        Executor {
            worker,
            pid,
            pgid: Pgid::of_leader(pid),
            output: Arc::new(OutputState::new(settings.task_output)),
            settings,
            events,
            commands,
            groups,
            stdout: None,
            stderr: None,
            syncs: Vec::new(),
        }
    }

    async fn run(mut self, spawned: Spawned) {
        // Declared after the child, so dropped before it (see GroupGuard).
        let mut child = spawned.child;
        let mut guard = spawned.guard;
        self.stdout = child
            .stdout
            .take()
            .map(|s| self.read_output(s, Stream::Stdout));
        self.stderr = child
            .stderr
            .take()
            .map(|s| self.read_output(s, Stream::Stderr));
        let std_stream = std::os::unix::net::UnixStream::from(spawned.channel);
        let stream = match std_stream
            .set_nonblocking(true)
            .and_then(|()| UnixStream::from_std(std_stream))
        {
            Ok(stream) => stream,
            Err(e) => {
                let why = format!("cannot set up the worker channel: {e}");
                return self.start_failed(&mut child, &mut guard, why).await;
            }
        };
        // Handshake. Only a stop (KillNow, Shutdown, the dispatcher gone) can reach a worker
        // that is not ready yet; it must not wait for the start timeout.
        let handshake = tokio::select! {
            first = tokio::time::timeout(
                self.settings.start_timeout,
                handshake::read(&stream, self.settings.max_frame),
            ) => first.unwrap_or_else(|_| Err(format!(
                "no handshake within {:?}: is it a procpool worker (does its main call procpool::init)?",
                self.settings.start_timeout
            ))),
            _ = self.commands.recv() => {
                self.kill_and_reap(&mut child, &mut guard, "pool stopped during worker start").await;
                let unstarted = self.unstarted();
                let _ = self.events.send(WorkerEvent::Exited {
                    worker: self.worker,
                    start_failure: None,
                    unstarted,
                });
                return;
            }
        };
        let Handshake { hello, results } = match handshake {
            Ok(handshake) => handshake,
            Err(why) => return self.start_failed(&mut child, &mut guard, why).await,
        };
        let (rd, wr) = stream.into_split();
        let mut frames = Inbound::new(results, rd, self.settings.max_frame);
        let writer = Writer::spawn(wr, self.settings.max_frame);
        if hello.pid != self.pid {
            log!(debug!(
                worker_pid = self.pid,
                announced = hello.pid,
                "worker announced another pid (pid namespace?)"
            ));
        }
        let _ = self.events.send(WorkerEvent::Ready {
            worker: self.worker,
            pid: self.pid,
            manifest: hello.tasks,
        });

        // Tasks sent to the worker, in order; the front one is running. More than one only
        // with a prefetch window.
        let mut inflight: VecDeque<Box<Submission>> = VecDeque::new();
        let mut timers = Timers::new();
        let mut tasks_run: u64 = 0;
        let mut draining = false;
        // Set once Shutdown is sent: past it, a worker that has not exited is killed.
        let mut exit_by: Option<Instant> = None;
        let mut shutdown_sent = false;
        // Set once frames can no longer reach the worker.
        let mut write_failed: Option<WriteFailure> = None;
        // Tasks that came after the Shutdown: the worker will not read them.
        let mut late: Vec<Box<Submission>> = Vec::new();
        let end = 'run: loop {
            tokio::select! {
                frame = frames.next() => {
                    // This frame, then those already read with it (see `BATCH`).
                    let mut frame = frame;
                    for left in (0..BATCH).rev() {
                        match frame {
                            Some(Ok(frame)) => match self.answer(frame, &inflight) {
                                Ok(answer) => match answer {
                                    Answer::Nothing => {}
                                    Answer::Done(outcome, peak) => {
                                        let sub = inflight.pop_front().expect("Done answers the running task");
                                        // A peak above the limit between two readings: the
                                        // task's verdict all the same, and the worker retires,
                                        // since what it holds now may stay high. Tasks sent
                                        // ahead to it run on: each one's peak is its own.
                                        let outcome = match self.peak_above_limit(peak) {
                                            Some(message) => {
                                                draining = true;
                                                Err(TaskError::LimitExceeded { message })
                                            }
                                            None => outcome,
                                        };
                                        if self.output.captures() {
                                            self.sync_output().await;
                                            sub.shared.set_output(self.output.take_captured());
                                        }
                                        let task = sub.id;
                                        tasks_run += 1;
                                        let answer = self.retry_or_answer(sub, outcome);
                                        if self.settings.max_tasks_per_worker.is_some_and(|max| tasks_run >= max) {
                                            // Recycle: let the worker exit; the dispatcher starts a fresh one.
                                            draining = true;
                                        }
                                        if draining && inflight.is_empty() {
                                            writer.send(&ToWorker::Shutdown);
                                            shutdown_sent = true;
                                            exit_by = after(self.settings.grace);
                                        }
                                        // The dispatcher hears of the end before the handle does (see
                                        // its `biased` select).
                                        let _ = self.events.send(WorkerEvent::Finished { worker: self.worker, task, retiring: draining });
                                        if let Some((sub, outcome)) = answer {
                                            finish(sub, outcome);
                                        }
                                        match inflight.front_mut() {
                                            // The worker starts its next prefetched task right away.
                                            Some(next) => self.start(next, &mut timers),
                                            None => timers.clear(),
                                        }
                                    }
                                    Answer::Skipped(task) => {
                                        if let Some(pos) = inflight.iter().position(|s| s.id == task) {
                                            let sub = inflight.remove(pos).expect("position is in range");
                                            let _ = self.events.send(WorkerEvent::Finished { worker: self.worker, task, retiring: draining });
                                            finish(sub, Err(TaskError::Cancelled));
                                        }
                                    }
                                    Answer::InboxFull(limit) => break 'run End::Unread(limit),
                                    // A cancel reached a prefetched task after it started.
                                    Answer::Running(task) if inflight.front().is_some_and(|s| s.id == task) => {
                                        break 'run End::Killed(KillReason::Cancelled);
                                    }
                                    Answer::Running(_) => {}
                                },
                                Err(e) => break 'run End::Protocol(format!("undecodable frame from worker: {e}")),
                            },
                            // A worker that dies with a frame of ours still unread in its socket
                            // resets the channel (ECONNRESET) instead of closing it: read there
                            // (a large frame), that is its death, and its exit status is the
                            // verdict, not a protocol error.
                            Some(Err(procpool_proto::FrameError::Io(e)))
                                if e.kind() == std::io::ErrorKind::ConnectionReset => break 'run End::Eof,
                            Some(Err(e)) => break 'run End::Protocol(format!("bad frame from worker: {e}")),
                            None => break 'run End::Eof,
                        }
                        if left == 0 {
                            break;
                        }
                        match frames.ready() {
                            Some(next) => frame = next,
                            None => break,
                        }
                    }
                }
                cmd = self.commands.recv() => {
                    // This command, then those already queued behind it (see `BATCH`). A
                    // `break 'run` leaves the rest in the channel, for `unstarted`.
                    let mut cmd = cmd;
                    for left in (0..BATCH).rev() {
                        match cmd {
                            // A worker that retires on its own (a task's peak above
                            // `max_rss`) may get a task sent ahead by a dispatcher that has
                            // not yet heard it retires. Sent after the Shutdown, it would
                            // never run, and the worker's exit would be blamed on it: it
                            // goes back to the queue.
                            Some(ExecutorCommand::Run(sub)) if shutdown_sent => late.push(sub),
                            Some(ExecutorCommand::Run(mut sub)) => {
                                writer.send(&RunRef::Run {
                                    task_id: sub.id,
                                    name: &sub.name,
                                    args: &sub.args,
                                    encoding: sub.encoding,
                                });
                                // Keep the arguments only when another attempt may need them, or
                                // when a prefetched task may come back unstarted.
                                if sub.retry.max_retries() == 0 && self.settings.prefetch == 0 {
                                    sub.args = Vec::new();
                                }
                                for bytes in std::mem::take(&mut sub.early_messages) {
                                    writer.send(&ToWorker::Message { task_id: sub.id, bytes });
                                }
                                if inflight.is_empty() {
                                    self.start(&mut sub, &mut timers);
                                }
                                inflight.push_back(sub);
                            }
                            Some(ExecutorCommand::Message(task_id, bytes)) => {
                                // A prefetching worker keeps messages for its queued tasks.
                                if inflight.iter().any(|s| s.id == task_id) {
                                    writer.send(&ToWorker::Message { task_id, bytes });
                                }
                            }
                            Some(ExecutorCommand::Kill(task_id, reason)) => {
                                // The task may have finished while the kill was on its way: then
                                // the worker is healthy and stays.
                                if inflight.front().is_some_and(|s| s.id == task_id) {
                                    break 'run End::Killed(reason);
                                }
                                // Prefetched: the worker drops it (Skipped) or says it just started
                                // it (Running, then we kill).
                                if inflight.iter().any(|s| s.id == task_id) {
                                    writer.send(&ToWorker::Cancel { task_id });
                                }
                            }
                            Some(ExecutorCommand::KillNow) | None => break 'run End::Killed(KillReason::PoolClosed),
                            Some(ExecutorCommand::Shutdown) => {
                                draining = true;
                                if inflight.is_empty() && !shutdown_sent {
                                    writer.send(&ToWorker::Shutdown);
                                    shutdown_sent = true;
                                    exit_by = after(self.settings.grace);
                                }
                            }
                        }
                        if left == 0 {
                            break;
                        }
                        match self.commands.try_recv() {
                            Ok(next) => cmd = Some(next),
                            Err(_) => break,
                        }
                    }
                }
                // The worker cannot get its frames: kill it here (its leader is not reaped
                // yet, so the group is still ours) and read on to the EOF, so the results
                // it sent before dying still reach their tasks and only the task it died
                // under gets the verdict.
                failure = writer.failed(), if write_failed.is_none() => {
                    match &failure {
                        WriteFailure::Io(error) => log!(debug!(worker_pid = self.pid, %error, "write to worker failed")),
                        WriteFailure::Encode(error) => log!(debug!(worker_pid = self.pid, %error, "frame to worker not encodable")),
                    }
                    unwind::signal(self.pgid, Signal::SIGKILL, "write to worker failed");
                    write_failed = Some(failure);
                },
                _ = sleep_until(exit_by), if exit_by.is_some() => break End::Unresponsive,
                _ = sleep_until(timers.deadline), if timers.deadline.is_some() => {
                    let after = inflight.front().and_then(|c| c.timeout).unwrap_or_default();
                    if timers.timed_out.is_none() && !self.settings.grace.is_zero() {
                        // Cooperative stop first: the task (or its children) may clean up.
                        timers.timed_out = Some(after);
                        unwind::signal(self.pgid, Signal::SIGTERM, "task timed out");
                        // A grace period too long to represent: SIGTERM is all it gets.
                        timers.deadline = self::after(self.settings.grace);
                    } else {
                        break End::TimedOut(after);
                    }
                },
                _ = timers.rss_check.tick(), if !inflight.is_empty() && self.settings.max_rss.is_some() && timers.rss_probe.is_none() => {
                    let pgid = self.pgid;
                    timers.rss_probe = Some(tokio::task::spawn_blocking(move || procpool_os::group_rss_bytes(pgid)));
                },
                rss = probe(&mut timers.rss_probe), if timers.rss_probe.is_some() => {
                    timers.rss_probe = None;
                    let max = self.settings.max_rss.expect("a probe runs only with a limit");
                    if let Some(rss) = rss
                        && rss > max
                        && !inflight.is_empty()
                    {
                        break End::Limit(crate::limits::rss_above_limit(rss, max));
                    }
                },
            }
        };
        drop(writer);
        if let Some(probe) = timers.rss_probe.take() {
            probe.abort();
        }
        // The pool's last drop SIGKILLs every group at once (on a caller's runtime): a
        // worker that died since then is its doing, and its task ends as `pool_closed`,
        // as after a kill order, not as a crash (nor gets retried).
        let end = match end {
            End::Eof if self.groups.is_closed() => End::Killed(KillReason::PoolClosed),
            // Killed for a frame we could not encode: the worker did nothing wrong, but
            // the task cannot run as sent.
            End::Eof => match write_failed {
                Some(WriteFailure::Encode(e)) => {
                    End::Protocol(format!("frame to worker not encodable: {e}"))
                }
                _ => End::Eof,
            },
            end => end,
        };

        let reason = match &end {
            End::Eof if inflight.is_empty() => "worker closed its channel",
            End::Eof => "worker closed its channel during a task",
            End::Protocol(_) => "worker broke the protocol",
            End::Killed(KillReason::Cancelled) => "task cancelled",
            End::Killed(KillReason::PoolClosed) => "pool closed",
            End::TimedOut(_) => "task timed out: grace period over",
            End::Limit(_) => "worker went over its memory limit",
            End::Unread(_) => "task's unread messages went over their bound",
            End::Unresponsive => "worker did not exit within the grace period",
        };
        let verdict = self.kill_and_reap(&mut child, &mut guard, reason).await;
        log!(debug!(worker_pid = self.pid, %verdict, reason, "worker ended"));
        // Only the front task ran; the prefetched ones never started and go back to the queue.
        if let Some(sub) = inflight.front() {
            // The readers have read to the end of the pipes (or given up) in the reaping.
            sub.shared.set_output(self.output.take_captured());
        }
        let answer = inflight.pop_front().and_then(|sub| {
            let err = match end {
                // The worker died of our SIGTERM (or on its own after it): still a timeout.
                End::Eof if timers.timed_out.is_some() => TaskError::TimedOut {
                    after: timers.timed_out.unwrap_or_default(),
                },
                // A failed write most often means the worker died: its exit says how.
                End::Eof => crash_error(verdict, self.output.stderr_tail()),
                End::Protocol(message) => TaskError::Protocol { message },
                End::Killed(reason) => reason.error(),
                End::TimedOut(after) => TaskError::TimedOut { after },
                End::Limit(message) => TaskError::LimitExceeded { message },
                // The parent's doing, not the task's: another attempt would end the same way.
                End::Unread(limit) => {
                    return Some((
                        sub,
                        Err(TaskError::LimitExceeded {
                            message: format!(
                                "the task's unread messages went over the {limit} byte bound \
                                 (read them with TaskHandle::recv, or raise \
                                 max_unread_message_bytes)"
                            ),
                        }),
                    ));
                }
                // Shutdown is sent only to a worker with no task.
                End::Unresponsive => TaskError::PoolClosed,
            };
            self.retry_or_answer(sub, Err(err))
        });
        let mut unstarted: Vec<Box<Submission>> = inflight.into_iter().collect();
        unstarted.extend(late);
        unstarted.extend(self.unstarted());
        // The dispatcher hears of the end before the handle does (see its `biased` select).
        let _ = self.events.send(WorkerEvent::Exited {
            worker: self.worker,
            start_failure: None,
            unstarted,
        });
        if let Some((sub, outcome)) = answer {
            finish(sub, outcome);
        }
    }

    /// The worker never became ready: kill and reap it, and report why, with the end of
    /// its stderr. Killed by the pool's last drop, it is no failure at all.
    async fn start_failed(&mut self, child: &mut Child, guard: &mut GroupGuard, why: String) {
        let verdict = self
            .kill_and_reap(child, guard, "worker failed its handshake")
            .await;
        let start_failure = (!self.groups.is_closed()).then(|| {
            let tail = self.output.stderr_tail();
            // The worker's `main` ran without `init` and said so (see `PoolError::InitNeverRan`).
            let why = if tail
                .iter()
                .any(|l| l.contains(crate::errors::INIT_NEVER_RAN))
            {
                format!(
                    "{why}: its main ran without `procpool::init()`; call `procpool::init()` \
                     first in `main`, or use `#[procpool::main]`"
                )
            } else {
                why
            };
            let mut message = format!("{why} (worker {verdict})");
            if !tail.is_empty() {
                message.push_str(&format!("; its stderr: {}", tail.join(" | ")));
            }
            message
        });
        let unstarted = self.unstarted();
        let _ = self.events.send(WorkerEvent::Exited {
            worker: self.worker,
            start_failure,
            unstarted,
        });
    }

    /// Reads one frame from the worker. A successful `Done` is read in place: its result
    /// stays in the frame's buffer and goes to the caller as a slice of it, uncopied.
    fn answer(
        &self,
        frame: BytesMut,
        inflight: &VecDeque<Box<Submission>>,
    ) -> Result<Answer, procpool_proto::CodecError> {
        match procpool_proto::decode_done_in_place(&frame) {
            Some(done) if inflight.front().is_some_and(|s| s.id == done.task_id) => {
                let outcome = match done.outcome {
                    Ok(range) => Ok(frame.freeze().slice(range)),
                    Err(failure) => Err(TaskError::from_failure(failure)),
                };
                Ok(Answer::Done(outcome, done.peak_rss))
            }
            Some(_) => {
                log!(debug!(
                    worker_pid = self.pid,
                    "dropping a result for a task the worker does not own"
                ));
                Ok(Answer::Nothing)
            }
            None => procpool_proto::decode_message::<FromWorker>(&frame)
                .map(|msg| self.on_frame(msg, inflight)),
        }
    }

    /// Handles one frame about the tasks in flight.
    fn on_frame(&self, msg: FromWorker, inflight: &VecDeque<Box<Submission>>) -> Answer {
        let Some(head) = inflight.front() else {
            return Answer::Nothing;
        };
        match msg {
            FromWorker::Progress {
                task_id,
                fraction,
                message,
            } if task_id == head.id => {
                if let Some(cb) = &head.on_progress {
                    let progress = Progress {
                        task_id: uuid::Uuid::from_u128(task_id.0),
                        fraction,
                        message,
                    };
                    unwind::user_callback("on_progress", || cb(&progress));
                }
                Answer::Nothing
            }
            FromWorker::Message { task_id, bytes } if task_id == head.id => {
                match head.messages.send(bytes, self.settings.max_unread_bytes) {
                    Ok(()) => Answer::Nothing,
                    Err(full) => Answer::InboxFull(full.limit),
                }
            }
            FromWorker::Done {
                task_id,
                peak_rss,
                outcome,
            } if task_id == head.id => Answer::Done(
                outcome
                    .map(|b| Bytes::from(b.into_vec()))
                    .map_err(TaskError::from_failure),
                peak_rss,
            ),
            FromWorker::Skipped { task_id } => Answer::Skipped(task_id),
            FromWorker::Running { task_id } => Answer::Running(task_id),
            // A frame about a task this worker no longer runs (a result racing a cancel).
            other => {
                log!(debug!(
                    worker_pid = self.pid,
                    frame = ?std::mem::discriminant(&other),
                    "dropping a frame for a task the worker does not own"
                ));
                Answer::Nothing
            }
        }
    }

    /// `sub` is now the task the worker runs: attribute output, count the attempt, give
    /// back its queue permit, arm its deadline and the memory check.
    fn start(&self, sub: &mut Submission, timers: &mut Timers) {
        // The room first: whoever sees the task started may count on it.
        sub.permit = None;
        self.output.start_task(sub.id);
        sub.shared.start(self.pid);
        timers.begin(sub.timeout);
        // Resetting re-registers the interval's timer with the runtime: not on every task
        // when there is no limit to check.
        if self.settings.max_rss.is_some() {
            timers.rss_check.reset();
        }
    }

    /// The `limit_exceeded` message for a task whose peak resident memory, as its worker
    /// measured it, went above `max_rss`; logged, since the readings missed it.
    fn peak_above_limit(&self, peak: Option<u64>) -> Option<String> {
        let (peak, max) = (peak?, self.settings.max_rss?);
        (peak > max).then(|| {
            log!(debug!(
                worker_pid = self.pid,
                peak, max, "a task's peak memory went above the limit between two readings"
            ));
            crate::limits::rss_peak_above_limit(peak, max)
        })
    }

    /// Hands the task back for another attempt when its retry policy says so; otherwise
    /// returns it with its outcome, to be answered once the dispatcher was told of the
    /// end. A retry goes to the dispatcher before the worker's `Finished` or `Exited`, so
    /// the task stays known as live.
    fn retry_or_answer(
        &self,
        sub: Box<Submission>,
        outcome: Result<Bytes, TaskError>,
    ) -> Option<(Box<Submission>, Result<Bytes, TaskError>)> {
        match outcome {
            Err(error) if sub.retry.retries(&error, sub.attempt) => {
                let _ = self.events.send(WorkerEvent::Retry { sub, error });
                None
            }
            outcome => Some((sub, outcome)),
        }
    }

    /// Kills the worker's group (before reaping the leader, so the group id cannot have
    /// been recycled), reaps the leader and waits briefly for its last stderr lines.
    async fn kill_and_reap(
        &mut self,
        child: &mut Child,
        guard: &mut GroupGuard,
        reason: &str,
    ) -> ExitVerdict {
        unwind::signal(self.pgid, Signal::SIGKILL, reason);
        guard.leave_pool();
        let status = child.wait().await;
        procpool_os::worker_reaped(self.pid);
        guard.disarm();
        for reader in [self.stderr.take(), self.stdout.take()]
            .into_iter()
            .flatten()
        {
            let _ = tokio::time::timeout(STDERR_DRAIN, reader).await;
        }
        match status {
            Ok(status) => ExitVerdict::from(status),
            Err(e) => {
                log!(warn!(worker_pid = self.pid, error = %e, "waiting for worker failed"));
                ExitVerdict::Code(-1)
            }
        }
    }

    /// Starts the reader of one of the worker's output pipes.
    fn read_output(
        &mut self,
        pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
        stream: Stream,
    ) -> tokio::task::JoinHandle<()> {
        let (sync, requests) = mpsc::unbounded_channel();
        self.syncs.push(sync);
        capture(pipe, stream, self.pid, self.output.clone(), requests)
    }

    /// Waits until the output readers have read what the worker wrote before its last
    /// frame, so that its lines are the task's that just ended (`TaskOutput::Capture`).
    async fn sync_output(&self) {
        let mut answers = Vec::new();
        for sync in &self.syncs {
            let (done, answer) = oneshot::channel();
            if sync.send(done).is_ok() {
                answers.push(answer);
            }
        }
        for answer in answers {
            // A reader answers at once; the bound is for one that cannot run.
            let _ = tokio::time::timeout(STDERR_DRAIN, answer).await;
        }
    }

    /// Tasks sent to this executor that never reached the worker, to be queued again.
    #[expect(
        clippy::vec_box,
        reason = "a submission stays boxed from submit to its end; unboxing would only copy it"
    )]
    fn unstarted(&mut self) -> Vec<Box<Submission>> {
        unstarted(&mut self.commands)
    }
}

/// Closes an executor's command channel and returns the tasks in it, which never reached
/// the worker.
#[expect(
    clippy::vec_box,
    reason = "a submission stays boxed from submit to its end; unboxing would only copy it"
)]
fn unstarted(commands: &mut mpsc::UnboundedReceiver<ExecutorCommand>) -> Vec<Box<Submission>> {
    commands.close();
    let mut back = Vec::new();
    while let Ok(cmd) = commands.try_recv() {
        if let ExecutorCommand::Run(sub) = cmd {
            back.push(sub);
        }
    }
    back
}

/// The verdict for a worker that died under its task. SIGXCPU is the kernel enforcing
/// `RLIMIT_CPU`, so it is a limit, not a crash.
fn crash_error(verdict: ExitVerdict, stderr_tail: Vec<String>) -> TaskError {
    match verdict {
        ExitVerdict::Signal(sig) if sig == Signal::SIGXCPU as i32 => TaskError::LimitExceeded {
            message: "CPU time limit (RLIMIT_CPU) reached".into(),
        },
        ExitVerdict::Signal(sig) => TaskError::Crashed {
            signal: Some(sig),
            exit_code: None,
            stderr_tail,
        },
        ExitVerdict::Code(code) => TaskError::Crashed {
            signal: None,
            exit_code: Some(code),
            stderr_tail,
        },
    }
}

/// Sleeps until `deadline`, or forever without one. Reads the clock only once polled:
/// `select!` builds every branch's future on each turn, also those it then disables.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Delivers a task's outcome.
fn finish(sub: Box<Submission>, outcome: Result<Bytes, TaskError>) {
    sub.shared.end();
    let _ = sub.reply.send(outcome);
}

/// The resident memory read in flight, once it completes (`None` if the read failed).
async fn probe(probe: &mut Option<tokio::task::JoinHandle<Option<u64>>>) -> Option<u64> {
    match probe {
        Some(handle) => handle.await.ok().flatten(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the chaos runner across agents: a reading taken while a memory-hungry
    /// task ran, and answered after it ended, was held against the prefetched task that
    /// started next (`limit_exceeded` for a task that allocated nothing).
    #[tokio::test]
    async fn a_memory_reading_of_the_task_before_is_dropped_when_the_next_starts() {
        let mut timers = Timers::new();
        timers.rss_probe = Some(tokio::task::spawn_blocking(|| Some(u64::MAX)));
        timers.begin(Some(Duration::from_secs(1)));
        assert!(timers.rss_probe.is_none(), "the reading is dropped");
        assert!(timers.deadline.is_some());
    }
}
