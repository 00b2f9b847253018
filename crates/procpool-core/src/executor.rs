//! One executor per worker process: spawns it, runs the handshake, relays frames for the
//! task it is given, and turns the worker's death into the right verdict for that task.
//! It never touches pool-wide state; it talks to the dispatcher through channels only.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use procpool_os::{ExitVerdict, Pgid, Signal};
use procpool_proto::{ENV_MAX_FRAME, ENV_PARENT_PID, ENV_WORKER, FrameCodec, FromWorker, ToWorker};
use tokio::net::UnixStream;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::errors::TaskError;
use crate::internal::{ExecutorCommand, KillReason, Submission, WorkerEvent, WorkerId};
use crate::output::{OutputState, Stream, capture};
use crate::pool::Settings;
use crate::task::Progress;

/// How long to wait for the rest of a dead worker's stderr before writing the verdict.
const STDERR_DRAIN: Duration = Duration::from_millis(100);

/// Kills the worker's whole group if the executor goes away without reaping it (a panic,
/// or the runtime shutting down under it). Disarmed once the worker is reaped.
struct GroupGuard(Option<Pgid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            pgid.signal(
                Signal::SIGKILL,
                "executor dropped without reaping its worker",
            );
        }
    }
}

/// Starts a worker process and its executor task. Errors are those of the spawn itself
/// (missing binary, no permission); a worker that starts but fails its handshake is
/// reported later as `Exited { start_failure }`.
pub(crate) fn start(
    settings: &Arc<Settings>,
    worker: WorkerId,
    events: mpsc::UnboundedSender<WorkerEvent>,
) -> Result<mpsc::UnboundedSender<ExecutorCommand>, String> {
    let (ours, theirs) = procpool_os::channel_pair().map_err(|e| e.to_string())?;
    let mut cmd = tokio::process::Command::new(&settings.worker);
    cmd.args(&settings.worker_args)
        .envs(settings.env.iter().map(|(k, v)| (k, v)))
        .env(ENV_WORKER, "1")
        .env(ENV_PARENT_PID, std::process::id().to_string())
        .env(ENV_MAX_FRAME, settings.max_frame.to_string())
        // The worker end rides in on stdin; the worker moves it to a high descriptor and
        // reopens stdin on /dev/null. No pre_exec closure: std keeps its posix_spawn path.
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let spawned = cmd.spawn();
    // The Command holds the worker's end of the channel; drop it now, or our side would
    // never see EOF when the worker dies.
    drop(cmd);
    let mut child = spawned.map_err(|e| e.to_string())?;
    let pid = child.id().expect("a just-spawned child has a pid");
    let std_stream = std::os::unix::net::UnixStream::from(ours);
    std_stream
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    let stream = UnixStream::from_std(std_stream).map_err(|e| e.to_string())?;

    let output = Arc::new(OutputState::default());
    let stdout = child
        .stdout
        .take()
        .map(|s| capture(s, Stream::Stdout, pid, output.clone()));
    let stderr = child
        .stderr
        .take()
        .map(|s| capture(s, Stream::Stderr, pid, output.clone()));

    let (tx, rx) = mpsc::unbounded_channel();
    let exec = Executor {
        worker,
        pid,
        pgid: Pgid::of_leader(pid),
        settings: settings.clone(),
        events,
        commands: rx,
        output,
        stdout,
        stderr,
    };
    tokio::spawn(exec.run(child, stream));
    Ok(tx)
}

struct Executor {
    worker: WorkerId,
    pid: u32,
    pgid: Pgid,
    settings: Arc<Settings>,
    events: mpsc::UnboundedSender<WorkerEvent>,
    commands: mpsc::UnboundedReceiver<ExecutorCommand>,
    output: Arc<OutputState>,
    stdout: Option<tokio::task::JoinHandle<()>>,
    stderr: Option<tokio::task::JoinHandle<()>>,
}

/// Why the executor loop ended.
enum End {
    /// The channel reached EOF: the worker exited or died.
    Eof,
    /// The worker sent something that is not protocol.
    Protocol(String),
    /// We decided to kill it.
    Killed(KillReason),
}

