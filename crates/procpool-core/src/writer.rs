//! The frame writer of one worker's channel. Frames are encoded straight into a shared
//! buffer, and a writer task writes everything that piled up in one `write`: a burst of
//! prefetched `Run`s costs one system call, not one each, and no per-frame message.
//!
//! The writer never signals the worker. When a write fails it records why and the
//! executor, which alone reaps the worker, kills the group: only it can keep the rule
//! that a group is killed before its leader is reaped (after the reap its id may belong
//! to someone else).

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::AsyncWriteExt as _;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::Notify;

/// Largest write buffer kept between writes; a bigger one (a large argument) is freed.
const KEEP_WRITE_BUFFER: usize = 64 << 10;

/// Why frames stopped reaching the worker.
#[derive(Clone, Debug)]
pub(crate) enum WriteFailure {
    /// Writing to the channel failed (the worker died or closed its end).
    Io(String),
    /// A frame could not be encoded within the frame limit.
    Encode(String),
}

/// The executor's side of the frame writer.
pub(crate) struct Writer {
    shared: Arc<Outbox>,
    max_frame: usize,
}

#[derive(Default)]
struct Outbox {
    pending: Mutex<Pending>,
    wake: Notify,
    /// Signalled once `Pending::failure` is set.
    failed: Notify,
}

#[derive(Default)]
struct Pending {
    frames: Vec<u8>,
    /// No more frames will come: the writer ends once `frames` is written.
    closed: bool,
    failure: Option<WriteFailure>,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, failure: WriteFailure) {
        let mut pending = self.lock();
        pending.closed = true;
        pending.failure.get_or_insert(failure);
        drop(pending);
        self.failed.notify_waiters();
    }
}

impl Writer {
    /// Writes frames in their own task, so a large or slow write never stops the executor
    /// from reading (a worker blocked on a full pipe while we block on another would
    /// deadlock). The write half is shut down once the `Writer` is dropped and all is sent.
    pub(crate) fn spawn(mut wr: OwnedWriteHalf, max_frame: usize) -> Writer {
        let shared = Arc::new(Outbox::default());
        let outbox = shared.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let closed = {
                    let mut pending = outbox.lock();
                    std::mem::swap(&mut pending.frames, &mut out);
                    pending.closed
                };
                if out.is_empty() {
                    if closed {
                        break;
                    }
                    // `notify_one` leaves a permit when nobody waits yet: a frame queued
                    // since the check still wakes us.
                    outbox.wake.notified().await;
                    continue;
                }
                if let Err(e) = wr.write_all(&out).await {
                    // A worker we cannot write to cannot finish its task: the executor
                    // ends it and gives the task a verdict instead of waiting forever.
                    outbox.fail(WriteFailure::Io(e.to_string()));
                    break;
                }
                out.clear();
                if out.capacity() > KEEP_WRITE_BUFFER {
                    out = Vec::new();
                }
            }
        });
        Writer { shared, max_frame }
    }

    /// Queues one frame for the worker. After a failure frames are dropped: the executor
    /// is ending the worker.
    pub(crate) fn send<T: serde::Serialize>(&self, msg: &T) {
        let mut pending = self.shared.lock();
        if pending.closed {
            return;
        }
        if let Err(e) = procpool_proto::encode_frame_into(msg, &mut pending.frames, self.max_frame)
        {
            drop(pending);
            // As for a failed write: the worker could not run what it was sent.
            self.shared.fail(WriteFailure::Encode(e.to_string()));
            return;
        }
        drop(pending);
        self.shared.wake.notify_one();
    }

    /// Resolves once frames can no longer reach the worker, with the reason.
    pub(crate) async fn failed(&self) -> WriteFailure {
        loop {
            // Created before the check: `notify_waiters` reaches a `Notified` from the
            // moment it exists, so a failure between check and await is not missed.
            let notified = self.shared.failed.notified();
            if let Some(failure) = self.shared.lock().failure.clone() {
                return failure;
            }
            notified.await;
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}
