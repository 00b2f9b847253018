//! The submitter side: a [`Pool`] whose tasks go through a [`Broker`] to the agents.
//!
//! One task of the runtime applies submits, cancels and messages in order (consecutive
//! submits together, pipelined), and every second sends again the cancels that could
//! not reach the broker (their handles ended at once); another waits on the client's
//! inbox, where the broker announces each event of a task the client watches, reads the
//! event streams of just those tasks and feeds each handle: started, progress, messages,
//! then the terminal event. Every second it also reads every watched stream (so a lost
//! announcement costs at most a second), then checks that the broker still knows each
//! task (one it forgot, its result TTL passed unread or the broker restarted without
//! persistence, ends `lost`), and refreshes what the live agents serve (the pool's
//! `tasks` and `size`; a task submitted while no agent was up is refused `unknown_task`
//! once agents are up and none serves it).
//!
//! Submitters of the same task id (a dedupe id, or a task manager's cache key) share its
//! run: the broker keeps the inboxes watching it, and a cancel only lets go while others
//! still watch.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use procpool_core::{
    Pool, PoolStatus, RemoteBackend, RemoteSubmission, Served, Shutdown, TaskError, TaskInfo,
};
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use crate::broker::{AgentInfo, Broker, Cancelled, NewTask};
use crate::errors::BrokerError;
use crate::wire::Event;

/// Settings of a broker-backed pool.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Namespace: the queue and keys it shares with its agents.
    pub namespace: String,
    /// Attempts lost with their agent before a task fails `lost`.
    pub lost_budget: u32,
    /// How long the broker keeps a result and the events after the end.
    pub result_ttl: Duration,
    /// Largest value read from the broker.
    pub max_frame: usize,
    /// Deadline per attempt of a task that sets none; `None`: the agent's.
    pub timeout: Option<Duration>,
    /// Crash-class retries of a task that sets none; `None`: the agent's.
    pub retries: Option<u32>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            namespace: "procpool".into(),
            lost_budget: 3,
            result_ttl: Duration::from_secs(3600),
            max_frame: procpool_proto::DEFAULT_MAX_FRAME,
            timeout: None,
            retries: None,
        }
    }
}

/// Connects to a Redis broker and returns a pool whose tasks its agents run. Fails
/// within a few seconds when the broker cannot be reached.
pub async fn connect(url: &str, options: ClientOptions) -> Result<Pool, BrokerError> {
    let broker =
        crate::redis::RedisBroker::connect(url, &options.namespace, options.max_frame).await?;
    pool_on(Arc::new(broker), options).await
}

/// A pool on any [`Broker`]. Its [`Pool::tasks`] and [`Pool::size`] are those of the
/// agents alive now, refreshed about every second; tasks submitted while no agent is
/// alive wait for one.
pub async fn pool_on<B: Broker>(
    broker: Arc<B>,
    options: ClientOptions,
) -> Result<Pool, BrokerError> {
    let agents = broker.agents().await?;
    let (served, served_rx) = tokio::sync::watch::channel(summary(&agents));
    let shared = Arc::new(Shared {
        broker,
        options,
        inbox: Uuid::new_v4().to_string(),
        state: Mutex::new(State {
            agents,
            ..State::default()
        }),
        served,
        changed: Notify::new(),
    });
    let (ops, rx) = mpsc::unbounded_channel();
    tokio::spawn(apply_ops(shared.clone(), rx));
    tokio::spawn(watch(shared.clone()));
    let client = Arc::new(Client { shared, ops });
    Pool::from_backend(client, served_rx).map_err(|e| BrokerError::Agent(e.to_string()))
}

/// The union of the agents' tasks, and their workers in total.
fn summary(agents: &[AgentInfo]) -> Served {
    let mut tasks: Vec<TaskInfo> = Vec::new();
    for t in agents.iter().flat_map(|a| &a.tasks) {
        if !tasks.iter().any(|k| k.name == t.name) {
            tasks.push(t.clone());
        }
    }
    Served {
        tasks: tasks.into(),
        workers: agents.iter().map(|a| a.workers).sum(),
    }
}

enum Op {
    Submit(RemoteSubmission),
    Cancel(Uuid),
    Message(Uuid, Vec<u8>),
    CancelAll,
}

