//! The agent: an ordinary local [`Pool`] fed from the broker's queues.
//!
//! It reads only the queues of the tasks its workers serve (one per task name), only as
//! many entries as it has free worker slots, claims each with a fenced
//! `start`, runs it on the pool and writes events and the outcome back under the same
//! attempt. Its lease is renewed by a task of its own (never by task code): a renewal
//! that reports a lease lost kills that task's worker, and when no renewal went through
//! for most of the lease the agent kills every running worker itself, before the lease
//! could be handed to another agent, and stops renewing those tasks. Its reaper requeues
//! dead agents' entries and every entry whose lease ran out (whoever held it), and it
//! follows cancel flags and messages.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use procpool_core::{Pool, Task, TaskError, TaskWatch};
use tokio::sync::{Notify, Semaphore, mpsc};
use uuid::Uuid;

use crate::broker::{AgentInfo, Broker, Claimed, Lease};
use crate::errors::BrokerError;
use crate::wire::Event;

/// Agent settings.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The lease: how long after its last renewal an agent counts as dead, and a task
    /// whose lease was not renewed is handed to another agent (within about the lease
    /// plus a reaper period). At least two renewal periods ([`check`](Self::check)).
    pub lease: Duration,
    /// Renewal period.
    pub renew_every: Duration,
    /// Reaper period (jittered).
    pub reap_every: Duration,
    /// Tasks claimed beyond the free worker slots, queued on the agent so a worker
    /// never waits for the broker between two tasks. 0: claim only for a free slot
    /// (a long task never holds another one back from an idle agent).
    pub prefetch: usize,
    /// What a task's own retry count (from its submitter) retries: this policy's kinds,
    /// with the task's count in place of its own. By default every crash-class kind.
    pub retry: procpool_core::RetryPolicy,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            lease: Duration::from_secs(3),
            renew_every: Duration::from_secs(1),
            reap_every: Duration::from_millis(500),
            prefetch: 0,
            retry: procpool_core::RetryPolicy::NEVER,
        }
    }
}

impl AgentOptions {
    /// Refuses settings under which a healthy agent could lose its leases: a lease must
    /// outlast two renewal periods, so that one late renewal is not a lost lease.
    pub fn check(&self) -> Result<(), BrokerError> {
        if self.renew_every.is_zero() || self.lease < self.renew_every * 2 {
            return Err(BrokerError::Config(format!(
                "the lease ({:?}) must be at least two lease renewals ({:?} each) long",
                self.lease, self.renew_every
            )));
        }
        Ok(())
    }
}

/// What the agent does with its running tasks when it is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Finish them, take no new ones.
    Drain,
    /// Kill their workers and hand the tasks back to the queue for another agent.
    Cancel,
}

enum Ctl {
    /// The submitter cancelled: kill the worker, report `cancelled`.
    Cancel,
    /// The lease is lost: kill the worker, write nothing.
    Abandon,
    /// The agent stops: kill the worker, hand the task back.
    Release,
    Message(Vec<u8>),
}

struct Running {
    lease: Lease,
    /// The task's name, for [`AgentTasks::list`].
    name: String,
    /// Where it runs on the local pool, once submitted there.
    watch: Option<TaskWatch>,
    ctl: mpsc::UnboundedSender<Ctl>,
    /// Its worker is being killed because the lease could not be vouched for: it is no
    /// longer renewed, so the broker hands the task on once the lease runs out.
    abandoned: bool,
}

struct Agent<B> {
    broker: Arc<B>,
    pool: Pool,
    info: AgentInfo,
    /// The names of the tasks it serves: the queues it reads.
    names: Vec<String>,
    options: AgentOptions,
    running: Mutex<HashMap<Uuid, Running>>,
    /// Notified whenever a running task ends.
    ended: Notify,
}

impl<B> Agent<B> {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tell(&self, id: Uuid, ctl: Ctl) {
        if let Some(r) = self.running().get(&id) {
            let _ = r.ctl.send(ctl);
        }
    }

