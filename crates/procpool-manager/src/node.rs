//! Shared tasks of a task manager: nodes, their consumers, and the driver that runs each
//! node and announces its end. The design note is the crate's `DESIGN.md`.
//!
//! A node is one run that any number of consumers share: a task given to
//! `TaskManager::run_task` (a root), or an input with a cache key met inside a run
//! ([`Cached`]). Every consumer counts: a consumer that goes away is dropped from the
//! node, and only the last one's going cancels the node's tasks.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use procpool_core::{Pool, Progress};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

use crate::context::{InputContext, Observe, Observers};
use crate::errors::MetaError;
use crate::events::{EventBus, TaskEvent};
use crate::inputs::{Identity, Inputs};
use crate::scope::{Live, Scope};
use crate::store::{Store, StoreKey};

/// Inputs shared by cache key under a [`TaskManager`](crate::TaskManager).
///
/// Under a task manager, every run of a `Cached` with the key of a running one attaches
/// to it instead of running again, and one with the key of a completed one gets the
/// cached result (kept in the store for the manager's cache TTL). Each attached run is a
/// consumer: one that fails or is cancelled only detaches, and the shared task is
/// cancelled (its workers killed) when its last consumer goes. A failed or cancelled
/// shared task leaves no cache entry, so the next request runs it again. The result is
/// shared as JSON, hence the serde bounds.
///
/// Run directly on a pool (`MetaTask::submit`) there is no manager to share with, and a
/// `Cached` runs its inputs as they are. A key met again inside its own inputs also runs
/// inline (a task cannot wait for itself).
///
/// ```no_run
/// use procpool_core::Task;
/// use procpool_manager::{Cached, TaskManager};
/// use serde_json::json;
/// # async fn demo(manager: TaskManager) {
/// let square_3 = || Cached::new("square-3", Task::json("square", json!([3])));
/// let a = manager.run_task(square_3(), Some("ui"));
/// let b = manager.run_task(square_3(), Some("ui"));
/// assert_eq!(a.id(), b.id()); // one task, two consumers
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Cached<I> {
    key: String,
    inputs: I,
}

impl<I> Cached<I> {
    /// Shares `inputs` under `key`. Equal keys must mean equal work: the key is all the
    /// manager compares.
    pub fn new(key: impl Into<String>, inputs: I) -> Self {
        Cached {
            key: key.into(),
            inputs,
        }
    }

    /// The cache key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The inputs, unshared.
    pub fn into_inner(self) -> I {
        self.inputs
    }
}

impl<I> Inputs for Cached<I>
where
    I: Inputs,
    I::Output: Serialize + DeserializeOwned,
{
    type Output = I::Output;

    fn start(self, at: &InputContext) -> BoxFuture<'static, Result<I::Output, MetaError>> {
        let Cached { key, inputs } = self;
        let Some(manager) = at.manager.clone() else {
            return inputs.start(at);
        };
        if at.keys.contains(&key) {
            return inputs.start(at);
        }
        let ident = inputs.identity();
        let request = Request {
            id: ident.id.unwrap_or_else(Uuid::new_v4),
            name: ident.name.unwrap_or_else(|| "inputs".to_owned()),
            key: Some(key.clone()),
            channel: None,
            root: false,
            watchers: at.observers.clone(),
            path: at.path_arc(),
            keys: at.keys.clone(),
            body: value_body(inputs),
        };
        let (member, consumer) = match at.scope.enter(|| manager.subscribe(request)) {
            Ok(entered) => entered,
            Err(failure) => return futures::future::ready(Err(failure)).boxed(),
        };
        let scope = at.scope.clone();
        async move {
            let outcome = consumer.wait().await;
            scope.leave(member);
            let value = outcome.map_err(|e| scope.fail(e))?;
            serde_json::from_value(value).map_err(|e| {
                scope.fail(MetaError::Codec {
                    message: format!("the shared result of {key:?} does not fit its type: {e}"),
                })
            })
        }
        .boxed()
    }

    fn identity(&self) -> Identity {
        Identity {
            cache_key: Some(self.key.clone()),
            ..self.inputs.identity()
        }
    }
}

/// What a node runs: its inputs started in the node's context, resolved to JSON.
pub(crate) type NodeBody =
    Box<dyn FnOnce(&InputContext) -> BoxFuture<'static, Result<Value, MetaError>> + Send>;

