//! Consumers of a node: attaching one (its `Started` event), answering and releasing it,
//! and the observer that publishes the node's progress and messages on its consumers'
//! channels and forwards them to the runs consuming it.

use std::sync::{Arc, Weak};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use procpool_core::Progress;
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

use crate::errors::MetaError;
use crate::events::{EventBus, TaskEvent};
use crate::observe::{Observe, Observers};
use crate::scope::Live;
use crate::state::{Consumer, ManagerInner, Node, NodeState};

impl NodeState {
    pub(crate) fn attach(
        &mut self,
        consumer: &Arc<Consumer>,
        watchers: Observers,
        events: &EventBus,
    ) {
        self.consumers.push(consumer.clone());
        if !watchers.is_empty() {
            self.watchers.push((consumer.serial, watchers));
        }
        for channel in &consumer.channels {
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

/// Watches a node's tasks: publishes their progress and messages on the node's channels
/// and forwards them to the runs consuming the node.
pub(crate) struct NodeObserver {
    pub(crate) node: Weak<Node>,
    pub(crate) manager: Weak<ManagerInner>,
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

impl Consumer {
    pub(crate) fn new(
        serial: u64,
        node: Arc<Node>,
        channels: Vec<String>,
        manager: &Arc<ManagerInner>,
    ) -> Arc<Consumer> {
        Arc::new(Consumer {
            serial,
            node,
            channels,
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
    /// consumer gets `Cancelled` at once, after a `Cancelled` event on each of its
    /// channels that no other consumer shares.
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
                for channel in &self.channels {
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
