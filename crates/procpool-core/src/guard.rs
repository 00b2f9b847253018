//! `CancelOnDropHandle`: a [`TaskHandle`] that cancels its task when dropped, the opt-in
//! opposite of a plain handle, which detaches (like tokio's `AbortOnDropHandle` beside a
//! `JoinHandle`).

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use serde::de::DeserializeOwned;

use crate::errors::TaskError;
use crate::host;
use crate::task::TaskHandle;

impl<R: DeserializeOwned> TaskHandle<R> {
    /// Turns this handle into one that cancels the task when it is dropped before the task
    /// ended (a queued task never runs, a running task's worker group is killed). Await it
    /// or [`wait`](CancelOnDropHandle::wait) on it as on the handle; everything else of the
    /// handle is reached through `Deref`. [`detach`](CancelOnDropHandle::detach) gives the
    /// plain handle back.
    pub fn cancel_on_drop(self) -> CancelOnDropHandle<R> {
        CancelOnDropHandle {
            handle: Some(self),
            finished: false,
        }
    }
}

/// A [`TaskHandle`] whose drop cancels the task, from [`TaskHandle::cancel_on_drop`].
///
/// Dropping it after it resolved (awaited, [`wait`](Self::wait)) does nothing more.
#[must_use = "dropping a CancelOnDropHandle cancels its task"]
pub struct CancelOnDropHandle<R> {
    /// `None` only after `detach` or `wait` took it.
    handle: Option<TaskHandle<R>>,
    /// The handle resolved: nothing is left to cancel.
    finished: bool,
}

impl<R> std::fmt::Debug for CancelOnDropHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelOnDropHandle")
            .field("handle", &self.handle)
            .field("finished", &self.finished)
            .finish()
    }
}

impl<R: DeserializeOwned> CancelOnDropHandle<R> {
    /// The plain handle, which detaches the task when dropped.
    pub fn detach(mut self) -> TaskHandle<R> {
        self.handle
            .take()
            .expect("the handle is only taken by detach and wait, which consume self")
    }

    /// Blocks the current thread until the task ends, as [`TaskHandle::wait`] does. The
    /// task is cancelled if the wait is unwound by a panic.
    pub fn wait(mut self) -> Result<R, TaskError> {
        let runtime = self.handle().runtime();
        host::block_on(runtime, &mut self)
    }

    /// Whether the handle resolved (so dropping it cancels nothing).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn handle(&self) -> &TaskHandle<R> {
        self.handle
            .as_ref()
            .expect("the handle is only taken by detach and wait, which consume self")
    }
}

impl<R: DeserializeOwned> Deref for CancelOnDropHandle<R> {
    type Target = TaskHandle<R>;

    fn deref(&self) -> &TaskHandle<R> {
        self.handle()
    }
}

impl<R: DeserializeOwned> DerefMut for CancelOnDropHandle<R> {
    fn deref_mut(&mut self) -> &mut TaskHandle<R> {
        self.handle
            .as_mut()
            .expect("the handle is only taken by detach and wait, which consume self")
    }
}

impl<R: DeserializeOwned> Future for CancelOnDropHandle<R> {
    type Output = Result<R, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let out = ready!(Pin::new(&mut **self).poll(cx));
        self.finished = true;
        Poll::Ready(out)
    }
}

impl<R> Unpin for CancelOnDropHandle<R> {}

impl<R> Drop for CancelOnDropHandle<R> {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle
            && !self.finished
        {
            handle.send_cancel();
        }
    }
}