struct Shared<B> {
    broker: Arc<B>,
    options: ClientOptions,
    /// This client's inbox, where the broker announces its tasks' events.
    inbox: String,
    state: Mutex<State>,
    /// What the live agents serve, for the pool's `tasks` and `size`.
    served: tokio::sync::watch::Sender<Served>,
    /// Notified whenever a task ends (shutdown waits on it).
    changed: Notify,
}

#[derive(Default)]
struct State {
    tasks: HashMap<Uuid, Watched>,
    agents: Vec<AgentInfo>,
    /// Cancels that could not reach the broker: their handles ended, and each is sent
    /// once the broker answers again (the script is idempotent), so the run stops then.
    unsent_cancels: HashSet<Uuid>,
    /// The last client handle is gone: end every watch.
    closed: bool,
}

struct Watched {
    cursor: String,
    subs: Vec<RemoteSubmission>,
    /// The submit went through (until then the broker may not know the task yet).
    submitted: bool,
    started: bool,
    /// Submitted while no agent was up: its name, still to be matched against what the
    /// agents serve once one is.
    unchecked: Option<String>,
}

impl<B> Shared<B> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves every handle of a task and stops watching it.
    fn end(&self, id: Uuid, outcome: Result<bytes::Bytes, TaskError>) {
        let watched = self.lock().tasks.remove(&id);
        if let Some(w) = watched {
            for sub in w.subs {
                sub.finish(outcome.clone());
            }
        }
        self.changed.notify_waiters();
    }
}

struct Client<B> {
    shared: Arc<Shared<B>>,
    ops: mpsc::UnboundedSender<Op>,
}

impl<B> Drop for Client<B> {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_waiters();
    }
}

impl<B: Broker> RemoteBackend for Client<B> {
    fn submit(&self, task: RemoteSubmission) {
        if let Err(mpsc::error::SendError(Op::Submit(task))) = self.ops.send(Op::Submit(task)) {
            task.finish(Err(TaskError::PoolClosed));
        }
    }

    fn cancel(&self, id: Uuid) {
        let _ = self.ops.send(Op::Cancel(id));
    }

    fn message(&self, id: Uuid, bytes: Vec<u8>) {
        let _ = self.ops.send(Op::Message(id, bytes));
    }

    fn status(&self) -> BoxFuture<'static, PoolStatus> {
        let state = self.shared.lock();
        let mut status = PoolStatus::default();
        status.busy = state.tasks.values().filter(|w| w.started).count();
        status.queued = state.tasks.len() - status.busy;
        let workers: usize = state.agents.iter().map(|a| a.workers).sum();
        status.idle = workers.saturating_sub(status.busy);
        if state.agents.is_empty() {
            status.unhealthy = Some("no agent is connected to the broker".into());
        }
        futures::future::ready(status).boxed()
    }

    fn shutdown(&self, mode: Shutdown) -> BoxFuture<'static, ()> {
        if mode == Shutdown::Kill {
            let _ = self.ops.send(Op::CancelAll);
        }
        let shared = self.shared.clone();
        async move {
            loop {
                let changed = shared.changed.notified();
                if shared.lock().tasks.is_empty() {
                    return;
                }
                changed.await;
            }
        }
        .boxed()
    }
}

/// Submits applied concurrently at most: their commands go out in order on one
/// connection, so a cancel or message made after a submit still follows it.
const SUBMIT_BATCH: usize = 256;

/// How often cancels that could not reach the broker are tried again.
const RESEND_CANCELS_EVERY: Duration = Duration::from_secs(1);

