//! Many tasks at once: [`Pool::map`] and its ordered and blocking twins, a bounded window
//! of submitted tasks over an iterator of [`Task`]s, built on the public
//! `Pool::enqueue` / [`TaskHandle`] API.
//!
//! At most `in_flight` tasks are submitted and unfinished at a time; the next one is taken
//! from the iterator when a result is taken from the stream (as `futures`'
//! `buffer_unordered` does), so a long or endless iterator is never drained into the
//! queue. Every submitted task is held by a [`CancelOnDropHandle`]: dropping the stream
//! cancels what has not finished, and the tasks not taken yet are never submitted.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::{FuturesOrdered, FuturesUnordered, Stream, StreamExt};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::errors::TaskError;
use crate::guard::CancelOnDropHandle;
use crate::host;
use crate::pool::Pool;
use crate::task::{Task, TaskHandle};

/// One result of a batch: the task's id and its outcome.
pub type MapItem<R> = (Uuid, Result<R, TaskError>);

impl Pool {
    /// Runs `tasks` on the pool and yields each result as its task ends (completion
    /// order), with the task's id. At most [`in_flight`](MapStream::in_flight) tasks are
    /// submitted at a time (twice the pool size unless set); with a bounded queue the
    /// submission waits for room ([`enqueue`](Self::enqueue)). Dropping the stream cancels
    /// every submitted task that has not finished; the tasks not yet taken from the
    /// iterator never run.
    ///
    /// ```no_run
    /// # async fn demo(pool: procpool_core::Pool) {
    /// use futures::StreamExt;
    /// use procpool_core::Task;
    /// let tasks = (0..100).map(|i| Task::json("square", serde_json::json!([i])));
    /// let mut results = pool.map(tasks).in_flight(8);
    /// while let Some((id, result)) = results.next().await {
    ///     println!("{id}: {result:?}");
    /// }
    /// # }
    /// ```
    pub fn map<R, I>(&self, tasks: I) -> MapStream<R>
    where
        R: DeserializeOwned + 'static,
        I: IntoIterator<Item = Task<R>>,
        I::IntoIter: Send + 'static,
    {
        MapStream::new(self, Box::new(tasks.into_iter()), Window::completion())
    }

    /// [`map`](Self::map) yielding the results in the order of `tasks`: a result that is
    /// ready early waits for the earlier ones, and keeps its place in the in-flight
    /// window meanwhile.
    pub fn map_ordered<R, I>(&self, tasks: I) -> MapStream<R>
    where
        R: DeserializeOwned + 'static,
        I: IntoIterator<Item = Task<R>>,
        I::IntoIter: Send + 'static,
    {
        MapStream::new(self, Box::new(tasks.into_iter()), Window::input())
    }

    /// The blocking twin of [`map`](Self::map): an iterator, for a plain `main`. For a
    /// pool started with [`start`](crate::PoolBuilder::start), not on its runtime's
    /// threads (see its caveats).
    pub fn map_blocking<R, I>(&self, tasks: I) -> MapIter<R>
    where
        R: DeserializeOwned + 'static,
        I: IntoIterator<Item = Task<R>>,
        I::IntoIter: Send + 'static,
    {
        self.map(tasks).into_blocking()
    }

    /// The blocking twin of [`map_ordered`](Self::map_ordered).
    pub fn map_ordered_blocking<R, I>(&self, tasks: I) -> MapIter<R>
    where
        R: DeserializeOwned + 'static,
        I: IntoIterator<Item = Task<R>>,
        I::IntoIter: Send + 'static,
    {
        self.map_ordered(tasks).into_blocking()
    }
}

/// A submitted task of a batch, resolving to its id and outcome.
struct Running<R> {
    id: Uuid,
    handle: CancelOnDropHandle<R>,
}

impl<R: DeserializeOwned> Future for Running<R> {
    type Output = MapItem<R>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<MapItem<R>> {
        let id = self.id;
        Pin::new(&mut self.handle).poll(cx).map(|out| (id, out))
    }
}

impl<R> Unpin for Running<R> {}

/// The submitted, unfinished tasks, in the order results leave.
enum Window<R: DeserializeOwned> {
    /// Whichever ends first.
    Completion(FuturesUnordered<Running<R>>),
    /// The order of the input.
    Input(FuturesOrdered<Running<R>>),
}

impl<R: DeserializeOwned> Window<R> {
    fn completion() -> Self {
        Window::Completion(FuturesUnordered::new())
    }

    fn input() -> Self {
        Window::Input(FuturesOrdered::new())
    }

    fn len(&self) -> usize {
        match self {
            Window::Completion(w) => w.len(),
            Window::Input(w) => w.len(),
        }
    }

