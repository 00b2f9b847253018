//! [`TaskManager`] (runs tasks and MetaTasks, shares them, publishes their events, keeps
//! their results) and [`PendingTask`] (one consumer of a task it runs).

use std::fmt;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::{BoxFuture, join_all};
use procpool_core::Pool;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::errors::{ManagerError, MetaError};
use crate::events::{EventBus, TaskEvent};
use crate::inputs::Inputs;
use crate::registry::{Request, distinct, keyed_body};
use crate::state::{Consumer, ManagerInner};
use crate::store::{MemoryStore, Store, StoreKey};

/// Runs tasks and MetaTasks on a pool on behalf of many consumers (Dara's TaskManager,
/// without its known bugs).
///
/// - [`run_task`](Self::run_task) returns a [`PendingTask`]: cheap to clone, awaitable
///   from many places. A `run_task` with the cache key ([`Cached`](crate::Cached)) or the
///   id of a running task attaches to it, and it runs once.
/// - **Subscriber counting on every node.** Each `run_task` call, and each run whose
///   inputs include a cache-keyed input, is a consumer of that shared task. Cancelling a
///   consumer ([`PendingTask::cancel`]) never cancels a task another live consumer still
///   needs; cancelling its last consumer cancels it and kills its workers.
/// - **Events** ([`TaskEvent`]) are published on the channel named in `run_task`, and on
///   the task's own `notify_channels` ([`Task::notify_channels`](procpool_core::Task::notify_channels),
///   [`MetaTask::notify_channels`](crate::MetaTask::notify_channels),
///   [`Cached::notify_channels`](crate::Cached::notify_channels)), for any number of
///   [`subscribe`](Self::subscribe)rs.
/// - **Results** of completed tasks go to the [`Store`] under their id, to be taken once
///   with [`get_result`](Self::get_result); results of cache-keyed tasks are also kept
///   under their key, for later requests. A failed or cancelled task leaves no cache entry.
///
/// Tasks run on the tokio runtime the manager was built in. Dropping the manager does not
/// stop them (they finish and store their results); [`cancel_all_tasks`](Self::cancel_all_tasks)
/// does.
#[derive(Clone)]
pub struct TaskManager {
    inner: Arc<ManagerInner>,
}

impl fmt::Debug for TaskManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskManager")
            .field("pool", &self.inner.pool)
            .field("running", &self.inner.root_ids().len())
            .finish_non_exhaustive()
    }
}

/// Settings of a [`TaskManager`].
pub struct TaskManagerBuilder {
    pool: Pool,
    store: Option<Arc<dyn Store>>,
    result_ttl: Option<Duration>,
    cache_ttl: Option<Duration>,
    event_capacity: usize,
}

impl fmt::Debug for TaskManagerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskManagerBuilder")
            .field("result_ttl", &self.result_ttl)
            .field("cache_ttl", &self.cache_ttl)
            .field("event_capacity", &self.event_capacity)
            .finish_non_exhaustive()
    }
}

impl TaskManagerBuilder {
    /// Where results and cached values go. Default: a [`MemoryStore`] of
    /// [`MemoryStore::DEFAULT_CAPACITY`] bytes. Pass an `Arc` to keep a handle on it.
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// How long a stored result waits to be taken ([`TaskManager::get_result`]); `None`
    /// keeps it until taken or evicted. Default: 10 minutes.
    pub fn result_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.result_ttl = ttl;
        self
    }

    /// How long the result of a cache-keyed task answers later requests with its key;
    /// `None` keeps it until evicted. Default: `None`.
    pub fn cache_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// Events buffered per channel for its slowest subscriber; one that falls further
    /// behind gets `RecvError::Lagged` and misses the oldest. Default: 1024.
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n;
        self
    }

    /// The manager. Its tasks run on the current tokio runtime.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn build(self) -> TaskManager {
        let runtime = tokio::runtime::Handle::current();
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::default()));
        TaskManager {
            inner: Arc::new(ManagerInner::new(
                self.pool,
                runtime,
                store,
                EventBus::new(self.event_capacity),
                self.result_ttl,
                self.cache_ttl,
            )),
        }
    }
}

