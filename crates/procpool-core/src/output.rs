//! Capture of a worker's stdout and stderr, line by line, attributed to the running task.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::FutureExt as _;
use procpool_proto::TaskId;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::types::CapturedOutput;

/// Lines longer than this are cut: task output is for humans, not a data channel.
const MAX_LINE: usize = 8 * 1024;
/// Stderr lines kept for a crash report.
const TAIL_LINES: usize = 20;

/// Where the lines a task writes to its stdout and stderr go
/// ([`PoolBuilder::task_output`](crate::PoolBuilder::task_output)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskOutput {
    /// One `tracing` event per line (target `procpool::task_output`, with the task id,
    /// the worker pid and the stream): seen only where a subscriber is installed.
    #[default]
    Tracing,
    /// Written to the supervisor's own stdout or stderr (the same stream the task used),
    /// each line prefixed with `[task <first 8 hex digits of its id>] `, so a task's
    /// `println!` shows even without a tracing subscriber.
    Inherit,
    /// Kept with the task's result, up to `max_bytes` of lines (both streams together;
    /// past it lines are dropped and [`CapturedOutput::truncated`] says so), and read
    /// with [`TaskHandle::output`](crate::TaskHandle::output) once the task ended. At
    /// each task's end the supervisor reads what is left in the worker's pipes before it
    /// answers, so the lines of consecutive tasks on one worker never mix (the worker
    /// flushes its stdout before it reports the end). Output a task's grandchildren
    /// write after it ended, and output of no task (a worker starting), goes to
    /// `tracing` as in [`Tracing`](Self::Tracing); with a prefetch window, the first
    /// lines of the next task may land in the previous one's.
    Capture {
        /// Most bytes kept per task.
        max_bytes: usize,
    },
}

impl TaskOutput {
    /// [`Capture`](Self::Capture) with a bound of 1 MiB per task.
    pub const fn capture() -> TaskOutput {
        TaskOutput::Capture { max_bytes: 1 << 20 }
    }
}

/// What the output readers of one worker share with its executor.
#[derive(Default)]
pub(crate) struct OutputState {
    inner: Mutex<Inner>,
    mode: TaskOutput,
}

#[derive(Default)]
struct Inner {
    task: Option<TaskId>,
    stderr_tail: VecDeque<String>,
    /// The running task's lines, under `Capture`.
    captured: CapturedOutput,
}

impl OutputState {
    pub(crate) fn new(mode: TaskOutput) -> Self {
        OutputState {
            inner: Mutex::default(),
            mode,
        }
    }

    /// Attributes the following output to `task` and starts a fresh stderr tail.
    pub(crate) fn start_task(&self, task: TaskId) {
        let mut inner = self.lock();
        inner.task = Some(task);
        inner.stderr_tail.clear();
        inner.captured = CapturedOutput::default();
    }

    /// Whether task output is kept with results (and must be read to the end of a task
    /// before its result is answered).
    pub(crate) fn captures(&self) -> bool {
        matches!(self.mode, TaskOutput::Capture { .. })
    }

    /// The lines kept for the running task so far, under `Capture`.
    pub(crate) fn take_captured(&self) -> Option<CapturedOutput> {
        self.captures()
            .then(|| std::mem::take(&mut self.lock().captured))
    }

    pub(crate) fn stderr_tail(&self) -> Vec<String> {
        self.lock().stderr_tail.iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn task(&self) -> Option<TaskId> {
        self.lock().task
    }

    /// Emits one line, attributed to `owner`: the task running when its first byte was
    /// read (a line finished later, by the next task, still belongs to the one that began it).
    fn line(&self, pid: u32, stream: Stream, line: &[u8], owner: Option<TaskId>) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        {
            let mut inner = self.lock();
            // Before the first task (a worker starting) both are `None`: its stderr is
            // what a start failure reports.
            let current = inner.task == owner;
            if stream == Stream::Stderr && current {
                if inner.stderr_tail.len() == TAIL_LINES {
                    inner.stderr_tail.pop_front();
                }
                inner.stderr_tail.push_back(text.to_owned());
            }
            if let TaskOutput::Capture { max_bytes } = self.mode
                && current
                && owner.is_some()
            {
                let captured = &mut inner.captured;
                let used = captured.stdout.len() + captured.stderr.len();
                if used + text.len() < max_bytes && !captured.truncated {
                    let to = match stream {
                        Stream::Stdout => &mut captured.stdout,
                        Stream::Stderr => &mut captured.stderr,
                    };
                    to.push_str(text);
                    to.push('\n');
                } else {
                    captured.truncated = true;
                }
                return;
            }
        }
        let task_id = owner.map(|t| uuid::Uuid::from_u128(t.0));
        if self.mode == TaskOutput::Inherit {
            inherit_line(stream, task_id, text);
            return;
        }
        match stream {
            Stream::Stdout => {
                log!(
                    info!(target: "procpool::task_output", task_id = ?task_id, worker_pid = pid, stream = "stdout", "{text}")
                )
            }
            Stream::Stderr => {
                log!(
                    info!(target: "procpool::task_output", task_id = ?task_id, worker_pid = pid, stream = "stderr", "{text}")
                )
            }
        }
    }
}

