//! The [`Broker`] trait: every operation the submitters and the agents need from a task
//! queue, so that another engine (NATS JetStream) can follow Redis behind it.

use std::future::Future;
use std::time::Duration;

use futures::stream::BoxStream;
use procpool_core::{TaskError, TaskInfo};
use procpool_proto::Encoding;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::errors::BrokerError;
use crate::wire::Event;

/// [`Broker::take_results`]: per task, its stored outcome if it was still there.
pub type TakenResults = Result<Vec<Option<Result<bytes::Bytes, TaskError>>>, BrokerError>;

/// A task to queue.
#[derive(Debug)]
pub struct NewTask<'a> {
    /// Task id (also its dedupe key: a second submit of a live id attaches to it).
    pub id: Uuid,
    /// Registered function name.
    pub name: &'a str,
    /// Encoded arguments.
    pub args: &'a [u8],
    /// Their encoding.
    pub encoding: Encoding,
    /// Deadline per attempt; `None`: the agent's.
    pub timeout: Option<Duration>,
    /// Crash-class retries on the agent; `None`: the agent's.
    pub retries: Option<u32>,
    /// Attempts lost with their agent before the task fails `lost`.
    pub lost_budget: u32,
    /// How long the result and the events are kept after the end.
    pub result_ttl: Duration,
}

/// What a submit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Queued.
    New,
    /// The id was already queued or running: follow that one.
    Attached,
}

/// What a submitter's cancel did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// The task is unknown or already finished: its outcome stands.
    NotLive,
    /// Cancelled: a queued one ended, a running one's agent kills its worker.
    Cancelled,
    /// Other submitters still watch it (the same dedupe id): it runs on for them, and
    /// only this submitter let go.
    LetGo,
}

/// A task an agent claimed for one attempt.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// 1-based attempt number, the fencing token of every later write.
    pub attempt: u32,
    /// Function name.
    pub name: String,
    /// Encoded arguments.
    pub args: Vec<u8>,
    /// Their encoding.
    pub encoding: Encoding,
    /// Deadline per attempt, if the submitter set one.
    pub timeout: Option<Duration>,
    /// Retries, if the submitter set them.
    pub retries: Option<u32>,
    /// The submitter's protocol version.
    pub protocol: u32,
    /// Set when the stored task is malformed: the attempt must end with this protocol
    /// error instead of running.
    pub problem: Option<String>,
    /// Messages the submitter sent before the start, taken with the claim.
    pub messages: Vec<Vec<u8>>,
}

/// A task an agent runs: what its renewals and writes name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    /// Task id.
    pub id: Uuid,
    /// Its queue entry.
    pub entry: String,
    /// The attempt.
    pub attempt: u32,
}

/// The answer to a lease renewal.
#[derive(Clone, Debug, Default)]
pub struct Renewal {
    /// Tasks this agent no longer owns (requeued, finished elsewhere, vanished).
    pub lost: Vec<Uuid>,
    /// Tasks whose cancel flag is set.
    pub cancelled: Vec<Uuid>,
}

/// What a live agent announces with every renewal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Unique per agent start (`host-pid-uuid`).
    pub id: String,
    /// Its worker slots.
    pub workers: usize,
    /// Its workers' protocol version.
    pub protocol: u32,
    /// The tasks its workers serve.
    pub tasks: Vec<TaskInfo>,
}

/// A notification to the agents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// A task's cancel flag was set.
    Cancel(Uuid),
    /// Messages wait for a task.
    Message(Uuid),
}

/// One event read from a task's stream, with its stream id (the next read's cursor).
#[derive(Debug)]
pub struct ReadEvent {
    /// Task id.
    pub task: Uuid,
    /// Stream id of the event.
    pub cursor: String,
    /// The event, or why it could not be decoded.
    pub event: Result<Event, String>,
}

/// An entry an agent read from a queue.
#[derive(Debug)]
pub struct Fetched {
    /// The task name whose queue it was read from.
    pub name: String,
    /// Queue entry id.
    pub entry: String,
    /// Task id, or why the entry is unreadable.
    pub task: Result<Uuid, String>,
}

