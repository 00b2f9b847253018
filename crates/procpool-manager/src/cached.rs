//! [`Cached`]: inputs shared by cache key under a task manager.

use futures::FutureExt as _;
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::context::InputContext;
use crate::errors::MetaError;
use crate::inputs::{Identity, Inputs};
use crate::registry::{Request, distinct, keyed_body};

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
    notify_channels: Vec<String>,
}

impl<I> Cached<I> {
    /// Shares `inputs` under `key`. Equal keys must mean equal work: the key is all the
    /// manager compares.
    pub fn new(key: impl Into<String>, inputs: I) -> Self {
        Cached {
            key: key.into(),
            inputs,
            notify_channels: Vec::new(),
        }
    }

    /// Channels that also get the shared task's events when a task manager runs it:
    /// `Started` (when this request is accepted), progress and messages, and one terminal
    /// event, like the channel of [`run_task`](crate::TaskManager::run_task). A request
    /// that attaches to the running task adds its channels to it; a channel named twice,
    /// or also named by the inputs (their own `notify_channels`) or by `run_task`, is
    /// notified once. Also for a `Cached` met inside another run: the shared task's events
    /// (its id in `task_id`) go to these channels. Adds to channels set before.
    pub fn notify_channels<S: Into<String>>(
        mut self,
        channels: impl IntoIterator<Item = S>,
    ) -> Self {
        crate::registry::add_distinct(&mut self.notify_channels, channels);
        self
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
        let Cached {
            key,
            inputs,
            notify_channels,
        } = self;
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
            channels: distinct(notify_channels.into_iter().chain(ident.notify_channels)),
            root: false,
            watchers: at.observers.clone(),
            path: at.path_arc(),
            keys: at.keys.clone(),
            body: keyed_body(inputs, Some(&key), &at.pool),
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

    fn with_shared_id(self, id: Uuid) -> Self {
        Cached {
            inputs: self.inputs.with_shared_id(id),
            ..self
        }
    }

    fn identity(&self) -> Identity {
        let inner = self.inputs.identity();
        Identity {
            cache_key: Some(self.key.clone()),
            notify_channels: crate::registry::distinct(
                self.notify_channels
                    .iter()
                    .cloned()
                    .chain(inner.notify_channels),
            ),
            ..inner
        }
    }
}
