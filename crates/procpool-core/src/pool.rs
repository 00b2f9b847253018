//! `Pool` and `PoolBuilder`: the public face of the supervisor.

use std::sync::{Arc, Mutex};

use procpool_proto::{TaskId, TaskInfo};
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::config::{PoolBuilder, Settings};
use crate::dispatcher::Dispatcher;
use crate::errors::{PoolError, TaskError};
use crate::host::{self, Groups, Host, Stop};
use crate::internal::Command;
use crate::remote::Served;
use crate::spawn::{Launcher, Spawner};
use crate::task::{Task, TaskHandle};
use crate::types::{PoolStatus, Shutdown};

/// A process started as a worker whose `main` runs anyway never called `init` (which
/// serves tasks and never returns, or removes the worker variable): its pool would start
/// workers that do the same, one generation after another. Refused, and said on stderr,
/// which the supervisor of this process reports when it sees no handshake.
fn refuse_in_uninitialised_worker() -> Result<(), PoolError> {
    if std::env::var_os(procpool_proto::ENV_WORKER).is_none() {
        return Ok(());
    }
    let err = PoolError::InitNeverRan;
    eprintln!("procpool: {err}");
    Err(err)
}

impl PoolBuilder {
    /// Starts the pool on its own supervisor thread and returns once every initial worker
    /// completed its handshake (about a millisecond each, in parallel). Blocks the calling
    /// thread meanwhile. Fails with [`PoolError::WorkerStart`] when the worker binary is
    /// missing, not executable, or not a procpool worker; nothing is left running.
    ///
    /// The default mode, usable from any code. A tokio application gets shorter round
    /// trips from [`start`](Self::start).
    pub fn build(&self) -> Result<Pool, PoolError> {
        refuse_in_uninitialised_worker()?;
        let settings = Arc::new(self.settings()?);
        let (commands, rx) = mpsc::unbounded_channel();
        let (started_tx, started_rx) = oneshot::channel();
        let groups = Arc::new(Groups::default());
        let launcher = Launcher {
            spawner: Spawner::Here,
            groups: groups.clone(),
        };
        let thread_settings = settings.clone();
        let thread = std::thread::Builder::new()
            .name("procpool-supervisor".into())
            .spawn(move || {
                // Workers are spawned from this thread (`Spawner::Here`), which lives as
                // long as the pool: their PR_SET_PDEATHSIG fires when the spawning *thread*
                // exits.
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started_tx
                            .send(Err(format!("cannot start the supervisor runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(Dispatcher::new(thread_settings, rx, started_tx, launcher).run());
            })
            .map_err(PoolError::Supervisor)?;
        let stop = Stop {
            commands: commands.clone(),
            groups,
            host: Host::Thread(Mutex::new(Some(thread))),
        };
        // Unconstrained: `build` may be called on a runtime thread, whose exhausted
        // cooperative budget would keep the oneshot Pending forever.
        let started = futures::executor::block_on(tokio::task::unconstrained(started_rx));
        // On failure, dropping `stop` joins the thread: every worker is reaped by then.
        let manifest = started_manifest(&settings, started)?;
        Ok(Pool::new(commands, manifest, settings, stop, None))
    }

    /// Starts the pool on the caller's tokio runtime: the dispatcher and one executor per
    /// worker become tasks of the runtime this future is awaited on, so a task's round
    /// trip wakes no supervisor thread in between (about half the latency of
    /// [`build`](Self::build) on a 2-CPU machine, and higher strict throughput). Returns
    /// once every initial worker completed its handshake; fails like `build`
    /// ([`PoolError::WorkerStart`]), with nothing left running, and with
    /// [`PoolError::Runtime`] when not called from within a tokio runtime. Dropping this
    /// future before it completes stops whatever it started.
    ///
    /// The runtime needs its I/O and time drivers (`enable_all`, as `#[tokio::main]`
    /// does). Workers are spawned from one long-lived thread of the process
    /// ("procpool-spawner"), so they still die with the process and not with a runtime
    /// thread.
    ///
    /// # Caveats
    /// - The pool lives on this runtime: it works only while the runtime runs. If the
    ///   runtime shuts down with the pool alive, its workers are killed but may stay
    ///   zombies until the process exits (or until an [`OrphanReaper`](crate::OrphanReaper)
    ///   reaps them).
    /// - Dropping the last [`Pool`] clone SIGKILLs every worker's process group before it
    ///   returns, without blocking; the runtime's executors reap them afterwards. Await
    ///   [`Pool::shutdown`] to know that every worker is reaped.
    /// - [`Pool::run_blocking`], [`TaskHandle::wait`] and [`TaskHandle::recv_blocking`]
    ///   need the runtime to make progress while they block. Do not call them on its own
    ///   threads: on a multi-thread runtime they go through `block_in_place`; on the thread
    ///   of a current-thread runtime they would deadlock, so they panic instead. From a
    ///   `spawn_blocking` closure or a thread of your own they are fine.
    /// - Progress callbacks ([`Task::on_progress`]) run on the runtime's threads: keep
    ///   them short and non-blocking.
    ///
    /// # Panics
    /// On a runtime without its I/O or time driver, with tokio's own message, as any
    /// tokio socket or timer would.
    pub async fn start(&self) -> Result<Pool, PoolError> {
        refuse_in_uninitialised_worker()?;
        let settings = Arc::new(self.settings()?);
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            PoolError::Runtime(format!(
                "PoolBuilder::start must be awaited inside a tokio runtime ({e}); \
                 use PoolBuilder::build outside one"
            ))
        })?;
        // Without the drivers tokio panics at their first use, which would otherwise come
        // on the spawner thread, after a worker was spawned. Touch both here, before
        // anything exists.
        drop(tokio::time::sleep(std::time::Duration::ZERO));
        drop(tokio::net::UnixStream::pair().map_err(PoolError::Supervisor)?);
        procpool_os::start_spawner().map_err(PoolError::Supervisor)?;
        let (commands, rx) = mpsc::unbounded_channel();
        let (started_tx, started_rx) = oneshot::channel();
        let groups = Arc::new(Groups::default());
        let launcher = Launcher {
            spawner: Spawner::Thread(runtime.clone()),
            groups: groups.clone(),
        };
        // Stops everything if this future is dropped before the pool is handed out.
        let stop = Stop {
            commands: commands.clone(),
            groups,
            host: Host::Runtime,
        };
        let dispatcher =
            tokio::spawn(Dispatcher::new(settings.clone(), rx, started_tx, launcher).run());
        match started_manifest(&settings, started_rx.await) {
            Ok(manifest) => Ok(Pool::new(
                commands,
                manifest,
                settings,
                stop,
                Some(runtime.id()),
            )),
            Err(e) => {
                // The dispatcher is already killing its workers: wait until every one is
                // reaped, so that nothing is left running when this returns.
                drop(stop);
                let _ = dispatcher.await;
                Err(e)
            }
        }
    }
}

/// The manifest from the dispatcher's start-up reply, or the start-up error.
fn started_manifest(
    settings: &Settings,
    started: Result<Result<Vec<TaskInfo>, String>, oneshot::error::RecvError>,
) -> Result<Vec<TaskInfo>, PoolError> {
    match started {
        Ok(Ok(manifest)) => Ok(manifest),
        Ok(Err(message)) => Err(PoolError::WorkerStart {
            path: settings.worker.clone(),
            message,
        }),
        Err(_) => Err(PoolError::WorkerStart {
            path: settings.worker.clone(),
            message: "the supervisor ended during start-up".into(),
        }),
    }
}

/// A pool of warm worker processes. Cheap to clone; the workers live until the last clone
/// is dropped (which kills them, see *Caveats* in the crate docs) or [`Pool::shutdown`].
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("worker", &self.inner.settings.worker)
            .field("workers", &self.inner.settings.max_workers)
            .finish_non_exhaustive()
    }
}

