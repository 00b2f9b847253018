//! The worker's sending side: frames to the supervisor, checked against the frame cap
//! before anything is written, on the result pipe (large ones on the channel). A leaf:
//! the task context, the prefetch reader and the main loop all send through it.

use std::io::{IoSlice, PipeWriter, Write};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use procpool_proto::{FrameError, FromWorker, LARGE_FRAME, TaskFailure, TaskId};

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
    /// The result pipe (see `procpool_os::result_pipe`): every frame but large ones.
    pipe: PipeWriter,
    /// The channel: frames of `LARGE_FRAME` bytes or more, each announced on the pipe.
    channel: UnixStream,
    buf: Vec<u8>,
    /// The `OnChannel` frame that announces one.
    on_channel: Vec<u8>,
}

impl Writer {
    /// Splits the writer into the buffer and the stream for one frame.
    fn parts(&mut self) -> (&mut Vec<u8>, Route<'_>) {
        let Writer {
            pipe,
            channel,
            buf,
            on_channel,
        } = self;
        let route = Route {
            pipe,
            channel,
            on_channel,
            large: None,
        };
        (buf, route)
    }
}

/// The stream for one frame, chosen at its first write, when its whole length is known
/// (the codec writes a frame in one `write_all` or one vectored loop, and only after it
/// checked the frame's size): the pipe, or for a large frame the channel, announced on
/// the pipe first. The supervisor reads the pipe in order and takes the next frame from
/// the channel at the announcement, so the order holds across the two.
struct Route<'a> {
    pipe: &'a mut PipeWriter,
    channel: &'a mut UnixStream,
    on_channel: &'a [u8],
    large: Option<bool>,
}

impl Write for Route<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        let large = match self.large {
            Some(large) => large,
            None => {
                let large = bufs.iter().map(|b| b.len()).sum::<usize>() >= LARGE_FRAME;
                if large {
                    self.pipe.write_all(self.on_channel)?;
                }
                self.large = Some(large);
                large
            }
        };
        if large {
            self.channel.write_vectored(bufs)
        } else {
            self.pipe.write_vectored(bufs)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Outbound {
    pub(crate) fn new(pipe: PipeWriter, channel: UnixStream, max_frame: usize) -> Self {
        let mut on_channel = Vec::new();
        procpool_proto::encode_frame(&FromWorker::OnChannel, &mut on_channel, max_frame)
            .expect("a one-byte frame fits any cap");
        Outbound {
            max_frame,
            writer: Mutex::new(Writer {
                pipe,
                channel,
                buf: Vec::new(),
                on_channel,
            }),
        }
    }

    /// Sends one frame. A frame above the cap is not sent (the supervisor would reject
    /// it and kill the worker): the caller decides how to report it. A failed write means
    /// the supervisor is gone (or killed us): nobody is left to report to, so the worker
    /// ends quietly.
    pub(crate) fn send(&self, msg: &FromWorker) -> Result<(), Oversized> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let (buf, mut stream) = w.parts();
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
        if stream.write_all(buf).is_err() {
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
        let (buf, mut stream) = w.parts();
        match procpool_proto::write_done_ok(
            &mut stream,
            buf,
            task_id,
            peak_rss,
            result,
            self.max_frame,
        ) {
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
