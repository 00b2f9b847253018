//! [`Inputs`]: what a MetaTask combines. Tasks anywhere in a shape (a `Vec`, a map, a
//! tuple, an `Option`, a nested MetaTask, a JSON graph) start together on the pool, and
//! the shape resolves to the same shape with each task's result in its place.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::hash::{BuildHasher, Hash};

use futures::FutureExt as _;
use futures::future::{BoxFuture, join_all};
use procpool_core::Task;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::context::{InputContext, start_task};
use crate::errors::MetaError;

/// Tasks in a shape, with what they resolve to.
///
/// Implemented for [`Task<R>`] (resolves to `R`), [`MetaTask<R>`](crate::MetaTask) (to
/// `R`, so MetaTasks nest), [`Ready<T>`] (a value already at hand), `Vec`, `Option`,
/// `HashMap`, `BTreeMap` and tuples of up to 8 of any of these, and
/// [`JsonGraph`](crate::JsonGraph). For a struct of your own, start each field with the
/// context of its place and join the futures:
///
/// ```
/// use futures::future::BoxFuture;
/// use procpool_manager::{InputContext, Inputs, MetaError};
/// use procpool_core::Task;
///
/// struct Pair {
///     left: Task<i64>,
///     right: Vec<Task<i64>>,
/// }
///
/// impl Inputs for Pair {
///     type Output = (i64, Vec<i64>);
///     fn start(self, at: &InputContext) -> BoxFuture<'static, Result<Self::Output, MetaError>> {
///         // Start both now; await them together so neither waits for the other.
///         let left = self.left.start(&at.field("left"));
///         let right = self.right.start(&at.field("right"));
///         Box::pin(async move {
///             let (left, right) = futures::join!(left, right);
///             Ok((left?, right?))
///         })
///     }
/// }
/// ```
pub trait Inputs: Send + 'static {
    /// The shape with every task replaced by its result.
    type Output: Send + 'static;

    /// Submits every task of the shape to the pool now and returns a future of the
    /// resolved shape. Called by the MetaTask (or the task manager) that runs it.
    ///
    /// Start all parts before awaiting any: a part started late runs late. A failed task
    /// stops the whole run, and the run waits for every task it started before it
    /// resolves, so a part whose future is dropped is still stopped and reaped.
    fn start(self, at: &InputContext) -> BoxFuture<'static, Result<Self::Output, MetaError>>;

    /// Id, name, cache key and channels to notify for
    /// [`TaskManager::run_task`](crate::TaskManager::run_task) when this is the task it
    /// runs (or, for the channels, the inputs a [`Cached`](crate::Cached) shares). The
    /// default: a fresh id, the name `inputs`, no cache key, no channels.
    fn identity(&self) -> Identity {
        Identity::default()
    }

    /// These inputs with their one task renamed to `id`, when they are one task. A task
    /// manager on a remote pool (a broker) gives a cache-keyed task the id derived from
    /// its key ([`dedupe_id`](procpool_core::dedupe_id)), so that submitters on other
    /// hosts share its one run on the broker. The default keeps the inputs as they are
    /// (a shape of several tasks, or a MetaTask that combines in the parent, is shared
    /// within one manager only); [`Task`] takes the id.
    fn with_shared_id(self, id: Uuid) -> Self
    where
        Self: Sized,
    {
        let _ = id;
        self
    }
}

/// How a [`TaskManager`](crate::TaskManager) names a task it runs (see
/// [`Inputs::identity`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The task's id; `None` for a fresh one.
    pub id: Option<Uuid>,
    /// A name for events and errors; `None` for `inputs`.
    pub name: Option<String>,
    /// The cache key: a run with the key of a running task attaches to it, and a run with
    /// the key of a completed one gets its cached result.
    pub cache_key: Option<String>,
    /// Channels that also get the task's events when a task manager runs it, beside the
    /// channel of `run_task` (each once).
    pub notify_channels: Vec<String>,
}

/// A value already at hand, among inputs that are tasks.
///
/// `MetaTask::new((Ready(10), square::task(3)), |(a, b)| a + b)` resolves to 19.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready<T>(pub T);

impl<T: Send + 'static> Inputs for Ready<T> {
    type Output = T;

    fn start(self, _at: &InputContext) -> BoxFuture<'static, Result<T, MetaError>> {
        futures::future::ready(Ok(self.0)).boxed()
    }
}

