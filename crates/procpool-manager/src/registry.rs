//! The registry of a task manager: a request to run something either attaches to the
//! node already running it (by cache key, then by id) or starts a new node and its driver.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt as _;
use procpool_core::{Pool, dedupe_id};
use serde::Serialize;
use tokio::sync::watch;
use uuid::Uuid;

use crate::consumer::NodeObserver;
use crate::context::InputContext;
use crate::driver::{NodeBody, drive};
use crate::errors::MetaError;
use crate::inputs::Inputs;
use crate::observe::{Observe, Observers};
use crate::scope::Scope;
use crate::state::{Consumer, ManagerInner, Node, NodeState};

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

/// The body of a node running `inputs` under cache key `key`: on a remote pool its one
/// task (if it is one) takes the id derived from the key, which submitters on other hosts
/// derive too, so they share the run on the broker.
pub(crate) fn keyed_body<I>(inputs: I, key: Option<&str>, pool: &Pool) -> NodeBody
where
    I: Inputs,
    I::Output: Serialize,
{
    match key {
        Some(key) if pool.is_remote() => value_body(inputs.with_shared_id(dedupe_id(key))),
        _ => value_body(inputs),
    }
}

/// `channels` in order, each once: a consumer's channel list, where the channel of
/// `run_task` and the task's own `notify_channels` may name the same channel.
pub(crate) fn distinct(channels: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    add_distinct(&mut out, channels);
    out
}

/// Appends the channels `set` does not hold yet, in order (a builder's
/// `notify_channels`).
pub(crate) fn add_distinct<S: Into<String>>(
    set: &mut Vec<String>,
    channels: impl IntoIterator<Item = S>,
) {
    for channel in channels {
        let channel = channel.into();
        if !set.contains(&channel) {
            set.push(channel);
        }
    }
}

/// A request to run something as a node, or to attach to the node already running it.
pub(crate) struct Request {
    pub(crate) id: Uuid,
    pub(crate) name: String,
    pub(crate) key: Option<String>,
    /// Where this consumer wants the node's events.
    pub(crate) channels: Vec<String>,
    /// Made by `run_task` (the node's result is then stored under its id).
    pub(crate) root: bool,
    /// The consumer's own observers: the node's progress is forwarded to them.
    pub(crate) watchers: Observers,
    pub(crate) path: Arc<str>,
    pub(crate) keys: Arc<[String]>,
    /// Used only when no node runs it yet.
    pub(crate) body: NodeBody,
}

/// Serial numbers of consumers (to find a consumer's watchers in its node).
static NEXT_CONSUMER: AtomicU64 = AtomicU64::new(0);

impl ManagerInner {
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
            let consumer = Consumer::new(serial, node.clone(), req.channels, self);
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
        let consumer = Consumer::new(serial, node.clone(), req.channels, self);
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
}
