//! Where a pool's supervisor runs, and how the pool stops when its last handle goes.
//!
//! The dispatcher and the executors are the same code in both modes; only their host
//! differs:
//! - **own thread** (`PoolBuilder::build`): a "procpool-supervisor" thread with a
//!   current-thread runtime. Workers are spawned on it (it lives as long as the pool), and
//!   the last drop joins it, so every worker is reaped before the drop returns.
//! - **caller's runtime** (`PoolBuilder::start`): the dispatcher and executors are tasks
//!   of the runtime `start` was awaited on. Workers are spawned on procpool-os's spawner
//!   thread, and the last drop, which must not block a runtime thread, SIGKILLs every
//!   worker group at once and leaves the reaping to the executors.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;
use std::thread::JoinHandle;

use procpool_os::{Pgid, Signal};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::internal::Command;
use crate::types::Shutdown;

/// The process groups of one pool's workers that are spawned and not yet reaped, so the
/// last drop of a pool on a caller's runtime can kill them without waiting for anyone.
#[derive(Debug, Default)]
pub(crate) struct Groups {
    inner: Mutex<GroupsInner>,
}

#[derive(Debug, Default)]
struct GroupsInner {
    /// Set by the last drop: no worker may be spawned any more.
    closed: bool,
    live: HashSet<Pgid>,
}

/// Why a spawn did not happen.
pub(crate) enum Refused {
    /// The pool is closed.
    Closed,
    /// The spawn failed (missing binary, no permission, no runtime to register with).
    Failed(String),
}

impl Groups {
    fn lock(&self) -> std::sync::MutexGuard<'_, GroupsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `spawn` and records the group of the worker it started (`pid_of`). The lock is
    /// held across the spawn: a worker is either refused before it exists or recorded
    /// before a concurrent close can look, so none is missed by the close's kill.
    pub(crate) fn spawn<C>(
        &self,
        spawn: impl FnOnce() -> std::io::Result<C>,
        pid_of: impl FnOnce(&C) -> u32,
    ) -> Result<C, Refused> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(Refused::Closed);
        }
        let child = spawn().map_err(|e| Refused::Failed(e.to_string()))?;
        inner.live.insert(Pgid::of_leader(pid_of(&child)));
        Ok(child)
    }

    /// The worker leading `pgid` was killed and is about to be reaped. Called **before**
    /// the leader is reaped: once reaped its pid (and so the group id) may be recycled, and
    /// a close must never signal a group that is no longer ours.
    pub(crate) fn forget(&self, pgid: Pgid) {
        self.lock().live.remove(&pgid);
    }

    /// Whether the pool was closed by its last drop: a worker that dies now was most
    /// likely killed by it, and its task ends with `pool_closed`, not as a crash.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Refuses further spawns and SIGKILLs every live group. Blocks only on the lock,
    /// which a spawn holds for well under a millisecond.
    pub(crate) fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        for pgid in inner.live.drain() {
            crate::unwind::signal(pgid, Signal::SIGKILL, "last pool handle dropped");
        }
    }
}

/// Where the dispatcher runs.
pub(crate) enum Host {
    /// The pool's own supervisor thread (`build`), joined by the last drop.
    Thread(Mutex<Option<JoinHandle<()>>>),
    /// The caller's runtime (`start`).
    Runtime,
}

/// Stops the pool when dropped: held by the pool's shared state (dropped with the last
/// `Pool` clone) and, during `start`, by the start-up itself, so an abandoned start-up
/// leaves nothing running either.
pub(crate) struct Stop {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) groups: std::sync::Arc<Groups>,
    pub(crate) host: Host,
}

impl Drop for Stop {
    fn drop(&mut self) {
        let (tx, _rx) = oneshot::channel();
        match &self.host {
            Host::Thread(thread) => {
                let _ = self.commands.send(Command::Shutdown(Shutdown::Kill, tx));
                let thread = thread.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(thread) = thread
                    && thread.thread().id() != std::thread::current().id()
                {
                    // Every worker is killed and reaped before this returns.
                    join_off_runtime(thread);
                }
            }
            Host::Runtime => {
                // Kill first, then tell the dispatcher: its executors see either the kill
                // order or the dead channel, and with the groups closed both mean
                // `pool_closed`. They reap the workers on the runtime; this drop may run
                // on a runtime thread and must not wait for them.
                self.groups.close();
                let _ = self.commands.send(Command::Shutdown(Shutdown::Kill, tx));
            }
        }
    }
}

/// Joins the supervisor thread. On a thread of a multi-thread tokio runtime the join goes
/// through `block_in_place`, so the runtime's other tasks move to another thread while
/// this one waits (a callback they must release may be what the supervisor waits for).
/// Elsewhere, a current-thread runtime included, it simply blocks: there is no other
/// thread to hand the work to, and the drop promises every worker reaped when it returns.
fn join_off_runtime(thread: JoinHandle<()>) {
    // A panic while unwinding would abort: no block_in_place then.
    let multi_thread = !std::thread::panicking()
        && Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    let mut thread = Some(thread);
    if multi_thread {
        // block_in_place refuses some threads (inside a `LocalSet`, say) by panicking
        // before it runs the closure: then the thread is still ours to join below.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tokio::task::block_in_place(|| {
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
            })
        }));
    }
    if let Some(thread) = thread {
        let _ = thread.join();
    }
}

/// Blocks the current thread until `fut` completes, for the blocking calls of the public
/// API (`run_blocking`, `TaskHandle::wait`, `recv_blocking`). `runtime` is the runtime a
/// pool was started on (`start`), `None` for a pool on its own thread.
///
/// A pool on a caller's runtime needs that runtime to make progress while the caller
/// blocks. On one of its threads the wait therefore goes through `block_in_place`: on a
/// multi-thread runtime that hands this thread's other tasks to the other workers; on the
/// thread of a current-thread runtime, where the wait could only deadlock, tokio panics
/// instead. Blocking-pool threads and threads outside the runtime just block.
pub(crate) fn block_on<F: Future>(runtime: Option<tokio::runtime::Id>, fut: F) -> F::Output {
    // Unconstrained: on a runtime thread, tokio's cooperative budget would otherwise make
    // the pool's channels return Pending forever once it is exhausted.
    let fut = tokio::task::unconstrained(fut);
    match (runtime, Handle::try_current()) {
        (Some(id), Ok(current)) if current.id() == id => {
            let mut blocked = false;
            let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                tokio::task::block_in_place(|| {
                    blocked = true;
                    futures::executor::block_on(fut)
                })
            }));
            match waited {
                Ok(out) => out,
                // block_in_place refused before blocking: this is the thread of a
                // current-thread runtime (or a LocalSet) that the pool itself runs on.
                Err(_) if !blocked => panic!(
                    "procpool: a blocking wait (Pool::run_blocking, TaskHandle::wait or \
                     recv_blocking) on the thread of the current-thread runtime the pool was \
                     started on would deadlock; use .await, or call it from spawn_blocking"
                ),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        _ => futures::executor::block_on(fut),
    }
}