impl Executor {
    async fn run(mut self, mut child: Child, stream: UnixStream) {
        let mut guard = GroupGuard(Some(self.pgid));
        let (rd, wr) = stream.into_split();
        let codec = FrameCodec::new(self.settings.max_frame);
        let mut frames = FramedRead::new(rd, codec);
        let writer = spawn_writer(FramedWrite::new(wr, codec), self.pgid);

        // Handshake. Only a stop (KillNow, Shutdown, the dispatcher gone) can reach a worker
        // that is not ready yet; it must not wait for the start timeout.
        let hello = tokio::select! {
            first = tokio::time::timeout(self.settings.start_timeout, frames.next()) => match first {
                Ok(Some(Ok(frame))) => procpool_proto::decode_hello(&frame).map_err(|e| e.to_string()),
                Ok(Some(Err(e))) => Err(format!("bad handshake frame: {e}")),
                Ok(None) => Err("the worker closed its channel before the handshake".to_owned()),
                Err(_) => Err(format!(
                    "no handshake within {:?}: is it a procpool worker (does its main call procpool::init)?",
                    self.settings.start_timeout
                )),
            },
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
        let hello = match hello {
            Ok(hello) => hello,
            Err(why) => {
                let verdict = self
                    .kill_and_reap(&mut child, &mut guard, "worker failed its handshake")
                    .await;
                let mut message = format!("{why} (worker {verdict})");
                let tail = self.output.stderr_tail();
                if !tail.is_empty() {
                    message.push_str(&format!("; its stderr: {}", tail.join(" | ")));
                }
                let unstarted = self.unstarted();
                let _ = self.events.send(WorkerEvent::Exited {
                    worker: self.worker,
                    start_failure: Some(message),
                    unstarted,
                });
                return;
            }
        };
        if hello.pid != self.pid {
            tracing::debug!(
                worker_pid = self.pid,
                announced = hello.pid,
                "worker announced another pid (pid namespace?)"
            );
        }
        let _ = self.events.send(WorkerEvent::Ready {
            worker: self.worker,
            pid: self.pid,
            manifest: hello.tasks,
        });

        let mut current: Option<Submission> = None;
        let mut draining = false;
        let end = loop {
            tokio::select! {
                frame = frames.next() => match frame {
                    Some(Ok(bytes)) => match procpool_proto::decode_message::<FromWorker>(&bytes) {
                        Ok(msg) => {
                            if self.on_frame(msg, &mut current) && draining && current.is_none() {
                                let _ = writer.send(ToWorker::Shutdown);
                            }
                        }
                        Err(e) => break End::Protocol(format!("undecodable frame from worker: {e}")),
                    },
                    Some(Err(e)) => break End::Protocol(format!("bad frame from worker: {e}")),
                    None => break End::Eof,
                },
                cmd = self.commands.recv() => match cmd {
                    Some(ExecutorCommand::Run(mut sub)) => {
                        self.output.start_task(sub.id);
                        sub.shared.start(self.pid);
                        let _ = writer.send(ToWorker::Run {
                            task_id: sub.id,
                            name: std::mem::take(&mut sub.name),
                            args: std::mem::take(&mut sub.args),
                            encoding: sub.encoding,
                        });
                        for bytes in std::mem::take(&mut sub.early_messages) {
                            let _ = writer.send(ToWorker::Message { task_id: sub.id, bytes });
                        }
                        current = Some(sub);
                    }
                    Some(ExecutorCommand::Message(task_id, bytes)) => {
                        if current.as_ref().is_some_and(|c| c.id == task_id) {
                            let _ = writer.send(ToWorker::Message { task_id, bytes });
                        }
                    }
                    Some(ExecutorCommand::Kill(task_id, reason)) => {
                        // The task may have finished while the kill was on its way: then
                        // the worker is healthy and stays.
                        if current.as_ref().is_some_and(|c| c.id == task_id) {
                            break End::Killed(reason);
                        }
                    }
                    Some(ExecutorCommand::KillNow) | None => break End::Killed(KillReason::PoolClosed),
                    Some(ExecutorCommand::Shutdown) => {
                        draining = true;
                        if current.is_none() {
                            let _ = writer.send(ToWorker::Shutdown);
                        }
                    }
                },
            }
        };
        drop(writer);

        let reason = match &end {
            End::Eof if current.is_none() => "worker closed its channel",
            End::Eof => "worker closed its channel during a task",
            End::Protocol(_) => "worker broke the protocol",
            End::Killed(KillReason::Cancelled) => "task cancelled",
            End::Killed(KillReason::PoolClosed) => "pool closed",
        };
        let verdict = self.kill_and_reap(&mut child, &mut guard, reason).await;
        tracing::debug!(worker_pid = self.pid, %verdict, reason, "worker ended");
        if let Some(sub) = current {
            let err = match end {
                End::Eof => {
                    let (signal, exit_code) = match verdict {
                        ExitVerdict::Signal(s) => (Some(s), None),
                        ExitVerdict::Code(c) => (None, Some(c)),
                    };
                    TaskError::Crashed {
                        signal,
                        exit_code,
                        stderr_tail: self.output.stderr_tail(),
                    }
                }
                End::Protocol(message) => TaskError::Protocol { message },
                End::Killed(KillReason::Cancelled) => TaskError::Cancelled,
                End::Killed(KillReason::PoolClosed) => TaskError::PoolClosed,
            };
            finish(sub, Err(err));
        }
        let unstarted = self.unstarted();
        let _ = self.events.send(WorkerEvent::Exited {
            worker: self.worker,
            start_failure: None,
            unstarted,
        });
    }

    /// Handles one frame; returns true when it finished the current task.
    fn on_frame(&self, msg: FromWorker, current: &mut Option<Submission>) -> bool {
        let is_current = |id| current.as_ref().is_some_and(|c: &Submission| c.id == id);
        match msg {
            FromWorker::Progress {
                task_id,
                fraction,
                message,
            } if is_current(task_id) => {
                let sub = current.as_ref().expect("checked by is_current");
                if let Some(cb) = &sub.on_progress {
                    cb(&Progress {
                        task_id: uuid::Uuid::from_u128(task_id.0),
                        fraction,
                        message,
                    });
                }
                false
            }
            FromWorker::Message { task_id, bytes } if is_current(task_id) => {
                let sub = current.as_ref().expect("checked by is_current");
                let _ = sub.messages.send(bytes);
                false
            }
            FromWorker::Done { task_id, outcome } if is_current(task_id) => {
                let sub = current.take().expect("checked by is_current");
                finish(
                    sub,
                    outcome
                        .map(|b| b.into_vec())
                        .map_err(TaskError::from_failure),
                );
                let _ = self.events.send(WorkerEvent::Idle {
                    worker: self.worker,
                });
                true
            }
            // A frame about a task this worker no longer runs (a result racing a cancel).
            other => {
                tracing::debug!(worker_pid = self.pid, frame = ?std::mem::discriminant(&other), "dropping a frame for a task the worker does not own");
                false
            }
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
        self.pgid.signal(Signal::SIGKILL, reason);
        let status = child.wait().await;
        guard.0 = None;
        for reader in [self.stderr.take(), self.stdout.take()]
            .into_iter()
            .flatten()
        {
            let _ = tokio::time::timeout(STDERR_DRAIN, reader).await;
        }
        match status {
            Ok(status) => ExitVerdict::from(status),
            Err(e) => {
                tracing::warn!(worker_pid = self.pid, error = %e, "waiting for worker failed");
                ExitVerdict::Code(-1)
            }
        }
    }

    /// Tasks sent to this executor that never reached the worker, to be queued again.
    fn unstarted(&mut self) -> Vec<Submission> {
        self.commands.close();
        let mut back = Vec::new();
        while let Ok(cmd) = self.commands.try_recv() {
            if let ExecutorCommand::Run(sub) = cmd {
                back.push(sub);
            }
        }
        back
    }
}

/// Delivers a task's outcome.
fn finish(sub: Submission, outcome: Result<Vec<u8>, TaskError>) {
    sub.shared.end();
    let _ = sub.reply.send(outcome);
}

/// Writes frames in their own task, so a large or slow write never stops the executor from
/// reading (a worker blocked on a full pipe while we block on another would deadlock).
fn spawn_writer(
    mut sink: FramedWrite<tokio::net::unix::OwnedWriteHalf, FrameCodec>,
    pgid: Pgid,
) -> mpsc::UnboundedSender<ToWorker> {
    let (tx, mut rx) = mpsc::unbounded_channel::<ToWorker>();
    tokio::spawn(async move {
        let result: Result<(), procpool_proto::FrameError> = async {
            while let Some(msg) = rx.recv().await {
                sink.feed(&msg).await?;
                while let Ok(msg) = rx.try_recv() {
                    sink.feed(&msg).await?;
                }
                SinkExt::<&ToWorker>::flush(&mut sink).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            // A worker we cannot write to cannot finish its task: end it, so the executor
            // sees EOF and gives the task a verdict instead of waiting forever.
            tracing::debug!(pgid = pgid.get(), error = %e, "write to worker failed");
            pgid.signal(Signal::SIGKILL, "write to worker failed");
        }
    });
    tx
}