/// A task queue with leases, fencing and per-task events. Every state change is one
/// atomic, idempotent operation on the broker.
pub trait Broker: Send + Sync + 'static {
    /// The broker URL with its password elided.
    fn url(&self) -> &str;

    // Submitter side.

    /// Queues a task (or attaches to a live one of the same id); every event of the task
    /// from now on is announced in the submitter's `inbox` (see [`Broker::read_notices`]).
    fn submit(
        &self,
        task: &NewTask<'_>,
        inbox: &str,
    ) -> impl Future<Output = Result<Submitted, BrokerError>> + Send;
    /// The submitter of `inbox` lets go of a task: cancelled (durable flag plus
    /// notification) unless other submitters still watch it.
    fn cancel(
        &self,
        id: Uuid,
        inbox: &str,
    ) -> impl Future<Output = Result<Cancelled, BrokerError>> + Send;
    /// An operator cancels a task for good, for every submitter watching it: the durable
    /// flag and the notification (a queued task ends `cancelled` at once). Never
    /// [`Cancelled::LetGo`].
    fn cancel_for_all(
        &self,
        id: Uuid,
    ) -> impl Future<Output = Result<Cancelled, BrokerError>> + Send;
    /// Queues a message for a task.
    fn send_message(
        &self,
        id: Uuid,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;
    /// The tasks with new events announced in `inbox` after `cursor` (which is moved on),
    /// waiting up to `block` for one (`None`: not at all). Announcements are a hint:
    /// one trimmed or lost only delays the read of that task's events. Uses a
    /// connection of its own.
    fn read_notices(
        &self,
        inbox: &str,
        cursor: &mut String,
        block: Option<Duration>,
    ) -> impl Future<Output = Result<Vec<Uuid>, BrokerError>> + Send;
    /// Up to `count` events of each task after its cursor, without waiting.
    fn read_events(
        &self,
        cursors: &[(Uuid, String)],
        count: usize,
    ) -> impl Future<Output = Result<Vec<ReadEvent>, BrokerError>> + Send;
    /// Which of `ids` the broker still knows.
    fn known(&self, ids: &[Uuid]) -> impl Future<Output = Result<Vec<bool>, BrokerError>> + Send;
    /// Takes the stored results of tasks, in order (once: a second take gets `None`).
    fn take_results(&self, ids: &[Uuid]) -> impl Future<Output = TakenResults> + Send;
    /// The live agents.
    fn agents(&self) -> impl Future<Output = Result<Vec<AgentInfo>, BrokerError>> + Send;

    // Agent side.

    /// Makes the queues of the task `names` an agent serves, where missing (at start and
    /// after a broker restart).
    fn prepare(&self, names: &[String]) -> impl Future<Output = Result<(), BrokerError>> + Send;
    /// Reads up to `count` new entries for `agent` from the queues of the task `names`
    /// it serves (so it never gets a task it cannot run), blocking up to `block`, on a
    /// connection of its own.
    fn fetch(
        &self,
        agent: &str,
        names: &[String],
        count: usize,
        block: Duration,
    ) -> impl Future<Output = Result<Vec<Fetched>, BrokerError>> + Send;
    /// Claims a fetched task for a new attempt; `None` when there is nothing to run.
    fn start(
        &self,
        agent: &str,
        fetched: &Fetched,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<Claimed>, BrokerError>> + Send;
    /// Drops an unreadable entry.
    fn discard(&self, fetched: &Fetched) -> impl Future<Output = Result<(), BrokerError>> + Send;
    /// Publishes an event of a running attempt; `false` when the lease is lost.
    fn emit(
        &self,
        agent: &str,
        lease: &Lease,
        event: &Event,
    ) -> impl Future<Output = Result<bool, BrokerError>> + Send;
    /// Writes an attempt's outcome; `false` when refused (stale attempt).
    fn complete(
        &self,
        agent: &str,
        lease: &Lease,
        outcome: &Result<bytes::Bytes, TaskError>,
    ) -> impl Future<Output = Result<bool, BrokerError>> + Send;
    /// Hands a task back to the queue without counting a lost attempt.
    fn release(
        &self,
        agent: &str,
        lease: &Lease,
    ) -> impl Future<Output = Result<bool, BrokerError>> + Send;
    /// Renews the agent's lease on itself and on `leases`.
    fn renew(
        &self,
        info: &AgentInfo,
        ttl: Duration,
        leases: &[Lease],
    ) -> impl Future<Output = Result<Renewal, BrokerError>> + Send;
    /// Requeues the entries of dead agents; returns how many were handled.
    fn reap(&self, me: &str) -> impl Future<Output = Result<usize, BrokerError>> + Send;
    /// Requeues the entries idle past `min_idle` (leases not renewed in time) in the
    /// queues of the task `names` this agent serves, scanning each on from its cursor
    /// (`cursors[i]` for `names[i]`, `0-0` at first), which it advances.
    fn autoclaim(
        &self,
        me: &str,
        names: &[String],
        min_idle: Duration,
        cursors: &mut [String],
    ) -> impl Future<Output = Result<usize, BrokerError>> + Send;
    /// Takes the messages waiting for a task.
    fn take_messages(
        &self,
        id: Uuid,
    ) -> impl Future<Output = Result<Vec<Vec<u8>>, BrokerError>> + Send;
    /// Notifications (cancel, messages); the stream ends when the connection drops.
    fn control(
        &self,
    ) -> impl Future<Output = Result<BoxStream<'static, Control>, BrokerError>> + Send;
    /// Removes the agent (liveness key, consumer) when it stops.
    fn leave(&self, agent: &str) -> impl Future<Output = Result<(), BrokerError>> + Send;
}
