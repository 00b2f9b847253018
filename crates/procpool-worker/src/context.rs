//! What a running task uses to talk to its parent.
//!
//! A worker runs one task at a time, so the context is process-wide: task functions keep
//! plain signatures and call these functions when they want progress or messages. Outside
//! a worker (a task function called directly) progress and sends are no-ops and
//! `recv_message` returns `None`.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use procpool_proto::{FromWorker, TaskId, ToWorker};

use crate::outbound::{Outbound, Oversized};

pub(crate) struct Channel {
    pub(crate) max_frame: usize,
    pub(crate) inbound: Inbound,
    pub(crate) outbound: Outbound,
    pub(crate) current: Mutex<Option<TaskId>>,
    /// Why the running task's outcome must be a failure although it may return `Ok`: a
    /// progress report or message of it was above the frame cap and never sent.
    pub(crate) unsent: Mutex<Option<String>>,
}

/// Who reads frames from the supervisor.
pub(crate) enum Inbound {
    /// The main thread, between tasks (and a task in `recv_message`).
    Direct(Mutex<Reader>),
    /// A reader thread, in prefetch mode.
    Prefetch(crate::window::Window),
}

pub(crate) struct Reader {
    /// Buffered: a small frame's prefix and payload come in with one read.
    pub(crate) stream: std::io::BufReader<UnixStream>,
    pub(crate) buf: Vec<u8>,
}

pub(crate) static CHANNEL: OnceLock<Channel> = OnceLock::new();

/// The supervisor asked the worker to stop; the main loop ends after the running task.
static SHUTDOWN: AtomicBool = AtomicBool::new(false);

pub(crate) fn request_shutdown() {
    SHUTDOWN.store(true, Ordering::Relaxed);
}

pub(crate) fn shutdown_requested() -> bool {
    SHUTDOWN.load(Ordering::Relaxed)
}

impl Channel {
    /// Sends a progress report or message of the running task. One above the frame cap
    /// is not sent; the task then ends with a codec error saying so, rather than a
    /// success that silently lost part of what it sent.
    fn send_from_task(&self, what: &str, msg: &FromWorker) {
        if let Err(Oversized { len, max }) = self.outbound.send(msg) {
            let why = format!(
                "a {what} frame of {len} bytes exceeds the {max} byte frame cap and was not sent"
            );
            eprintln!("procpool worker: {why}");
            self.unsent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(why);
        }
    }

    /// Takes the reason recorded by [`send_from_task`](Self::send_from_task), if any.
    pub(crate) fn take_unsent(&self) -> Option<String> {
        self.unsent.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub(crate) fn current(&self) -> Option<TaskId> {
        *self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the next frame addressed to the running task. Messages for a task that is no
    /// longer running (a late send racing the result) are dropped here.
    fn recv_for(&self, task_id: TaskId) -> Option<Vec<u8>> {
        let reader = match &self.inbound {
            Inbound::Direct(reader) => reader,
            Inbound::Prefetch(window) => return window.recv(task_id),
        };
        let mut r = reader.lock().unwrap_or_else(|p| p.into_inner());
        let Reader { stream, buf } = &mut *r;
        loop {
            match procpool_proto::read_frame(stream, buf, self.max_frame) {
                Ok(true) => {}
                // The supervisor is gone: nothing will ever arrive.
                Ok(false) | Err(_) => std::process::exit(0),
            }
            match procpool_proto::decode_message::<ToWorker>(buf) {
                Ok(ToWorker::Message { task_id: id, bytes }) if id == task_id => {
                    return Some(bytes);
                }
                Ok(ToWorker::Message { .. }) => continue,
                // The supervisor asked us to stop: finish this task, then exit.
                Ok(ToWorker::Shutdown) => {
                    request_shutdown();
                    return None;
                }
                Ok(ToWorker::Run { .. } | ToWorker::Cancel { .. }) => {
                    eprintln!(
                        "procpool worker: protocol violation: Run or Cancel outside prefetch mode while a task runs"
                    );
                    std::process::exit(70);
                }
                Err(e) => {
                    eprintln!("procpool worker: undecodable frame from the supervisor: {e}");
                    std::process::exit(70);
                }
            }
        }
    }
}

/// Reports progress of the running task: `fraction` from 0.0 to 1.0 and a description.
/// Delivered to the parent's `on_progress` callback in order, before the result. A report
/// larger than the pool's frame cap is not sent, and the task then fails with a codec
/// error naming its size.
pub fn report_progress(fraction: f32, message: impl Into<String>) {
    if let Some(ch) = CHANNEL.get()
        && let Some(task_id) = ch.current()
    {
        ch.send_from_task(
            "progress",
            &FromWorker::Progress {
                task_id,
                fraction,
                message: message.into(),
            },
        );
    }
}

/// Sends a message to the parent (read there with `TaskHandle::recv`). A message larger
/// than the pool's frame cap (64 MiB unless the pool sets another) is not sent, and the
/// task then fails with a codec error naming its size.
pub fn send_message(bytes: impl Into<Vec<u8>>) {
    if let Some(ch) = CHANNEL.get()
        && let Some(task_id) = ch.current()
    {
        ch.send_from_task(
            "message",
            &FromWorker::Message {
                task_id,
                bytes: bytes.into(),
            },
        );
    }
}

/// Waits for the next message from the parent (`TaskHandle::send`). `None` when not in a
/// worker, or when the pool is shutting down.
pub fn recv_message() -> Option<Vec<u8>> {
    let ch = CHANNEL.get()?;
    let task_id = ch.current()?;
    ch.recv_for(task_id)
}

/// The id of the task running in this worker (the [`Uuid`] of its `Task` and handle in
/// the parent), if any.
pub fn current_task_id() -> Option<uuid::Uuid> {
    CHANNEL
        .get()?
        .current()
        .map(|id| uuid::Uuid::from_u128(id.0))
}
