//! [`MetaTask`] (a combine step over inputs) and [`MetaHandle`] (one run of it on a pool).

use std::fmt::{self, Display};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::FutureExt as _;
use futures::future::{BoxFuture, Either};
use procpool_core::{Pool, Progress, Task};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::cached::Cached;
use crate::context::{InputContext, then_task};
use crate::errors::MetaError;
use crate::inputs::{Identity, Inputs};
use crate::observe::Observe;
use crate::scope::Scope;

/// The run of a MetaTask, given its context, id and name (read when it starts, so
/// `with_id` and `with_name` may come after the constructor).
type Body<R> =
    Box<dyn FnOnce(&InputContext, Uuid, String) -> BoxFuture<'static, Result<R, MetaError>> + Send>;

/// A combine step over inputs: the tasks found anywhere in the inputs run concurrently on
/// the pool, then their results are combined, in the parent (a closure, sync or async) or
/// in a worker ([`process_as_task`](Self::process_as_task)).
///
/// - **Fail fast.** When an input fails, every other input still queued or running is
///   cancelled (running ones have their worker's process group killed), and the run fails
///   with [`MetaError::Task`] naming the input (id, name, place) and keeping its
///   [`TaskError`](procpool_core::TaskError). The run resolves only after every task it
///   started has ended, so none of its worker processes outlives the result.
/// - **Nesting.** A MetaTask is itself [`Inputs`]: a MetaTask of MetaTasks runs all the
///   leaves at once, and each inner combine step runs as soon as its own inputs are done.
/// - **Progress** of every input (and of a combining task) reaches
///   [`on_progress`](Self::on_progress), with the reporting input's id in
///   [`Progress::task_id`].
///
/// ```no_run
/// use procpool_core::{Pool, Task};
/// use procpool_manager::MetaTask;
/// use serde_json::{Value, json};
/// # async fn demo(pool: &Pool) -> Result<(), procpool_manager::MetaError> {
/// let squares = || (1..=3).map(|i| Task::json("square", json!([i]))).collect::<Vec<_>>();
/// // Combined in the parent...
/// let total = MetaTask::new(squares(), |v: Vec<Value>| v.iter().filter_map(Value::as_i64).sum::<i64>())
///     .run(pool)
///     .await?;
/// // ...or by a task in a worker.
/// let same = MetaTask::process_as_task(squares(), |v| Task::json("sum", json!([v])))
///     .run(pool)
///     .await?;
/// assert_eq!(json!(total), same);
/// # Ok(()) }
/// ```
pub struct MetaTask<R> {
    id: Uuid,
    name: String,
    progress: Vec<Arc<dyn Observe>>,
    notify_channels: Vec<String>,
    body: Body<R>,
}

impl<R> fmt::Debug for MetaTask<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetaTask")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Forwards progress to a MetaTask's [`on_progress`](MetaTask::on_progress) callback.
struct ProgressFn<F>(F);

impl<F: Fn(&Progress) + Send + Sync> Observe for ProgressFn<F> {
    fn progress(&self, p: &Progress) {
        (self.0)(p)
    }
}