    /// Kills the worker of a lease this agent can no longer vouch for, and stops renewing
    /// it.
    fn abandon(&self, id: Uuid) {
        if let Some(r) = self.running().get_mut(&id) {
            r.abandoned = true;
            let _ = r.ctl.send(Ctl::Abandon);
        }
    }
}

/// The tasks an agent runs, for an operator on its host (`procpool ctl` on `procpool
/// agent`): listed, and cancelled for good. Give a clone to [`run_agent`]; it is empty
/// before the agent starts and after it returned. Cheap to clone.
#[derive(Clone, Default)]
pub struct AgentTasks {
    agent: Arc<Mutex<Option<Arc<dyn Operate>>>>,
}

/// A task an agent runs, as [`AgentTasks::list`] gives it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AgentTask {
    /// Task id.
    pub id: Uuid,
    /// Function name.
    pub name: String,
    /// The broker's attempt number (1 for the first agent to run it).
    pub attempt: u32,
    /// The local worker running it now (after a local retry, the retry's); `None` until
    /// one starts it.
    pub worker_pid: Option<u32>,
    /// Time on that worker so far.
    pub elapsed: Option<Duration>,
}

/// The agent behind [`AgentTasks`], without its broker type.
trait Operate: Send + Sync {
    fn list(&self) -> Vec<AgentTask>;
    fn cancel(&self, id: Uuid) -> futures::future::BoxFuture<'_, Result<bool, BrokerError>>;
}

impl AgentTasks {
    /// The tasks the agent runs now, longest running first.
    pub fn list(&self) -> Vec<AgentTask> {
        self.agent().map(|a| a.list()).unwrap_or_default()
    }

    /// Cancels a task this agent runs, for good: the broker's durable cancel flag is set
    /// (no other agent will run it, whoever else watches it), the worker is killed, and
    /// its submitters see `cancelled`. `false` when this agent runs no task `id`.
    pub async fn cancel(&self, id: Uuid) -> Result<bool, BrokerError> {
        match self.agent() {
            Some(agent) => agent.cancel(id).await,
            None => Ok(false),
        }
    }

    fn agent(&self) -> Option<Arc<dyn Operate>> {
        self.agent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn attach(&self, agent: Option<Arc<dyn Operate>>) {
        *self.agent.lock().unwrap_or_else(|p| p.into_inner()) = agent;
    }
}

impl std::fmt::Debug for AgentTasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTasks")
            .field("running", &self.agent().is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Broker> Operate for Agent<B> {
    fn list(&self) -> Vec<AgentTask> {
        let now = std::time::Instant::now();
        let mut tasks: Vec<AgentTask> = self
            .running()
            .values()
            .map(|r| {
                let watch = r.watch.as_ref();
                AgentTask {
                    id: r.lease.id,
                    name: r.name.clone(),
                    attempt: r.lease.attempt,
                    worker_pid: watch.and_then(TaskWatch::worker_pid),
                    elapsed: watch
                        .and_then(TaskWatch::attempt_started)
                        .map(|t| now.saturating_duration_since(t)),
                }
            })
            .collect();
        tasks.sort_by(|a, b| b.elapsed.cmp(&a.elapsed).then(a.id.cmp(&b.id)));
        tasks
    }

    fn cancel(&self, id: Uuid) -> futures::future::BoxFuture<'_, Result<bool, BrokerError>> {
        Box::pin(async move {
            if !self.running().contains_key(&id) {
                return Ok(false);
            }
            // The flag first: should the worker's kill or the outcome's write not go
            // through (lease lost, broker away), no agent runs the task again.
            self.broker.cancel_for_all(id).await?;
            tracing::info!(task = %id, "cancelled by an operator");
            self.tell(id, Ctl::Cancel);
            Ok(true)
        })
    }
}

/// A unique agent id: `host-pid-uuid`, never reused.
fn agent_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!("{host}-{}-{}", std::process::id(), Uuid::new_v4().simple())
}