struct PoolInner {
    commands: mpsc::UnboundedSender<Command>,
    /// The tasks served and the workers serving them: fixed for a local pool (its sender
    /// is gone), kept current by the backend of a remote one as agents come and go.
    served: watch::Receiver<Served>,
    settings: Arc<Settings>,
    /// Room left in a bounded queue: a queued task holds one permit until it is
    /// dispatched or dropped.
    queue_room: Option<Arc<Semaphore>>,
    /// The runtime the pool runs on when it was started with `start`: blocking waits on
    /// its threads need care (see `host::block_on`).
    runtime: Option<tokio::runtime::Id>,
    /// Stops the pool when the last clone goes.
    _stop: Stop,
    /// Tasks go to a remote backend, which checks task names against its live agents.
    remote: bool,
}

impl Pool {
    fn new(
        commands: mpsc::UnboundedSender<Command>,
        manifest: Vec<TaskInfo>,
        settings: Arc<Settings>,
        stop: Stop,
        runtime: Option<tokio::runtime::Id>,
    ) -> Self {
        let served = Served {
            tasks: manifest.into(),
            workers: settings.max_workers,
        };
        Pool::with_served(commands, watch::channel(served).1, settings, stop, runtime)
    }

    fn with_served(
        commands: mpsc::UnboundedSender<Command>,
        served: watch::Receiver<Served>,
        settings: Arc<Settings>,
        stop: Stop,
        runtime: Option<tokio::runtime::Id>,
    ) -> Self {
        Pool {
            inner: Arc::new(PoolInner {
                commands,
                served,
                queue_room: settings.queue_capacity.map(|n| Arc::new(Semaphore::new(n))),
                settings,
                runtime,
                _stop: stop,
                remote: false,
            }),
        }
    }

