//! Capture of a worker's stdout and stderr, line by line, attributed to the running task.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use procpool_proto::TaskId;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;

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
            if stream == Stream::Stderr && inner.task == owner {
                if inner.stderr_tail.len() == TAIL_LINES {
                    inner.stderr_tail.pop_front();
                }
                inner.stderr_tail.push_back(text.to_owned());
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

/// Reads `reader` to its end, one event per line. Returns when the worker (and everything
/// that inherited the descriptor) has closed it.
pub(crate) fn capture(
    mut reader: impl AsyncRead + Unpin + Send + 'static,
    stream: Stream,
    pid: u32,
    state: Arc<OutputState>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut line: Vec<u8> = Vec::new();
        let mut truncated = false;
        let mut owner = None;
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for chunk in buf[..n].split_inclusive(|b| *b == b'\n') {
                let (body, ends) = match chunk.split_last() {
                    Some((b'\n', body)) => (body, true),
                    _ => (chunk, false),
                };
                if line.is_empty() && !truncated {
                    owner = state.task();
                }
                let room = MAX_LINE.saturating_sub(line.len());
                if body.len() > room {
                    truncated = true;
                }
                line.extend_from_slice(&body[..body.len().min(room)]);
                if ends {
                    if truncated {
                        line.extend_from_slice(b" [line truncated]");
                    }
                    state.line(pid, stream, &line, owner);
                    line.clear();
                    truncated = false;
                }
            }
        }
        if !line.is_empty() {
            state.line(pid, stream, &line, owner);
        }
    })
}