/// Runs an agent on `pool` until `stop` resolves, then drains or hands back its tasks
/// (per the [`StopMode`]) and leaves the broker; `force` resolving during a drain hands
/// the rest back at once. Returns the agent id it used. While the broker is unreachable
/// it logs, retries with backoff and carries on.
pub async fn run_agent<B: Broker>(
    broker: Arc<B>,
    pool: Pool,
    options: AgentOptions,
    tasks: AgentTasks,
    stop: impl Future<Output = StopMode>,
    force: impl Future<Output = ()>,
) -> Result<String, BrokerError> {
    options.check()?;
    let slots = pool.size();
    let info = AgentInfo {
        id: agent_id(),
        workers: slots,
        protocol: procpool_proto::PROTOCOL_VERSION,
        tasks: pool.tasks().to_vec(),
    };
    let names = info.tasks.iter().map(|t| t.name.clone()).collect();
    let agent = Arc::new(Agent {
        broker,
        pool,
        info,
        names,
        options,
        running: Mutex::new(HashMap::new()),
        ended: Notify::new(),
    });
    let me = agent.info.id.clone();
    tasks.attach(Some(agent.clone()));
    tracing::info!(agent = %me, broker = agent.broker.url(), workers = slots, "agent started");
    let background = [
        tokio::spawn(renew_loop(agent.clone())),
        tokio::spawn(reap_loop(agent.clone())),
        tokio::spawn(control_loop(agent.clone())),
    ];
    let free = Arc::new(Semaphore::new(slots + agent.options.prefetch));
    tokio::pin!(stop);
    let mode = tokio::select! {
        mode = &mut stop => mode,
        () = fetch_loop(agent.clone(), free) => StopMode::Cancel,
    };
    tracing::info!(agent = %me, ?mode, "agent stopping");
    let release_all = || {
        let ids: Vec<Uuid> = agent.running().keys().copied().collect();
        for id in ids {
            agent.tell(id, Ctl::Release);
        }
    };
    if mode == StopMode::Cancel {
        release_all();
    }
    tokio::pin!(force);
    let mut forced = false;
    loop {
        let ended = agent.ended.notified();
        if agent.running().is_empty() {
            break;
        }
        tokio::select! {
            () = ended => {}
            () = &mut force, if !forced => {
                forced = true;
                release_all();
            }
        }
    }
    tasks.attach(None);
    for task in background {
        task.abort();
    }
    // Unreachable now: the reaper of another agent hands back what is left.
    if let Err(e) = agent.broker.leave(&me).await {
        tracing::warn!(agent = %me, error = %e, "could not leave the broker cleanly");
    }
    Ok(me)
}