    /// A pool whose commands go to a remote backend's router (`remote.rs`).
    pub(crate) fn new_remote(
        commands: mpsc::UnboundedSender<Command>,
        served: watch::Receiver<Served>,
        settings: Arc<Settings>,
        stop: Stop,
        runtime: tokio::runtime::Id,
    ) -> Self {
        let mut pool = Pool::with_served(commands, served, settings, stop, Some(runtime));
        if let Some(inner) = Arc::get_mut(&mut pool.inner) {
            inner.remote = true;
        }
        pool
    }

    /// The runtime of a pool started with `start`, for blocking waits (`host::block_on`).
    pub(crate) fn runtime(&self) -> Option<tokio::runtime::Id> {
        self.inner.runtime
    }

    /// A builder with default settings.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The functions the workers registered, with parameter and result types. For a
    /// remote pool: what the agents alive now serve (empty while none is up).
    pub fn tasks(&self) -> Arc<[TaskInfo]> {
        self.inner.served.borrow().tasks.clone()
    }

    /// [`tasks`](Self::tasks), once there are workers to serve them: at once for a local
    /// pool; a remote pool waits while no agent is up (or returns what it has when its
    /// backend is gone).
    pub async fn wait_for_tasks(&self) -> Arc<[TaskInfo]> {
        let mut served = self.inner.served.clone();
        if let Ok(s) = served.wait_for(|s| s.workers > 0).await {
            return s.tasks.clone();
        }
        self.tasks()
    }

    /// Most worker processes at once. For a remote pool: the workers of the agents alive
    /// now (at least 1, so a window sized from it is never empty).
    pub fn size(&self) -> usize {
        if self.inner.remote {
            self.inner.served.borrow().workers.max(1)
        } else {
            self.inner.settings.max_workers
        }
    }

    /// Whether the tasks run elsewhere, through a [`RemoteBackend`](crate::RemoteBackend)
    /// (a broker and its agents), rather than on local workers.
    pub fn is_remote(&self) -> bool {
        self.inner.remote
    }

    /// Queues a task and returns its handle at once. With a bounded queue
    /// ([`PoolBuilder::queue_capacity`]) that is full, the handle resolves to
    /// [`TaskError::QueueFull`] instead; [`enqueue`](Self::enqueue) waits for room.
    pub fn submit<R: DeserializeOwned>(&self, task: Task<R>) -> TaskHandle<R> {
        let (task, mut early) = self.prepare(task);
        let permit = match &self.inner.queue_room {
            Some(room) if early.is_none() => {
                let permit = room.clone().try_acquire_owned().ok();
                if permit.is_none() {
                    let capacity = self.inner.settings.queue_capacity.unwrap_or_default();
                    early = Some(TaskError::QueueFull { capacity });
                }
                permit
            }
            _ => None,
        };
        self.hand_off(task, early, permit)
    }

    /// Queues a task, waiting for room in a bounded queue first (backpressure).
    pub async fn enqueue<R: DeserializeOwned>(&self, task: Task<R>) -> TaskHandle<R> {
        let (task, early) = self.prepare(task);
        let permit = match &self.inner.queue_room {
            Some(room) if early.is_none() => room.clone().acquire_owned().await.ok(),
            _ => None,
        };
        self.hand_off(task, early, permit)
    }

