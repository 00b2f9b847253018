//! `Task` (what to run) and `TaskHandle` (a submitted run).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use procpool_proto::Encoding;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use uuid::Uuid;

use crate::config::RetryPolicy;
use crate::errors::TaskError;
use crate::host;
use crate::internal::{Command, MessagesTx, Submission, TaskShared};
use crate::types::{CapturedOutput, Progress, ProgressFn};
use crate::watch::TaskWatch;

/// One registered function with its arguments, ready to run in a worker.
///
/// Built by the typed handle of a `#[procpool::task]` function (`add::task(1, 2)` is a
/// `Task<i64>`), or untyped with [`Task::json`]. Its id is a fresh UUID v4 unless set with
/// [`Task::with_id`].
pub struct Task<R> {
    pub(crate) id: Uuid,
    /// Whether `id` is the caller's (`with_id`) rather than generated.
    pub(crate) chosen_id: bool,
    pub(crate) name: String,
    pub(crate) args: Result<Vec<u8>, String>,
    pub(crate) encoding: Encoding,
    pub(crate) on_progress: Option<ProgressFn>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Option<RetryPolicy>,
    /// Channels a task manager also notifies when it runs this task; the pool ignores them.
    pub(crate) notify_channels: Vec<String>,
    /// Keyword arguments of a JSON call, matched to the parameters when it is submitted
    /// (the manifest is the pool's); `args` is then encoded from the result.
    pub(crate) kwargs: Option<Box<JsonCall>>,
    _result: PhantomData<fn() -> R>,
}

/// The arguments of a JSON call with keyword arguments, before they are matched.
pub(crate) struct JsonCall {
    pub(crate) args: Vec<serde_json::Value>,
    pub(crate) kwargs: serde_json::Map<String, serde_json::Value>,
}

impl<R> std::fmt::Debug for Task<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

impl<R> Task<R> {
    /// Used by `#[procpool::task]`: positional arguments as a tuple, bincode-encoded.
    #[doc(hidden)]
    pub fn __from_args<A: Serialize>(name: &str, args: &A) -> Self {
        let args = procpool_proto::encode_value(Encoding::Bincode, args).map_err(|e| e.to_string());
        Self::new(name.to_owned(), args, Encoding::Bincode)
    }

    pub(crate) fn new(name: String, args: Result<Vec<u8>, String>, encoding: Encoding) -> Self {
        Task {
            id: Uuid::new_v4(),
            chosen_id: false,
            name,
            args,
            encoding,
            on_progress: None,
            timeout: None,
            retry: None,
            notify_channels: Vec::new(),
            kwargs: None,
            _result: PhantomData,
        }
    }

    /// Deadline of each attempt, overriding the pool's
    /// [`timeout`](crate::PoolBuilder::timeout).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// Retry policy, overriding the pool's [`retry`](crate::PoolBuilder::retry).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Uses `id` instead of a fresh UUID.
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self.chosen_id = true;
        self
    }

    /// Calls `f` for every progress report, in order and before the result is delivered.
    /// It runs on the pool's supervisor thread (or, for a pool started with
    /// [`start`](crate::PoolBuilder::start), on its runtime): keep it short and
    /// non-blocking.
    pub fn on_progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(f));
        self
    }

    /// Like [`on_progress`](Self::on_progress), but keeps a callback set before: both run,
    /// the earlier one first. For wrappers (a MetaTask, a task manager) that watch a task's
    /// progress without taking its owner's callback away.
    pub fn also_on_progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(match self.on_progress.take() {
            None => Arc::new(f),
            Some(first) => Arc::new(move |p: &Progress| {
                first(p);
                f(p);
            }),
        });
        self
    }

    /// Channels that a task manager running this task also notifies (Dara's
    /// `notify_channels`), beside the channel given to its `run_task`: each gets the
    /// task's events, with one terminal event. Adds to channels set before; a channel
    /// named twice is notified once. They apply where a task manager runs the task as a
    /// task of its own (given to `run_task`, or shared by cache key); as a plain input of
    /// another run its events are that run's, and a pool running it directly ignores them.
    pub fn notify_channels<S: Into<String>>(
        mut self,
        channels: impl IntoIterator<Item = S>,
    ) -> Self {
        for channel in channels {
            let channel = channel.into();
            if !self.notify_channels.contains(&channel) {
                self.notify_channels.push(channel);
            }
        }
        self
    }

    /// The channels set with [`notify_channels`](Self::notify_channels).
    pub fn notified_channels(&self) -> &[String] {
        &self.notify_channels
    }

    /// The task id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The registered function name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Task<serde_json::Value> {
    /// An untyped task: `args` is a JSON array of positional arguments, the result comes
    /// back as JSON. This is what the CLI uses.
    pub fn json(name: impl Into<String>, args: serde_json::Value) -> Self {
        let args = serde_json::to_vec(&args).map_err(|e| e.to_string());
        Self::new(name.into(), args, Encoding::Json)
    }

    /// An untyped task with keyword arguments: `args` fills the first parameters by
    /// position, `kwargs` the others by name, as the
    /// worker's registry names them (`procpool tasks` lists them). A parameter of type
    /// `Option<..>` may be left out (it gets `None`). They are matched when the task is
    /// submitted, against the pool's [`tasks`](crate::Pool::tasks): a missing, unknown or
    /// repeated name fails the task with [`TaskError::BadArgs`] naming it, before it is
    /// queued.
    ///
    /// ```no_run
    /// # async fn demo(pool: procpool_core::Pool) -> Result<(), procpool_core::TaskError> {
    /// use procpool_core::Task;
    /// use serde_json::json;
    /// let kwargs = json!({"b": 2}).as_object().cloned().unwrap_or_default();
    /// let three = pool.run(Task::json_kwargs("add", vec![json!(1)], kwargs)).await?;
    /// assert_eq!(three, json!(3));
    /// # Ok(()) }
    /// ```
    pub fn json_kwargs(
        name: impl Into<String>,
        args: Vec<serde_json::Value>,
        kwargs: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        let mut task = Self::new(name.into(), Ok(Vec::new()), Encoding::Json);
        task.kwargs = Some(Box::new(JsonCall { args, kwargs }));
        task
    }
}