impl<R: Send + 'static> MetaTask<R> {
    fn with_body(body: Body<R>) -> Self {
        MetaTask {
            id: Uuid::new_v4(),
            name: "meta".to_owned(),
            progress: Vec::new(),
            notify_channels: Vec::new(),
            body,
        }
    }

    /// Combines the resolved inputs with `combine`, in the parent.
    pub fn new<I: Inputs>(
        inputs: I,
        combine: impl FnOnce(I::Output) -> R + Send + 'static,
    ) -> Self {
        Self::try_new(inputs, move |resolved| {
            Ok::<R, std::convert::Infallible>(combine(resolved))
        })
    }

    /// Combines the resolved inputs with a fallible `combine`, in the parent; its error
    /// fails the run with [`MetaError::Combine`].
    pub fn try_new<I, E>(
        inputs: I,
        combine: impl FnOnce(I::Output) -> Result<R, E> + Send + 'static,
    ) -> Self
    where
        I: Inputs,
        E: Display + Send + 'static,
    {
        Self::new_async(inputs, move |resolved| {
            futures::future::ready(combine(resolved))
        })
    }

    /// Combines the resolved inputs with an async `combine`, in the parent. Cancelling the
    /// run drops the combine future.
    pub fn new_async<I, F, E>(
        inputs: I,
        combine: impl FnOnce(I::Output) -> F + Send + 'static,
    ) -> Self
    where
        I: Inputs,
        F: Future<Output = Result<R, E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        Self::with_body(Box::new(
            move |at: &InputContext, id: Uuid, name: String| {
                let resolved = inputs.start(at);
                let scope = at.scope.clone();
                async move {
                    let resolved = resolved.await?;
                    // Every input may have succeeded while a cancel came in.
                    if let Some(failure) = scope.failure() {
                        return Err(failure);
                    }
                    let combined = std::pin::pin!(combine(resolved));
                    let failed = std::pin::pin!(scope.failed());
                    match futures::future::select(combined, failed).await {
                        Either::Left((Ok(value), _)) => Ok(value),
                        Either::Left((Err(e), _)) => Err(scope.fail(MetaError::Combine {
                            id,
                            name,
                            message: e.to_string(),
                        })),
                        Either::Right((failure, _)) => Err(failure),
                    }
                }
                .boxed()
            },
        ))
    }

    /// Combines the resolved inputs in a worker: `build` makes the combining task from
    /// them (e.g. `sum::task`), and its result is the MetaTask's. The combining task is a
    /// task of the run like the inputs: it is cancelled with the run, its progress is
    /// reported, and its failure names it (at the MetaTask's own place, `$` at the top).
    pub fn process_as_task<I>(
        inputs: I,
        build: impl FnOnce(I::Output) -> Task<R> + Send + 'static,
    ) -> Self
    where
        I: Inputs,
        R: DeserializeOwned,
    {
        Self::with_body(Box::new(move |at: &InputContext, _id, _name| {
            then_task(at, inputs.start(at), build)
        }))
    }

    /// Uses `id` instead of a fresh UUID (the id a task manager reports it under).
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Names the MetaTask (in errors and events); `meta` by default.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Calls `f` for every progress report of every input, nested ones included, and of a
    /// combining task; `Progress::task_id` is the reporting task. Runs on the pool's
    /// supervisor thread: keep it short. Adds to callbacks set before.
    pub fn on_progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.progress.push(Arc::new(ProgressFn(f)));
        self
    }

    /// Channels that a task manager running this MetaTask also notifies, beside the
    /// channel of its [`run_task`](crate::TaskManager::run_task): each gets `Started`,
    /// the progress and messages of every input, and one terminal event. A channel named
    /// twice (or also given to `run_task`) is notified once. Adds to channels set before.
    /// They apply where a task manager runs the MetaTask as a task of its own (given to
    /// `run_task`, or shared with [`cache_key`](Self::cache_key)); as a plain input of
    /// another run, its events are that run's.
    pub fn notify_channels<S: Into<String>>(
        mut self,
        channels: impl IntoIterator<Item = S>,
    ) -> Self {
        crate::registry::add_distinct(&mut self.notify_channels, channels);
        self
    }

    /// The MetaTask's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The MetaTask's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Shares this MetaTask under a task manager: see [`Cached`].
    pub fn cache_key(self, key: impl Into<String>) -> Cached<Self>
    where
        R: Serialize + DeserializeOwned,
    {
        Cached::new(key, self)
    }

    /// Starts the run on `pool`: every task of the inputs is queued now. The handle is a
    /// future of the result; dropping it before it resolves cancels the run.
    pub fn submit(self, pool: &Pool) -> MetaHandle<R> {
        let scope = Scope::new();
        let at = InputContext::root(
            pool.clone(),
            scope.clone(),
            "$".into(),
            Arc::new([]),
            None,
            Arc::new([]),
        );
        let id = self.id;
        let body = self.start(&at);
        let settle = scope.clone();
        let run = async move {
            let out = body.await;
            settle.settle().await;
            // The first failure is the run's error; errors of the inputs it cancelled
            // are consequences.
            match settle.failure() {
                Some(failure) => Err(failure),
                None => out,
            }
        }
        .boxed();
        MetaHandle {
            id,
            scope,
            run: Some(run),
        }
    }

    /// Runs on `pool` and waits for the result; dropping the future cancels the run.
    pub async fn run(self, pool: &Pool) -> Result<R, MetaError> {
        self.submit(pool).await
    }

    /// Blocking [`run`](Self::run), for a plain `main` (see [`Pool::block_on`]).
    pub fn run_blocking(self, pool: &Pool) -> Result<R, MetaError> {
        pool.block_on(self.submit(pool))
    }
}

impl<R: Send + 'static> Inputs for MetaTask<R> {
    type Output = R;

    fn start(self, at: &InputContext) -> BoxFuture<'static, Result<R, MetaError>> {
        let at = at.observed_by(self.progress);
        (self.body)(&at, self.id, self.name)
    }

    fn identity(&self) -> Identity {
        Identity {
            id: Some(self.id),
            name: Some(self.name.clone()),
            cache_key: None,
            notify_channels: self.notify_channels.clone(),
        }
    }
}

/// One run of a [`MetaTask`]: a future of its result, which can also cancel it.
///
/// Dropping the handle before it resolves cancels the run (its workers are killed, but
/// nobody waits for them then); await it, or [`cancel`](Self::cancel) and await it, to know
/// they are gone.
pub struct MetaHandle<R> {
    id: Uuid,
    scope: Arc<Scope>,
    run: Option<BoxFuture<'static, Result<R, MetaError>>>,
}

impl<R> fmt::Debug for MetaHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetaHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<R> MetaHandle<R> {
    /// The MetaTask's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Cancels the run: inputs not yet started never run, running ones have their
    /// worker's process group killed, a combine step in progress is dropped. The handle
    /// then resolves with [`MetaError::Cancelled`] once every task of the run has ended.
    /// No effect on a run that already ended.
    pub fn cancel(&self) {
        self.scope.cancel();
    }
}

impl<R> Future for MetaHandle<R> {
    type Output = Result<R, MetaError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let run = self
            .run
            .as_mut()
            .expect("a MetaHandle is not polled again after it resolved");
        let out = std::task::ready!(run.as_mut().poll(cx));
        self.run = None;
        Poll::Ready(out)
    }
}

impl<R> Drop for MetaHandle<R> {
    fn drop(&mut self) {
        if self.run.is_some() {
            self.scope.cancel();
        }
    }
}
