//! [`InputContext`] (where an input starts) and the leaf runner: the one place a task of a
//! run is submitted to the pool, watched, and stopped.

use std::fmt;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use procpool_core::{Pool, Task, TaskError, TaskHandle};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::errors::MetaError;
use crate::observe::{Observe, Observers};
use crate::scope::{Live, Scope};
use crate::state::ManagerInner;

/// Where an input starts: the pool, the fail-fast group of its run, its place in the
/// inputs (named in errors), who watches its progress, and the task manager running it,
/// if any.
///
/// Opaque. An [`Inputs`](crate::Inputs) implementation for a type of its own passes it
/// on to each field with [`index`](Self::index), [`key`](Self::key) or
/// [`field`](Self::field), so a failure names where the failed task sits.
#[derive(Clone)]
pub struct InputContext {
    pub(crate) pool: Pool,
    pub(crate) scope: Arc<Scope>,
    path: Arc<str>,
    pub(crate) observers: Observers,
    pub(crate) manager: Option<Arc<ManagerInner>>,
    /// Cache keys of the shared tasks this part of the run is inside: a key met again
    /// below itself runs inline instead of waiting for itself.
    pub(crate) keys: Arc<[String]>,
}

impl fmt::Debug for InputContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InputContext")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl InputContext {
    pub(crate) fn root(
        pool: Pool,
        scope: Arc<Scope>,
        path: Arc<str>,
        observers: Observers,
        manager: Option<Arc<ManagerInner>>,
        keys: Arc<[String]>,
    ) -> Self {
        InputContext {
            pool,
            scope,
            path,
            observers,
            manager,
            keys,
        }
    }

    fn at(&self, path: String) -> Self {
        InputContext {
            path: path.into(),
            ..self.clone()
        }
    }

    /// The context of element `i` of a sequence: `$[i]`.
    pub fn index(&self, i: usize) -> Self {
        self.at(format!("{}[{i}]", self.path))
    }

    /// The context of a map entry: `$["key"]` (the key's `Debug` form).
    pub fn key(&self, key: &dyn fmt::Debug) -> Self {
        self.at(format!("{}[{key:?}]", self.path))
    }

    /// The context of a named (or tuple) field: `$.name`.
    pub fn field(&self, name: &str) -> Self {
        self.at(format!("{}.{name}", self.path))
    }

    /// This input's place, JSONPath-like (see [`MetaError::Task`]).
    pub fn path(&self) -> &str {
        &self.path
    }

    pub(crate) fn path_arc(&self) -> Arc<str> {
        self.path.clone()
    }

    /// The same place, also watched by `more`.
    pub(crate) fn observed_by(&self, more: impl IntoIterator<Item = Arc<dyn Observe>>) -> Self {
        let mut observers: Vec<Arc<dyn Observe>> = self.observers.iter().cloned().collect();
        let before = observers.len();
        observers.extend(more);
        if observers.len() == before {
            return self.clone();
        }
        InputContext {
            observers: observers.into(),
            ..self.clone()
        }
    }
}

/// Submits `task` to the pool as a member of the run, and resolves with its result. The
/// task is queued right away (not when the future is first polled), so every input of a
/// run is on the pool at once. A failure is recorded in the run's scope, which stops the
/// task's siblings.
pub(crate) fn start_task<R>(
    at: &InputContext,
    task: Task<R>,
) -> BoxFuture<'static, Result<R, MetaError>>
where
    R: DeserializeOwned + Send + 'static,
{
    let id = task.id();
    let name = task.name().to_owned();
    let path = at.path.to_string();
    let task = if at.observers.is_empty() {
        task
    } else {
        let observers = at.observers.clone();
        task.also_on_progress(move |p| {
            for o in observers.iter() {
                o.progress(p);
            }
        })
    };
    let messages = at
        .observers
        .iter()
        .any(|o| o.wants_messages())
        .then(|| at.observers.clone());
    let pool = &at.pool;
    let entered = at.scope.enter(|| {
        Arc::new(Leaf {
            id,
            state: Mutex::new(LeafState::Running(pool.submit(task))),
            messages,
        })
    });
    let (member, leaf) = match entered {
        Ok(entered) => entered,
        Err(failure) => return futures::future::ready(Err(failure)).boxed(),
    };
    let scope = at.scope.clone();
    async move {
        std::future::poll_fn(|cx| leaf.poll_end(cx)).await;
        scope.leave(member);
        leaf.take().map_err(|source| {
            scope.fail(MetaError::Task {
                id,
                name,
                path,
                source: Box::new(source),
            })
        })
    }
    .boxed()
}