/// Reads as many entries as there are free slots (plus the prefetch) and starts each.
async fn fetch_loop<B: Broker>(agent: Arc<Agent<B>>, free: Arc<Semaphore>) {
    let mut down_since: Option<Instant> = None;
    let mut delay = Duration::from_millis(100);
    let mut prepared = false;
    loop {
        if !prepared {
            match agent.broker.prepare(&agent.names).await {
                Ok(()) => prepared = true,
                Err(e) => {
                    backoff(&agent, &mut down_since, &mut delay, &e).await;
                    continue;
                }
            }
        }
        let Ok(first) = free.clone().acquire_owned().await else {
            return;
        };
        let count = free.available_permits() + 1;
        let fetched = agent
            .broker
            .fetch(&agent.info.id, &agent.names, count, Duration::from_secs(1))
            .await;
        let fetched = match fetched {
            Ok(f) => f,
            Err(e) => {
                drop(first);
                prepared = false;
                backoff(&agent, &mut down_since, &mut delay, &e).await;
                continue;
            }
        };
        if down_since.take().is_some() {
            tracing::warn!(broker = agent.broker.url(), "broker reachable again");
            delay = Duration::from_millis(100);
        }
        let mut first = Some(first);
        let mut claims = Vec::new();
        for fetched in fetched {
            let permit = match first.take() {
                Some(p) => p,
                None => match free.clone().try_acquire_owned() {
                    Ok(p) => p,
                    // Cannot happen (we read no more than the free slots); the entry
                    // stays pending and the reaper hands it back when we leave.
                    Err(_) => break,
                },
            };
            match &fetched.task {
                Ok(id) => claims.push((*id, fetched, permit)),
                Err(message) => {
                    tracing::warn!(
                        entry = fetched.entry,
                        message,
                        "dropping an unreadable queue entry"
                    );
                    let _ = agent.broker.discard(&fetched).await;
                }
            }
        }
        // Claimed together: the starts share the connection's pipeline.
        let started = futures::future::join_all(
            claims
                .iter()
                .map(|(id, fetched, _)| agent.broker.start(&agent.info.id, fetched, *id)),
        )
        .await;
        for ((id, fetched, permit), started) in claims.into_iter().zip(started) {
            match started {
                Ok(Some(claimed)) => {
                    let lease = Lease {
                        id,
                        entry: fetched.entry,
                        attempt: claimed.attempt,
                    };
                    let (ctl, rx) = mpsc::unbounded_channel();
                    agent.running().insert(
                        id,
                        Running {
                            lease: lease.clone(),
                            name: claimed.name.clone(),
                            watch: None,
                            ctl,
                            abandoned: false,
                        },
                    );
                    let agent = agent.clone();
                    tokio::spawn(async move {
                        run_task(&agent, lease.clone(), claimed, rx).await;
                        // Only this attempt: a later one of the same task (handed back
                        // here after this one's lease ran out) may run already.
                        let mut running = agent.running();
                        if running.get(&id).is_some_and(|r| r.lease == lease) {
                            running.remove(&id);
                        }
                        drop(running);
                        agent.ended.notify_waiters();
                        drop(permit);
                    });
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(task = %id, error = %e, "could not start a task"),
            }
        }
    }
}

async fn backoff<B: Broker>(
    agent: &Agent<B>,
    down_since: &mut Option<Instant>,
    delay: &mut Duration,
    e: &BrokerError,
) {
    if down_since.is_none() {
        tracing::warn!(broker = agent.broker.url(), error = %e, "broker unreachable; retrying with backoff");
        *down_since = Some(Instant::now());
    }
    tokio::time::sleep(*delay).await;
    *delay = (*delay * 2).min(Duration::from_secs(2));
}

/// Runs one claimed attempt on the local pool and reports it.
async fn run_task<B: Broker>(
    agent: &Agent<B>,
    lease: Lease,
    claimed: Claimed,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
) {
    let broker = &agent.broker;
    let me = &agent.info.id;
    let outcome = if let Some(message) = claimed.problem.clone() {
        Some(Err(TaskError::Protocol { message }))
    } else if claimed.protocol != procpool_proto::PROTOCOL_VERSION {
        Some(Err(TaskError::Protocol {
            message: format!(
                "the task was submitted with protocol version {}; this agent speaks {}",
                claimed.protocol,
                procpool_proto::PROTOCOL_VERSION
            ),
        }))
    } else if !agent.pool.tasks().iter().any(|t| t.name == claimed.name) {
        Some(Err(TaskError::UnknownTask {
            name: claimed.name.clone(),
        }))
    } else {
        None
    };
    let mut how = Ctl::Message(Vec::new());
    let outcome = match outcome {
        Some(o) => o,
        None => {
            let (progress_tx, mut progress) = mpsc::unbounded_channel();
            let mut task = Task::<()>::encoded(claimed.name, claimed.args, claimed.encoding)
                .with_id(lease.id)
                .on_progress(move |p| {
                    let _ = progress_tx.send(Event::Progress {
                        fraction: p.fraction,
                        message: p.message.clone(),
                    });
                });
            if let Some(d) = claimed.timeout {
                task = task.timeout(d);
            }
            if let Some(n) = claimed.retries {
                task = task.retry(agent.options.retry.with_max_retries(n));
            }
            let mut handle = agent.pool.submit(task);
            if let Some(r) = agent.running().get_mut(&lease.id)
                && r.lease == lease
            {
                r.watch = Some(handle.watch());
            }
            for m in claimed.messages {
                if let Err(e) = handle.send(m) {
                    tracing::warn!("message to a task dropped: {e}");
                }
            }
            // Until the worker starts: only control can come.
            let mut stopping = false;
            loop {
                tokio::select! {
                    pid = handle.started() => {
                        if let Some(pid) = pid {
                            let started = Event::Started { attempt: lease.attempt, pid };
                            if !emit(agent, &lease, &started).await {
                                how = Ctl::Abandon;
                                handle.cancel();
                            }
                        }
                        break;
                    }
                    c = ctl.recv() => match c {
                        Some(Ctl::Message(m)) => {
                                // The submitter checked the size against its own cap.
                                if let Err(e) = handle.send(m) {
                                    tracing::warn!("message to a task dropped: {e}");
                                }
                            }
                        Some(c) => { how = c; handle.cancel(); stopping = true; break; }
                        None => break,
                    },
                }
            }
            // While it runs: messages and progress out, control in.
            if !stopping {
                loop {
                    tokio::select! {
                        m = handle.recv() => match m {
                            Some(m) => {
                                if !emit(agent, &lease, &Event::Message(m)).await {
                                    how = Ctl::Abandon;
                                    handle.cancel();
                                }
                            }
                            None => break,
                        },
                        Some(p) = progress.recv() => {
                            if !emit(agent, &lease, &p).await {
                                how = Ctl::Abandon;
                                handle.cancel();
                            }
                        }
                        c = ctl.recv() => match c {
                            Some(Ctl::Message(m)) => {
                                // The submitter checked the size against its own cap.
                                if let Err(e) = handle.send(m) {
                                    tracing::warn!("message to a task dropped: {e}");
                                }
                            }
                            Some(c) => { how = c; handle.cancel(); }
                            None => {}
                        },
                    }
                }
            }
            let outcome = handle.into_encoded().await;
            // Progress reported before the end goes out before the terminal event.
            while let Ok(p) = progress.try_recv() {
                emit(agent, &lease, &p).await;
            }
            outcome
        }
    };
    match how {
        Ctl::Abandon => {
            tracing::warn!(task = %lease.id, attempt = lease.attempt, "lease lost: worker killed, outcome dropped");
        }
        Ctl::Release => match broker.release(me, &lease).await {
            Ok(true) => tracing::info!(task = %lease.id, "handed back to the queue"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(task = %lease.id, error = %e, "could not hand the task back; the reaper will")
            }
        },
        Ctl::Cancel | Ctl::Message(_) => report(agent, &lease, &outcome).await,
    }
}

/// Publishes an event, retrying while the broker is briefly away (a reconnect must not
/// drop a step of the task's event stream); false when the lease is lost.
async fn emit<B: Broker>(agent: &Agent<B>, lease: &Lease, event: &Event) -> bool {
    let mut delay = Duration::from_millis(50);
    let deadline = Instant::now() + agent.options.lease;
    loop {
        match agent.broker.emit(&agent.info.id, lease, event).await {
            Ok(applied) => return applied,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(task = %lease.id, error = %e, "publishing an event failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            Err(e) => {
                tracing::warn!(task = %lease.id, error = %e, "event dropped: the broker is unreachable");
                return true;
            }
        }
    }
}

/// Writes the outcome, retrying while the broker is away (the write is fenced, so a
/// retry after the lease moved on is refused, never applied twice).
async fn report<B: Broker>(
    agent: &Agent<B>,
    lease: &Lease,
    outcome: &Result<bytes::Bytes, TaskError>,
) {
    let mut delay = Duration::from_millis(100);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match agent.broker.complete(&agent.info.id, lease, outcome).await {
            Ok(true) => return,
            Ok(false) => {
                tracing::warn!(task = %lease.id, attempt = lease.attempt, "late result rejected: the attempt is stale");
                return;
            }
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(task = %lease.id, error = %e, "writing the result failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(task = %lease.id, error = %e, "result dropped; the reaper requeues the task");
                return;
            }
        }
    }
}

