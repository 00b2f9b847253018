//! Orchestration on a procpool pool: Dara's MetaTask and TaskManager, with their known gaps
//! closed. It defines [`MetaTask`] (a combine step over tasks found anywhere in its
//! [`Inputs`], run concurrently, failing fast by killing the siblings' workers),
//! [`TaskManager`] (shared runs with subscriber counting on every node, [`TaskEvent`]s per
//! channel, results taken once), and [`Store`] (where results wait, [`MemoryStore`] by
//! default). It is not the pool: workers, queueing, cancel and kill belong to
//! `procpool-core` ([`Pool`](procpool_core::Pool), [`Task`](procpool_core::Task),
//! [`TaskHandle`](procpool_core::TaskHandle)), whose public API is all this crate uses.
//! Users reach it through the `procpool` facade.
//!
//! ```no_run
//! use procpool_core::{Pool, Task};
//! use procpool_manager::{Cached, MetaTask, TaskEvent, TaskManager};
//! use serde_json::{Value, json};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::builder().worker("target/debug/procpool-demo").workers(4).build()?;
//!
//! // Fan out, combine in the parent; one failed input cancels the others.
//! let squares: Vec<_> = (1..=100).map(|i| Task::json("square", json!([i]))).collect();
//! let total = MetaTask::new(squares, |v: Vec<Value>| v.iter().filter_map(Value::as_i64).sum::<i64>())
//!     .run(&pool)
//!     .await?;
//! assert_eq!(total, 338_350);
//!
//! // The same task for two consumers: it runs once.
//! let manager = TaskManager::new(pool);
//! let mut events = manager.subscribe("ui");
//! let a = manager.run_task(Cached::new("sq-7", Task::json("square", json!([7]))), Some("ui"));
//! let b = manager.run_task(Cached::new("sq-7", Task::json("square", json!([7]))), Some("ui"));
//! assert_eq!(a.id(), b.id());
//! assert_eq!(b.await?, json!(49));
//! assert!(matches!(events.recv().await?, TaskEvent::Started { .. }));
//! assert_eq!(manager.get_result(a.id()).await?, json!(49)); // taken once
//! # Ok(()) }
//! ```
//!
//! # Caveats
//! - **Processes.** A run resolves only after every task it started has ended, so a
//!   MetaTask's failure or cancel leaves no worker running. Dropping a
//!   [`MetaHandle`] cancels its run without waiting for the kills; dropping a
//!   [`PendingTask`] cancels nothing (the task runs on and stores its result).
//! - **Runtime.** A [`TaskManager`] drives its tasks on the tokio runtime it was built in;
//!   if that runtime shuts down, running tasks are cancelled and their consumers get
//!   [`MetaError::Aborted`].
//! - **Sharing** happens only under a task manager, by cache key ([`Cached`]) or task id;
//!   shared results travel as JSON. Equal keys must mean equal work.
//! - **Events** are a tokio broadcast per channel: a subscriber that falls more than the
//!   channel capacity behind misses the oldest events (`RecvError::Lagged`).
//! - **Progress callbacks** ([`MetaTask::on_progress`]) run on the pool's supervisor
//!   thread: keep them short.
#![deny(missing_docs)]

mod cached;
mod consumer;
mod context;
mod driver;
mod errors;
mod events;
mod inputs;
mod json;
mod manager;
mod meta;
mod observe;
mod registry;
mod report;
mod scope;
mod state;
mod store;

pub use cached::Cached;
pub use context::InputContext;
pub use errors::{JsonGraphError, ManagerError, MetaError, StoreError};
pub use events::TaskEvent;
pub use inputs::{Identity, Inputs, Ready};
pub use json::JsonGraph;
pub use manager::{PendingTask, TaskManager, TaskManagerBuilder};
pub use meta::{MetaHandle, MetaTask};
pub use report::{Ending, ErrorReport, FailedInput};
pub use store::{MemoryStore, Store, StoreKey};