/// Writes one task line to the supervisor's stream of the same name, whole: a locked
/// write of the prefixed line, so lines of concurrent tasks never interleave mid-line.
fn inherit_line(stream: Stream, task_id: Option<uuid::Uuid>, text: &str) {
    use std::io::Write;
    let prefix = match task_id {
        Some(id) => format!("[task {}] ", &id.simple().to_string()[..8]),
        None => "[worker] ".to_owned(),
    };
    let line = format!("{prefix}{text}\n");
    // A closed supervisor stream loses task output, never the supervisor.
    let _ = match stream {
        Stream::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
        Stream::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
    };
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// A request to a reader: read what the pipe holds now, then answer.
pub(crate) type Sync = oneshot::Sender<()>;

/// Reads `reader` to its end, one event per line. Returns when the worker (and everything
/// that inherited the descriptor) has closed it. A request on `sync` makes it read what
/// the pipe holds at once and end the line in progress before it answers: what the
/// worker wrote before the request's cause (a task's end) is then attributed.
pub(crate) fn capture(
    mut reader: impl AsyncRead + Unpin + Send + 'static,
    stream: Stream,
    pid: u32,
    state: Arc<OutputState>,
    mut sync: mpsc::UnboundedReceiver<Sync>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut lines = Lines::new(stream, pid, state);
        loop {
            let read = tokio::select! {
                biased;
                Some(done) = sync.recv() => {
                    // The runtime has seen the task's end, and with it (epoll reports in
                    // order) the readiness of what was written to the pipe before: each
                    // read below finds data or would block, never waits.
                    let mut open = true;
                    while let Some(read) = reader.read(&mut buf).now_or_never() {
                        match read {
                            Ok(0) | Err(_) => {
                                open = false;
                                break;
                            }
                            Ok(n) => lines.feed(&buf[..n]),
                        }
                    }
                    lines.end_line();
                    let _ = done.send(());
                    if open {
                        continue;
                    }
                    break;
                }
                read = reader.read(&mut buf) => read,
            };
            match read {
                Ok(0) | Err(_) => break,
                Ok(n) => lines.feed(&buf[..n]),
            }
        }
        lines.end_line();
    })
}

/// Splits a stream into lines, each attributed to the task that ran when its first byte
/// was read.
struct Lines {
    stream: Stream,
    pid: u32,
    state: Arc<OutputState>,
    line: Vec<u8>,
    truncated: bool,
    owner: Option<TaskId>,
}

impl Lines {
    fn new(stream: Stream, pid: u32, state: Arc<OutputState>) -> Lines {
        Lines {
            stream,
            pid,
            state,
            line: Vec::new(),
            truncated: false,
            owner: None,
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            let (body, ends) = match chunk.split_last() {
                Some((b'\n', body)) => (body, true),
                _ => (chunk, false),
            };
            if self.line.is_empty() && !self.truncated {
                self.owner = self.state.task();
            }
            let room = MAX_LINE.saturating_sub(self.line.len());
            if body.len() > room {
                self.truncated = true;
            }
            self.line.extend_from_slice(&body[..body.len().min(room)]);
            if ends {
                self.emit();
            }
        }
    }

    /// Emits the line in progress, if it has begun.
    fn end_line(&mut self) {
        if !self.line.is_empty() || self.truncated {
            self.emit();
        }
    }

    fn emit(&mut self) {
        if self.truncated {
            self.line.extend_from_slice(b" [line truncated]");
        }
        self.state
            .line(self.pid, self.stream, &self.line, self.owner);
        self.line.clear();
        self.truncated = false;
    }
}
