//! `Pool` and `PoolBuilder`: the public face of the supervisor.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use procpool_proto::{DEFAULT_MAX_FRAME, TaskId, TaskInfo};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use crate::dispatcher::Dispatcher;
use crate::errors::{PoolError, TaskError};
use crate::internal::{Command, Shutdown};
use crate::task::{Task, TaskHandle};

/// Resolved settings the supervisor runs with.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) worker: PathBuf,
    pub(crate) worker_args: Vec<OsString>,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) workers: usize,
    pub(crate) max_frame: usize,
    pub(crate) start_timeout: Duration,
}

/// Configures and starts a [`Pool`].
#[derive(Clone, Debug, Default)]
pub struct PoolBuilder {
    worker: Option<PathBuf>,
    worker_args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    workers: Option<usize>,
    max_frame: Option<usize>,
    start_timeout: Option<Duration>,
}

impl PoolBuilder {
    /// The worker executable. Default: this program (`std::env::current_exe()`), which
    /// must then call `procpool::init()` first thing in `main`.
    pub fn worker(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.worker = Some(path.into());
        self
    }

    /// Extra command-line arguments for every worker.
    pub fn worker_args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.worker_args = args.into_iter().map(Into::into).collect();
        self
    }

    /// An environment variable for every worker (on top of the supervisor's own).
    pub fn env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> &mut Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Number of worker processes. Default: the available CPUs.
    pub fn workers(&mut self, n: usize) -> &mut Self {
        self.workers = Some(n);
        self
    }

    /// Largest frame accepted from or sent to a worker (arguments and results included).
    /// Default 64 MiB; at most 4 GiB - 1.
    pub fn max_frame_bytes(&mut self, n: usize) -> &mut Self {
        self.max_frame = Some(n);
        self
    }

    /// How long a new worker may take to complete its handshake. Default 10 s.
    pub fn start_timeout(&mut self, d: Duration) -> &mut Self {
        self.start_timeout = Some(d);
        self
    }

    fn settings(&self) -> Result<Settings, PoolError> {
        let worker = match &self.worker {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(|e| {
                PoolError::Config(format!("cannot find the current executable: {e}"))
            })?,
        };
        let workers = match self.workers {
            Some(0) => return Err(PoolError::Config("a pool needs at least one worker".into())),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let max_frame = self.max_frame.unwrap_or(DEFAULT_MAX_FRAME);
        if !(1024..=u32::MAX as usize).contains(&max_frame) {
            return Err(PoolError::Config(format!(
                "max frame of {max_frame} bytes is outside 1 KiB ..= 4 GiB - 1"
            )));
        }
        Ok(Settings {
            worker,
            worker_args: self.worker_args.clone(),
            env: self.env.clone(),
            workers,
            max_frame,
            start_timeout: self.start_timeout.unwrap_or(Duration::from_secs(10)),
        })
    }

    /// Starts the supervisor thread and every worker, and returns once all of them
    /// completed their handshake (about a millisecond each, in parallel). Blocks the
    /// calling thread meanwhile. Fails with [`PoolError::WorkerStart`] when the worker
    /// binary is missing, not executable, or not a procpool worker; nothing is left running.
    pub fn build(&self) -> Result<Pool, PoolError> {
        let settings = Arc::new(self.settings()?);
        let (commands, rx) = mpsc::unbounded_channel();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let thread_settings = settings.clone();
        let thread = std::thread::Builder::new()
            .name("procpool-supervisor".into())
            .spawn(move || {
                // Workers are spawned from this thread, which lives as long as the pool:
                // their PR_SET_PDEATHSIG fires when the spawning *thread* exits.
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
                rt.block_on(Dispatcher::new(thread_settings, rx, started_tx).run());
            })
            .map_err(PoolError::Supervisor)?;
        let manifest = match started_rx.recv() {
            Ok(Ok(manifest)) => manifest,
            Ok(Err(message)) => {
                let _ = thread.join();
                return Err(PoolError::WorkerStart {
                    path: settings.worker.clone(),
                    message,
                });
            }
            Err(_) => {
                let _ = thread.join();
                return Err(PoolError::WorkerStart {
                    path: settings.worker.clone(),
                    message: "the supervisor thread ended during start-up".into(),
                });
            }
        };
        Ok(Pool {
            inner: Arc::new(PoolInner {
                commands,
                manifest,
                settings,
                thread: Mutex::new(Some(thread)),
            }),
        })
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
            .field("workers", &self.inner.settings.workers)
            .finish_non_exhaustive()
    }
}

struct PoolInner {
    commands: mpsc::UnboundedSender<Command>,
    manifest: Vec<TaskInfo>,
    settings: Arc<Settings>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        let (tx, _rx) = oneshot::channel();
        let _ = self.commands.send(Command::Shutdown(Shutdown::Kill, tx));
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread
            && thread.thread().id() != std::thread::current().id()
        {
            // Every worker is killed and reaped before this returns.
            let _ = thread.join();
        }
    }
}

impl Pool {
    /// A builder with default settings.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The functions the workers registered, with parameter and result types.
    pub fn tasks(&self) -> &[TaskInfo] {
        &self.inner.manifest
    }

    /// Number of worker processes.
    pub fn size(&self) -> usize {
        self.inner.settings.workers
    }

    /// Queues a task and returns its handle at once.
    pub fn submit<R: DeserializeOwned>(&self, task: Task<R>) -> TaskHandle<R> {
        let early = self.check(&task);
        TaskHandle::submit(task, &self.inner.commands, early)
    }

    /// Runs a task and waits for its result. If this future is dropped before it
    /// completes, the task is cancelled (its worker killed).
    pub async fn run<R: DeserializeOwned>(&self, task: Task<R>) -> Result<R, TaskError> {
        let mut handle = self.submit(task);
        let guard = CancelOnDrop {
            commands: self.inner.commands.clone(),
            id: Some(TaskId(handle.id().as_u128())),
        };
        let out = (&mut handle).await;
        std::mem::forget(guard);
        out
    }

    /// Runs a task and blocks the current thread until it ends.
    pub fn run_blocking<R: DeserializeOwned>(&self, task: Task<R>) -> Result<R, TaskError> {
        self.submit(task).wait()
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

    fn check<R>(&self, task: &Task<R>) -> Option<TaskError> {
        if !self.inner.manifest.iter().any(|t| t.name == task.name) {
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
