//! What a running task uses to talk to its parent.
//!
//! A worker runs one task at a time, so the context is process-wide: task functions keep
//! plain signatures and call these functions when they want progress or messages. Outside
//! a worker (a task function called directly) progress and sends are no-ops and
//! `recv_message` returns `None`.

use std::os::unix::net::UnixStream;
use std::sync::{Mutex, OnceLock};

use procpool_proto::{FromWorker, TaskId, ToWorker};

pub(crate) struct Channel {
    pub(crate) max_frame: usize,
    pub(crate) inbound: Inbound,
    pub(crate) writer: Mutex<Writer>,
    pub(crate) current: Mutex<Option<TaskId>>,
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

pub(crate) struct Writer {
    pub(crate) stream: UnixStream,
    pub(crate) buf: Vec<u8>,
}

pub(crate) static CHANNEL: OnceLock<Channel> = OnceLock::new();

impl Channel {
    /// Sends one frame. A failed write means the supervisor is gone (or killed us): there is
    /// nobody left to report to, so the worker ends quietly.
    pub(crate) fn send(&self, msg: &FromWorker) {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Writer { stream, buf } = &mut *w;
        if let Err(e) = procpool_proto::encode_frame(msg, buf, self.max_frame) {
            if let procpool_proto::FrameError::TooLarge { len, max } = e {
                // Report instead of sending a frame the supervisor would reject.
                if let FromWorker::Done { task_id, .. } = msg {
                    drop(w);
                    return self.send(&FromWorker::Done {
                        task_id: *task_id,
                        outcome: Err(procpool_proto::TaskFailure::Codec {
                            message: format!(
                                "result frame of {len} bytes exceeds the {max} byte limit"
                            ),
                        }),
                    });
                }
            }
            eprintln!("procpool worker: dropping an unsendable frame: {e}");
            return;
        }
        if std::io::Write::write_all(stream, buf).is_err() {
            std::process::exit(0);
        }
    }

    /// Sends a successful `Done`: the result goes out from where it lies, in one vectored
    /// write behind the message head, without being copied into a frame first.
    pub(crate) fn send_done_ok(&self, task_id: TaskId, result: &[u8]) {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Writer { stream, buf } = &mut *w;
        match procpool_proto::write_done_ok(stream, buf, task_id, result, self.max_frame) {
            Ok(()) => {}
            Err(procpool_proto::FrameError::TooLarge { len, max }) => {
                drop(w);
                // Report instead of sending a frame the supervisor would reject.
                self.send(&FromWorker::Done {
                    task_id,
                    outcome: Err(procpool_proto::TaskFailure::Codec {
                        message: format!(
                            "result frame of {len} bytes exceeds the {max} byte limit"
                        ),
                    }),
                });
            }
            Err(procpool_proto::FrameError::Io(e))
                if e.kind() == std::io::ErrorKind::InvalidData =>
            {
                eprintln!("procpool worker: dropping an unsendable frame: {e}");
            }
            // The supervisor is gone (or killed us): nobody is left to report to.
            Err(_) => std::process::exit(0),
        }
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
                    crate::runtime::request_shutdown();
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
/// Delivered to the parent's `on_progress` callback in order, before the result.
pub fn report_progress(fraction: f32, message: impl Into<String>) {
    if let Some(ch) = CHANNEL.get()
        && let Some(task_id) = ch.current()
    {
        ch.send(&FromWorker::Progress {
            task_id,
            fraction,
            message: message.into(),
        });
    }
}

/// Sends a message to the parent (read there with `TaskHandle::recv`).
pub fn send_message(bytes: impl Into<Vec<u8>>) {
    if let Some(ch) = CHANNEL.get()
        && let Some(task_id) = ch.current()
    {
        ch.send(&FromWorker::Message {
            task_id,
            bytes: bytes.into(),
        });
    }
}

/// Waits for the next message from the parent (`TaskHandle::send`). `None` when not in a
/// worker, or when the pool is shutting down.
pub fn recv_message() -> Option<Vec<u8>> {
    let ch = CHANNEL.get()?;
    let task_id = ch.current()?;
    ch.recv_for(task_id)
}

/// The id of the task running in this worker, if any.
pub fn current_task_id() -> Option<u128> {
    CHANNEL.get()?.current().map(|id| id.0)
}
