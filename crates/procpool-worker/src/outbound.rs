//! The worker's sending side: frames to the supervisor, checked against the frame cap
//! before anything is written. A leaf: the task context, the prefetch reader and the
//! main loop all send through it.

use std::io::PipeWriter;
use std::sync::Mutex;

use procpool_proto::{FrameError, FromWorker, TaskFailure, TaskId};

/// A frame that was not sent because it exceeds the supervisor's frame cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Oversized {
    pub(crate) len: usize,
    pub(crate) max: usize,
}

/// Frames to the supervisor, one writer at a time.
pub(crate) struct Outbound {
    max_frame: usize,
    writer: Mutex<Writer>,
}

struct Writer {
    /// The result pipe (see `procpool_os::result_pipe`).
    stream: PipeWriter,
    buf: Vec<u8>,
}

impl Outbound {
    pub(crate) fn new(stream: PipeWriter, max_frame: usize) -> Self {
        Outbound {
            max_frame,
            writer: Mutex::new(Writer {
                stream,
                buf: Vec::new(),
            }),
        }
    }

    /// Sends one frame. A frame above the cap is not sent (the supervisor would reject
    /// it and kill the worker): the caller decides how to report it. A failed write means
    /// the supervisor is gone (or killed us): nobody is left to report to, so the worker
    /// ends quietly.
    pub(crate) fn send(&self, msg: &FromWorker) -> Result<(), Oversized> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Writer { stream, buf } = &mut *w;
        match procpool_proto::encode_frame(msg, buf, self.max_frame) {
            Ok(()) => {}
            Err(FrameError::TooLarge { len, max }) => return Err(Oversized { len, max }),
            Err(e) => {
                // Encoding into memory fails only on a value serde cannot encode, which
                // the worker's own message types never are.
                eprintln!("procpool worker: dropping an unsendable frame: {e}");
                return Ok(());
            }
        }
        if std::io::Write::write_all(stream, buf).is_err() {
            std::process::exit(0);
        }
        Ok(())
    }

    /// Sends a failed `Done`. A failure too large for a frame (a huge user error message)
    /// is replaced by a codec error that says so.
    pub(crate) fn send_done_err(
        &self,
        task_id: TaskId,
        peak_rss: Option<u64>,
        failure: TaskFailure,
    ) {
        let done = FromWorker::Done {
            task_id,
            peak_rss,
            outcome: Err(failure),
        };
        if let Err(Oversized { len, max }) = self.send(&done) {
            self.send_too_large(task_id, peak_rss, len, max);
        }
    }

    /// Sends a successful `Done`: the result goes out from where it lies, in one vectored
    /// write behind the message head, without being copied into a frame first.
    pub(crate) fn send_done_ok(&self, task_id: TaskId, peak_rss: Option<u64>, result: &[u8]) {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Writer { stream, buf } = &mut *w;
        match procpool_proto::write_done_ok(stream, buf, task_id, peak_rss, result, self.max_frame)
        {
            Ok(()) => {}
            Err(FrameError::TooLarge { len, max }) => {
                drop(w);
                self.send_too_large(task_id, peak_rss, len, max);
            }
            Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                eprintln!("procpool worker: dropping an unsendable frame: {e}");
            }
            // The supervisor is gone (or killed us): nobody is left to report to.
            Err(_) => std::process::exit(0),
        }
    }

    /// Reports a result that does not fit a frame, instead of sending a frame the
    /// supervisor would reject.
    fn send_too_large(&self, task_id: TaskId, peak_rss: Option<u64>, len: usize, max: usize) {
        let done = FromWorker::Done {
            task_id,
            peak_rss,
            outcome: Err(TaskFailure::Codec {
                message: format!("result frame of {len} bytes exceeds the {max} byte limit"),
            }),
        };
        // A few hundred bytes: below any cap the supervisor accepts.
        let _ = self.send(&done);
    }
}