/// Applies submits, cancels and messages in the order they were made, and sends again
/// the cancels that could not reach the broker.
async fn apply_ops<B: Broker>(shared: Arc<Shared<B>>, mut rx: mpsc::UnboundedReceiver<Op>) {
    let mut next = None;
    let mut resent = Instant::now();
    loop {
        // Between ops too, so a steady stream of submits does not hold them back.
        if resent.elapsed() >= RESEND_CANCELS_EVERY {
            resend_cancels(&shared).await;
            resent = Instant::now();
        }
        let op = match next.take() {
            Some(op) => op,
            None => match tokio::time::timeout(RESEND_CANCELS_EVERY, rx.recv()).await {
                Ok(Some(op)) => op,
                Ok(None) => return,
                Err(_) => continue,
            },
        };
        match op {
            Op::Submit(sub) => {
                let mut batch = vec![sub];
                while batch.len() < SUBMIT_BATCH {
                    match rx.try_recv() {
                        Ok(Op::Submit(sub)) => batch.push(sub),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                futures::future::join_all(batch.into_iter().map(|sub| submit(&shared, sub))).await;
            }
            Op::Cancel(id) => cancel(&shared, id).await,
            Op::Message(id, bytes) => {
                if let Err(e) = shared.broker.send_message(id, bytes).await {
                    tracing::warn!(task = %id, error = %e, "message to a task failed");
                }
            }
            Op::CancelAll => {
                let ids: Vec<Uuid> = shared.lock().tasks.keys().copied().collect();
                for id in ids {
                    cancel(&shared, id).await;
                }
            }
        }
    }
}

/// Lets go of a task: it is cancelled on the broker, or, while other submitters still
/// watch it, it runs on for them and only this submitter's handles end `cancelled`.
async fn cancel<B: Broker>(shared: &Shared<B>, id: Uuid) {
    match shared.broker.cancel(id, &shared.inbox).await {
        Ok(Cancelled::LetGo) => shared.end(id, Err(TaskError::Cancelled)),
        // The terminal event follows (or the known-check's `lost`).
        Ok(Cancelled::Cancelled | Cancelled::NotLive) => {}
        Err(e) => {
            // The handle ends here all the same: a cancel (or a shutdown) never waits on
            // an unreachable broker. The cancel is kept and sent once the broker answers.
            tracing::warn!(task = %id, error = %e, "cancel could not reach the broker; the task is given up here and the cancel sent when the broker is back");
            shared.lock().unsent_cancels.insert(id);
            shared.end(id, Err(TaskError::Cancelled));
        }
    }
}

/// Sends the cancels that could not reach the broker, until one fails again.
async fn resend_cancels<B: Broker>(shared: &Shared<B>) {
    let ids: Vec<Uuid> = {
        let state = shared.lock();
        if state.unsent_cancels.is_empty() {
            return;
        }
        state.unsent_cancels.iter().copied().collect()
    };
    for id in ids {
        match shared.broker.cancel(id, &shared.inbox).await {
            Ok(_) => {
                tracing::info!(task = %id, "a cancel made while the broker was away reached it");
                shared.lock().unsent_cancels.remove(&id);
            }
            Err(_) => return,
        }
    }
}

/// Why the live `agents` cannot run a task named `name`; `None` when they can, or when
/// no agent is up (the task waits for one).
fn refusal(agents: &[AgentInfo], name: &str) -> Option<TaskError> {
    if agents.is_empty() {
        None
    } else if !agents
        .iter()
        .any(|a| a.protocol == procpool_proto::PROTOCOL_VERSION)
    {
        Some(TaskError::Protocol {
            message: format!(
                "no live agent speaks protocol version {} (theirs: {:?})",
                procpool_proto::PROTOCOL_VERSION,
                agents.iter().map(|a| a.protocol).collect::<Vec<_>>()
            ),
        })
    } else if !agents.iter().flat_map(|a| &a.tasks).any(|t| t.name == name) {
        Some(TaskError::UnknownTask {
            name: name.to_owned(),
        })
    } else {
        None
    }
}

/// Refuses what no live agent can run, then queues the task and starts watching it.
/// A task goes only to an agent that serves it: one whose agents all left waits in the
/// queue for the next.
async fn submit<B: Broker>(shared: &Shared<B>, sub: RemoteSubmission) {
    let id = sub.id();
    let unchecked = {
        let mut state = shared.lock();
        // Submitted again: a cancel of an earlier run not sent yet would stop this one.
        state.unsent_cancels.remove(&id);
        if let Some(e) = refusal(&state.agents, sub.name()) {
            drop(state);
            sub.finish(Err(e));
            return;
        }
        state.agents.is_empty().then(|| sub.name().to_owned())
    };
    // Watched before the submit, so its first announced event finds it.
    {
        let mut state = shared.lock();
        if let Some(w) = state.tasks.get_mut(&id) {
            w.subs.push(sub);
            return;
        }
        state.tasks.insert(
            id,
            Watched {
                cursor: "0-0".into(),
                subs: Vec::new(),
                submitted: false,
                started: false,
                unchecked,
            },
        );
    }
    let new = NewTask {
        id,
        name: sub.name(),
        args: sub.args(),
        encoding: sub.encoding(),
        timeout: sub.timeout().or(shared.options.timeout),
        retries: sub.max_retries().or(shared.options.retries),
        lost_budget: shared.options.lost_budget,
        result_ttl: shared.options.result_ttl,
    };
    // Retried while the broker is briefly away: the script is idempotent.
    let mut delay = Duration::from_millis(100);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match shared.broker.submit(&new, &shared.inbox).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(task = %id, error = %e, "submit failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                let message = format!("could not queue it on {}: {e}", shared.broker.url());
                sub.finish(Err(TaskError::Lost { message }));
                shared.end(id, Err(TaskError::PoolClosed));
                return;
            }
        }
    }
    let mut state = shared.lock();
    if let Some(w) = state.tasks.get_mut(&id) {
        w.subs.insert(0, sub);
        w.submitted = true;
    }
}