    /// Sends a prepared task to the dispatcher, or resolves its handle at once with `early`.
    fn hand_off<R: DeserializeOwned>(
        &self,
        task: Task<R>,
        early: Option<TaskError>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> TaskHandle<R> {
        let inner = &self.inner;
        TaskHandle::submit(
            task,
            &inner.commands,
            inner.runtime,
            early,
            permit,
            inner.settings.max_frame,
        )
    }

    /// Runs a task and waits for its result. If this future is dropped before it
    /// completes, the task is cancelled (its worker killed).
    pub async fn run<R: DeserializeOwned>(&self, task: Task<R>) -> Result<R, TaskError> {
        let mut handle = self.enqueue(task).await;
        let mut guard = CancelOnDrop {
            commands: self.inner.commands.clone(),
            id: Some(TaskId(handle.id().as_u128())),
        };
        let out = (&mut handle).await;
        // Disarmed, then dropped like any value: forgetting it would leak its sender, and
        // the dispatcher would never see every sender gone.
        guard.id = None;
        out
    }

    /// Runs a task and blocks the current thread until it ends. For a pool started with
    /// [`PoolBuilder::start`], see its caveats: not on the runtime's own threads.
    pub fn run_blocking<R: DeserializeOwned>(&self, task: Task<R>) -> Result<R, TaskError> {
        host::block_on(self.inner.runtime, self.enqueue(task)).wait()
    }

    /// A snapshot of the pool: workers by state, queue depth, restarts, health.
    pub async fn status(&self) -> PoolStatus {
        let (tx, rx) = oneshot::channel();
        let _ = self.inner.commands.send(Command::Status(tx));
        rx.await.unwrap_or_default()
    }

    /// Pids of the live worker processes.
    pub async fn worker_pids(&self) -> Vec<u32> {
        let (tx, rx) = oneshot::channel();
        let _ = self.inner.commands.send(Command::WorkerPids(tx));
        rx.await.unwrap_or_default()
    }

    /// Stops the pool: with [`Shutdown::Drain`] queued and running tasks finish first,
    /// with [`Shutdown::Kill`] they fail with [`TaskError::PoolClosed`]. Returns when every
    /// worker has been reaped. A `Kill` during a drain takes over.
    pub async fn shutdown(&self, mode: Shutdown) {
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .commands
            .send(Command::Shutdown(mode, tx))
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Applies the pool's defaults to a task and finds what makes it fail before it is
    /// queued.
    fn prepare<R>(&self, mut task: Task<R>) -> (Task<R>, Option<TaskError>) {
        let settings = &self.inner.settings;
        task.timeout = task.timeout.or(settings.timeout);
        task.retry = task.retry.or(Some(settings.retry));
        if let Some(call) = task.kwargs.take() {
            match self.bind_json(&task.name, call.args, call.kwargs) {
                Ok(args) => {
                    task.args = serde_json::to_vec(&args).map_err(|e| e.to_string());
                }
                Err(early) => return (task, Some(early)),
            }
        }
        let early = self.check(&task);
        (task, early)
    }

    /// The positional arguments of a call of task `name` with `args` by position and
    /// `kwargs` by name, matched to its parameters in this pool's [`tasks`](Self::tasks)
    /// (see [`Task::json_kwargs`]). Fails with [`TaskError::UnknownTask`] or
    /// [`TaskError::BadArgs`]: what submitting such a task would fail with.
    pub fn bind_json(
        &self,
        name: &str,
        args: Vec<serde_json::Value>,
        kwargs: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Vec<serde_json::Value>, TaskError> {
        let served = self.inner.served.borrow();
        let info = served
            .tasks
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| TaskError::UnknownTask {
                name: name.to_owned(),
            })?;
        crate::kwargs::bind_kwargs(info, args, kwargs.into_iter().collect(), || {
            serde_json::Value::Null
        })
    }

    fn check<R>(&self, task: &Task<R>) -> Option<TaskError> {
        if !self.inner.remote
            && !self
                .inner
                .served
                .borrow()
                .tasks
                .iter()
                .any(|t| t.name == task.name)
        {
            return Some(TaskError::UnknownTask {
                name: task.name.clone(),
            });
        }
        // Frame overhead of a Run beside the arguments: tags, id, name, lengths.
        let overhead = 64 + task.name.len();
        if let Ok(args) = &task.args
            && args.len() + overhead > self.inner.settings.max_frame
        {
            return Some(TaskError::BadArgs {
                message: format!(
                    "arguments of {} bytes exceed the {} byte frame limit",
                    args.len(),
                    self.inner.settings.max_frame
                ),
            });
        }
        None
    }
}

/// Cancels the task of a [`Pool::run`] future that is dropped before it completes.
struct CancelOnDrop {
    commands: mpsc::UnboundedSender<Command>,
    id: Option<TaskId>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let _ = self.commands.send(Command::Cancel(id));
        }
    }
}
