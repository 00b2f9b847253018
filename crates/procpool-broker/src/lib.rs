//! Scale-out for procpool: tasks queued on a broker (Redis Streams) and run by agents on
//! many machines, through the same [`Pool`](procpool_core::Pool) / `Task` / `TaskHandle`
//! API as a local pool.
//!
//! - [`connect`] gives a broker-backed `Pool`: submit, await, cancel, progress and
//!   messages work as on a local one; a task goes only to an agent that serves it, a
//!   task name no live agent serves is `unknown_task`, a task the broker forgot (restart
//!   without persistence) or whose agents died too often is `lost`, and a cancel made
//!   while the broker is away is sent when it is back.
//! - [`run_agent`] is the agent: a local pool pulling as many tasks as it has free
//!   slots, with leases renewed by its own task, attempt fencing on every write, reaping
//!   of dead agents and durable cancel; [`AgentTasks`] lists its tasks and cancels
//!   one for good, for an operator.
//! - [`Broker`] is the seam for another engine; [`RedisBroker`] is the Redis one (its
//!   scripts are `scripts/*.lua`, with the data model in `scripts/lib.lua`).
//!
//! Execution is at least once; the submitter sees exactly one outcome per task.
//!
//! ```no_run
//! use procpool_broker::{ClientOptions, connect};
//! use procpool_core::Task;
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Agents started with `procpool agent --broker redis://127.0.0.1:6379 --worker ...`.
//! let pool = connect("redis://127.0.0.1:6379", ClientOptions::default()).await?;
//! let sum: serde_json::Value = pool.run(Task::json("add", serde_json::json!([1, 2]))).await?;
//! assert_eq!(sum, 3);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod agent;
mod broker;
mod client;
mod errors;
mod redis;
mod url;
mod wire;

pub use agent::{AgentOptions, AgentTask, AgentTasks, StopMode, run_agent};
pub use broker::{
    AgentInfo, Broker, Cancelled, Claimed, Control, Fetched, Lease, NewTask, ReadEvent, Renewal,
    Submitted, TakenResults,
};
pub use client::{ClientOptions, connect, pool_on};
pub use errors::BrokerError;
pub use procpool_proto::Encoding;
pub use redis::RedisBroker;
pub use url::elide_password;
pub use wire::Event;

/// A task id derived from a dedupe key, the same on every host: tasks submitted with it
/// (`Task::with_id`) while one of them is queued or running share that one run. A task
/// manager on a broker-backed pool gives it to the task of a cache key.
pub use procpool_core::dedupe_id;

/// The largest value read from the broker unless configured: the worker protocol's
/// frame cap.
pub const DEFAULT_MAX_FRAME: usize = procpool_proto::DEFAULT_MAX_FRAME;