/// Events read per task and call; a task with more is read again at once.
const EVENTS_PER_READ: usize = 256;
/// Streams named in one read.
const STREAMS_PER_READ: usize = 1024;

/// Reads the events of the watched tasks the inbox names (every watched task once a
/// second) and feeds their handles, until the client is gone.
async fn watch<B: Broker>(shared: Arc<Shared<B>>) {
    let mut inbox_cursor = "0-0".to_owned();
    let mut last_sweep = Instant::now();
    let mut failing_since: Option<Instant> = None;
    // Tasks to read now: announced, or read short of all their events.
    let mut due: HashSet<Uuid> = HashSet::new();
    loop {
        if shared.lock().closed {
            break;
        }
        let sweep = last_sweep.elapsed() >= Duration::from_secs(1);
        if sweep {
            last_sweep = Instant::now();
            due.extend(shared.lock().tasks.keys().copied());
        }
        let block = due.is_empty().then_some(Duration::from_secs(1));
        let read = async {
            let announced = shared
                .broker
                .read_notices(&shared.inbox, &mut inbox_cursor, block)
                .await?;
            due.extend(announced);
            let mut cursors: Vec<(Uuid, String)> = Vec::new();
            {
                let state = shared.lock();
                // A task whose submit has not returned yet has no handle to feed (an
                // attach is announced by the submit itself): it stays due until then.
                due.retain(|id| match state.tasks.get(id) {
                    Some(w) if !w.submitted => true,
                    Some(w) => {
                        cursors.push((*id, w.cursor.clone()));
                        false
                    }
                    None => false,
                });
            }
            let mut ended = Vec::new();
            for chunk in cursors.chunks(STREAMS_PER_READ) {
                let events = match shared.broker.read_events(chunk, EVENTS_PER_READ).await {
                    Ok(events) => events,
                    Err(e) => {
                        // Read again once the broker answers.
                        due.extend(chunk.iter().map(|(id, _)| *id));
                        return Err(e);
                    }
                };
                let mut per_task: HashMap<Uuid, usize> = HashMap::new();
                for ev in events {
                    *per_task.entry(ev.task).or_default() += 1;
                    if apply_event(&shared, ev.task, ev.cursor, ev.event) {
                        ended.push(ev.task);
                    }
                }
                due.extend(
                    per_task
                        .into_iter()
                        .filter(|(_, n)| *n >= EVENTS_PER_READ)
                        .map(|(id, _)| id),
                );
            }
            // Taken once: the stored copies go now that the outcomes are ours.
            let _ = shared.broker.take_results(&ended).await;
            Ok::<(), BrokerError>(())
        };
        match read.await {
            Ok(()) => {
                failing_since = None;
                // Only right after a read of every watched task: a task that ended
                // meanwhile had its end read, so one the broker no longer knows is lost.
                if sweep {
                    check_known(&shared).await;
                }
            }
            Err(e) => {
                if failing_since.is_none() {
                    tracing::warn!(broker = shared.broker.url(), error = %e, "reading task events failed; retrying");
                    failing_since = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    // The client is gone: nobody waits for what is left.
    let left: Vec<Uuid> = shared.lock().tasks.keys().copied().collect();
    for id in left {
        shared.end(id, Err(TaskError::PoolClosed));
    }
}

/// Feeds one event to the task's handles; true when it was the terminal one.
fn apply_event<B: Broker>(
    shared: &Shared<B>,
    id: Uuid,
    cursor: String,
    event: Result<Event, String>,
) -> bool {
    let done = {
        let mut state = shared.lock();
        let Some(w) = state.tasks.get_mut(&id) else {
            return false;
        };
        w.cursor = cursor;
        match event {
            Ok(Event::Started { pid, .. }) => {
                w.started = true;
                for s in &w.subs {
                    s.started(pid);
                }
                None
            }
            Ok(Event::Progress { fraction, message }) => {
                for s in &w.subs {
                    s.progress(fraction, message.clone());
                }
                None
            }
            Ok(Event::Message(bytes)) => {
                // A handle whose reader lags past the pool's bound ends `limit_exceeded`
                // (its inbox stays bounded); the agent's run is left to end on its own.
                w.subs
                    .iter()
                    .map(|s| s.message(bytes.clone()))
                    .find_map(Result::err)
                    .map(Err)
            }
            Ok(Event::Requeued { attempt }) => {
                tracing::info!(task = %id, attempt, "its agent died; the task is queued again");
                w.started = false;
                None
            }
            Ok(Event::Queued) => None,
            Ok(Event::Done { outcome, .. }) => Some(outcome),
            Err(message) => Some(Err(TaskError::Protocol { message })),
        }
    };
    match done {
        Some(outcome) => {
            shared.end(id, outcome);
            true
        }
        None => false,
    }
}

/// The tasks submitted while no agent was up that the agents up now cannot run (their
/// names are matched once there are agents).
fn refuse_unchecked(state: &mut State) -> Vec<(Uuid, TaskError)> {
    if state.agents.is_empty() {
        return Vec::new();
    }
    let mut refused = Vec::new();
    for (id, w) in &mut state.tasks {
        if !w.submitted {
            continue;
        }
        if let Some(name) = w.unchecked.take()
            && let Some(e) = refusal(&state.agents, &name)
        {
            refused.push((*id, e));
        }
    }
    refused
}

/// Cancels a refused task on the broker (later, when the broker is away).
async fn cancel_refused<B: Broker>(shared: &Shared<B>, id: Uuid) {
    if shared.broker.cancel(id, &shared.inbox).await.is_err() {
        shared.lock().unsent_cancels.insert(id);
    }
}

/// Ends `lost` the tasks the broker no longer knows, refreshes the live agents, and
/// refuses what was submitted before any agent was up and the agents now up cannot run.
async fn check_known<B: Broker>(shared: &Shared<B>) {
    let ids: Vec<Uuid> = shared
        .lock()
        .tasks
        .iter()
        .filter(|(_, w)| w.submitted)
        .map(|(id, _)| *id)
        .collect();
    if !ids.is_empty()
        && let Ok(known) = shared.broker.known(&ids).await
    {
        for (id, known) in ids.into_iter().zip(known) {
            if !known {
                shared.end(
                    id,
                    Err(TaskError::Lost {
                        message: format!(
                            "the broker at {} no longer knows the task (its result TTL passed \
                             before it was read, or the broker lost its data)",
                            shared.broker.url()
                        ),
                    }),
                );
            }
        }
    }
    if let Ok(agents) = shared.broker.agents().await {
        let now = summary(&agents);
        let refused = {
            let mut state = shared.lock();
            state.agents = agents;
            refuse_unchecked(&mut state)
        };
        for (id, e) in refused {
            // Out of its queue, where no agent would ever take it.
            cancel_refused(shared, id).await;
            shared.end(id, Err(e));
        }
        shared.served.send_if_modified(|served| {
            let changed = served.workers != now.workers || served.tasks != now.tasks;
            if changed {
                *served = now;
            }
            changed
        });
    }
}
