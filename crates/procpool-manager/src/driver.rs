//! The driver of a node: runs it (or answers it from the cache), then ends it: caches and
//! stores its result, takes it out of the registry, announces its end on its channels and
//! answers its consumers. A dropped driver still ends its node ([`EndGuard`]).

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::context::InputContext;
use crate::errors::MetaError;
use crate::events::{EventBus, TaskEvent};
use crate::state::{ManagerInner, Node};
use crate::store::StoreKey;

/// What a node runs: its inputs started in the node's context, resolved to JSON.
pub(crate) type NodeBody =
    Box<dyn FnOnce(&InputContext) -> BoxFuture<'static, Result<Value, MetaError>> + Send>;

/// Runs a node and ends it.
pub(crate) async fn drive(
    manager: Arc<ManagerInner>,
    node: Arc<Node>,
    at: InputContext,
    body: NodeBody,
) {
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

impl ManagerInner {
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

impl Node {
    pub(crate) fn set_notify(&self, notify: bool) {
        self.lock().notify = notify;
    }

    /// Announces the end on the node's channels, then answers every consumer: a
    /// consumer's result is never seen before the event that announces it.
    pub(crate) fn finish(&self, events: Option<&EventBus>, outcome: Result<Value, MetaError>) {
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