/// One task of a run on the pool. Shared between the future waiting for it and the
/// scope, which may stop it (cancel) or wait for it (settle) after that future is gone.
struct Leaf<R> {
    id: Uuid,
    state: Mutex<LeafState<R>>,
    /// Observers to hand the task's messages to; `None` leaves them in the handle.
    messages: Option<Observers>,
}

enum LeafState<R> {
    Running(TaskHandle<R>),
    /// The handle resolved; the outcome waits to be taken (once).
    Ended(Option<Result<R, TaskError>>),
}

impl<R: DeserializeOwned + Send> Leaf<R> {
    fn lock(&self) -> std::sync::MutexGuard<'_, LeafState<R>> {
        // Only whole-value assignments happen under this lock: a poisoned one is consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ready once the task's handle resolved. Every poll of one leaf comes from the one
    /// async task that drives its run (the run's future, then its settle): the handle
    /// keeps only the last waker, so polling it from two tasks could lose a wake-up.
    fn poll_end(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.lock();
        let LeafState::Running(handle) = &mut *st else {
            return Poll::Ready(());
        };
        self.forward_messages(handle, cx);
        let Poll::Ready(outcome) = Pin::new(&mut *handle).poll(cx) else {
            return Poll::Pending;
        };
        // The executor queues every message of the task before it sends the result:
        // forward the rest now, so they are all out before the task's end is known.
        self.forward_messages(handle, cx);
        *st = LeafState::Ended(Some(outcome));
        Poll::Ready(())
    }

    fn forward_messages(&self, handle: &mut TaskHandle<R>, cx: &mut Context<'_>) {
        let Some(observers) = &self.messages else {
            return;
        };
        // `poll_recv`, not a fresh `recv()` per poll: a dropped `recv` future takes its
        // registration with it, and the next message would wake nobody until the task ends.
        while let Poll::Ready(Some(bytes)) = handle.poll_recv(cx) {
            for o in observers.iter() {
                o.message(self.id, &bytes);
            }
        }
    }

    fn take(&self) -> Result<R, TaskError> {
        match &mut *self.lock() {
            LeafState::Ended(outcome) => outcome.take(),
            LeafState::Running(_) => None,
        }
        // Taken twice, or before the end: neither happens (one waiter takes it, after
        // `poll_end` was ready); the task is reported cancelled rather than panicking.
        .unwrap_or(Err(TaskError::Cancelled))
    }
}

impl<R: DeserializeOwned + Send + 'static> Live for Leaf<R> {
    fn stop(self: Arc<Self>) {
        if let LeafState::Running(handle) = &*self.lock() {
            handle.cancel();
        }
    }

    fn ended(&self) -> BoxFuture<'_, ()> {
        std::future::poll_fn(|cx| self.poll_end(cx)).boxed()
    }

    fn worker_pids(&self, out: &mut Vec<u32>) {
        // The last worker that took the task: between the task's end and this leaf
        // noticing it (or during a retry's backoff) that worker may be on other work.
        if let LeafState::Running(handle) = &*self.lock() {
            out.extend(handle.worker_pid());
        }
    }
}

/// Runs `inputs`, then builds a task from their results with `build` and runs it as a
/// member of the same run, at the same place (a MetaTask's combining task, a JSON task's
/// own call after its nested arguments).
pub(crate) fn then_task<O, R>(
    at: &InputContext,
    inputs: BoxFuture<'static, Result<O, MetaError>>,
    build: impl FnOnce(O) -> Task<R> + Send + 'static,
) -> BoxFuture<'static, Result<R, MetaError>>
where
    O: Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    let at = at.clone();
    async move {
        let resolved = inputs.await?;
        start_task(&at, build(resolved)).await
    }
    .boxed()
}