/// The body of a node running `inputs`.
pub(crate) fn value_body<I>(inputs: I) -> NodeBody
where
    I: Inputs,
    I::Output: Serialize,
{
    Box::new(move |at: &InputContext| {
        let resolved = inputs.start(at);
        let scope = at.scope.clone();
        async move {
            let out = resolved.await?;
            serde_json::to_value(out).map_err(|e| {
                scope.fail(MetaError::Codec {
                    message: format!("the result does not convert to JSON: {e}"),
                })
            })
        }
        .boxed()
    })
}

/// A request to run something as a node, or to attach to the node already running it.
pub(crate) struct Request {
    pub(crate) id: Uuid,
    pub(crate) name: String,
    pub(crate) key: Option<String>,
    /// Where this consumer wants the node's events.
    pub(crate) channel: Option<String>,
    /// Made by `run_task` (the node's result is then stored under its id).
    pub(crate) root: bool,
    /// The consumer's own observers: the node's progress is forwarded to them.
    pub(crate) watchers: Observers,
    pub(crate) path: Arc<str>,
    pub(crate) keys: Arc<[String]>,
    /// Used only when no node runs it yet.
    pub(crate) body: NodeBody,
}

/// The state behind a `TaskManager`.
pub(crate) struct ManagerInner {
    pub(crate) pool: Pool,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) events: EventBus,
    registry: Mutex<Registry>,
    pub(crate) result_ttl: Option<Duration>,
    pub(crate) cache_ttl: Option<Duration>,
}

/// The live nodes. A node leaves the registry before it ends (or when its last consumer
/// goes), so a node found here can still take consumers.
#[derive(Default)]
struct Registry {
    by_key: HashMap<String, Arc<Node>>,
    /// Nodes run by `run_task`: `cancel_task` finds them here, and a `run_task` with the
    /// id of a running task attaches to it.
    by_id: HashMap<Uuid, Arc<Node>>,
}

impl Registry {
    /// Removes `node` from both maps, if it is still the entry there.
    fn unregister(&mut self, node: &Arc<Node>) {
        if let Some(key) = &node.key
            && self.by_key.get(key).is_some_and(|n| Arc::ptr_eq(n, node))
        {
            self.by_key.remove(key);
        }
        if self
            .by_id
            .get(&node.id)
            .is_some_and(|n| Arc::ptr_eq(n, node))
        {
            self.by_id.remove(&node.id);
        }
    }
}

/// Serial numbers of consumers (to find a consumer's watchers in its node).
static NEXT_CONSUMER: AtomicU64 = AtomicU64::new(0);