/// A submitted task: await it (it is a `Future`) or [`wait`](TaskHandle::wait) for it,
/// cancel it, and exchange messages with it while it runs.
///
/// Dropping the handle detaches the task: it still runs to the end, and its result is
/// discarded. Use [`crate::Pool::run`] to have a dropped future cancel its task.
pub struct TaskHandle<R> {
    id: Uuid,
    encoding: Encoding,
    commands: mpsc::UnboundedSender<Command>,
    /// The runtime of a pool started with `start` (see `host::block_on`).
    runtime: Option<tokio::runtime::Id>,
    pub(crate) reply: oneshot::Receiver<Result<bytes::Bytes, TaskError>>,
    shared: Arc<TaskShared>,
    pub(crate) early: Option<TaskError>,
    /// The wait of [`poll_recv`](Self::poll_recv), kept between polls: the inbox wakes
    /// only a waiter that is registered, so a fresh wait per poll would miss a message.
    /// In a mutex only to keep the handle `Sync`; reached through `&mut self`, never locked.
    next_message: std::sync::Mutex<Option<NextMessage>>,
    /// The pool's frame limit, which a message to the task must fit in.
    max_frame: usize,
    _result: PhantomData<fn() -> R>,
}

type NextMessage = Pin<Box<dyn Future<Output = Option<Vec<u8>>> + Send>>;

impl<R> Drop for TaskHandle<R> {
    fn drop(&mut self) {
        // Nobody can read the task's messages any more: they must not pile up.
        self.shared.drop_reader();
    }
}

impl<R> std::fmt::Debug for TaskHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<R> TaskHandle<R> {
    /// Sends the cancel order of [`cancel`](Self::cancel), for code that has no bound on
    /// the result type (a `Drop` impl).
    pub(crate) fn send_cancel(&self) {
        let _ = self
            .commands
            .send(Command::Cancel(procpool_proto::TaskId(self.id.as_u128())));
    }
}

impl<R: DeserializeOwned> TaskHandle<R> {
    pub(crate) fn submit(
        task: Task<R>,
        commands: &mpsc::UnboundedSender<Command>,
        runtime: Option<tokio::runtime::Id>,
        early: Option<TaskError>,
        permit: Option<OwnedSemaphorePermit>,
        max_frame: usize,
    ) -> Self {
        let (reply_tx, reply) = oneshot::channel();
        let shared = Arc::new(TaskShared::default());
        let early = early.or_else(|| {
            task.args.as_ref().err().map(|e| TaskError::Codec {
                message: format!("error encoding the arguments: {e}"),
            })
        });
        if early.is_some() {
            shared.close_messages();
            shared.end();
        } else {
            let sub = Box::new(Submission {
                id: procpool_proto::TaskId(task.id.as_u128()),
                chosen_id: task.chosen_id,
                name: task.name,
                args: task.args.unwrap_or_default(),
                encoding: task.encoding,
                on_progress: task.on_progress,
                messages: MessagesTx(shared.clone()),
                reply: reply_tx,
                shared: shared.clone(),
                early_messages: Vec::new(),
                timeout: task.timeout,
                retry: task.retry.unwrap_or_default(),
                attempt: 1,
                permit,
            });
            if let Err(mpsc::error::SendError(Command::Submit(sub))) =
                commands.send(Command::Submit(sub))
            {
                // The pool is shut down: `started()` must answer too, not only the result.
                sub.reject(TaskError::PoolClosed);
            }
        }
        TaskHandle {
            id: task.id,
            encoding: task.encoding,
            commands: commands.clone(),
            runtime,
            reply,
            shared,
            early,
            next_message: std::sync::Mutex::new(None),
            max_frame,
            _result: PhantomData,
        }
    }

