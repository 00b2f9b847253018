//! The procpool supervisor: a pool of warm worker processes and the tasks run on it.
//!
//! It defines [`Pool`] / [`PoolBuilder`] (workers, queue, kills, replacements), [`Task`]
//! (a registered function plus arguments) and [`TaskHandle`] (a submitted run: await,
//! cancel, messages, progress), with [`TaskError`] saying exactly why a task produced no
//! result. It is not the worker side (`procpool-worker`), the wire format
//! (`procpool-proto`) or the OS calls (`procpool-os`). Users reach it through the
//! `procpool` facade.
//!
//! ```no_run
//! use procpool_core::{Pool, Task};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::builder().worker("target/debug/procpool-demo").workers(2).build()?;
//! let sum: serde_json::Value = pool.run(Task::json("add", serde_json::json!([1, 2]))).await?;
//! assert_eq!(sum, 3);
//! # Ok(()) }
//! ```
//!
//! A pool runs either on its own supervisor thread ([`PoolBuilder::build`], the default,
//! usable from any code) or on the caller's tokio runtime ([`PoolBuilder::start`], shorter
//! round trips for a tokio application); everything else behaves the same.
//!
//! # Caveats
//! - Dropping the last [`Pool`] clone kills every worker's process group; running tasks
//!   resolve with [`TaskError::PoolClosed`]. A `build` pool reaps every worker before the
//!   drop returns; a `start` pool SIGKILLs them all before it returns and leaves the
//!   reaping to its runtime ([`Pool::shutdown`] waits for it).
//! - A `start` pool lives on its runtime: if the runtime shuts down with the pool alive,
//!   its workers are killed but may stay zombies until the process exits (or an
//!   [`OrphanReaper`] reaps them). [`Pool::run_blocking`], [`TaskHandle::wait`] and
//!   [`TaskHandle::recv_blocking`] must not be called on that runtime's own threads: on
//!   the thread of a current-thread runtime they panic instead of deadlocking.
//! - Dropping a [`TaskHandle`] detaches the task (it runs on); dropping the future of
//!   [`Pool::run`] cancels it, and so does dropping a [`CancelOnDropHandle`]
//!   ([`TaskHandle::cancel_on_drop`]) or a [`MapStream`] / [`MapIter`] of
//!   [`Pool::map`] before the task ended.
//! - Cancel kills the worker's whole process group; a grandchild that left the group
//!   (`setsid`, its own `setpgid`) escapes the kill.
//! - Progress callbacks run on the supervisor thread (`build`) or on the runtime's threads
//!   (`start`): keep them short.
#![deny(missing_docs)]

// First: its `log!` macro is used by the modules below.
#[macro_use]
mod unwind;

mod batch;
mod blocking;
mod config;
mod dispatcher;
mod errors;
mod executor;
mod guard;
mod handshake;
mod host;
mod inbound;
mod internal;
mod kwargs;
mod limits;
mod orphans;
mod output;
mod pool;
mod remote;
mod spawn;
mod task;
mod types;
mod watch;
mod worker_env;
mod writer;

pub use batch::{MapItem, MapIter, MapStream};
pub use config::{PoolBuilder, RetryPolicy};
pub use errors::{PoolError, TaskError};
pub use guard::CancelOnDropHandle;
pub use kwargs::bind_kwargs;
pub use orphans::OrphanReaper;
pub use output::TaskOutput;
pub use pool::Pool;
pub use procpool_proto::{ParamInfo, TaskInfo};
pub use remote::{RemoteBackend, RemoteSubmission, Served, dedupe_id};
pub use task::{Task, TaskHandle};
pub use types::{CapturedOutput, PoolStatus, Progress, Shutdown};
pub use watch::TaskWatch;