impl ManagerInner {
    pub(crate) fn new(
        pool: Pool,
        runtime: tokio::runtime::Handle,
        store: Arc<dyn Store>,
        events: EventBus,
        result_ttl: Option<Duration>,
        cache_ttl: Option<Duration>,
    ) -> Self {
        ManagerInner {
            pool,
            runtime,
            store,
            events,
            registry: Mutex::new(Registry::default()),
            result_ttl,
            cache_ttl,
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // Single inserts and removes: consistent even if a holder panicked.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches a consumer to the node running the request (by cache key, then by id), or
    /// starts a new node for it.
    ///
    /// Lock order, everywhere: a run's scope, then the registry, then a node. A node's
    /// lock is never held while taking another node's or a scope's.
    pub(crate) fn subscribe(self: &Arc<Self>, req: Request) -> Arc<Consumer> {
        let serial = NEXT_CONSUMER.fetch_add(1, Ordering::Relaxed);
        let mut registry = self.registry();
        let running = req
            .key
            .as_ref()
            .and_then(|k| registry.by_key.get(k))
            .or_else(|| registry.by_id.get(&req.id))
            .cloned();
        if let Some(node) = running {
            let consumer = Consumer::new(serial, node.clone(), req.channel, self);
            let mut st = node.lock();
            if req.root && !st.root {
                st.root = true;
                registry.by_id.insert(node.id, node.clone());
            }
            st.attach(&consumer, req.watchers, &self.events);
            return consumer;
        }

        let node = Arc::new(Node {
            id: req.id,
            name: req.name,
            key: req.key,
            scope: Scope::new(),
            state: Mutex::new(NodeState {
                consumers: Vec::new(),
                channels: Vec::new(),
                watchers: Vec::new(),
                root: req.root,
                notify: true,
                ended: false,
            }),
            ended: watch::channel(false).0,
        });
        let consumer = Consumer::new(serial, node.clone(), req.channel, self);
        node.lock().attach(&consumer, req.watchers, &self.events);
        if let Some(key) = &node.key {
            registry.by_key.insert(key.clone(), node.clone());
        }
        if req.root {
            registry.by_id.insert(node.id, node.clone());
        }
        drop(registry);

        let mut keys = req.keys.to_vec();
        keys.extend(node.key.clone());
        let observer: Arc<dyn Observe> = Arc::new(NodeObserver {
            node: Arc::downgrade(&node),
            manager: Arc::downgrade(self),
        });
        let at = InputContext::root(
            self.pool.clone(),
            node.scope.clone(),
            req.path,
            Arc::new([observer]),
            Some(self.clone()),
            keys.into(),
        );
        self.runtime.spawn(drive(self.clone(), node, at, req.body));
        consumer
    }

    /// Removes the node run under `id` by `run_task` from the registry, so new requests
    /// start afresh, and returns it.
    pub(crate) fn take_root(&self, id: Uuid) -> Option<Arc<Node>> {
        let mut registry = self.registry();
        let node = registry.by_id.get(&id)?.clone();
        registry.unregister(&node);
        Some(node)
    }

    /// Removes every node run by `run_task` from the registry and returns them.
    pub(crate) fn take_roots(&self) -> Vec<Arc<Node>> {
        let mut registry = self.registry();
        let roots: Vec<Arc<Node>> = registry.by_id.values().cloned().collect();
        for node in &roots {
            registry.unregister(node);
        }
        roots
    }

    /// The node run under `id` by `run_task`, if it is still running.
    pub(crate) fn root(&self, id: Uuid) -> Option<Arc<Node>> {
        self.registry().by_id.get(&id).cloned()
    }

    /// Ids of the tasks run by `run_task` that have not ended.
    pub(crate) fn root_ids(&self) -> Vec<Uuid> {
        self.registry().by_id.keys().copied().collect()
    }

    /// The cached result under `key`, if the store has a readable one.
    async fn cached(&self, key: &str) -> Option<Value> {
        let bytes = match self.store.get(&StoreKey::Cache(key.to_owned())).await {
            Ok(bytes) => bytes?,
            Err(e) => {
                tracing::warn!(key, error = %e, "cannot read the cache; running the task");
                return None;
            }
        };
        serde_json::from_slice(&bytes)
            .inspect_err(
                |e| tracing::warn!(key, error = %e, "unreadable cache entry; running the task"),
            )
            .ok()
    }

    async fn store_put(&self, key: StoreKey, bytes: Vec<u8>, ttl: Option<Duration>) {
        if let Err(e) = self.store.put(key.clone(), bytes, ttl).await {
            tracing::warn!(key = %key, error = %e, "cannot store a result");
        }
    }

    /// Ends a node whose run is over: cache and store its result, take it out of the
    /// registry, then announce its end and hand the outcome to its consumers.
    async fn end(&self, node: &Arc<Node>, outcome: Result<Value, MetaError>, guard: &mut EndGuard) {
        let bytes = outcome
            .as_ref()
            .ok()
            .map(|v| serde_json::to_vec(v).expect("a serde_json::Value always serializes"));
        // Cache first, then leave the registry: a request in between attaches to this
        // node; one after it finds the cache entry.
        if let Some(key) = &node.key {
            let key = StoreKey::Cache(key.clone());
            match &bytes {
                Some(bytes) => self.store_put(key, bytes.clone(), self.cache_ttl).await,
                // A failed or cancelled task leaves no entry: the next request runs it.
                None => {
                    if let Err(e) = self.store.remove(&key).await {
                        tracing::warn!(key = %key, error = %e, "cannot clear a cache entry");
                    }
                }
            }
        }
        self.registry().unregister(node);
        // Read after leaving the registry: no `run_task` can attach (and make it a root)
        // any more.
        let root = node.lock().root;
        if root && let Some(bytes) = bytes {
            // Stored before the end is announced: whoever sees `Completed` finds it.
            self.store_put(StoreKey::Result(node.id), bytes, self.result_ttl)
                .await;
        }
        guard.armed = false;
        node.finish(Some(&self.events), outcome);
    }
}

/// Runs a node and ends it.
async fn drive(manager: Arc<ManagerInner>, node: Arc<Node>, at: InputContext, body: NodeBody) {
    let mut guard = EndGuard {
        manager: Arc::downgrade(&manager),
        node: node.clone(),
        armed: true,
    };
    let cached = match &node.key {
        Some(key) => manager.cached(key).await,
        None => None,
    };
    let outcome = match cached {
        Some(value) => Ok(value),
        None => {
            let out = body(&at).await;
            node.scope.settle().await;
            out
        }
    };
    // The first failure is the node's outcome (later ones are what it took down); a cancel
    // that came in during a cache hit wins too, as the consumers asked for it.
    let outcome = match node.scope.failure() {
        Some(failure) => Err(failure),
        None => outcome,
    };
    manager.end(&node, outcome, &mut guard).await;
}

/// Ends a node whose driver was dropped before it ended: the runtime shut down, or a
/// combine step panicked. Its tasks are cancelled and its consumers answered, so nobody
/// waits forever.
struct EndGuard {
    manager: Weak<ManagerInner>,
    node: Arc<Node>,
    armed: bool,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.node.scope.cancel();
        let manager = self.manager.upgrade();
        if let Some(manager) = &manager {
            manager.registry().unregister(&self.node);
        }
        self.node.finish(
            manager.as_ref().map(|m| &m.events),
            Err(MetaError::Aborted {
                message: "the task manager's driver of this task was dropped (a combine step \
                          panicked, or the runtime shut down)"
                    .to_owned(),
            }),
        );
    }
}

/// One shared run (see the module docs).
pub(crate) struct Node {
    pub(crate) id: Uuid,
    pub(crate) name: String,
    key: Option<String>,
    /// The node's own fail-fast group: cancelling it cancels the node's tasks.
    pub(crate) scope: Arc<Scope>,
    state: Mutex<NodeState>,
    /// Set once the node ended (its end announced, its consumers answered).
    ended: watch::Sender<bool>,
}

struct NodeState {
    /// Attached consumers; each gets the outcome. The last one stays here after it is
    /// released, to get the outcome of the cancel it caused.
    consumers: Vec<Arc<Consumer>>,
    /// One entry per attached consumer with a channel (a channel may repeat).
    channels: Vec<String>,
    /// Observers of the runs that consume this node, by consumer serial.
    watchers: Vec<(u64, Observers)>,
    /// Run by `run_task`: its result is stored under its id.
    root: bool,
    /// Whether a cancel is announced (`cancel_task(id, notify)`).
    notify: bool,
    ended: bool,
}

impl NodeState {
    fn attach(&mut self, consumer: &Arc<Consumer>, watchers: Observers, events: &EventBus) {
        self.consumers.push(consumer.clone());
        if !watchers.is_empty() {
            self.watchers.push((consumer.serial, watchers));
        }
        if let Some(channel) = &consumer.channel {
            // Under the node's lock, like every event of the node: nothing of this task
            // reaches the channel before its `Started`.
            events.publish(
                [channel.as_str()],
                &TaskEvent::Started {
                    task_id: consumer.node.id,
                    name: consumer.node.name.clone(),
                },
            );
            self.channels.push(channel.clone());
        }
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Node {
    fn lock(&self) -> MutexGuard<'_, NodeState> {
        // Updates are single pushes, removes and flag writes: consistent after a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_notify(&self, notify: bool) {
        self.lock().notify = notify;
    }

    /// Announces the end on the node's channels, then answers every consumer: a
    /// consumer's result is never seen before the event that announces it.
    fn finish(&self, events: Option<&EventBus>, outcome: Result<Value, MetaError>) {
        let consumers = {
            let mut st = self.lock();
            if st.ended {
                return;
            }
            st.ended = true;
            let event = TaskEvent::terminal(self.id, &outcome);
            let silent = matches!(event, TaskEvent::Cancelled { .. }) && !st.notify;
            if let Some(events) = events
                && !silent
            {
                events.publish(st.channels.iter().map(String::as_str), &event);
            }
            st.watchers.clear();
            std::mem::take(&mut st.consumers)
        };
        for consumer in consumers {
            consumer.outcome.send_replace(Some(outcome.clone()));
        }
        self.ended.send_replace(true);
    }

    /// Resolves once the node ended.
    pub(crate) async fn wait_ended(&self) {
        let mut rx = self.ended.subscribe();
        // The sender lives in `self`: the channel cannot close while we wait.
        let _ = rx.wait_for(|ended| *ended).await;
    }
}

/// Watches a node's tasks: publishes their progress and messages on the node's channels
/// and forwards them to the runs consuming the node.
struct NodeObserver {
    node: Weak<Node>,
    manager: Weak<ManagerInner>,
}

impl NodeObserver {
    fn publish(&self, event: impl FnOnce(Uuid) -> TaskEvent) -> Vec<Observers> {
        let (Some(node), Some(manager)) = (self.node.upgrade(), self.manager.upgrade()) else {
            return Vec::new();
        };
        let st = node.lock();
        if st.ended {
            return Vec::new();
        }
        if !st.channels.is_empty() {
            manager
                .events
                .publish(st.channels.iter().map(String::as_str), &event(node.id));
        }
        st.watchers.iter().map(|(_, w)| w.clone()).collect()
    }
}

impl Observe for NodeObserver {
    fn progress(&self, p: &Progress) {
        let watchers = self.publish(|task_id| TaskEvent::Progress {
            task_id,
            input_id: p.task_id,
            fraction: p.fraction,
            message: p.message.clone(),
        });
        // Outside the node's lock: a watcher may be another node's observer.
        for observer in watchers.iter().flat_map(|w| w.iter()) {
            observer.progress(p);
        }
    }