impl TaskManager {
    /// A manager with default settings on `pool` (see [`TaskManagerBuilder`]).
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn new(pool: Pool) -> TaskManager {
        Self::builder(pool).build()
    }

    /// A builder for a manager on `pool`.
    pub fn builder(pool: Pool) -> TaskManagerBuilder {
        TaskManagerBuilder {
            pool,
            store: None,
            result_ttl: Some(Duration::from_secs(600)),
            cache_ttl: None,
            event_capacity: 1024,
        }
    }

    /// The pool the tasks run on.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Runs `task` (a [`Task`](procpool_core::Task), a [`MetaTask`](crate::MetaTask), a
    /// [`Cached`](crate::Cached) one, any [`Inputs`]) and returns its consumer handle.
    /// Events go to `channel` and to the task's own `notify_channels` (see
    /// [`Identity::notify_channels`](crate::Identity::notify_channels)), each channel once:
    /// `Started` before this returns, then progress and messages, then one terminal event
    /// (see [`TaskEvent`]).
    ///
    /// A running task with the same cache key or id takes the request instead: `task` is
    /// dropped and the handle's [`id`](PendingTask::id) is the running one's. A completed
    /// task's cached result answers a cache-keyed request without running anything.
    pub fn run_task<I>(&self, task: I, channel: Option<&str>) -> PendingTask
    where
        I: Inputs,
        I::Output: Serialize,
    {
        let ident = task.identity();
        let body = keyed_body(task, ident.cache_key.as_deref(), &self.inner.pool);
        let consumer = self.inner.subscribe(Request {
            id: ident.id.unwrap_or_else(Uuid::new_v4),
            name: ident.name.unwrap_or_else(|| "inputs".to_owned()),
            key: ident.cache_key,
            channels: distinct(
                channel
                    .map(str::to_owned)
                    .into_iter()
                    .chain(ident.notify_channels),
            ),
            root: true,
            watchers: Arc::new([]),
            path: "$".into(),
            keys: Arc::new([]),
            body,
        });
        PendingTask { consumer }
    }

    /// Follows the events of `channel`: everything published from now on.
    pub fn subscribe(&self, channel: &str) -> broadcast::Receiver<TaskEvent> {
        self.inner.events.subscribe(channel)
    }

    /// Cancels the running task `id` for every consumer: its queued tasks never run, its
    /// running ones have their workers killed, and its shared inputs are released (they go
    /// on if other runs need them). Returns once it has ended. With `notify`, its
    /// channels get `Cancelled`; without, they get no terminal event (for a caller that
    /// tells its clients itself).
    ///
    /// Other runs consuming this task (as a cache-keyed input) fail with
    /// [`MetaError::Cancelled`]. To drop a single consumer, use [`PendingTask::cancel`].
    pub async fn cancel_task(&self, id: Uuid, notify: bool) -> Result<(), ManagerError> {
        let node = self
            .inner
            .take_root(id)
            .ok_or(ManagerError::UnknownTask { id })?;
        node.set_notify(notify);
        node.scope.cancel();
        node.wait_ended().await;
        Ok(())
    }

    /// Cancels every running task (with notification) and returns once all have ended:
    /// the shutdown path.
    pub async fn cancel_all_tasks(&self) {
        let roots = self.inner.take_roots();
        for node in &roots {
            node.scope.cancel();
        }
        join_all(roots.iter().map(|node| node.wait_ended())).await;
    }

    /// Ids of the tasks run with [`run_task`](Self::run_task) that have not ended.
    pub fn running(&self) -> Vec<Uuid> {
        self.inner.root_ids()
    }