/// Renews the lease every `renew_every`; kills what it can no longer vouch for.
async fn renew_loop<B: Broker>(agent: Arc<Agent<B>>) {
    let options = &agent.options;
    // Kill before the liveness key can expire: the key was set at or after the send.
    let limit = options.lease.saturating_sub(options.renew_every / 2);
    let mut last_ok = Instant::now();
    let mut tick = tokio::time::interval(options.renew_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if last_ok.elapsed() > limit {
            let ids: Vec<Uuid> = agent.running().keys().copied().collect();
            if !ids.is_empty() {
                tracing::error!(
                    since_ms = last_ok.elapsed().as_millis() as u64,
                    tasks = ids.len(),
                    "could not renew the lease in time: killing every running task"
                );
            }
            for id in ids {
                agent.abandon(id);
            }
        }
        let leases: Vec<Lease> = agent
            .running()
            .values()
            .filter(|r| !r.abandoned)
            .map(|r| r.lease.clone())
            .collect();
        let sent = Instant::now();
        let renewed = tokio::time::timeout(
            options.lease / 2,
            agent.broker.renew(&agent.info, options.lease, &leases),
        )
        .await;
        match renewed {
            Ok(Ok(r)) => {
                if last_ok.elapsed() > limit {
                    tracing::warn!("lease renewed again");
                }
                last_ok = sent;
                for id in r.lost {
                    tracing::warn!(task = %id, "lease lost (requeued or finished elsewhere)");
                    agent.abandon(id);
                }
                for id in r.cancelled {
                    agent.tell(id, Ctl::Cancel);
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "lease renewal failed"),
            Err(_) => tracing::debug!("lease renewal timed out"),
        }
    }
}

/// Requeues dead agents' entries, and every entry whose lease was not renewed in time.
async fn reap_loop<B: Broker>(agent: Arc<Agent<B>>) {
    let mut cursors = vec!["0-0".to_owned(); agent.names.len()];
    loop {
        // Jitter: agents started together do not reap in lockstep.
        let jitter = Duration::from_millis(u64::from(Uuid::new_v4().as_u128() as u8) % 200);
        tokio::time::sleep(agent.options.reap_every + jitter).await;
        match agent.broker.reap(&agent.info.id).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, "requeued the tasks of dead agents"),
            Err(e) => tracing::debug!(error = %e, "reaping failed"),
        }
        match agent
            .broker
            .autoclaim(
                &agent.info.id,
                &agent.names,
                agent.options.lease,
                &mut cursors,
            )
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, "requeued tasks whose lease ran out"),
            Err(e) => tracing::debug!(error = %e, "autoclaim failed"),
        }
    }
}

/// Follows cancel and message notifications (the renewal reads cancel flags anyway).
async fn control_loop<B: Broker>(agent: Arc<Agent<B>>) {
    loop {
        match agent.broker.control().await {
            Ok(mut notes) => {
                while let Some(note) = notes.next().await {
                    match note {
                        crate::broker::Control::Cancel(id) => agent.tell(id, Ctl::Cancel),
                        crate::broker::Control::Message(id) => {
                            if agent.running().contains_key(&id)
                                && let Ok(messages) = agent.broker.take_messages(id).await
                            {
                                for m in messages {
                                    agent.tell(id, Ctl::Message(m));
                                }
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "notifications unavailable"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