    fn message(&self, input: Uuid, bytes: &[u8]) {
        let watchers = self.publish(|task_id| TaskEvent::Message {
            task_id,
            input_id: input,
            bytes: bytes.to_vec(),
        });
        for observer in watchers.iter().flat_map(|w| w.iter()) {
            observer.message(input, bytes);
        }
    }

    fn wants_messages(&self) -> bool {
        true
    }
}

/// One consumer of a node: a `run_task` call (behind a `PendingTask`) or an input of
/// another run.
pub(crate) struct Consumer {
    serial: u64,
    pub(crate) node: Arc<Node>,
    channel: Option<String>,
    manager: Weak<ManagerInner>,
    outcome: watch::Sender<Option<Result<Value, MetaError>>>,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("node", &self.node)
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    fn new(
        serial: u64,
        node: Arc<Node>,
        channel: Option<String>,
        manager: &Arc<ManagerInner>,
    ) -> Arc<Consumer> {
        Arc::new(Consumer {
            serial,
            node,
            channel,
            manager: Arc::downgrade(manager),
            outcome: watch::channel(None).0,
        })
    }

    /// The consumer's outcome: the node's, or `Cancelled` once it was released while
    /// other consumers keep the node running.
    pub(crate) async fn wait(&self) -> Result<Value, MetaError> {
        let mut rx = self.outcome.subscribe();
        // The sender lives in `self`: the channel cannot close while we wait.
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|v| (*v).clone());
        outcome.unwrap_or(Err(MetaError::Cancelled))
    }