impl<R: DeserializeOwned + Send + 'static> Inputs for Task<R> {
    type Output = R;

    fn start(self, at: &InputContext) -> BoxFuture<'static, Result<R, MetaError>> {
        start_task(at, self)
    }

    fn identity(&self) -> Identity {
        Identity {
            id: Some(self.id()),
            name: Some(self.name().to_owned()),
            cache_key: None,
            notify_channels: self.notified_channels().to_vec(),
        }
    }

    fn with_shared_id(self, id: Uuid) -> Self {
        self.with_id(id)
    }
}

impl<T: Inputs> Inputs for Vec<T> {
    type Output = Vec<T::Output>;

    fn start(self, at: &InputContext) -> BoxFuture<'static, Result<Self::Output, MetaError>> {
        let parts: Vec<_> = self
            .into_iter()
            .enumerate()
            .map(|(i, part)| part.start(&at.index(i)))
            .collect();
        // `join_all`, not `try_join_all`: after a failure the run's scope stops the other
        // parts, and they are still awaited here, so they end (and their workers are
        // reaped) before the shape resolves.
        join_all(parts)
            .map(|done| done.into_iter().collect())
            .boxed()
    }
}

impl<T: Inputs> Inputs for Option<T> {
    type Output = Option<T::Output>;

    fn start(self, at: &InputContext) -> BoxFuture<'static, Result<Self::Output, MetaError>> {
        match self {
            Some(part) => part.start(at).map(|r| r.map(Some)).boxed(),
            None => futures::future::ready(Ok(None)).boxed(),
        }
    }
}

impl<K, T, S> Inputs for HashMap<K, T, S>
where
    K: Eq + Hash + Debug + Send + 'static,
    T: Inputs,
    S: BuildHasher + Default + Send + 'static,
{
    type Output = HashMap<K, T::Output, S>;

    fn start(self, at: &InputContext) -> BoxFuture<'static, Result<Self::Output, MetaError>> {
        let (keys, parts): (Vec<K>, Vec<_>) = self
            .into_iter()
            .map(|(k, part)| {
                let started = part.start(&at.key(&k));
                (k, started)
            })
            .unzip();
        join_all(parts)
            .map(|done| {
                keys.into_iter()
                    .zip(done)
                    .map(|(k, v)| Ok((k, v?)))
                    .collect()
            })
            .boxed()
    }
}

impl<K, T> Inputs for BTreeMap<K, T>
where
    K: Ord + Debug + Send + 'static,
    T: Inputs,
{
    type Output = BTreeMap<K, T::Output>;

    fn start(self, at: &InputContext) -> BoxFuture<'static, Result<Self::Output, MetaError>> {
        let (keys, parts): (Vec<K>, Vec<_>) = self
            .into_iter()
            .map(|(k, part)| {
                let started = part.start(&at.key(&k));
                (k, started)
            })
            .unzip();
        join_all(parts)
            .map(|done| {
                keys.into_iter()
                    .zip(done)
                    .map(|(k, v)| Ok((k, v?)))
                    .collect()
            })
            .boxed()
    }
}

macro_rules! tuple_inputs {
    ($($t:ident $v:ident $idx:tt),+) => {
        impl<$($t: Inputs),+> Inputs for ($($t,)+) {
            type Output = ($($t::Output,)+);

            fn start(self, at: &InputContext) -> BoxFuture<'static, Result<Self::Output, MetaError>> {
                $(let $v = self.$idx.start(&at.field(stringify!($idx)));)+
                async move {
                    let ($($v,)+) = futures::join!($($v),+);
                    Ok(($($v?,)+))
                }
                .boxed()
            }
        }
    };
}

tuple_inputs!(A a 0);
tuple_inputs!(A a 0, B b 1);
tuple_inputs!(A a 0, B b 1, C c 2);
tuple_inputs!(A a 0, B b 1, C c 2, D d 3);
tuple_inputs!(A a 0, B b 1, C c 2, D d 3, E e 4);
tuple_inputs!(A a 0, B b 1, C c 2, D d 3, E e 4, F f 5);
tuple_inputs!(A a 0, B b 1, C c 2, D d 3, E e 4, F f 5, G g 6);
tuple_inputs!(A a 0, B b 1, C c 2, D d 3, E e 4, F f 5, G g 6, H h 7);