    fn push(&mut self, running: Running<R>) {
        match self {
            Window::Completion(w) => w.push(running),
            Window::Input(w) => w.push_back(running),
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<MapItem<R>>> {
        match self {
            Window::Completion(w) => w.poll_next_unpin(cx),
            Window::Input(w) => w.poll_next_unpin(cx),
        }
    }
}

type Enqueuing<R> = Pin<Box<dyn Future<Output = TaskHandle<R>> + Send>>;

/// The results of [`Pool::map`] or [`Pool::map_ordered`]: a [`Stream`] of
/// `(task id, result)`. Dropping it cancels every submitted task that has not finished.
#[must_use = "streams do nothing unless polled"]
pub struct MapStream<R: DeserializeOwned> {
    pool: Pool,
    tasks: Box<dyn Iterator<Item = Task<R>> + Send>,
    /// The iterator returned `None`.
    exhausted: bool,
    in_flight: usize,
    /// The next task, waiting for room in a bounded queue.
    enqueuing: Option<Enqueuing<R>>,
    window: Window<R>,
}

impl<R: DeserializeOwned> std::fmt::Debug for MapStream<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapStream")
            .field("in_flight", &self.in_flight)
            .field("exhausted", &self.exhausted)
            .finish_non_exhaustive()
    }
}

impl<R: DeserializeOwned + 'static> MapStream<R> {
    fn new(
        pool: &Pool,
        tasks: Box<dyn Iterator<Item = Task<R>> + Send>,
        window: Window<R>,
    ) -> Self {
        MapStream {
            pool: pool.clone(),
            tasks,
            exhausted: false,
            in_flight: pool.size().saturating_mul(2).max(1),
            enqueuing: None,
            window,
        }
    }

    /// Most tasks submitted and unfinished at once (at least 1). Set it before the first
    /// poll; it applies from the next submission on.
    pub fn in_flight(mut self, n: usize) -> Self {
        self.in_flight = n.max(1);
        self
    }

    /// The blocking twin: an [`Iterator`] over the same results.
    pub fn into_blocking(self) -> MapIter<R> {
        MapIter { stream: self }
    }

    /// Submits tasks until the window is full, the iterator is exhausted or a bounded
    /// queue has no room (then the waker is registered with the pending enqueue).
    fn fill(&mut self, cx: &mut Context<'_>) {
        while self.window.len() < self.in_flight {
            let enqueuing = match &mut self.enqueuing {
                Some(enqueuing) => enqueuing,
                None => {
                    let Some(task) = self.tasks.next() else {
                        self.exhausted = true;
                        return;
                    };
                    let pool = self.pool.clone();
                    #[expect(
                        clippy::async_yields_async,
                        reason = "the handle is what is wanted here; the window awaits it"
                    )]
                    let enqueue = async move { pool.enqueue(task).await };
                    self.enqueuing.insert(Box::pin(enqueue))
                }
            };
            match enqueuing.as_mut().poll(cx) {
                Poll::Ready(handle) => {
                    self.enqueuing = None;
                    let id = handle.id();
                    self.window.push(Running {
                        id,
                        handle: handle.cancel_on_drop(),
                    });
                }
                Poll::Pending => return,
            }
        }
    }
}

impl<R: DeserializeOwned + 'static> Stream for MapStream<R> {
    type Item = MapItem<R>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MapItem<R>>> {
        let this = &mut *self;
        if !this.exhausted {
            this.fill(cx);
        }
        match this.window.poll_next(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(item)),
            // An empty window: the end, unless a task still waits for queue room (its
            // enqueue holds the waker).
            Poll::Ready(None) if this.exhausted && this.enqueuing.is_none() => Poll::Ready(None),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (low, high) = self.tasks.size_hint();
        let held = self.window.len() + usize::from(self.enqueuing.is_some());
        (low + held, high.map(|h| h + held))
    }
}

impl<R: DeserializeOwned> Unpin for MapStream<R> {}

/// The blocking twin of [`MapStream`], from [`Pool::map_blocking`],
/// [`Pool::map_ordered_blocking`] or [`MapStream::into_blocking`]: each `next` blocks
/// until the next result. Dropping it cancels every submitted task that has not finished.
#[must_use = "iterators do nothing unless consumed"]
#[derive(Debug)]
pub struct MapIter<R: DeserializeOwned> {
    stream: MapStream<R>,
}

impl<R: DeserializeOwned + 'static> MapIter<R> {
    /// Most tasks submitted and unfinished at once; see [`MapStream::in_flight`].
    pub fn in_flight(self, n: usize) -> Self {
        MapIter {
            stream: self.stream.in_flight(n),
        }
    }
}

impl<R: DeserializeOwned + 'static> Iterator for MapIter<R> {
    type Item = MapItem<R>;

    fn next(&mut self) -> Option<MapItem<R>> {
        let runtime = self.stream.pool.runtime();
        host::block_on(runtime, self.stream.next())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.stream.size_hint()
    }
}
