//! The state behind a task manager, as plain types: the manager's shared state, the
//! registry of live nodes, a node and its consumers. A leaf of the crate (it knows no run
//! context and no driver), so the run context can hold the manager without an import
//! cycle; what these types do lives in `registry.rs`, `driver.rs` and `consumer.rs`. The
//! design note is the crate's `DESIGN.md`.
//!
//! A node is one run that any number of consumers share: a task given to
//! `TaskManager::run_task` (a root), or an input with a cache key met inside a run
//! ([`Cached`](crate::Cached)). Every consumer counts: a consumer that goes away is dropped
//! from the node, and only the last one's going cancels the node's tasks.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use procpool_core::Pool;
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

use crate::errors::MetaError;
use crate::events::EventBus;
use crate::observe::Observers;
use crate::scope::Scope;
use crate::store::Store;

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
pub(crate) struct Registry {
    pub(crate) by_key: HashMap<String, Arc<Node>>,
    /// Nodes run by `run_task`: `cancel_task` finds them here, and a `run_task` with the
    /// id of a running task attaches to it.
    pub(crate) by_id: HashMap<Uuid, Arc<Node>>,
}

impl Registry {
    /// Removes `node` from both maps, if it is still the entry there.
    pub(crate) fn unregister(&mut self, node: &Arc<Node>) {
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

    pub(crate) fn registry(&self) -> MutexGuard<'_, Registry> {
        // Single inserts and removes: consistent even if a holder panicked.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One shared run (see the module docs).
pub(crate) struct Node {
    pub(crate) id: Uuid,
    pub(crate) name: String,
    pub(crate) key: Option<String>,
    /// The node's own fail-fast group: cancelling it cancels the node's tasks.
    pub(crate) scope: Arc<Scope>,
    pub(crate) state: Mutex<NodeState>,
    /// Set once the node ended (its end announced, its consumers answered).
    pub(crate) ended: watch::Sender<bool>,
}

pub(crate) struct NodeState {
    /// Attached consumers; each gets the outcome. The last one stays here after it is
    /// released, to get the outcome of the cancel it caused.
    pub(crate) consumers: Vec<Arc<Consumer>>,
    /// One entry per channel of each attached consumer (a channel may repeat: it is
    /// announced once, and its `Cancelled` waits until no consumer on it is left).
    pub(crate) channels: Vec<String>,
    /// Observers of the runs that consume this node, by consumer serial.
    pub(crate) watchers: Vec<(u64, Observers)>,
    /// Run by `run_task`: its result is stored under its id.
    pub(crate) root: bool,
    /// Whether a cancel is announced (`cancel_task(id, notify)`).
    pub(crate) notify: bool,
    pub(crate) ended: bool,
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
    pub(crate) fn lock(&self) -> MutexGuard<'_, NodeState> {
        // Updates are single pushes, removes and flag writes: consistent after a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One consumer of a node: a `run_task` call (behind a `PendingTask`) or an input of
/// another run.
pub(crate) struct Consumer {
    pub(crate) serial: u64,
    pub(crate) node: Arc<Node>,
    /// Where this consumer wants the node's events, each channel once.
    pub(crate) channels: Vec<String>,
    pub(crate) manager: Weak<ManagerInner>,
    pub(crate) outcome: watch::Sender<Option<Result<Value, MetaError>>>,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("node", &self.node)
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}