    /// The task id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// What the task wrote to its stdout and stderr, once it ended, with a pool whose
    /// [`task_output`](crate::PoolBuilder::task_output) is
    /// [`TaskOutput::Capture`](crate::TaskOutput::Capture); `None` before the end and
    /// with the other modes. Set before the handle resolves, so it is there as soon as
    /// the result is: also for a task that failed, crashed or timed out.
    pub fn output(&self) -> Option<CapturedOutput> {
        self.shared.output()
    }

    /// The runtime of a pool started with `start`, for blocking waits (`host::block_on`).
    pub(crate) fn runtime(&self) -> Option<tokio::runtime::Id> {
        self.runtime
    }

    /// Cancels the task: a queued task is removed and never runs; a running task's worker
    /// process group is killed and reaped before the handle resolves with
    /// [`TaskError::Cancelled`]. No effect on a task that already finished.
    pub fn cancel(&self) {
        self.send_cancel();
    }

    /// Sends a message to the running task (read there with `procpool::recv_message`).
    /// Messages sent before the task starts are delivered when it starts; messages sent
    /// after it ended are dropped. A message too large for one frame
    /// ([`PoolBuilder::max_frame_bytes`](crate::PoolBuilder::max_frame_bytes), less a few
    /// bytes of framing) is refused with [`TaskError::MessageTooLarge`] and the task is
    /// left alone.
    pub fn send(&self, bytes: impl Into<Vec<u8>>) -> Result<(), TaskError> {
        let bytes = bytes.into();
        // Frame overhead of a Message beside its bytes: tag, task id and length varints.
        const OVERHEAD: usize = 32;
        if bytes.len().saturating_add(OVERHEAD) > self.max_frame {
            return Err(TaskError::MessageTooLarge {
                size: bytes.len(),
                max: self.max_frame,
            });
        }
        let _ = self.commands.send(Command::Message(
            procpool_proto::TaskId(self.id.as_u128()),
            bytes,
        ));
        Ok(())
    }

    /// Next message from the task (`procpool::send_message`); `None` once the task ended
    /// and every message was read.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.shared.next_message().await
    }

    /// [`recv`](Self::recv) as a poll, for code that drives the handle by hand: unlike
    /// polling a fresh `recv()` each time, a `Pending` here leaves `cx` registered, so
    /// the next message wakes it.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Vec<u8>>> {
        let slot = self
            .next_message
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        let wait = slot.get_or_insert_with(|| {
            let shared = self.shared.clone();
            Box::pin(async move { shared.next_message().await })
        });
        let next = ready!(wait.as_mut().poll(cx));
        *slot = None;
        Poll::Ready(next)
    }

    /// Blocking [`recv`](Self::recv), for code outside async contexts (for a pool started
    /// with [`start`](crate::PoolBuilder::start): not on its runtime's threads).
    pub fn recv_blocking(&mut self) -> Option<Vec<u8>> {
        host::block_on(self.runtime, self.shared.next_message())
    }

    /// Pid of the worker that runs (or ran) the task; `None` until one starts it.
    pub fn worker_pid(&self) -> Option<u32> {
        self.shared.pid()
    }

    /// How many times the task was started so far (retries included); 0 while queued.
    pub fn attempts(&self) -> u32 {
        self.shared.attempts()
    }

    /// A view of where the task runs, for status reports: cheap to clone and keep beside
    /// the handle (e.g. in a table a control socket reads).
    pub fn watch(&self) -> TaskWatch {
        TaskWatch {
            shared: self.shared.clone(),
        }
    }

    /// Waits until a worker starts the task and returns its pid (at once if it already
    /// did); `None` if the task ended without ever starting (cancelled while queued,
    /// refused, pool closed).
    pub async fn started(&self) -> Option<u32> {
        self.shared.started().await
    }

    /// Blocks the current thread until the task ends. Must not be called from inside an
    /// async runtime thread (use `.await` there); for a pool started with
    /// [`start`](crate::PoolBuilder::start), on that runtime's current-thread scheduler it
    /// panics rather than deadlock.
    pub fn wait(self) -> Result<R, TaskError> {
        host::block_on(self.runtime, self)
    }

    fn decode(&self, outcome: Result<bytes::Bytes, TaskError>) -> Result<R, TaskError> {
        let bytes = outcome?;
        procpool_proto::decode_value(self.encoding, &bytes).map_err(|e| TaskError::Codec {
            message: format!("error decoding the result: {e}"),
        })
    }
}

impl<R: DeserializeOwned> Future for TaskHandle<R> {
    type Output = Result<R, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(err) = self.early.take() {
            return Poll::Ready(Err(err));
        }
        let outcome = ready!(Pin::new(&mut self.reply).poll(cx));
        // A dropped reply sender means the supervisor went away without answering.
        let outcome = outcome.unwrap_or(Err(TaskError::PoolClosed));
        Poll::Ready(self.decode(outcome))
    }
}

impl<R> Unpin for TaskHandle<R> {}