    /// Pids of the worker processes running tasks of the running task `id` right now:
    /// its own task, its inputs, and the shared tasks it consumes. Empty while all of them
    /// are queued; `None` when no task run with [`run_task`](Self::run_task) has this id
    /// (it never ran, or it ended). For status reports: a pid may be gone, or at other
    /// work, by the time it is read.
    pub fn worker_pids(&self, id: Uuid) -> Option<Vec<u32>> {
        self.inner.root(id).map(|node| node.scope.worker_pids())
    }

    /// Takes the stored result of task `id`: the first call returns it and removes it, a
    /// second one (or one after its TTL, or after it was evicted) fails with
    /// [`ManagerError::NoResult`].
    pub async fn get_result(&self, id: Uuid) -> Result<Value, ManagerError> {
        let bytes = self
            .inner
            .store
            .take(&StoreKey::Result(id))
            .await?
            .ok_or(ManagerError::NoResult { id })?;
        serde_json::from_slice(&bytes).map_err(|e| ManagerError::Codec {
            id,
            message: e.to_string(),
        })
    }

    /// [`get_result`](Self::get_result), decoded into `T`.
    pub async fn get_result_as<T: DeserializeOwned>(&self, id: Uuid) -> Result<T, ManagerError> {
        let value = self.get_result(id).await?;
        serde_json::from_value(value).map_err(|e| ManagerError::Codec {
            id,
            message: e.to_string(),
        })
    }

    /// Stores `value` as the result of `id` (replacing one stored before), to be taken
    /// once with [`get_result`](Self::get_result) within the result TTL.
    pub async fn set_result<T: Serialize + ?Sized>(
        &self,
        id: Uuid,
        value: &T,
    ) -> Result<(), ManagerError> {
        let bytes = serde_json::to_vec(value).map_err(|e| ManagerError::Codec {
            id,
            message: e.to_string(),
        })?;
        self.inner
            .store
            .put(StoreKey::Result(id), bytes, self.inner.result_ttl)
            .await
            .map_err(ManagerError::from)
    }
}

/// One consumer of a task run by a [`TaskManager`]: await it (it is
/// [`IntoFuture`]), clone it to await it from several places, or
/// [`cancel`](Self::cancel) it.
///
/// Clones are the same consumer. Dropping every clone does not cancel anything: the task
/// runs on, and its result goes to the store.
#[derive(Clone)]
pub struct PendingTask {
    consumer: Arc<Consumer>,
}

impl fmt::Debug for PendingTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingTask")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

impl PendingTask {
    /// The task's id (the running task's, when this request attached to one).
    pub fn id(&self) -> Uuid {
        self.consumer.node.id
    }

    /// The task's name.
    pub fn name(&self) -> &str {
        &self.consumer.node.name
    }

    /// Drops this consumer. If others remain, the task runs on for them and this handle
    /// resolves with [`MetaError::Cancelled`] at once (after a `Cancelled` event on its
    /// channel, unless another consumer uses that channel too). If it was the last, the
    /// task is cancelled (queued tasks never run, running ones have their workers killed)
    /// and the handle resolves once they are gone, after the task's `Cancelled` event.
    pub fn cancel(&self) {
        self.consumer.release();
    }

    /// The outcome, once the task ended (and its end was announced on the channels).
    pub async fn value(&self) -> Result<Value, MetaError> {
        self.consumer.wait().await
    }

    /// [`value`](Self::value), decoded into `T`.
    pub async fn result<T: DeserializeOwned>(&self) -> Result<T, MetaError> {
        let value = self.value().await?;
        serde_json::from_value(value).map_err(|e| MetaError::Codec {
            message: format!("the result does not fit the type asked for: {e}"),
        })
    }

    /// The outcome, if the task already ended; never waits.
    pub fn try_value(&self) -> Option<Result<Value, MetaError>> {
        self.consumer.outcome()
    }
}

impl IntoFuture for PendingTask {
    type Output = Result<Value, MetaError>;
    type IntoFuture = BoxFuture<'static, Result<Value, MetaError>>;

    fn into_future(self) -> Self::IntoFuture {
        async move { self.value().await }.boxed()
    }
}