    /// The outcome, if the consumer has one yet.
    pub(crate) fn outcome(&self) -> Option<Result<Value, MetaError>> {
        self.outcome.borrow().clone()
    }

    /// Detaches from the node. The last consumer's release cancels the node (its workers
    /// are killed) and it gets the node's outcome once they are reaped; any other
    /// consumer gets `Cancelled` at once, after a `Cancelled` event on its channel if no
    /// other consumer shares that channel.
    pub(crate) fn release(self: &Arc<Self>) {
        let Some(manager) = self.manager.upgrade() else {
            return;
        };
        let node = &self.node;
        let last = {
            let mut registry = manager.registry();
            let mut st = node.lock();
            if st.ended {
                return;
            }
            let Some(pos) = st.consumers.iter().position(|c| Arc::ptr_eq(c, self)) else {
                return;
            };
            if st.consumers.len() == 1 {
                // New requests must not attach to a node that is being cancelled.
                registry.unregister(node);
                true
            } else {
                st.consumers.remove(pos);
                st.watchers.retain(|(serial, _)| *serial != self.serial);
                if let Some(channel) = &self.channel {
                    if let Some(i) = st.channels.iter().position(|c| c == channel) {
                        st.channels.remove(i);
                    }
                    if st.notify && !st.channels.contains(channel) {
                        manager.events.publish(
                            [channel.as_str()],
                            &TaskEvent::Cancelled { task_id: node.id },
                        );
                    }
                }
                false
            }
        };
        if last {
            node.scope.cancel();
        } else {
            self.outcome.send_replace(Some(Err(MetaError::Cancelled)));
        }
    }
}

impl Live for Consumer {
    fn stop(self: Arc<Self>) {
        self.release();
    }

    fn ended(&self) -> BoxFuture<'_, ()> {
        self.wait().map(drop).boxed()
    }

    fn worker_pids(&self, out: &mut Vec<u32>) {
        out.extend(self.node.scope.worker_pids());
    }
}
